"""``ragft``: run the whole pipeline through Dagster into the instance at DAGSTER_HOME, and ask
the finished model questions."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import DagsterInvalidConfigError

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.assets._meta import DOCUMENTS
from ragft_dagster.automation import document_changes, is_current
from ragft_dagster.definitions import (
    PROJECT_ROOT,
    build_resources,
    definitions_for,
    job_selections,
    load_inputs,
)
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


def _failure_messages(events: Sequence[Any]) -> list[str]:
    """What failed in a run: each failed step's error, else the run's own failure (a run that
    failed before any step, e.g. a resource that could not start). Only STEP_FAILURE events
    carry step_failure_data (Dagster raises on any other event)."""
    steps = [
        e.step_failure_data.error.message.strip()
        for e in events
        if e.is_step_failure and e.step_failure_data.error
    ]
    if steps:
        return steps
    runs = [e for e in events if e.event_type_value == "RUN_FAILURE"]
    out = []
    for e in runs:
        error = getattr(e.event_specific_data, "error", None)
        out.append(error.message.strip() if error else (e.message or "the run failed"))
    return out


def _release_freed_memory() -> None:
    """Give memory that the finished job freed back to the OS. Every job runs in this one
    process (in-process execution): without this, glibc keeps each job's freed model and
    optimizer buffers in its arenas and the process's resident size only grows."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _execute_releasing_memory(job: Any, **kwargs: Any) -> Any:
    try:
        return job.execute_in_process(**kwargs)
    finally:
        _release_freed_memory()


