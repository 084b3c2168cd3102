"""Training with retrieval: the gold chunk among distractors, as the RAG cells show context."""

from ragft_dagster.data.raft import add_retrieved_context, evidence_sentence

CHUNKS = {f"c{i}": f"Chunk {i} says the default of setting {i} is {i * 10}." for i in range(6)}


def _rows(n=200):
    return [
        {
            "id": f"r{i}",
            "question": f"What is setting {i % 6}?",
            "answer": f"It is {i % 6 * 10}.",
            "chunk_id": f"c{i % 6}",
            "doc": "d.md",
        }
        for i in range(n)
    ]


def _retrieve_many(queries):
    """A test double of the index: ranks the asked chunk second, behind c5 (or c4)."""
    out = []
    for q in queries:
        own = f"c{q.split()[-1].rstrip('?')}"
        first = "c5" if own != "c5" else "c4"
        rest = [c for c in CHUNKS if c not in (own, first)]
        out.append([{"id": c, "text": CHUNKS[c]} for c in [first, own, *rest]])
    return out


def test_the_gold_chunk_is_shown_with_its_probability_among_distractors():
    rows = _rows()
    out, figures = add_retrieved_context(
        rows, _retrieve_many, CHUNKS, chunks=3, gold_probability=0.8, seed=0
    )
    assert all(len(r["context"]) == 3 for r in out)
    with_gold = [r for r in out if r["chunk_id"] in {c["id"] for c in r["context"]}]
    assert figures["gold_shown"] == len(with_gold)
    assert 0.7 < len(with_gold) / len(rows) < 0.9
    # without the gold chunk, the prompt holds distractors only; the gold is never duplicated
    for r in out:
        ids = [c["id"] for c in r["context"]]
        assert len(set(ids)) == 3
    assert figures["gold_retrieved_in_top_k"] == len(rows)  # ranked second, within top 3
    # the draw is per row and stable: the same rows, reordered, get the same contexts
    again, _ = add_retrieved_context(
        rows[::-1], _retrieve_many, CHUNKS, chunks=3, gold_probability=0.8, seed=0
    )
    assert {r["id"]: r["context"] for r in again} == {r["id"]: r["context"] for r in out}
    # the answers are unchanged unless evidence is quoted
    assert [r["answer"] for r in out] == [r["answer"] for r in rows]


def test_answers_can_quote_their_evidence():
    chunk = "Install it with pip. The default of top_k is 3, and it applies to every cell. Done."
    assert evidence_sentence(chunk, "top_k defaults to 3") == (
        "The default of top_k is 3, and it applies to every cell."
    )
    out, figures = add_retrieved_context(
        _rows(20),
        _retrieve_many,
        CHUNKS,
        chunks=2,
        gold_probability=1.0,
        seed=0,
        quote_evidence=True,
    )
    assert figures["quoted_answers"] == 20
    assert (
        out[1]["answer"]
        == 'The docs say: "Chunk 1 says the default of setting 1 is 10."\n\nIt is 10.'
    )


TOPICS = {
    "install.md": "Install the project with make install; it creates a virtual environment.",
    "sensor.md": "The docs sensor watches the docs folder and launches runs for changed files.",
    "index.md": "The vector index stores one MiniLM embedding per chunk in a Chroma collection.",
    "gate.md": "The release gate compares sft with RAG against base with RAG before export.",
    "budget.md": "The qa budget caps requests and tokens; a run stops before crossing it.",
}


def test_sft_dataset_prompts_show_retrieved_chunks_as_the_rag_cells_do(tmp_path):
    """Real index (Chroma, MiniLM), real recipe wiring: every training prompt is the context
    block and the question, exactly what `ragft ask` sends."""
    import json

    import dagster as dg

    from ragft_dagster.artifacts import ArtifactLayout, read_jsonl, write_jsonl
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.assets.training import context_adder
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.orchestration.stages import stages_of
    from ragft_dagster.prompts import ask_messages
    from ragft_dagster.retrieval.indexing import open_collection, retrieval_embedder, sync_index
    from ragft_dagster.training.sft import build_sft_dataset

    from ..conftest import write_recipe

    recipe = load_recipe(
        write_recipe(
            tmp_path,
            lambda raw: raw["sft_dataset"].update(
                retrieval_context={"enabled": True, "gold_probability": 0.5, "chunks": 2}
            ),
        )
    )
    # the dataset now reads the index: the training stage runs after the retrieval stage
    sft = next(a for a in build_all_assets(recipe) if dg.AssetKey("sft_dataset") in a.keys)
    assert dg.AssetKey("vector_index") in sft.asset_deps[dg.AssetKey("sft_dataset")]
    order = [s.job for s in stages_of(build_all_assets(recipe))]
    assert order.index("retrieval_job") < order.index("training_job")

    layout = ArtifactLayout(tmp_path / "artifacts")
    chunks, rows = [], []
    for n, (doc, text) in enumerate(TOPICS.items()):
        chunk = {"id": f"k{n}", "text": text, "doc": doc, "heading_path": [doc]}
        chunks.append(chunk)
        write_jsonl(layout.chunks(doc), [chunk])
        for i, q in enumerate(("What does this part cover?", f"What is said in {doc}?")):
            rows.append(
                {
                    "id": f"q{n}{i}",
                    "question": q,
                    "answer": text,
                    "chunk_id": f"k{n}",
                    "doc": doc,
                    "generator": "offline",
                }
            )
    embedder = retrieval_embedder(recipe.retrieval, layout.root, recipe.root, "cpu")
    with open_collection("raft", path=layout.vector_index) as collection:
        sync_index(collection, chunks, embedder)
        add = context_adder(recipe, layout, list(TOPICS), "cpu", collection)
        counts = build_sft_dataset(
            rows,
            tmp_path / "out",
            validation_fraction=0.0,
            seed=0,
            system_prompt=None,
            add_context=add,
            context_template=recipe.evaluation.context_template,
        )
    assert counts["context_rows"] == 10 and 0 < counts["context_gold_shown"] < 10
    by_id = {c["id"]: c["text"] for c in chunks}
    for record in read_jsonl(tmp_path / "out" / "train.jsonl"):
        user, answer = record["messages"][0]["content"], record["messages"][1]["content"]
        shown = [{"text": by_id[i]} for i in record["context_ids"]]
        assert len(shown) == 2
        question = next(r["question"] for r in rows if r["id"] == record["id"])
        assert record["messages"][:1] == ask_messages(
            question,
            shown,
            system_prompt=None,
            context_template=recipe.evaluation.context_template,
        )
        assert user.startswith("Context:\n") and user.endswith(question)
        assert answer == next(r["answer"] for r in rows if r["id"] == record["id"])
    assert json.loads(json.dumps(counts))  # the counts are metadata-ready
