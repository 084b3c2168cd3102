"""DPO's held-out measure: the content-hash split of the preference pairs, the preference
accuracy of a policy against its reference, and what dpo_model records of it."""

import json
import math
import random

import dagster as dg
import pytest
from statsmodels.stats.proportion import proportion_confint

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.training.preference import (
    PREFERENCE_EVAL_FILE,
    PreferenceDataError,
    heldout_note,
    load_preference_pairs,
    preference_accuracy,
    split_preference_pairs,
)

from ..conftest import QUICKSTART_DATA, write_recipe

PAIRS = QUICKSTART_DATA / "preference_pairs.jsonl"


def _prompts(rows):
    return [json.dumps(r["prompt"], sort_keys=True) for r in rows]


def test_preference_accuracy_on_hand_made_log_probabilities():
    # rewards (beta 0.5): pair 1 chosen +1.0 / rejected -1.0 (right); pair 2 chosen -0.5 /
    # rejected +0.5 (wrong); pair 3 chosen +1.0 / rejected +0.5 (right); pair 4 both moved by
    # the same amount (a tie, half credit)
    policy_chosen = [-10.0, -21.0, -28.0, -40.0]
    policy_rejected = [-14.0, -11.0, -31.0, -51.0]
    ref_chosen = [-12.0, -20.0, -30.0, -41.0]
    ref_rejected = [-12.0, -12.0, -32.0, -52.0]
    out = preference_accuracy(
        policy_chosen,
        policy_rejected,
        ref_chosen,
        ref_rejected,
        0.5,
        categories=["a", "a", "b", None],
    )
    assert (out["pairs"], out["right"], out["ties"]) == (4, 2, 1)
    assert out["accuracy"] == pytest.approx(2.5 / 4)
    # mean chosen-minus-rejected reward: (2.0 - 1.0 + 0.5 + 0.0) / 4
    assert out["margin"] == pytest.approx(0.375)
    low, high = proportion_confint(2.5, 4, alpha=0.05, method="wilson")
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert out["by_category"] == {
        "a": {"pairs": 2, "right": 1, "accuracy": 0.5},
        "b": {"pairs": 1, "right": 1, "accuracy": 1.0},
        "uncategorised": {"pairs": 1, "right": 0, "accuracy": 0.5},
    }
    # the policy before training is the reference: every pair ties, 0.5 by construction
    start = preference_accuracy(ref_chosen, ref_rejected, ref_chosen, ref_rejected, 0.1)
    assert (start["accuracy"], start["ties"], start["margin"]) == (0.5, 4, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        preference_accuracy([1.0], [1.0, 2.0], [1.0], [1.0], 0.1)


def _with_right(right: int, n: int) -> dict:
    chosen = [1.0] * right + [0.0] * (n - right)
    return preference_accuracy(chosen, [1.0 - c for c in chosen], [0.0] * n, [0.0] * n, 1)


def test_the_note_says_in_plain_words_whether_dpo_moved_the_model():
    untrained = preference_accuracy([0.0] * 40, [0.0] * 40, [0.0] * 40, [0.0] * 40, 1)
    moved = heldout_note(_with_right(30, 40), untrained, 15)
    assert moved.startswith("DPO moved the model measurably: after 15 steps")
    assert "30 of 40 held-out pairs" in moved and "every pair tied (0.5)" in moved
    unclear = heldout_note(_with_right(8, 12), untrained, 3)
    assert unclear.startswith(
        "DPO did not move the model measurably on held-out pairs within this budget"
    )
    assert "includes 0.5" in unclear  # 8 of 12: about the share of 27 of 40, too few pairs
    assert _with_right(27, 40)["ci_low"] > 0.5 > _with_right(8, 12)["ci_low"]
    assert heldout_note(_with_right(5, 40), untrained, 15).startswith(
        "DPO moved the model the wrong way"
    )
    # an untrained policy that is not the reference says what it scored instead
    assert "before training the accuracy was 0.75" in heldout_note(
        _with_right(30, 40), _with_right(3, 4), 15
    )


def test_the_held_out_split_is_by_content_hash_disjoint_and_order_free():
    rows = load_preference_pairs(PAIRS)
    train, held = split_preference_pairs(rows, 0.4)
    assert len(train) + len(held) == len(rows) and held and train
    assert not set(_prompts(train)) & set(_prompts(held))
    # not by position: the same pairs are held out whatever the order of the file
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert sorted(_prompts(split_preference_pairs(shuffled, 0.4)[1])) == sorted(_prompts(held))
    # stable: more pairs never move a pair from one side to the other, and a larger
    # fraction only adds to the held-out side
    assert set(_prompts(split_preference_pairs(rows[:50], 0.4)[1])) <= set(_prompts(held))
    assert set(_prompts(held)) <= set(_prompts(split_preference_pairs(rows, 0.6)[1]))
    # pairs that share a prompt stay together
    twin = {**held[0], "chosen": [{"role": "assistant", "content": "another answer"}]}
    assert twin in split_preference_pairs([*train, twin], 0.4)[1]
    assert split_preference_pairs(rows, 0.0) == (rows, [])
    # too few pairs to hold any out: no held-out measure, not an error; none to train on is
    assert split_preference_pairs(rows[:2], 0.001) == (rows[:2], [])
    with pytest.raises(PreferenceDataError, match="pairs.jsonl: .* leaving none to train on"):
        split_preference_pairs(rows[:2], 0.999, source="pairs.jsonl")


def _materialize_dpo(tmp_path, mutate):
    from ragft_dagster.assets import models
    from ragft_dagster.resources import ArtifactStoreResource, ComputeResource

    recipe = load_recipe(write_recipe(tmp_path, mutate))
    result = dg.materialize(
        models.build(recipe),
        resources={
            "artifacts": ArtifactStoreResource(root=str(tmp_path / "artifacts")),
            "compute": ComputeResource(device="cpu"),
        },
    )
    assert result.success
    return recipe, result.asset_materializations_for_node("dpo_model")[0].metadata


def test_dpo_model_reports_its_held_out_preference_accuracy(tmp_path):
    def small(raw):
        raw["dpo"].update(max_rows=40, validation_fraction=0.4)

    recipe, meta = _materialize_dpo(tmp_path, small)
    rows = load_preference_pairs(PAIRS, max_rows=40)
    train, held = split_preference_pairs(rows, 0.4)
    assert meta["pairs"].value == len(train) and meta["heldout_pairs"].value == len(held)
    for key in ("heldout_preference_accuracy", "heldout_ci95_low", "heldout_ci95_high"):
        assert 0.0 <= meta[key].value <= 1.0 and isinstance(meta[key].value, float)
    assert meta["heldout_ci95_low"].value <= meta["heldout_preference_accuracy"].value
    assert meta["heldout_accuracy_before"].value == 0.5
    assert math.isfinite(meta["heldout_margin"].value)

    folder = ArtifactLayout(tmp_path / "artifacts").dpo_model
    record = json.loads((folder / PREFERENCE_EVAL_FILE).read_text(encoding="utf-8"))
    assert {"pairs", "accuracy", "ci_low", "ci_high", "margin", "train", "note"} <= set(record)
    assert {"loss_first", "loss_last", "reward_accuracy", "steps"} <= set(record["train"])
    assert record["pairs"] == len(held) and record["dropped_for_length"] == 0
    assert record["accuracy"] == meta["heldout_preference_accuracy"].value
    assert record["train"]["steps"] == meta["steps"].value > 0
    assert record["train"]["loss_first"] == pytest.approx(math.log(2), abs=1e-4)
    assert record["before_training"]["ties"] == len(held)
    assert "held-out pairs" in record["note"] and record["note"] == meta["heldout_note"].value
    assert sum(c["pairs"] for c in record["by_category"].values()) == len(held)


def test_dpo_model_without_held_out_pairs_writes_no_preference_eval(tmp_path):
    def off(raw):
        raw["dpo"].update(max_rows=8, validation_fraction=0.0)
        raw["dpo"]["args"].update(max_length=64)

    _, meta = _materialize_dpo(tmp_path, off)
    assert meta["pairs"].value == 8 and "heldout_pairs" not in meta
    assert not (ArtifactLayout(tmp_path / "artifacts").dpo_model / PREFERENCE_EVAL_FILE).exists()


def test_an_untrained_lora_policy_scores_exactly_as_its_reference(tiny_base, tmp_path):
    """dpo_model does not score the untrained policy: it reuses the reference pass, which this
    checks is the same numbers for peft's default LoRA start."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from ragft_dagster.training.preference import _completion_logps, _starts_as_reference

    rows = load_preference_pairs(PAIRS, max_rows=6)
    config = DPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        max_length=256,
        per_device_eval_batch_size=4,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_base),
        args=config,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_base),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    assert _starts_as_reference(trainer)
    reference = _completion_logps(trainer, reference=True)
    assert _completion_logps(trainer, reference=False) == reference
    assert len(reference[0]) == len(reference[1]) == 6
    assert all(x < 0 for x in reference[0] + reference[1])
    # a LoRA start that is not a no-op is scored, not assumed
    trainer.model.peft_config["default"].init_lora_weights = "gaussian"
    assert not _starts_as_reference(trainer)
