"""The real daemon: a CLI backfill, the docs sensor and declarative automation, end to end.

Starts ``dagster-daemon run`` on a temporary DAGSTER_HOME (its own process group, stopped by
the test), exactly as ``dagster dev`` runs it next to the webserver.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.definitions import build_definitions
from ragft_dagster.orchestration.automation import latest_materialization_record as _latest

from ..conftest import ROOT, recipe_with_docs, wait_until

DOCS = ["installation.md", "overview.md"]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_backfill_sensor_and_automation_through_the_daemon(tmp_path, monkeypatch):
    recipe, docs = recipe_with_docs(tmp_path, DOCS)
    profile = tmp_path / "resources" / "test.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump({"name": "test", "artifacts": {"root": str(tmp_path / "a")}}))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RAGFT_RECIPE": str(recipe),
        "RAGFT_PROFILE": str(profile),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    instance = dg.DagsterInstance.get()
    defs = build_definitions()
    instance.add_dynamic_partitions("documents", DOCS)
    for doc in DOCS:
        assert (
            defs.resolve_job_def("documents_job")
            .execute_in_process(instance=instance, partition_key=doc)
            .success
        )
    old_qa_version = _latest(instance, "synthetic_qa", DOCS[0]).asset_materialization.tags[
        "dagster/code_version"
    ]

    # A prompt change makes every synthetic_qa partition stale: backfill them from the CLI.
    raw = yaml.safe_load(recipe.read_text())
    raw["qa"]["prompt"] = "Write {n} questions and answers about this excerpt:\n{context}"
    recipe.write_text(yaml.safe_dump(raw))
    cli = [str(BIN / "dagster"), "job", "backfill", "-m", "ragft_dagster.definitions"]
    subprocess.run(
        [*cli, "-j", "documents_job", "--partitions", ",".join(DOCS), "--noprompt"],
        env=env,
        check=True,
        timeout=180,
        capture_output=True,
    )
    (backfill,) = instance.get_backfills()

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
        runs_filter = dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id})

        def backfilled() -> bool:
            runs = instance.get_runs(filters=runs_filter)
            failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            assert not failed, f"backfill run failed\n{log.read_text()[-4000:]}"
            return len(runs) == len(DOCS) and all(
                r.status == dg.DagsterRunStatus.SUCCESS for r in runs
            )

        wait_until(backfilled, 300, "the backfill runs", log)
        for doc in DOCS:
            tags = _latest(instance, "synthetic_qa", doc).asset_materialization.tags
            assert tags["dagster/code_version"] != old_qa_version

        # Declarative automation builds the unpartitioned downstream after the document runs.
        wait_until(
            lambda: (
                _latest(instance, "vector_index") is not None
                and _latest(instance, "sft_dataset") is not None
            ),
            300,
            "automation to build vector_index and sft_dataset",
            log,
        )

        # The docs sensor notices an edited document and re-runs only that partition.
        before = _latest(instance, "doc_chunks", DOCS[1]).storage_id
        untouched = _latest(instance, "doc_chunks", DOCS[0]).storage_id
        with (docs / DOCS[1]).open("a") as f:
            f.write("\n## Support\n\nAsk in the **#ragft** channel.\n")
        wait_until(
            lambda: _latest(instance, "doc_chunks", DOCS[1]).storage_id != before,
            300,
            "the docs sensor to re-run the edited document",
            log,
        )
        assert _latest(instance, "doc_chunks", DOCS[0]).storage_id == untouched
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)
        instance.dispose()
