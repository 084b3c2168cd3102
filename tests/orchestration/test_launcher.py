"""The opt-in warm run launcher (dagster-fast.yaml's run_launcher): runs forked from a process
that imported the heavy modules once, loading the code location from disk each time,
cancellable, and started the default way when they cannot be forked (not Linux, another code
server, a worker whose imports left threads or touched CUDA)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.launcher import WorkerStatus
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from dagster._core.test_utils import create_run_for_test
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._record import copy

from ragft_dagster.orchestration import launcher as launcher_module
from ragft_dagster.orchestration.launcher import WORKER_TAG, WarmRunLauncher

ROOT = Path(__file__).resolve().parents[2]

# A code location of its own: one op that writes what its process saw and may then wait.
# "wave" (a stdlib module nothing else imports) is what the test's worker preloads, with numpy
# (whose OpenBLAS pool the worker keeps from starting until a run is forked).
PROBE = """
import json, os, sys, time
from pathlib import Path
import dagster as dg

VERSION = {version}
PRELOADED = "wave" in sys.modules
OUT = Path(__file__).parent / "out"


def blas_threads():
    import numpy, threadpoolctl
    return sorted(
        i["num_threads"] for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"
    )


@dg.op(config_schema={{"name": str, "wait": dg.Field(float, default_value=0.0)}})
def report(context):
    name, wait = context.op_config["name"], context.op_config["wait"]
    (OUT / f"{{name}}.json").write_text(json.dumps(
        {{"pid": os.getpid(), "ppid": os.getppid(), "version": VERSION, "preloaded": PRELOADED,
          "blas": blas_threads()}}
    ))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.05)


@dg.job(executor_def=dg.in_process_executor)
def probe():
    report()


