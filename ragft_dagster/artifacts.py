"""Artifact layout and atomic writes.

Every artifact (model, adapter, index, JSONL) is written to a temporary sibling and renamed into
place, so a failed or killed run never leaves half an artifact and the previous one stays intact.

A temporary sibling is locked (``flock``) by the process writing it: once that process is gone,
even by kill -9, the next write of the same artifact deletes what it left behind. Swaps take a
short lock on the parent directory, so two processes writing the same artifact at once replace
it one after the other (the last one wins) instead of tripping over each other's renames.
Where the filesystem refuses locks (some network mounts) writes go ahead unlocked, as before,
and nothing left behind is ever deleted.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _try_flock(fd: int, operation: int) -> bool | None:
    """flock ``fd``: True when locked, False when another holder has it (non-blocking only),
    None when this filesystem does not support locks."""
    try:
        fcntl.flock(fd, operation)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # EBADF/ENOLCK/EOPNOTSUPP: e.g. NFS, where flock on a directory fails


# Temporary directories this process is writing (atomic_dir): it holds their owner lock, and
# nobody else writes into them, so writes inside them need no lock (taking one would wait on
# this process's own owner lock forever).
_OWNED_TMP: set[str] = set()


@contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` itself (no lock file), held briefly around swaps."""
    if os.path.realpath(directory) in _OWNED_TMP:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        _try_flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _owner_gone(path: Path) -> bool:
    """Whether nobody holds the lock of a temporary sibling (its writer has exited)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is True
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _siblings(final: Path, kind: str) -> list[Path]:
    """``.<name>.<kind>-*`` next to ``final``, oldest first."""

    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:  # renamed into place by its writer meanwhile
            return 0.0

    return sorted(final.parent.glob(f".{glob.escape(final.name)}.{kind}-*"), key=mtime)


def recover_leftovers(final: Path) -> list[Path]:
    """Undo what a killed write of ``final`` left behind; call with the parent locked.

    A swap killed between its two renames left no ``final`` but its previous version under
    ``.<name>.old-*``: that is put back. Temporary siblings whose writer is gone and trash of
    finished swaps are deleted.

    Returns:
        The paths deleted or restored.
    """
    touched = []
    olds = _siblings(final, "old")
    if olds and not final.exists():
        os.rename(olds[-1], final)
        touched.append(olds.pop())
    for path in [*olds, *_siblings(final, "trash")]:
        _remove(path)
        touched.append(path)
    for path in _siblings(final, "tmp"):
        if _owner_gone(path):
            _remove(path)
            touched.append(path)
    return touched


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``final`` only if the block succeeds.

    Args:
        final: The directory the artifact should end up in.

    Yields:
        An empty directory on the same filesystem as ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _dir_lock(final.parent):
        recover_leftovers(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        owner = os.open(tmp, os.O_RDONLY)
        _try_flock(owner, fcntl.LOCK_EX)
    owned = os.path.realpath(tmp)
    _OWNED_TMP.add(owned)
    try:
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            _OWNED_TMP.discard(owned)
        with _dir_lock(final.parent):
            replace_dir(tmp, final)
    finally:
        os.close(owner)


def replace_dir(src: Path, final: Path) -> None:
    """Move ``src`` to ``final``, swapping out any existing directory with two renames.

    Between the renames the previous version is ``.<name>.old-*`` (complete: put back by
    :func:`recover_leftovers` if the process dies there); it is then renamed to trash and deleted.
    """
    if final.exists():
        suffix = uuid.uuid4().hex[:8]
        old = final.with_name(f".{final.name}.old-{suffix}")
        os.rename(final, old)
        os.rename(src, final)
        trash = final.with_name(f".{final.name}.trash-{suffix}")
        os.rename(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(src, final)


class UnreadableText(Exception):
    """Why :func:`read_utf8` could not return text: ``problem`` is one of ``missing``,
    ``unreadable``, ``utf16``, ``binary`` or ``encoding``; ``detail`` says more (the OS error,
    the offset of the bad byte) and ``line`` is the line of a bad byte (1-based) or None."""

    def __init__(
        self, problem: str, detail: str = "", line: int | None = None, offset: int | None = None
    ):
        super().__init__(f"{problem}: {detail}" if detail else problem)
        self.problem, self.detail, self.line, self.offset = problem, detail, line, offset


def read_utf8(path: Path, *, binary_check: bool = False) -> str:
    """The one reader of user text files: UTF-8, a byte-order mark dropped.

    Raises:
        UnreadableText: The file is missing, unreadable (a folder, no permission), UTF-16,
            binary (a NUL byte in the first 8 KiB, checked when ``binary_check``) or not UTF-8.
            Callers turn it into a message naming the file, the recipe key and the fix.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UnreadableText("missing") from None
    except OSError as exc:  # a folder, no permission, a loop
        raise UnreadableText("unreadable", exc.strerror or str(exc)) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnreadableText("utf16")
    nul = raw.find(b"\x00", 0, 8192) if binary_check else -1
    if nul >= 0:
        raise UnreadableText("binary", f"a NUL byte at offset {nul}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UnreadableText(
            "encoding", f"byte 0x{raw[exc.start]:02x} at offset {exc.start}", line, exc.start
        ) from None


