"""The document partitions and how the assets and drivers read them: the one dynamic
partitions definition every per-document asset, the docs sensor, ``ragft run`` and
``ragft backfill`` share, the run tag naming what started a run, and the automation
conditions of the assets downstream of the documents."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import read_jsonl

DOCUMENTS = "documents"
# Run tag naming what started a run (docs sensor: added/changed/removed; schedule: nightly).
TRIGGER_TAG = "ragft/trigger"
documents_partitions = dg.DynamicPartitionsDefinition(name=DOCUMENTS)

# The assets downstream of the documents update by themselves after document runs, never while
# one is in progress (see automation.py for the sensors that drive this).
EAGER = dg.AutomationCondition.eager()
# The score cells cannot share a run with the unpartitioned models and index they read, so they
# also wait for one automation tick with no upstream update: after a docs sensor run that updated
# vector_index itself, lora_adapter is requested on the next tick, and a cell that started then
# would score the old adapter now and the new one again after.
EAGER_SETTLED = (EAGER & ~dg.AutomationCondition.any_deps_updated()).with_label(
    "eager, once no dependency updated since the last tick"
)


def current_documents(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> list[str]:
    """The document partition keys that exist now (removed documents are not read)."""
    return sorted(context.instance.get_dynamic_partitions(DOCUMENTS))


def read_all_documents(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
    upstream: str,
    path_of: Callable[[str], Path],
    docs_dir: Path | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of an upstream per-document asset for every current document, in document order.

    A document removed while this reads (the docs sensor deletes its files, then its partition)
    is left out once its partition is gone; while the partition is still listed it fails, saying
    so: the sensor requests a rebuild without it.

    Args:
        context: Gives the instance holding the document partitions.
        upstream: The per-document asset read (named in errors).
        path_of: Its file for a document key.
        docs_dir: The recipe's docs folder, to tell a deleted document from an unbuilt one.

    Raises:
        dg.Failure: Naming the documents whose partition of ``upstream`` has no file.
    """
    rows: dict[str, list[dict[str, Any]]] = {}
    missing: list[str] = []
    for doc in current_documents(context):
        try:
            rows[doc] = read_jsonl(path_of(doc))
        except FileNotFoundError:
            missing.append(doc)
    if missing:
        # The docs sensor may have removed a document (partition and files) since the first look.
        current = set(current_documents(context))
        missing = [d for d in missing if d in current]
        rows = {d: r for d, r in rows.items() if d in current}
    deleted = [d for d in missing if docs_dir is not None and not (docs_dir / d).exists()]
    if deleted:
        raise dg.Failure(
            f"documents {deleted} were deleted from the docs folder ({docs_dir}) during this run "
            f"and their {upstream} files are gone, but their partitions are still listed. Nothing "
            "to do: the docs sensor removes those partitions and requests a rebuild without "
            "them (`ragft run` does the same); the previous materialization is unchanged"
        )
    if missing:
        raise dg.Failure(
            f"{upstream} is not materialized for {sorted(missing)}; materialize {upstream} for "
            "every document partition first (if these documents were just deleted, the docs "
            "sensor removes their partitions and requests a rebuild without them)"
        )
    docs = sorted(rows)
    return docs, [row for d in docs for row in rows[d]]


def add_partition_metadata(
    context: dg.AssetExecutionContext, by_partition: Mapping[str, Mapping[str, Any]]
) -> None:
    """``context.add_asset_metadata(metadata, partition_key=key)`` for every key of a run's range.

    A run of one partition (a docs sensor's run) uses that public call without the key, which
    Dagster applies to the partition the run materializes. With the key, Dagster checks it
    against the run's range by reading the dynamic partitions from the instance (three
    queries a call, each a new SQLite connection), once per document and asset: measured on
    dagster-fast.yaml's instance, 2 shared cores, two assets over one range run, 42-47 ms a
    document at 200 documents and 51-56 ms at 1,000, against 0.4-0.9 ms for the path below
    (which would make the ≤ 50 ms a document of orchestration at 1,000 documents unreachable).
    So for a range the keys are checked once against ``context.partition_keys`` and handed to
    the step's metadata accumulator, where the public call puts them (private: Dagster 1.13
    has no public call for many partitions at once). On a Dagster whose step context has no
    accumulator, or one that takes other arguments, this falls back to the public call, key by
    key: the accumulator is stored only once every key went in.
    """
    targeted = set(context.partition_keys)
    stray = sorted(set(by_partition) - targeted)
    if stray:
        raise dg.DagsterInvariantViolationError(
            f"metadata for partition(s) {', '.join(stray[:5])} that this run does not target"
        )
    if len(targeted) == 1:
        for metadata in by_partition.values():
            context.add_asset_metadata(metadata)
        return
    step = getattr(context, "_step_execution_context", None)
    accumulator = getattr(step, "_metadata_accumulator", None)
    try:
        for key, metadata in by_partition.items():
            accumulator = accumulator.with_additional_asset_metadata(  # type: ignore[union-attr]
                asset_key=context.asset_key, partition_key=key, metadata=metadata
            )
    except (AttributeError, TypeError):  # another Dagster: nothing was stored, the public call
        for key, metadata in by_partition.items():
            context.add_asset_metadata(metadata, partition_key=key)
        return
    step._metadata_accumulator = accumulator  # type: ignore[union-attr]
