"""Contamination of the SFT data by the benchmark: the detectors, the dataset and its check."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import dagster as dg
import pytest

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl, write_jsonl
from ragft_dagster.assets import training
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.data.contamination import find_contamination, normalise, summarise
from ragft_dagster.evaluation.mcq import load_questions
from ragft_dagster.resources import (
    ArtifactStoreResource,
    ComputeResource,
    LlmEndpointResource,
    VectorStoreResource,
)
from ragft_dagster.training.sft import CONTAMINATION_FILE, build_sft_dataset

from ..conftest import QUICKSTART_DATA, TINY_RECIPE, write_recipe

MCQ = load_questions(QUICKSTART_DATA / "mcq.csv")
BY_ROW = {q.row: q for q in MCQ}

# Planted duplicates of quickstart benchmark questions (row number in mcq.csv).
EXACT = (36, "which environment variable can replace the --recipe option of the ragft command")
PARAPHRASE = (24, "If top_k is not set, how many passages are retrieved for each question?")
OVERLAP = (
    4,
    "Which pair of models does the quickstart combine with SLERP, and what does the "
    "interpolation factor t control in that merge?",
)

# Training questions about the same documentation that are not benchmark questions, including
# the most similar ones the offline generator produced on the quickstart corpus.
UNRELATED = [
    "What does the 'Chunk identifiers' section of Chunking the documentation explain?",
    "In Synthetic question generation, what is meant by Offline generator?",
    "What example does the 'Preference rows' section of Preference tuning with DPO give?",
    "What is the quickstart recipe?",
    "How many attention heads does a tiny model have?",
    "What is the default chunk size in tokens?",
    "Why are chunk ids content hashes rather than positions?",
    "What does the beta parameter control in DPO?",
    "Which embedding model does the quickstart use?",
    "What does top_k control in the retrieval section?",
    "What does the --profile option of ragft do?",
    "What is the default LoRA rank in the quickstart?",
    "How do you start the nightly schedule?",
    "What happens to a row's split when other rows are added?",
]


def _row(question: str, i: int, doc: str = "guide.md") -> dict:
    return {
        "id": f"row{i}",
        "chunk_id": f"chunk{i}",
        "doc": doc,
        "generator": "offline",
        "question": question,
        "answer": f"Answer number {i}.",
    }


@pytest.fixture(scope="module")
def embed():
    from ragft_dagster.models.refs import resolve_model_ref
    from ragft_dagster.retrieval.indexing import load_embedder

    recipe = load_recipe(TINY_RECIPE)
    model_dir = resolve_model_ref(recipe.retrieval.embedding_model, Path("."), recipe.root)
    return load_embedder(model_dir).get_text_embedding_batch


def _findings_by_question(findings) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in findings:
        out.setdefault(f.train_question, []).append(f)
    return out


def test_normalise_ignores_case_punctuation_and_spacing():
    assert normalise("  Which   `key-value` heads?") == normalise("which key value HEADS")


def test_planted_duplicates_are_caught_and_unrelated_questions_are_not(embed):
    planted = [EXACT, PARAPHRASE, OVERLAP]
    rows = [_row(q, i) for i, (_, q) in enumerate(planted)]
    rows += [_row(q, 100 + i) for i, q in enumerate(UNRELATED)]
    findings = find_contamination(rows, MCQ, embed=embed)
    found = _findings_by_question(findings)

    assert set(found) == {q for _, q in planted}, "an unrelated question was flagged"
    for row, question in planted:
        (f,) = found[question]
        assert f.mcq_row == row and f.mcq_question == BY_ROW[row].question
        assert f.train_question == question and f.train_id.startswith("row")
    exact = found[EXACT[1]][0]
    assert exact.detectors == ("exact", "ngram", "embedding") and exact.ngram == 1.0
    paraphrase = found[PARAPHRASE[1]][0]
    assert paraphrase.detectors == ("embedding",)
    assert paraphrase.ngram == 0.0 and paraphrase.embedding is not None
    assert paraphrase.embedding >= 0.87
    # The added clause pulls the embedding below the threshold; the n-grams still match.
    overlap = found[OVERLAP[1]][0]
    assert overlap.detectors == ("ngram",) and overlap.ngram == 1.0
    assert overlap.to_dict()["detector"] == "ngram"
    assert summarise(findings) == {
        "exact_matches": 1,
        "ngram_matches": 2,
        "embedding_matches": 2,
        "contaminated_rows": 3,
        "mcq_questions_hit": 3,
    }


def test_short_questions_and_thresholds():
    q = BY_ROW[10]  # "Whose tokenizer is used to measure chunk sizes?" (8 words)
    rows = [
        _row(f"Tell me: {q.question.lower()} Give the model name.", 1),
        _row("Whose tokenizer is used to count tokens?", 2),
    ]
    # Shorter than n: the whole question must occur, and then it counts fully.
    (f,) = find_contamination(rows, [q], ngram=13, embedding_threshold=None)
    assert (f.train_id, f.detectors, f.ngram, f.embedding) == ("row1", ("ngram",), 1.0, None)
    # A shorter n finds the partial overlap; the threshold decides whether it counts.
    partial = find_contamination(rows, [q], ngram=4, ngram_threshold=0.2, embedding_threshold=None)
    assert {f.train_id for f in partial} == {"row1", "row2"}
    assert find_contamination(rows, [q], ngram=4, ngram_threshold=0.9)[0].train_id == "row1"
    assert find_contamination([], [q]) == []


def test_dataset_drops_contaminated_rows_from_both_splits(tmp_path):
    rows = [_row(f"Unrelated question number {i} about the docs?", i) for i in range(40)]
    # Every split bucket gets a planted exact copy (validation_fraction 0.5).
    planted = [_row(q.question.upper(), 1000 + q.row) for q in MCQ[:10]]
    detect = functools.partial(find_contamination, questions=MCQ, embed=None)
    counts = build_sft_dataset(
        rows + planted,
        tmp_path / "clean",
        validation_fraction=0.5,
        seed=0,
        system_prompt=None,
        detect_contamination=detect,
    )
    assert counts["contaminated_rows"] == counts["contaminated_rows_removed"] == 10
    assert counts["exact_matches"] == 10 and counts["train_rows"] + counts["validation_rows"] == 40
    report = json.loads((tmp_path / "clean" / CONTAMINATION_FILE).read_text())
    assert report["removed"] is True and len(report["findings"]) == 10
    assert {f["mcq_question"] for f in report["findings"]} == {q.question for q in MCQ[:10]}

    kept = build_sft_dataset(
        rows + planted,
        tmp_path / "kept",
        validation_fraction=0.5,
        seed=0,
        system_prompt=None,
        detect_contamination=detect,
        remove_contaminated=False,
    )
    assert kept["contaminated_rows_removed"] == 0
    ids = {
        r["id"]
        for s in ("train", "validation")
        for r in read_jsonl(tmp_path / "kept" / f"{s}.jsonl")
    }
    planted_ids = {r["id"] for r in planted}
    assert planted_ids <= ids
    assert any(r["id"] in planted_ids for r in read_jsonl(tmp_path / "kept" / "validation.jsonl"))


def test_code_version_follows_contamination_inputs(tmp_path):
    def version(name, mutate=None):
        (tmp_path / name).mkdir()
        return training.sft_dataset_version(load_recipe(write_recipe(tmp_path / name, mutate)))

    def contamination(**kw):
        return lambda raw: raw["sft_dataset"].update(contamination=kw)

    base = version("base")
    mcq = tmp_path / "mcq.csv"
    mcq.write_text((QUICKSTART_DATA / "mcq.csv").read_text() + "Extra?,a,b,c,d,A\n")
    open_file = QUICKSTART_DATA / "open_questions.csv"
    assert version("blocking", contamination(blocking=True)) == base
    assert version("top_k", lambda raw: raw["retrieval"].update(top_k=5)) == base
    changed = {
        version("threshold", contamination(embedding_threshold=0.9)),
        version("keep", contamination(remove=False)),
        version("mcq", lambda raw: raw["evaluation"].update(questions=str(mcq))),
        version("model", lambda raw: raw["retrieval"].update(embedding_model="org/other")),
        version("open", lambda raw: raw["evaluation"].update(open_questions=str(open_file))),
    }
    assert base not in changed and len(changed) == 5
    recipe = load_recipe(write_recipe(tmp_path))
    asset = training.build(recipe)[0]
    assert asset.code_versions_by_key[dg.AssetKey("sft_dataset")] == base


def test_sft_dataset_is_checked_against_the_open_questions_too(tmp_path):
    """With evaluation.open_questions set, the detector sft_dataset uses holds the benchmark's
    questions and the open ones, and a training row copying an open question is found."""
    from ragft_dagster.evaluation.open_answers import load_open_questions

    open_file = QUICKSTART_DATA / "open_questions.csv"
    recipe = load_recipe(
        write_recipe(tmp_path, lambda raw: raw["evaluation"].update(open_questions=str(open_file)))
    )
    detect = training.contamination_detector(recipe, tmp_path / "artifacts", "cpu")
    open_questions = load_open_questions(open_file)
    copied = _row(open_questions[0].question.upper(), 1)
    findings = detect([copied, _row("Unrelated question about the weather?", 2)])
    assert [(f.train_id, f.benchmark) for f in findings] == [(copied["id"], "open")]
    assert len(detect.keywords["questions"]) == len(MCQ) + len(open_questions)


def _materialize(
    tmp_path: Path, contamination: dict
) -> tuple[dg.ExecuteInProcessResult, Path, bool]:
    """sft_dataset and its check over planted Q&A, a stand-in downstream asset in the same run,
    then one automation tick: would lora_adapter be started afterwards?"""
    recipe = load_recipe(
        write_recipe(tmp_path, lambda raw: raw["sft_dataset"].update(contamination=contamination))
    )
    root = tmp_path / "artifacts"
    layout = ArtifactLayout(root)
    docs = {
        "a.md": [EXACT[1], *UNRELATED[:7]],
        "b.md": [PARAPHRASE[1], *UNRELATED[7:]],
    }
    for n, (doc, questions) in enumerate(docs.items()):
        write_jsonl(layout.qa(doc), [_row(q, 100 * n + i, doc) for i, q in enumerate(questions)])
    sft_dataset, check, lora_adapter = training.build(recipe)
    resources = {
        "artifacts": ArtifactStoreResource(root=str(root)),
        "compute": ComputeResource(device="cpu"),
        "llm": LlmEndpointResource(),  # the quality judge is off: never called
        "vector_store": VectorStoreResource(),  # training with retrieval is off: never opened
    }

    @dg.asset(deps=[sft_dataset])
    def downstream() -> None:
        """Stands in for lora_adapter in the run: runs only if the blocking check lets it."""

    defs = dg.Definitions(assets=[sft_dataset, check, lora_adapter], resources=resources)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", list(docs))
        instance.report_runless_asset_event(dg.AssetMaterialization("dpo_model"))
        start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        result = dg.materialize(
            [sft_dataset, check, downstream],
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
        lora_requested = tick.get_num_requested(dg.AssetKey("lora_adapter")) > 0
    return result, layout.sft_dataset, lora_requested


def test_sft_dataset_removes_planted_rows_and_its_check_passes(tmp_path):
    result, folder, lora_requested = _materialize(tmp_path, {"blocking": True})
    assert result.success
    meta = result.asset_materializations_for_node("sft_dataset")[0].metadata
    assert meta["contaminated_rows_removed"].value == 2
    assert meta["exact_matches"].value == 1 and meta["embedding_matches"].value == 2
    assert meta["train_rows"].value + meta["validation_rows"].value == len(UNRELATED)
    table = meta["contamination"].value.records
    assert {r.data["train_question"] for r in table} == {EXACT[1], PARAPHRASE[1]}
    assert {r.data["mcq_question"] for r in table} == {BY_ROW[36].question, BY_ROW[24].question}
    kept = [
        r["messages"][-2]["content"]
        for s in ("train", "validation")
        for r in read_jsonl(folder / f"{s}.jsonl")
    ]
    assert EXACT[1] not in kept and PARAPHRASE[1] not in kept
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "sft_dataset_not_contaminated" and evaluation.passed
    assert evaluation.metadata["contaminated_rows_removed"].value == 2
    assert result.asset_materializations_for_node("downstream")
    assert lora_requested  # a passing blocking check lets automation train the adapter


def test_blocking_check_fails_on_kept_rows_and_stops_downstream(tmp_path):
    result, folder, lora_requested = _materialize(tmp_path, {"remove": False, "blocking": True})
    assert not result.success
    assert result.asset_materializations_for_node("sft_dataset")
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["contaminated_rows_remaining"].value == 2
    remaining = evaluation.metadata["remaining"].value.records
    assert {r.data["train_question"] for r in remaining} == {EXACT[1], PARAPHRASE[1]}
    assert not result.asset_materializations_for_node("downstream")
    assert not lora_requested  # nor does automation train on it in a later run
    assert json.loads((folder / CONTAMINATION_FILE).read_text())["removed"] is False


def test_non_blocking_check_warns_and_lets_downstream_run(tmp_path):
    result, _, _ = _materialize(tmp_path, {"remove": False})
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert result.asset_materializations_for_node("downstream")
