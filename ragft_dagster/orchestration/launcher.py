"""A run launcher whose runs start with their heavy modules already imported (opt-in, Linux).

Dagster's ``DefaultRunLauncher`` asks the code server to start each run, and the code server
spawns a fresh interpreter for it: every run imports dagster, torch, transformers and llama-index
again before its first step (seven of the ten seconds a one-document edit took from the docs
sensor's tick to the updated index). :class:`WarmRunLauncher` keeps one process that imported
them once (``run_worker.py``) and forks each run from it; the forked process runs the run exactly
as ``dagster api execute_run`` does, loading the code location's definitions from disk.

Runs it cannot start that way go to Dagster's ``DefaultRunLauncher`` unchanged, with an engine
event saying why: on any platform but Linux (forking a process that imported torch is not safe
on macOS, and the worker reads ``/proc``), a code location served from another host (a
``grpc_server`` workspace entry whose code may live elsewhere), a location on another Python
interpreter, or a worker that failed to start.

It reaches into Dagster internals (``dagster._core.launcher``, ``dagster._grpc``, the CLI's
``execute_run`` command), so it is opt-in: ``dagster-fast.yaml`` and ``deploy/dagster-fast.yaml``
select it, ``dagster.yaml`` and ``deploy/dagster.yaml`` do not (docs/instance.md)::

    run_launcher:
      module: ragft_dagster.orchestration.launcher
      class: WarmRunLauncher
      config:
        preload: [torch, transformers, ...]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from signal import SIGTERM
from typing import Any

import dagster as dg
import psutil
from dagster._core.launcher import (
    CheckRunHealthResult,
    DefaultRunLauncher,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

WORKER_TAG = "ragft/run_worker"
"""Run tag: {"host", "pid", "start"} of the forked process that runs the run."""

READY_TIMEOUT_S = 300.0
"""How long the warm worker may take to import its modules (a cold disk, a large torch)."""

REPLY_TIMEOUT_S = 30.0

WATCH_INTERVAL_S = 2.0
"""How often the launcher looks whether the processes of its unfinished runs are still there."""

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})

RETRY_AFTER_S = 300.0
"""After the warm worker failed to start, runs go to the default launcher this long before the
worker is tried again (not every run waiting for a start that fails)."""


class WorkerUnavailable(Exception):
    """The warm worker could not start a run; the run goes to the default launcher."""


class RunHandedOver(Exception):
    """The request to start a run reached the warm worker, but no answer came back: the run may
    be running, so it must not be started a second time."""


def _start_time(pid: int) -> str | None:
    """The process's start time (psutil's ``create_time``, seconds since the epoch); tells a
    run's process from a later process that got its pid."""
    try:
        return f"{psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return None


