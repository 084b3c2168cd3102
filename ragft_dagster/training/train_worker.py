"""One training process of a multi-process run
(``python -m ragft_dagster.training.train_worker SPEC``).

The asset writes a JSON spec and starts this module under ``torchrun`` or ``accelerate launch``
through Dagster Pipes; every rank trains (DDP), and only rank 0 opens the Pipes channel: it
streams progress to the Dagster run log and reports the final metrics as a custom message.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ragft_dagster.compute import ComputeSettings

WORKER_MODULE = "ragft_dagster.training.train_worker"
# The Dagster step process that launched the ranks; they exit when it is gone.
PARENT_PID_ENV = "RAGFT_PARENT_PID"


def _exit_with_parent(pid: int, interval: float = 2.0) -> None:
    """Watch ``pid`` from a daemon thread and end this rank as soon as it no longer exists."""
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # exists, owned by someone else

    threading.Thread(target=watch, name="ragft-parent-watch", daemon=True).start()


def launch_command(settings: ComputeSettings, spec_path: Path, *, on_cpu: bool) -> list[str]:
    """The command that starts ``settings.processes`` ranks of this worker on one host.

    ``accelerate launch --cpu`` starts a single process, so CPU runs use ``--multi_gpu`` too:
    without GPUs it starts real gloo ranks.
    """
    n = str(settings.processes)
    if settings.launcher == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        head += ["--nproc_per_node", n]
    elif settings.launcher == "accelerate":
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        head += ["--num_processes", n, "--num_machines", "1", "--dynamo_backend", "no"]
        if on_cpu:
            head += ["--mixed_precision", "no"]
    else:
        raise ValueError(f"compute.launcher: unknown launcher {settings.launcher!r}")
    return [*head, "-m", WORKER_MODULE, str(spec_path)]


def write_spec(path: Path, kind: str, kwargs: dict[str, Any]) -> None:
    """Write the arguments of :func:`ragft_dagster.training.sft.train_lora` (``kind="sft"``) or
    :func:`ragft_dagster.training.preference.train_dpo` (``"dpo"``) for the worker; the torch
    dtype is stored by name."""
    dtype = kwargs.get("dtype")
    plain = {**kwargs, "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None}
    blob = json.dumps({"kind": kind, "kwargs": plain}, default=str)
    Path(path).write_text(blob, encoding="utf-8")


def run_spec(spec: dict[str, Any], callbacks: list[Any]) -> dict[str, Any]:
    """Train as the spec says (in this process, as one rank) and return the metrics."""
    import torch

    kwargs = dict(spec["kwargs"])
    if kwargs.get("dtype"):
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    for key in ("out_dir", "checkpoints", "dataset_dir"):
        if kwargs.get(key):
            kwargs[key] = Path(kwargs[key])
    if spec["kind"] == "sft":
        from ragft_dagster.training.sft import train_lora

        return train_lora(**kwargs, callbacks=callbacks)
    if spec["kind"] == "dpo":
        from ragft_dagster.training.preference import train_dpo

        return train_dpo(**kwargs, callbacks=callbacks)
    raise ValueError(f"unknown training kind {spec['kind']!r}")


def main(argv: list[str] | None = None) -> None:
    (spec_file,) = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    if os.environ.get(PARENT_PID_ENV):
        _exit_with_parent(int(os.environ[PARENT_PID_ENV]))
    if int(os.environ.get("RANK", "0")) != 0:
        run_spec(spec, callbacks=[])
        return
    from dagster_pipes import open_dagster_pipes

    from ragft_dagster.training.checkpoints import progress_callback

    with open_dagster_pipes() as pipes:
        world = os.environ.get("WORLD_SIZE", "1")
        pipes.log.info(f"rank 0 of {world}: {spec['kind']} training started")
        metrics = run_spec(spec, callbacks=[progress_callback(pipes.log.info)])
        pipes.report_custom_message(metrics)


if __name__ == "__main__":
    main()
