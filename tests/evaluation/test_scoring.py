"""A RAG cell end to end on a real index (issue 13, item 8): the prompt keeps the top-k chunks;
a deeper retrieval ranks the chunk that holds the answer, for hit@k beyond top_k."""

import csv
import io

from ..conftest import ROOT, write_recipe

DATA = ROOT / "assets" / "quickstart"
DOCS = ["lora-training.md", "chunking.md", "vector-index.md"]


def test_rag_cell_ranks_the_answer_chunk_beyond_the_prompts_top_k(tmp_path, monkeypatch):
    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.compute import ComputeSettings
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.data.chunking import chunk_document, read_document
    from ragft_dagster.evaluation.scoring import RANK_DEPTH, evaluate_cell
    from ragft_dagster.models.refs import LocalModels, load_tokenizer, resolve_model_ref
    from ragft_dagster.retrieval.indexing import load_embedder, open_collection, sync_index

    rows = list(csv.reader(io.StringIO((DATA / "mcq.csv").read_text(encoding="utf-8"))))
    asked = [rows[0]] + [r for r in rows[1:] if "chunk" in r[0].lower() or "LoRA" in r[0]]
    out = io.StringIO()
    csv.writer(out).writerows(asked)
    (tmp_path / "mcq.csv").write_text(out.getvalue(), encoding="utf-8")
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            lambda raw: raw["evaluation"].update(
                questions=str(tmp_path / "mcq.csv"), support_threshold=0.6
            ),
        )
    )
    layout = ArtifactLayout(tmp_path / "artifacts")
    retrieval = recipe.retrieval
    tokenizer = load_tokenizer(
        LocalModels.of(recipe, layout).paths("base")[0], recipe.chat_template
    )
    chunks = [
        c.to_dict()
        for name in DOCS
        for c in chunk_document(read_document(DATA / "docs" / name, name), name, tokenizer, 120, 10)
    ]
    assert len(chunks) > RANK_DEPTH  # deeper than the index, ranks would say nothing

    def collection():
        return open_collection(
            retrieval.collection,
            path=layout.vector_index,
            embedding_model=retrieval.embedding_model,
        )

    embedder = load_embedder(
        resolve_model_ref(retrieval.embedding_model, layout.root, recipe.root), "cpu"
    )
    with collection() as col:
        sync_index(col, chunks, embedder, retrieval.embedding_model)
    records, _ = evaluate_cell(
        recipe.evaluation,
        recipe.retrieval,
        recipe.questions_path,
        LocalModels.of(recipe, layout),
        "base",
        "rag",
        compute=ComputeSettings(device="cpu", dtype="float32"),
        open_collection=collection,
    )
    assert len(records) == len(asked) - 1 >= 5
    assert all(len(r["retrieved"]) == retrieval.top_k for r in records)
    located = [r for r in records if r["retrieval_hit"] is not None]
    assert len(located) >= len(records) - 1
    for r in records:
        assert r["ranked_to"] == RANK_DEPTH
        assert 0 < r["support_coverage"] <= 1
        if r["retrieval_hit"]:
            assert r["support_rank"] <= retrieval.top_k
        elif r["retrieval_hit"] is False:
            # not in the prompt: ranked deeper, or not within RANK_DEPTH at all
            assert r["support_rank"] is None or retrieval.top_k < r["support_rank"] <= RANK_DEPTH
        else:
            assert r["support"] == [] and r["support_coverage"] < 0.6
    # MiniLM ranks some answer chunks 4th-10th here: found only by the deeper retrieval
    assert any((r["support_rank"] or 0) > retrieval.top_k for r in records)

    # Every other RAG cell reads the stored retrieval of this index version (no query is
    # embedded again); a new index version is retrieved anew.
    from ragft_dagster.evaluation import scoring

    assert len(list(layout.retrieved_contexts.glob("*.json"))) == 1
    made = []
    real_embedder = scoring._embedder
    monkeypatch.setattr(scoring, "_embedder", lambda *a: made.append(1) or real_embedder(*a))

    def cell():
        return evaluate_cell(
            recipe.evaluation,
            recipe.retrieval,
            recipe.questions_path,
            LocalModels.of(recipe, layout),
            "base",
            "rag",
            compute=ComputeSettings(device="cpu", dtype="float32"),
            open_collection=collection,
        )[0]

    again = cell()
    assert not made
    assert [r["retrieved"] for r in again] == [r["retrieved"] for r in records]
    assert [r["support_rank"] for r in again] == [r["support_rank"] for r in records]
    with collection() as col:
        sync_index(col, chunks[1:], embedder, retrieval.embedding_model)
    cell()
    assert made == [1]
    assert len(list(layout.retrieved_contexts.glob("*.json"))) == 2


def test_general_scores_asset_scores_the_shipped_set_by_category(tmp_path):
    """general_scores[base] on the tiny base model: the 80 shipped questions, closed-book, each
    record with its category; accuracy per category in the metadata."""
    import dagster as dg

    from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.config.recipe import GENERAL_SET, load_recipe
    from ragft_dagster.definitions import build_resources

    from ..conftest import LOCAL_PROFILE

    recipe = load_recipe(write_recipe(tmp_path))
    assert recipe.general_questions_path == GENERAL_SET
    root = tmp_path / "artifacts"
    result = dg.materialize(
        build_all_assets(recipe),
        resources=build_resources(recipe, load_profile(LOCAL_PROFILE), root),
        instance=dg.DagsterInstance.ephemeral(),
        selection="general_scores",
        partition_key="base",
    )
    meta = result.asset_materializations_for_node("general_scores")[0].metadata
    records = read_jsonl(ArtifactLayout(root).general_scores("base"))
    assert meta["questions"].value == len(records) == 80
    assert {r["category"] for r in records} == {"general", "arithmetic"}
    assert all(not r["retrieved"] for r in records)  # closed-book
    arithmetic = [r["is_correct"] for r in records if r["category"] == "arithmetic"]
    assert meta["accuracy_arithmetic"].value == sum(arithmetic) / len(arithmetic)


def test_general_questions_can_be_switched_off_or_replaced(tmp_path):
    from ragft_dagster.config.recipe import RecipeError, load_recipe
    from ragft_dagster.definitions import recipe_stages

    off = load_recipe(
        write_recipe(tmp_path, lambda raw: raw["evaluation"].update(general_questions=None))
    )
    assert off.general_questions_path is None and "general_job" not in {
        s.job for s in recipe_stages(off)
    }
    try:
        load_recipe(
            write_recipe(
                tmp_path, lambda raw: raw["evaluation"].update(general_questions="mine.csv")
            )
        )
    except RecipeError as exc:
        assert "evaluation.general_questions" in str(exc) and "mine.csv" in str(exc)
    else:
        raise AssertionError("a missing general set must fail at recipe load")
