"""The document partitions and how the assets and drivers read them: the one dynamic
partitions definition every per-document asset, the docs sensor, ``ragft run`` and
``ragft backfill`` share, the run tag naming what started a run, and the automation
conditions of the assets downstream of the documents."""

from __future__ import annotations

from collections.abc import Callable
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
