"""What keeps the assets current by itself: the docs sensor and declarative automation.

The docs sensor (RUNNING by default) hashes every file of the recipe's docs folder on each tick:
a new file gets a partition and a run, a changed file a run (its run key is the content hash, so
one state never runs twice), a removed file loses its partition and its chunk and Q&A files. A
change that fits one run (``docs.batch_size`` documents) updates ``vector_index`` in that run. The
unpartitioned downstream (``sft_dataset``, ``vector_index``, ``lora_adapter``, ``mcq_scores``,
``mcq_report``) carries an eager automation condition, evaluated by the automation sensor shipped
RUNNING here, so it updates once the document runs are done (and never while one is in
progress). ``ragft run`` uses the same change plan without a daemon.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import atomic_write_text
from ragft_dagster.assets.partitions import DOCUMENTS, TRIGGER_TAG, documents_partitions
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.data.documents import (
    CONTENT_HASH_KEY,
    DocumentChanges,
    DocumentScan,
    discover_documents,
    plan_document_changes,
    purge_document_files,
)
from ragft_dagster.orchestration.batches import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    batch_tags,
    contiguous_batches,
)
from ragft_dagster.resources import ArtifactStoreResource

DOCUMENT_ASSETS = ["doc_chunks", "synthetic_qa"]
# A removal changes no partition's data, so nothing upstream "updates": the sensor itself asks
# for these two, and the eager conditions take over from there.
REMOVAL_ASSETS = ["sft_dataset", "vector_index"]
INDEX_ASSET = "vector_index"


def latest_materialization_record(
    instance: dg.DagsterInstance, asset: str, partition: str | None = None
) -> Any | None:
    """The event record of the latest materialization of an asset (partition), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset),
            asset_partitions=[partition] if partition is not None else None,
        ),
        limit=1,
    ).records
    return records[0] if records else None


def latest_materialization(
    instance: dg.DagsterInstance, asset: str, partition: str | None = None
) -> Any | None:
    """The latest ``AssetMaterialization`` of an asset (partition), or None."""
    record = latest_materialization_record(instance, asset, partition)
    return record.asset_materialization if record else None


def latest_records_by_partition(
    instance: dg.DagsterInstance, asset: str, partitions: set[str] | None = None
) -> dict[str, Any]:
    """The event record of the latest materialization of every materialized partition of an
    asset, in a few queries whatever the number of partitions (one per partition would cost
    seconds at a thousand documents)."""
    key = dg.AssetKey(asset)
    ids = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions
    )
    found: dict[str, Any] = {}
    wanted = sorted(ids.values())
    for i in range(0, len(wanted), 500):  # stay far below SQLite's variable limit
        chunk = wanted[i : i + 500]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
        ).records
        for record in records:
            mat = record.asset_materialization
            if mat is not None and mat.partition is not None:
                found[mat.partition] = record
    return found


def latest_by_partition(
    instance: dg.DagsterInstance, asset: str, partitions: set[str] | None = None
) -> dict[str, Any]:
    """The latest ``AssetMaterialization`` of every materialized partition of an asset
    (:func:`latest_records_by_partition`)."""
    records = latest_records_by_partition(instance, asset, partitions)
    return {key: record.asset_materialization for key, record in records.items()}


def metadata_value(mat: Any, key: str) -> Any:
    """One metadata entry of a materialization, unwrapped (None when absent)."""
    value = mat.metadata.get(key) if mat is not None else None
    return getattr(value, "value", value)


def built_from_hash(instance: dg.DagsterInstance, doc_key: str) -> str | None:
    """The content hash the latest ``doc_chunks`` of a document was built from."""
    return metadata_value(latest_materialization(instance, "doc_chunks", doc_key), CONTENT_HASH_KEY)


def scan_documents_folder(recipe: Recipe, scan_state: Path | None = None) -> DocumentScan:
    """Scan the recipe's docs folder. ``scan_state`` keeps the previous scan's file identities
    (read, then updated): files whose size, times and inode are unchanged are not read again.

    Raises:
        FileNotFoundError: The docs folder does not exist (naming ``docs.path``).
    """
    known = _read_scan_state(scan_state) if scan_state is not None else {}
    scan = discover_documents(recipe.docs_dir, recipe.docs.glob, known, recipe.docs.exclude)
    if scan_state is not None and scan.stats != known:
        atomic_write_text(scan_state, json.dumps(scan.stats, sort_keys=True))
    return scan


