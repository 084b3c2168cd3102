"""The asset graph of the shipped recipes, as a reviewed snapshot: keys, groups (stages),
dependencies, partitions, checks, code versions and pools. A change to any of them fails here
until the snapshot is regenerated on purpose (``RAGFT_UPDATE_SNAPSHOT=1 pytest
tests/orchestration/test_graph_snapshot.py``) and the diff reviewed."""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from ragft_dagster.config.profile import load_profile
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.definitions import definitions_for

from ..conftest import LOCAL_PROFILE, QUICKSTART_RECIPE, TINY_RECIPE

SNAPSHOT = Path(__file__).with_name("graph_snapshot.json")


def _partitions(pdef) -> str | None:
    if pdef is None:
        return None
    if isinstance(pdef, dg.DynamicPartitionsDefinition):
        return f"dynamic:{pdef.name}"
    if isinstance(pdef, dg.MultiPartitionsDefinition):
        return "multi:" + "x".join(
            f"{d.name}[{','.join(d.partitions_def.get_partition_keys())}]"
            for d in pdef.partitions_defs
        )
    return "static:" + ",".join(pdef.get_partition_keys())


def snapshot(recipe_path: Path) -> dict:
    defs = definitions_for(load_recipe(recipe_path), load_profile(LOCAL_PROFILE), Path("/x"))
    graph = defs.resolve_asset_graph()
    checks: dict[str, list[str]] = {}
    for key in graph.asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), []).append(key.name)
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        name = key.to_user_string()
        out[name] = {
            "group": node.group_name,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "checks": sorted(checks.get(name, [])),
            "code_version": node.code_version,
            "pools": sorted(node.pools or []),
            "automation": node.automation_condition is not None,
        }
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    return {"assets": out, "jobs": jobs}


@pytest.mark.parametrize("recipe", [QUICKSTART_RECIPE, TINY_RECIPE], ids=["quickstart", "tiny"])
def test_the_asset_graph_matches_its_reviewed_snapshot(recipe):
    current = snapshot(recipe)
    name = recipe.parent.name
    stored = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.is_file() else {}
    if os.environ.get("RAGFT_UPDATE_SNAPSHOT"):
        stored[name] = current
        SNAPSHOT.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    assert stored.get(name) == current, (
        "the asset graph changed; if that is intended, regenerate the snapshot "
        "(RAGFT_UPDATE_SNAPSHOT=1) and review its diff"
    )
