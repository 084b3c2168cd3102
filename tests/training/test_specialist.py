"""The derived specialist (skill set, training, the merge's reference to it), the duplicate-input
merge preflight, and `ragft run`'s failure output through the real CLI."""

import os
import re
import subprocess
import sys

import pytest

from ragft_dagster.config.recipe import RecipeError, load_recipe
from ragft_dagster.data.skills import skill_rows
from ragft_dagster.evaluation.skill_check import (
    compare_on_skill,
    final_number,
    held_out_problems,
    read_skill_eval,
)
from ragft_dagster.models.merge_preflight import MergeCompatibilityError, preflight_merge

from ..conftest import LOCAL_PROFILE, ROOT, write_recipe


def test_skill_rows_are_deterministic_distinct_and_correct():
    rows = skill_rows("arithmetic", 200, seed=0)
    assert rows == skill_rows("arithmetic", 200, seed=0)
    assert rows != skill_rows("arithmetic", 200, seed=1)
    questions = [r["messages"][0]["content"] for r in rows]
    assert len(set(questions)) == 200
    for row in rows:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        work, result = re.fullmatch(r"(.*)\. The answer is (\d+)\.", assistant["content"]).groups()
        # The worked calculation's last step evaluates to the stated answer.
        *_, expression, value = work.rsplit(", so ", 1)[-1].split(" = ")
        assert re.fullmatch(r"[\d +\-x/]+", expression), row
        assert eval(expression.replace("x", "*"), {}) == int(value) == int(result), row
    with pytest.raises(ValueError, match="unknown skill"):
        skill_rows("poetry", 3)


def test_held_out_skill_problems_carry_their_result_and_none_of_the_training_rows():
    from ragft_dagster.data.skills import skill_problems

    rows = skill_rows("arithmetic", 40, seed=5)
    problems = skill_problems("arithmetic", 40, seed=5)
    assert problems == skill_problems("arithmetic", 40, seed=5)
    # same seed, same problems as the training rows, with the answer's final number
    assert [(p["question"], p["answer"]) for p in problems] == [
        (r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows
    ]
    assert all(p["answer"].endswith(f"The answer is {p['result']}.") for p in problems)
    training = skill_rows("arithmetic", 160, seed=0)
    held_out = skill_problems("arithmetic", 80, seed=1000, exclude=training)
    assert len(held_out) == 80
    assert not {p["question"] for p in held_out} & {r["messages"][0]["content"] for r in training}


@pytest.mark.parametrize(
    ("reply", "number"),
    [
        ("90 / 9 = 10. The answer is 10.", 10),  # the skill set's own form (strict)
        ("Each friend gets 10 books, 90 in all.", 90),  # else the last number (flexible)
        ("The answer is 1,000 grams, or 1 kg.", 1000),
        ("It is -5.", -5),
        ("I cannot tell.", None),
    ],
)
def test_a_reply_is_judged_on_its_final_number(reply, number):
    assert final_number(reply) == number


def _slerp(a: str, b: str) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": a,
        "slices": [
            {"sources": [{"model": a, "layer_range": [0, 2]}, {"model": b, "layer_range": [0, 2]}]}
        ],
        "parameters": {"t": 0.5},
        "dtype": "float32",
    }


def test_the_skill_check_set_is_held_out_and_the_comparison_is_worked_by_hand():
    training = skill_rows("arithmetic", 160, seed=0)
    problems = held_out_problems("arithmetic", 40, 0, training)
    assert problems == held_out_problems("arithmetic", 40, 0, training)
    assert not {p["question"] for p in problems} & {r["messages"][0]["content"] for r in training}
    assert len({p["question"] for p in problems}) == 40

    # 10 questions: both right on 2, only the specialist on 5, only base on 1, a base tie
    # between two options (credit 1/2) where the specialist is right.
    base = [1, 1, 0, 0, 0, 0, 0, 1, 0, 0.5]
    spec = [1, 1, 1, 1, 1, 1, 1, 0, 0, 1]
    r = compare_on_skill(base, spec, skill="arithmetic", metric="acc_norm")
    assert (r["base_accuracy"], r["specialist_accuracy"]) == (0.35, 0.8)
    assert (r["only_specialist"], r["only_base"]) == (5.5, 1)
    # tie broken for base (prob 1/2): 5 vs 1 discordant, P(X >= 5 | 6) = 7/64;
    # against it: 6 vs 1, P(X >= 6 | 7) = 8/128; the expectation of the two.
    assert r["p_one_sided"] == pytest.approx(0.5 * 7 / 64 + 0.5 * 8 / 128)
    assert not r["gained"] and "did not measurably gain" in r["sentence"]
    strong = compare_on_skill([0] * 20, [1] * 10 + [0] * 10, skill="arithmetic", metric="acc")
    assert strong["p_one_sided"] == pytest.approx(0.5**10)
    assert strong["gained"] and strong["sentence"].startswith("The specialist has its skill")
    with pytest.raises(ValueError, match="same, non-empty"):
        compare_on_skill([1], [1, 0], skill="arithmetic", metric="acc")


