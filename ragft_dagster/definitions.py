"""The one Definitions of the project, built from a recipe (what) and a profile (where/how).

``RAGFT_RECIPE`` and ``RAGFT_PROFILE`` pick them (defaults: the quickstart recipe, the local
profile). Tests and the CLI call :func:`build_definitions` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ragft_dagster.assets import build_all_assets
from ragft_dagster.assets._meta import documents_partitions
from ragft_dagster.profile import Profile, load_profile
from ragft_dagster.recipe import Recipe, load_recipe
from ragft_dagster.resources import (
    ArtifactStoreResource,
    ComputeResource,
    LlmEndpointResource,
    VectorStoreResource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = PROJECT_ROOT / "assets" / "quickstart" / "recipe.yaml"
DEFAULT_PROFILE = PROJECT_ROOT / "resources" / "local.yaml"

# Jobs are homogeneous in partitioning (Dagster re-runs unpartitioned assets in every partition
# run of a mixed job); `ragft run` launches them in graph order.
JOB_SELECTIONS = {
    "model_job": ["merged_model", "dpo_model"],
    "document_job": ["doc_chunks", "synthetic_qa"],
    "training_job": ["sft_dataset", "lora_adapter", "vector_index"],
    "evaluation_job": ["mcq_scores"],
    "report_job": ["mcq_report"],
}


def build_resources(recipe: Recipe, profile: Profile, artifact_root: Path | None = None) -> dict:
    llm_key = dg.EnvVar(profile.llm.api_key_env) if recipe.qa.generator == "openai" else None
    return {
        "artifacts": ArtifactStoreResource(root=str(artifact_root or profile.artifact_root)),
        "compute": ComputeResource(device=profile.compute.device, dtype=profile.compute.dtype),
        "llm": LlmEndpointResource(base_url=profile.llm.base_url, api_key=llm_key),
        "vector_store": VectorStoreResource(
            mode=profile.vector_store.mode,
            host=profile.vector_store.host,
            port=profile.vector_store.port,
        ),
    }


def build_definitions(
    recipe_path: Path | str | None = None,
    profile_path: Path | str | None = None,
    artifact_root: Path | None = None,
) -> dg.Definitions:
    """Assemble assets, jobs and resources for one recipe and one profile.

    Args:
        recipe_path: Recipe YAML (default: ``RAGFT_RECIPE`` or the quickstart recipe).
        profile_path: Profile YAML (default: ``RAGFT_PROFILE`` or ``resources/local.yaml``).
        artifact_root: Override the profile's artifact root (tests).

    Returns:
        The Definitions.
    """
    recipe = load_recipe(recipe_path or os.environ.get("RAGFT_RECIPE") or DEFAULT_RECIPE)
    profile = load_profile(profile_path or os.environ.get("RAGFT_PROFILE") or DEFAULT_PROFILE)
    jobs = [
        dg.define_asset_job(
            name, selection=selection, description=f"Materialize {', '.join(selection)}."
        )
        for name, selection in JOB_SELECTIONS.items()
    ]
    executor = dg.in_process_executor if profile.executor == "in_process" else None
    return dg.Definitions(
        assets=build_all_assets(recipe),
        jobs=jobs,
        resources=build_resources(recipe, profile, artifact_root),
        executor=executor,
    )


__all__ = ["build_definitions", "documents_partitions", "defs"]

defs = build_definitions()
