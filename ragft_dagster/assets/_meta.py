"""Metadata helpers shared by the asset modules."""

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


def preview_table(
    rows: list[dict[str, Any]], columns: list[str], limit: int = 10, width: int = 120
) -> dg.MetadataValue:
    """First rows of a record list as a UI table (long strings shortened)."""

    def cell(value: Any) -> Any:
        if isinstance(value, list):
            value = " > ".join(map(str, value))
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, str) and len(value) > width:
            return value[: width - 1] + "…"
        return value if isinstance(value, int | bool | str) else str(value)

    records = [dg.TableRecord({c: cell(r.get(c, "")) for c in columns}) for r in rows[:limit]]
    schema = dg.TableSchema(columns=[dg.TableColumn(c) for c in columns])
    return dg.MetadataValue.table(records=records, schema=schema)


def training_result(path: Path, metrics: dict[str, Any], **extra: Any) -> dg.MaterializeResult:
    """A trained artifact's metadata: its path, every metric the trainer reported (numbers are
    plotted over time in the UI) and the loss curve as JSON."""
    curve = [round(x, 4) for x in metrics.get("loss_curve", [])]
    scalars = {k: v for k, v in metrics.items() if k != "loss_curve"}
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            **scalars,
            **extra,
            "loss_curve": dg.MetadataValue.json(curve),
        }
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
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of an upstream per-document asset for every current document, in document order.

    Raises:
        dg.Failure: Naming the documents whose partition of ``upstream`` is not materialized.
    """
    docs = current_documents(context)
    missing = [d for d in docs if not path_of(d).is_file()]
    if missing:
        # The docs sensor may have removed a document (partition and files) since the first look.
        docs = current_documents(context)
        missing = [d for d in docs if not path_of(d).is_file()]
    if missing:
        raise dg.Failure(
            f"{upstream} is not materialized for {missing}; materialize {upstream} for every "
            "document partition first"
        )
    return docs, [row for d in docs for row in read_jsonl(path_of(d))]
