"""Every prompt the project builds, in one module with no imports of ours (Dagster-free): the
recipe's default prompt texts (Q&A generation, the pair judge, the open-answer judge's rubrics,
the benchmark's system prompt and templates), how a template is filled, and the chat messages
a question becomes, for the benchmark and for ``ragft ask`` (the one format the SFT rows are
trained on and ``ragft ask`` and ``open_scores`` ask in, so a question is put to the model
exactly as it learnt to read one).

A recipe may replace each text; ``config/recipe.py`` checks the placeholders each one needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PUBLISHED_SYSTEM_PROMPT = (
    "You are a helpful and careful assistant. You will use the given context to answer the "
    "multiple choice question. Only response 1 letter (A, B, C or D)."
)


DEFAULT_QA_PROMPT = """You write training data for a question-answering model about a team's \
technical documentation. From the documentation excerpt below, write {n} diverse questions that \
a user of this software might ask, each with a complete, correct answer that uses only facts \
stated in the excerpt.

Document: {document}
Section: {heading}

Excerpt:
\"\"\"
{context}
\"\"\"

Reply with JSON only: a list of objects with the keys "question" and "answer"."""


DEFAULT_USER_TEMPLATE = """{context_block}Question: {question}
A. {a}
B. {b}
C. {c}
D. {d}
Answer:"""


DEFAULT_JUDGE_PROMPT = """You check question/answer pairs written from technical documentation \
before they are used to train a model.

Documentation passage:
{context}

Question: {question}
Answer: {answer}

Rate the pair from 1 (worst) to 5 (best) on:
- faithfulness: every statement of the answer is supported by the passage;
- relevance: the question is one a user of this software would ask, and the answer answers it.

Reply with JSON only: {"faithfulness": <1-5>, "relevance": <1-5>, "reason": "<one sentence>"}"""


DEFAULT_CORRECTNESS_PROMPT = """You grade an answer to a question about technical \
documentation against the reference answer.

Question: {question}
Reference answer: {reference}
Answer to grade: {answer}

Rubric: the answer is correct when it states the fact the reference states (other wording,
extra detail or a longer explanation are fine); it is incorrect when it contradicts the
reference, misses its key fact, answers another question, or says it does not know.

Reply with JSON only: {"verdict": "correct" or "incorrect", "reason": "<one sentence>"}"""


DEFAULT_FAITHFULNESS_PROMPT = """You check whether an answer is supported by the documentation \
passages it was given.

Passages:
{context}

Question: {question}
Answer: {answer}

Rubric: the answer is faithful when every factual statement in it is stated in, or follows
directly from, the passages; it is unfaithful when any statement is absent from them or
contradicts them. An answer that only says the passages do not say is faithful.

Reply with JSON only: {"verdict": "faithful" or "unfaithful", "reason": "<one sentence>"}"""

DEFAULT_CONTEXT_TEMPLATE = "Context:\n{context}\n\n"


def render_prompt(template: str, **values: str) -> str:
    """Fill only the known placeholders, so braces elsewhere in a prompt (JSON examples) stay."""
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", value)
    return out


def mcq_messages(
    question: str,
    options: Sequence[str],
    *,
    system_prompt: str,
    user_template: str,
    context_template: str,
    context: str | None,
) -> list[dict[str, str]]:
    """The chat messages of a multiple-choice question, the same for every model.

    Args:
        question: The question text.
        options: The four options, A to D.
        system_prompt: ``evaluation.system_prompt``.
        user_template: ``evaluation.user_template`` ({context_block}, {question}, {a}-{d}).
        context_template: ``evaluation.context_template`` ({context}).
        context: The retrieved chunks joined by a blank line; None closed-book.
    """
    block = context_template.replace("{context}", context) if context else ""
    a, b, c, d = options
    user = render_prompt(user_template, context_block=block, question=question, a=a, b=b, c=c, d=d)
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


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
