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


def test_figure_2_sets_every_merge_source_beside_the_stages_and_tests_them():
    from ragft_dagster.evaluation.report import general_report

    n = 40  # 20 general, 20 arithmetic questions
    cats = ["general" if i % 2 else "arithmetic" for i in range(n)]
    right = {  # the specialist and the merge learn arithmetic; sft forgets general knowledge
        "base": lambda i: i < 20,
        "specialist:math": lambda i: cats[i] == "arithmetic",
        "merged": lambda i: i < 20 or cats[i] == "arithmetic",
        "sft": lambda i: cats[i] == "arithmetic",
    }
    general = {m: [_general(i, f(i), cats[i]) for i in range(n)] for m, f in right.items()}
    docs = summarise_scores(
        {("base", "closed_book"): [_record(i, "A", "A", "A", "A") for i in range(10)]}
    )
    order = ["base", "specialist:math", "merged", "dpo", "sft"]
    rows, pairs, md = general_report(
        general, docs, order, n_boot=200, sources=["base", "specialist:math"]
    )
    acc = {(r["model"], r["category"]): r["accuracy"] for r in rows}
    assert acc[("base", "all")] == 0.5 and acc[("merged", "arithmetic")] == 1.0
    assert acc[("specialist:math", "arithmetic")] == 1.0
    assert acc[("sft", "general")] == 0.0 and acc[("sft", "all")] == 0.5
    # per category: the specialist vs base, the merge vs each source, then the stages in order
    # (dpo not scored: sft vs merged)
    assert [(p["a"], p["b"]) for p in pairs] == [
        (f"{a} {c}", f"{b} {c}")
        for c in ("arithmetic", "general")
        for a, b in [
            ("specialist:math", "base"),
            ("merged", "base"),
            ("merged", "specialist:math"),
            ("sft", "merged"),
        ]
    ]
    by = {(p["a"], p["b"]): p for p in pairs}
    gain = by[("specialist:math arithmetic", "base arithmetic")]
    assert (gain["only_a"], gain["only_b"]) == (10, 0)  # base had 10 of the 20 arithmetic
    assert math.isclose(gain["mcnemar_p"], 2 * 0.5**10)
    assert gain["holm_p"] >= gain["mcnemar_p"] and gain["significant"]
    assert by[("sft general", "merged general")]["only_b"] == 10
    assert "| specialist:math | merge source | 100.0% [" in md
    assert "| base | merge source (base) |" in md and "| arithmetic | general | general set" in md
    assert "| dpo |" not in md  # a model without general scores gets no row


def _tied(rec, metric, k, right):
    """``rec`` with a k-way tie under ``metric``: credit 1/k when the correct option is among
    the tied ones (``right``), else 0."""
    field = {"acc": "is_correct", "acc_norm": "is_correct_norm"}[metric]
    rec[field] = 1 / k if right else 0.0
    rec.setdefault("tied", {})[metric] = k
    return rec


def test_a_tie_among_k_options_counts_one_kth_and_every_cell_counts_its_ties():
    recs = [_record(i, "A", "A" if i < 4 else "B", "A", "A") for i in range(10)]
    _tied(recs[0], "acc", 2, True)  # correct among 2 tied: 1/2
    _tied(recs[5], "acc", 4, True)  # among 4: 1/4
    _tied(recs[6], "acc", 3, False)  # tied, but not with the correct option: 0
    recs[9]["is_correct_bytes"] = True  # only one record with acc_bytes (older ones have none)
    (row,) = summarise_scores({("m", "closed_book"): recs})
    assert row["correct"] == pytest.approx(3 + 0.5 + 0.25) and row["accuracy"] == 0.375
    assert row["ties"] == 3 and row["acc_norm_ties"] == 0
    assert row["acc_bytes"] == 1.0 and row["acc_bytes_ties"] == 0
    # records without ties (and API bools) keep integer counts
    (plain,) = summarise_scores({("m", "closed_book"): recs[7:]})
    assert plain["correct"] == 0 and isinstance(plain["correct"], int)
    report = build_report({("m", "closed_book"): recs}, ["m"], ["closed_book"], n_boot=200)
    assert "(n=10); 3 tied;" in report.table_md
    assert "| m closed_book | 3 | 0 | 0 | 0 |" in report.ties_md
    assert "| acc | acc_norm | acc_bytes | acc_option |" in report.ties_md
    marks = [q["m closed_book"] for q in report.questions]
    assert marks[0] == "A ✓ 1/2 tie" and marks[6] == "B ✗ 3-way tie" and marks[7] == "B ✗"
    assert "## Ties" in report.markdown


