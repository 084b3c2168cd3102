"""``ragft``: run the whole pipeline through Dagster into the instance at DAGSTER_HOME."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def sync_document_partitions(instance, recipe) -> tuple[list[str], list[str], list[str]]:
    """Make the ``documents`` partitions match the docs folder: (all, added, removed)."""
    from ragft_dagster.assets._meta import documents_partitions
    from ragft_dagster.documents import scan_documents

    found = scan_documents(recipe.docs_dir, recipe.docs.glob)
    if not found:
        raise SystemExit(f"no documents matching {recipe.docs.glob!r} in {recipe.docs_dir}")
    name = documents_partitions.name
    existing = set(instance.get_dynamic_partitions(name))
    added = sorted(set(found) - existing)
    removed = sorted(existing - set(found))
    if added:
        instance.add_dynamic_partitions(name, added)
    for key in removed:
        instance.delete_dynamic_partition(name, key)
    return sorted(found), added, removed


def run_pipeline(
    recipe_path: str | None,
    profile_path: str | None,
    instance=None,
    artifact_root: Path | None = None,
    echo=print,
) -> bool:
    """Materialize every asset, job by job in graph order, recording runs in ``instance``.

    Returns:
        True when every run succeeded.
    """
    import dagster as dg

    from ragft_dagster.definitions import definitions_for, load_inputs

    recipe, profile = load_inputs(recipe_path, profile_path)
    defs = definitions_for(recipe, profile, artifact_root)
    instance = instance or dg.DagsterInstance.get()
    docs, added, removed = sync_document_partitions(instance, recipe)
    echo(f"recipe {recipe.name}: {len(docs)} documents (+{len(added)} -{len(removed)})")
    mcq = [f"{c}|{m}" for m in recipe.evaluation.models for c in recipe.evaluation.contexts]
    plan: list[tuple[str, str | None]] = [("model_job", None)]
    plan += [("document_job", d) for d in docs]
    plan += [("training_job", None)]
    plan += [("evaluation_job", k) for k in mcq]
    plan += [("report_job", None)]
    started = time.monotonic()
    for job_name, partition in plan:
        t0 = time.monotonic()
        job = defs.resolve_job_def(job_name)
        result = job.execute_in_process(
            instance=instance,
            partition_key=partition,
            raise_on_error=False,
            # Step events stay in the instance (see them with `make ui`); the console gets one
            # line per run.
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        label = f"{job_name}" + (f" [{partition}]" if partition else "")
        if not result.success:
            for event in result.all_events:
                if event.is_failure and event.step_failure_data and event.step_failure_data.error:
                    echo(f"FAILED {label}: {event.step_failure_data.error.message.strip()}")
            echo(f"run {result.run_id} failed; see it with `make ui`")
            return False
        echo(f"ok  {label:<40} {time.monotonic() - t0:6.1f}s")
    echo(f"pipeline finished in {time.monotonic() - started:.1f}s")
    root = artifact_root or profile.artifact_root
    report = Path(root) / "report" / "report.md"
    if report.is_file():
        echo(report.read_text())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the whole pipeline for a recipe")
    run.add_argument("--recipe", help="recipe YAML (default: RAGFT_RECIPE or the quickstart)")
    run.add_argument(
        "--profile", help="profile YAML (default: RAGFT_PROFILE or resources/local.yaml)"
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
        ok = run_pipeline(args.recipe, args.profile)
    except (RecipeError, ProfileError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
