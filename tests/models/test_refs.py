"""models/refs.py's trainer helpers: the recipe's gradient checkpointing reaches trl's configs
under transformers 5's name, so no upstream deprecation reaches the run log."""

import warnings

import pytest

from ragft_dagster.models.refs import checkpointing_args, upstream_deprecations_silenced


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ({}, {"activation_checkpointing": True}),  # trl's default
        ({"gradient_checkpointing": False}, {"activation_checkpointing": False}),
        (
            {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"a": 1}},
            {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"a": 1}},
        ),
        ({"activation_checkpointing": False}, {"activation_checkpointing": False}),
    ],
)
def test_checkpointing_args(args, expect):
    assert checkpointing_args(args) == expect


@pytest.mark.parametrize("on", [True, False])
def test_trl_configs_take_the_setting_without_a_future_warning(tmp_path, on):
    from trl import DPOConfig, SFTConfig

    args = {"gradient_checkpointing": on}
    for config_class in (SFTConfig, DPOConfig):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            config = config_class(
                output_dir=str(tmp_path), use_cpu=True, report_to="none",
                **args, **checkpointing_args(args),
            )  # fmt: skip
        assert config.gradient_checkpointing is on and config.activation_checkpointing is on
        assert not [w for w in seen if issubclass(w.category, FutureWarning)], [
            str(w.message) for w in seen
        ]


def test_only_the_is_gradient_checkpointing_warning_is_silenced():
    """peft and trl read the deprecated property; inside the context it warns nothing, and
    every other warning still shows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with upstream_deprecations_silenced():
            assert model.is_gradient_checkpointing is False
            warnings.warn("something else", FutureWarning, stacklevel=1)
        assert model.is_gradient_checkpointing is False  # outside: transformers warns
    messages = [str(w.message) for w in seen]
    assert messages[0] == "something else" and len(messages) == 2
    assert messages[1].startswith("`is_gradient_checkpointing` is deprecated")