def _stage_cells(moved: set[str]):
    """base, merged, dpo, sft answering 10 questions; a stage in ``moved`` changes 2 answers
    (acc_norm) from the stage before it."""
    answers = ["A"] * 5 + ["B"] * 5
    cells = {}
    for j, m in enumerate(("base", "merged", "dpo", "sft")):
        if m in moved:
            answers[2 * j : 2 * j + 2] = ["C", "C"]
        for c in ("closed_book", "rag"):
            cells[(m, c)] = [_record(i, "A", "B", answers[i], "B") for i in range(10)]
    return cells


def test_a_stage_answering_exactly_as_the_one_before_gets_a_sentence(tmp_path):
    from ragft_dagster.evaluation.report import unchanged_stages

    cells = _stage_cells(moved={"merged", "sft"})
    models = ["base", "merged", "dpo", "sft"]
    general = {m: [_general(i, i < 5, "general") for i in range(8)] for m in ("merged", "dpo")}
    general["dpo"][0]["predicted_norm"] = "D"  # one general answer moved
    for m in ("merged", "dpo"):
        for r in general[m]:
            r.setdefault("predicted_norm", r["predicted"])
    (note,) = unchanged_stages(cells, general, models, "acc_norm")
    assert note.startswith(
        "dpo answers exactly as merged on all 10 questions in every cell (closed_book, rag, "
        "acc_norm); on the general set 1 of 8 answers differ: DPO did not move the model's "
        "choices on this benchmark; see its held-out preference accuracy: none was recorded"
    )
    # by the letter every stage answers alike: three sentences
    assert len(unchanged_stages(cells, {}, models, "acc")) == 3
    assert unchanged_stages(_stage_cells(set(models)), {}, models, "acc_norm") == []
    # identical in one cell only: that cell is named, and how far the other moved
    some = _stage_cells(set(models))
    some[("merged", "closed_book")] = some[("base", "closed_book")]
    (partly,) = unchanged_stages(some, {}, models, "acc_norm")
    assert partly == (
        "merged answers exactly as base on every question in closed_book (acc_norm; rag: 2 of "
        "10 answers differ): in closed_book, the merge did not move the model's choices on this "
        "benchmark; see the merge sources' own scores in Figure 2."
    )

    pref = tmp_path / "preference_eval.json"
    pref.write_text(
        '{"pairs": 40, "accuracy": 0.75, "ci_low": 0.6, "ci_high": 0.86, "margin": 0.21, '
        '"train": {"loss_first": 0.69, "loss_last": 0.41, "reward_accuracy": 0.8, "steps": 20}, '
        '"note": "20% of the pairs held out."}'
    )
    report = build_report(
        cells, models, ["closed_book", "rag"], n_boot=200, metric="acc_norm", preference_file=pref
    )
    (note,) = report.stage_notes
    assert note.endswith("see its held-out preference accuracy: 75.0% [60–86] on 40 pairs.")
    assert "**Note:** dpo answers exactly as merged" in report.markdown
    md = report.preference_md
    assert "On 40 held-out preference pairs" in md and "**75.0%** [60.0%, 86.0%]" in md
    assert "clear of chance" in md and "loss 0.6900 → 0.4100 over 20 steps" in md
    assert "20% of the pairs held out." in md
    assert "## DPO: held-out preference accuracy" in report.markdown
    missing = build_report(
        cells, models, ["rag"], n_boot=200, preference_file=tmp_path / "absent.json"
    )
    assert "No held-out preference evaluation" in missing.preference_md
    assert "absent.json is absent" in missing.preference_md


