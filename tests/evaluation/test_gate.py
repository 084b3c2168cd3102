"""The release gate: the fine-tuned model beats the base model with RAG and keeps its general
capability, or exported_model is held."""

import shutil

import dagster as dg
import pytest

from ragft_dagster.artifacts import ArtifactLayout, write_jsonl
from ragft_dagster.evaluation.gate import mcnemar_one_sided, release_decision

from ..conftest import LOCAL_PROFILE, write_recipe
from .test_report import _general, _record

N = 40


def _docs(right: int) -> list[dict]:
    """N benchmark answers (acc_norm), the first ``right`` of them correct."""
    return [_record(i, "A", "B", "A" if i < right else "C", "B") for i in range(N)]


def _general_set(right: int) -> list[dict]:
    return [
        {
            **_general(i, i < right, "general"),
            "predicted_norm": "A" if i < right else "B",
            "is_correct_norm": i < right,
        }
        for i in range(N)
    ]


def test_one_sided_mcnemar_is_the_upper_binomial_tail():
    assert mcnemar_one_sided(0, 0) == 1.0
    assert mcnemar_one_sided(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_one_sided(0, 5) == 1.0
    # 6 vs 2 discordant: P(X >= 6 | n=8) = (28 + 8 + 1) / 256
    assert mcnemar_one_sided(6, 2) == pytest.approx(37 / 256)


def _decide(docs_sft, docs_base, gen_sft, gen_base, **kw):
    return release_decision(
        "sft",
        "base",
        "rag",
        {"sft": _docs(docs_sft), "base": _docs(docs_base)},
        None if gen_sft is None else {"sft": _general_set(gen_sft), "base": _general_set(gen_base)},
        metric="acc_norm",
        alpha=kw.get("alpha", 0.05),
        max_general_drop=kw.get("margin", 0.05),
        n_boot=200,
    )


def test_gate_passes_a_significant_gain_that_kept_general_capability():
    decision = _decide(30, 10, 20, 21)  # +20 right on the docs, general -1 of 40 (2.5 points)
    assert decision.passed and decision.reasons == []
    f = decision.figures
    assert f["p_one_sided"] == pytest.approx(0.5**20)
    assert f["difference"] == pytest.approx(0.5) and f["general_drop"] == pytest.approx(0.025)
    assert decision.summary().startswith("passed: sft rag 75.0% vs base rag 25.0%")


def test_gate_holds_a_gain_the_test_cannot_tell_from_chance():
    decision = _decide(13, 10, None, None)  # 3 vs 0 discordant: p = 1/8
    assert not decision.passed
    assert "does not significantly beat base rag" in decision.reasons[0]
    assert "p=0.125" in decision.reasons[0]
    assert "general_drop" not in decision.figures
    assert _decide(10, 10, None, None).passed is False  # no gain at all


def test_gate_holds_a_model_that_forgot_more_than_the_margin():
    decision = _decide(30, 10, 14, 20, margin=0.1)  # general 35% vs 50%: 15 points lost
    assert not decision.passed and len(decision.reasons) == 1
    assert "general score fell 15.0 points below base's" in decision.reasons[0]
    assert "more than the 10.0 allowed" in decision.reasons[0]
    assert _decide(30, 10, 14, 20, margin=0.15).passed


def _gate_recipe(tmp_path, export=True, **gate):
    from ragft_dagster.config.recipe import load_recipe

    def mutate(raw):
        raw["evaluation"].update(models=["base", "sft"], headline_metric="acc_norm")
        raw["release_gate"] = {"enabled": True, **gate}
        raw["export"] = {"enabled": export, "dtype": "float32"}

    return load_recipe(write_recipe(tmp_path, mutate))


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"candidate": "dpo"}, "release_gate.candidate 'dpo' is not a benchmarked model"),
        ({"baseline": "sft"}, "candidate and release_gate.baseline are the same model"),
    ],
)
def test_a_gate_naming_a_model_the_benchmark_does_not_score_fails_at_load(tmp_path, gate, message):
    from ragft_dagster.config.recipe import RecipeError

    with pytest.raises(RecipeError, match=message):
        _gate_recipe(tmp_path, **gate)


def _scored(root, recipe, gains=((10, 20), (30, 10))):
    """Score files for base and sft: (docs right, general right) of N each; the merge's other
    sources score on the general set as base does (the report needs every source)."""
    from ragft_dagster.models.refs import merge_source_keys

    layout = ArtifactLayout(root)
    for model, (docs, general) in zip(("base", "sft"), gains, strict=True):
        for context in ("closed_book", "rag"):
            write_jsonl(layout.scores(model, context), _docs(docs))
        write_jsonl(layout.general_scores(model), _general_set(general))
    for source in merge_source_keys(recipe):
        if source != "base":
            write_jsonl(layout.general_scores(source), _general_set(gains[0][1]))
    return layout


