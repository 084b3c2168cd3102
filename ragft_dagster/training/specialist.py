"""Deriving a specialist from a base model by a short full fine-tune on one skill (Dagster-free).

The published specialists (MetaMath-Mistral-7B) are full fine-tunes of the base on a skill set;
merging one back into its base with SLERP trades a little of each. This trains the same way,
with trl's ``SFTTrainer`` (assistant-only loss, every weight trainable), on rows from
:mod:`ragft_dagster.data.skills`, and saves a plain model folder that mergekit reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import scratch_dir
from ragft_dagster.models.refs import (
    checkpointing_args,
    count_parameters,
    load_tokenizer,
    loss_history,
    upstream_deprecations_silenced,
)
from ragft_dagster.training.dense_logprobs import use_dense_logprobs_on_cpu


def train_specialist(
    model_dir: str,
    rows: list[dict[str, Any]],
    out_dir: Path,
    *,
    args: dict[str, Any],
    compute_args: dict[str, Any],
    dtype: Any = None,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Full fine-tune of ``model_dir`` on skill rows; saves the model and its tokenizer.

    Args:
        model_dir: The base model folder.
        rows: Chat ``messages`` rows (:func:`ragft_dagster.data.skills.skill_rows`).
        out_dir: Receives the specialist (weights, config, tokenizer with chat template).
        args: trl ``SFTConfig`` fields from the recipe.
        compute_args: Precision/device fields from the compute profile (recipe args win).
        dtype: Torch dtype of the weights while training.
        chat_template: The recipe's chat template (the specialist speaks like its base).
        trust_remote_code: Only when the recipe opts in.
        callbacks: transformers ``TrainerCallback``s (progress to the run log).

    Returns:
        Metrics for metadata: losses, steps, rows, parameter count.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    use_dense_logprobs_on_cpu()  # trl's fused LM head is slow on a CPU; other devices keep it

    tokenizer = load_tokenizer(model_dir, chat_template, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code
    )
    with scratch_dir(out_dir) as scratch, upstream_deprecations_silenced():
        config = SFTConfig(
            **{
                **compute_args,
                "assistant_only_loss": True,
                "save_strategy": "no",
                "logging_steps": 1,
                **args,
                **checkpointing_args(args),
            },
            output_dir=str(scratch),
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        result = trainer.train()
    trained: Any = trainer.model
    # Training turns the KV cache off (gradient checkpointing); scoring and merging want it on.
    trained.config.use_cache = True
    trained.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    losses = [float(e["loss"]) for e in loss_history(trainer)]
    total, _ = count_parameters(trained)
    return {
        "train_loss": float(result.training_loss),
        "first_loss": losses[0] if losses else float("nan"),
        "final_loss": losses[-1] if losses else float(result.training_loss),
        "steps": int(result.global_step),
        "train_rows": len(rows),
        "parameters": total,
        "loss_curve": losses,
    }
