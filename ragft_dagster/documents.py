"""The docs folder as a set of documents with content hashes (partition keys = relative paths)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path


def scan_documents(docs_dir: Path, pattern: str = "**/*.md") -> dict[str, str]:
    """Map each document key (path relative to ``docs_dir``, '/'-separated) to its sha256.

    Raises:
        FileNotFoundError: When the docs folder does not exist.
    """
    docs_dir = Path(docs_dir)
    if not docs_dir.is_dir():
        raise FileNotFoundError(
            f"docs folder {docs_dir} does not exist; fix docs.path in the recipe"
        )
    found = {}
    for path in sorted(docs_dir.glob(pattern)):
        if path.is_file():
            found[path.relative_to(docs_dir).as_posix()] = content_hash(path.read_bytes())
    return found


CONTENT_HASH_KEY = "content_sha256"
"""Metadata key under which ``doc_chunks`` records the hash of the document it chunked."""


def content_hash(data: bytes) -> str:
    """The hash :func:`scan_documents` gives a document with these bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DocumentChanges:
    """How the docs folder differs from the document partitions and what they were built from."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def to_run(self) -> list[str]:
        """Documents whose chunks and Q&A must be (re)built, in key order."""
        return sorted(self.added + self.changed)

    def summary(self) -> str:
        return (
            f"+{len(self.added)} new, ~{len(self.changed)} changed, -{len(self.removed)} removed, "
            f"{len(self.unchanged)} unchanged"
        )


def plan_document_changes(
    current: dict[str, str],
    partitions: Iterable[str],
    built_from: Callable[[str], str | None],
) -> DocumentChanges:
    """Compare the docs folder with the partitions.

    Args:
        current: :func:`scan_documents` of the docs folder.
        partitions: The document partition keys that exist.
        built_from: The content hash an existing partition was last built from (None: never).

    Returns:
        New keys (no partition yet), changed keys (built from other content, or never built),
        removed keys (a partition without a file) and unchanged keys.
    """
    existing = set(partitions)
    added = sorted(set(current) - existing)
    removed = sorted(existing - set(current))
    changed: list[str] = []
    unchanged: list[str] = []
    for key in sorted(set(current) & existing):
        (unchanged if built_from(key) == current[key] else changed).append(key)
    return DocumentChanges(added, changed, removed, unchanged)


def purge_document_files(paths_of: Callable[[str], list[Path]], keys: list[str]) -> int:
    """Delete the files removed documents own (chunks, Q&A). Returns how many were deleted."""
    deleted = 0
    for key in keys:
        for path in paths_of(key):
            if path.is_file():
                path.unlink()
                deleted += 1
    return deleted
