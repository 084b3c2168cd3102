"""``ragft run``: bring every asset up to date through Dagster, stage by stage.

What runs and in what order comes from the asset graph alone (:mod:`.stages`): each stage's
partitions come from its own partitions definition, and an asset (partition) is stale when it
was never materialized, its code version changed, its document's content changed, or an
upstream asset ran in this invocation. Every run is an ordinary Dagster run in the instance
(see it with ``make ui``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import DagsterInvalidConfigError

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.assets.partitions import DOCUMENTS
from ragft_dagster.config.profile import Profile
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.data.documents import purge_document_files
from ragft_dagster.definitions import definitions_for, load_inputs
from ragft_dagster.orchestration.automation import (
    document_changes,
    latest_materialization_record,
    latest_records_by_partition,
    plan_changes,
)
from ragft_dagster.orchestration.batches import batch_tags, contiguous_batches
from ragft_dagster.orchestration.stages import Stage, plan_stages

CODE_VERSION_TAG = "dagster/code_version"
REPLAN = "replan"


@dataclass
class StepResult:
    """One run of ``ragft run``: which job (partitions), how long, what its assets reported."""

    job: str
    partitions: list[str]
    seconds: float
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each asset's metadata (of its last partition, in a run of several)."""
    materializations: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    """(asset, partition, metadata) of every materialization of the run."""
    checks: dict[str, bool] = field(default_factory=dict)
    run_id: str = ""

    @property
    def partition(self) -> str | None:
        """The run's partition, or its first..last range; None when unpartitioned."""
        if not self.partitions:
            return None
        if len(self.partitions) == 1:
            return self.partitions[0]
        return f"{self.partitions[0]}..{self.partitions[-1]}"


@dataclass
class PipelineResult:
    success: bool
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.success

    def total(self, asset: str, key: str) -> float:
        """Sum of one numeric metadata entry over every materialization of this invocation."""
        return sum(
            float(meta.get(key, 0) or 0)
            for step in self.steps
            for name, _, meta in step.materializations
            if name == asset
        )

    def seconds_of(self, *jobs: str) -> float:
        return sum(step.seconds for step in self.steps if step.job in jobs)


class PipelineInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped ``ragft run`` (its line is printed already); what finished
    is kept and the next ``ragft run`` continues from there."""


_INTERRUPTS = re.compile(r"\b(?:DagsterExecutionInterruptedError|KeyboardInterrupt)\b")


def _was_interrupted(events: Sequence[Any]) -> bool:
    """Whether a step, or the run before any step (an interrupt while Dagster initialises the
    resources fails the run as a whole), stopped on an interrupt."""
    return any(_INTERRUPTS.search(m) for m in _failure_messages(events))


def _failure_messages(events: Sequence[Any]) -> list[str]:
    """What failed in a run: each failed step's error, else the run's own failure (a run that
    failed before any step, e.g. a resource that could not start). Only STEP_FAILURE events
    carry step_failure_data (Dagster raises on any other event)."""
    steps = [
        _readable(e.step_failure_data.error.message)
        for e in events
        if e.is_step_failure and e.step_failure_data.error
    ]
    if steps:
        return steps
    # the run's own failure event (its serialized type value is still "PIPELINE_FAILURE")
    runs = [e for e in events if e.event_type == dg.DagsterEventType.RUN_FAILURE]
    out = []
    for e in runs:
        error = getattr(e.event_specific_data, "error", None)
        out.append(_readable(error.message) if error else (e.message or "the run failed"))
    return out


_CHECK_FAILED = re.compile(r"^(?:\w+\.)*DagsterAssetCheckFailedError: ")
"""How a blocking check's failure starts: the error's class, by its (module-qualified) name."""


def _readable(message: str) -> str:
    """A failure's message for the console; a blocking check's failure reads as one line (the
    check's own reasons follow as a CHECK FAILED line)."""
    message = message.strip()
    if (prefix := _CHECK_FAILED.match(message)) is not None:
        return " ".join(message[prefix.end() :].split())
    return message


def _echo_failed_checks(checks: Sequence[Any], echo: Callable[[str], Any]) -> None:
    for check in checks:
        if not check.passed:
            why = f" ({check.description})" if check.description else ""
            echo(f"CHECK FAILED {check.asset_key.to_user_string()}: {check.check_name}{why}")


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


@contextmanager
def _terminal_interrupts_spare_log_watchers() -> Iterator[None]:
    """Ctrl-C at a terminal sends SIGINT to its whole foreground process group. Each run
    captures its stdout and stderr through a ``tail`` and a Python watcher (Dagster's
    ``watch_orphans.py``, which kills the tail if this process dies): the watcher, asleep in
    ``time.sleep``, died of that SIGINT with a KeyboardInterrupt traceback on the terminal, two
    per run, below the one INTERRUPTED line.

    So while a job runs, SIGINT is blocked in this (the main) thread, and every process started
    from it inherits the blocked signal: the watcher and the tail sleep through the terminal's
    Ctrl-C, Dagster still stops them when the run ends, and the watcher still kills the tail if
    this process is killed. A helper thread waits for the SIGINT (``sigwait``) and hands it to
    this thread as a SIGUSR2 whose handler calls whatever handles SIGINT here at that moment
    (Python's KeyboardInterrupt, or Dagster's own while it runs a step): a signal sent to this
    thread still breaks a blocking call (a sleep, a slow HTTP request), as Ctrl-C did. Only POSIX
    signal masks, no Dagster internals; without them (Windows), or off the main thread,
    nothing changes.
    """
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or (
        threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    main = threading.get_ident()
    done = False

    def as_sigint(_signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        elif handler == signal.SIG_DFL:
            raise KeyboardInterrupt

    def receive() -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            if done:
                return
            signal.pthread_kill(main, signal.SIGUSR2)

    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handled = signal.signal(signal.SIGUSR2, as_sigint)
    receiver = threading.Thread(target=receive, name="ragft-sigint", daemon=True)
    receiver.start()  # inherits the mask: SIGINT reaches it only through sigwait
    try:
        yield
    finally:
        done = True
        if receiver.ident is not None:
            signal.pthread_kill(receiver.ident, signal.SIGINT)  # wakes it to stop
        receiver.join(timeout=5)
        signal.signal(signal.SIGUSR2, handled)
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _execute_releasing_memory(job: Any, **kwargs: Any) -> Any:
    try:
        with _terminal_interrupts_spare_log_watchers():
            return job.execute_in_process(**kwargs)
    finally:
        _release_freed_memory()


OWNER_TAG = "ragft/owner"
"""On runs ``ragft run`` executes in its own process: ``host:pid:start time``, so another
``ragft run`` can tell a run in progress from one whose process was killed (Dagster leaves an
in-process run STARTED when its process dies)."""

_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _owner(pid: int | None = None) -> str:
    import socket

    import psutil

    proc = psutil.Process(pid)
    return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.3f}"


def _owner_alive(tag: str) -> bool:
    """Whether the ``ragft run`` process named by an :data:`OWNER_TAG` is still running (a
    process of another host is taken to be)."""
    import socket

    import psutil

    host, _, rest = tag.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        return _owner(int(pid)) == tag
    except (psutil.Error, ValueError):
        return False


def run_assets(run: Any, job_assets: Mapping[str, Collection[str]]) -> set[str]:
    """The assets a run builds: its asset selection, or (a whole job launched from the UI, a
    schedule or a sensor carries none) its job's assets."""
    if run.asset_selection:
        return {k.to_user_string() for k in run.asset_selection}
    return set(job_assets.get(run.job_name, ()))


def overlapping_runs(
    instance: dg.DagsterInstance,
    assets: Sequence[str],
    partitions: Sequence[str],
    job_assets: Mapping[str, Collection[str]] | None = None,
) -> list[Any]:
    """Runs in progress on ``instance`` that build one of ``assets`` (in one of ``partitions``,
    when both runs name theirs), but for ``ragft run`` runs whose process is gone.
    ``job_assets``: each job's assets, for runs of a whole job."""
    out = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=_IN_FLIGHT)):
        run = record.dagster_run
        if not run_assets(run, job_assets or {}) & set(assets):
            continue
        theirs = run.tags.get("dagster/partition")
        if theirs is not None and partitions and theirs not in partitions:
            continue
        owner = run.tags.get(OWNER_TAG)
        if owner is not None and not _owner_alive(owner):
            continue
        out.append(run)
    return out


