"""Training checkpoints that survive a crash, and finding the one to resume from (Dagster-free).

A training run that asks for checkpoints (trl ``save_strategy: steps`` + ``save_steps: N`` in the
recipe's args) writes them to ``<artifact root>/checkpoints/<asset>/<fingerprint>/``, outside the
temporary output directory that a failed run throws away. The fingerprint covers everything that
makes two runs the same run (input model, data, recipe arguments), so the next materialization
resumes only a run it would have repeated exactly, and starts over when anything changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import file_sha256, scratch_dir
from ragft_dagster.config.recipe import training_relevant  # noqa: F401  (re-exported)

CHECKPOINTS_DIR = "checkpoints"


def wants_checkpoints(args: dict[str, Any]) -> bool:
    """Whether the recipe's trainer arguments ask for intermediate checkpoints."""
    return str(args.get("save_strategy", "no")) != "no"


def _model_identity(model_dir: Path) -> list[tuple[str, int, int]]:
    # Names, sizes and modification times: hashing 14 GB of 7B weights would take minutes, and a
    # re-materialized upstream model gets new files (so a new fingerprint) even if equal.
    return sorted(
        (str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(model_dir).rglob("*")
        if p.is_file()
    )


def run_fingerprint(
    *, model_dir: Path, data_files: Iterable[Path], settings: dict[str, Any]
) -> str:
    """Identify a training run by its inputs.

    Args:
        model_dir: The model being trained (identified by file names, sizes and mtimes).
        data_files: Training data files (identified by content).
        settings: Recipe sections that shape the run (trainer args, LoRA, quantization...);
            saving and logging cadence is ignored.

    Returns:
        A short hex digest.
    """
    relevant = {
        section: training_relevant(value) if isinstance(value, dict) else value
        for section, value in settings.items()
    }
    payload = {
        "model": _model_identity(Path(model_dir)),
        "data": [file_sha256(Path(f)) for f in data_files],
        "settings": relevant,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def checkpoint_dir(artifact_root: Path, asset: str, fingerprint: str) -> Path:
    """Where ``asset``'s checkpoints for one run live; older runs' folders are removed."""
    parent = Path(artifact_root) / CHECKPOINTS_DIR / asset
    if parent.is_dir():
        for other in parent.iterdir():
            if other.name != fingerprint and not other.name.startswith("."):
                shutil.rmtree(other, ignore_errors=True)
    return parent / fingerprint


def _step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-<step>`` folder in ``run_dir``, or None.

    The trainer writes ``trainer_state.json`` last, so a checkpoint whose state file is missing
    or unreadable was cut off mid-save (e.g. by kill -9) and is skipped for the one before it.
    """
    if not Path(run_dir).is_dir():
        return None
    candidates = sorted(
        (p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and _step(p) >= 0),
        key=_step,
        reverse=True,
    )
    for candidate in candidates:
        try:
            state = json.loads((candidate / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("global_step") == _step(candidate):
            return candidate
    return None


@contextmanager
def training_dir(out_dir: Path, checkpoints: Path | None) -> Iterator[Path]:
    """The trainer's ``output_dir``: the persistent checkpoint folder when the run keeps
    checkpoints, else a scratch folder next to ``out_dir`` that is removed afterwards."""
    if checkpoints is None:
        with scratch_dir(out_dir) as scratch:
            yield scratch
    else:
        Path(checkpoints).mkdir(parents=True, exist_ok=True)
        yield Path(checkpoints)


def train_resuming(trainer: Any, checkpoints: Path | None) -> tuple[Any, int]:
    """Run ``trainer.train()``, resuming from the newest complete checkpoint if there is one.

    Returns:
        The trainer's ``TrainOutput`` and the step it resumed from (0 for a fresh start).
    """
    resume = resumable_checkpoint(checkpoints) if checkpoints is not None else None
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return result, _step(resume) if resume else 0


def progress_callback(log: Callable[[str], None], lines: int = 20) -> Any:
    """A transformers ``TrainerCallback`` that sends training progress (loss, learning rate)
    and every checkpoint saved to ``log`` — the Dagster run log, live.

    About ``lines`` progress lines per run (the first and last step included, evaluations
    always): each is an event-log write, and the trainer logs every step.
    """
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            every = max(1, state.max_steps // lines)
            step = state.global_step
            wanted = step in (1, state.max_steps) or step % every == 0
            if not (wanted or any(k.startswith("eval_") for k in logs or {})):
                return
            if state.is_world_process_zero and logs:
                shown = ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()
                )
                log(f"step {state.global_step}/{state.max_steps}: {shown}")

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                log(f"checkpoint saved at step {state.global_step} in {args.output_dir}")

    return _Progress()
