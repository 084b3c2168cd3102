"""Multiple-choice benchmark: loading, prompting and log-likelihood scoring (Dagster-free).

Local models are scored like lm-evaluation-harness's ``acc``: the log-probability of each answer
letter as the next token after the chat prompt, renormalised over A-D. The raw probability mass
on A-D is recorded too: a model that puts little mass there is not really answering.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LETTERS = ("A", "B", "C", "D")
COLUMNS = ("question", "a", "b", "c", "d", "correct")


class McqError(ValueError):
    """A benchmark file problem; names the file, row and column and the fix."""


@dataclass(frozen=True)
class Question:
    id: str
    row: int
    question: str
    options: tuple[str, str, str, str]
    correct: str


def load_questions(path: Path) -> list[Question]:
    """Read ``question,a,b,c,d,correct`` (options may span lines) with row-level errors.

    Args:
        path: The CSV file.

    Returns:
        Questions with content-hash ids.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise McqError(
            f"{path}: not valid UTF-8 (byte {exc.start}); re-save the CSV as UTF-8"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise McqError(
            f"{path}: missing column(s) {missing}; the header must be {','.join(COLUMNS)}"
        )
    reader.fieldnames = header
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for rec in reader:
        row = reader.line_num  # physical line where the record ends
        n = len(questions) + 1
        where = f"{path}: row {n} (line {row})"
        values = {c: (rec.get(c) or "").strip() for c in COLUMNS}
        for col in COLUMNS:
            if not values[col]:
                raise McqError(f"{where}: column '{col}' is empty; fill it in or remove the row")
        correct = values["correct"].upper()
        if correct not in LETTERS:
            raise McqError(
                f"{where}: column 'correct' is {values['correct']!r}; it must be one of A, B, C, D"
            )
        key = " ".join(values["question"].lower().split())
        if key in seen:
            raise McqError(f"{where}: duplicate of row {seen[key]}; remove one of them")
        seen[key] = n
        qid = hashlib.sha256(key.encode()).hexdigest()[:16]
        questions.append(
            Question(
                qid,
                n,
                values["question"],
                (values["a"], values["b"], values["c"], values["d"]),
                correct,
            )
        )
    if not questions:
        raise McqError(f"{path}: no questions")
    return questions


def build_messages(
    question: Question,
    system_prompt: str,
    user_template: str,
    context_template: str,
    context: str | None,
) -> list[dict[str, str]]:
    """The same prompt for every model; ``context`` is None for closed-book."""
    block = context_template.replace("{context}", context) if context else ""
    a, b, c, d = question.options
    user = (
        user_template.replace("{context_block}", block)
        .replace("{question}", question.question)
        .replace("{a}", a)
        .replace("{b}", b)
        .replace("{c}", c)
        .replace("{d}", d)
    )
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def letter_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The token each letter becomes when it directly follows ``prompt`` ("A" vs " A")."""
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in LETTERS:
        full = tokenizer(prompt + letter, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise McqError(
                f"tokenizer merges the answer letter {letter!r} into the prompt; "
                "end the user template with a separator such as 'Answer:'"
            )
        ids.append(full[len(base)])
    return ids


def score_letters(
    model: Any, tokenizer: Any, prompts: list[str], batch_size: int = 8, device: str = "cpu"
) -> list[dict[str, Any]]:
    """Next-token log-probabilities of A-D after each prompt, batched with left padding.

    Args:
        model: A causal LM (eval mode is set here).
        tokenizer: Its tokenizer.
        prompts: Fully rendered prompts (chat template applied, generation prompt added).
        batch_size: Prompts per forward pass.
        device: Where the model lives.

    Returns:
        Per prompt: ``logprobs`` (A-D), ``probs`` renormalised over A-D, ``mass`` on A-D and
        the ``predicted`` letter.
    """
    import torch

    model.eval()
    tokenizer.padding_side = "left"
    out: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        letter_ids = [letter_token_ids(tokenizer, p) for p in batch]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            logits = model(**enc).logits[:, -1, :].float()
        logp = torch.log_softmax(logits, dim=-1)
        for row, ids in enumerate(letter_ids):
            lps = [float(logp[row, i]) for i in ids]
            top = max(lps)
            norm = sum(math.exp(lp - top) for lp in lps)
            probs = [math.exp(lp - top) / norm for lp in lps]
            out.append(
                {
                    "logprobs": dict(zip(LETTERS, lps, strict=True)),
                    "probs": dict(zip(LETTERS, probs, strict=True)),
                    "mass": sum(math.exp(lp) for lp in lps),
                    "predicted": LETTERS[max(range(4), key=lambda i: lps[i])],
                }
            )
    return out
