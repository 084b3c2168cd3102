"""models/merge_preflight.py: a merge chain checked from the models' config.json alone, before any
weight is read (tiny models and weightless configs; nothing here touches a hub)."""

import json
from pathlib import Path

import pytest

from ragft_dagster.config.merge import STAGES_DIR
from ragft_dagster.models.merge_preflight import MergeCompatibilityError, preflight_merge

from ..conftest import linear_config, merge_into, slerp_config

# config.json of the two models the published work tried to merge (as on the hub).
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 32000,
}
WIZARDCODER_PYTHON_7B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "max_position_embeddings": 16384,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "torch_dtype": "float16",
    "vocab_size": 32001,
}


def _config_only(path: Path, config: dict) -> Path:
    """A model folder with a config.json and no weights at all."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_incompatible_source_fails_in_preflight_before_any_weight(
    tmp_path, root, tiny_llama, merges
):
    out = tmp_path / "out"
    with pytest.raises(MergeCompatibilityError) as err:
        merge_into(
            slerp_config("tiny:base", str(tiny_llama)), out, root, recipe_path=Path("r.yaml")
        )
    msg = str(err.value)
    assert msg.startswith("r.yaml: ") and "no weights were loaded" in msg
    assert f"{str(tiny_llama)!r} cannot be merged with 'tiny:base'" in msg
    for line in (
        "model_type: 'llama' vs 'mistral'",
        "architectures: ['LlamaForCausalLM'] vs ['MistralForCausalLM']",
        "rope_parameters.rope_theta: 1000000.0 vs 10000.0",
    ):
        assert line in msg
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    assert f"vocab_size: {vocab} vs {vocab - 1}" in msg
    assert "hidden_size" not in msg  # only what differs
    assert "What to do:" in msg
    assert merges == [] and list(out.iterdir()) == []


def test_published_three_way_merge_is_rejected_naming_every_mismatch(tmp_path, root):
    mistral = _config_only(tmp_path / "Mistral-7B-v0.1", MISTRAL_7B)
    wizard = _config_only(tmp_path / "WizardCoder-Python-7B-V1.0", WIZARDCODER_PYTHON_7B)
    with pytest.raises(MergeCompatibilityError) as err:
        preflight_merge(slerp_config(str(mistral), str(wizard), layers=(0, 32)), root, tmp_path)
    msg = str(err.value)
    assert "WizardCoder-Python-7B-V1.0" in msg and "Mistral-7B-v0.1" in msg
    for line in (
        "model_type: 'llama' vs 'mistral'",
        "intermediate_size: 11008 vs 14336",
        "num_key_value_heads: 32 vs 8",
        "vocab_size: 32001 vs 32000",
        "rope_parameters.rope_theta: 1000000 vs 10000.0",
    ):
        assert line in msg
    assert "not a fine-tune of the same base model" in msg


def test_rope_settings_compare_across_config_generations():
    from types import SimpleNamespace

    from transformers import MistralConfig

    from ragft_dagster.models.merge_preflight import config_facts

    # A remote-code config of the transformers 4 kind: rope_theta and rope_scaling attributes.
    legacy = SimpleNamespace(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0})
    current = MistralConfig(rope_parameters={"rope_type": "linear", "factor": 2.0})
    rope = {k: v for k, v in config_facts(legacy).items() if k.startswith("rope")}
    assert rope == {k: v for k, v in config_facts(current).items() if k.startswith("rope")}
    assert rope == {
        "rope_parameters.factor": 2.0,
        "rope_parameters.rope_theta": 10000.0,
        "rope_parameters.rope_type": "linear",
    }


def test_vocabulary_only_difference_suggests_tokenizer_source(tmp_path, root):
    bigger = _config_only(tmp_path / "bigger", {**MISTRAL_7B, "vocab_size": 32002})
    mistral = _config_only(tmp_path / "mistral", MISTRAL_7B)
    config = slerp_config(str(mistral), str(bigger), layers=(0, 32))
    with pytest.raises(MergeCompatibilityError, match="tokenizer_source"):
        preflight_merge(config, root, tmp_path)
    facts = preflight_merge({**config, "tokenizer_source": "base"}, root, tmp_path)
    assert facts["models"][str(bigger)]["vocab_size"] == 32002


def test_a_stage_that_keeps_the_base_tokenizer_passes_its_vocabulary_on(tmp_path, root):
    bigger = _config_only(tmp_path / "bigger", {**MISTRAL_7B, "vocab_size": 32002})
    mistral = _config_only(tmp_path / "mistral", MISTRAL_7B)
    first = {**slerp_config(str(mistral), str(bigger), layers=(0, 32)), "tokenizer_source": "base"}
    second = slerp_config("stage:first", str(bigger), layers=(0, 32))
    chain = {"stages": [{"name": "first", "config": first}, {"name": "second", "config": second}]}
    # Stage 1 keeps Mistral's 32000 tokens, so stage 2 (no tokenizer_source) cannot merge a
    # 32002-token model with it: caught before anything runs.
    with pytest.raises(MergeCompatibilityError, match="vocab_size: 32002 vs 32000"):
        preflight_merge(chain, root, tmp_path)


def test_layer_range_beyond_the_model_fails_in_preflight(tmp_path, root, merges):
    with pytest.raises(MergeCompatibilityError) as err:
        merge_into(slerp_config("tiny:base", "tiny:math", layers=(0, 4)), tmp_path / "out", root)
    msg = str(err.value)
    assert "slices[0].sources[0].layer_range [0, 4]" in msg
    assert "'tiny:base', which has num_hidden_layers = 2" in msg
    assert "within [0, 2]" in msg and merges == []


def test_later_stage_is_checked_against_the_earlier_output_before_any_merge(tmp_path, root, merges):
    # A passthrough of 2 + 2 layers makes a 4-layer model: a whole-model merge with a 2-layer
    # one cannot work, and preflight knows it without running the first stage.
    stack = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": "tiny:base", "layer_range": [0, 2]}]},
            {"sources": [{"model": "tiny:math", "layer_range": [0, 2]}]},
        ],
        "dtype": "float32",
    }
    chain = {
        "stages": [
            {"name": "stack", "config": stack},
            {"name": "blend", "config": linear_config(("stage:stack", 0.5), ("tiny:code", 0.5))},
        ]
    }
    with pytest.raises(MergeCompatibilityError) as err:
        merge_into(chain, tmp_path / "out", root)
    msg = str(err.value)
    assert "key 'merge.stages[1].config' (stage 'blend')" in msg
    assert "'tiny:code' cannot be merged with 'stage:stack'" in msg
    assert "expected output of stage 'stack'" in msg
    assert "num_hidden_layers: 2 vs 4" in msg
    assert merges == [] and not (root / STAGES_DIR).exists()

    top = {"name": "top", "config": slerp_config("stage:stack", "tiny:code")}
    ok = preflight_merge({"stages": [chain["stages"][0], top]}, root, tmp_path)
    assert [s["num_hidden_layers"] for s in ok["stages"]] == [4, 2]
    assert ok["models"]["stage:stack"]["num_hidden_layers"] == 4
