"""Preference tuning with trl's DPOTrainer, and its measure on held-out pairs (Dagster-free).

The training figures of a short DPO run (loss, reward accuracy on the batches it trains on) say
little: a reward accuracy of 0.5 and a loss of log 2 are what an untouched model shows. So a
share of the pairs, chosen by a content hash of each pair's prompt, is held out of training, and
the policy is scored on them before and after training the way trl scores its batches: the
implicit reward of an answer is ``beta * (policy log-probability - reference log-probability)``
and a pair counts as right when the chosen answer's reward is above the rejected one's.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import atomic_write_text, read_utf8_file
from ragft_dagster.models.refs import (
    checkpointing_args,
    count_parameters,
    load_tokenizer,
    load_trainable_model,
    loss_history,
    upstream_deprecations_silenced,
)
from ragft_dagster.stats import wilson_interval
from ragft_dagster.training.checkpoints import train_resuming, training_dir
from ragft_dagster.training.dense_logprobs import use_dense_logprobs_on_cpu

PREFERENCE_EVAL_FILE = "preference_eval.json"
"""Held-out preference accuracy of the DPO model, written into its folder."""

Logps = tuple[list[float], list[float]]
"""Summed log-probabilities of the chosen and of the rejected answers, one per pair."""


class PreferenceDataError(ValueError):
    """A preference file row that cannot be used; names the file, row and field."""


def load_preference_pairs(
    source: str | Path, *, split: str = "train", max_rows: int | None = None
) -> list[dict[str, Any]]:
    """Load preference pairs as trl conversational rows.

    Accepts ``prompt`` or ``question`` (Intel/orca_dpo_pairs) plus ``chosen`` and ``rejected``,
    and an optional ``system`` and ``category`` (kept on the row).

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
        row = {
            "prompt": messages,
            "chosen": [{"role": "assistant", "content": rec["chosen"]}],
            "rejected": [{"role": "assistant", "content": rec["rejected"]}],
        }
        if isinstance(rec.get("category"), str):  # held-out accuracy is also given per category
            row["category"] = rec["category"]
        rows.append(row)
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


