"""Model assets: an optional derived specialist, the merge of the source models, then its DPO
alignment."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import atomic_dir, dir_size_bytes
from ragft_dagster.assets._meta import training_result
from ragft_dagster.assets._training import train_artifact
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.data.skills import skill_rows
from ragft_dagster.evaluation.skill_check import (
    METRIC,
    compare_on_skill,
    held_out_problems,
    skill_credits,
    write_skill_eval,
)
from ragft_dagster.models.loading import load_scoring_model
from ragft_dagster.models.merge_preflight import MergeCompatibilityError, preflight_markdown
from ragft_dagster.models.merging import merge_models, stages_markdown
from ragft_dagster.models.refs import resolve_model_ref
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource
from ragft_dagster.training.checkpoints import progress_callback
from ragft_dagster.training.preference import (
    PREFERENCE_EVAL_FILE,
    load_preference_pairs,
    split_preference_pairs,
)
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
        """The merged model aligned with DPO (trl DPOTrainer) on the recipe's preference pairs,
        with its preference accuracy on pairs held out of training."""
        layout = artifacts.layout()
        section = recipe.dpo
        rows = load_preference_pairs(
            dpo_file or section.dataset, split=section.split, max_rows=section.max_rows
        )
        train_rows, heldout = split_preference_pairs(
            rows, section.validation_fraction, source=section.dataset
        )
        if section.validation_fraction > 0 and not heldout:
            context.log.warning(
                f"dpo.validation_fraction {section.validation_fraction} holds none of the "
                f"{len(rows)} pairs out: no held-out preference accuracy for this run"
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
            data={"rows": train_rows, "heldout": heldout},
            data_files=[dpo_file] if dpo_file else [],
            run={
                "args": section.args,
                "lora": section.lora.model_dump() if section.lora else None,
            },
            data_identity={
                "dataset": section.dataset,
                "split": section.split,
                "max_rows": section.max_rows,
                "validation_fraction": section.validation_fraction,
            },
        )
        heldout_figures = heldout_metadata(layout.dpo_model, m)  # takes them out of m
        return training_result(layout.dpo_model, m, **heldout_figures)

    return [*([specialist] if specialist else []), merged_model, dpo_model]


def heldout_metadata(model_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The held-out preference figures of a DPO run as flat metadata (floats the UI plots),
    taken out of ``metrics``; none when no pairs were held out."""
    after = metrics.pop("heldout", None)
    before = metrics.pop("heldout_before", None)
    baseline = metrics.pop("heldout_length_baseline", None)
    metrics.pop("heldout_dropped", None)  # in preference_eval.json
    report = model_dir / PREFERENCE_EVAL_FILE
    if after is None or before is None or not report.is_file():
        return {}
    out: dict[str, Any] = {
        "heldout_preference_accuracy": float(after["accuracy"]),
        "heldout_ci95_low": float(after["ci_low"]),
        "heldout_ci95_high": float(after["ci_high"]),
        "heldout_margin": float(after["margin"]),
        "heldout_pairs": int(after["pairs"]),
        "heldout_accuracy_before": float(before["accuracy"]),
        "heldout_length_baseline": float(baseline) if baseline is not None else float("nan"),
        "heldout_note": json.loads(report.read_text(encoding="utf-8"))["note"],
        "preference_eval": dg.MetadataValue.path(str(report)),
    }
    categories = after.get("by_category", {})
    if categories:
        rows = [
            f"| {k} | {c['right']} / {c['pairs']} | {c['accuracy']:.2f} |"
            for k, c in categories.items()
        ]
        out["heldout_by_category"] = dg.MetadataValue.md(
            "| category | right | accuracy |\n|---|---|---|\n" + "\n".join(rows)
        )
    return out


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
            check = _skill_check(recipe, rows, tmp, settings, layout.root)
        context.log.info(
            f"specialist {section.name}: {m['steps']} steps on {m['train_rows']} {section.skill} "
            f"rows, loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}"
        )
        skill_meta: dict[str, Any] = {}
        if check is not None:
            context.log.info(check["sentence"])
            skill_meta = {
                "skill_questions": check["questions"],
                "skill_accuracy": check["specialist_accuracy"],
                "skill_accuracy_base": check["base_accuracy"],
                "skill_gain_p": check["p_one_sided"],
                "skill_check": dg.MetadataValue.md(check["sentence"]),
            }
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
                **skill_meta,
                "example": dg.MetadataValue.json(rows[0]["messages"]),
            }
        )

    return specialist_model


def _skill_check(
    recipe: Recipe, rows: list[dict[str, Any]], trained: Path, settings: Any, root: Path
) -> dict[str, Any] | None:
    """Base vs. the freshly trained specialist on held-out problems of its skill, replies
    generated in the profile's inference dtype, written into the specialist's folder
    (skill_eval.json); None when the recipe skips the check."""
    section = recipe.specialist
    assert section is not None
    if not section.validation_questions:
        return None
    problems = held_out_problems(section.skill, section.validation_questions, section.seed, rows)
    credits, counts = [], []
    for model_dir in (resolve_model_ref(section.base_model, root, recipe.root), str(trained)):
        model, tokenizer = load_scoring_model(
            model_dir,
            None,
            device=settings.torch_device(),
            dtype=settings.inference_dtype(),
            chat_template=recipe.chat_template,
            trust_remote_code=recipe.trust_remote_code,
        )
        got, seen = skill_credits(problems, model, tokenizer, device=settings.torch_device())
        credits.append(got)
        counts.append(seen)
        del model
    result = compare_on_skill(*credits, skill=section.skill, metric=METRIC)
    result["base_replies"], result["specialist_replies"] = counts
    write_skill_eval(trained, result)
    return result
