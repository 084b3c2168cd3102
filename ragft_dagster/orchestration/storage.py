"""An opt-in SQLite instance storage that writes a batch of events in one transaction.

A run over a range of document partitions logs an event per asset and partition twice: when
the run is created (``ASSET_MATERIALIZATION_PLANNED``) and when the step ends
(``ASSET_MATERIALIZATION``). Dagster hands such events to the storage as one batch when
``DAGSTER_EVENT_BATCH_SIZE`` is set, but its SQLite storage stores a batch one event at a time,
and every event opens a new engine and connection to the run's database and again to the
index database (a commit, a WAL checkpoint on close, statements compiled afresh): about 14 ms
an event on this project's 2-core machine, 28 ms a document for every partitioned asset.

``BatchingSqliteStorage`` is Dagster's default SQLite storage (the same files under
``$DAGSTER_HOME``, so an existing instance keeps its history) whose event log writes the asset
events of a batch with one connection and one transaction to each database; every other event
goes through Dagster's own ``store_event`` unchanged. The connection is still closed after each
batch, so the UI's file watcher sees the run's database change as before.

It subclasses Dagster's private SQLite classes and re-implements the asset branch of their
``store_event`` (``dagster._core.storage``), and it turns on ``DAGSTER_EVENT_BATCH_SIZE``, which
only Dagster's private code reads: so it is opt-in, selected by ``dagster-fast.yaml`` and not by
``dagster.yaml`` (docs/instance.md)::

    storage:
      custom:
        module: ragft_dagster.orchestration.storage
        class: BatchingSqliteStorage
        config:
          base_dir: {env: DAGSTER_HOME}

PostgreSQL (``deploy/dagster.yaml``, ``deploy/dagster-fast.yaml``) keeps Dagster's own storage,
unbatched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData

# Read by the instance on every event (dagster/_core/instance/utils.py). Batches are formed
# only from events Dagster emits together in one loop (the planned events of a new run, the
# materializations of one step), so a batch never waits on anything else.
BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
DEFAULT_BATCH_SIZE = "1000"


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log; ``store_event_batch`` in one transaction."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # In order: each stretch of asset events together, anything else one at a time. Should
        # a write fail once part of the batch is stored, the rest is stored here one event at a
        # time: Dagster's own fallback would store the whole batch again (duplicate rows).
        stored = 0
        try:
            for start, end in _stretches(events):
                if end - start > 1:
                    self._store_asset_events(events[start:end])
                else:
                    self.store_event(events[start])
                stored = end
        except Exception:
            if stored == 0:
                raise
            logging.getLogger(__name__).exception(
                "storing a batch of %d events failed after %d; storing the rest one by one",
                len(events),
                stored,
            )
            for event in events[stored:]:
                self.store_event(event)

    def _store_asset_events(self, events: Sequence[EventLogEntry]) -> None:
        """What ``store_event`` does for each asset event, in one transaction per database.
        Raises only before anything is committed."""
        statements = [self.prepare_insert_event(e) for e in events]
        (run_id,) = {e.run_id for e in events}  # (Dagster batches one run's events)
        with self.run_connection(run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        # mirrored into the cross-run index database
        try:
            with self.index_transaction() as conn:
                self._mirror(conn, events, statements)
        except Exception:
            # the run's rows are committed: mirror event by event, as store_event would
            logging.getLogger(__name__).exception(
                "mirroring %d asset events in one transaction failed; one at a time", len(events)
            )
            for event, statement in zip(events, statements, strict=True):
                with self.index_transaction() as conn:
                    self._mirror(conn, [event], [statement])

    def _mirror(self, conn: Any, events: Sequence[EventLogEntry], statements: list[Any]) -> None:
        ids = []
        for statement in statements:
            inserted = conn.execute(statement).inserted_primary_key
            if inserted is None or inserted[0] is None:
                raise RuntimeError("Cannot store asset event tags for null event id.")
            ids.append(inserted[0])
        self._store_asset_event_tags(conn, events, ids)
        for event, event_id in zip(events, ids, strict=True):
            self._store_asset_event(conn, event, event_id)


def _stretches(events: Sequence[EventLogEntry]) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive asset events of one run, and of every other
    event alone, in order."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(events) + 1):
        if (
            i == len(events)
            or not (_is_asset_event(events[i]) and _is_asset_event(events[start]))
            or events[i].run_id != events[start].run_id
        ):
            bounds.append((start, i))
            start = i
    return bounds


def _is_asset_event(event: EventLogEntry) -> bool:
    return bool(event.is_dagster_event and event.dagster_event_type in ASSET_EVENTS)


class BatchingSqliteStorage(DagsterSqliteStorage):
    """Dagster's default SQLite storage with ``BatchingSqliteEventLogStorage`` as its event log.

    Constructing it turns Dagster's event batching on in this process
    (``DAGSTER_EVENT_BATCH_SIZE``, unless already set): every process that opens the instance
    (``ragft run``, the daemon, the webserver, a run's worker) writes batches this way.
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage = BatchingSqliteEventLogStorage(_event_logs_directory(base_dir))
        os.environ.setdefault(BATCH_SIZE_ENV, DEFAULT_BATCH_SIZE)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> BatchingSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)