def read_utf8_file(
    path: Path, error: type[Exception], *, what: str, key: str, expected: str, noun: str = "file"
) -> str:
    """:func:`read_utf8` for a data file named by the recipe, its failures raised as ``error``.

    Args:
        path: The file.
        error: Exception class raised with a message naming the file, the line and the fix.
        what: What the file is ("benchmark file").
        key: The recipe key that names it ("evaluation.questions").
        expected: What the key must name ("a CSV file").
        noun: How the fix calls it ("CSV").
    """
    path = Path(path)
    try:
        return read_utf8(path)
    except UnreadableText as exc:
        message = {
            "missing": f"{what} not found; fix {key} in the recipe",
            "unreadable": f"cannot read the {what} ({exc.detail}); {key} must name {expected}",
            "utf16": f"the {what} is UTF-16 text; re-save the {noun} as UTF-8",
            "encoding": f"line {exc.line}: not valid UTF-8 (byte {exc.offset}); "
            f"re-save the {noun} as UTF-8",
        }[exc.problem]
        raise error(f"{path}: {message}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _dir_lock(path.parent):
        for stale in _siblings(path, "tmp"):
            if _owner_gone(stale):
                stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        _try_flock(fd, fcntl.LOCK_EX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)  # before closing: the lock covers the file until it is in place
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def artifact_lock(
    path: Path, what: str, on_wait: Callable[[str], Any] | None = None, *, shared: bool = False
) -> Iterator[None]:
    """Hold a lock on ``.<name>.lock`` beside ``path`` for the block: exclusive for a writer,
    ``shared`` for readers (any number of them, never while a writer holds it).

    Whoever asks while it is taken waits (``on_wait`` is told so) until the holder finishes
    or dies: the kernel drops the lock of a killed process, so a kill -9 never leaves it stuck.

    Args:
        path: The artifact the lock guards.
        what: How messages name it (e.g. ``vector_index``).
        on_wait: Called with a message before and after waiting for another holder.
        shared: Take a reader's lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _try_flock(fd, mode | fcntl.LOCK_NB) is False:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if on_wait is not None:
                on_wait(
                    f"{lock} is held by another materialization of {what} (pid {holder}): "
                    "waiting for it to finish"
                )
            started = time.monotonic()
            _try_flock(fd, mode)
            if on_wait is not None:
                on_wait(f"got the {what} lock after {time.monotonic() - started:.1f} s")
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write rows as JSON lines; returns the number of rows written."""
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file written by :func:`write_jsonl`."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@contextmanager
def scratch_dir(beside: Path) -> Iterator[Path]:
    """A throw-away working directory next to ``beside`` (trainer checkpoints and logs), kept
    out of the final artifact and removed afterwards."""
    Path(beside).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ragft-train-", dir=Path(beside).parent) as tmp:
        yield Path(tmp)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, read in 1 MiB blocks (model files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dir_size_bytes(path: Path) -> int:
    """Total size of the regular files below ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def partition_file_name(key: str) -> str:
    """A flat, collision-free file name for a partition key such as ``guides/setup.md``."""
    return key.replace("%", "%25").replace("/", "%2F") + ".jsonl"


class ArtifactLayout:
    """Where every asset keeps its files below one artifact root (one place to change it)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def tiny_models(self) -> Path:
        return self.root / "tiny"

    @property
    def specialist_model(self) -> Path:
        return self.root / "models" / "specialist"

    @property
    def merged_model(self) -> Path:
        return self.root / "models" / "merged"

    @property
    def dpo_model(self) -> Path:
        return self.root / "models" / "dpo"

    @property
    def lora_adapter(self) -> Path:
        return self.root / "models" / "lora_adapter"

    @property
    def exported_model(self) -> Path:
        return self.root / "models" / "exported"

    def chunks(self, doc_key: str) -> Path:
        return self.root / "chunks" / partition_file_name(doc_key)

    def qa(self, doc_key: str) -> Path:
        return self.root / "qa" / partition_file_name(doc_key)

    @property
    def llm_cache(self) -> Path:
        return self.root / "llm_cache"

    @property
    def docs_scan(self) -> Path:
        """The last scan of the docs folder (each file's size, times, inode and hash), so a
        scan reads only the files that changed."""
        return self.root / "state" / "docs_scan.json"

    def document_files(self, doc_key: str) -> list[Path]:
        """Every file a document partition owns (deleted with the partition)."""
        return [self.chunks(doc_key), self.qa(doc_key)]

    @property
    def sft_dataset(self) -> Path:
        return self.root / "sft_dataset"

    @property
    def vector_index(self) -> Path:
        return self.root / "vector_index"

    @property
    def retrieved_contexts(self) -> Path:
        """Each benchmark's retrieved chunks, stored once per index version so that every RAG
        cell shows the same context."""
        return self.root / "retrieval" / "benchmark"

    def scores(self, model: str, context: str) -> Path:
        # an API model's name may be a path ("/models/mistral"): one flat file name per cell
        return self.root / "scores" / partition_file_name(f"{model}__{context}")

    def general_scores(self, model: str) -> Path:
        return self.root / "general_scores" / f"{model}.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report"