def _wait_for_overlapping_runs(
    instance: dg.DagsterInstance,
    assets: Sequence[str],
    partitions: Sequence[str],
    label: str,
    echo: Callable[[str], Any],
    job_assets: Mapping[str, Collection[str]] | None = None,
    every: float = 2.0,
) -> bool:
    """One run at a time per asset: wait (saying so once per run waited for) while another
    run on this instance builds what this one would. Ctrl-C stops the wait like any other.
    Returns whether it waited."""
    said: set[str] = set()
    while True:
        runs = overlapping_runs(instance, assets, partitions, job_assets)
        if not runs:
            return bool(said)
        for run in runs:
            if run.run_id not in said:
                said.add(run.run_id)
                building = sorted(run_assets(run, job_assets or {}) & set(assets))
                echo(
                    f"waiting for run {run.run_id} ({run.job_name}, {run.status.value}) that is "
                    f"building {', '.join(building) or 'the same assets'}; {label} starts when "
                    "it ends (Ctrl-C to stop waiting)"
                )
        time.sleep(every)


RECENT_RUNS = 200
"""How many of the instance's newest runs are read for another live ``ragft run``'s."""


def other_ragft_runs(
    instance: dg.DagsterInstance,
    assets: Sequence[str],
    job_assets: Mapping[str, Collection[str]] | None = None,
) -> list[Any]:
    """Recent runs (any status, newest first) that build one of ``assets`` in any partition
    and were started by another ``ragft run`` process of this host that is still running and
    started before this one.

    Between two of its runs such a process has no run in progress, yet it is about to build
    more of the same assets: a second ``ragft run`` that only looked at runs in progress would
    slip in there and build the next partition at the same time. Only an older process is
    waited for, so that two processes that started their first runs at the same moment cannot
    wait for each other forever (the older one waits only for the younger one's run in
    progress, :func:`overlapping_runs`). A process of another host cannot be seen to end:
    only its runs in progress are waited for."""
    me = _owner()
    host = me.split(":", 1)[0]
    alive: dict[str, bool] = {}
    out = []
    for record in instance.get_run_records(limit=RECENT_RUNS):
        run = record.dagster_run
        owner = run.tags.get(OWNER_TAG)
        if owner is None or owner == me or owner.split(":", 1)[0] != host:
            continue
        if not _started_before(owner, me) or not run_assets(run, job_assets or {}) & set(assets):
            continue
        if owner not in alive:
            alive[owner] = _owner_alive(owner)
        if alive[owner]:
            out.append(run)
    return out


def _started_before(owner: str, other: str) -> bool:
    """Whether the process of one :data:`OWNER_TAG` started before that of another (start
    time, then pid)."""

    def order(tag: str) -> tuple[float, int]:
        _, pid, started = tag.split(":")
        return float(started), int(pid)

    try:
        return order(owner) < order(other)
    except ValueError:  # not a tag of ours
        return False


