"""Artifact layout and atomic writes.

Every artifact (model, adapter, index, JSONL) is written to a temporary sibling and renamed into
place, so a failed or killed run never leaves half an artifact and the previous one stays intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(src: Path, final: Path) -> None:
    """Move ``src`` to ``final``, swapping out any existing directory with two renames."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        os.rename(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, final)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    def document_files(self, doc_key: str) -> list[Path]:
        """Every file a document partition owns (deleted with the partition)."""
        return [self.chunks(doc_key), self.qa(doc_key)]

    @property
    def sft_dataset(self) -> Path:
        return self.root / "sft_dataset"

    @property
    def vector_index(self) -> Path:
        return self.root / "vector_index"

    def scores(self, model: str, context: str) -> Path:
        return self.root / "scores" / f"{model}__{context}.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report"