def test_a_merge_of_a_model_with_itself_fails_in_the_preflight(tmp_path):
    with pytest.raises(MergeCompatibilityError) as err:
        preflight_merge(_slerp("tiny:base", "tiny:base"), tmp_path, tmp_path)
    message = str(err.value)
    assert "slices[0].sources names 'tiny:base' twice" in message
    assert "specialist:<name>" in message and "Duplicate merge inputs" not in message


def test_two_references_to_one_folder_are_the_same_model(tmp_path, tiny_base):
    with pytest.raises(MergeCompatibilityError, match="names 'tiny:base' and"):
        preflight_merge(_slerp("tiny:base", str(tiny_base)), tiny_base.parent.parent, tmp_path)


def test_a_specialist_reference_must_name_the_recipe_specialist(tmp_path):
    def edit(raw):
        raw["merge"] = _slerp("tiny:base", "specialist:code")

    with pytest.raises(RecipeError, match="'specialist:code' names no specialist of this recipe"):
        load_recipe(write_recipe(tmp_path, edit))


def test_the_merge_preflight_names_the_specialist_to_materialize(tmp_path):
    from ragft_dagster.config.merge import merge_stages

    assert merge_stages(_slerp("tiny:base", "specialist:math"))
    with pytest.raises(MergeCompatibilityError, match="re-materialize specialist_model"):
        preflight_merge(_slerp("tiny:base", "specialist:math"), tmp_path, tmp_path)


@pytest.mark.slow
def test_specialist_model_trains_and_the_merge_uses_it(tmp_path):
    """A tiny specialist derived and SLERP-merged with its base through the model job."""
    import dagster as dg

    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.definitions import build_definitions

    def edit(raw):
        raw["specialist"] = {
            "name": "math",
            "base_model": "tiny:base",
            "examples": 24,
            "args": {
                "per_device_train_batch_size": 8,
                "max_length": 64,
                "learning_rate": 1e-3,
                "num_train_epochs": 1,
            },
        }
        raw["merge"] = _slerp("tiny:base", "specialist:math")

    defs = build_definitions(write_recipe(tmp_path, edit), LOCAL_PROFILE, tmp_path / "art")
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("models_job").execute_in_process(instance=instance)
    assert result.success
    meta = result.asset_materializations_for_node("specialist_model")[0].metadata
    assert meta["train_rows"].value == 24 and meta["steps"].value == 3
    layout = ArtifactLayout(tmp_path / "art")
    assert (layout.specialist_model / "model.safetensors").is_file()
    # base and specialist answered the same 160 held-out skill questions (the default)
    check = read_skill_eval(layout.specialist_model)
    assert check["questions"] == meta["skill_questions"].value == 160
    assert meta["skill_accuracy"].value == check["specialist_accuracy"]
    assert meta["skill_accuracy_base"].value == check["base_accuracy"]
    assert "held-out arithmetic questions" in meta["skill_check"].value
    assert "final number of the generated reply" in check["metric"]
    assert check["specialist_replies"]["truncated"] <= 160
    merged = result.asset_materializations_for_node("merged_model")[0].metadata
    assert "specialist:math" in merged["sources"].value


def _ragft_run(tmp_path, recipe, extra_env=None):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), **(extra_env or {})}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "ragft_dagster.cli", "run", "--recipe", str(recipe)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_ragft_run_prints_a_failed_step_and_exits_1_without_a_traceback(tmp_path):
    recipe = write_recipe(tmp_path, lambda raw: raw.update(merge=_slerp("tiny:base", "tiny:base")))
    done = _ragft_run(tmp_path, recipe)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "FAILED models_job: " in out and "names 'tiny:base' twice" in out
    assert re.search(r"run [0-9a-f-]{36} failed", out)
    assert "Traceback" not in out and "CheckError" not in out


@pytest.mark.slow
def test_ragft_run_prints_a_run_start_failure_and_exits_1_without_a_traceback(tmp_path):
    """An API model without its key: the EnvVar cannot resolve, the run fails before any step."""

    def edit(raw):
        raw["evaluation"]["api"] = {"models": ["stub-model"]}

    done = _ragft_run(tmp_path, write_recipe(tmp_path, edit))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    # one run for the quickstart's 17 documents (a partition range)
    failed = r"FAILED documents_job \[[\w.-]+\] \(17 documents\): environment variable OPENAI"
    assert re.search(failed, out), out
    assert "Traceback" not in out and "CheckError" not in out
