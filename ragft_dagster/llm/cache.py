"""Replies on disk, written the moment they arrive, so nothing paid for is ever lost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import atomic_write_text


class ReplyCache:
    """Generated replies on disk, one file per key, written atomically before they are used."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.root / key[:2] / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn entry is treated as a miss and overwritten

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_text(self.root / key[:2] / f"{key}.json", json.dumps(value))
