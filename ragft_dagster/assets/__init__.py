"""Thin Dagster bindings, one module per stage; the logic lives in Dagster-free core modules."""

from __future__ import annotations

import dagster as dg

from ragft_dagster.recipe import Recipe


def build_all_assets(recipe: Recipe) -> list[dg.AssetsDefinition]:
    from ragft_dagster.assets import data, evaluation, models, retrieval, training

    return [
        *models.build(recipe),
        *data.build(recipe),
        *training.build(recipe),
        *retrieval.build(recipe),
        *evaluation.build(recipe),
    ]
