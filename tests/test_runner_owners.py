"""Which other ``ragft run`` a run waits for (issue 26): only a live, older process of this
host, so two processes never wait for each other. Fast: a one-asset job in a test instance,
its runs tagged as if other processes had executed them. The real CLI case is
tests/test_cli_inputs.py (test_two_ragft_runs_started_at_once_run_one_after_the_other), where the
instance's run lock orders two processes of one host before either looks at runs."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from ragft_dagster.runner import OWNER_TAG, _owner, other_ragft_runs

from .conftest import stop_process_group


@dg.asset
def adapter() -> None:
    pass


def test_only_an_older_live_ragft_run_of_this_host_is_waited_for():
    job = dg.define_asset_job("training_job", selection=[adapter])
    defs = dg.Definitions(assets=[adapter], jobs=[job])
    younger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    me = _owner()
    host = me.split(":", 1)[0]
    owners = {
        "older": _owner(os.getppid()),  # the process that started this one started first
        "younger": _owner(younger.pid),
        "gone": f"{host}:{gone.pid}:1.000",
        "other host": f"not-{host}:{os.getppid()}:1.000",
        "me": me,
    }
    try:
        with dg.instance_for_test() as instance:
            run_of = {}
            for name, owner in owners.items():
                result = defs.resolve_job_def("training_job").execute_in_process(
                    instance=instance, tags={OWNER_TAG: owner}
                )
                run_of[result.run_id] = name
            jobs = {"training_job": ["adapter"]}
            found = other_ragft_runs(instance, ["adapter"], jobs)
            assert [run_of[run.run_id] for run in found] == ["older"]
            assert other_ragft_runs(instance, ["other"], jobs) == []
    finally:
        stop_process_group(younger)
