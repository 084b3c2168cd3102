"""The chat messages a question becomes (Dagster-free, no imports of ours): the one format the
SFT rows are trained on and ``ragft ask`` and ``open_scores`` ask in, so a question is put to
the model exactly as it learnt to read one."""

from __future__ import annotations

from typing import Any


def ask_messages(
    question: str,
    hits: list[dict[str, Any]],
    *,
    system_prompt: str | None,
    context_template: str,
) -> list[dict[str, str]]:
    """The chat messages of a question: the training prompt, with the benchmark's context block.

    Args:
        question: The user's question.
        hits: Retrieved chunks (empty closed-book).
        system_prompt: ``sft_dataset.system_prompt`` (the model was trained with it), or None.
        context_template: ``evaluation.context_template`` (``{context}`` = chunks joined by a
            blank line, as in :func:`ragft_dagster.evaluation.scoring.question_messages`).

    Returns:
        System (when given) and user messages.
    """
    block = ""
    if hits:
        block = context_template.replace("{context}", "\n\n".join(h["text"] for h in hits))
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": block + question}]
