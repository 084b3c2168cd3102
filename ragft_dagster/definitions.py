"""The one Definitions of the project, built from a recipe (what) and a profile (where/how).

``RAGFT_RECIPE`` and ``RAGFT_PROFILE`` pick them (defaults: the quickstart recipe, the local
profile). Tests and the CLI call :func:`build_definitions` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ragft_dagster.assets import build_all_assets
from ragft_dagster.config.profile import Profile, load_profile
from ragft_dagster.config.recipe import Recipe, RecipeError, load_recipe, with_hub_mirror
from ragft_dagster.orchestration.automation import (
    build_automation_sensor,
    build_docs_sensor,
    build_nightly_schedule,
)
from ragft_dagster.orchestration.stages import Stage, stage_jobs, stages_of
from ragft_dagster.resources import (
    ArtifactStoreResource,
    ComputeResource,
    LlmEndpointResource,
    VectorStoreResource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = PROJECT_ROOT / "assets" / "quickstart" / "recipe.yaml"
DEFAULT_PROFILE = PROJECT_ROOT / "resources" / "local.yaml"


def recipe_stages(recipe: Recipe) -> list[Stage]:
    """The stages (one job each) of a recipe's graph, in the order ``ragft run`` runs them."""
    return stages_of(build_all_assets(recipe))


def build_resources(recipe: Recipe, profile: Profile, artifact_root: Path | None = None) -> dict:
    uses_llm = (
        recipe.qa.generator == "openai"
        or bool(recipe.evaluation.api.models)
        or recipe.sft_dataset.quality.judge is not None
        or (
            recipe.evaluation.open_questions is not None
            and recipe.evaluation.open_answers.judge is not None
        )
    )
    llm_key = dg.EnvVar(profile.llm.api_key_env) if uses_llm else None
    return {
        "artifacts": ArtifactStoreResource(root=str(artifact_root or profile.artifact_root)),
        "compute": ComputeResource(
            device=profile.compute.device,
            dtype=profile.compute.dtype,
            processes=profile.compute.processes,
            launcher=profile.compute.launcher,
        ),
        "llm": LlmEndpointResource(base_url=profile.llm.base_url, api_key=llm_key),
        "vector_store": VectorStoreResource(
            mode=profile.vector_store.mode,
            host=profile.vector_store.host,
            port=profile.vector_store.port,
        ),
    }


def build_executor(recipe: Recipe, profile: Profile) -> dg.ExecutorDefinition | None:
    """The executor the profile names; None = Dagster's default (multiprocess)."""
    if profile.executor == "in_process":
        return dg.in_process_executor
    if profile.executor == "multiprocess":
        return None
    # Imported only here: profiles that do not use Kubernetes load without dagster_k8s.
    from dagster_k8s import k8s_job_executor

    # Step pods re-load this module: pin the recipe (the profile pins itself) so they build the
    # same definitions as the run, whatever the pod's environment says.
    try:
        env = {"RAGFT_RECIPE": str(recipe.path)}
    except RecipeError:  # built in code, not from a file
        env = {}
    return k8s_job_executor.configured(
        profile.k8s_executor_config(env), name="ragft_k8s_job_executor"
    )


def load_inputs(
    recipe_path: Path | str | None = None, profile_path: Path | str | None = None
) -> tuple[Recipe, Profile]:
    """The recipe and profile to use: explicit paths, else RAGFT_RECIPE / RAGFT_PROFILE, else
    the quickstart recipe and the local profile."""
    recipe = load_recipe(recipe_path or os.environ.get("RAGFT_RECIPE") or DEFAULT_RECIPE)
    profile = load_profile(profile_path or os.environ.get("RAGFT_PROFILE") or DEFAULT_PROFILE)
    return with_hub_mirror(recipe, profile.mirror()), profile


def definitions_for(
    recipe: Recipe, profile: Profile, artifact_root: Path | None = None
) -> dg.Definitions:
    """Assemble assets, jobs and resources for one recipe and one profile.

    Args:
        recipe: The validated recipe.
        profile: The validated profile.
        artifact_root: Override the profile's artifact root (tests).

    Returns:
        The Definitions.
    """
    assets = build_all_assets(recipe, profile.gpu_op_tags())
    return dg.Definitions(
        assets=assets,
        jobs=stage_jobs(assets),
        sensors=[build_docs_sensor(recipe), build_automation_sensor()],
        schedules=[build_nightly_schedule(recipe)],
        resources=build_resources(recipe, profile, artifact_root),
        executor=build_executor(recipe, profile),
    )


def build_definitions(
    recipe_path: Path | str | None = None,
    profile_path: Path | str | None = None,
    artifact_root: Path | None = None,
) -> dg.Definitions:
    """:func:`definitions_for` the recipe and profile that :func:`load_inputs` picks."""
    return definitions_for(*load_inputs(recipe_path, profile_path), artifact_root)


@dg.definitions
def defs() -> dg.Definitions:
    # Lazy: importing this module (tests, the CLI) does not load a recipe; Dagster calls it.
    return build_definitions()