def _wait_for_other_runs(
    instance: dg.DagsterInstance,
    assets: Sequence[str],
    partitions: Sequence[str],
    label: str,
    echo: Callable[[str], Any],
    job_assets: Mapping[str, Collection[str]],
    every: float = 2.0,
) -> bool:
    """Wait while another ``ragft run`` is working on these assets (until that process ends)
    or another run (the UI's, a sensor's, a schedule's) is building them (until that run
    ends), saying so in one line. Returns whether it waited: what is stale must then be
    planned again, since the other process may have built it."""
    others = other_ragft_runs(instance, assets, job_assets)
    if not others:
        return _wait_for_overlapping_runs(
            instance, assets, partitions, label, echo, job_assets, every
        )
    run = others[0]
    owners = {r.tags[OWNER_TAG] for r in others}
    pids = ", ".join(sorted(owner.split(":")[1] for owner in owners))
    building = sorted(run_assets(run, job_assets) & set(assets))
    echo(
        f"waiting for run {run.run_id} ({run.job_name}, {run.status.value}) that is building "
        f"{', '.join(building)}: another `ragft run` (pid {pids}) is working on this instance; "
        f"{label} is planned again when it ends (Ctrl-C to stop waiting)"
    )
    while any(_owner_alive(owner) for owner in owners):
        time.sleep(every)
    return True


