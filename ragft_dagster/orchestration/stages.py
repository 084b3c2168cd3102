"""The stages of the asset graph: one per asset group, in dependency order, derived from the
assets' own ``deps``, ``group_name`` and ``partitions_def`` (the graph is written down once).

A stage is what one Dagster run materializes for one partition: the assets of a group, which
share a partitions definition (Dagster re-runs unpartitioned assets in every partition run of
a mixed job). Each stage is also a job, ``<group>_job``, for the UI and the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg


class StageError(ValueError):
    """The asset groups do not form stages (mixed partitions in a group, or a cycle)."""


@dataclass(frozen=True)
class Stage:
    """The assets of one group, in topological order, and their shared partitions."""

    group: str
    assets: tuple[str, ...]
    partitions_def: Any  # dg.PartitionsDefinition | None

    @property
    def job(self) -> str:
        return f"{self.group}_job"


@dataclass(frozen=True)
class _Node:
    name: str
    group: str
    partitions_def: Any
    parents: tuple[str, ...]


def _check_deps(specs: Any) -> dict[str, set[str]]:
    """Asset -> the other assets its checks read (``additional_deps``): the asset's stage runs
    after theirs, so that its checks see them."""
    out: dict[str, set[str]] = {}
    for spec in specs:
        target = spec.asset_key.to_user_string()
        for dep in spec.additional_deps:
            if dep.asset_key != spec.asset_key:
                out.setdefault(target, set()).add(dep.asset_key.to_user_string())
    return out


def plan_stages(graph: Any) -> list[Stage]:
    """The stages of a resolved asset graph (``defs.resolve_asset_graph()``)."""
    checks = _check_deps(graph.get_check_spec(k) for k in graph.asset_check_keys)
    return _plan(
        _Node(
            key.to_user_string(),
            graph.get(key).group_name,
            graph.get(key).partitions_def,
            tuple(p.to_user_string() for p in graph.get(key).parent_keys)
            + tuple(sorted(checks.get(key.to_user_string(), ()))),
        )
        for key in graph.toposorted_asset_keys
        if graph.get(key).is_materializable
    )


def stages_of(assets: list[Any]) -> list[Stage]:
    """The stages of a list of asset (and check) definitions, before any Definitions exist."""
    defs = [a for a in assets if isinstance(a, dg.AssetsDefinition)]
    checks = _check_deps(spec for a in defs for spec in a.check_specs)
    return _plan(
        _Node(
            spec.key.to_user_string(),
            spec.group_name or "default",
            a.partitions_def,
            tuple(d.asset_key.to_user_string() for d in spec.deps)
            + tuple(sorted(checks.get(spec.key.to_user_string(), ()))),
        )
        for a in defs
        for spec in a.specs
    )


def _toposorted(nodes: list[_Node]) -> list[_Node]:
    by_name = {n.name: n for n in nodes}
    out: list[_Node] = []
    done: set[str] = set()

    def visit(node: _Node, path: tuple[str, ...]) -> None:
        if node.name in done:
            return
        if node.name in path:
            raise StageError(f"assets {list(path)} depend on each other")
        for parent in node.parents:
            if parent in by_name:
                visit(by_name[parent], (*path, node.name))
        done.add(node.name)
        out.append(node)

    for node in nodes:
        visit(node, ())
    return out


def _plan(nodes: Any) -> list[Stage]:
    """Group the nodes by asset group, check that each group shares one partitions definition,
    and order the groups so that every dependency runs first; ties keep the order of the
    assets' own topological sort.

    Raises:
        StageError: A group mixes partitions definitions, or two groups depend on each other.
    """
    order = _toposorted(list(nodes))
    members: dict[str, list[str]] = {}
    parts: dict[str, Any] = {}
    group_of = {n.name: n.group for n in order}
    for node in order:
        group = node.group
        if group in parts and parts[group] != node.partitions_def:
            raise StageError(
                f"asset group {group!r} mixes partitions: {node.name} is partitioned by "
                f"{node.partitions_def} but {members[group][0]} by {parts[group]}; put "
                "differently partitioned assets in different groups (group_name=...)"
            )
        parts.setdefault(group, node.partitions_def)
        members.setdefault(group, []).append(node.name)
    needs: dict[str, set[str]] = {g: set() for g in members}
    for node in order:
        for parent in node.parents:
            upstream = group_of.get(parent)
            if upstream is not None and upstream != node.group:
                needs[node.group].add(upstream)
    stages: list[Stage] = []
    done: set[str] = set()
    while len(done) < len(members):
        ready = [g for g in members if g not in done and needs[g] <= done]
        if not ready:
            cycle = sorted(set(members) - done)
            raise StageError(f"asset groups {cycle} depend on each other; split them")
        group = ready[0]  # members keeps first-appearance order: the assets' toposort
        stages.append(Stage(group, tuple(members[group]), parts[group]))
        done.add(group)
    return stages


def stage_jobs(assets: list[Any]) -> list[dg.UnresolvedAssetJobDefinition]:
    """One job per stage of these assets, for the UI, schedules and sensors."""
    return [
        dg.define_asset_job(
            stage.job,
            selection=dg.AssetSelection.assets(*stage.assets),
            description=f"Materialize {', '.join(stage.assets)}.",
        )
        for stage in stages_of(assets)
    ]
