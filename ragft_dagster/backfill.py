"""Asset backfills of the document assets, as the UI's Materialize -> Launch backfill submits
them: the daemon's backfill loop launches the runs, ``docs.batch_size`` documents each (the
assets' ``BackfillPolicy.multi_run``).

``dagster job backfill -j documents_job`` is a job backfill instead: Dagster launches one run
per partition whatever the assets' backfill policy, which at a thousand documents spends most
of its time starting runs. ``ragft backfill`` submits the asset backfill from a terminal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import dagster as dg

from ragft_dagster.assets.partitions import DOCUMENTS

DOCUMENT_ASSETS = ("doc_chunks", "synthetic_qa")


def submit_asset_backfill(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    assets: Sequence[str] = DOCUMENT_ASSETS,
    partitions: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Record an asset backfill for the daemon (the same request the UI's Launch backfill
    makes); returns its id.

    Args:
        instance: The instance whose daemon runs the backfill.
        defs: The definitions (their asset graph decides the runs).
        assets: The assets to materialize.
        partitions: Their partition keys; None for every partition.
        title: Shown in the UI's backfill list.
    """
    # Dagster's own backfill record (what dagster-graphql's launchPartitionBackfill creates);
    # no public API submits an asset backfill outside the UI in 1.13.
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        partition_names=list(partitions) if partitions is not None else None,
        asset_selection=[dg.AssetKey(a) for a in assets],
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=partitions is None,
        title=title,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def expected_runs(instance: dg.DagsterInstance, batch_size: int, partitions: int | None) -> int:
    """How many runs a backfill of ``partitions`` documents (None: all) becomes."""
    n = len(instance.get_dynamic_partitions(DOCUMENTS)) if partitions is None else partitions
    return math.ceil(n / batch_size)
