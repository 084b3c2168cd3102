"""The docs folder as a set of documents with content hashes (partition keys = relative paths).

Discovery never hangs and never drops a file silently: a symlink loop, a broken link, a FIFO,
an unreadable file or a file of a type ragft does not read (an image, a ``.doc``) matching the
glob is skipped with a reason that names it and says what to do, and a symlinked folder (which
the recursive glob does not enter, so a link back to an ancestor cannot loop) is reported the
same way. A skipped document that already has a partition keeps it
and its files: an unreadable file is not a removed one.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragft_dagster.data.convert import document_format, unsupported_reason
from ragft_dagster.text import content_hash


@dataclass(frozen=True)
class DocumentScan:
    """What :func:`discover_documents` found below the docs folder."""

    documents: dict[str, str]
    """Document key (path relative to the folder, '/'-separated) -> sha256 of its bytes."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Key of each path that matched but cannot be a document -> why, and what to do."""
    stats: dict[str, list[Any]] = field(default_factory=dict)
    """Document key -> [size, mtime_ns, ctime_ns, inode, sha256]: what the next scan passes as
    ``known`` so that it reads only the files that changed."""
    read: int = 0
    """How many files this scan read (the others' hashes came from ``known``)."""
    excluded: dict[str, int] = field(default_factory=dict)
    """What ``exclude`` kept out though the glob matched: each top-most excluded path below the
    folder (``node_modules/``, ``.draft.md``) -> how many files below it matched."""

    def excluded_line(self, docs_dir: Path | str) -> str | None:
        """``"<docs>: skipped 13 files as not documentation (docs.exclude): node_modules/ (12
        files), .draft.md"``, or None when nothing was excluded."""
        if not self.excluded:
            return None
        shown = [f"{n} ({c} files)" if c > 1 else n for n, c in sorted(self.excluded.items())]
        more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
        return (
            f"{Path(docs_dir).as_posix().rstrip('/')}: skipped {sum(self.excluded.values())} "
            f"file(s) as not documentation (docs.exclude): {', '.join(shown[:8])}{more}"
        )


def _file_identity(info: os.stat_result) -> list[int]:
    # ctime changes on every write and no tool can set it back, so a file whose size, mtime,
    # ctime and inode are unchanged has unchanged bytes.
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _excluded_path(key: str, exclude: tuple[str, ...]) -> str | None:
    """The top-most path of ``key`` whose last component matches a pattern of ``exclude``
    (fnmatch; ``node_modules/`` for a folder, the key itself for a file), or None."""
    parts = key.split("/")
    for depth, part in enumerate(parts, 1):
        if any(fnmatch.fnmatchcase(part, pattern) for pattern in exclude):
            return "/".join(parts[:depth]) + ("/" if depth < len(parts) else "")
    return None


def discover_documents(
    docs_dir: Path,
    pattern: str = "**/*",
    known: Mapping[str, list[Any]] | None = None,
    exclude: Iterable[str] = (),
) -> DocumentScan:
    """Hash every document below ``docs_dir`` and say which matching paths were skipped.

    Args:
        docs_dir: The recipe's docs folder (``docs.path``).
        pattern: Which files are documents (``docs.glob``); of those, a file whose type
            ragft does not read (:data:`~ragft_dagster.data.convert.FORMATS`) is skipped,
            naming it.
        known: :attr:`DocumentScan.stats` of an earlier scan: a file whose size, mtime, ctime
            and inode are unchanged keeps its hash without being read.
        exclude: Path components that are not documentation (``docs.exclude``): a file whose
            path below ``docs_dir`` has one is left out (listed in ``excluded``).

    Returns:
        The documents with their content hashes, and the skipped paths with their reasons.

    Raises:
        FileNotFoundError: When the docs folder does not exist (naming ``docs.path``).
    """
    docs_dir = Path(docs_dir)
    if not docs_dir.is_dir():
        what = "is not a folder" if docs_dir.exists() else "does not exist"
        raise FileNotFoundError(f"docs folder {docs_dir} {what}; fix docs.path in the recipe")
    known = known or {}
    found: dict[str, str] = {}
    skipped: dict[str, str] = {}
    stats: dict[str, list[Any]] = {}
    read = 0
    exclude = tuple(exclude)
    excluded: dict[str, int] = {}
    for path in sorted(docs_dir.glob(pattern)):
        key = path.relative_to(docs_dir).as_posix()
        out = _excluded_path(key, exclude) if exclude else None
        if out is not None:
            if path.is_file():
                excluded[out] = excluded.get(out, 0) + 1
            continue
        info = _stat_document(path)
        if isinstance(info, str):
            if info:
                skipped[key] = info
            continue  # "": a folder whose name matches the glob: its files are visited alone
        if document_format(path.name) is None:
            skipped[key] = unsupported_reason(path.name)
            continue
        identity = _file_identity(info)
        before = known.get(key)
        if before is not None and list(before[:4]) == identity:
            found[key] = before[4]
        else:
            try:
                found[key] = content_hash(path.read_bytes())
                read += 1
            except OSError as exc:
                skipped[key] = f"cannot be read ({exc.strerror}); fix its permissions or remove it"
                continue
        stats[key] = [*identity, found[key]]
    if "**" in pattern:
        skipped.update(_symlinked_folders(docs_dir, exclude))
    return DocumentScan(found, skipped, stats, read, excluded)


