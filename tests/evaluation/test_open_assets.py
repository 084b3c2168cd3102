"""open_scores, judge_agreement and the report's open-answer section as Dagster assets: the
graph they add (and what they leave alone), a cell materialized by a real tiny model, the
report and the release gate on an open-answer metric."""

import json

import dagster as dg
import pytest

from ragft_dagster.artifacts import ArtifactLayout, write_jsonl
from ragft_dagster.evaluation.open_answers import open_scores_path

from ..conftest import LOCAL_PROFILE, write_recipe
from .test_gate import _scored

QUESTIONS = "question,answer,source\n" + "".join(
    f"Which value does setting {i} take?,value {i},installation.md\n" for i in range(10)
)


def _recipe(tmp_path, judge=False, gate=None, **open_answers):
    from ragft_dagster.config.recipe import load_recipe

    questions = tmp_path / "open.csv"
    questions.write_text(QUESTIONS, encoding="utf-8")
    labels = tmp_path / "labels.csv"
    labels.write_text("question,reference,answer,label\nQ?,R,R,correct\n", encoding="utf-8")

    def mutate(raw):
        ev = raw["evaluation"]
        ev.update(models=["base", "sft"], headline_metric="acc_norm", open_questions=str(questions))
        ev["open_answers"] = {"max_new_tokens": 4, **open_answers}
        if judge:
            ev["open_answers"]["judge"] = {"model": "judge-model", "labels": str(labels)}
        if gate is not None:
            raw["release_gate"] = {"enabled": True, **gate}

    return load_recipe(write_recipe(tmp_path, mutate))


def _graph(recipe):
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.definitions import definitions_for

    return definitions_for(recipe, load_profile(LOCAL_PROFILE), None).resolve_asset_graph()


def test_open_answers_add_their_assets_and_rescore_no_mcq_cell(tmp_path):
    from ragft_dagster.config.recipe import load_recipe

    for sub in ("chosen", "every"):
        (tmp_path / sub).mkdir()
    graph = _graph(_recipe(tmp_path / "chosen", judge=True, contexts=["rag"]))
    key = dg.AssetKey
    scores = graph.get(key("open_scores"))
    assert scores.group_name == "open_answers" and scores.pools == {"gpu"}
    assert sorted(scores.partitions_def.get_partition_keys()) == ["rag|base", "rag|sft"]
    assert graph.get(key("judge_agreement")).group_name == "report"
    parents = {p.to_user_string() for p in graph.get(key("mcq_report")).parent_keys}
    assert {"open_scores", "judge_agreement", "mcq_scores"} <= parents
    # the MCQ cells keep their version: adding open answers re-scores nothing there
    plain = _graph(
        load_recipe(
            write_recipe(
                tmp_path,
                lambda raw: raw["evaluation"].update(
                    models=["base", "sft"], headline_metric="acc_norm"
                ),
            )
        )
    )
    assert plain.get(key("mcq_scores")).code_version == graph.get(key("mcq_scores")).code_version
    assert not plain.has(key("open_scores"))
    # every cell of the benchmark by default: the very partitions of mcq_scores
    every = _graph(_recipe(tmp_path / "every"))
    assert (
        every.get(key("open_scores")).partitions_def == every.get(key("mcq_scores")).partitions_def
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": ["dpo"]}, "open_answers.models names 'dpo'"),
        ({"contexts": []}, "may not be empty"),
    ],
)
def test_open_cells_must_be_benchmarked_cells(tmp_path, change, message):
    from ragft_dagster.config.recipe import RecipeError

    with pytest.raises(RecipeError, match=message):
        _recipe(tmp_path, **change)


def test_a_missing_open_question_file_is_named_at_load(tmp_path):
    from ragft_dagster.config.recipe import RecipeError, load_recipe

    def mutate(raw):
        raw["evaluation"]["open_questions"] = str(tmp_path / "nope.csv")

    with pytest.raises(RecipeError, match="key 'evaluation.open_questions': file not found"):
        load_recipe(write_recipe(tmp_path, mutate))


def test_a_gate_on_judge_verdicts_needs_a_judge(tmp_path):
    from ragft_dagster.config.recipe import RecipeError

    with pytest.raises(RecipeError, match="needs a judge"):
        _recipe(tmp_path, gate={"open_metric": "judge_correct"}, contexts=["rag"])


def test_a_cell_materializes_through_dagster_and_its_rerun_generates_nothing(tmp_path):
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.definitions import build_resources

    recipe = _recipe(tmp_path, models=["base"], contexts=["closed_book"])
    root = tmp_path / "artifacts"
    resources = build_resources(recipe, load_profile(LOCAL_PROFILE), root)
    metas = []
    for _ in range(2):
        result = dg.materialize(
            build_all_assets(recipe),
            resources=resources,
            selection="open_scores",
            partition_key="closed_book|base",
        )
        [mat] = result.asset_materializations_for_node("open_scores")
        metas.append({k: getattr(v, "value", v) for k, v in mat.metadata.items()})
    first, second = metas
    assert first["questions"] == 10 and first["answers_generated"] == 10
    assert second["answers_generated"] == 0 and second["answers_cached"] == 10
    assert 0.0 <= first["token_f1"] <= 1.0 and "rouge_l" in first and "similarity" in first
    assert open_scores_path(ArtifactLayout(root), "base", "closed_book").is_file()