def _config_error_messages(exc: Any) -> list[str]:
    """The readable part of each error of a run that could not start (Dagster appends the
    stack trace of its own config machinery to each)."""
    out = []
    for error in getattr(exc, "errors", None) or [exc]:
        text = str(getattr(error, "message", error)).split("Stack Trace:")[0].strip()
        variable = re.search(r'environment variable "([^"]+)" which is not set', text)
        if variable:
            text = (
                f"environment variable {variable.group(1)} is not set; export it (the key of the "
                "profile's llm endpoint, llm.api_key_env), or remove what needs the endpoint "
                "(evaluation.api.models, qa.generator: openai)"
            )
        out.append(text)
    return out


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
    run to some of ``job_selections(recipe)`` (the benchmark runs only the data and index stages).

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
    for warning in changes.warnings(recipe.docs_dir):
        echo(f"  skipped {warning}")

    graph = defs.resolve_asset_graph()
    code = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}

    def outdated(assets: list[str], partition: str | None = None) -> bool:
        return full or any(not is_current(instance, a, code[a], partition) for a in assets)

    result = PipelineResult(success=True)
    started = time.monotonic()

    def run(job_name: str, partition: str | None = None) -> bool:
        t0 = time.monotonic()
        job = defs.resolve_job_def(job_name)
        label = f"{job_name}" + (f" [{partition}]" if partition else "")
        try:
            outcome = _execute_releasing_memory(
                job,
                instance=instance,
                partition_key=partition,
                raise_on_error=False,
                # Step events stay in the instance (see them with `make ui`); the console gets
                # one line per run.
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
        except DagsterInvalidConfigError as exc:
            # The run could not start (e.g. an EnvVar that is not set): no run id exists.
            for message in _config_error_messages(exc):
                echo(f"FAILED {label}: {message}")
            echo(f"{label} could not start; nothing of it ran")
            result.success = False
            return False
        if not outcome.success:
            for message in _failure_messages(outcome.all_events):
                echo(f"FAILED {label}: {message}")
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

    selections = job_selections(recipe)
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
    # API models are cells too (they were left out, so their cells were never scored)
    cells = [f"{c}|{m}" for m in ev.all_models for c in ev.contexts]
    scored = [k for k in cells if due("evaluation_job", models_ran or training_ran or index_ran, k)]
    for key in scored:
        if not run("evaluation_job", key):
            return result
    general = []
    if "general_job" in selections:
        general = [m for m in ev.models if due("general_job", models_ran or training_ran, m)]
    for key in general:
        if not run("general_job", key):
            return result
    if due("report_job", bool(scored or general)) and not run("report_job"):
        return result
    # After the report, so the exported model card quotes fresh figures (recipe export.enabled).
    if due("export_job", models_ran or training_ran) and not run("export_job"):
        return result
    result.seconds = time.monotonic() - started
    if not result.steps:
        echo("everything is up to date (`ragft run --full` re-runs it all)")
    echo(f"pipeline finished in {result.seconds:.1f}s")
    report = layout.report / "report.md"
    if report.is_file() and scored:
        echo(report.read_text())
    return result


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _temperature(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (greedy) or more, not {text}")
    return value


def add_ask_parser(sub: Any) -> None:
    ask = sub.add_parser(
        "ask",
        help="answer a question with the finished model (dpo_model + lora_adapter) and the index",
        description="Answer a question with the finished model (dpo_model with lora_adapter "
        "merged in) and the recipe's vector index; the answer streams as it is generated, then "
        "the retrieved sources are listed. Nothing is downloaded.",
    )
    ask.add_argument("question", help="the question (quote it)")
    ask.add_argument("--recipe", help="recipe YAML (default: RAGFT_RECIPE or the quickstart)")
    ask.add_argument(
        "--profile", help="profile YAML (default: RAGFT_PROFILE or resources/local.yaml)"
    )
    ask.add_argument(
        "--max-new-tokens", type=_positive_int, default=256, help="longest answer (default 256)"
    )
    ask.add_argument(
        "--top-k", type=_positive_int, help="chunks to retrieve (default: retrieval.top_k)"
    )
    ask.add_argument(
        "--no-rag", action="store_true", help="closed book: no retrieval, no vector index"
    )
    ask.add_argument(
        "--temperature",
        type=_temperature,
        default=0.0,
        help="sampling temperature (default 0: greedy decoding)",
    )


def _write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def ask(args: argparse.Namespace) -> int:
    """``ragft ask``: stream the answer to stdout, then its sources; errors go to stderr."""
    # Set before transformers / huggingface_hub are imported (they read it once): every file
    # ask needs is a local artifact, so a missing one must fail, not start a download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # The terminal shows the answer, not weight-loading bars (tqdm in transformers/hub).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Upstream noise: peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    from ragft_dagster.ask import (
        ArtifactsNotReadyError,
        AskError,
        answer_question,
        format_sources,
        materialize_hint,
    )
    from ragft_dagster.model_refs import ModelReferenceError
    from ragft_dagster.profile import ProfileError
    from ragft_dagster.recipe import RecipeError

    try:
        recipe, profile = load_inputs(args.recipe, args.profile)
    except (RecipeError, ProfileError) as exc:
        print(exc, file=sys.stderr)
        return 2
    layout = ArtifactLayout(profile.artifact_root)
    # The same resources the assets use: the profile's device/dtype and vector store.
    resources = build_resources(recipe, profile)
    vector_store, compute = resources["vector_store"], resources["compute"]
    name = recipe.retrieval.collection
    embedded = vector_store.mode == "embedded"
    store = (
        f"the embedded Chroma at {layout.vector_index}"
        if embedded
        else f"the Chroma server at {vector_store.host}:{vector_store.port} (profile "
        f"{profile.name!r}, vector_store.mode: http)"
    )
    try:
        answer = answer_question(
            recipe,
            layout,
            args.question,
            compute=compute.settings(),
            open_collection=None
            if args.no_rag
            else (lambda: vector_store.collection(name, layout.vector_index)),
            index_dir=layout.vector_index if embedded else None,
            store_name=store,
            top_k=args.top_k,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            write=_write_now,
        )
    except ArtifactsNotReadyError as exc:
        lines = [f"ragft ask: recipe {recipe.name!r} is not materialized yet ({layout.root}):"]
        lines += [f"  - {m.asset}: {m.reason}" for m in exc.missing]
        home = None if os.environ.get("DAGSTER_HOME") else str(PROJECT_ROOT / ".dagster_home")
        lines.append(
            materialize_hint(
                exc.assets, recipe_arg=args.recipe, profile_arg=args.profile, dagster_home=home
            )
        )
        print("\n".join(lines), file=sys.stderr)
        return 1
    except (AskError, ModelReferenceError) as exc:
        print(f"ragft ask: {exc}", file=sys.stderr)
        return 1
    print()
    if not answer.text.strip():
        print("ragft ask: the model ended its answer at once (no text)", file=sys.stderr)
    if answer.sources:
        print("\nSources:")
        print("\n".join(format_sources(answer.sources)))
    return 0


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
    add_ask_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "ask":
        return ask(args)
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
