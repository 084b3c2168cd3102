"""Markdown-aware chunking in the base model's tokenizer (Dagster-free).

A document is split at headings into sections (each keeps its heading path); a section longer
than ``chunk_size`` tokens is cut into windows of ``chunk_size`` tokens that overlap by
``chunk_overlap`` tokens. A chunk never spans two sections or two files, and its id is a hash of
its document and text, so ids are stable across runs and partitions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class DocumentError(ValueError):
    """A document that cannot be chunked; the message names the file."""


@dataclass
class Section:
    heading_path: list[str]
    text: str
    start: int  # character offset of the section body in the document


@dataclass
class Chunk:
    id: str
    doc: str
    heading_path: list[str]
    text: str
    n_tokens: int
    start_char: int
    end_char: int
    position: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunk_id(doc: str, text: str) -> str:
    """A content hash: the same text in the same document always gets the same id."""
    return hashlib.sha256(f"{doc}\n{text}".encode()).hexdigest()[:24]


def read_document(path: Path, doc_key: str) -> str:
    """Read a markdown document as UTF-8, with errors that say what to do."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(f"{doc_key}: document not found at {path} (was it deleted?)") from None
    if b"\x00" in raw[:8192]:
        raise DocumentError(
            f"{doc_key}: looks like a binary file, not markdown; remove it from "
            "the docs folder or narrow docs.glob"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{doc_key}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8"
        ) from None


def split_sections(text: str) -> list[Section]:
    """Split markdown at ATX headings outside code fences, tracking the heading path."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    body_start = 0
    in_fence = False
    offset = 0
    lines = text.splitlines(keepends=True)

    def close(end: int) -> None:
        body = text[body_start:end]
        if body.strip():
            sections.append(Section([h for _, h in path], body, body_start))

    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line.rstrip("\n"))
        if match:
            close(offset)
            level, title = len(match.group(1)), match.group(2).strip()
            path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
            body_start = offset  # the heading line stays in its section's text
        offset += len(line)
    close(len(text))
    return sections


def chunk_document(
    text: str, doc: str, tokenizer: Any, chunk_size: int = 300, chunk_overlap: int = 30
) -> list[Chunk]:
    """Chunk one markdown document.

    Args:
        text: The document.
        doc: Its key (path relative to the docs folder), stored on every chunk.
        tokenizer: A fast tokenizer (offsets are used to cut the original text exactly).
        chunk_size: Tokens per chunk.
        chunk_overlap: Tokens shared by consecutive windows of one section.

    Returns:
        Chunks in document order.
    """
    if chunk_overlap >= chunk_size:
        raise ValueError("chunk_overlap must be smaller than chunk_size")
    chunks: list[Chunk] = []
    step = chunk_size - chunk_overlap
    for section in split_sections(text):
        enc = tokenizer(section.text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        n = len(offsets)
        starts = [0] if n <= chunk_size else list(range(0, n - chunk_overlap, step))
        for s in starts:
            e = min(s + chunk_size, n)
            lo = offsets[s][0] if s > 0 else 0
            hi = offsets[e - 1][1] if e < n else len(section.text)
            piece = section.text[lo:hi].strip()
            if not piece:
                continue
            chunks.append(
                Chunk(
                    id=chunk_id(doc, piece),
                    doc=doc,
                    heading_path=section.heading_path,
                    text=piece,
                    n_tokens=e - s,
                    start_char=section.start + lo,
                    end_char=section.start + hi,
                    position=len(chunks),
                )
            )
    # Identical text twice in one document is one chunk (same id, same content).
    unique: dict[str, Chunk] = {}
    for c in chunks:
        unique.setdefault(c.id, c)
    return list(unique.values())
