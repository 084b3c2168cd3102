"""SFT dataset building and LoRA fine-tuning with trl + peft (Dagster-free)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import atomic_write_text, write_jsonl
from ragft_dagster.data.contamination import Finding, summarise
from ragft_dagster.models.refs import (
    checkpointing_args,
    count_parameters,
    load_tokenizer,
    load_trainable_model,
    loss_history,
    upstream_deprecations_silenced,
)
from ragft_dagster.prompts import ask_messages
from ragft_dagster.text import fold
from ragft_dagster.training.checkpoints import train_resuming, training_dir
from ragft_dagster.training.dense_logprobs import use_dense_logprobs_on_cpu

CONTAMINATION_FILE = "contamination.json"
QUALITY_FILE = "quality.json"


class EmptyDataset(ValueError):
    """Nothing is left to train on; the message says what removed the rows."""


# rows -> (kept rows, rejections, figures): ragft_dagster.data.quality.filter_rows, bound
# rows -> (rows with "context" chunks, figures): ragft_dagster.data.raft.add_retrieved_context
ContextAdder = Callable[[list[dict[str, Any]]], tuple[list[dict[str, Any]], dict[str, Any]]]
QualityFilter = Callable[
    [list[dict[str, Any]]], tuple[list[dict[str, Any]], list[Any], dict[str, Any]]
]


def build_sft_dataset(
    qa_rows: list[dict[str, Any]],
    out_dir: Path,
    *,
    validation_fraction: float,
    seed: int,
    system_prompt: str | None,
    detect_contamination: Callable[[list[dict[str, Any]]], list[Finding]] | None = None,
    remove_contaminated: bool = True,
    quality_filter: QualityFilter | None = None,
    add_context: ContextAdder | None = None,
    context_template: str = "Context:\n{context}\n\n",
    generic_rows: list[dict[str, Any]] | None = None,
    generic_share: float = 0.0,
) -> dict[str, Any]:
    """Dedupe Q&A rows, filter them for quality, decontaminate them, split train/validation
    deterministically and write chat-format JSONL.

    A row goes to validation when the hash of (seed, normalised question) falls below the
    fraction, so adding a document never reshuffles the rows already assigned.

    Args:
        qa_rows: Rows from every ``synthetic_qa`` partition.
        out_dir: Receives ``train.jsonl`` and ``validation.jsonl`` (``messages`` + provenance)
            and, with a detector, ``contamination.json`` (every finding, both texts).
        validation_fraction: Share of questions held out.
        seed: Salt of the split hash.
        system_prompt: Optional system message for every conversation.
        detect_contamination: Finds the deduplicated rows that resemble benchmark questions
            (e.g. :func:`ragft_dagster.data.contamination.find_contamination` with its settings).
        remove_contaminated: Drop the flagged rows from both splits; otherwise keep them (they
            are still listed in ``contamination.json``).
        quality_filter: Drops malformed, ungrounded and near-duplicate rows
            (:func:`ragft_dagster.data.quality.filter_rows` with its settings); every rejected
            row is written to ``quality.json`` with its reason.
        add_context: Gives each kept row the retrieved chunks its prompt shows (training with
            retrieval); the user turn is then the context block and the question, as
            :func:`ragft_dagster.prompts.ask_messages` builds it for ``ragft ask`` and the RAG
            cells.
        context_template: ``evaluation.context_template``.
        generic_rows: Generic instruction pairs, in the order they are drawn; after the
            filters, ``generic_share`` of the training rows are taken from them (as many as
            there are), shown without context.

    Returns:
        Counts for metadata.
    """
    seen: set[tuple[str, str]] = set()
    unique: list[dict[str, Any]] = []
    duplicates = 0
    for row in sorted(qa_rows, key=lambda r: (r["doc"], r["id"])):
        key = (fold(row["question"]), fold(row["answer"]))
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        unique.append(row)
    quality: dict[str, Any] = {}
    if quality_filter is not None:
        unique, rejections, figures = quality_filter(unique)
        quality = {f"quality_{k}": v for k, v in figures.items()}
        report = {**figures, "rejected_rows": [r.to_dict() for r in rejections]}
        atomic_write_text(
            Path(out_dir) / QUALITY_FILE, json.dumps(report, indent=1, ensure_ascii=False)
        )
    contamination: dict[str, Any] = {}
    if detect_contamination is not None:
        findings = detect_contamination(unique)
        flagged = {f.train_id for f in findings}
        contamination = {**summarise(findings), "contaminated_rows_removed": 0}
        if remove_contaminated:
            unique = [r for r in unique if r["id"] not in flagged]
            contamination["contaminated_rows_removed"] = len(flagged)
        report = {
            "removed": remove_contaminated,
            **contamination,
            "findings": [f.to_dict() for f in findings],
        }
        atomic_write_text(
            Path(out_dir) / CONTAMINATION_FILE, json.dumps(report, indent=1, ensure_ascii=False)
        )
    context: dict[str, Any] = {}
    if add_context is not None:
        unique, figures = add_context(unique)
        context = {f"context_{k}": v for k, v in figures.items()}
    generic: dict[str, Any] = {}
    if generic_rows and generic_share > 0:
        wanted = round(generic_share / (1 - generic_share) * len(unique))
        mixed = generic_rows[:wanted]
        unique = unique + mixed
        generic = {"generic_rows": len(mixed), "generic_rows_wanted": wanted}
    train: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    for row in unique:
        shown = row.get("context") or []
        messages = ask_messages(
            row["question"], shown, system_prompt=system_prompt, context_template=context_template
        )
        messages.append({"role": "assistant", "content": row["answer"]})
        record = {
            "messages": messages,
            "question": row["question"],  # the bare question (the prompt may show context)
            "id": row["id"],
            "chunk_id": row["chunk_id"],
            "doc": row["doc"],
            "generator": row["generator"],
        }
        if "context" in row:
            record["context_ids"] = [c["id"] for c in shown]
        if row.get("source"):
            record["source"] = row["source"]  # your own Q&A: file and line, or dataset and row
        h = hashlib.sha256(f"{seed}\n{fold(row['question'])}".encode()).digest()
        bucket = int.from_bytes(h[:8], "big") / 2**64
        (validation if bucket < validation_fraction else train).append(record)
    if not train:
        dropped = ", ".join(
            f"{k.removeprefix('quality_rejected_')} {v}"
            for k, v in quality.items()
            if k.startswith("quality_rejected_") and v
        )
        raise EmptyDataset(
            f"no training rows left: {len(qa_rows)} Q&A rows in, {duplicates} exact "
            f"duplicates, quality filter dropped {quality.get('quality_rejected', 0)}"
            + (f" ({dropped})" if dropped else "")
            + f", contamination removed {contamination.get('contaminated_rows_removed', 0)}, "
            f"validation took {len(validation)}. Check the generated Q&A, or loosen "
            "sft_dataset.quality (a null threshold turns its test off)"
        )
    write_jsonl(Path(out_dir) / "train.jsonl", train)
    write_jsonl(Path(out_dir) / "validation.jsonl", validation)
    return {
        "input_rows": len(qa_rows),
        "duplicates_removed": duplicates,
        **quality,
        **contamination,
        **context,
        **generic,
        "train_rows": len(train),
        "validation_rows": len(validation),
    }


def adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """What peft saved of a trained adapter's settings (``r``, ``lora_alpha``, the target
    modules...): the recipe's values with peft's defaults filled in."""
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))


def final_eval_loss(trainer: Any) -> float:
    """The validation loss of the trained model: the one the trainer logged at its last step
    (``eval_strategy: epoch`` evaluates there already), else a fresh evaluation."""
    state = trainer.state
    logged = [e for e in state.log_history if "eval_loss" in e]
    if logged and logged[-1].get("step") == state.global_step:
        return float(logged[-1]["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


def train_lora(
    model_dir: str,
    dataset_dir: Path,
    out_dir: Path,
    *,
    lora: dict[str, Any],
    args: dict[str, Any],
    compute_args: dict[str, Any],
    dtype: Any = None,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    quantization: dict[str, Any] | None = None,
    checkpoints: Path | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """LoRA SFT on the chat dataset with assistant-only loss; saves a PEFT adapter.

    Runs the same under ``torchrun``/``accelerate`` (one process per rank): only rank 0 saves.

    Args:
        model_dir: The model to adapt (the DPO model).
        dataset_dir: Folder with ``train.jsonl`` and ``validation.jsonl``.
        out_dir: Receives the adapter (``adapter_config.json``, weights) and the tokenizer.
        lora: peft ``LoraConfig`` fields from the recipe.
        args: trl ``SFTConfig`` fields from the recipe.
        compute_args: Precision/device fields from the compute profile (recipe args win).
        dtype: Torch dtype for the base weights.
        chat_template: Template for tokenizers without one.
        trust_remote_code: Only when the recipe opts in.
        quantization: transformers ``BitsAndBytesConfig`` fields (4-bit QLoRA); None = off.
        checkpoints: Persistent folder for the trainer's checkpoints (resumed from when it
            holds one); None = checkpoints, if any, go to a scratch folder.
        callbacks: transformers ``TrainerCallback``s (e.g. progress to the run log).

    Returns:
        Metrics for metadata: losses, steps, parameter counts, the step resumed from.
    """
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    use_dense_logprobs_on_cpu()  # trl's fused LM head is slow on a CPU; other devices keep it

    tokenizer = load_tokenizer(model_dir, chat_template, trust_remote_code)
    on_gpu = not compute_args.get("use_cpu", False)
    model = load_trainable_model(
        model_dir, dtype, trust_remote_code, quantization, args, on_gpu=on_gpu
    )
    files = {"train": str(Path(dataset_dir) / "train.jsonl")}
    has_validation = (Path(dataset_dir) / "validation.jsonl").stat().st_size > 0
    if has_validation:
        files["validation"] = str(Path(dataset_dir) / "validation.jsonl")
    data = load_dataset("json", data_files=files)
    data = data.select_columns(["messages"])
    with training_dir(out_dir, checkpoints) as run_dir, upstream_deprecations_silenced():
        config = SFTConfig(
            **{
                **compute_args,
                "assistant_only_loss": True,
                "save_strategy": "no",
                "logging_steps": 1,
                "eval_strategy": "epoch" if has_validation else "no",
                **args,
                **checkpointing_args(args),
            },
            output_dir=str(run_dir),
        )
        trainer = SFTTrainer(
            model=model,
            callbacks=callbacks,
            args=config,
            train_dataset=data["train"],
            eval_dataset=data["validation"] if has_validation else None,
            processing_class=tokenizer,
            peft_config=LoraConfig(task_type="CAUSAL_LM", **lora),
        )
        total, trainable = count_parameters(trainer.model)
        result, resumed_from = train_resuming(trainer, checkpoints)
        eval_loss = final_eval_loss(trainer) if has_validation else float("nan")
    if trainer.is_world_process_zero():
        trained: Any = trainer.model
        trained.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    losses = [float(e["loss"]) for e in loss_history(trainer)]
    return {
        "train_loss": float(result.training_loss),
        "final_loss": losses[-1] if losses else float(result.training_loss),
        "eval_loss": float(eval_loss),
        "steps": int(result.global_step),
        "resumed_from_step": resumed_from,
        "processes": int(trainer.args.world_size),
        "train_rows": len(data["train"]),
        "parameters": total,
        "trainable_parameters": trainable,
        "loss_curve": losses,
    }
