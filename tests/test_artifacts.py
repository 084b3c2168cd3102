"""Atomic artifact writes and the JSONL files every stage reads and writes."""

import json
from pathlib import Path

import pytest

from ragft_dagster.artifacts import atomic_dir, read_jsonl, write_jsonl


def test_atomic_dir_keeps_previous_artifact_on_failure(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as d:
        (d / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(final) as d:
        (d / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_jsonl_roundtrip(tmp_path):
    rows = [{"a": 1, "t": "é\nx"}]
    assert write_jsonl(tmp_path / "x.jsonl", rows) == 1
    assert read_jsonl(tmp_path / "x.jsonl") == rows
    assert json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0]) == rows[0]
    assert not list(Path(tmp_path).glob(".x.jsonl.tmp-*"))
