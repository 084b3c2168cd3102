"""Export asset: the fine-tuned model as one servable checkpoint, when the recipe asks for it."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import atomic_dir, atomic_write_text, dir_size_bytes
from ragft_dagster.assets.evaluation import release_gate_decision
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.models.export import (
    CARD_FILE,
    MODELFILE,
    ExportError,
    export_model,
    model_card,
    served_model_name,
)
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource

# What the model card reports of the training runs (from their latest materialization).
TRAINING_FACTS = {
    "dpo_model": ("pairs", "steps", "final_loss", "reward_accuracy"),
    "lora_adapter": ("train_rows", "steps", "eval_loss"),
}


def latest_training_facts(instance: dg.DagsterInstance) -> dict[str, dict[str, Any]]:
    """The numbers the model card quotes from the last dpo_model and lora_adapter runs."""
    facts: dict[str, dict[str, Any]] = {}
    for asset, keys in TRAINING_FACTS.items():
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        mat = event.asset_materialization if event else None
        values = {k: getattr(v, "value", v) for k, v in (mat.metadata if mat else {}).items()}
        facts[asset] = {k: values[k] for k in keys if isinstance(values.get(k), int | float)}
    return facts


def build(recipe: Recipe, gpu_tags: Mapping[str, Any] | None = None) -> list[dg.AssetsDefinition]:
    # Optional means absent: without `export.enabled` the graph, the UI's "Materialize all"
    # and `ragft run` never write a second full-size copy of the model.
    if not recipe.export.enabled:
        return []
    cfg = recipe.export

    @dg.asset(
        # The card quotes the benchmark report, so the export follows it.
        deps=["dpo_model", "lora_adapter", "mcq_report"],
        group_name="export",
        pool="gpu",
        op_tags=dict(gpu_tags or {}),
        kinds={"peft", "safetensors"},
        code_version=recipe.section_version("export", "chat_template"),
    )
    def exported_model(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        """The DPO model with the LoRA adapter merged in, saved for serving: safetensors,
        tokenizer with chat template, generation config, an Ollama Modelfile and a model card
        (`vllm serve` it, `ollama create` it, or `ragft serve`)."""
        layout = artifacts.layout()
        name = served_model_name(recipe)
        final = layout.exported_model
        gate = recipe.release_gate
        if gate.enabled and gate.blocking:
            decision = release_gate_decision(recipe, layout)
            if isinstance(decision, str) or not decision.passed:
                held = decision if isinstance(decision, str) else "; ".join(decision.reasons)
                raise dg.Failure(
                    description=f"release gate: not exported. {held}. (release_gate.blocking: "
                    "false exports anyway, the check still reporting)",
                    allow_retries=False,
                )
            context.log.info(f"release gate {decision.summary()}")
        try:
            with atomic_dir(final) as tmp:
                info = export_model(
                    layout.dpo_model,
                    layout.lora_adapter,
                    tmp,
                    dtype=cfg.dtype,
                    max_shard_size=cfg.max_shard_size,
                    device=compute.settings().torch_device(),
                    chat_template=recipe.chat_template,
                    trust_remote_code=recipe.trust_remote_code,
                    served_name=name,
                )
                training = latest_training_facts(context.instance)
                card = model_card(recipe, layout, final, info, training)
                atomic_write_text(tmp / CARD_FILE, card)
        except ExportError as exc:
            # An upstream asset to materialize, not a flaky run: no retries.
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        serve = f"vllm serve {final} --served-model-name {name} --dtype {info['dtype']}"
        ollama = f"cd {final} && ollama create {name} -f {MODELFILE}"
        context.log.info(f"exported {info['parameters']:,} parameters to {final}: {serve}")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(final)),
                "size_mb": round(dir_size_bytes(final) / 2**20, 2),
                "parameters": info["parameters"],
                "dtype": info["dtype"],
                "architecture": info["architecture"],
                "shards": info["shards"],
                "files": dg.MetadataValue.json(info["files"] + [CARD_FILE]),
                "served_model_name": name,
                "serve": dg.MetadataValue.md(f"```bash\n{serve}\n```"),
                "ollama": dg.MetadataValue.md(f"```bash\n{ollama}\n```"),
                "ollama_template": info["ollama"]["template"] or "left to Ollama (not ChatML)",
                "model_card": dg.MetadataValue.md(card),
            }
        )

    return [exported_model]