def pair_key(row: dict[str, Any]) -> str:
    """Content hash of a pair's prompt (its system and user messages).

    The prompt, not the answers: pairs that share a prompt land on the same side of the split,
    so a held-out prompt is never one the policy trained on with other answers.
    """
    text = json.dumps(row["prompt"], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_preference_pairs(
    rows: list[dict[str, Any]], validation_fraction: float, *, source: str = "the pairs"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split pairs into training and held-out rows by the content hash of each prompt.

    A pair is held out when its hash, read as a number in [0, 1), is below
    ``validation_fraction``: the split does not depend on row order, and adding or removing
    rows never moves another pair from one side to the other.

    Args:
        rows: Rows from :func:`load_preference_pairs`.
        validation_fraction: Expected share of held-out pairs (0 holds none out).
        source: The dataset, named in errors.

    Returns:
        (training rows, held-out rows), each in file order.

    Raises:
        PreferenceDataError: No pair is left to train on. (Too few pairs to hold any out is
            not an error: then there is no held-out measure.)
    """
    train: list[dict[str, Any]] = []
    heldout: list[dict[str, Any]] = []
    for row in rows:
        position = int(pair_key(row)[:16], 16) / 16**16
        (heldout if position < validation_fraction else train).append(row)
    if not train:
        raise PreferenceDataError(
            f"{source}: dpo.validation_fraction {validation_fraction} holds out all of its "
            f"{len(rows)} pairs, leaving none to train on; lower the fraction or add pairs"
        )
    return train, heldout


def preference_accuracy(
    chosen_logps: list[float],
    rejected_logps: list[float],
    ref_chosen_logps: list[float],
    ref_rejected_logps: list[float],
    beta: float,
    *,
    categories: list[str | None] | None = None,
) -> dict[str, Any]:
    """Preference accuracy and margin of a policy against its reference, as trl computes them.

    The reward of an answer is ``beta * (policy log-probability - reference log-probability)``
    (log-probabilities summed over the answer's tokens); a pair is right when the chosen
    answer's reward is above the rejected one's. A tie counts half (every pair ties when the
    policy is the reference, as before training), so an untrained policy scores 0.5.

    Args:
        chosen_logps, rejected_logps: The policy's summed log-probabilities, one per pair.
        ref_chosen_logps, ref_rejected_logps: The reference model's.
        beta: The DPO temperature.
        categories: Each pair's category, for a ``by_category`` breakdown.

    Returns:
        ``pairs``, ``right`` (strictly above), ``ties``, ``accuracy``, its 95% Wilson interval
        ``ci_low``/``ci_high`` (nan without pairs), ``margin`` (the mean chosen-minus-rejected
        reward) and, with categories, ``by_category``: {category: {pairs, right, accuracy}}.
    """
    columns = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if len({len(c) for c in columns}) != 1:
        raise ValueError("chosen, rejected and reference log-probabilities differ in length")
    margins = [beta * ((c - rc) - (r - rr)) for c, r, rc, rr in zip(*columns, strict=True)]
    out = _accuracy(margins)
    if categories is not None:
        groups: dict[str, list[float]] = {}
        for category, margin in zip(categories, margins, strict=True):
            groups.setdefault(category or "uncategorised", []).append(margin)
        out["by_category"] = {
            name: {k: _accuracy(group)[k] for k in ("pairs", "right", "accuracy")}
            for name, group in sorted(groups.items())
        }
    return out


def _accuracy(margins: list[float]) -> dict[str, Any]:
    n = len(margins)
    right = sum(m > 0 for m in margins)
    ties = sum(m == 0 for m in margins)
    credit = right + 0.5 * ties
    low, high = wilson_interval(credit, n)
    return {
        "pairs": n,
        "right": right,
        "ties": ties,
        "accuracy": credit / n if n else math.nan,
        "ci_low": low,
        "ci_high": high,
        "margin": sum(margins) / n if n else math.nan,
    }


def length_baseline(chosen_tokens: list[int], rejected_tokens: list[int]) -> float:
    """The accuracy of "the longer answer is the chosen one" (ties half): summed
    log-probabilities favour longer answers, so a policy that only made all text likelier
    would score near this, not near 0.5."""
    pairs = list(zip(chosen_tokens, rejected_tokens, strict=True))
    if not pairs:
        return math.nan
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in pairs) / len(pairs)


def heldout_note(after: dict[str, Any], before: dict[str, Any], steps: int) -> str:
    """One plain sentence on what the held-out pairs say about this DPO run."""
    n, acc, low, high = after["pairs"], after["accuracy"], after["ci_low"], after["ci_high"]
    figures = (
        f"the policy prefers the chosen answer on {after['right']} of {n} held-out pairs it "
        f"never trained on (accuracy {acc:.2f}, 95% CI {low:.2f}-{high:.2f}, mean reward "
        f"margin {after['margin']:.3f})"
    )
    if before["ties"] == before["pairs"]:
        start = "before training the policy is the reference model, so every pair tied (0.5)"
    else:
        start = f"before training the accuracy was {before['accuracy']:.2f}"
    if low > 0.5:
        return f"DPO moved the model measurably: after {steps} steps {figures}; {start}."
    if high < 0.5:
        return (
            f"DPO moved the model the wrong way: after {steps} steps {figures}, below chance; "
            f"{start}."
        )
    return (
        f"DPO did not move the model measurably on held-out pairs within this budget: after "
        f"{steps} steps {figures}, an interval that includes 0.5 (chance); {start}."
    )


def preference_eval_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``preference_eval.json`` record of :func:`train_dpo`'s metrics (with held-out
    pairs): held-out accuracy, interval and margin after training, the training figures, the
    same held-out figures before training, and a plain-sentence ``note``."""
    after = metrics["heldout"]
    return {
        "pairs": after["pairs"],
        "accuracy": after["accuracy"],
        "ci_low": after["ci_low"],
        "ci_high": after["ci_high"],
        "margin": after["margin"],
        "right": after["right"],
        "ties": after["ties"],
        "dropped_for_length": metrics["heldout_dropped"],
        "length_baseline": metrics["heldout_length_baseline"],
        "by_category": after.get("by_category", {}),
        "beta": metrics["beta"],
        "train": {
            "loss_first": metrics["first_loss"],
            "loss_last": metrics["final_loss"],
            "reward_accuracy": metrics["reward_accuracy"],
            "steps": metrics["steps"],
            "pairs": metrics["pairs"],
        },
        "before_training": metrics["heldout_before"],
        "note": heldout_note(after, metrics["heldout_before"], metrics["steps"]),
    }


def _starts_as_reference(trainer: Any) -> bool:
    """Whether the untrained policy computes exactly what trl's reference does, so scoring it
    would repeat the reference pass: a full fine-tune's reference is loaded from the same
    weights, and a LoRA adapter at peft's default start (B = 0, no DoRA) adds exactly zero.
    ``tests/training/test_preference.py`` checks the LoRA case against a real pass."""
    configs = getattr(trainer.model, "peft_config", None)
    if not configs:
        return True
    return all(
        getattr(c, "init_lora_weights", None) is True and not getattr(c, "use_dora", False)
        for c in configs.values()
    )


def _score_untrained(trainer: Any) -> tuple[Logps, Logps, bool]:
    """(reference, untrained policy) log-probabilities of the held-out pairs, and whether the
    policy's are the reference's by construction (then not computed twice)."""
    reference = _completion_logps(trainer, reference=True)
    if _starts_as_reference(trainer):
        return reference, reference, True
    return reference, _completion_logps(trainer, reference=False), False


def _heldout_metrics(
    trainer: Any,
    held_out: int,
    reference: Logps,
    untrained: Logps,
    by_construction: bool,
    trained: Logps,
) -> dict[str, Any]:
    """The held-out figures :func:`train_dpo` returns, from the passes over the pairs."""
    beta = float(trainer.args.beta)
    held = trainer.eval_dataset  # as trl tokenized it
    categories = held["category"] if "category" in held.column_names else None
    before = preference_accuracy(*untrained, *reference, beta)
    return {
        "beta": beta,
        "heldout_before": {**before, "by_construction": by_construction},
        "heldout": preference_accuracy(*trained, *reference, beta, categories=categories),
        # trl drops pairs whose prompt alone fills max_length: they are not scored
        "heldout_dropped": held_out - len(held),
        "heldout_length_baseline": length_baseline(
            [len(ids) for ids in held["chosen_ids"]], [len(ids) for ids in held["rejected_ids"]]
        ),
    }


def _completion_logps(trainer: Any, *, reference: bool) -> Logps:
    """Summed log-probabilities of the chosen and rejected answers of the trainer's held-out
    pairs (tokenized, truncated and padded by trl, as for training), under the policy or, with
    ``reference``, under trl's reference model (a LoRA policy with its adapter off)."""
    import contextlib

    import torch
    from torch.utils.data import DataLoader

    model = trainer.model
    scorer, adapter_off = model, contextlib.nullcontext()
    if reference and trainer.ref_model is not None:
        scorer = trainer.ref_model
    elif reference and hasattr(model, "disable_adapter"):
        adapter_off = model.disable_adapter()
    loader = DataLoader(
        trainer.eval_dataset,
        batch_size=trainer.args.per_device_eval_batch_size,
        collate_fn=trainer.data_collator,
        shuffle=False,
    )
    device = next(scorer.parameters()).device
    chosen: list[float] = []
    rejected: list[float] = []
    was_training = scorer.training
    scorer.eval()
    try:
        with torch.no_grad(), adapter_off, trainer.accelerator.autocast():
            for batch in loader:  # [chosen rows..., rejected rows...], right-padded
                ids = batch["input_ids"].to(device)
                logits = scorer(
                    input_ids=ids,
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                ).logits[:, :-1]
                logits = logits.float()
                targets = ids[:, 1:].unsqueeze(-1)
                token_logps = logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(-1)
                mask = batch["completion_mask"][:, 1:].to(device)
                summed = (token_logps * mask).sum(dim=1).tolist()
                half = len(summed) // 2
                chosen += summed[:half]
                rejected += summed[half:]
    finally:
        scorer.train(was_training)
    return chosen, rejected


def train_dpo(
    model_dir: str,
    rows: list[dict[str, Any]],
    out_dir: Path,
    *,
    heldout: list[dict[str, Any]] | None = None,
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
        rows: Conversational preference rows from :func:`load_preference_pairs` to train on.
        out_dir: Where the aligned model is saved.
        heldout: Pairs held out of training: the policy is scored on them before and after
            training (see :func:`preference_accuracy`) and ``preference_eval.json`` is written
            into ``out_dir``. None or empty: no held-out measure.
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
        Metrics for metadata: first and final loss, reward accuracy and margin, steps, the step
        resumed from, parameters (total and trainable); with held-out pairs also ``heldout``
        and ``heldout_before`` (:func:`preference_accuracy` after and before training).
    """
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    use_dense_logprobs_on_cpu()  # trl's fused LM head is slow on a CPU; other devices keep it

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
    with training_dir(out_dir, checkpoints) as run_dir, upstream_deprecations_silenced():
        config = DPOConfig(
            **{
                **compute_args,
                "save_strategy": "no",
                "logging_steps": 1,
                **args,
                **checkpointing_args(args),
            },
            output_dir=str(run_dir),
        )
        trainer = DPOTrainer(
            model=model,
            callbacks=callbacks,
            ref_model=None,
            args=config,
            train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(heldout) if heldout else None,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        total, trainable = count_parameters(trainer.model)
        # Rank 0 alone scores the held-out pairs: no collective, the other ranks just wait.
        scoring = bool(heldout) and trainer.is_world_process_zero()
        # Before any step (even when resuming: the checkpoint loads inside train()).
        untrained = _score_untrained(trainer) if scoring else None
        result, resumed_from = train_resuming(trainer, checkpoints)
        logs = loss_history(trainer)
        trained_logps = _completion_logps(trainer, reference=False) if scoring else None
    last = logs[-1] if logs else {}
    metrics: dict[str, Any] = {
        "train_loss": float(result.training_loss),
        "first_loss": float(logs[0]["loss"]) if logs else float("nan"),
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
    if untrained is not None and trained_logps is not None:
        metrics.update(_heldout_metrics(trainer, len(heldout or []), *untrained, trained_logps))
    if trainer.is_world_process_zero():
        trained: Any = trainer.model
        if peft_config is not None:
            trained = trained.merge_and_unload()
        trained.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        if scoring:
            record = preference_eval_record(metrics)
            atomic_write_text(
                Path(out_dir) / PREFERENCE_EVAL_FILE, json.dumps(record, indent=2) + "\n"
            )
    return metrics
