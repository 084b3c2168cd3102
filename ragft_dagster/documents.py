"""The docs folder as a set of documents with content hashes (partition keys = relative paths)."""

from __future__ import annotations

import hashlib
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
            found[path.relative_to(docs_dir).as_posix()] = hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
    return found