def _open_records(right: int) -> list[dict]:
    """10 open answers, the first ``right`` of them the reference itself."""
    out = []
    for i in range(10):
        good = i < right
        out.append(
            {
                "question_id": f"q{i}",
                "row": i + 1,
                "question": f"Which value does setting {i} take?",
                "reference": f"value {i}",
                "answer": f"value {i}" if good else "no idea",
                "truncated": False,
                "exact_match": float(good),
                "token_f1": 1.0 if good else 0.0 + 0.01 * i,
                "rouge_l": 1.0 if good else 0.0,
                "similarity": 0.9 if good else 0.1,
                "coverage": 0.5,
                "source_retrieved": True,
                "reference_chunk_retrieved": good,
                "retrieved": [],
            }
        )
    return out


def test_the_report_has_an_open_answer_section_and_the_gate_tests_its_metric(tmp_path):
    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.definitions import build_resources

    recipe = _recipe(
        tmp_path, gate={"open_metric": "token_f1"}, models=["base", "sft"], contexts=["rag"]
    )
    root = tmp_path / "artifacts"
    # MCQ: sft 30 of 40 right, base 10; both 20 of 40 on the general set
    layout = _scored(root, recipe, gains=((10, 20), (30, 20)))
    write_jsonl(open_scores_path(layout, "sft", "rag"), _open_records(9))
    write_jsonl(open_scores_path(layout, "base", "rag"), _open_records(2))
    result = dg.materialize(
        build_all_assets(recipe),
        resources=build_resources(recipe, load_profile(LOCAL_PROFILE), root),
        selection="mcq_report",
    )
    [mat] = result.asset_materializations_for_node("mcq_report")
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert meta["open_token_f1_sft_rag"] == pytest.approx(0.909)  # 9 x 1.0 + 0.09
    assert meta["open_exact_match_base_rag"] == pytest.approx(0.2)
    assert "sft rag vs base rag" in meta["open_answers"]
    assert "![open answers](data:image/png;base64," in meta["open_answers_chart"]
    report = (layout.report / "report.md").read_text(encoding="utf-8")
    assert "## Open answers" in report and (layout.report / "open_answers.json").is_file()
    gate = next(c for c in result.get_asset_check_evaluations() if c.check_name == "release_gate")
    figures = {k: getattr(v, "value", v) for k, v in gate.metadata.items()}
    # 7 questions better (1.0 vs 0.0x), none worse: one-sided Wilcoxon p = 1/2^7
    assert figures["open_test"] == "Wilcoxon signed-rank"
    assert figures["open_p_one_sided"] == pytest.approx(1 / 128)
    assert gate.passed


def _judge_reply(body):
    """Correct when the answer holds the reference's last word; one in three answers gets
    prose instead of a verdict (an unreadable reply)."""
    prompt = body["messages"][0]["content"]
    if "Reference answer:" not in prompt:
        return "faithful"
    reference = prompt.split("Reference answer: ")[1].split("\n")[0]
    answer = prompt.split("Answer to grade: ")[1].split("\n")[0]
    if "setting 3" in prompt or "setting 6" in prompt or "setting 9" in prompt:
        return "Hard to say, it depends."
    return '{"verdict": "%s", "reason": "r"}' % (
        "correct" if reference.split()[-1] in answer else "incorrect"
    )


def test_the_judge_runs_through_the_assets_against_a_loopback_server(tmp_path, monkeypatch):
    import yaml

    from ragft_dagster.assets import build_all_assets
    from ragft_dagster.config.profile import load_profile
    from ragft_dagster.definitions import build_resources

    from ..openai_stub import OpenAIStub

    recipe = _recipe(tmp_path, judge=True, models=["base"], contexts=["closed_book"])
    (tmp_path / "labels.csv").write_text(
        "question,reference,answer,label\n"
        "Which port?,port 3000,it is 3000,correct\n"
        "Which port?,port 3000,it is 80,incorrect\n"
        "Which tool?,use ruff,black,correct\n",  # the judge will disagree here
        encoding="utf-8",
    )
    monkeypatch.setenv("RAGFT_TEST_KEY", "sk-test")
    with OpenAIStub([_judge_reply]) as stub:
        profile = tmp_path / "stub.yaml"
        profile.write_text(
            yaml.safe_dump(
                {
                    "name": "stub",
                    "executor": "in_process",
                    "llm": {"base_url": stub.base_url, "api_key_env": "RAGFT_TEST_KEY"},
                }
            )
        )
        root = tmp_path / "artifacts"
        resources = build_resources(recipe, load_profile(profile), root)
        assets = build_all_assets(recipe)
        cell = dg.materialize(
            assets, resources=resources, selection="open_scores", partition_key="closed_book|base"
        )
        trust = dg.materialize(assets, resources=resources, selection="judge_agreement")
    [mat] = cell.asset_materializations_for_node("open_scores")
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    # 10 answers, closed-book: one correctness verdict each; 3 unreadable, counted
    assert meta["judge_verdicts"] == 10 and meta["judge_unreadable"] == 3
    assert meta["judge_requests"] == 10 and meta["judge_off_schema"] == 3
    records = [
        json.loads(line)
        for line in open_scores_path(ArtifactLayout(root), "base", "closed_book")
        .read_text(encoding="utf-8")
        .splitlines()
    ]
    assert sum(r["judge_correct"] is None for r in records) == 3
    assert all(r["judge_correct"] in (0.0, 1.0) for r in records if r["row"] not in (4, 7, 10))
    [mat] = trust.asset_materializations_for_node("judge_agreement")
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert meta["labelled_answers"] == 3 and meta["agreement"] == pytest.approx(2 / 3)
    assert meta["asked_twice"] == 3 and meta["self_agreement"] == 1.0
