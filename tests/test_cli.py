"""``ragft run`` stopped by Ctrl-C or SIGTERM (issue 26): one line per interrupted job, no stack
trace, exit 130 / 143, and the next run continues. Real ``ragft`` processes in their own process
group over a temporary DAGSTER_HOME; every wait is bounded and the test stops what it started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import LOCAL_PROFILE, ROOT, stop_process_group, write_recipe

pytestmark = pytest.mark.slow

RAGFT = Path(sys.executable).parent / "ragft"


def _interrupt_during_training(tmp_path: Path, env: dict, sig: int) -> tuple[int, str]:
    """Start ``ragft run``, wait until DPO training has taken a step, send ``sig`` to the
    ragft process alone, and return (exit status, everything it printed)."""
    log = tmp_path / f"run-{sig}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(RAGFT), "run", "--recipe", env["RAGFT_RECIPE"], "--profile", env["PROFILE"]],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "'loss'" not in log.read_text(errors="replace"):  # a training step was logged
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        stop_process_group(proc)
    return code, log.read_text(errors="replace")


def test_an_interrupted_run_says_what_was_kept_in_one_line_and_the_rerun_continues(tmp_path):
    recipe = write_recipe(tmp_path)
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        LOCAL_PROFILE.read_text().replace("root: .artifacts", f"root: {tmp_path / 'artifacts'}", 1)
    )
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RAGFT_RECIPE": str(recipe),
        "PROFILE": str(profile),
    }
    for sig, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        code, output = _interrupt_during_training(tmp_path, env, sig)
        assert code == status, output[-3000:]
        assert "Traceback" not in output and "Stack Trace" not in output, output[-3000:]
        interrupted = [line for line in output.splitlines() if line.startswith("INTERRUPTED")]
        assert len(interrupted) == 1 and "models_job" in interrupted[0], output[-3000:]
        assert "`ragft run` continues from here" in interrupted[0]
        assert f"stopped by {signal.Signals(sig).name}" in output
        # the documents finished before the interrupt: the second run does not redo them
        if sig == signal.SIGTERM:
            assert "documents_job" not in output, output[-3000:]


@pytest.mark.parametrize(
    ("where", "value", "says"),
    [
        ("glob", "/srv/docs/**/*.md", "key 'docs.glob': '/srv/docs/**/*.md' is an absolute path"),
        ("glob", "../*.md", "key 'docs.glob': '../*.md' leaves docs.path"),
        ("root", "afile", "key 'artifacts.root': "),
    ],
)
def test_values_that_cannot_run_fail_ragft_run_in_one_line_naming_the_key(
    tmp_path, where, value, says
):
    """Issue 26: these loaded, then ended `ragft run` in a traceback."""
    (tmp_path / "afile").write_text("not a folder")
    recipe = write_recipe(
        tmp_path, (lambda raw: raw["docs"].update(glob=value)) if where == "glob" else None
    )
    profile = tmp_path / "resources" / "p.yaml"
    profile.parent.mkdir()
    root = tmp_path / value if where == "root" else tmp_path / "artifacts"
    profile.write_text(LOCAL_PROFILE.read_text().replace("root: .artifacts", f"root: {root}", 1))
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [str(RAGFT), "run", "--recipe", str(recipe), "--profile", str(profile)],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert says in out and "Traceback" not in out, out
