"""The project as the `dg` CLI sees it ([tool.dg] in pyproject.toml), from a fresh shell in the
project root: no DAGSTER_HOME, so Dagster reads the root's dagster.yaml over a temporary storage
folder (issue 27: the instance file once needed DAGSTER_HOME and this ended in a traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT

DG = Path(sys.executable).parent / "dg"


def _dg(*args):
    env = {
        **{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
        "PATH": f"{DG.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        [str(DG), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def test_dg_check_defs_loads_the_project():
    done = _dg("check", "defs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def test_dg_list_defs_shows_the_graph_and_the_stage_jobs():
    done = _dg("list", "defs", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    listed = json.loads(done.stdout)
    assets = {a["asset_key"] for a in listed["assets"]}
    assert {"specialist_model", "doc_chunks", "lora_adapter", "mcq_report"} <= assets
    jobs = {j["name"] for j in listed["jobs"]}
    assert {"models_job", "documents_job", "evaluation_job", "report_job"} <= jobs