def _run_warnings(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """What the run's own code logged at WARNING or above (``context.log.warning``), one line
    each, without Dagster's event log lines."""
    import logging

    out = []
    for entry in instance.all_logs(run_id):
        level = entry.level if isinstance(entry.level, int) else logging.getLevelName(entry.level)
        if entry.is_dagster_event or not isinstance(level, int) or level < logging.WARNING:
            continue
        out.append(" ".join(str(entry.user_message).split()))
    return out


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


def stage_partitions(stage: Stage, instance: dg.DagsterInstance) -> list[str | None]:
    """The partition keys of a stage, from its own partitions definition; ``[None]`` when it
    is unpartitioned."""
    if stage.partitions_def is None:
        return [None]
    return list(stage.partitions_def.get_partition_keys(dynamic_partitions_store=instance))


class _InterruptedWhileClosing(logging.Filter):
    """Drops SQLAlchemy's "Exception closing connection" record when its exception is the
    interrupt itself: Ctrl-C or SIGTERM that lands while the instance's pool closes a SQLite
    connection raises there (Dagster turns the signal into DagsterExecutionInterruptedError),
    and SQLAlchemy logs it with a traceback. The connection is discarded either way; the one
    INTERRUPTED line says what was kept. Any other failure to close is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, KeyboardInterrupt | dg.DagsterExecutionInterruptedError)


def _quiet_interrupted_connection_closes() -> None:
    # A logger's filters see only its own records: each pool class logs under its own name
    # (sqlalchemy.pool.impl.NullPool, the one Dagster's SQLite storage uses, ...).
    from sqlalchemy.pool import impl

    names = [f"sqlalchemy.pool.impl.{c}" for c in dir(impl) if c.endswith("Pool")]
    for name in ["sqlalchemy.pool", "sqlalchemy.pool.base", *names]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _InterruptedWhileClosing) for f in logger.filters):
            logger.addFilter(_InterruptedWhileClosing())


def run_pipeline(
    recipe_path: str | None,
    profile_path: str | None,
    instance: Any = None,
    artifact_root: Path | None = None,
    echo: Callable[[str], Any] = print,
    full: bool = False,
    jobs: set[str] | None = None,
) -> PipelineResult:
    """Bring every asset up to date, stage by stage in graph order, recording runs in
    ``instance``.

    Incremental unless ``full``: an asset partition runs when it was never materialized or its
    code version changed, when it is a document whose file is new or changed (content hash),
    or when an upstream asset ran in this invocation (in any partition, or in the same
    partition when both share a partitions definition). Removed documents lose their partition
    and files first, and count as a change of the document assets. ``jobs`` limits the run to
    some stages (``<group>_job``; the benchmark runs only the data and index stages).

    One ``ragft run`` at a time per instance on a host: a second one waits (saying so) until
    the first ends, then plans from what the first built.

    Returns:
        What ran and what it reported; truthy when every run succeeded.
    """
    recipe, profile = load_inputs(recipe_path, profile_path)  # a bad recipe fails at once
    instance = instance or dg.DagsterInstance.get()
    with one_ragft_run_at_a_time(Path(instance.root_directory), echo):
        return _run_pipeline(recipe, profile, instance, artifact_root, echo, full, jobs)


RUN_LOCK = "ragft-run.lock"
"""In the instance's folder (DAGSTER_HOME): held by the ``ragft run`` working on it; holds its
pid."""


@contextmanager
def one_ragft_run_at_a_time(home: Path, echo: Callable[[str], Any]) -> Iterator[None]:
    """Hold :data:`RUN_LOCK` (``flock``) for a whole ``ragft run``; wait for it, saying so in
    one line, while another process of this host holds it.

    Two ``ragft run`` started within a second both found no run of the other in progress and
    started the same first job; the lock orders them before either plans. It is released when
    the process ends, however it ends (kill -9 included). Where the filesystem refuses locks
    (some network mounts) runs go ahead unlocked, ordered only by the runs in progress that
    each waits for (:func:`_wait_for_other_runs`), as are processes of other hosts.

    Raises:
        PipelineInterrupted: Ctrl-C or SIGTERM while waiting; nothing of this run started.
    """
    import errno
    import fcntl
    import os

    home.mkdir(parents=True, exist_ok=True)
    with open(home / RUN_LOCK, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as exc:
            locked = False
            if exc.errno not in (errno.EAGAIN, errno.EACCES):  # no locks here: go ahead
                yield
                return
        if not locked:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            echo(
                f"waiting for another `ragft run` (pid {holder}) that is working on this instance "
                f"({home}); this one plans when it ends (Ctrl-C to stop waiting)"
            )
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except KeyboardInterrupt:
                echo("INTERRUPTED while waiting for the other `ragft run`; nothing of this one ran")
                raise PipelineInterrupted() from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.seek(0)
            lock.truncate()
            lock.flush()


def _run_pipeline(
    recipe: Recipe,
    profile: Profile,
    instance: Any,
    artifact_root: Path | None,
    echo: Callable[[str], Any],
    full: bool,
    jobs: set[str] | None,
) -> PipelineResult:
    """:func:`run_pipeline` once it holds the instance's :data:`RUN_LOCK`."""
    defs = definitions_for(recipe, profile, artifact_root)
    _quiet_interrupted_connection_closes()
    layout = ArtifactLayout(artifact_root or profile.artifact_root)
    scan, changes = document_changes(instance, recipe, layout.docs_scan)
    current = scan.documents
    if not current:
        raise SystemExit(f"no documents matching {recipe.docs.glob!r} in {recipe.docs_dir}")
    if changes.added:
        instance.add_dynamic_partitions(DOCUMENTS, changes.added)
    for key in changes.removed:
        instance.delete_dynamic_partition(DOCUMENTS, key)
    purge_document_files(layout.document_files, changes.removed)
    echo(f"recipe {recipe.name}: {len(current)} documents ({changes.summary()})")
    for warning in changes.warnings(recipe.docs_dir):
        echo(f"  skipped {warning}")
    excluded = scan.excluded_line(recipe.docs_dir)
    if excluded:
        echo(f"  {excluded}")

    batch_size = recipe.docs.batch_size
    graph = defs.resolve_asset_graph()
    stages = plan_stages(graph)
    node = {name: graph.get(dg.AssetKey(name)) for stage in stages for name in stage.assets}
    parents = {
        name: [p.to_user_string() for p in n.parent_keys if p.to_user_string() in node]
        for name, n in node.items()
    }
    # What ran in this invocation: asset -> partitions (None when unpartitioned).
    ran: dict[str, set[str | None]] = {}
    for name, n in node.items():
        by_documents = getattr(n.partitions_def, "name", None) == DOCUMENTS
        if by_documents and changes.removed:
            ran[name] = set(changes.removed)

    # asset -> partition -> the event record of its latest materialization (read in bulk,
    # once per asset and plan)
    latest: dict[str, dict[str | None, Any]] = {}

    def records(name: str) -> dict[str | None, Any]:
        if name not in latest:
            if node[name].partitions_def is None:
                latest[name] = {None: latest_materialization_record(instance, name)}
            else:
                by_key = latest_records_by_partition(instance, name)
                latest[name] = {key: record for key, record in by_key.items()}
        return latest[name]

    def is_current(name: str, partition: str | None) -> bool:
        """Materialized with the current code version."""
        record = records(name).get(partition)
        mat = record.asset_materialization if record is not None else None
        return mat is not None and mat.tags.get(CODE_VERSION_TAG) == node[name].code_version

    def parent_is_newer(parent: str, name: str, partition: str | None) -> bool:
        """The parent was materialized after this asset (partition): a run that stopped
        between the two (Ctrl-C, a failure, a kill), another process, or the UI built the
        parent and not this one yet. Event storage ids grow with every event."""
        mine = records(name)[partition].storage_id
        if node[parent].partitions_def == node[name].partitions_def:
            theirs = [records(parent).get(partition)]
        else:
            theirs = list(records(parent).values())
        return any(r is not None and r.storage_id > mine for r in theirs)

    blocking = {
        key.asset_key.to_user_string()
        for key in graph.asset_check_keys
        if graph.get_check_spec(key).blocking
    }

    def failed_blocking_check(name: str, partition: str | None) -> bool:
        """A blocking check of the asset failed in the run of its latest materialization, so
        its dependents were not built from it: run it again (its check says why, again)
        rather than build them from data the check refused."""
        if name not in blocking:
            return False
        record = records(name)[partition]
        of_type = dg.DagsterEventType.ASSET_CHECK_EVALUATION
        for entry in instance.all_logs(record.run_id, of_type=of_type):
            check = entry.dagster_event.event_specific_data
            if check.asset_key == node[name].key and check.blocking and not check.passed:
                return True
        return False

    def stale(name: str, partition: str | None, in_run: set[str]) -> bool:
        n = node[name]
        if full or not is_current(name, partition) or failed_blocking_check(name, partition):
            return True
        if getattr(n.partitions_def, "name", None) == DOCUMENTS and partition in changes.to_run:
            return True
        for parent in parents[name]:
            if parent in in_run:
                return True
            done = ran.get(parent)
            if done and (node[parent].partitions_def != n.partitions_def or partition in done):
                return True
            if parent_is_newer(parent, name, partition):
                return True
        return False

    job_assets = {stage.job: stage.assets for stage in stages}
    result = PipelineResult(success=True)
    started = time.monotonic()

    def run(stage: Stage, partitions: list[str | None], assets: list[str]) -> bool | str:
        t0 = time.monotonic()
        job = defs.resolve_job_def(stage.job)
        keys = [p for p in partitions if p is not None]
        step = StepResult(stage.job, keys, 0.0)
        label = stage.job + (f" [{step.partition}]" if keys else "")
        if len(keys) > 1:
            label += f" ({len(keys)} documents)"

        def interrupted(run_id: str | None, kept: int) -> PipelineInterrupted:
            what = f"run {run_id}" if run_id else "it"
            echo(
                f"INTERRUPTED {label}: stopped; {what} kept {kept} finished asset "
                "materialization(s) and every job before it (training resumes from its last "
                "checkpoint); `ragft run` continues from here"
            )
            result.success = False
            return PipelineInterrupted(label)

        if _wait_for_other_runs(instance, assets, keys, label, echo, job_assets):
            return REPLAN
        try:
            outcome = _execute_releasing_memory(
                job,
                instance=instance,
                # several documents: one run over their partition range, as a backfill runs it
                partition_key=keys[0] if len(keys) == 1 else None,
                tags={**(batch_tags(keys) if len(keys) > 1 else {}), OWNER_TAG: _owner()},
                asset_selection=[dg.AssetKey(a) for a in assets],
                raise_on_error=False,
                # Step events stay in the instance (see them with `make ui`); the console gets
                # one line per run, its warnings after it and its failures as FAILED lines (not
                # Dagster's own log of them, which carries the whole stack).
                run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            )
        except KeyboardInterrupt:  # before Dagster's own handling of the interrupt began
            raise interrupted(None, 0) from None
        except DagsterInvalidConfigError as exc:
            # The run could not start (e.g. an EnvVar that is not set): no run id exists.
            for message in _config_error_messages(exc):
                echo(f"FAILED {label}: {message}")
            echo(f"{label} could not start; nothing of it ran")
            result.success = False
            return False
        checks = outcome.get_asset_check_evaluations()
        for warning in _run_warnings(instance, outcome.run_id):
            echo(f"  {label}: {warning}")
        if not outcome.success and _was_interrupted(outcome.all_events):
            raise interrupted(outcome.run_id, len(outcome.get_asset_materialization_events()))
        if not outcome.success:
            for message in _failure_messages(outcome.all_events):
                echo(f"FAILED {label}: {message}")
            _echo_failed_checks(checks, echo)
            echo(f"run {outcome.run_id} failed; see it with `make ui`")
            result.success = False
            return False
        step.seconds, step.run_id = time.monotonic() - t0, outcome.run_id
        for event in outcome.get_asset_materialization_events():
            mat = event.step_materialization_data.materialization
            meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
            step.metadata[mat.asset_key.to_user_string()] = meta
            step.materializations.append((mat.asset_key.to_user_string(), mat.partition, meta))
        step.checks.update({c.check_name: c.passed for c in checks})
        _echo_failed_checks(checks, echo)
        result.steps.append(step)
        echo(f"ok  {label:<40} {step.seconds:6.1f}s")
        return True

    def plan_and_run() -> bool | str:
        """Each stage's stale partitions, run in graph order: True when all ran, False when
        a run failed, REPLAN when this process waited for another that may have built some."""
        for stage in stages:
            if jobs is not None and stage.job not in jobs:
                continue
            order = stage_partitions(stage, instance)
            selected: dict[str | None, set[str]] = {}
            for partition in order:
                chosen: set[str] = set()
                for name in stage.assets:  # topological: a stale asset makes its dependents stale
                    if stale(name, partition, chosen):
                        chosen.add(name)
                if chosen:
                    selected[partition] = chosen
            if getattr(stage.partitions_def, "name", None) == DOCUMENTS:
                keys = [p for p in order if p is not None]
                wanted = [p for p in selected if p is not None]
                batches: list[list[str | None]] = [
                    list(b) for b in contiguous_batches(keys, wanted, batch_size)
                ]
            else:
                batches = [[p] for p in order if p in selected]
            for batch in batches:
                chosen = set().union(*(selected.get(p, set()) for p in batch))
                outcome = run(stage, batch, [a for a in stage.assets if a in chosen])
                if outcome is not True:
                    return outcome
                for name in chosen:
                    ran.setdefault(name, set()).update(batch)
        return True

    while (outcome := plan_and_run()) == REPLAN:
        latest.clear()  # what the other process built since
        changes = plan_changes(instance, scan)
    if not outcome:
        return result
    result.seconds = time.monotonic() - started
    if not result.steps:
        echo("everything is up to date (`ragft run --full` re-runs it all)")
    echo(f"pipeline finished in {result.seconds:.1f}s")
    report = layout.report / "report.md"
    if report.is_file() and "mcq_report" in ran:
        echo(report.read_text())
    return result