defs = dg.Definitions(jobs=[probe])
"""


def _write_probe(where: Path, version: int) -> Path:
    (where / "out").mkdir(exist_ok=True)
    path = where / "probe_defs.py"
    path.write_text(PROBE.format(version=version))
    return path


@contextlib.contextmanager
def _workspace(tmp_path: Path, preload: list[str]) -> Iterator[tuple[Any, Any, Path]]:
    home = tmp_path / "home"
    home.mkdir()
    launcher = {
        "module": "ragft_dagster.orchestration.launcher",
        "class": "WarmRunLauncher",
        "config": {"preload": preload},
    }
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"run_launcher": launcher, "telemetry": {"enabled": False}})
    )
    code = tmp_path / "code"
    code.mkdir()
    probe = _write_probe(code, version=1)
    target = PythonFileTarget(
        python_file=str(probe), attribute=None, working_directory=str(code), location_name="probe"
    )
    with (
        dg.DagsterInstance.from_config(str(home)) as instance,
        WorkspaceProcessContext(instance, target) as process_context,
    ):
        yield instance, process_context, code


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[tuple[Any, Any, Path]]:
    with _workspace(tmp_path, ["wave", "numpy", "no_such_module_for_the_test"]) as opened:
        yield opened


def _launch(instance: dg.DagsterInstance, context: WorkspaceRequestContext, **config: Any) -> str:
    location = context.get_code_location("probe")
    job = location.get_repository("__repository__").get_full_job("probe")
    run_config = {"ops": {"report": {"config": config}}}
    plan = location.get_execution_plan(
        job, run_config, step_keys_to_execute=None, known_state=None, instance=instance
    )
    run = create_run_for_test(
        instance,
        job_name="probe",
        run_config=run_config,
        job_snapshot=job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(),
    )
    instance.launch_run(run.run_id, context)
    return run.run_id


def _wait(instance: dg.DagsterInstance, run_id: str, timeout: float = 120) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        if run.is_finished:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still going after {timeout} s")


def _launch_waiting(instance: dg.DagsterInstance, process_context: Any, code: Path, name: str):
    """A run whose op waits 60 s, once its op has started: (run id, the run process's pid)."""
    run_id = _launch(instance, process_context.create_request_context(), name=name, wait=60.0)
    marker = code / "out" / f"{name}.json"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, f"run {name} never started its op"
        time.sleep(0.05)
    return run_id, json.loads(marker.read_text())["pid"]


def _engine_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    return [e.dagster_event.message or "" for e in events if e.dagster_event]


def test_runs_fork_from_one_warm_worker_and_load_the_code_from_disk(workspace: Any) -> None:
    instance, process_context, code = workspace
    launcher = instance.run_launcher
    assert isinstance(launcher, WarmRunLauncher)

    first = _launch(instance, process_context.create_request_context(), name="first")
    assert _wait(instance, first).status == dg.DagsterRunStatus.SUCCESS
    seen = json.loads((code / "out" / "first.json").read_text())
    worker_pid = launcher._worker.pid
    assert seen["ppid"] == worker_pid  # forked from the warm worker
    assert seen["preloaded"] is True  # the module was imported before the run's code
    assert seen["version"] == 1
    tag = json.loads(instance.get_run_by_id(first).tags[WORKER_TAG])
    assert tag["pid"] == seen["pid"]
    forked = [m for m in _engine_messages(instance, first) if "Forked the run" in m]
    assert len(forked) == 1 and "preloaded: wave, numpy" in forked[0]
    assert "could not preload no_such_module_for_the_test (ModuleNotFoundError" in forked[0]
    # the BLAS pools the worker kept at one thread are as large as in a fresh interpreter
    show = "import json, probe_defs; print(json.dumps(probe_defs.blas_threads()))"
    fresh = subprocess.run(
        [sys.executable, "-c", show], cwd=code, capture_output=True, text=True, check=True
    )
    assert seen["blas"] == json.loads(fresh.stdout) and seen["blas"], (seen, fresh.stdout)

    # an edited code location is what the next run runs: nothing of ours is preloaded
    _write_probe(code, version=2)
    second = _launch(instance, process_context.create_request_context(), name="second")
    assert _wait(instance, second).status == dg.DagsterRunStatus.SUCCESS
    seen = json.loads((code / "out" / "second.json").read_text())
    assert seen["version"] == 2
    assert seen["ppid"] == worker_pid  # the same worker, still warm

    # a worker that died is started again at the next run
    os.kill(worker_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while launcher._worker.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    third = _launch(instance, process_context.create_request_context(), name="third")
    assert _wait(instance, third).status == dg.DagsterRunStatus.SUCCESS
    seen = json.loads((code / "out" / "third.json").read_text())
    assert seen["ppid"] == launcher._worker.pid != worker_pid


def test_terminate_cancels_the_forked_run(workspace: Any) -> None:
    instance, process_context, code = workspace
    launcher = instance.run_launcher
    run_id, pid = _launch_waiting(instance, process_context, code, "slow")
    run = instance.get_run_by_id(run_id)
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

    started = time.monotonic()
    assert launcher.terminate(run_id) is True
    run = _wait(instance, run_id, timeout=30)
    assert run.status == dg.DagsterRunStatus.CANCELED
    assert time.monotonic() - started < 30  # long before the op's 60 s
    deadline = time.monotonic() + 10
    while launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING:
        assert time.monotonic() < deadline, f"run process {pid} still alive"
        time.sleep(0.05)
    assert launcher.terminate(run_id) is False  # finished: nothing to stop


def test_a_run_whose_process_dies_is_marked_failed(workspace: Any) -> None:
    instance, process_context, code = workspace
    run_id, pid = _launch_waiting(instance, process_context, code, "doomed")
    os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    run = _wait(instance, run_id, timeout=30)
    assert run.status == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert len(failure) == 1
    message = failure[0].dagster_event.message
    assert f"pid {pid}" in message and "ended before the run did" in message, message


def test_a_new_launcher_watches_the_runs_an_earlier_one_forked(workspace: Any) -> None:
    # the daemon restarted while a run it had forked went on
    instance, process_context, code = workspace
    earlier = instance.run_launcher
    slow, pid = _launch_waiting(instance, process_context, code, "orphan")
    earlier.dispose()  # its worker and its watch end; the run goes on
    later = WarmRunLauncher(preload=["wave"])
    later.register_instance(instance)
    instance._run_launcher = later  # what a restarted daemon builds from dagster.yaml
    try:
        quick = _launch(instance, process_context.create_request_context(), name="next")
        assert _wait(instance, quick).status == dg.DagsterRunStatus.SUCCESS
        os.kill(pid, signal.SIGKILL)
        run = _wait(instance, slow, timeout=30)
        assert run.status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(slow, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"pid {pid}" in failure[0].dagster_event.message
    finally:
        later.dispose()


def test_dispose_stops_the_worker(workspace: Any) -> None:
    instance, process_context, _ = workspace
    launcher = instance.run_launcher
    run_id = _launch(instance, process_context.create_request_context(), name="one")
    assert _wait(instance, run_id).status == dg.DagsterRunStatus.SUCCESS
    worker = launcher._worker
    launcher.dispose()
    assert worker.process.poll() is not None


def test_runs_it_cannot_fork_say_why(workspace: Any, monkeypatch) -> None:
    instance, process_context, _ = workspace
    launcher = instance.run_launcher
    context = process_context.create_request_context()
    job = context.get_code_location("probe").get_repository("__repository__").get_full_job("probe")
    run = create_run_for_test(
        instance,
        job_name="probe",
        remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(),
    )
    assert launcher._not_forkable(run) is None

    elsewhere = run.job_code_origin._replace(
        repository_origin=run.job_code_origin.repository_origin._replace(
            executable_path="/opt/other/bin/python"
        )
    )
    reason = launcher._not_forkable(copy(run, job_code_origin=elsewhere))
    assert reason is not None and "/opt/other/bin/python" in reason

    def served_by(**where: Any) -> dg.DagsterRun:
        remote = job.get_remote_origin()
        location = GrpcServerCodeLocationOrigin(location_name="probe", **where)
        return copy(
            run,
            remote_job_origin=remote._replace(
                repository_origin=remote.repository_origin._replace(code_location_origin=location)
            ),
        )

    # a code server this workspace did not start: its environment may differ
    monkeypatch.delenv("DAGSTER_IS_DEV_CLI", raising=False)
    reason = launcher._not_forkable(served_by(host="localhost", socket="/tmp/s"))
    assert reason is not None and "did not start" in reason
    # the code servers of `dagster dev` (which marks its processes): forked when on this host
    monkeypatch.setenv("DAGSTER_IS_DEV_CLI", "1")
    assert launcher._not_forkable(served_by(host="localhost", socket="/tmp/s")) is None
    assert launcher._not_forkable(served_by(host="127.0.0.1", port=4266)) is None
    reason = launcher._not_forkable(served_by(host="code.internal", port=4266))
    assert reason is not None and "served from host 'code.internal'" in reason


def test_a_run_handed_over_without_an_answer_is_never_started_twice(workspace, monkeypatch):
    instance, process_context, code = workspace
    launcher = instance.run_launcher
    warm = _launch(instance, process_context.create_request_context(), name="warm")
    assert _wait(instance, warm).status == dg.DagsterRunStatus.SUCCESS

    def no_answer(self: Any, serialized_args: str) -> int:
        raise launcher_module.RunHandedOver("the warm run worker exited (exit code -9)")

    monkeypatch.setattr(launcher_module._Worker, "fork", no_answer)
    run_id = _launch(instance, process_context.create_request_context(), name="lost")
    run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE  # at once, not retried nor handed on
    failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "rather than started twice" in failure[0].dagster_event.message
    assert launcher._worker is None  # the worker that lost it is not used again
    assert not any("default launcher" in m for m in _engine_messages(instance, run_id))
    assert not (code / "out" / "lost.json").exists()


# Stand-ins for modules whose import makes a forked child untrustworthy.
UNFORKABLE = {
    # torch with CUDA initialized
    "initializes_cuda": (
        "import sys, types\n"
        "sys.modules['torch'] = types.SimpleNamespace(\n"
        "    cuda=types.SimpleNamespace(is_initialized=lambda: True))\n",
        "initialized CUDA",
    ),
    # a native pool's thread: the operating system sees it, Python's threading module does not
    "starts_a_thread": (
        "import _thread, time\n_thread.start_new_thread(time.sleep, (3600,))\n",
        "started 1 thread(s)",
    ),
}


@pytest.mark.parametrize("module", sorted(UNFORKABLE))
def test_a_worker_whose_imports_make_forks_unsafe_is_not_used(tmp_path, monkeypatch, module):
    source, why = UNFORKABLE[module]
    stub = tmp_path / "stubs"
    stub.mkdir()
    (stub / f"{module}.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(stub))
    starts = []

    class Counted(launcher_module._Worker):
        def __init__(self, preload: list[str]) -> None:
            starts.append(preload)
            super().__init__(preload)

    monkeypatch.setattr(launcher_module, "_Worker", Counted)
    with _workspace(tmp_path, [module]) as (instance, process_context, code):
        run_id = _launch(instance, process_context.create_request_context(), name="one")
        assert _wait(instance, run_id).status == dg.DagsterRunStatus.SUCCESS
        again = _launch(instance, process_context.create_request_context(), name="two")
        assert _wait(instance, again).status == dg.DagsterRunStatus.SUCCESS
        assert len(starts) == 1  # the failed start is remembered, not retried for every run
        assert any(why in m for m in _engine_messages(instance, again))
        seen = json.loads((code / "out" / "one.json").read_text())
        assert seen["preloaded"] is False  # started by Dagster's launcher, in a fresh process
        assert WORKER_TAG not in instance.get_run_by_id(run_id).tags
        messages = _engine_messages(instance, run_id)
        assert any("Dagster's default launcher" in m and why in m for m in messages), messages


def test_off_linux_every_run_goes_to_dagsters_launcher(workspace, monkeypatch) -> None:
    instance, process_context, code = workspace
    launcher = instance.run_launcher
    monkeypatch.setattr(sys, "platform", "darwin")
    run_id = _launch(instance, process_context.create_request_context(), name="mac")
    monkeypatch.undo()  # (Dagster's own launcher ran the run in a fresh process meanwhile)
    assert _wait(instance, run_id).status == dg.DagsterRunStatus.SUCCESS
    assert launcher._worker is None  # never started
    assert WORKER_TAG not in instance.get_run_by_id(run_id).tags
    assert json.loads((code / "out" / "mac.json").read_text())["preloaded"] is False
    (message,) = [m for m in _engine_messages(instance, run_id) if "default launcher" in m]
    assert "on Linux only (this is darwin)" in message, message


def test_the_shipped_preload_list_leaves_no_other_thread() -> None:
    """The worker of dagster-fast.yaml and deploy/dagster-fast.yaml starts: importing the
    modules they preload leaves no thread but the main one (numpy's and scipy's OpenBLAS and
    pyarrow's jemalloc would start theirs, but for QUIET_POOLS) and does not touch CUDA."""
    preloads = [
        yaml.safe_load(path.read_text())["run_launcher"]["config"]["preload"]
        for path in (ROOT / "dagster-fast.yaml", ROOT / "deploy" / "dagster-fast.yaml")
    ]
    assert preloads[0] == preloads[1]
    worker = launcher_module._Worker(preloads[0])
    try:
        assert worker.failed == {}  # every module is in the lock
    finally:
        worker.close()


def test_a_run_process_is_alive_until_it_exits_or_its_pid_is_reused() -> None:
    """The watcher's test of a run's process (psutil): alive while it runs; not once it exited
    (a zombie not yet reaped included), nor when the pid now belongs to a later process."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = launcher_module._start_time(child.pid)
        assert start is not None and launcher_module._alive(child.pid, start)
        assert not launcher_module._alive(child.pid, f"{float(start) - 5:.3f}")  # pid reused
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert not launcher_module._alive(child.pid, start)
    finally:
        child.kill()
        child.wait()
    assert not launcher_module._alive(child.pid, start)
    assert launcher_module._start_time(child.pid) is None
