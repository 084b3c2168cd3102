"""The warm run worker: one process that imports the heavy modules once (dagster, torch,
transformers, llama-index, ...) and then forks a process for each run it is given.

Dagster's default launcher starts every run in a freshly spawned interpreter, which imports all
of that again: seconds of every run, the most of a one-document edit's run. A forked child
starts with the modules loaded and runs the run exactly as ``dagster api execute_run`` would
(the same command, the same arguments), so the run, its events and its cancellation behave as
with the default launcher. Our own code is never preloaded: each run loads the code location's
definitions from disk, as a spawned run does, so an edited recipe or module takes effect on the
next run.

Linux only (``fork``, ``/proc``): the launcher never starts it elsewhere. It refuses to serve
when importing its modules left any other thread in the process (counted by the operating
system, ``/proc/self/task``: native pools as well as Python threads) or initialized CUDA.

Started by :class:`ragft_dagster.orchestration.launcher.WarmRunLauncher`; speaks JSON lines on
the socket whose file descriptor is its first argument:
  -> {"ready": true, "pid": ..., "failed": {module: error}}  once, at start (or
     {"ready": false, "error": ...} when its children could not be trusted)
  <- {"run": "<serialized ExecuteRunArgs>"}  ->  {"pid": <the run worker's pid>}
It exits when the socket closes (its launcher is gone); runs it forked go on to their end.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

# Native thread pools that some of the preloaded libraries start when they are imported, kept
# from starting while the worker imports (a forked child holds only the thread that forked, and
# could inherit a pool's locks held): OpenBLAS, bundled by numpy and scipy (which torch imports),
# starts its server threads at load unless told to use one (OPENBLAS_NUM_THREADS, OpenBLAS's own
# setting); pyarrow's jemalloc (datasets, through llama-index's HuggingFace embeddings) starts a
# background purging thread unless its MALLOC_CONF says not to (jemalloc reads
# <PREFIX>_MALLOC_CONF, and Arrow builds it with the prefix je_arrow_). Each run restores the
# BLAS pools after the fork (_restore_blas_threads); jemalloc then purges without the thread.
QUIET_POOLS = {
    "OPENBLAS_NUM_THREADS": "1",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}


def _preload(modules: list[str]) -> dict[str, str]:
    """Import ``modules``; what failed, with its error (the run imports it itself then)."""
    failed: dict[str, str] = {}
    # torch's CUDA check through NVML never initializes the CUDA driver, which a forked child
    # could not use afterwards; the children get the environment as it was.
    quiet = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1", **QUIET_POOLS}
    saved = {name: os.environ.get(name) for name in quiet}
    os.environ.update(quiet)
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # noqa: BLE001 - any import failure is reported
                failed[name] = f"{type(exc).__name__}: {exc}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return failed


def _other_threads() -> list[str]:
    """The operating system's threads of this process besides the calling one, by name: Python's
    threads and native ones alike (OpenMP, MKL, BLAS, tokenizers pools)."""
    me = str(threading.get_native_id())
    names = []
    for task in sorted(os.listdir("/proc/self/task")):
        if task != me:
            try:
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
            except OSError:  # ended meanwhile
                continue
    return names


def _unforkable(threads: list[str]) -> str | None:
    """Why a forked child of this process could not be trusted; None if it can. ``threads``: the
    process's other threads (:func:`_other_threads`)."""
    if threads:
        python = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        return (
            f"importing the preloaded modules started {len(threads)} thread(s) "
            f"({', '.join(threads)}; of them Python threads: {', '.join(python) or 'none'}): a "
            "forked run could inherit their locks held; remove the module that starts them "
            "from preload"
        )
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return (
            "importing the preloaded modules initialized CUDA, which a forked run could not use: "
            "remove the module that does it from preload"
        )
    try:  # the CUDA driver loaded (a device query without NVML): the same, seen from outside
        maps = open("/proc/self/maps").read()  # noqa: SIM115 - read at once
    except OSError:
        maps = ""
    if "libcuda.so" in maps:
        return (
            "importing the preloaded modules loaded the CUDA driver (libcuda), which a forked "
            "run could not use: remove the module that does it from preload"
        )
    return None


def _restore_blas_threads() -> None:
    """In the forked run: OpenBLAS pools of as many threads as a fresh process would start (the
    worker loaded them with one, QUIET_POOLS); their threads start here, after the fork. OpenBLAS
    reads OPENBLAS_NUM_THREADS, then GOTO_NUM_THREADS, then OMP_NUM_THREADS, else uses every CPU
    it may run on."""
    cpus = len(os.sched_getaffinity(0))
    wanted = cpus
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            wanted = min(int(value), cpus)
            break
    if wanted == 1:
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # (a dependency of scikit-learn, which sentence-transformers needs)
        return
    ThreadpoolController().select(internal_api="openblas").limit(limits=wanted)


def _run(serialized_args: str) -> int:
    """In the forked child: what ``dagster api execute_run <args>`` does."""
    from dagster._cli.api import execute_run_command
    from dagster._utils.interrupts import setup_interrupt_handlers

    signal.signal(signal.SIGINT, signal.default_int_handler)
    setup_interrupt_handlers()  # SIGTERM interrupts the run as SIGINT does (cancellation)
    try:
        _restore_blas_threads()
    except Exception as exc:  # noqa: BLE001 - the run goes on, its BLAS on one thread
        print(f"ragft run worker: BLAS threads not restored ({exc})", file=sys.stderr)
    try:
        execute_run_command.main(
            [serialized_args], prog_name="dagster api execute_run", standalone_mode=False
        )
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must end through os._exit below
        traceback.print_exc()
        return 1
    return 0


def _fork(serialized_args: str, channel: list[Any]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for end in channel:  # the child keeps no copy of the launcher's socket
            end.close()
        code = _run(serialized_args)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)  # never back into the worker's loop


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(sock: socket.socket, modules: list[str]) -> None:
    failed = _preload(modules)
    threads = _other_threads()

    def send(message: dict[str, Any]) -> None:
        sock.sendall(json.dumps(message).encode() + b"\n")

    refused = _unforkable(threads)
    if refused:
        send({"ready": False, "error": refused})
        return
    send({"ready": True, "pid": os.getpid(), "failed": failed})
    pending = b""
    while True:
        ready, _, _ = select.select([sock], [], [], 1.0)
        _reap()
        if not ready:
            continue
        data = sock.recv(1 << 20)
        if not data:
            return  # the launcher is gone
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                request = json.loads(line)
                send({"pid": _fork(request["run"], [sock])})
            except Exception as exc:  # noqa: BLE001 - answer, keep serving
                send({"error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str]) -> int:
    fd, modules = int(argv[0]), [m for m in argv[1].split(",") if m]
    # a Ctrl-C meant for `dagster dev` reaches the whole process group: end quietly
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    with socket.socket(fileno=fd) as sock:
        serve(sock, modules)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
