"""The ceiling docs/deployment.md states (figures in docs/figures.md), tested: 5,000 document
partitions on the default SQLite instance and on PostgreSQL (a real server the test starts).
The docs sensor's ticks, an asset backfill's submission and the UI's partition query (the GraphQL
the asset page sends) all finish, with the work each should do, at that size.

The bounds are loose on purpose (a slow CI machine must pass): they catch a per-partition query
or a full re-read creeping back, which costs minutes at this size, not seconds. The figures are
printed (`pytest -s`); `make bench-scale` measures the data stages themselves.
"""

from __future__ import annotations

import time

import dagster as dg
import pytest
import yaml

from ragft_dagster.backfill import launch_backfill
from ragft_dagster.data.documents import CONTENT_HASH_KEY, scan_documents
from ragft_dagster.definitions import build_definitions
from ragft_dagster.resources import ArtifactStoreResource

from ..conftest import ROOT, write_recipe

N = 5000
PG_SCHEME = "postgresql+psycopg2"  # as deploy/dagster.yaml
BATCH = 100
PARTITIONS_QUERY = """
query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  partitionKeysByDimension { partitionKeys }
  assetPartitionStatuses { ... on DefaultPartitionStatuses {
    materializedPartitions failedPartitions materializingPartitions unmaterializedPartitions } }
} } }
"""


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_five_thousand_documents(storage, tmp_path, monkeypatch, request):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(N):
        (docs / f"page-{i:04d}.md").write_text(f"# Page {i}\n\nSetting {i} defaults to {i}.\n")
    recipe = write_recipe(
        tmp_path, lambda raw: raw["docs"].update(path=str(docs), batch_size=BATCH)
    )
    root = tmp_path / "artifacts"
    defs = build_definitions(recipe, artifact_root=root)
    sensor = defs.get_sensor_def("docs_sensor")
    figures: dict[str, float] = {}

    def tick(instance: dg.DagsterInstance, cursor: str | None, name: str):
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={"artifacts": ArtifactStoreResource(root=str(root))},
            definitions=defs,
        )
        t0 = time.perf_counter()
        result = sensor(context)
        figures[name] = time.perf_counter() - t0
        return result

    (tmp_path / "home").mkdir()
    overrides = None
    if storage == "postgres":
        db = request.getfixturevalue("postgres")
        overrides = {
            "storage": {
                "postgres": {"postgres_db": {**db, "password": "unused", "scheme": PG_SCHEME}}
            }
        }
    with dg.instance_for_test(temp_dir=str(tmp_path / "home"), overrides=overrides) as instance:
        kind = type(instance.event_log_storage).__name__
        assert kind.startswith("Sqlite" if storage == "sqlite" else "Postgres")
        first = tick(instance, None, "first tick (reads every file)")
        (add,) = first.dynamic_partitions_requests
        assert len(add.partition_keys) == N
        assert len(first.run_requests) == N // BATCH  # 50 runs, not 5,000
        t0 = time.perf_counter()
        instance.add_dynamic_partitions("documents", list(add.partition_keys))
        figures["adding 5,000 partitions"] = time.perf_counter() - t0
        # the 50 runs completed: one doc_chunks materialization per document
        for key, digest in scan_documents(docs).items():
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    "doc_chunks", partition=key, metadata={CONTENT_HASH_KEY: digest}
                )
            )

        quiet = tick(instance, first.cursor, "tick, nothing changed")
        assert isinstance(quiet, dg.SkipReason) and "(0 file(s) read)" in quiet.skip_message
        assert len(first.cursor) < 40  # the cursor does not grow with the corpus

        (docs / "page-2500.md").write_text("# Page 2500\n\nSetting 2500 now defaults to off.\n")
        edited = tick(instance, first.cursor, "tick after one edit")
        assert [r.partition_key for r in edited.run_requests] == ["page-2500.md"]

        # The backfill's submission and the UI's asset page (partition keys and their status),
        # through the real GraphQL schema, as `ragft backfill` and the UI send them.
        from dagster_graphql.test.utils import (
            define_out_of_process_context,
            execute_dagster_graphql,
        )

        monkeypatch.setenv("RAGFT_RECIPE", str(recipe))
        monkeypatch.setenv("RAGFT_PROFILE", str(_profile(tmp_path, root)))
        with define_out_of_process_context(str(ROOT / "workspace.yaml"), None, instance) as ctx:

            def execute(document, variables):
                done = execute_dagster_graphql(ctx, document, variables)
                return {"data": done.data, "errors": done.errors}

            t0 = time.perf_counter()
            backfill_id = launch_backfill(execute, title="5,000 documents")
            figures["backfill submission"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = execute_dagster_graphql(
                ctx, PARTITIONS_QUERY, {"key": {"path": ["doc_chunks"]}}
            )
            figures["UI partition query"] = time.perf_counter() - t0
        backfill = instance.get_backfill(backfill_id)
        assert backfill.title == "5,000 documents"
        target = backfill.asset_backfill_data.target_subset
        assert target.num_partitions_and_non_partitioned_assets == 2 * N
        assert not result.errors, result.errors
        node = result.data["assetNodeOrError"]
        assert len(node["partitionKeysByDimension"][0]["partitionKeys"]) == N
        assert len(node["assetPartitionStatuses"]["materializedPartitions"]) == N
    print(
        f"\n{storage}:", "; ".join(f"{name} {seconds:.2f} s" for name, seconds in figures.items())
    )
    for name, seconds in figures.items():
        assert seconds < 60, f"{name} took {seconds:.0f} s at {N} partitions"


def _profile(tmp_path, root):
    path = tmp_path / "resources" / "test.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({"name": "test", "artifacts": {"root": str(root)}}))
    return path
