"""The project as the `dg` CLI sees it ([tool.dg] in pyproject.toml)."""

import os
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT

DG = Path(sys.executable).parent / "dg"


def _dg(tmp_path, *args):
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
        "PATH": f"{DG.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    (tmp_path / "dagster.yaml").write_text("")
    return subprocess.run(
        [str(DG), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_dg_check_defs_loads_the_project(tmp_path):
    done = _dg(tmp_path, "check", "defs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def test_dg_list_defs_shows_the_graph_and_the_stage_jobs(tmp_path):
    done = _dg(tmp_path, "list", "defs", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    import json

    listed = json.loads(done.stdout)
    assets = {a["asset_key"] for a in listed["assets"]}
    assert {"specialist_model", "doc_chunks", "lora_adapter", "mcq_report"} <= assets
    jobs = {j["name"] for j in listed["jobs"]}
    assert {"models_job", "documents_job", "evaluation_job", "report_job"} <= jobs