def plan_changes(instance: dg.DagsterInstance, scan: DocumentScan) -> DocumentChanges:
    """Compare a scan with the document partitions and the content hash each was last built
    from (read in bulk: a few queries for any number of documents)."""
    built = latest_by_partition(instance, "doc_chunks")
    return plan_document_changes(
        scan.documents,
        instance.get_dynamic_partitions(DOCUMENTS),
        lambda key: metadata_value(built.get(key), CONTENT_HASH_KEY),
        scan.skipped,
    )


def document_changes(
    instance: dg.DagsterInstance, recipe: Recipe, scan_state: Path | None = None
) -> tuple[DocumentScan, DocumentChanges]:
    """:func:`scan_documents_folder` then :func:`plan_changes`."""
    scan = scan_documents_folder(recipe, scan_state)
    return scan, plan_changes(instance, scan)


_UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def documents_in_flight(instance: dg.DagsterInstance, order: list[str]) -> dict[str, float]:
    """Documents in an unfinished run of the docs sensor -> when that run was created."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=_UNFINISHED, tags={"dagster/sensor_name": "docs_sensor"})
    )
    position = {key: i for i, key in enumerate(order)}
    found: dict[str, float] = {}
    for record in records:
        tags = record.dagster_run.tags
        start = position.get(tags.get(RANGE_START_TAG, tags.get("dagster/partition", "")))
        end = position.get(tags.get(RANGE_END_TAG, tags.get("dagster/partition", "")))
        if start is None or end is None:
            continue
        for key in order[start : end + 1]:
            found[key] = max(found.get(key, 0.0), record.create_timestamp.timestamp())
    return found


def document_runs_in_flight(instance: dg.DagsterInstance, order: list[str]) -> bool:
    """Whether an unfinished run materializes document assets: a docs sensor batch, a
    backfill's, a launched ``documents_job``."""
    documents = {dg.AssetKey(a) for a in DOCUMENT_ASSETS}
    known = set(order)
    for record in instance.get_run_records(dg.RunsFilter(statuses=_UNFINISHED)):
        run = record.dagster_run
        if run.asset_selection is not None:
            if run.asset_selection & documents:
                return True
            continue
        tags = run.tags
        if (
            run.job_name == "documents_job"
            or RANGE_START_TAG in tags
            or tags.get("dagster/partition") in known
        ):
            return True
    return False


def _read_scan_state(path: Path) -> dict[str, list[Any]]:
    """The previous scan's file identities; nothing (so every file is read) when the file is
    missing or unreadable."""
    try:
        state = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _state_key(prefix: str, items: dict[str, str] | list[str]) -> str:
    return f"{prefix}:{hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]}"