def scan_documents(docs_dir: Path, pattern: str = "**/*") -> dict[str, str]:
    """Map each document key (path relative to ``docs_dir``, '/'-separated) to its sha256
    (:func:`discover_documents` without the skipped paths).

    Raises:
        FileNotFoundError: When the docs folder does not exist.
    """
    return discover_documents(docs_dir, pattern).documents


def _stat_document(path: Path) -> os.stat_result | str:
    """The stat of a regular file (or a link to one), "" for a folder, else why it is
    skipped."""
    try:
        info = path.stat()  # follows links: ELOOP for a loop, ENOENT for a broken one
    except OSError as exc:
        if exc.errno == errno.ELOOP and path.is_symlink():
            return (
                f"symlink loop ({path.name} -> {os.readlink(path)} -> ...); point the link at a "
                "real file or delete it"
            )
        if path.is_symlink():
            return (
                f"broken symlink to {os.readlink(path)} (nothing there); fix the link or delete it"
            )
        return f"cannot be read ({exc.strerror}); fix its permissions or remove it"
    if stat.S_ISDIR(info.st_mode):
        return ""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, socket or device); remove it from the docs folder"
    return info


def _symlinked_folders(docs_dir: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Symlinks to folders below ``docs_dir``: the recursive glob does not enter them (so a link
    to an ancestor cannot loop), and their files are not documents. Says so, naming each one."""
    found: dict[str, str] = {}
    for top, dirs, _files in os.walk(docs_dir, followlinks=False):
        dirs[:] = [d for d in dirs if not any(fnmatch.fnmatchcase(d, p) for p in exclude)]
        for name in dirs:
            link = Path(top) / name
            if link.is_symlink():
                key = link.relative_to(docs_dir).as_posix() + "/"
                found[key] = (
                    f"symlinked folder (-> {os.readlink(link)}) not followed: its files are not "
                    "documents; copy them into the docs folder, or point docs.path at the real "
                    "folder"
                )
    return found


CONTENT_HASH_KEY = "content_sha256"
"""Metadata key under which ``doc_chunks`` records the hash of the document it chunked."""


@dataclass(frozen=True)
class DocumentChanges:
    """How the docs folder differs from the document partitions and what they were built from."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Paths that match the glob but cannot be documents -> why (see :class:`DocumentScan`)."""

    @property
    def to_run(self) -> list[str]:
        """Documents whose chunks and Q&A must be (re)built, in key order."""
        return sorted(self.added + self.changed)

    def summary(self) -> str:
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (
            f"+{len(self.added)} new, ~{len(self.changed)} changed, -{len(self.removed)} removed, "
            f"{len(self.unchanged)} unchanged{skipped}"
        )

    def warnings(self, docs_dir: Path | str) -> list[str]:
        """One line per skipped path, naming it below ``docs_dir`` and what to do."""
        # joined as text: a folder's key keeps its trailing '/'
        folder = Path(docs_dir).as_posix().rstrip("/")
        return [f"{folder}/{key}: {why}" for key, why in sorted(self.skipped.items())]


def plan_document_changes(
    current: dict[str, str],
    partitions: Iterable[str],
    built_from: Callable[[str], str | None],
    skipped: Mapping[str, str] | None = None,
) -> DocumentChanges:
    """Compare the docs folder with the partitions.

    Args:
        current: :func:`scan_documents` of the docs folder.
        partitions: The document partition keys that exist.
        built_from: The content hash an existing partition was last built from (None: never).
        skipped: :attr:`DocumentScan.skipped`: a partition whose file is there but unreadable
            (a broken link, a loop, no permission) is not removed, so its chunks and Q&A stay.

    Returns:
        New keys (no partition yet), changed keys (built from other content, or never built),
        removed keys (a partition without a file), unchanged keys and the skipped paths.
    """
    skipped = dict(skipped or {})
    existing = set(partitions)
    added = sorted(set(current) - existing)
    removed = sorted(existing - set(current) - set(skipped))
    changed: list[str] = []
    unchanged: list[str] = []
    for key in sorted(set(current) & existing):
        (unchanged if built_from(key) == current[key] else changed).append(key)
    return DocumentChanges(added, changed, removed, unchanged, skipped)


def purge_document_files(paths_of: Callable[[str], list[Path]], keys: list[str]) -> int:
    """Delete the files removed documents own (chunks, Q&A). Returns how many were deleted."""
    deleted = 0
    for key in keys:
        for path in paths_of(key):
            if path.is_file():
                path.unlink()
                deleted += 1
    return deleted
