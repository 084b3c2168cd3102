"""Training assets: the SFT dataset from every document's Q&A, then the LoRA adapter."""

import dagster as dg

from ragft_dagster.artifacts import atomic_dir, read_jsonl
from ragft_dagster.assets._meta import EAGER, preview_table, read_all_documents, training_result
from ragft_dagster.recipe import Recipe
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource
from ragft_dagster.sft import build_sft_dataset, train_lora


def build(recipe: Recipe) -> list[dg.AssetsDefinition]:
    @dg.asset(
        automation_condition=EAGER,
        deps=[dg.AssetDep("synthetic_qa", partition_mapping=dg.AllPartitionMapping())],
        group_name="training",
        kinds={"huggingface"},
        code_version=recipe.section_version("sft_dataset"),
    )
    def sft_dataset(
        context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource
    ) -> dg.MaterializeResult:
        """All documents' Q&A, deduplicated and split train/validation, in chat format."""
        layout = artifacts.layout()
        docs, rows = read_all_documents(context, "synthetic_qa", layout.qa)
        cfg = recipe.sft_dataset
        with atomic_dir(layout.sft_dataset) as tmp:
            counts = build_sft_dataset(
                rows,
                tmp,
                validation_fraction=cfg.validation_fraction,
                seed=cfg.seed,
                system_prompt=cfg.system_prompt,
            )
        sample = read_jsonl(layout.sft_dataset / "train.jsonl")[:10]
        preview = [
            {
                "question": r["messages"][-2]["content"],
                "answer": r["messages"][-1]["content"],
                "doc": r["doc"],
            }
            for r in sample
        ]
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(layout.sft_dataset)),
                "documents": len(docs),
                **counts,
                "preview": preview_table(preview, ["question", "answer", "doc"]),
            }
        )

    @dg.asset(
        automation_condition=EAGER,
        deps=["dpo_model", sft_dataset],
        group_name="training",
        pool="gpu",
        kinds={"trl", "peft"},
        code_version=recipe.section_version("lora", "sft", "chat_template"),
    )
    def lora_adapter(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        """A LoRA adapter for the DPO model, fine-tuned (assistant-only loss) on the SFT data."""
        layout = artifacts.layout()
        settings = compute.settings()
        with atomic_dir(layout.lora_adapter) as tmp:
            m = train_lora(
                str(layout.dpo_model),
                layout.sft_dataset,
                tmp,
                lora=recipe.lora.model_dump(),
                args=recipe.sft.args,
                compute_args=settings.trainer_args(),
                dtype=settings.torch_dtype(),
                chat_template=recipe.chat_template,
                trust_remote_code=recipe.trust_remote_code,
            )
        context.log.info(f"SFT: {m['steps']} steps, eval loss {m['eval_loss']:.4f}")
        return training_result(
            layout.lora_adapter, m, lora_r=recipe.lora.r, lora_alpha=recipe.lora.lora_alpha
        )

    return [sft_dataset, lora_adapter]
