"""``ragft``: run the whole pipeline through Dagster into the instance at DAGSTER_HOME, and ask
the finished model questions."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.definitions import PROJECT_ROOT, build_resources, load_inputs
from ragft_dagster.runner import run_pipeline


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
    from ragft_dagster.ask import (
        ArtifactsNotReadyError,
        AskError,
        answer_question,
        format_sources,
        materialize_hint,
    )
    from ragft_dagster.config.profile import ProfileError
    from ragft_dagster.config.recipe import RecipeError
    from ragft_dagster.models.refs import ModelReferenceError

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


def backfill(args: argparse.Namespace) -> int:
    """``ragft backfill``: submit an asset backfill of the document assets to the instance's
    daemon, the same request as the UI's Materialize -> Launch backfill."""
    import dagster as dg

    from ragft_dagster.assets.partitions import DOCUMENTS
    from ragft_dagster.backfill import BackfillError, submit_asset_backfill
    from ragft_dagster.definitions import DEFAULT_PROFILE, DEFAULT_RECIPE
    from ragft_dagster.orchestration.automation import scan_documents_folder

    recipe, _ = load_inputs(args.recipe, args.profile)  # validated before the subprocess
    instance = dg.DagsterInstance.get()
    try:
        scan = scan_documents_folder(recipe)
    except OSError as exc:
        print(f"ragft backfill: {exc}", file=sys.stderr)
        return 2
    known = set(instance.get_dynamic_partitions(DOCUMENTS))
    new = [key for key in scan.documents if key not in known]
    if new:  # what the docs sensor would add on its next tick
        instance.add_dynamic_partitions(DOCUMENTS, new)
    keys = list(instance.get_dynamic_partitions(DOCUMENTS))
    wanted = keys if args.documents is None else [k.strip() for k in args.documents.split(",")]
    unknown = sorted(set(wanted) - set(keys))
    if unknown:
        print(
            f"ragft backfill: no document partition {unknown} (documents are paths below "
            f"{recipe.docs_dir}, e.g. {keys[0] if keys else 'guide/intro.md'})",
            file=sys.stderr,
        )
        return 2
    try:
        backfill_id = submit_asset_backfill(
            Path(args.recipe or os.environ.get("RAGFT_RECIPE") or DEFAULT_RECIPE),
            Path(args.profile or os.environ.get("RAGFT_PROFILE") or DEFAULT_PROFILE),
            partitions=None if args.documents is None else wanted,
            title=f"ragft backfill: {len(wanted)} documents",
        )
    except BackfillError as exc:
        print(f"ragft backfill: {exc}", file=sys.stderr)
        return 1
    size = recipe.docs.batch_size
    print(
        f"backfill {backfill_id}: doc_chunks and synthetic_qa for {len(wanted)} documents, at "
        f"most {size} a run (docs.batch_size). The daemon runs it (`dagster-daemon run`, or "
        "`make ui`); watch it under Runs -> Backfills."
    )
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
    fill = sub.add_parser(
        "backfill",
        help="submit a backfill of the document assets for the daemon (docs.batch_size a run)",
    )
    fill.add_argument("--recipe", help="recipe YAML (default: RAGFT_RECIPE or the quickstart)")
    fill.add_argument(
        "--profile", help="profile YAML (default: RAGFT_PROFILE or resources/local.yaml)"
    )
    fill.add_argument("--documents", help="comma-separated document keys (default: every document)")
    from ragft_dagster.serve import add_serve_parser, serve

    add_serve_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":  # like ask: no runs, no DAGSTER_HOME
        return serve(args)
    if args.command == "ask":
        return ask(args)
    if not os.environ.get("DAGSTER_HOME"):
        print(
            "DAGSTER_HOME is not set: runs would be recorded nowhere. `make run` sets it to "
            ".dagster_home; or export DAGSTER_HOME=/some/dir",
            file=sys.stderr,
        )
        return 2
    import dagster as dg
    import yaml

    from ragft_dagster.config.profile import ProfileError
    from ragft_dagster.config.recipe import RecipeError
    from ragft_dagster.runner import PipelineInterrupted

    signals = _SignalLog()
    try:
        if args.command == "backfill":
            return backfill(args)
        ok = bool(run_pipeline(args.recipe, args.profile, full=args.full))
    except (RecipeError, ProfileError) as exc:
        print(exc, file=sys.stderr)
        return 2
    except (dg.DagsterInvalidConfigError, yaml.YAMLError) as exc:
        message = _instance_config_message(exc)
        if message is None:  # not the instance's own file
            raise
        print(message, file=sys.stderr)
        return 2
    except (PipelineInterrupted, KeyboardInterrupt) as exc:
        signo = signals.last() or signal.SIGINT
        if not isinstance(exc, PipelineInterrupted):  # between two jobs: nothing was running
            print("INTERRUPTED between jobs; every finished job is kept", file=sys.stderr)
        name = signal.Signals(signo).name
        print(f"ragft run: stopped by {name}; run `ragft run` again to continue", file=sys.stderr)
        return 128 + signo
    finally:
        signals.close()
    return 0 if ok else 1


def _instance_config_message(exc: Exception) -> str | None:
    """What is wrong with ``$DAGSTER_HOME/dagster.yaml``, when ``exc`` is about that file (None
    otherwise): where its YAML does not parse, or one line a config error without the schema
    Dagster prints after "Expected:" (hundreds of characters)."""
    path = os.path.join(os.environ.get("DAGSTER_HOME", ""), "dagster.yaml")
    mark = getattr(exc, "problem_mark", None)
    if mark is not None and str(getattr(mark, "name", "")).endswith("dagster.yaml"):
        return (
            f"the Dagster instance file {path} is not valid YAML (line {mark.line + 1}, "
            f"column {mark.column + 1}): {getattr(exc, 'problem', exc)}. Fix it and run again."
        )
    if "dagster instance config" not in str(exc):
        return None
    errors = [
        line.strip().split(' Expected: "', 1)[0]
        for line in str(exc).splitlines()
        if line.strip().startswith("Error ")
    ]
    return "\n".join(
        [f"the Dagster instance file {path} is invalid:", *(f"  {e}" for e in errors)]
        + ["Fix it (the project's dagster.yaml is a working example) and run again."]
    )


class _SignalLog:
    """Which signal stopped the run: SIGTERM is turned into an interrupt (as Dagster does while
    a job runs; otherwise it would end the process without a word), and every signal Python
    catches is written to a pipe (``signal.set_wakeup_fd``), so the exit status can say which
    one came (130 for Ctrl-C, 143 for SIGTERM) even when Dagster's own handler caught it."""

    def __init__(self) -> None:
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        self._write = write
        try:
            self._before: int | None = signal.set_wakeup_fd(write)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        except ValueError:  # not the main thread (a test calling main): nothing to record
            self._before = None

    def last(self) -> int | None:
        try:
            got = os.read(self._read, 1024)
        except BlockingIOError:
            return None
        wanted = [b for b in got if b in (signal.SIGINT, signal.SIGTERM)]
        return wanted[-1] if wanted else None

    def close(self) -> None:
        if self._before is not None:
            signal.set_wakeup_fd(self._before)
        os.close(self._read)
        os.close(self._write)


if __name__ == "__main__":
    sys.exit(main())
