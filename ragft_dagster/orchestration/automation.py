"""What keeps the assets current by itself: the docs sensor and declarative automation.

The docs sensor (RUNNING by default) hashes every file of the recipe's docs folder on each tick:
a new file gets a partition and a run, a changed file a run (its run key is the content hash, so
one state never runs twice), a removed file loses its partition and its chunk and Q&A files. The
unpartitioned downstream (``sft_dataset``, ``vector_index``, ``lora_adapter``, ``mcq_scores``,
``mcq_report``) carries an eager automation condition, evaluated by the automation sensor shipped
RUNNING here, so it updates once the document runs are done (and never while one is in
progress). ``ragft run`` uses the same change plan without a daemon.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import dagster as dg

from ragft_dagster.assets._meta import DOCUMENTS, TRIGGER_TAG, documents_partitions
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.data.documents import (
    CONTENT_HASH_KEY,
    DocumentChanges,
    discover_documents,
    plan_document_changes,
    purge_document_files,
)
from ragft_dagster.resources import ArtifactStoreResource

DOCUMENT_ASSETS = ["doc_chunks", "synthetic_qa"]
# A removal changes no partition's data, so nothing upstream "updates": the sensor itself asks
# for these two, and the eager conditions take over from there.
REMOVAL_ASSETS = ["sft_dataset", "vector_index"]


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


def built_from_hash(instance: dg.DagsterInstance, doc_key: str) -> str | None:
    """The content hash the latest ``doc_chunks`` of a document was built from."""
    mat = latest_materialization(instance, "doc_chunks", doc_key)
    if mat is None:
        return None
    value = mat.metadata.get(CONTENT_HASH_KEY)
    return getattr(value, "value", value)


def is_current(
    instance: dg.DagsterInstance, asset: str, code_version: str | None, partition: str | None = None
) -> bool:
    """Whether an asset (partition) is materialized with the current code version."""
    mat = latest_materialization(instance, asset, partition)
    return mat is not None and mat.tags.get("dagster/code_version") == code_version


def document_changes(
    instance: dg.DagsterInstance, recipe: Recipe, known: dict[str, str] | None = None
) -> tuple[dict[str, str], DocumentChanges]:
    """Scan the docs folder and compare it with the partitions and what they were built from.

    Args:
        instance: The Dagster instance holding the partitions and materializations.
        recipe: Names the docs folder and glob.
        known: Hashes already handled (the sensor's cursor): those keys are not looked up.

    Returns:
        The documents' content hashes and the plan; ``changes.skipped`` names the matching
        paths that are not readable documents (loops, broken links...), for a warning.
    """
    scan = discover_documents(recipe.docs_dir, recipe.docs.glob)
    current = scan.documents
    partitions = instance.get_dynamic_partitions(DOCUMENTS)
    known = known or {}

    def built_from(key: str) -> str | None:
        if known.get(key) == current[key]:
            return current[key]
        return built_from_hash(instance, key)

    return current, plan_document_changes(current, partitions, built_from, scan.skipped)


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
        known = json.loads(context.cursor) if context.cursor else {}
        try:
            current, changes = document_changes(context.instance, recipe, known)
        except OSError as exc:  # the docs folder is missing or unreadable
            return dg.SkipReason(str(exc))
        for warning in changes.warnings(recipe.docs_dir):
            context.log.warning(f"skipped {warning}")
        runs = [
            dg.RunRequest(
                # the same document content never runs twice (Dagster skips a used run key)
                run_key=f"{key}@{current[key][:16]}",
                partition_key=key,
                asset_selection=[dg.AssetKey(a) for a in DOCUMENT_ASSETS],
                tags={TRIGGER_TAG: "added" if key in changes.added else "changed"},
            )
            for key in changes.to_run
        ]
        partition_requests: list[Any] = []
        if changes.added:
            partition_requests.append(documents_partitions.build_add_request(changes.added))
        if changes.removed:
            partition_requests.append(documents_partitions.build_delete_request(changes.removed))
            purged = purge_document_files(artifacts.layout().document_files, changes.removed)
            context.log.info(f"removed {changes.removed}: deleted {purged} chunk/Q&A files")
            if not runs:
                # Nothing else will touch the index or the dataset: rebuild both now.
                runs.append(
                    dg.RunRequest(
                        run_key=_state_key("removed", current),
                        asset_selection=[dg.AssetKey(a) for a in REMOVAL_ASSETS],
                        tags={TRIGGER_TAG: "removed"},
                    )
                )
        if runs or partition_requests:
            context.log.info(f"docs: {changes.summary()}")
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=partition_requests,
            cursor=json.dumps(current, sort_keys=True),
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
