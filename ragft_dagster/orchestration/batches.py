"""Documents in batches: which partitions go into one run.

A run covers a contiguous range of the ``documents`` partitions (Dagster's partition-range
tags, as a backfill with ``BackfillPolicy.multi_run`` launches them), so 1,000 documents are
ten runs of 100 instead of 1,000 runs, and each run loads the definitions, the tokenizer and
the request pool once. The docs sensor and ``ragft run`` cut their batches here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def contiguous_batches(
    order: Sequence[str], wanted: Iterable[str], size: int, max_gap: int | None = None
) -> list[list[str]]:
    """Cover ``wanted`` with slices of ``order`` of at most ``size`` keys.

    A slice may take in up to ``max_gap`` (default ``size // 4``) unwanted keys between two
    wanted ones: re-running a few unchanged documents (their chunks are rebuilt identically,
    their Q&A comes from the reply cache) costs less than another run.

    Args:
        order: Every partition key in the partitions definition's order (a range is a slice).
        wanted: The keys that must run; each must be in ``order``.
        size: Most keys in one slice (``docs.batch_size``).
        max_gap: Most consecutive unwanted keys a slice may span.

    Returns:
        The slices, in order; each is what one run covers.
    """
    if size < 1:
        raise ValueError("batch size must be at least 1")
    gap = size // 4 if max_gap is None else max_gap
    position = {key: i for i, key in enumerate(order)}
    indices = sorted({position[key] for key in wanted})
    batches: list[list[str]] = []
    if not indices:
        return batches
    start = last = indices[0]
    for i in indices[1:]:
        if i - start < size and i - last - 1 <= gap:
            last = i
            continue
        batches.append(list(order[start : last + 1]))
        start = last = i
    batches.append(list(order[start : last + 1]))
    return batches


def batch_tags(batch: Sequence[str]) -> dict[str, str]:
    """The run tags of one batch: a partition range (a single key is a range of one)."""
    return {RANGE_START_TAG: batch[0], RANGE_END_TAG: batch[-1]}