def build_docs_sensor(recipe: Recipe) -> dg.SensorDefinition:
    @dg.sensor(
        name="docs_sensor",
        description=(
            f"Watches {recipe.docs_dir} ({recipe.docs.glob}): adds, re-runs and removes document "
            "partitions by content hash."
        ),
        target=[*DOCUMENT_ASSETS, *REMOVAL_ASSETS],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def docs_sensor(
        context: dg.SensorEvaluationContext, artifacts: ArtifactStoreResource
    ) -> dg.SensorResult | dg.SkipReason:
        layout = artifacts.layout()
        try:
            scan = scan_documents_folder(recipe, layout.docs_scan)
        except OSError as exc:  # the docs folder is missing or unreadable
            return dg.SkipReason(str(exc))
        # The cursor is one digest of the folder's state: bounded, and a tick that finds the
        # same state stops here, with no query of the instance.
        digest = _state_key("docs", scan.documents)
        if context.cursor == digest:
            return dg.SkipReason(
                f"{len(scan.documents)} documents unchanged ({scan.read} file(s) read)"
            )
        instance = context.instance
        changes = plan_changes(instance, scan)
        for warning in changes.warnings(recipe.docs_dir):
            context.log.warning(f"skipped {warning}")
        excluded = scan.excluded_line(recipe.docs_dir)
        if excluded:
            context.log.info(excluded)
        order = [*instance.get_dynamic_partitions(DOCUMENTS), *changes.added]
        flight = documents_in_flight(instance, order)
        # a document whose run started after its last edit needs no second run
        wanted = [
            key
            for key in changes.to_run
            if flight.get(key, 0.0) * 1e9 <= scan.stats[key][1]  # mtime_ns
        ]
        batches = contiguous_batches(order, wanted, recipe.docs.batch_size)
        # A change that fits one run updates the index in that run too, so `ragft ask` and the
        # RAG cells see an edit seconds after the tick instead of after the automation sensor's
        # next tick and a second run. A burst of several runs, or a change while other document
        # runs are unfinished (their chunks are not all written yet), leaves the index to its
        # eager condition, once, after they are all done.
        with_index = len(batches) == 1 and not document_runs_in_flight(instance, order)
        selection = [*DOCUMENT_ASSETS, *([INDEX_ASSET] if with_index else [])]
        runs = [
            dg.RunRequest(
                # the same documents with the same content never run twice (a used run key)
                run_key=_state_key("docs", {k: scan.documents[k] for k in batch}),
                asset_selection=[dg.AssetKey(a) for a in selection],
                partition_key=batch[0] if len(batch) == 1 else None,
                tags={
                    **(batch_tags(batch) if len(batch) > 1 else {}),
                    TRIGGER_TAG: "added" if set(batch) <= set(changes.added) else "changed",
                },
            )
            for batch in batches
        ]
        partition_requests: list[Any] = []
        if changes.added:
            partition_requests.append(documents_partitions.build_add_request(changes.added))
        if changes.removed:
            partition_requests.append(documents_partitions.build_delete_request(changes.removed))
            purged = purge_document_files(layout.document_files, changes.removed)
            context.log.info(f"removed {changes.removed}: deleted {purged} chunk/Q&A files")
            if not runs:
                # Nothing else will touch the index or the dataset: rebuild both now.
                runs.append(
                    dg.RunRequest(
                        run_key=_state_key("removed", scan.documents),
                        asset_selection=[dg.AssetKey(a) for a in REMOVAL_ASSETS],
                        tags={TRIGGER_TAG: "removed"},
                    )
                )
        if runs or partition_requests:
            context.log.info(
                f"docs: {changes.summary()}; {len(wanted)} document(s) in {len(runs)} run(s)"
            )
        return dg.SensorResult(
            run_requests=runs, dynamic_partitions_requests=partition_requests, cursor=digest
        )

    return docs_sensor


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "ragft_automation",
        # Every asset of the graph: those with an eager condition (mcq_scores, general_scores,
        # ...) are evaluated, the others have none. Naming them here would leave an optional
        # asset to Dagster's own default sensor, which is off.
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Evaluates the eager conditions of the assets downstream of the documents.",
    )


def build_nightly_schedule(recipe: Recipe) -> dg.ScheduleDefinition:
    """``nightly_evaluation`` (RUNNING by default): one ``evaluation_job`` run per
    ``mcq_scores`` cell; ``mcq_report`` follows through its eager condition once every cell is
    done, and its regression check compares the new report with the previous one."""
    ev = recipe.evaluation
    cells = [(m, c) for m in ev.all_models for c in ev.contexts]

    @dg.schedule(
        name="nightly_evaluation",
        cron_schedule=ev.nightly_cron,
        job_name="evaluation_job",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Re-scores all {len(cells)} mcq_scores cells ({ev.nightly_cron}, UTC); the report "
            "and its regression check follow."
        ),
    )
    def nightly_evaluation(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        when = context.scheduled_execution_time
        stamp = when.strftime("%Y-%m-%dT%H:%M") if when else "manual"
        return [
            dg.RunRequest(
                run_key=f"nightly-{stamp}-{m}|{c}",
                partition_key=dg.MultiPartitionKey({"model": m, "context": c}),
                tags={TRIGGER_TAG: "nightly"},
            )
            for m, c in cells
        ]

    return nightly_evaluation
