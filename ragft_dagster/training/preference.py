"""Preference tuning with trl's DPOTrainer (Dagster-free)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import read_utf8_file
from ragft_dagster.models.refs import (
    count_parameters,
    load_tokenizer,
    load_trainable_model,
    loss_history,
)
from ragft_dagster.training.checkpoints import train_resuming, training_dir


class PreferenceDataError(ValueError):
    """A preference file row that cannot be used; names the file, row and field."""


def load_preference_pairs(
    source: str | Path, *, split: str = "train", max_rows: int | None = None
) -> list[dict[str, Any]]:
    """Load preference pairs as trl conversational rows.

    Accepts ``prompt`` or ``question`` (Intel/orca_dpo_pairs) plus ``chosen`` and ``rejected``,
    and an optional ``system``.

    Args:
        source: A local JSON-lines file (or a ``.json`` array of objects), or a hub dataset id.
        split: Split to use for hub datasets.
        max_rows: Keep only the first N rows.

    Returns:
        Rows ``{"prompt": [msgs], "chosen": [msg], "rejected": [msg]}``.

    Raises:
        PreferenceDataError: Naming the file, the line (row of a hub dataset) and the field,
            and the fix.
    """
    if isinstance(source, Path) or str(source).endswith((".jsonl", ".json")):
        raw = _read_local_rows(Path(source))
        where = str(source)
        unit = "line"
    else:
        from datasets import load_dataset

        raw = list(enumerate(load_dataset(str(source), split=split), start=1))
        where = f"{source} ({split})"
        unit = "row"
    rows = []
    for i, rec in raw[:max_rows] if max_rows else raw:
        prompt_field = "question" if "prompt" not in rec and "question" in rec else "prompt"
        for field in (prompt_field, "chosen", "rejected"):
            problem = _field_problem(rec, field)
            if problem:
                raise PreferenceDataError(
                    f"{where}: {unit} {i}: field '{field}' {problem}; every row needs non-empty "
                    "prompt (or question), chosen and rejected strings"
                )
        messages = []
        if isinstance(rec.get("system"), str) and rec["system"].strip():
            messages.append({"role": "system", "content": rec["system"]})
        messages.append({"role": "user", "content": rec[prompt_field]})
        rows.append(
            {
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": rec["chosen"]}],
                "rejected": [{"role": "assistant", "content": rec["rejected"]}],
            }
        )
    if not rows:
        raise PreferenceDataError(
            f"{where}: no preference pairs found; add rows with prompt, chosen and rejected"
        )
    return rows


def _field_problem(rec: dict[str, Any], field: str) -> str | None:
    """What is wrong with one field of a preference row, or None."""
    if field not in rec:
        present = ", ".join(sorted(rec)) or "none"
        return f"is missing (the row has: {present})"
    value = rec[field]
    if not isinstance(value, str):
        kind = "a list of messages" if isinstance(value, list) else type(value).__name__
        return f"is {kind}, not a string"
    if not value.strip():
        return "is empty"
    return None


def _read_local_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every row of a local preference file."""
    if path.suffix in (".csv", ".parquet"):
        raise PreferenceDataError(
            f"{path}: {path.suffix} preference files are not read; convert it to JSON lines "
            '(one {"prompt": ..., "chosen": ..., "rejected": ...} object a line) and point '
            "dpo.dataset at the .jsonl file"
        )
    text = read_utf8_file(
        path,
        PreferenceDataError,
        what="preference file",
        key="dpo.dataset",
        expected="a JSON-lines file",
    )
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return _json_array_rows(path, text)
    rows = []
    # split("\n"), not splitlines(): a JSON string may hold a raw U+2028 line separator.
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PreferenceDataError(
                f"{path}: line {i}: not valid JSON ({exc.msg} at column {exc.colno}); each line "
                "must be one JSON object"
            ) from None
        if not isinstance(rec, dict):
            raise PreferenceDataError(
                f"{path}: line {i}: a JSON {type(rec).__name__}, not an object; each line must "
                'be one object such as {"prompt": ..., "chosen": ..., "rejected": ...}'
            )
        rows.append((i, rec))
    return rows


