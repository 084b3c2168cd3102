"""Loading a local causal LM for inference (Dagster-free): the one way scoring, generation,
``ragft ask`` and the benchmarks get a model, an adapter merged in when there is one."""

from __future__ import annotations

from typing import Any

from ragft_dagster.compute import ComputeSettings
from ragft_dagster.models.refs import LocalModels


def load_scoring_model(
    model_dir: str,
    adapter_dir: str | None,
    *,
    device: str,
    dtype: Any,
    chat_template: str | None,
    trust_remote_code: bool = False,
):
    """Load a causal LM (optionally with a PEFT adapter merged in) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    from ragft_dagster.models.refs import load_tokenizer, upstream_deprecations_silenced

    tokenizer = load_tokenizer(adapter_dir or model_dir, chat_template, trust_remote_code)
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code
    )
    if adapter_dir:
        from peft import PeftModel

        with upstream_deprecations_silenced():  # peft reads a deprecated transformers property
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.to(device), tokenizer


def load_local_model(
    models: LocalModels, model_key: str, compute: ComputeSettings
) -> tuple[Any, Any]:
    """(model, tokenizer) of a local ``model`` partition (sft = dpo + adapter merged), on the
    compute profile's device and dtype."""
    weights, adapter = models.paths(model_key)
    return load_scoring_model(
        weights,
        adapter,
        device=compute.torch_device(),
        dtype=compute.inference_dtype(),
        chat_template=models.chat_template,
        trust_remote_code=models.trust_remote_code,
    )
