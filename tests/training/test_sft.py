"""The SFT dataset: deduplicated, split stably."""

from ragft_dagster.artifacts import read_jsonl
from ragft_dagster.training.sft import build_sft_dataset


def test_sft_dataset_dedupes_and_splits_stably(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "chunk_id": "c",
            "doc": "d.md",
            "generator": "offline",
            "question": f"Question {i}?",
            "answer": f"Answer {i}.",
        }
        for i in range(200)
    ]
    rows.append({**rows[0], "id": "dup", "question": "  question 0? "})
    counts = build_sft_dataset(
        rows, tmp_path / "a", validation_fraction=0.2, seed=0, system_prompt="sys"
    )
    assert counts["duplicates_removed"] == 1
    assert counts["train_rows"] + counts["validation_rows"] == 200
    assert 20 < counts["validation_rows"] < 60
    train = read_jsonl(tmp_path / "a" / "train.jsonl")
    assert [m["role"] for m in train[0]["messages"]] == ["system", "user", "assistant"]
    build_sft_dataset(
        rows[:150], tmp_path / "b", validation_fraction=0.2, seed=0, system_prompt="sys"
    )
    val_a = {r["id"] for r in read_jsonl(tmp_path / "a" / "validation.jsonl")}
    val_b = {r["id"] for r in read_jsonl(tmp_path / "b" / "validation.jsonl")}
    assert val_b <= val_a  # adding rows never moves existing rows across the split
