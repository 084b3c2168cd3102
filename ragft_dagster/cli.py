"""``ragft``: run the whole pipeline through Dagster into the instance at DAGSTER_HOME."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.assets._meta import DOCUMENTS
from ragft_dagster.automation import document_changes, is_current
from ragft_dagster.definitions import JOB_SELECTIONS, definitions_for, load_inputs
from ragft_dagster.documents import purge_document_files


@dataclass
class StepResult:
    """One run of ``ragft run``: which job (partition), how long, what its assets reported."""

    job: str
    partition: str | None
    seconds: float
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)


@dataclass
class PipelineResult:
    success: bool
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.success

    def total(self, asset: str, key: str) -> float:
        """Sum of one numeric metadata entry over every run of this invocation."""
        return sum(float(step.metadata.get(asset, {}).get(key, 0) or 0) for step in self.steps)

    def seconds_of(self, *jobs: str) -> float:
        return sum(step.seconds for step in self.steps if step.job in jobs)


def run_pipeline(
    recipe_path: str | None,
    profile_path: str | None,
    instance: Any = None,
    artifact_root: Path | None = None,
    echo: Callable[[str], Any] = print,
    full: bool = False,
    jobs: set[str] | None = None,
) -> PipelineResult:
    """Bring every asset up to date, job by job in graph order, recording runs in ``instance``.

    Incremental unless ``full``: a document partition runs when its file is new or changed
    (content hash) or its assets' code version changed; a downstream job runs when anything
    upstream ran in this invocation, or when one of its assets is missing or has an outdated
    code version. Removed documents lose their partition and files first. ``jobs`` limits the
    run to some of :data:`JOB_SELECTIONS` (the benchmark runs only the data and index stages).

    Returns:
        What ran and what it reported; truthy when every run succeeded.
    """
    recipe, profile = load_inputs(recipe_path, profile_path)
    defs = definitions_for(recipe, profile, artifact_root)
    instance = instance or dg.DagsterInstance.get()
    current, changes = document_changes(instance, recipe)
    if not current:
        raise SystemExit(f"no documents matching {recipe.docs.glob!r} in {recipe.docs_dir}")
    if changes.added:
        instance.add_dynamic_partitions(DOCUMENTS, changes.added)
    for key in changes.removed:
        instance.delete_dynamic_partition(DOCUMENTS, key)
    layout = ArtifactLayout(artifact_root or profile.artifact_root)
    purge_document_files(layout.document_files, changes.removed)
    echo(f"recipe {recipe.name}: {len(current)} documents ({changes.summary()})")

    graph = defs.resolve_asset_graph()
    code = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}

    def outdated(assets: list[str], partition: str | None = None) -> bool:
        return full or any(not is_current(instance, a, code[a], partition) for a in assets)

    result = PipelineResult(success=True)
    started = time.monotonic()

    def run(job_name: str, partition: str | None = None) -> bool:
        t0 = time.monotonic()
        job = defs.resolve_job_def(job_name)
        outcome = job.execute_in_process(
            instance=instance,
            partition_key=partition,
            raise_on_error=False,
            # Step events stay in the instance (see them with `make ui`); the console gets one
            # line per run.
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        label = f"{job_name}" + (f" [{partition}]" if partition else "")
        if not outcome.success:
            for event in outcome.all_events:
                if event.is_failure and event.step_failure_data and event.step_failure_data.error:
                    echo(f"FAILED {label}: {event.step_failure_data.error.message.strip()}")
            echo(f"run {outcome.run_id} failed; see it with `make ui`")
            result.success = False
            return False
        step = StepResult(job_name, partition, time.monotonic() - t0)
        for event in outcome.get_asset_materialization_events():
            mat = event.step_materialization_data.materialization
            step.metadata[mat.asset_key.to_user_string()] = {
                k: getattr(v, "value", v) for k, v in mat.metadata.items()
            }
        for check in outcome.get_asset_check_evaluations():
            step.checks[check.check_name] = check.passed
            if not check.passed:
                echo(f"CHECK FAILED {check.asset_key.to_user_string()}: {check.check_name}")
        result.steps.append(step)
        echo(f"ok  {label:<40} {step.seconds:6.1f}s")
        return True

    selections = JOB_SELECTIONS
    wanted = set(jobs or selections)

    def due(job_name: str, upstream_ran: bool, partition: str | None = None) -> bool:
        return job_name in wanted and (upstream_ran or outdated(selections[job_name], partition))

    models_ran = due("model_job", False)
    if models_ran and not run("model_job"):
        return result
    docs = [k for k in sorted(current) if due("document_job", k in changes.to_run, k)]
    for key in docs:
        if not run("document_job", key):
            return result
    docs_changed = bool(docs or changes.removed)
    training_ran = due("training_job", models_ran or docs_changed)
    if training_ran and not run("training_job"):
        return result
    index_ran = due("index_job", docs_changed)
    if index_ran and not run("index_job"):
        return result
    ev = recipe.evaluation
    cells = [f"{c}|{m}" for m in ev.models for c in ev.contexts]
    scored = [k for k in cells if due("evaluation_job", models_ran or training_ran or index_ran, k)]
    for key in scored:
        if not run("evaluation_job", key):
            return result
    if due("report_job", bool(scored)) and not run("report_job"):
        return result
    result.seconds = time.monotonic() - started
    if not result.steps:
        echo("everything is up to date (`ragft run --full` re-runs it all)")
    echo(f"pipeline finished in {result.seconds:.1f}s")
    report = layout.report / "report.md"
    if report.is_file() and scored:
        echo(report.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the whole pipeline for a recipe")
    run.add_argument("--recipe", help="recipe YAML (default: RAGFT_RECIPE or the quickstart)")
    run.add_argument(
        "--profile", help="profile YAML (default: RAGFT_PROFILE or resources/local.yaml)"
    )
    run.add_argument(
        "--full", action="store_true", help="re-run every asset, not only what is out of date"
    )
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        print(
            "DAGSTER_HOME is not set: runs would be recorded nowhere. `make run` sets it to "
            ".dagster_home; or export DAGSTER_HOME=/some/dir",
            file=sys.stderr,
        )
        return 2
    from ragft_dagster.profile import ProfileError
    from ragft_dagster.recipe import RecipeError

    try:
        ok = bool(run_pipeline(args.recipe, args.profile, full=args.full))
    except (RecipeError, ProfileError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
