"""The report (issue 13): the headline metric, the headline family of comparisons, and retrieval
diagnostics that grade support and rank it (hit@k)."""

import math

import dagster as dg
import pytest

from ragft_dagster.evaluation.mcq import Question
from ragft_dagster.evaluation.report import build_report, headline_family, summarise_scores
from ragft_dagster.evaluation.scoring import annotate_support

from ..conftest import LOCAL_PROFILE, write_recipe


def test_headline_family_names_the_comparisons_the_method_is_about():
    models = ["base", "merged", "dpo", "sft", "gpt-4"]
    assert headline_family(models, ["closed_book", "rag"]) == [
        *[(f"{m} rag", f"{m} closed_book") for m in models],
        ("merged closed_book", "base closed_book"),
        ("dpo closed_book", "merged closed_book"),
        ("sft closed_book", "dpo closed_book"),
        ("merged rag", "base rag"),
        ("dpo rag", "merged rag"),
        ("sft rag", "dpo rag"),
        ("sft rag", "base rag"),
    ]
    # a stage not scored is skipped; sft rag vs base rag is then a stage step, listed once
    assert headline_family(["base", "sft"], ["rag"]) == [("sft rag", "base rag")]
    assert headline_family(["merged", "dpo"], ["closed_book"]) == [
        ("dpo closed_book", "merged closed_book")
    ]


def _record(i, correct, letter, norm, option, retrieved=None, **support):
    """Question i answered ``letter`` (acc), ``norm`` (acc_norm) and ``option`` (acc_option)."""
    rec = {
        "question_id": f"q{i:02d}",
        "row": i + 1,
        "question": f"question {i}?",
        "correct": correct,
        "invalid": False,
        "retrieved": [{"id": c, "doc": "d.md", "heading": ""} for c in retrieved or []],
    }
    for metric, answer in (("", letter), ("_norm", norm), ("_option", option)):
        rec[f"predicted{metric}"] = answer
        rec[f"is_correct{metric}"] = answer == correct
    return {**rec, **support}


def _cells(n=10):
    """base gets 2/10 by the letter, 6/10 by the option text; sft 3/10 and 9/10."""
    return {
        ("base", "closed_book"): [
            _record(i, "A", "A" if i < 2 else "B", "A" if i < 6 else "C", "A" if i < 6 else "D")
            for i in range(n)
        ],
        ("sft", "closed_book"): [
            _record(i, "A", "A" if i < 3 else "B", "A" if i < 9 else "C", "A" if i < 9 else "D")
            for i in range(n)
        ],
    }


def test_the_headline_metric_drives_table_tests_and_per_question_marks():
    cells = _cells()
    by_letter = build_report(cells, ["base", "sft"], ["closed_book"], n_boot=200)
    by_option = build_report(cells, ["base", "sft"], ["closed_book"], n_boot=200, metric="acc_norm")
    row = next(r for r in by_option.rows if r["model"] == "sft")
    assert row["metric"] == "acc_norm" and row["accuracy"] == 0.9 and row["correct"] == 9
    assert (row["acc"], row["acc_norm"], row["acc_option"]) == (0.3, 0.9, 0.9)
    assert "Headline metric: **acc_norm**" in by_option.table_md
    assert "| sft | 90.0% [60–98] (n=10); acc 30.0%; acc_option 90.0% |" in by_option.table_md
    assert "| sft | 30.0% [11–60] (n=10); acc_norm 90.0%; acc_option 90.0% |" in (
        by_letter.table_md
    )
    (pair,) = by_option.pairs
    assert (pair["a"], pair["b"], pair["difference"]) == (
        "sft closed_book",
        "base closed_book",
        0.3,
    )
    assert by_letter.pairs[0]["difference"] == pytest.approx(0.1)
    assert by_option.questions[6]["sft closed_book"] == "A ✓"  # row 7: the option text was right
    assert by_letter.questions[6]["sft closed_book"] == "B ✗"  # ... the letter was not
    assert "## Paired comparisons (same questions, acc_norm)" in by_option.markdown


def _support_question(i, option):
    return Question(f"q{i:02d}", i + 1, f"question {i}?", (option, "b", "c", "d"), "A")


CHUNKS = [
    {"id": "c-full", "doc": "d.md", "text": "adapter rank eight alpha sixteen"},
    {"id": "c-most", "doc": "d.md", "text": "rank eight alpha"},
    {"id": "c-half", "doc": "d.md", "text": "merge slerp interpolates"},
    {"id": "c-other", "doc": "d.md", "text": "nothing of the kind"},
]


