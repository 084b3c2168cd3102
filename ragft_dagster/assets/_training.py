"""Running a training function from an asset: in this process, or as several ranks under
torchrun/accelerate launched through Dagster Pipes when the compute profile asks for it."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import atomic_dir
from ragft_dagster.compute import ComputeSettings
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.training.checkpoints import (
    CHECKPOINTS_DIR,
    checkpoint_dir,
    progress_callback,
    run_fingerprint,
    wants_checkpoints,
)
from ragft_dagster.training.train_worker import PARENT_PID_ENV, launch_command, write_spec


@contextmanager
def checkpointed_output(
    final: Path, *, artifact_root: Path, asset: str, fingerprint_of: dict[str, Any]
) -> Iterator[tuple[Path, Path | None]]:
    """An atomic output directory plus, when the trainer args ask for checkpoints, the
    persistent checkpoint folder of this exact run (removed once the artifact is in place).

    Args:
        final: The artifact directory.
        artifact_root: Where ``checkpoints/`` lives.
        asset: Asset name (checkpoint subfolder).
        fingerprint_of: ``run_fingerprint`` keyword arguments (model_dir, data_files, settings).
    """
    parent = Path(artifact_root) / CHECKPOINTS_DIR / asset
    if not wants_checkpoints(fingerprint_of["settings"].get("args", {})):
        # Checkpointing was switched off: an interrupted run's checkpoints can never resume.
        shutil.rmtree(parent, ignore_errors=True)
        with atomic_dir(final) as tmp:
            yield tmp, None
        return
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise dg.Failure(
                f"another process is training {asset} with checkpoints in {parent} (a second "
                "materialization, or ranks left over from a killed run); wait for it or stop "
                "it, then materialize again"
            ) from None
        ckpt = checkpoint_dir(artifact_root, asset, run_fingerprint(**fingerprint_of))
        with atomic_dir(final) as tmp:
            yield tmp, ckpt
        shutil.rmtree(ckpt, ignore_errors=True)


def _warn_about_idle_gpus(context: dg.AssetExecutionContext, settings: ComputeSettings) -> None:
    if settings.torch_device() != "cuda":
        return
    import torch

    visible = torch.cuda.device_count()
    if visible > 1:
        context.log.warning(
            f"{visible} GPUs are visible but compute.processes is 1: transformers will spread "
            "each batch over them with DataParallel (slow, uneven memory). Set compute.processes "
            f"to {visible} for DDP, or CUDA_VISIBLE_DEVICES to one GPU"
        )


def run_training(
    context: dg.AssetExecutionContext,
    kind: str,
    settings: ComputeSettings,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Train (``kind`` "sft" → :func:`ragft_dagster.training.sft.train_lora`, "dpo" →
    :func:`ragft_dagster.training.preference.train_dpo`) and return its metrics.

    With ``settings.processes`` > 1 the ranks run in child processes started by the launcher
    through ``dg.PipesSubprocessClient``; rank 0 reports progress and the metrics back.
    """
    log = context.log.info
    if settings.processes <= 1:
        _warn_about_idle_gpus(context, settings)
        if kind == "sft":
            from ragft_dagster.training.sft import train_lora

            return train_lora(**kwargs, callbacks=[progress_callback(log)])
        from ragft_dagster.training.preference import train_dpo

        return train_dpo(**kwargs, callbacks=[progress_callback(log)])
    on_cpu = settings.torch_device() == "cpu"
    # The ranks exit when this step process dies (kill -9, OOM): no orphan keeps the GPUs or
    # writes into the checkpoints the next materialization resumes from.
    env = {PARENT_PID_ENV: str(os.getpid())}
    if on_cpu:
        env["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="ragft-launch-") as tmp:
        spec = Path(tmp) / "spec.json"
        write_spec(spec, kind, kwargs)
        command = launch_command(settings, spec, on_cpu=on_cpu)
        log(f"launching {settings.processes} training processes: {' '.join(command)}")
        invocation = dg.PipesSubprocessClient(env=env).run(context=context, command=command)
    messages = invocation.get_custom_messages()
    if not messages:
        raise dg.Failure(
            f"{kind} training exited without reporting metrics from rank 0; see the run's "
            "stderr for the launcher's output"
        )
    return messages[-1]


def train_artifact(
    context: dg.AssetExecutionContext,
    kind: str,
    settings: ComputeSettings,
    recipe: Recipe,
    *,
    final: Path,
    artifact_root: Path,
    model_dir: Path,
    data: dict[str, Any],
    data_files: list[Path],
    run: dict[str, Any],
    data_identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``kind`` ("sft" or "dpo") from ``model_dir`` into the artifact ``final``, with
    checkpoints for this exact run when the recipe asks for them, and return the metrics.

    Args:
        data: The training data argument (``dataset_dir`` or ``rows``).
        data_files: Local data files (their content identifies the run).
        run: Recipe sections that shape the training (``args``, ``lora``...), passed on as
            arguments and part of the checkpoint fingerprint.
        data_identity: What else identifies the data (e.g. a hub dataset id and split).
    """
    fingerprint = {
        **run,
        **({"data": data_identity} if data_identity else {}),
        "chat_template": recipe.chat_template,
        "compute": settings.run_identity(),
    }
    with checkpointed_output(
        final,
        artifact_root=artifact_root,
        asset=context.asset_key.path[-1],
        fingerprint_of={"model_dir": model_dir, "data_files": data_files, "settings": fingerprint},
    ) as (tmp, checkpoints):
        metrics = run_training(
            context,
            kind,
            settings,
            {
                "model_dir": str(model_dir),
                **data,
                "out_dir": tmp,
                **run,
                "compute_args": settings.trainer_args(),
                "dtype": settings.torch_dtype(),
                "chat_template": recipe.chat_template,
                "trust_remote_code": recipe.trust_remote_code,
                "checkpoints": checkpoints,
            },
        )
    resumed = metrics["resumed_from_step"]
    context.log.info(
        f"{kind}: {metrics['steps']} steps"
        + (f", resumed from step {resumed}" if resumed else "")
        + f", train loss {metrics['train_loss']:.4f}"
    )
    return metrics
