"""The opt-in batching SQLite storage (dagster-fast.yaml): batches of asset events in one
transaction give the same records as Dagster's own storage (dagster.yaml's), and per-partition
metadata is checked once per run."""

import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from ragft_dagster.assets.partitions import add_partition_metadata
from ragft_dagster.orchestration.batches import batch_tags
from ragft_dagster.orchestration.storage import (
    BATCH_SIZE_ENV,
    BatchingSqliteEventLogStorage,
    BatchingSqliteStorage,
)

ROOT = Path(__file__).resolve().parents[2]
FAST_INSTANCE = ROOT / "dagster-fast.yaml"
KEYS = [f"doc{i:02d}.md" for i in range(12)]
PARTS = dg.DynamicPartitionsDefinition(name="docs")


def _definitions() -> dg.Definitions:
    @dg.asset(partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.multi_run(len(KEYS)))
    def chunks(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        add_partition_metadata(
            context, {k: {"n": KEYS.index(k), "path": dg.MetadataValue.path(k)} for k in KEYS}
        )
        return dg.MaterializeResult(metadata={"batch_documents": len(context.partition_keys)})

    @dg.asset(deps=[chunks], partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.multi_run(99))
    def qa(context: dg.AssetExecutionContext) -> None:
        for key in context.partition_keys[:3]:  # Dagster's own call, for some of them
            context.add_asset_metadata({"pairs": 3}, partition_key=key)

    @dg.asset_check(asset=chunks)
    def chunks_ok() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    job = dg.define_asset_job("docs_job", selection=[chunks, qa])
    return dg.Definitions(assets=[chunks, qa], asset_checks=[chunks_ok], jobs=[job])


def _run(home: Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Run the job over every key twice and read back what the UI and automation read."""
    home.mkdir()
    with dg.DagsterInstance.local_temp(str(home), overrides=overrides) as instance:
        instance.add_dynamic_partitions("docs", KEYS)
        job = _definitions().resolve_job_def("docs_job")
        runs = [job.execute_in_process(instance=instance, tags=batch_tags(KEYS)) for _ in (1, 2)]
        assert all(r.success for r in runs)
        out: dict[str, Any] = {"storage": type(instance.event_log_storage).__name__}
        for name in ("chunks", "qa"):
            key = dg.AssetKey(name)
            records = instance.fetch_materializations(key, limit=1000).records
            out[name] = sorted(
                (
                    r.partition_key,
                    r.run_id == runs[1].run_id,
                    dict(r.asset_materialization.metadata),
                )
                for r in records
            )
            out[name + "_partitions"] = sorted(instance.get_materialized_partitions(key))
            latest = instance.get_latest_materialization_event(key)
            out[name + "_latest_run_is_second"] = latest.run_id == runs[1].run_id
            planned = instance.get_event_records(
                dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, key)
            )
            out[name + "_planned"] = len(planned)
            out[name + "_status"] = sorted(
                instance.get_status_by_partition(key, KEYS, PARTS).items()
            )
        out["types"] = [
            [e.dagster_event_type.value for e in instance.all_logs(r.run_id) if e.dagster_event]
            for r in runs
        ]
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("chunks"), "chunks_ok")]
        )
        out["check"] = [c.status.value for c in check.values()]
    return out


def _default() -> dict[str, Any]:
    """dagster.yaml: Dagster's own SQLite storage."""
    overrides = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert "storage" not in overrides
    return overrides


def _batching(home: Path) -> dict[str, Any]:
    overrides = yaml.safe_load(FAST_INSTANCE.read_text())
    overrides["storage"]["custom"]["config"]["base_dir"] = str(home)
    return overrides


def test_batched_events_read_back_as_dagsters_own(tmp_path, monkeypatch):
    monkeypatch.delenv(BATCH_SIZE_ENV, raising=False)
    plain = _run(tmp_path / "plain", _default())
    batches: list[int] = []
    original = BatchingSqliteEventLogStorage._store_asset_events

    def counted(self, events):  # type: ignore[no-untyped-def]
        batches.append(len(events))
        return original(self, events)

    monkeypatch.setattr(BatchingSqliteEventLogStorage, "_store_asset_events", counted)
    monkeypatch.setenv(BATCH_SIZE_ENV, "1000")  # restored after the test
    ours = _run(tmp_path / "ours", _batching(tmp_path / "ours"))
    assert (plain.pop("storage"), ours.pop("storage")) == (
        "SqliteEventLogStorage",
        "BatchingSqliteEventLogStorage",
    )
    assert ours == plain
    assert len(ours["chunks"]) == 2 * len(KEYS)
    assert ours["chunks_planned"] == 2 * len(KEYS)
    (doc03,) = [md for key, second, md in ours["chunks"] if key == "doc03.md" and second]
    assert doc03["n"] == dg.MetadataValue.int(3)
    assert doc03["batch_documents"] == dg.MetadataValue.int(len(KEYS))
    # per run: the planned events of both assets, then each step's materializations
    assert max(batches) == 2 * len(KEYS) and batches.count(len(KEYS)) == 4


def test_the_fast_instance_turns_batching_on(tmp_path, monkeypatch):
    monkeypatch.setenv(BATCH_SIZE_ENV, "0")  # recorded, so the test's end restores the original
    monkeypatch.delenv(BATCH_SIZE_ENV)
    (tmp_path / "dagster.yaml").write_text(FAST_INSTANCE.read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.event_log_storage) is BatchingSqliteEventLogStorage
        assert int(os.environ[BATCH_SIZE_ENV]) > 1
    # the same files as Dagster's default SQLite storage: an existing instance keeps its history
    assert (tmp_path / "history" / "runs.db").exists()
    assert (tmp_path / "history" / "runs").is_dir()
    assert isinstance(BatchingSqliteStorage.from_local(str(tmp_path / "x")), BatchingSqliteStorage)


@pytest.mark.parametrize("fails", ["index", "later_batch"])
def test_a_failed_write_stores_every_event_once(tmp_path, monkeypatch, fails):
    """A batch whose index transaction fails is mirrored event by event; a failure after part
    of a batch is stored stores the rest one by one. Either way the instance reads back as
    Dagster's own (no event twice: Dagster's fallback would store the whole batch again)."""
    monkeypatch.delenv(BATCH_SIZE_ENV, raising=False)
    plain = _run(tmp_path / "plain", _default())
    if fails == "index":
        original = BatchingSqliteEventLogStorage._mirror

        def mirror(self, conn, events, statements):  # type: ignore[no-untyped-def]
            if len(events) > 1:
                raise RuntimeError("database is locked")
            return original(self, conn, events, statements)

        monkeypatch.setattr(BatchingSqliteEventLogStorage, "_mirror", mirror)
    else:
        original = BatchingSqliteEventLogStorage._store_asset_events
        calls: list[int] = []

        def flaky(self, events):  # type: ignore[no-untyped-def]
            calls.append(len(events))
            if len(calls) % 2 == 0:  # every second stretch, before anything is written
                raise RuntimeError("database is locked")
            return original(self, events)

        monkeypatch.setattr(BatchingSqliteEventLogStorage, "_store_asset_events", flaky)
    monkeypatch.setenv(BATCH_SIZE_ENV, "1000")
    ours = _run(tmp_path / "ours", _batching(tmp_path / "ours"))
    plain.pop("storage"), ours.pop("storage")
    assert ours == plain
