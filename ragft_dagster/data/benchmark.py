"""The benchmark file: its rows as :class:`Question` objects (Dagster-free).

A multiple-choice CSV (``question, a, b, c, d, correct`` and optional ``source``/``category``)
read with :func:`ragft_dagster.tables.read_csv`'s one rule set: every bad row named with its
line, options that carry their letter ("A. ...") stripped, each question's id a content hash.
Scoring lives in :mod:`ragft_dagster.evaluation.mcq`; the decontamination of training data
(:mod:`ragft_dagster.data.contamination`) reads the same questions from here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragft_dagster.tables import read_csv
from ragft_dagster.text import fold

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
    source: str | None = None
    """The document that answers it (optional ``source`` column), to locate its chunk."""
    letter_prefixed: bool = False
    """Its options were written with their letters (``A. ...``), stripped when read."""
    category: str | None = None
    """Its group in a set scored per category (optional ``category`` column, e.g. the general
    set's ``arithmetic``)."""


def load_questions(path: Path) -> list[Question]:
    """Read ``question,a,b,c,d,correct`` (options may span lines) with row-level errors.

    The file follows the project's CSV rules (:mod:`ragft_dagster.tables`: a row with more
    values than the header or too few, broken quoting and a duplicate column are errors). Extra
    columns (the optional ``source`` and ``category``, notes) are allowed; an empty cell, a
    ``correct`` outside A-D and a duplicate question are errors naming the row, its line and
    the column. Options written with their own letters (``A. ...``, ``A) ...``, ``(A) ...``,
    ``A: ...``, every option of the row) are read without them (``letter_prefixed``); a row
    where only some options carry one is an error. ``correct`` may also be given as the text
    of the correct option.

    Args:
        path: The CSV file.

    Returns:
        Questions with content-hash ids.

    Raises:
        McqError: Naming the file, the row (and its line) and the column, and the fix.
    """
    path = Path(path)
    table = read_csv(
        path,
        McqError,
        what="benchmark file",
        key="evaluation.questions",
        header=",".join(COLUMNS),
        required=COLUMNS,
        value_noun="a question or option",
    )
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for row in table.rows:
        n = row.number
        where = f"{path}: row {n} ({row.lines})"
        values = row.values
        for col in COLUMNS:
            if not values[col]:
                raise McqError(f"{where}: column '{col}' is empty; fill it in or remove the row")
        options = (values["a"], values["b"], values["c"], values["d"])
        prefixes = [_letter_prefix(o) for o in options]
        prefixed = prefixes == list(LETTERS)
        if prefixed:
            # "A. To send..." (the published benchmark's format): the prompt writes the letters
            # itself, and the option-text metrics must not score "A." as part of the answer.
            options = tuple(_strip_letter_prefix(o) for o in options)  # type: ignore[assignment]
        elif any(prefixes):
            carried = [
                f"{c} starts with {p + '.'!r}" for c, p in zip("abcd", prefixes, strict=True) if p
            ]
            raise McqError(
                f"{where}: some options carry an answer letter and some do not "
                f"({', '.join(carried)}); write every option of a row with its own letter "
                "(A. ... B. ... C. ... D. ...), or none"
            )
        correct = _correct_letter(values["correct"], options)
        if correct is None:
            raise McqError(
                f"{where}: column 'correct' is {values['correct']!r}; it must be one of A, B, C, "
                "D (or the text of one of the row's options)"
            )
        key = fold(values["question"])
        if key in seen:
            raise McqError(f"{where}: duplicate of row {seen[key]}; remove one of them")
        seen[key] = n
        qid = hashlib.sha256(key.encode()).hexdigest()[:16]
        questions.append(
            Question(
                qid,
                n,
                values["question"],
                options,
                correct,
                values.get("source") or None,
                prefixed,
                values.get("category") or None,
            )
        )
    if not questions:
        raise McqError(f"{path}: no questions below the header; add rows {','.join(COLUMNS)}")
    return questions


_PREFIX = re.compile(r"^(?:\(([A-Da-d])\)|([A-Da-d])[.):])\s+(?=\S)")


def _letter_prefix(option: str) -> str | None:
    """The answer letter an option starts with (``A.``, ``A)``, ``(A)``, ``A:`` and a space),
    upper case, or None."""
    m = _PREFIX.match(option)
    return (m.group(1) or m.group(2)).upper() if m else None


def _strip_letter_prefix(option: str) -> str:
    return _PREFIX.sub("", option, count=1)


def _correct_letter(value: str, options: Sequence[str]) -> str | None:
    """The ``correct`` column as a letter: ``B``, ``b``, ``B.``, ``(B)``, or the text of one
    of the options (with or without its letter); None when it is none of these."""
    letter = value.strip().strip("().:").strip().upper()
    if letter in LETTERS:
        return letter
    text = fold(_strip_letter_prefix(value) if _letter_prefix(value) else value)
    matches = [L for L, o in zip(LETTERS, options, strict=True) if fold(o) == text]
    if len(matches) == 1:
        return matches[0]
    prefix = _letter_prefix(value)
    return prefix if prefix and fold(options["ABCD".index(prefix)]) == text else None


def question_set(records: Sequence[Any]) -> str:
    """A short hash of which questions (content-hash ids) with which correct letters a cell was
    scored on: records (dicts with ``question_id``/``correct``) or :class:`Question` objects.
    Two cells are comparable exactly when their hashes are equal."""
    keys = sorted(
        f"{r['question_id']}:{r['correct']}" if isinstance(r, dict) else f"{r.id}:{r.correct}"
        for r in records
    )
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