def test_without_an_export_a_failed_gate_warns_and_the_run_succeeds(tmp_path):
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.definitions import build_resources

    recipe = _gate_recipe(tmp_path, export=False)
    root = tmp_path / "artifacts"
    _scored(root, recipe, gains=((10, 20), (12, 20)))
    result = dg.materialize(
        build_all_assets(recipe),
        resources=build_resources(recipe, load_profile(LOCAL_PROFILE), root),
        selection="mcq_report",
    )
    gate = next(c for c in result.get_asset_check_evaluations() if c.check_name == "release_gate")
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.WARN
    assert gate.metadata["decision"].value == "hold"
    assert "does not significantly beat" in gate.description


def test_failed_gate_is_an_error_check_and_holds_the_export(tmp_path, tiny_base):
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.definitions import build_resources

    recipe = _gate_recipe(tmp_path, max_general_drop=0.1)
    root = tmp_path / "artifacts"
    layout = _scored(root, recipe)
    shutil.copytree(tiny_base, layout.dpo_model)
    resources = build_resources(recipe, load_profile(LOCAL_PROFILE), root)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        build_all_assets(recipe),
        resources=resources,
        instance=instance,
        selection="mcq_report",
        raise_on_error=False,
    )
    # a blocking check that fails fails its run (Dagster's semantics), after the report is written
    assert not result.success and result.asset_materializations_for_node("mcq_report")
    gate = next(c for c in result.get_asset_check_evaluations() if c.check_name == "release_gate")
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    meta = {k: getattr(v, "value", v) for k, v in gate.metadata.items()}
    assert meta["decision"] == "hold"
    assert meta["candidate_accuracy"] == 0.75 and meta["general_drop"] == pytest.approx(0.25)
    assert "general score fell 25.0 points" in gate.description

    export = dg.materialize(
        build_all_assets(recipe),
        resources=resources,
        instance=instance,
        selection="exported_model",
        raise_on_error=False,
    )
    assert not export.success
    failure = export.get_step_failure_events()[0].step_failure_data.error.message
    assert "release gate: not exported" in failure and "general score fell" in failure
    assert not layout.exported_model.exists()


def test_ragft_run_prints_a_blocking_gate_as_one_line_and_its_reasons():
    from types import SimpleNamespace

    from ragft_dagster.runner import _echo_failed_checks, _readable

    raw = (
        "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed with "
        "ERROR severity:\nmcq_report: release_gate\n"
    )
    assert _readable(raw) == (
        "1 blocking asset check failed with ERROR severity: mcq_report: release_gate"
    )
    assert _readable("  plain message \n") == "plain message"
    lines: list[str] = []
    check = SimpleNamespace(
        passed=False,
        description="sft rag does not significantly beat base rag",
        check_name="release_gate",
        asset_key=dg.AssetKey("mcq_report"),
    )
    _echo_failed_checks([check, SimpleNamespace(passed=True)], lines.append)
    assert lines == [
        "CHECK FAILED mcq_report: release_gate (sft rag does not significantly beat base rag)"
    ]


def test_split_ties_enter_the_gate_as_fractional_credit():
    docs_sft, docs_base = _docs(8), _docs(5)
    for r in docs_sft[5:8]:  # three of sft's gains are 2-way ties that include the answer
        r["is_correct_norm"], r["tied"] = 0.5, {"acc_norm": 2}
    decision = release_decision(
        "sft",
        "base",
        "rag",
        {"sft": docs_sft, "base": docs_base},
        None,
        metric="acc_norm",
        alpha=0.05,
        max_general_drop=0.05,
        n_boot=200,
    )
    f = decision.figures
    assert f["only_candidate_correct"] == pytest.approx(1.5) and f["difference"] == pytest.approx(
        1.5 / N
    )
    # 0-3 of the ties go sft's way (binomial 1/2): the one-sided p averaged over them
    expected = (
        sum(w * mcnemar_one_sided(k, 0) for k, w in zip(range(4), (1, 3, 3, 1), strict=True)) / 8
    )
    assert f["p_one_sided"] == pytest.approx(expected)
    assert "1.5 vs 0 discordant" in decision.figures["docs_verdict"] and not decision.passed