def _json_array_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """A ``.json`` file holding one array of row objects (rows are numbered from 1)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PreferenceDataError(
            f"{path}: line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    bad = next((i for i, rec in enumerate(data, start=1) if not isinstance(rec, dict)), None)
    if bad is not None:
        raise PreferenceDataError(
            f"{path}: item {bad} of the array is not an object; each item must be "
            '{"prompt": ..., "chosen": ..., "rejected": ...}'
        )
    return list(enumerate(data, start=1))


def train_dpo(
    model_dir: str,
    rows: list[dict[str, Any]],
    out_dir: Path,
    *,
    args: dict[str, Any],
    compute_args: dict[str, Any],
    dtype: Any = None,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    checkpoints: Path | None = None,
    callbacks: list[Any] | None = None,
    lora: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Align a model with DPO and save the result (weights + tokenizer) to ``out_dir``.

    With ``lora`` the policy trains a LoRA adapter (the reference is the same model with the
    adapter disabled, so no second copy) and the adapter is merged into the saved weights:
    ``out_dir`` is a full model either way.

    Runs the same under ``torchrun``/``accelerate`` (one process per rank): only rank 0 saves.

    Args:
        model_dir: The policy (and implicit reference) model.
        rows: Conversational preference rows from :func:`load_preference_pairs`.
        out_dir: Where the aligned model is saved.
        args: trl ``DPOConfig`` fields from the recipe.
        compute_args: Precision/device fields from the compute profile (recipe args win).
        dtype: Torch dtype to load the weights in.
        chat_template: Recipe chat template for tokenizers that have none.
        trust_remote_code: Only when the recipe opts in.
        checkpoints: Persistent folder for the trainer's checkpoints (resumed from when it
            holds one); None = checkpoints, if any, go to a scratch folder.
        callbacks: transformers ``TrainerCallback``s (e.g. progress to the run log).
        lora: peft ``LoraConfig`` fields for LoRA DPO; None trains every weight.

    Returns:
        Metrics for metadata: final loss, reward accuracy and margin, steps, the step resumed
        from, parameters (total and trainable).
    """
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if lora is None and compute_args.get("fp16"):
        # fp16 mixed precision needs fp32 master weights: the grad scaler refuses fp16 params
        # (LoRA adapters are fp32 anyway; the frozen base may stay fp16).
        dtype = torch.float32
    peft_config = None
    if lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **lora)
    tokenizer = load_tokenizer(model_dir, chat_template, trust_remote_code)
    on_gpu = not compute_args.get("use_cpu", False)
    model = load_trainable_model(model_dir, dtype, trust_remote_code, None, args, on_gpu=on_gpu)
    with training_dir(out_dir, checkpoints) as run_dir:
        config = DPOConfig(
            **{**compute_args, "save_strategy": "no", "logging_steps": 1, **args},
            output_dir=str(run_dir),
        )
        trainer = DPOTrainer(
            model=model,
            callbacks=callbacks,
            ref_model=None,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        total, trainable = count_parameters(trainer.model)
        result, resumed_from = train_resuming(trainer, checkpoints)
        logs = loss_history(trainer)
    if trainer.is_world_process_zero():
        trained: Any = trainer.model
        if peft_config is not None:
            trained = trained.merge_and_unload()
        trained.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    last = logs[-1] if logs else {}
    return {
        "train_loss": float(result.training_loss),
        "final_loss": float(last.get("loss", result.training_loss)),
        "reward_accuracy": float(last.get("rewards/accuracies", float("nan"))),
        "reward_margin": float(last.get("rewards/margins", float("nan"))),
        "steps": int(result.global_step),
        "resumed_from_step": resumed_from,
        "processes": int(trainer.args.world_size),
        "pairs": len(rows),
        "parameters": total,
        "trainable_parameters": trainable,
        "loss_curve": [float(e["loss"]) for e in logs],
    }
