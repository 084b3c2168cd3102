"""The instance a team deploys, end to end: PostgreSQL storage (a real server the test starts),
``dagster-daemon run`` with the queued run coordinator and Dagster's own run launcher, on
``deploy/dagster.yaml`` as shipped. (The opt-in warm launcher of ``deploy/dagster-fast.yaml``
is tested in test_launcher.py and, under ``dagster dev``, in test_ui_e2e.py.)

Through the daemon: the docs sensor batches new documents into runs, declarative automation
builds the downstream, an asset backfill (what the UI's Launch backfill submits) runs
``docs.batch_size`` documents a run, the sensor re-runs an edited document alone, and the
``gpu`` pool holds one GPU-bound step at a time (proven from the event log's step times).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.orchestration.automation import latest_materialization_record as _latest
from ragft_dagster.orchestration.automation import latest_records_by_partition as _latest_all

from ..conftest import ROOT, recipe_with_docs, stop_process_group, wait_until

DOCS = ["installation.md", "overview.md"]
BATCH = 4
BIN = Path(sys.executable).parent


def _gpu_step_intervals(instance: dg.DagsterInstance) -> list[tuple[float, float, str]]:
    """(start, end, run id) of every step of a pool="gpu" asset, from the event log."""
    gpu_steps = {"specialist_model", "merged_model", "dpo_model", "lora_adapter", "mcq_scores"}
    found = []
    for run in instance.get_runs():
        starts: dict[str, float] = {}
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or event.step_key not in gpu_steps:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                starts[event.step_key] = record.timestamp
            elif event.event_type in (
                dg.DagsterEventType.STEP_SUCCESS,
                dg.DagsterEventType.STEP_FAILURE,
            ):
                found.append((starts[event.step_key], record.timestamp, run.run_id))
    return sorted(found)


@pytest.mark.slow
def test_sensor_automation_backfill_and_gpu_pool_on_postgres(tmp_path, postgres, monkeypatch):
    recipe, docs = recipe_with_docs(tmp_path, DOCS)
    for i in range(7):  # 9 documents: ceil(9 / 4) = 3 runs a pass
        (docs / f"page-{i}.md").write_text(f"# Page {i}\n\nThe page {i} explains setting {i}.\n")
    n_docs = len(DOCS) + 7
    raw = yaml.safe_load(recipe.read_text())
    raw["docs"]["batch_size"] = BATCH
    recipe.write_text(yaml.safe_dump(raw))
    profile = tmp_path / "resources" / "test.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump({"name": "test", "artifacts": {"root": str(tmp_path / "a")}}))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RAGFT_RECIPE": str(recipe),
        "RAGFT_PROFILE": str(profile),
        "DAGSTER_PG_HOST": postgres["hostname"],
        "DAGSTER_PG_PORT": str(postgres["port"]),
        "DAGSTER_PG_USER": postgres["username"],
        "DAGSTER_PG_PASSWORD": "unused-trust-auth",
        "DAGSTER_PG_DB": postgres["db_name"],
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    instance = dg.DagsterInstance.get()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"

    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", "ragft_dagster.definitions"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def runs(**tags: str) -> list[dg.DagsterRun]:
            found = instance.get_runs(filters=dg.RunsFilter(tags=tags))
            failed = [r.run_id for r in found if r.status == dg.DagsterRunStatus.FAILURE]
            assert not failed, f"runs {failed} failed\n{log.read_text()[-4000:]}"
            return found

        def all_succeeded(found: list[dg.DagsterRun], n: int) -> bool:
            return len(found) == n and all(r.status == dg.DagsterRunStatus.SUCCESS for r in found)

        # The docs sensor: nine new documents, three runs of at most four.
        wait_until(
            lambda: all_succeeded(runs(**{"dagster/sensor_name": "docs_sensor"}), 3),
            420,
            "the docs sensor's three batch runs",
            log,
        )
        assert len(_latest_all(instance, "synthetic_qa")) == n_docs

        # Declarative automation builds the unpartitioned downstream after the document runs.
        wait_until(
            lambda: _latest(instance, "vector_index") and _latest(instance, "sft_dataset"),
            300,
            "automation to build vector_index and sft_dataset",
            log,
        )

        # An asset backfill of every document (the UI's Launch backfill): three runs again.
        before = {d: r.run_id for d, r in _latest_all(instance, "doc_chunks").items()}
        submitted = subprocess.run(
            [str(BIN / "ragft"), "backfill"], env=env, capture_output=True, text=True, timeout=180
        )
        assert submitted.returncode == 0, submitted.stderr
        backfill = submitted.stdout.split()[1].rstrip(":")
        assert f"for {n_docs} documents, at most {BATCH} a run" in submitted.stdout
        wait_until(
            lambda: all_succeeded(
                runs(**{"dagster/backfill": backfill}), math.ceil(n_docs / BATCH)
            ),
            420,
            "the backfill's batch runs",
            log,
        )
        after = _latest_all(instance, "doc_chunks")
        assert all(after[d].run_id != before[d] for d in before)
        assert len({r.run_id for r in after.values()}) == 3

        # The sensor re-runs an edited document alone.
        with (docs / DOCS[1]).open("a") as f:
            f.write("\n## Support\n\nAsk in the **#ragft** channel.\n")
        wait_until(
            lambda: _latest(instance, "doc_chunks", DOCS[1]).run_id != after[DOCS[1]].run_id,
            300,
            "the docs sensor to re-run the edited document",
            log,
        )
        edit_run = instance.get_run_by_id(_latest(instance, "doc_chunks", DOCS[1]).run_id)
        assert edit_run.tags.get("dagster/partition") == DOCS[1]
        # ... and, a change that fits one run, updates the index in that run (automation may
        # update it again after: the backfill's own index run can end later)
        assert dg.AssetKey("vector_index") in (edit_run.asset_selection or set())

        def index_updated_by_the_edit() -> bool:
            records = instance.fetch_materializations(dg.AssetKey("vector_index"), limit=50)
            return any(r.run_id == edit_run.run_id for r in records.records)

        wait_until(
            index_updated_by_the_edit, 120, "the edited document's run to update vector_index", log
        )

        # The gpu pool: two runs of a GPU-bound asset queued at once never overlap their steps.
        launch = [str(BIN / "dagster"), "job", "launch", "-m", "ragft_dagster.definitions"]
        pool_tags = ["--tags", json.dumps({"t": "pool"})]
        launches = [
            subprocess.Popen(
                [*launch, "-j", "models_job", "-o", "merged_model", *pool_tags],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        assert all(p.wait(timeout=180) == 0 for p in launches)
        wait_until(lambda: all_succeeded(runs(t="pool"), 2), 420, "the two merge runs", log)
        intervals = _gpu_step_intervals(instance)
        assert len({run for _, _, run in intervals}) >= 2
        # the second run was queued while the first one's GPU step ran: the pool held it
        records = instance.get_run_records(dg.RunsFilter(tags={"t": "pool"}))
        submitted = sorted(r.create_timestamp.timestamp() for r in records)
        first_end = min(
            end for _, end, run in intervals if run in {r.dagster_run.run_id for r in records}
        )
        assert submitted[1] < first_end, "the second run was submitted after the first ended"
        for (_, end, first), (start, _, second) in pairwise(intervals):
            assert start >= end, f"GPU steps of runs {first} and {second} overlapped"
    finally:
        stop_process_group(daemon)
        instance.dispose()