def test_figure_2_opens_with_the_specialist_on_its_own_held_out_questions():
    from ragft_dagster.evaluation.skill_check import compare_on_skill

    check = compare_on_skill([0] * 20, [1] * 10 + [0] * 10, skill="arithmetic", metric="acc")
    cells = {("base", "closed_book"): [_record(i, "A", "A", "A", "A") for i in range(4)]}
    report = build_report(cells, ["base"], ["closed_book"], n_boot=50, skill_check=check)
    assert report.skill_md.startswith(
        "**The specialist on its own data** (20 held-out arithmetic questions, none of its "
        "training rows; acc): specialist 50.0% [30%–70%], base 0.0% [0%–16%]. The specialist "
        "has its skill: "
    )
    md = report.markdown
    assert md.index("## Figure 2") < md.index("**The specialist on its own data**")
    check["base_replies"] = {"truncated": 18, "stated": 0}
    check["specialist_replies"] = {"truncated": 0, "stated": 20}
    skill_md = build_report(cells, ["base"], ["closed_book"], n_boot=50, skill_check=check).skill_md
    assert skill_md.rstrip().endswith(
        'Replies that state "The answer is": specialist 20, base 0; cut off at the token limit: '
        "specialist 0, base 18 (a cut-off reply is judged on its last number)."
    )
    assert build_report(cells, ["base"], ["closed_book"], n_boot=50).skill_md == ""


def test_report_asset_shows_figure_2_ties_and_dpo_preference_accuracy(tmp_path):
    import json

    from ragft_dagster.artifacts import ArtifactLayout, write_jsonl
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.definitions import build_resources

    root = tmp_path / "artifacts"
    layout = ArtifactLayout(root)
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            lambda raw: raw["evaluation"].update(
                models=["base", "merged", "dpo"], headline_metric="acc_norm"
            ),
        )
    )
    cells = _stage_cells(moved={"merged"})  # dpo answers exactly as merged
    _tied(cells[("dpo", "rag")][3], "acc_norm", 2, True)
    for (model, context), recs in cells.items():
        write_jsonl(layout.scores(model, context), recs)
    cats = ["general" if i % 2 else "arithmetic" for i in range(20)]
    for model in ("base", "tiny:math", "merged", "dpo"):
        skilled = model != "base"
        write_jsonl(
            layout.general_scores(model),
            [
                {
                    **_general(i, i < 6 or (skilled and cats[i] == "arithmetic"), cats[i]),
                    "predicted_norm": "A",
                    "is_correct_norm": i < 6 or (skilled and cats[i] == "arithmetic"),
                }
                for i in range(20)
            ],
        )
    layout.dpo_model.mkdir(parents=True)
    (layout.dpo_model / "preference_eval.json").write_text(
        json.dumps({"pairs": 30, "accuracy": 0.5, "ci_low": 0.33, "ci_high": 0.67, "margin": 0.0})
    )
    result = dg.materialize(
        build_all_assets(recipe),
        resources=build_resources(recipe, load_profile(LOCAL_PROFILE), root),
        selection="mcq_report",
    )
    meta = {
        k: getattr(v, "value", v)
        for k, v in result.asset_materializations_for_node("mcq_report")[0].metadata.items()
    }
    assert "| tiny:math | merge source |" in meta["figure_2"]
    assert "tiny:math arithmetic vs base arithmetic" in meta["figure_2"]
    assert "data:image/png;base64," in meta["figure_2_chart"]
    assert meta["general_arithmetic_accuracy_tiny:math"] == 1.0
    assert meta["general_arithmetic_accuracy_base"] == pytest.approx(0.3)
    assert meta["dpo_preference_accuracy"] == 0.5 and meta["dpo_preference_pairs"] == 30
    assert "includes chance" in meta["dpo_preference"]
    assert meta["ties_dpo_rag"] == 1 and meta["ties_dpo_closed_book"] == 0
    # the tie changes dpo's credit, not its answer: still every answer as merged
    assert meta["unchanged_stages"] == 1
    assert "dpo answers exactly as merged" in meta["stage_notes"]
    assert "50.0% [33–67] on 30 pairs" in meta["stage_notes"]
    md = (layout.report / "report.md").read_text()
    assert "## Figure 2: merge sources" in md and "![Figure 2](figure2.png)" in md
    assert "## DPO: held-out preference accuracy" in md and "## Ties" in md
    assert (layout.report / "figure2.png").stat().st_size > 5000
