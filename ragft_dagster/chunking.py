"""Markdown-aware chunking in the base model's tokenizer (Dagster-free).

A document is split at headings into sections (each keeps its heading path); a section longer
than ``chunk_size`` tokens is cut into windows of ``chunk_size`` tokens that overlap by
``chunk_overlap`` tokens. A chunk never spans two sections or two files, and its id is a hash of
its document and text, so ids are stable across runs and partitions.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

# A UTF-8 byte order mark (Windows editors) must not hide the first heading.
_HEADING = re.compile(r"^\ufeff?(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")

# A section longer than this is tokenised in blocks cut at line ends. One tokenizer call over
# a whole section needs ~200 bytes of memory per character (a 5 MB section: 1.1 GB, so ~11 GB
# for 50 MB); in blocks a 50 MB section takes ~300 MB and about a minute on 2 cores. Shorter
# sections (all real ones: ~8,000 tokens) are tokenised whole, exactly as before.
BLOCK_CHARS = 32_768
_BLOCKS_PER_CALL = 32


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
    """Read a markdown document as UTF-8, with errors that name the file and say what to do.

    Raises:
        DocumentError: The file is gone, unreadable, binary (NUL bytes: an image, a PDF, UTF-16
            text) or not valid UTF-8; the message names the file, where, and the fix.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DocumentError(f"{doc_key}: document not found at {path} (was it deleted?)") from None
    except OSError as exc:  # a folder, no permission, a loop
        raise DocumentError(
            f"{doc_key}: cannot read {path} ({exc.strerror}); fix it or remove it from the docs "
            "folder"
        ) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError(
            f"{doc_key}: {path} is UTF-16 text; re-save it as UTF-8 (documents must be UTF-8)"
        )
    nul = raw.find(b"\x00", 0, 8192)
    if nul >= 0:
        raise DocumentError(
            f"{doc_key}: {path} looks like a binary file, not markdown (a NUL byte at offset "
            f"{nul}); remove it from the docs folder or narrow docs.glob in the recipe"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DocumentError(
            f"{doc_key}: {path} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}, line {line}); re-save the file as UTF-8"
        ) from None


def empty_document_warning(doc_key: str, text: str) -> str | None:
    """The warning for a document with no text (zero chunks, so no Q&A and nothing indexed),
    or None when it has some. An empty page is valid (a stub, a placeholder): its partition
    succeeds rather than blocking every downstream asset, and this says why it adds nothing."""
    if text.strip():
        return None
    what = "is empty" if not text else "holds only whitespace"
    return (
        f"{doc_key} {what}: 0 chunks, so no Q&A and nothing in the index; write the page or "
        "remove it from the docs folder"
    )


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
        starts_at, ends_at = _token_offsets(tokenizer, section.text)
        n = len(starts_at)
        starts = [0] if n <= chunk_size else list(range(0, n - chunk_overlap, step))
        for s in starts:
            e = min(s + chunk_size, n)
            lo = starts_at[s] if s > 0 else 0
            hi = ends_at[e - 1] if e < n else len(section.text)
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


def _blocks(text: str) -> Iterator[tuple[int, str]]:
    """``text`` in pieces of at most :data:`BLOCK_CHARS`, cut after a newline (else a space)
    where there is one in the second half of the block: (offset, piece)."""
    start = 0
    while start < len(text):
        end = start + BLOCK_CHARS
        if end < len(text):
            half = start + BLOCK_CHARS // 2
            cut = text.rfind("\n", half, end)
            if cut < 0:
                cut = text.rfind(" ", half, end)
            end = cut + 1 if cut >= 0 else end
        yield start, text[start:end]
        start = end


def _token_offsets(tokenizer: Any, text: str) -> tuple[Any, Any]:
    """(start, end) character offsets of every token of ``text``, as two sequences."""
    if len(text) <= BLOCK_CHARS:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pairs = enc["offset_mapping"]
        return [a for a, _ in pairs], [b for _, b in pairs]
    # Two machine-word arrays: 16 bytes a token, not a Python tuple each.
    starts, ends = array("q"), array("q")
    blocks = _blocks(text)
    while group := list(islice(blocks, _BLOCKS_PER_CALL)):
        enc = tokenizer(
            [piece for _, piece in group], add_special_tokens=False, return_offsets_mapping=True
        )
        for (offset, _), pairs in zip(group, enc["offset_mapping"], strict=True):
            starts.extend(offset + a for a, _ in pairs)
            ends.extend(offset + b for _, b in pairs)
    return starts, ends
