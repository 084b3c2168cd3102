"""Question/answer pairs a team already has (support tickets, FAQs, a released Q&A set), read
for the SFT dataset beside or instead of the generated ones (Dagster-free).

A source is a local CSV, JSON-lines or parquet file, or a hub dataset id, with the fields
``question`` and ``answer`` and optionally ``doc`` (the document the pair is about, a path
under the docs folder). Every row keeps where it came from (``source``: ``faq.csv:12`` for a
file's line, ``org/name[train][34]`` for a dataset's row) and goes through the quality filter
and the contamination check like a generated row. A row naming a document is grounded on that
document's chunk that shares most words with its answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import read_utf8_file
from ragft_dagster.tables import read_csv
from ragft_dagster.text import content_words

GENERATOR = "own"
LOCAL_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


class OwnQaError(ValueError):
    """A Q&A file or row that cannot be used; names the file, line (or row) and field."""


def _problem(rec: Any, field: str, required: bool) -> str | None:
    if not isinstance(rec, dict):
        return f"is not an object ({type(rec).__name__})"
    if field not in rec or rec[field] is None:
        if not required:
            return None
        present = ", ".join(sorted(map(str, rec))) or "none"
        return f"field '{field}' is missing (the row has: {present})"
    value = rec[field]
    if not isinstance(value, str):
        return f"field '{field}' is {type(value).__name__}, not a string"
    if required and not value.strip():
        return f"field '{field}' is empty"
    return None


def _local_rows(path: Path, key: str) -> tuple[list[tuple[str, Any]], str]:
    """(location, record) of every row of a local file, and the unit named in errors."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise OwnQaError(f"{path}: not a readable parquet file ({exc}); fix {key}") from None
        return [(f"row {i}", rec) for i, rec in enumerate(table.to_pylist(), start=1)], "row"
    if path.suffix == ".csv":
        table = read_csv(path, OwnQaError, what="Q&A file", key=key, header="question,answer[,doc]")
        # Fields are checked per record below, as for JSON lines and parquet; a row's place is
        # its first line (a quoted answer may span lines).
        return [(f"line {row.first_line}", row.values) for row in table.rows], "line"
    text = read_utf8_file(path, OwnQaError, what="Q&A file", key=key, expected=path.suffix[1:])
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OwnQaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return [(f"item {i}", rec) for i, rec in enumerate(data, start=1)], "item"
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise OwnQaError(
                f"{path}: line {n}: not a JSON object ({exc.msg}); write one "
                '{"question": ..., "answer": ...} object a line'
            ) from None
    return rows, "line"


def load_own_qa(
    source: str,
    *,
    root: Path,
    key: str,
    split: str = "train",
    max_rows: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of one source, ready for the SFT dataset.

    Args:
        source: A path relative to the recipe (``.csv``, ``.jsonl``, ``.json``, ``.parquet``)
            or a hub dataset id (read with ``datasets``; map it to a local copy with the
            profile's ``hub_mirror``).
        root: The recipe's folder.
        key: The recipe key naming the source, for messages.
        split: A hub dataset's split.
        max_rows: Keep the first N rows.

    Returns:
        Rows with ``id``, ``question``, ``answer``, ``doc`` ("" when not given), ``chunk_id``
        (None), ``generator`` (``own``) and ``source`` (where the row came from).

    Raises:
        OwnQaError: Naming the file, the line or row and the field, and what to do.
    """
    path = (root / source).resolve()
    if source.endswith(LOCAL_SUFFIXES) or source.startswith((".", "/")):
        if not path.is_file():
            raise OwnQaError(f"{key}: {path} not found")
        raw, _ = _local_rows(path, key)
        label = source
    else:
        from datasets import load_dataset

        try:
            data = load_dataset(source, split=split)
        except Exception as exc:  # datasets raises many kinds for a missing dataset
            raise OwnQaError(
                f"{key}: the dataset {source!r} ({split}) could not be read ({exc}); map it to "
                "a local file with the profile's hub_mirror, or name a local file"
            ) from None
        raw = [(f"row {i}", rec) for i, rec in enumerate(data, start=1)]
        label = f"{source}[{split}]"
    rows = []
    for where, rec in raw[:max_rows] if max_rows else raw:
        for field, required in (("question", True), ("answer", True), ("doc", False)):
            problem = _problem(rec, field, required)
            if problem:
                raise OwnQaError(
                    f"{label}: {where}: {problem}; every row needs non-empty question and "
                    "answer strings (doc optional)"
                )
        place = f"{label}:{where.split()[-1]}"
        rows.append(
            {
                "id": hashlib.sha256(f"{place}\n{rec['question']}".encode()).hexdigest()[:16],
                "question": rec["question"].strip(),
                "answer": rec["answer"].strip(),
                "doc": (rec.get("doc") or "").strip(),
                "chunk_id": None,
                "generator": GENERATOR,
                "source": place,
            }
        )
    if not rows:
        raise OwnQaError(f"{label}: no rows; add rows with question and answer ({key})")
    return rows


def ground_on_documents(
    rows: list[dict[str, Any]], chunks_by_doc: dict[str, list[dict[str, Any]]]
) -> int:
    """Give each row that names a known document the chunk of it sharing most content words
    with its answer (in place); returns how many rows named a document not in the docs."""
    unknown = 0
    for row in rows:
        if not row["doc"]:
            continue
        chunks = chunks_by_doc.get(row["doc"])
        if not chunks:
            unknown += 1
            continue
        said = content_words(row["answer"])
        best = max(chunks, key=lambda c: len(said & content_words(c["text"])))
        row["chunk_id"] = best["id"]
    return unknown
