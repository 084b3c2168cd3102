"""``make bench-scale``: the data and index stages at hundreds to a thousand documents.

For each corpus size (copies of the quickstart's bundled guide, each titled with its own
edition, so no two documents share a chunk or a cache key; the offline Q&A generator):

- ``ragft run`` of the documents and retrieval stages from empty, then again with nothing
  changed, then after one document's edit;
- the daemon path, as a user's backfill runs: ``ragft backfill`` of every document through a
  real ``dagster-daemon``, until every run is done;
- the same work without Dagster (chunking, generation and embedding called directly), so that
  the orchestration overhead is the wall time minus that, divided by the documents.

Then, once, Q&A generation through the ``openai`` generator against a loopback
OpenAI-compatible server (tests/openai_stub.py, 127.0.0.1, started and stopped here) that
answers every request after a fixed delay, against the ideal of requests x delay /
``qa.max_concurrency``; and the least-squares line of wall time against documents.

Every instance is a SQLite one in a temporary DAGSTER_HOME made from ``--instance``: by default
``dagster-fast.yaml`` (the opt-in batching storage and warm run launcher, which the published
figures were measured with: docs/instance.md); ``--instance dagster.yaml`` measures Dagster's
own parts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from ragft_dagster.benchmarks.bench import build_corpus, edit_one_sentence, finish
from ragft_dagster.definitions import DEFAULT_PROFILE, DEFAULT_RECIPE, PROJECT_ROOT
from ragft_dagster.orchestration.batches import batch_tags
from ragft_dagster.orchestration.storage import BATCH_SIZE_ENV

FAST_INSTANCE = PROJECT_ROOT / "dagster-fast.yaml"
DEFAULT_INSTANCE = PROJECT_ROOT / "dagster.yaml"
STAGES = {"documents_job", "retrieval_job"}
OVERHEAD_TARGET_MS = 50.0
LLM_RATIO_TARGET = 1.3
SECOND_RUN_TARGET_S = 5.0
EDIT_TARGET_S = 5.0


def make_corpus(target: Path, n: int) -> list[str]:
    """``n`` documents: editions of the bundled guide, the last one cut short."""
    source = DEFAULT_RECIPE.parent / "docs"
    per_edition = len(list(source.glob("*.md")))
    editions = [f"E{i:03d}" for i in range(math.ceil(n / per_edition))]
    keys = build_corpus(source, target, editions)
    for key in keys[n:]:
        (target / key).unlink()
    return keys[:n]


def write_inputs(tmp: Path, docs: Path, qa: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """A copy of the default recipe on ``docs`` and a profile with its artifacts in ``tmp``."""
    from ragft_dagster.config.recipe import relocatable_raw

    raw = relocatable_raw(DEFAULT_RECIPE)
    raw["docs"] = {**raw.get("docs", {}), "path": str(docs), "glob": "**/*.md"}
    if qa:
        raw["qa"].update(qa)
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    profile = yaml.safe_load(Path(DEFAULT_PROFILE).read_text())
    profile["artifacts"] = {"root": str(tmp / "artifacts")}
    profile_path = tmp / "resources" / "bench.yaml"
    profile_path.parent.mkdir(exist_ok=True)
    profile_path.write_text(yaml.safe_dump(profile))
    return recipe, profile_path


def sensor_ticks(recipe: Path, artifact_root: Path, edit: Path) -> dict[str, float]:
    """Seconds of the docs sensor's ticks on this corpus: the first (reads every file), one
    with nothing changed, one after an edit (the partitions exist, nothing materialized)."""
    import dagster as dg

    from ragft_dagster.definitions import build_definitions
    from ragft_dagster.resources import ArtifactStoreResource

    defs = build_definitions(recipe, artifact_root=artifact_root)
    sensor = defs.get_sensor_def("docs_sensor")
    times: dict[str, float] = {}
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None, name: str) -> Any:
            context = dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={"artifacts": ArtifactStoreResource(root=str(artifact_root))},
                definitions=defs,
            )
            t0 = time.perf_counter()
            result = sensor(context)
            times[name] = time.perf_counter() - t0
            return result

        first = tick(None, "first")
        (add,) = first.dynamic_partitions_requests
        instance.add_dynamic_partitions("documents", list(add.partition_keys))
        tick(first.cursor, "unchanged")
        edit.write_text(edit.read_text() + "\nOne more line.\n")
        tick(first.cursor, "after_edit")
    return times


def direct_compute(recipe_path: Path, artifact_root: Path) -> dict[str, float]:
    """Seconds the data and index work takes called directly, without Dagster: reading and
    chunking every document, offline Q&A (a fresh cache) and embedding every chunk."""
    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.data.chunking import chunk_document, read_document
    from ragft_dagster.data.documents import discover_documents
    from ragft_dagster.data.qa_generation import generate_qa
    from ragft_dagster.llm.cache import ReplyCache
    from ragft_dagster.models.refs import load_tokenizer, resolve_model_ref
    from ragft_dagster.retrieval.indexing import open_collection, retrieval_embedder, sync_index

    recipe = load_recipe(recipe_path)
    r = recipe.retrieval
    tokenizer = load_tokenizer(
        resolve_model_ref(recipe.base_model, artifact_root, recipe.root), recipe.chat_template
    )
    embedder = retrieval_embedder(r, artifact_root, recipe.root, "cpu")
    with tempfile.TemporaryDirectory(prefix="ragft-direct-") as scratch:
        t0 = time.perf_counter()
        keys = sorted(discover_documents(recipe.docs_dir, recipe.docs.glob).documents)
        chunks = {
            key: [
                c.to_dict()
                for c in chunk_document(
                    read_document(recipe.docs_dir / key, key),
                    key,
                    tokenizer,
                    recipe.chunking.chunk_size,
                    recipe.chunking.chunk_overlap,
                )
            ]
            for key in keys
        }
        t1 = time.perf_counter()
        generate_qa(chunks, recipe.qa, cache=ReplyCache(Path(scratch) / "cache"))
        t2 = time.perf_counter()
        rows = [c for key in keys for c in chunks[key]]
        with open_collection(r.collection, path=Path(scratch) / "index") as collection:
            sync_index(collection, rows, embedder, r.embedding_model)
        t3 = time.perf_counter()
    return {
        "chunking": t1 - t0,
        "generation": t2 - t1,
        "embedding": t3 - t2,
        "documents_stage": t2 - t0,
        "all": t3 - t0,
        "chunks": len(rows),
    }


def instance_yaml(source: Path, home: Path) -> None:
    """The instance file ``source`` as ``home``/dagster.yaml, its SQLite storage under ``home``
    (as ``make run`` has it under DAGSTER_HOME=.dagster_home), whether or not DAGSTER_HOME is
    set in this process."""
    config = yaml.safe_load(source.read_text())
    custom = config.get("storage", {}).get("custom")
    if custom is not None:
        custom["config"]["base_dir"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


def through_ragft_run(
    recipe: Path, profile: Path, home: Path, edit: Path, instance_file: Path = FAST_INSTANCE
) -> dict[str, float]:
    """Wall times of ``ragft run`` (data and index stages) on ``instance_file``: from empty,
    unchanged, one edit."""
    import dagster as dg

    from ragft_dagster.runner import run_pipeline

    lines: list[str] = []
    instance_yaml(instance_file, home)
    with dg.DagsterInstance.local_temp(str(home)) as instance:

        def timed() -> tuple[float, Any]:
            t0 = time.perf_counter()
            result = run_pipeline(
                str(recipe), str(profile), instance=instance, echo=lines.append, jobs=STAGES
            )
            if not result:
                print("\n".join(lines), file=sys.stderr)
                raise SystemExit(1)
            return time.perf_counter() - t0, result

        full, result = timed()
        runs = sum(1 for s in result.steps if s.job == "documents_job")
        second, _ = timed()
        edit_one_sentence(edit)
        edited, _ = timed()
    return {"full": full, "document_runs": runs, "second": second, "edit": edited}


def _daemon_env(recipe: Path, profile: Path, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RAGFT_RECIPE": str(recipe),
        "RAGFT_PROFILE": str(profile),
    }


def _stop_sensor(name: str, env: dict[str, str], home: Path) -> None:
    bin_dir = Path(sys.executable).parent
    stop = subprocess.run(
        [str(bin_dir / "dagster"), "sensor", "stop", name, "-m", "ragft_dagster.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=home,
    )
    if stop.returncode != 0:
        raise SystemExit(f"dagster sensor stop {name} failed:\n{stop.stdout}{stop.stderr}")


@contextmanager
def _running_daemon(env: dict[str, str], home: Path) -> Iterator[Path]:
    """``dagster-daemon run`` in its own process group, stopped (group and all) on exit."""
    bin_dir = Path(sys.executable).parent
    log = home / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [str(bin_dir / "dagster-daemon"), "run", "-m", "ragft_dagster.definitions"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=home,
        )
    try:
        yield log
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=60)


def through_the_daemon(
    recipe: Path, profile: Path, home: Path, n: int, instance_file: Path = FAST_INSTANCE
) -> dict[str, float]:
    """Wall time of a backfill of every document (``ragft backfill``) through a real
    ``dagster-daemon`` on ``instance_file``: from its submission (the time the instance
    recorded it, so not ``ragft backfill``'s own start) until its last run ends."""
    import dagster as dg

    bin_dir = Path(sys.executable).parent
    instance_yaml(instance_file, home)
    env = _daemon_env(recipe, profile, home)
    # The docs sensor is stopped first, so its own runs do not mix in: the backfill is timed.
    _stop_sensor("docs_sensor", env, home)
    with _running_daemon(env, home) as log:
        out_ = subprocess.run(
            [str(bin_dir / "ragft"), "backfill"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
        backfill = out_.split()[1].rstrip(":")
        os.environ["DAGSTER_HOME"] = str(home)
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                record = instance.get_backfill(backfill)
                if record is None:
                    raise SystemExit(f"backfill {backfill} is not in the instance; see {log}")
                status = record.status
                t0 = record.backfill_timestamp
                if status.value not in ("REQUESTED", "CANCELING"):
                    break
                time.sleep(1)
            runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill}))
            failed = [r for r in runs if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
            if failed or status.value != "COMPLETED_SUCCESS":
                raise SystemExit(f"backfill {backfill} ended {status.value}; see {log}")
            end = max(r.end_time for r in runs if r.end_time)
    return {"backfill": end - t0, "runs": len(runs)}


def edit_through_the_daemon(
    recipe: Path, profile: Path, home: Path, edits: list[Path], timeout: float = 300
) -> list[dict[str, float]]:
    """Edited documents, one after the other, through one real ``dagster-daemon`` on an instance
    whose documents and index are built (``ragft run``'s): for each, seconds from the docs
    sensor's tick that sees the edit until ``vector_index`` holds its chunks (the index step's
    materialization), and the parts: tick to run created, created to started (the queue, the
    run's process), started to the index materialized. The first edit's run is the first this
    daemon launches (with the warm launcher, its worker starts then); later ones find it warm. The
    automation sensor is stopped, so that only the docs sensor's runs are timed (it would go on
    to sft_dataset and lora_adapter)."""
    import dagster as dg

    env = _daemon_env(recipe, profile, home)
    _stop_sensor("ragft_automation", env, home)
    os.environ["DAGSTER_HOME"] = str(home)
    timings = []
    with dg.DagsterInstance.get() as instance, _running_daemon(env, home) as log:

        def docs_sensor_ticks() -> list[Any]:
            for state in instance.all_instigator_state():
                if state.instigator_name == "docs_sensor":  # (no schedule has its name)
                    return list(
                        instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)
                    )
            return []

        deadline = time.monotonic() + timeout
        last = None
        while last is None:  # the first tick, finished: every file read, nothing changed
            if time.monotonic() > deadline:
                raise SystemExit(f"the docs sensor never ticked; see {log}")
            done = [t.tick_id for t in docs_sensor_ticks() if t.status.value != "STARTED"]
            last = max(done) if done else None
            time.sleep(0.5)
        for edit in edits:
            edit_one_sentence(edit)
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"no docs sensor run for the edit of {edit} within {timeout:.0f} s; "
                        f"see {log}"
                    )
                ticks = [t for t in docs_sensor_ticks() if t.tick_id > last and t.run_ids]
                if ticks:
                    tick = min(ticks, key=lambda t: t.tick_id)
                    found = instance.get_run_record_by_id(tick.run_ids[0])
                    if found is not None and found.dagster_run.is_finished:
                        record = found
                        break
                time.sleep(0.5)
            # the last finished tick: one still running may be the one that sees the next edit
            last = max(t.tick_id for t in docs_sensor_ticks() if t.status.value != "STARTED")
            run = record.dagster_run
            if run.status != dg.DagsterRunStatus.SUCCESS:
                raise SystemExit(f"the edit's run {run.run_id} ended {run.status.value}; see {log}")
            index = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("vector_index")), limit=1
            ).records
            if not index or index[0].run_id != run.run_id:
                raise SystemExit(f"the edit's run {run.run_id} did not update vector_index")
            indexed = index[0].timestamp
            # the run's own events (the run record's creation time has whole seconds only)
            times = {e.dagster_event_type: e.timestamp for e in instance.all_logs(run.run_id)}
            queued = times.get(dg.DagsterEventType.RUN_ENQUEUED, tick.timestamp)
            started = times.get(dg.DagsterEventType.RUN_START, record.start_time or queued)
            timings.append(
                {
                    "tick_to_index": indexed - tick.timestamp,
                    "tick_to_created": queued - tick.timestamp,
                    "created_to_started": started - queued,
                    "started_to_index": indexed - started,
                }
            )
    return timings