def test_graded_support_ranks_the_answer_chunk_for_hit_at_k():
    questions = [
        _support_question(0, "adapter rank eight alpha sixteen"),  # c-full holds all of it
        _support_question(1, "rank eight alpha ten twelve"),  # c-most, c-full: 3 of 5 = 60%
        _support_question(2, "slerp interpolates spherically always"),  # best 2 of 4 = 50%
    ]
    deep = ["c-other", "x1", "x2", "x3", "c-most", "c-full"]
    records = [
        _record(0, "A", "B", "B", "B", ["c-other", "c-full", "x1"]),  # shown at rank 2, wrong
        _record(1, "A", "B", "B", "B", ["c-other", "x1", "x2"]),  # rank 5, beyond the prompt
        _record(2, "A", "B", "B", "B", ["c-half", "x1", "x2"]),  # answer not located
    ]
    annotate_support(
        records, questions, CHUNKS, threshold=0.6, ranked=[[{"id": c} for c in deep]] * 3
    )
    got = [
        (r["support"], r["support_coverage"], r["retrieval_hit"], r["support_rank"])
        for r in records
    ]
    # question 1: c-most and c-full both hold 60%; the question breaks no tie here, so both
    assert got == [
        (["c-full"], 1.0, True, 2),
        (["c-full", "c-most"], 0.6, False, 5),
        ([], 0.5, None, None),
    ]
    assert {r["ranked_to"] for r in records} == {10}
    (row,) = summarise_scores({("m", "rag"): records})
    assert row["answer_located"] == 2 and row["retrieval_hit_rate"] == 0.5
    assert [row[f"hit_at_{k}"] for k in (1, 3, 5, 10)] == [0.0, 0.5, 1.0, 1.0]
    assert (row["wrong_retrieval_hit"], row["wrong_retrieval_miss"]) == (1, 1)
    assert row["wrong_not_located"] == 1
    report = build_report(
        {("m", "rag"): records}, ["m"], ["rag"], n_boot=200, support_threshold=0.6
    )
    assert "at least 60% of the correct option's content words" in report.retrieval_md
    assert "| m rag | 2 of 3 | 0.0% | 50.0% | 100.0% | 100.0% | 50.0% | 1 | 1 | 1 |" in (
        report.retrieval_md
    )
    shown = [(q["support"], q["retrieval_hit"], q["support_rank"]) for q in report.questions]
    assert shown == [
        ("c-full (100%)", "yes", "2"),
        ("c-full c-most (60%)", "no", "5"),
        ("not found (best 50%)", "n/a", "n/a"),
    ]
    # stricter than any chunk: nothing located, no verdict on any wrong answer
    annotate_support(records, questions, CHUNKS, threshold=1.0)
    assert [r["retrieval_hit"] for r in records] == [True, None, None]


def test_records_without_ranks_give_hit_at_k_within_the_prompt_only():
    """Score files written before support_rank existed still report (hit@k up to top_k)."""
    records = [
        _record(0, "A", "A", "A", "A", ["c1", "c2", "c3"], support=["c2"], retrieval_hit=True),
        _record(1, "A", "B", "B", "B", ["c4", "c5", "c6"], support=["c9"], retrieval_hit=False),
    ]
    (row,) = summarise_scores({("m", "rag"): records})
    assert (row["hit_at_1"], row["hit_at_3"]) == (0.0, 0.5)
    assert math.isnan(row["hit_at_5"]) and math.isnan(row["hit_at_10"])
    report = build_report({("m", "rag"): records}, ["m"], ["rag"], n_boot=200)
    assert [q["support_rank"] for q in report.questions] == ["2", "> 3"]
    assert "| – | – |" in report.retrieval_md


def _code_versions(recipe_path):
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.recipe import load_recipe

    assets = build_all_assets(load_recipe(recipe_path))
    return {
        k.to_user_string(): v
        for a in assets
        if isinstance(a, dg.AssetsDefinition)
        for k, v in a.code_versions_by_key.items()
    }


def test_headline_metric_restales_the_report_only_and_excludes_api_models(tmp_path):
    from ragft_dagster.config.recipe import RecipeError, load_recipe

    def edited(name, **evaluation):
        (tmp_path / name).mkdir()
        return write_recipe(tmp_path / name, lambda raw: raw["evaluation"].update(**evaluation))

    before = _code_versions(edited("before"))
    metric = _code_versions(edited("metric", headline_metric="acc_option"))
    threshold = _code_versions(edited("threshold", support_threshold=0.8))
    assert {k for k in before if before[k] != metric[k]} == {"mcq_report"}
    assert {k for k in before if before[k] != threshold[k]} == {"mcq_scores", "mcq_report"}
    with pytest.raises(RecipeError, match="headline_metric 'acc_norm'.*API models"):
        load_recipe(edited("api", headline_metric="acc_norm", api={"models": ["gpt-4"]}))


