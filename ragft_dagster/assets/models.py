"""Model assets: an optional derived specialist, the merge of the source models, then its DPO
alignment."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import atomic_dir, dir_size_bytes
from ragft_dagster.assets._meta import training_result
from ragft_dagster.assets._training import train_artifact
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.data.skills import skill_rows
from ragft_dagster.models.merging import (
    MergeCompatibilityError,
    merge_models,
    preflight_markdown,
    stages_markdown,
)
from ragft_dagster.models.refs import resolve_model_ref
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource
from ragft_dagster.training.checkpoints import progress_callback
from ragft_dagster.training.preference import load_preference_pairs
from ragft_dagster.training.specialist import train_specialist


def build(recipe: Recipe, gpu_tags: Mapping[str, Any] | None = None) -> list[dg.AssetsDefinition]:
    dpo_file = recipe.dpo_dataset_path()
    specialist = build_specialist(recipe, gpu_tags) if recipe.specialist else None

    # Options that change the weights (random_seed, allow_crimes...) join the code_version;
    # without them it is the merge section's alone, as before merge_options existed.
    merge_sections: tuple[str, ...] = ("merge", "chat_template")
    if recipe.merge_options.versioned_dump():
        merge_sections += ("merge_options",)

    @dg.asset(
        deps=[specialist] if specialist else [],
        group_name="models",
        pool="gpu",
        op_tags=dict(gpu_tags or {}),
        kinds={"mergekit", "pytorch"},
        code_version=recipe.section_version(*merge_sections),
    )
    def merged_model(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        """The source models merged with mergekit (one config or a chain of stages), as
        configured in the recipe's merge section; checked from the model configs first."""
        layout = artifacts.layout()
        try:
            with atomic_dir(layout.merged_model) as tmp:
                info = merge_models(
                    recipe.merge,
                    tmp,
                    artifact_root=layout.root,
                    base_dir=recipe.root,
                    device=compute.settings().torch_device(),
                    chat_template=recipe.chat_template,
                    trust_remote_code=recipe.trust_remote_code,
                    options=recipe.merge_options.model_dump(),
                    recipe_path=recipe.path,
                    log=context.log.info,
                )
        except MergeCompatibilityError as exc:
            # A recipe problem, not a flaky run: fail with the message alone, no retries.
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        stages = info["stages"]
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(layout.merged_model)),
                "merge_method": info["merge_method"],
                "sources": ", ".join(info["sources"]),
                "architecture": info["architecture"],
                "num_hidden_layers": info["num_hidden_layers"],
                "size_mb": round(dir_size_bytes(layout.merged_model) / 2**20, 2),
                "stages": dg.MetadataValue.md(stages_markdown(stages)),
                "stages_reused": sum(s["status"] == "reused" for s in stages),
                "stages_merged": sum(s["status"] == "merged" for s in stages),
                "preflight": dg.MetadataValue.md(preflight_markdown(info["preflight"])),
            }
        )

    @dg.asset(
        deps=[merged_model],
        group_name="models",
        pool="gpu",
        op_tags=dict(gpu_tags or {}),
        kinds={"trl", "pytorch"},
        code_version=recipe.section_version(
            "dpo", "chat_template", files=(dpo_file,) if dpo_file else ()
        ),
    )
    def dpo_model(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        """The merged model aligned with DPO (trl DPOTrainer) on the recipe's preference pairs."""
        layout = artifacts.layout()
        rows = load_preference_pairs(
            dpo_file or recipe.dpo.dataset, split=recipe.dpo.split, max_rows=recipe.dpo.max_rows
        )
        settings = compute.settings()
        m = train_artifact(
            context,
            "dpo",
            settings,
            recipe,
            final=layout.dpo_model,
            artifact_root=layout.root,
            model_dir=layout.merged_model,
            data={"rows": rows},
            data_files=[dpo_file] if dpo_file else [],
            run={
                "args": recipe.dpo.args,
                "lora": recipe.dpo.lora.model_dump() if recipe.dpo.lora else None,
            },
            data_identity={
                "dataset": recipe.dpo.dataset,
                "split": recipe.dpo.split,
                "max_rows": recipe.dpo.max_rows,
            },
        )
        return training_result(layout.dpo_model, m)

    return [*([specialist] if specialist else []), merged_model, dpo_model]


def build_specialist(
    recipe: Recipe, gpu_tags: Mapping[str, Any] | None = None
) -> dg.AssetsDefinition:
    section = recipe.specialist
    assert section is not None

    @dg.asset(
        group_name="models",
        pool="gpu",
        op_tags=dict(gpu_tags or {}),
        kinds={"trl", "pytorch"},
        code_version=recipe.section_version("specialist", "chat_template"),
    )
    def specialist_model(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        """A specialist derived from a source model by a short full fine-tune on a generated
        skill set (trl SFTTrainer), for the merge to combine with its base."""
        layout = artifacts.layout()
        rows = skill_rows(section.skill, section.examples, section.seed)
        settings = compute.settings()
        with atomic_dir(layout.specialist_model) as tmp:
            m = train_specialist(
                resolve_model_ref(section.base_model, layout.root, recipe.root),
                rows,
                tmp,
                args=section.args,
                compute_args=settings.trainer_args(),
                dtype=settings.torch_dtype(),
                chat_template=recipe.chat_template,
                trust_remote_code=recipe.trust_remote_code,
                callbacks=[progress_callback(context.log.info)],
            )
        context.log.info(
            f"specialist {section.name}: {m['steps']} steps on {m['train_rows']} {section.skill} "
            f"rows, loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}"
        )
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(layout.specialist_model)),
                "name": section.name,
                "base_model": section.base_model,
                "skill": section.skill,
                "train_rows": m["train_rows"],
                "steps": m["steps"],
                "train_loss": m["train_loss"],
                "first_loss": m["first_loss"],
                "final_loss": m["final_loss"],
                "parameters": m["parameters"],
                "example": dg.MetadataValue.json(rows[0]["messages"]),
            }
        )

    return specialist_model
