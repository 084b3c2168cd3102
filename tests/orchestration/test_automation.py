"""When the docs change: the change plan, the docs sensor, declarative automation, code versions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.data.documents import CONTENT_HASH_KEY as HASH
from ragft_dagster.data.documents import plan_document_changes, scan_documents
from ragft_dagster.definitions import build_definitions
from ragft_dagster.orchestration.automation import REMOVAL_ASSETS, scan_documents_folder
from ragft_dagster.orchestration.batches import RANGE_END_TAG, RANGE_START_TAG
from ragft_dagster.resources import ArtifactStoreResource

from ..conftest import recipe_with_docs, write_recipe

DOCS = ["glossary.md", "installation.md", "overview.md"]


def test_plan_document_changes():
    current = {"a.md": "1", "b.md": "2", "c.md": "3"}
    built = {"a.md": "1", "b.md": "old", "d.md": "4"}
    changes = plan_document_changes(current, {"a.md", "b.md", "d.md"}, built.get)
    assert changes.added == ["c.md"]
    assert changes.changed == ["b.md"]
    assert changes.removed == ["d.md"]
    assert changes.unchanged == ["a.md"]
    assert changes.to_run == ["b.md", "c.md"]
    # a partition that was never built counts as changed
    assert plan_document_changes({"a.md": "1"}, {"a.md"}, lambda k: None).changed == ["a.md"]


def _code_versions(recipe: Path, tmp_path: Path) -> dict[str, str]:
    graph = build_definitions(recipe, artifact_root=tmp_path / "a").resolve_asset_graph()
    return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda raw: raw["lora"].update(r=4), {"lora_adapter"}),
        (
            lambda raw: raw["qa"].update(prompt="Ask {n} questions about: {context}"),
            {"synthetic_qa"},
        ),
        (lambda raw: raw["chunking"].update(chunk_size=200), {"doc_chunks"}),
        (lambda raw: raw["retrieval"].update(top_k=5), {"vector_index", "mcq_scores"}),
        # operational settings change nothing that is produced
        (lambda raw: raw["qa"].update(budget={"max_requests": 10}, max_retries=9), set()),
    ],
    ids=["lora", "qa-prompt", "chunking", "retrieval", "qa-budget"],
)
def test_code_versions_follow_recipe_sections(tmp_path, edit, expected):
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    before = _code_versions(write_recipe(tmp_path / "before"), tmp_path)
    after = _code_versions(write_recipe(tmp_path / "after", edit), tmp_path)
    assert {k for k in before if before[k] != after[k]} == expected


def _tick(defs: dg.Definitions, instance, root: Path, cursor: str | None) -> dg.SensorResult:
    sensor = defs.get_sensor_def("docs_sensor")
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"artifacts": ArtifactStoreResource(root=str(root))},
        definitions=defs,
    )
    return sensor(context)


def test_docs_sensor_adds_reruns_and_removes_documents(tmp_path):
    recipe, docs = recipe_with_docs(tmp_path, DOCS)
    root = tmp_path / "artifacts"
    defs = build_definitions(recipe, artifact_root=root)
    assert defs.get_sensor_def("docs_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    with dg.instance_for_test() as instance:
        first = _tick(defs, instance, root, None)
        (add,) = first.dynamic_partitions_requests
        assert sorted(add.partition_keys) == DOCS
        # three new documents: one run over their partition range
        (batch,) = first.run_requests
        assert batch.partition_key is None
        assert (batch.tags[RANGE_START_TAG], batch.tags[RANGE_END_TAG]) == (DOCS[0], DOCS[-1])
        # a change that fits one run updates the index in it too
        assert {k.to_user_string() for k in batch.asset_selection} == {
            "doc_chunks",
            "synthetic_qa",
            "vector_index",
        }
        assert batch.tags["ragft/trigger"] == "added"
        instance.add_dynamic_partitions("documents", DOCS)
        for doc, digest in scan_documents(docs).items():  # the batch ran
            instance.report_runless_asset_event(
                dg.AssetMaterialization("doc_chunks", partition=doc, metadata={HASH: digest})
            )

        # Nothing changed: the tick stops at the cursor's digest.
        quiet = _tick(defs, instance, root, first.cursor)
        assert isinstance(quiet, dg.SkipReason) and "0 file(s) read" in quiet.skip_message

        # One document edited: one run, keyed by its new content.
        with (docs / "installation.md").open("a") as f:
            f.write("\n## Upgrading\n\nRun `make install` again after pulling.\n")
        edited = _tick(defs, instance, root, first.cursor)
        assert [r.partition_key for r in edited.run_requests] == ["installation.md"]
        assert dg.AssetKey("vector_index") in edited.run_requests[0].asset_selection
        again = _tick(defs, instance, root, first.cursor)  # the same state: the same run key
        assert again.run_requests[0].run_key == edited.run_requests[0].run_key
        assert edited.run_requests[0].run_key != batch.run_key
        assert edited.run_requests[0].tags["ragft/trigger"] == "changed"
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                "doc_chunks",
                partition="installation.md",
                metadata={HASH: scan_documents(docs)["installation.md"]},
            )
        )

        # One document removed: its partition, chunks and Q&A go; index and dataset rebuild.
        layout = ArtifactLayout(root)
        for path in layout.document_files("glossary.md"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n")
        (docs / "glossary.md").unlink()
        removed = _tick(defs, instance, root, edited.cursor)
        (delete,) = removed.dynamic_partitions_requests
        assert list(delete.partition_keys) == ["glossary.md"]
        assert not any(p.exists() for p in layout.document_files("glossary.md"))
        (rebuild,) = removed.run_requests
        assert {k.to_user_string() for k in rebuild.asset_selection} == set(REMOVAL_ASSETS)
        assert len(removed.cursor) < 40  # a digest, whatever the number of documents


def test_docs_sensor_does_not_relaunch_a_document_whose_run_is_in_flight(tmp_path):
    """A run of the sensor's still going: a tick that sees another change does not launch its
    documents again when the run started after their last edit (it reads their new content)."""
    from dagster._core.storage.dagster_run import DagsterRun

    recipe, docs = recipe_with_docs(tmp_path, DOCS)
    root = tmp_path / "artifacts"
    defs = build_definitions(recipe, artifact_root=root)
    with dg.instance_for_test() as instance:
        first = _tick(defs, instance, root, None)
        instance.add_dynamic_partitions("documents", DOCS)
        (batch,) = first.run_requests
        instance.add_run(  # the batch run, started and not finished
            DagsterRun(
                job_name="__ASSET_JOB",
                run_id="in-flight",
                status=dg.DagsterRunStatus.STARTED,
                tags={**batch.tags, "dagster/sensor_name": "docs_sensor"},
            )
        )
        (docs / "new.md").write_text("# New\n\nA new page.\n")
        second = _tick(defs, instance, root, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["new.md"]
        # one run, but another document run is unfinished: the index waits for both
        assert {k.to_user_string() for k in second.run_requests[0].asset_selection} == {
            "doc_chunks",
            "synthetic_qa",
        }
        (docs / "overview.md").write_text("# Overview\n\nEdited after the run started.\n")
        third = _tick(defs, instance, root, second.cursor)
        started = {k for r in third.run_requests for k in _covered(r, [*DOCS, "new.md"])}
        assert "overview.md" in started and "glossary.md" not in started


def _covered(request: dg.RunRequest, order: list[str]) -> list[str]:
    if request.partition_key:
        return [request.partition_key]
    start, end = (
        order.index(request.tags[RANGE_START_TAG]),
        order.index(request.tags[RANGE_END_TAG]),
    )
    return order[start : end + 1]


def test_docs_sensor_batches_a_burst_and_reads_only_changed_files(tmp_path):
    recipe, docs = recipe_with_docs(tmp_path, DOCS)
    for i in range(7):
        (docs / f"page-{i}.md").write_text(f"# Page {i}\n\nText of page {i}.\n")
    raw = yaml.safe_load(recipe.read_text())
    raw["docs"]["batch_size"] = 4
    recipe.write_text(yaml.safe_dump(raw))
    root = tmp_path / "artifacts"
    defs = build_definitions(recipe, artifact_root=root)
    with dg.instance_for_test() as instance:
        first = _tick(defs, instance, root, None)
        covered = [r.tags.get(RANGE_START_TAG, r.partition_key) for r in first.run_requests]
        assert len(first.run_requests) == 3 and len(covered) == 3  # 10 documents, 4 a run
        # several runs: the index waits for all of them (its eager condition), not in each one
        for run in first.run_requests:
            assert {k.to_user_string() for k in run.asset_selection} == {
                "doc_chunks",
                "synthetic_qa",
            }
        (add,) = first.dynamic_partitions_requests
        instance.add_dynamic_partitions("documents", list(add.partition_keys))
        # a touched file with the same bytes is read again (its ctime moved), and is unchanged
        os.utime(docs / "page-3.md")
        scan = scan_documents_folder(load_recipe(recipe), ArtifactLayout(root).docs_scan)
        assert scan.read == 1
        (docs / "page-5.md").write_text("# Page 5\n\nNew text.\n")
        scan = scan_documents_folder(load_recipe(recipe), ArtifactLayout(root).docs_scan)
        assert scan.read == 1 and scan.documents["page-5.md"] == scan_documents(docs)["page-5.md"]


def test_docs_sensor_skips_a_missing_folder(tmp_path):
    recipe, docs = recipe_with_docs(tmp_path, DOCS)
    defs = build_definitions(recipe, artifact_root=tmp_path / "a")
    shutil.rmtree(docs)
    with dg.instance_for_test() as instance:
        result = _tick(defs, instance, tmp_path / "a", None)
    assert isinstance(result, dg.SkipReason) and "docs.path" in result.skip_message


def _report(instance, asset: str, partitions: list[str | None]) -> None:
    for p in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=p))


def test_downstream_updates_once_after_a_document_run(tmp_path):
    """Declarative automation: after one document's chunks and Q&A update, every unpartitioned
    downstream asset (and every score cell) is requested in one tick, and never again."""
    recipe, _ = recipe_with_docs(tmp_path, DOCS)
    defs = build_definitions(recipe, artifact_root=tmp_path / "a")
    graph = defs.resolve_asset_graph()
    cells = graph.get(dg.AssetKey("mcq_scores")).partitions_def.get_partition_keys()
    models = graph.get(dg.AssetKey("general_scores")).partitions_def.get_partition_keys()
    automated = ["sft_dataset", "vector_index", "lora_adapter", "mcq_scores", "mcq_report"]
    automated.append("general_scores")
    for key in graph.get_all_asset_keys():
        has = graph.get(key).automation_condition is not None
        assert has == (key.to_user_string() in automated), key
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", DOCS)
        for asset in ("merged_model", "dpo_model", "sft_dataset", "vector_index", "lora_adapter"):
            _report(instance, asset, [None])
        for asset in ("doc_chunks", "synthetic_qa"):
            _report(instance, asset, DOCS)
        _report(instance, "mcq_scores", cells)
        _report(instance, "general_scores", models)
        _report(instance, "mcq_report", [None])

        start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert start.total_requested == 0

        def tick(cursor):
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            requested = {
                k.to_user_string(): result.get_requested_partitions(k)
                for k in graph.get_all_asset_keys()
                if result.get_num_requested(k)
            }
            return result.cursor, requested

        def scores_then_report(cursor):
            """One tick with no upstream update first (a cell never scores a model about to
            change), then every score cell in one tick, then the report."""
            cursor, requested = tick(cursor)
            assert requested == {}
            cursor, requested = tick(cursor)
            assert requested == {"mcq_scores": set(cells), "general_scores": set(models)}
            _report(instance, "mcq_scores", cells)
            _report(instance, "general_scores", models)
            cursor, requested = tick(cursor)
            assert requested == {"mcq_report": {None}}
            _report(instance, "mcq_report", [None])
            return cursor

        _report(instance, "doc_chunks", ["installation.md"])
        _report(instance, "synthetic_qa", ["installation.md"])
        # Unpartitioned assets that can share a run are requested together ...
        cursor, requested = tick(start.cursor)
        assert requested == {"sft_dataset": {None}, "vector_index": {None}, "lora_adapter": {None}}
        # ... the score cells once that run is done (they cannot share a run; while it is in
        # progress, eager's ~any_deps_in_progress holds them back) ...
        for asset in ("sft_dataset", "vector_index", "lora_adapter"):
            _report(instance, asset, [None])
        # ... then the report; and once all is done, nothing more: no double runs.
        cursor = scores_then_report(cursor)
        cursor, requested = tick(cursor)
        assert requested == {}

        # A docs sensor run that updated the index with the document: the index is not
        # requested again, only what the run left out.
        for asset in ("doc_chunks", "synthetic_qa"):
            _report(instance, asset, ["glossary.md"])
        _report(instance, "vector_index", [None])
        cursor, requested = tick(cursor)
        assert requested == {"sft_dataset": {None}, "lora_adapter": {None}}
        for asset in ("sft_dataset", "lora_adapter"):  # that run, done before the next tick
            _report(instance, asset, [None])
        cursor = scores_then_report(cursor)

        # While a document partition is missing (just added, not built), nothing runs.
        instance.add_dynamic_partitions("documents", ["new.md"])
        _report(instance, "synthetic_qa", ["overview.md"])
        cursor, requested = tick(cursor)
        assert requested == {}