def test_report_asset_headlines_the_recipe_metric_and_counts_only_headline_verdicts(tmp_path):
    from ragft_dagster.artifacts import ArtifactLayout, write_jsonl
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.definitions import build_resources

    root = tmp_path / "artifacts"
    n = 40
    scores = {  # sft is far better than base on the option text, as good by the letter
        "base": [
            _record(i, "A", "A" if i < 8 else "B", "A" if i < 8 else "B", "B") for i in range(n)
        ],
        "sft": [
            _record(i, "A", "A" if i < 8 else "B", "A" if i < 36 else "B", "B") for i in range(n)
        ],
    }
    for model, recs in scores.items():
        for context in ("closed_book", "rag"):
            write_jsonl(ArtifactLayout(root).scores(model, context), recs)
    instance = dg.DagsterInstance.ephemeral()
    results = {}
    for metric in ("acc", "acc_norm"):
        (tmp_path / metric).mkdir()
        recipe = load_recipe(
            write_recipe(
                tmp_path / metric,
                lambda raw, m=metric: raw["evaluation"].update(
                    models=["base", "sft"], headline_metric=m, general_questions=None
                ),
            )
        )
        result = dg.materialize(
            build_all_assets(recipe),
            resources=build_resources(recipe, load_profile(LOCAL_PROFILE), root),
            instance=instance,
            selection="mcq_report",
        )
        meta = result.asset_materializations_for_node("mcq_report")[0].metadata
        results[metric] = (meta, result.get_asset_check_evaluations()[0])
    letter, _ = results["acc"]
    option, check = results["acc_norm"]
    assert letter["headline_metric"].value == "acc" and letter["significant_pairs"].value == 0
    assert letter["accuracy_sft_rag"].value == 0.2 and letter["acc_norm_sft_rag"].value == 0.9
    assert option["headline_metric"].value == "acc_norm"
    assert option["accuracy_sft_rag"].value == 0.9
    # sft vs base in each context (28 discordant, all one way): 2 significant headline pairs;
    # sft rag vs base closed_book is as different, but exploratory
    assert option["significant_pairs"].value == 2
    assert "Exploratory comparisons" in option["paired_comparisons"].value
    # the previous report headlined acc: its figures are not compared with acc_norm ones
    assert check.passed and "headline was acc" in check.metadata["compared_with"].value


def _general(i: int, correct: bool, category: str) -> dict:
    return {
        "question_id": f"g{i}",
        "row": i + 1,
        "category": category,
        "correct": "A",
        "predicted": "A" if correct else "B",
        "is_correct": correct,
    }


def test_general_report_sets_docs_beside_general_scores_and_tests_each_stage():
    from ragft_dagster.evaluation.report import general_report

    n = 40  # 20 general, 20 arithmetic questions
    cats = ["general" if i % 2 else "arithmetic" for i in range(n)]
    right = {  # the merge learns arithmetic; sft forgets general knowledge
        "base": lambda i: i < 20,
        "merged": lambda i: i < 20 or cats[i] == "arithmetic",
        "sft": lambda i: cats[i] == "arithmetic",
    }
    general = {m: [_general(i, f(i), cats[i]) for i in range(n)] for m, f in right.items()}
    docs = summarise_scores(
        {("base", "closed_book"): [_record(i, "A", "A", "A", "A") for i in range(10)]}
    )
    rows, pairs, md = general_report(general, docs, ["base", "merged", "dpo", "sft"], n_boot=200)
    acc = {(r["model"], r["category"]): r["accuracy"] for r in rows}
    assert acc[("base", "all")] == 0.5 and acc[("merged", "arithmetic")] == 1.0
    assert acc[("sft", "general")] == 0.0 and acc[("sft", "all")] == 0.5
    # stages in order, dpo not scored: merged vs base, then sft vs merged
    assert [(p["a"], p["b"]) for p in pairs] == [("merged", "base"), ("sft", "merged")]
    assert [p["only_a"] for p in pairs] == [10, 0] and [p["only_b"] for p in pairs] == [0, 10]
    # 10 discordant pairs one way: exact McNemar p = 2 * 0.5**10; Holm doubles the smaller
    assert math.isclose(pairs[0]["mcnemar_p"], 2 * 0.5**10)
    assert math.isclose(pairs[0]["holm_p"], 2 * 2 * 0.5**10)
    assert "| base | 100.0% [" in md and "| arithmetic | general |" in md
    assert "| dpo |" not in md  # a model without general scores gets no row
