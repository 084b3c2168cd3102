"""Thin Dagster bindings, one module per stage; the logic lives in Dagster-free core modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from ragft_dagster.config.recipe import Recipe


def build_all_assets(
    recipe: Recipe, gpu_tags: Mapping[str, Any] | None = None
) -> list[dg.AssetsDefinition]:
    """Every asset and check of a recipe; ``gpu_tags`` are the op tags of the GPU-bound steps
    (the profile's ``gpu_op_tags()``: e.g. a k8s ``nvidia.com/gpu`` request)."""
    from ragft_dagster.assets import data, evaluation, export, models, retrieval, training

    return [
        *models.build(recipe, gpu_tags),
        *data.build(recipe),
        *training.build(recipe, gpu_tags),
        *retrieval.build(recipe),
        *evaluation.build(recipe, gpu_tags),
        *export.build(recipe, gpu_tags),
    ]