def _alive(pid: int, start: str | None) -> bool:
    """The run's process still runs: it exists, is not a zombie (exited, not yet reaped, as
    when the daemon is PID 1 of a container without an init) and is the same process."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        # a tag written before start times came from psutil holds clock ticks (no ".")
        return start is None or "." not in start or f"{process.create_time():.3f}" == start
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's process of that pid: taken to be the run's


class _Worker:
    """The warm worker process and its socket."""

    def __init__(self, preload: Sequence[str]):
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ragft_dagster.orchestration.run_worker",
                    str(theirs.fileno()),
                    ",".join(preload),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise WorkerUnavailable(f"could not start the warm run worker ({exc})") from exc
        finally:
            theirs.close()
        self.socket = ours
        self._buffer = b""
        try:
            hello = self._receive(READY_TIMEOUT_S)
            if not hello.get("ready"):
                raise WorkerUnavailable(f"the warm run worker did not start: {hello}")
        except BaseException:
            self.close(timeout=1)
            raise
        self.pid: int = hello["pid"]
        self.failed: dict[str, str] = hello.get("failed", {})

    def _receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerUnavailable(
                    f"the warm run worker did not answer within {timeout:.0f} s"
                )
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                raise WorkerUnavailable(f"the warm run worker is gone ({exc})") from exc
            if not data:
                code = self.process.poll()
                raise WorkerUnavailable(f"the warm run worker exited (exit code {code})")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def fork(self, serialized_args: str) -> int:
        try:
            self.socket.sendall(json.dumps({"run": serialized_args}).encode() + b"\n")
        except OSError as exc:
            raise WorkerUnavailable(f"the warm run worker is gone ({exc})") from exc
        try:
            reply = self._receive(REPLY_TIMEOUT_S)
        except WorkerUnavailable as exc:
            raise RunHandedOver(str(exc)) from exc
        if "pid" not in reply:  # the worker answered: nothing was started
            raise WorkerUnavailable(f"the warm run worker could not fork: {reply.get('error')}")
        return int(reply["pid"])

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout: float = 10.0) -> None:
        """Close the socket: the worker exits; runs it forked go on."""
        self.socket.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Forks each run from a process that imported ``preload`` once; see the module doc."""

    def __init__(self, preload: Sequence[str] = (), inst_data: ConfigurableClassData | None = None):
        super().__init__()
        self.preload = list(preload)
        self._inst_data = inst_data
        self._fallback = DefaultRunLauncher()
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._run_ids: set[str] = set()
        self._failed_start: tuple[float, str] | None = None  # (when, why)
        # runs whose process this launcher forked and still watches: run id -> (pid, start)
        self._watched: dict[str, tuple[int, str | None]] = {}
        self._watch_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "preload": dg.Field(
                [str],
                is_required=False,
                default_value=[],
                description="Modules the warm worker imports once, before its first run.",
            )
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance: Any) -> None:
        super().register_instance(instance)
        self._fallback.register_instance(instance)

    # -- launching

    def _not_forkable(self, run: dg.DagsterRun) -> str | None:
        """Why the run cannot be forked from the warm worker; None if it can: on Linux, its
        code location is loaded on this host (started by this workspace, or a code server on
        this host, as ``dagster dev`` runs it) by the same Python interpreter as this
        launcher's."""
        from dagster._core.remote_origin import GrpcServerCodeLocationOrigin

        if not sys.platform.startswith("linux"):
            return (
                f"the warm run worker forks, which this launcher does on Linux only (this is "
                f"{sys.platform}); dagster.yaml uses Dagster's launcher from the start"
            )
        origin = run.job_code_origin
        if origin is None or run.remote_job_origin is None:
            return "the run has no code origin"
        location = run.remote_job_origin.repository_origin.code_location_origin
        if isinstance(location, GrpcServerCodeLocationOrigin):
            # a code server started by `dagster dev` (which sets DAGSTER_IS_DEV_CLI for its
            # daemon and webserver) runs with this process's environment and directory; one
            # started otherwise may have its own, or live on another host
            if not os.environ.get("DAGSTER_IS_DEV_CLI"):
                return (
                    f"code location {location.location_name!r} is served by a code server "
                    "this workspace did not start (its environment, or its host, may differ)"
                )
            if location.socket is None and location.host not in LOCAL_HOSTS:
                return (
                    f"code location {location.location_name!r} is served from host "
                    f"{location.host!r} (its code may not be on this host)"
                )
        executable = origin.repository_origin.executable_path
        if executable and os.path.abspath(executable) != os.path.abspath(sys.executable):
            return (
                f"code location {location.location_name!r} runs on {executable}, this launcher "
                f"on {sys.executable}"
            )
        return None

    def _start_worker(self) -> _Worker:
        if self._failed_start is not None:
            when, why = self._failed_start
            if time.monotonic() - when < RETRY_AFTER_S:
                raise WorkerUnavailable(why)
        try:
            worker = _Worker(self.preload)
        except WorkerUnavailable as exc:
            self._failed_start = (time.monotonic(), str(exc))
            raise
        self._failed_start = None
        return worker

    def _fork(self, serialized_args: str) -> tuple[int, _Worker]:
        with self._lock:
            for attempt in (1, 2):  # a worker that died since the last run is started again
                if self._worker is not None and not self._worker.alive():
                    self._worker.close(timeout=1)
                    self._worker = None
                if self._worker is None:
                    self._worker = self._start_worker()
                worker = self._worker
                try:
                    return worker.fork(serialized_args), worker
                except (WorkerUnavailable, RunHandedOver) as exc:
                    worker.close(timeout=1)
                    self._worker = None
                    if isinstance(exc, RunHandedOver) or attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        reason = self._not_forkable(run)
        if reason is None:
            args = ExecuteRunArgs(
                job_origin=run.job_code_origin,  # type: ignore[arg-type]  # checked above
                run_id=run.run_id,
                instance_ref=self._instance.get_ref(),
            )
            try:
                pid, worker = self._fork(serialize_value(args))
            except WorkerUnavailable as exc:
                reason = str(exc)
            except RunHandedOver as exc:
                self._instance.report_run_failed(
                    run,
                    message=(
                        f"The warm run worker took the run but did not say which process runs "
                        f"it ({exc}); the run is marked failed rather than started twice: "
                        "launch it again"
                    ),
                )
                return
            else:
                start = _start_time(pid)
                self._instance.add_run_tags(
                    run.run_id,
                    {
                        WORKER_TAG: json.dumps(
                            {"host": socket.gethostname(), "pid": pid, "start": start}
                        )
                    },
                )
                preloaded = [m for m in self.preload if m not in worker.failed]
                note = "".join(
                    f"; could not preload {name} ({error})" for name, error in worker.failed.items()
                )
                self._instance.report_engine_event(
                    f"Forked the run's process (pid {pid}) from the warm run worker (pid "
                    f"{worker.pid}, preloaded: {', '.join(preloaded) or 'nothing'}{note}).",
                    run,
                    cls=self.__class__,
                )
                with self._watch_lock:
                    self._run_ids.add(run.run_id)
                self._watch(run.run_id, pid, start)
                return
        self._instance.report_engine_event(
            f"Starting the run through Dagster's default launcher: {reason}.",
            run,
            cls=self.__class__,
        )
        self._fallback.launch_run(context)

    # -- the run's process afterwards

    def _watch(self, run_id: str, pid: int, start: str | None) -> None:
        """Dagster's code server reports a run whose process died; with a forked process, this
        launcher does: a run still unfinished when its process is gone is marked failed."""
        with self._watch_lock:
            self._watched[run_id] = (pid, start)
            if self._watcher is None:
                self._adopt()
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(
                    target=self._watch_loop, name="ragft-run-worker-watch", daemon=True
                )
                self._watcher.start()

    def _adopt(self) -> None:
        """Watch the unfinished runs that an earlier launcher on this host forked (the daemon
        restarted while they ran)."""
        here = socket.gethostname()
        unfinished = [
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
            dg.DagsterRunStatus.CANCELING,
        ]
        for run in self._instance.get_runs(filters=dg.RunsFilter(statuses=unfinished)):
            worker = self._worker_of(run)
            if worker is not None and worker["host"] == here:
                self._watched.setdefault(run.run_id, (worker["pid"], worker.get("start")))

    def _watch_loop(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            with self._watch_lock:
                watched = list(self._watched.items())
            for run_id, (pid, start) in watched:
                if _alive(pid, start):
                    continue
                with self._watch_lock:
                    self._watched.pop(run_id, None)
                try:
                    self._report_gone(run_id, pid)
                except Exception as exc:  # noqa: BLE001 - never end the watch over one run
                    print(f"ragft WarmRunLauncher: run {run_id}: {exc}", file=sys.stderr)

    def _report_gone(self, run_id: str, pid: int) -> None:
        if not self.has_instance:
            return
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:  # the process ended after the run: all is well
            return
        message = (
            f"The run's process (pid {pid}) ended before the run did: killed (out of memory?) "
            "or crashed; see the daemon's output for its last lines."
        )
        if run.status == dg.DagsterRunStatus.CANCELING:
            self._instance.report_run_canceled(run, message=message)
        else:
            self._instance.report_run_failed(run, message=message)

    @staticmethod
    def _worker_of(run: dg.DagsterRun) -> dict[str, Any] | None:
        raw = run.tags.get(WORKER_TAG)
        return json.loads(raw) if raw else None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        worker = self._worker_of(run)
        if worker is None:
            return self._fallback.terminate(run_id)
        if worker["host"] != socket.gethostname():
            self._instance.report_engine_event(
                f"Cannot stop the run's process from here: it runs on host {worker['host']}; "
                "terminate it from that host's UI or daemon.",
                run,
                cls=self.__class__,
            )
            return False
        pid = worker["pid"]
        self._instance.report_run_canceling(run)
        try:
            if not _alive(pid, worker.get("start")):
                raise ProcessLookupError(pid)
            os.kill(pid, SIGTERM)  # the run's process ends the run as canceled
        except ProcessLookupError:
            self._instance.report_run_canceled(
                run, message=f"The run's process (pid {pid}) was no longer running."
            )
        except PermissionError:
            self._instance.report_engine_event(
                f"Not allowed to stop the run's process (pid {pid}): it belongs to another user.",
                run,
                cls=self.__class__,
            )
            return False
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        # Dagster's run monitoring fails a run whose status is anything but RUNNING or SUCCESS:
        # a run this launcher cannot see counts as running (monitoring's own timeouts still hold)
        worker = self._worker_of(run)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not started by the warm worker")
        if worker["host"] != socket.gethostname():
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"runs on host {worker['host']}")
        if _alive(worker["pid"], worker.get("start")):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(worker["pid"]))
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"the run's process (pid {worker['pid']}) exited"
        )

    def join(self, timeout: int = 30) -> None:
        """Wait for the runs this launcher started (tests)."""
        if not self.has_instance:
            return
        deadline = time.monotonic() + timeout
        while True:
            with self._watch_lock:
                launched = list(self._run_ids)
            active = [
                run_id
                for run_id in launched
                if (found := self._instance.get_run_by_id(run_id)) and not found.is_finished
            ]
            if not active:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still going after {timeout} s: {active}")
            time.sleep(0.1)
        self._fallback.join(timeout)

    def dispose(self) -> None:
        self._stopping.set()
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None
        self._fallback.dispose()