# The loopback server of the tests, run in a process of its own (as a real endpoint is: its work
# must not take the benchmark's GIL): prints its URL, serves until its stdin closes, then prints
# what it saw.
SERVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.openai_stub import OpenAIStub
script = [{"delay": float(sys.argv[2]), "content": sys.argv[3]}]
with OpenAIStub(script, keep_alive=sys.argv[4] == "keep-alive") as stub:
    print(stub.base_url, flush=True)
    sys.stdin.read()
    print(json.dumps({"requests": len(stub.requests), "max_in_flight": stub.max_in_flight}))
"""


def llm_pool(
    tmp: Path,
    n: int,
    delay: float,
    concurrency: int,
    keep_alive: bool = True,
    pairs_per_reply: int = 3,
    instance_file: Path = FAST_INSTANCE,
) -> dict[str, float]:
    """Q&A generation of ``n`` documents through the openai generator at a loopback server
    (127.0.0.1, its own process, stopped here) that answers each request after ``delay``
    seconds with ``pairs_per_reply`` pairs (fewer than the 3 asked for: every reply is short,
    and warned about): the batches' generation (``generation_seconds`` in their metadata) and
    the ``synthetic_qa`` steps' wall time from the event log."""
    import dagster as dg

    from ragft_dagster.config.recipe import load_recipe
    from ragft_dagster.models.refs import resolve_model_ref
    from ragft_dagster.runner import run_pipeline

    docs = tmp / "docs"
    docs.mkdir()
    make_corpus(docs, n)
    # by default as many pairs as qa.questions_per_chunk (3) asks for: a model that follows
    # the prompt
    pairs = json.dumps(
        [
            {"question": f"What does setting {i} set?", "answer": f"It sets default {i}."}
            for i in range(pairs_per_reply)
        ]
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER,
            str(PROJECT_ROOT),
            str(delay),
            pairs,
            "keep-alive" if keep_alive else "close",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        qa = {
            "generator": "openai",
            "model": "stub-model",
            "max_concurrency": concurrency,
            "budget": {"max_requests": 100_000, "max_tokens": 100_000_000},
        }
        recipe, profile = write_inputs(tmp, docs, qa)
        raw = yaml.safe_load(profile.read_text())
        raw["llm"] = {"base_url": base_url, "api_key_env": "RAGFT_BENCH_KEY"}
        profile.write_text(yaml.safe_dump(raw))
        os.environ["RAGFT_BENCH_KEY"] = "sk-bench"
        lines: list[str] = []
        instance_yaml(instance_file, tmp / "home")
        resolve_model_ref(load_recipe(recipe).base_model, tmp / "artifacts", recipe.parent)
        with dg.DagsterInstance.local_temp(str(tmp / "home")) as instance:
            result = run_pipeline(
                str(recipe),
                str(profile),
                instance=instance,
                echo=lines.append,
                jobs={"documents_job"},
            )
            if not result:
                print("\n".join(lines), file=sys.stderr)
                raise SystemExit(1)
            # the synthetic_qa steps, start to end, from the event log, and the generation
            # inside them (the asset's generation_seconds, once per run)
            run_ids = [step.run_id for step in result.steps if step.job == "documents_job"]
            seconds = sum(_step_seconds(instance, run_id, "synthetic_qa") for run_id in run_ids)
            generation = sum(_generation_seconds(instance, run_id) for run_id in run_ids)
        out, _ = server.communicate(input="", timeout=60)
        seen = json.loads(out.strip().splitlines()[-1])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    requests = seen["requests"]
    ideal = requests * delay / concurrency
    return {
        "documents": n,
        "requests": requests,
        "max_in_flight": seen["max_in_flight"],
        "seconds": generation,
        "step_seconds": seconds,
        "ideal_seconds": ideal,
        "ratio": generation / ideal,
        "step_ratio": seconds / ideal,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragft_dagster.benchmarks.scale")
    parser.add_argument("--docs", default="100,300,1000", help="corpus sizes")
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon path")
    parser.add_argument("--llm-docs", type=int, default=100, help="documents of the LLM check")
    parser.add_argument("--llm-delay", type=float, default=0.2)
    parser.add_argument("--llm-concurrency", type=int, default=8)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--instance",
        type=Path,
        default=FAST_INSTANCE,
        help="the instance file the runs and the daemon use (default: dagster-fast.yaml, the "
        "opt-in plugins the published figures were measured with; dagster.yaml: Dagster's own)",
    )
    parser.add_argument(
        "--floor", action="store_true", help="only measure Dagster's own cost per document"
    )
    parser.add_argument("--llm-only", action="store_true", help="only the LLM pool check")
    parser.add_argument(
        "--llm-new-connections",
        action="store_true",
        help="the loopback server closes every connection after its reply (HTTP/1.0)",
    )
    parser.add_argument(
        "--llm-pairs",
        type=int,
        default=3,
        help="Q&A pairs in each reply of the loopback server (fewer than 3: every reply short)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.floor:
        for n in (200, 1000):
            fast = dagster_floor(n)
            default = dagster_floor(n, fast_storage=False)
            plain = dagster_floor(n, fast_storage=False, our_metadata=False)
            print(
                f"Dagster alone, two partitioned assets, {n} documents in one run: "
                f"{fast:.1f} ms a document with dagster-fast.yaml's storage and our metadata "
                f"calls, {default:.1f} ms with dagster.yaml's (Dagster's) storage and our "
                f"metadata calls, {plain:.1f} ms with Dagster's storage and metadata calls"
            )
        return 0
    if args.llm_only:
        with tempfile.TemporaryDirectory(prefix="ragft-scale-llm-") as tmp_dir:
            llm = llm_pool(
                Path(tmp_dir),
                args.llm_docs,
                args.llm_delay,
                args.llm_concurrency,
                keep_alive=not args.llm_new_connections,
                pairs_per_reply=args.llm_pairs,
                instance_file=args.instance,
            )
        print(json.dumps(llm))
        return 0 if llm["ratio"] <= LLM_RATIO_TARGET else 1
    sizes = [int(s) for s in args.docs.split(",")]
    rows: list[dict[str, Any]] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"ragft-scale-{n}-") as tmp_dir:
            tmp = Path(tmp_dir)
            docs = tmp / "docs"
            keys = make_corpus(docs, n)
            recipe, profile = write_inputs(tmp, docs)
            from ragft_dagster.config.recipe import load_recipe
            from ragft_dagster.models.refs import resolve_model_ref

            # the packaged model's conversion happens once, before anything is timed
            resolve_model_ref(load_recipe(recipe).base_model, tmp / "artifacts", recipe.parent)
            direct = direct_compute(recipe, tmp / "artifacts")
            row: dict[str, Any] = {"documents": n, "chunks": direct["chunks"], "direct": direct}
            row["sensor"] = sensor_ticks(recipe, tmp / "sensor-artifacts", docs / keys[0])
            daemon = None
            if not args.no_daemon:
                daemon = through_the_daemon(recipe, profile, tmp / "daemon-home", n, args.instance)
                row["daemon"] = daemon
                row["daemon_overhead_ms"] = (
                    1000 * (daemon["backfill"] - direct["documents_stage"]) / n
                )
            # a fresh artifact root: the daemon's backfill filled the first one
            (tmp / "run").mkdir()
            recipe, profile = write_inputs(tmp / "run", docs)
            resolve_model_ref(
                load_recipe(recipe).base_model, tmp / "run" / "artifacts", recipe.parent
            )
            run = through_ragft_run(
                recipe, profile, tmp / "run-home", docs / keys[n // 2], args.instance
            )
            row["ragft_run"] = run
            if not args.no_daemon:
                first, later = edit_through_the_daemon(
                    recipe, profile, tmp / "run-home", [docs / keys[n // 3], docs / keys[n // 4]]
                )
                row["daemon_edit"], row["daemon_first_edit"] = later, first
            row["ragft_run_overhead_ms"] = 1000 * (run["full"] - direct["all"]) / n
            rows.append(row)
            print(json.dumps(row), flush=True)
    with tempfile.TemporaryDirectory(prefix="ragft-scale-llm-") as tmp_dir:
        llm = llm_pool(
            Path(tmp_dir),
            args.llm_docs,
            args.llm_delay,
            args.llm_concurrency,
            instance_file=args.instance,
        )
    fit = _line([r["documents"] for r in rows], [r["ragft_run"]["full"] for r in rows])
    figures = {"instance": args.instance.name, "sizes": rows, "llm": llm, "ragft_run_fit": fit}
    if not args.no_daemon:
        figures["daemon_fit"] = _line(
            [r["documents"] for r in rows], [r["daemon"]["backfill"] for r in rows]
        )
    _print(figures)
    largest = rows[-1]
    checks = {
        f"ragft run overhead <= {OVERHEAD_TARGET_MS:.0f} ms a document at {largest['documents']}": (
            largest["ragft_run_overhead_ms"] <= OVERHEAD_TARGET_MS
        ),
        f"LLM Q&A wall time <= {LLM_RATIO_TARGET}x the ideal": llm["ratio"] <= LLM_RATIO_TARGET,
        f"second ragft run <= {SECOND_RUN_TARGET_S:.0f} s": (
            largest["ragft_run"]["second"] <= SECOND_RUN_TARGET_S
        ),
        f"one-document edit through ragft run <= {EDIT_TARGET_S:.0f} s": (
            largest["ragft_run"]["edit"] <= EDIT_TARGET_S
        ),
    }
    if "daemon_edit" in largest:
        checks[f"one-document edit through the daemon, tick to index <= {EDIT_TARGET_S:.0f} s"] = (
            largest["daemon_edit"]["tick_to_index"] <= EDIT_TARGET_S
        )
    if not args.no_daemon:
        checks[f"daemon backfill overhead <= {OVERHEAD_TARGET_MS:.0f} ms a document"] = (
            largest["daemon_overhead_ms"] <= OVERHEAD_TARGET_MS
        )
    return finish(figures, checks, args.json)


def dagster_floor(n: int = 200, fast_storage: bool = True, our_metadata: bool = True) -> float:
    """Milliseconds a document costs Dagster alone: two partitioned assets whose bodies do
    nothing but record per-partition metadata, ``n`` partitions in one range run, on a local
    (SQLite) instance. What ``ragft run`` spends per document beyond this is ours.

    ``fast_storage``: dagster-fast.yaml's storage (a batch of events in one transaction, Dagster's
    event batching on); otherwise dagster.yaml's, Dagster's default storage, unbatched.
    ``our_metadata``: metadata added as our assets add it (``add_partition_metadata``); otherwise
    one ``context.add_asset_metadata(..., partition_key=)`` per document."""
    import dagster as dg

    from ragft_dagster.assets.partitions import add_partition_metadata

    # The body below has no annotations: under `from __future__ import annotations` Dagster
    # cannot resolve a locally imported `dg.AssetExecutionContext`.
    parts = dg.DynamicPartitionsDefinition(name="floor")

    def make(name: str) -> Any:
        @dg.asset(name=name, partitions_def=parts, backfill_policy=dg.BackfillPolicy.multi_run(n))
        def nothing(context):  # type: ignore[no-untyped-def]  # (string annotations: see above)
            metadata = {key: {"content_sha256": "0" * 64} for key in context.partition_keys}
            if our_metadata:
                add_partition_metadata(context, metadata)
            else:
                for key, value in metadata.items():
                    context.add_asset_metadata(value, partition_key=key)
            return dg.MaterializeResult()

        return nothing

    first, second = make("first"), make("second")
    job = dg.define_asset_job("floor_job", selection=[first, second])
    defs = dg.Definitions(assets=[first, second], jobs=[job])
    saved = os.environ.pop(BATCH_SIZE_ENV, None)  # Dagster's defaults: no event batching
    with tempfile.TemporaryDirectory(prefix="ragft-floor-") as home:
        instance_yaml(FAST_INSTANCE if fast_storage else DEFAULT_INSTANCE, Path(home))
        with dg.DagsterInstance.local_temp(home) as instance:
            storage = type(instance.event_log_storage).__name__
            if (storage == "BatchingSqliteEventLogStorage") != fast_storage:
                raise RuntimeError(f"the floor's instance has {storage}")
            keys = [f"d{i}" for i in range(n)]
            instance.add_dynamic_partitions("floor", keys)
            t0 = time.perf_counter()
            defs.resolve_job_def("floor_job").execute_in_process(
                instance=instance,
                tags=batch_tags(keys),
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            seconds = time.perf_counter() - t0
            done = instance.get_materialized_partitions(dg.AssetKey("second"))
    os.environ.pop(BATCH_SIZE_ENV, None)  # (set by the batching storage)
    if saved is not None:
        os.environ[BATCH_SIZE_ENV] = saved
    if len(done) != n:
        raise RuntimeError(f"{len(done)} of {n} partitions materialized")
    return 1000 * seconds / n


def _step_seconds(instance: Any, run_id: str, step_key: str) -> float:
    """Seconds from a step's start to its end in one run's event log."""
    import dagster as dg

    times = {
        record.dagster_event.event_type: record.timestamp
        for record in instance.all_logs(run_id)
        if record.dagster_event is not None and record.dagster_event.step_key == step_key
    }
    return times[dg.DagsterEventType.STEP_SUCCESS] - times[dg.DagsterEventType.STEP_START]


def _generation_seconds(instance: Any, run_id: str) -> float:
    """The ``generation_seconds`` that one run's ``synthetic_qa`` batch recorded."""
    import dagster as dg

    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.asset_materialization
        if materialization is not None and materialization.asset_key == dg.AssetKey("synthetic_qa"):
            return float(materialization.metadata["generation_seconds"].value)
    raise KeyError(f"run {run_id} recorded no synthetic_qa materialization")


def _line(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares wall time = intercept + slope x documents."""
    n = len(xs)
    if n < 2:
        return {"slope_s_per_doc": float("nan"), "intercept_s": float("nan")}
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return {"slope_s_per_doc": slope, "intercept_s": my - slope * mx}


def _print(figures: dict[str, Any]) -> None:
    print(f"\ninstance: {figures['instance']}")
    print(
        "| documents | chunks | direct work | ragft run | overhead / doc | second run "
        "| one edit | daemon backfill | runs | overhead / doc |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in figures["sizes"]:
        d, run = r["direct"], r["ragft_run"]
        daemon = r.get("daemon")
        tail = (
            f"{daemon['backfill']:.1f} s | {daemon['runs']} | {r['daemon_overhead_ms']:.0f} ms |"
            if daemon
            else "- | - | - |"
        )
        print(
            f"| {r['documents']} | {r['chunks']} | {d['all']:.1f} s | {run['full']:.1f} s | "
            f"{r['ragft_run_overhead_ms']:.0f} ms | {run['second']:.1f} s | {run['edit']:.1f} s | "
            + tail
        )
    for r in figures["sizes"]:
        if "sensor" in r:
            t = r["sensor"]
            print(
                f"docs sensor at {r['documents']} files: first tick {t['first']:.2f} s, "
                f"unchanged {t['unchanged']:.2f} s, after one edit {t['after_edit']:.2f} s"
            )
    for r in figures["sizes"]:
        for key, what in (
            ("daemon_edit", "one edit through the daemon"),
            ("daemon_first_edit", "the daemon's first run (a warm launcher's worker starting)"),
        ):
            if key in r:
                e = r[key]
                print(
                    f"{what} at {r['documents']} documents: "
                    f"{e['tick_to_index']:.1f} s from the docs sensor's tick to vector_index "
                    f"(tick to run {e['tick_to_created']:.1f} s, queued to started "
                    f"{e['created_to_started']:.1f} s, started to index "
                    f"{e['started_to_index']:.1f} s)"
                )
    fit = figures["ragft_run_fit"]
    print(
        f"\nragft run wall time ~ {fit['intercept_s']:.1f} s + "
        f"{1000 * fit['slope_s_per_doc']:.0f} ms x documents"
    )
    if "daemon_fit" in figures:
        fit = figures["daemon_fit"]
        print(
            f"daemon backfill wall time ~ {fit['intercept_s']:.1f} s + "
            f"{1000 * fit['slope_s_per_doc']:.0f} ms x documents"
        )
    llm = figures["llm"]
    print(
        f"LLM Q&A: {llm['requests']} requests for {llm['documents']} documents in "
        f"{llm['seconds']:.1f} s; ideal {llm['ideal_seconds']:.1f} s; ratio {llm['ratio']:.2f}; "
        f"at most {llm['max_in_flight']} in flight; the whole synthetic_qa step (with "
        f"Dagster's per-document events) {llm['step_seconds']:.1f} s, {llm['step_ratio']:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
