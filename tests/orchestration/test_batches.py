"""Cutting the documents partitions into contiguous run batches."""

import pytest

from ragft_dagster.orchestration.batches import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    batch_tags,
    contiguous_batches,
)

ORDER = [f"d{i}" for i in range(10)]


def test_wanted_keys_are_covered_by_slices_of_at_most_size_spanning_small_gaps():
    # d0 d1 [gap d2] d3 in one slice (gap 1 <= 1); d4 starts a new one (size 4 reached at d3)
    assert contiguous_batches(ORDER, ["d3", "d0", "d1", "d4"], size=4, max_gap=1) == [
        ["d0", "d1", "d2", "d3"],
        ["d4"],
    ]
    # a gap of 2 unwanted keys is more than max_gap 1: two slices
    assert contiguous_batches(ORDER, ["d0", "d3"], size=10, max_gap=1) == [["d0"], ["d3"]]
    # the default gap is size // 4: 2 for size 8
    assert contiguous_batches(ORDER, ["d0", "d3", "d9"], size=8) == [
        ["d0", "d1", "d2", "d3"],
        ["d9"],
    ]
    assert contiguous_batches(ORDER, [], size=4) == []
    assert contiguous_batches(ORDER, ["d5", "d5"], size=4) == [["d5"]]
    with pytest.raises(ValueError, match="at least 1"):
        contiguous_batches(ORDER, ["d1"], size=0)


def test_a_batch_is_a_partition_range():
    assert batch_tags(["d2", "d3", "d4"]) == {RANGE_START_TAG: "d2", RANGE_END_TAG: "d4"}
