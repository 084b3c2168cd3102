"""The real UI, end to end: ``dagster dev`` (webserver + daemon), its GraphQL API and a browser.

Starts ``python -m dagster dev`` on 127.0.0.1 with a temporary DAGSTER_HOME (its own process
group, stopped by the fixture), checks the asset graph lists every asset, launches the whole
quickstart pipeline job by job through ``DagsterGraphQLClient`` (the daemon dequeues the runs),
then drives Debian's chromium through Playwright: a screenshot of the asset graph is saved as a
test artifact, and Materialize on an asset page launches a run that the run page shows
succeeding. Playwright never downloads a browser of its own (``make test`` installs chromium).

The instance is the opt-in ``dagster-fast.yaml`` (batching storage, warm run launcher): this is
the end-to-end test of both plugins under ``dagster dev``, and every run must be forked. The
default ``dagster.yaml`` (Dagster's own parts) is run end to end by the daemon test
(test_daemon.py, on its PostgreSQL twin) and loaded by ``dg`` (test_dg_cli.py) and ``dagster
dev`` (test_security.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient

from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.definitions import recipe_stages
from ragft_dagster.models.refs import merge_source_keys
from ragft_dagster.orchestration.launcher import WORKER_TAG

from ..conftest import (
    LOCAL_PROFILE,
    QUICKSTART_DATA,
    ROOT,
    TINY_RECIPE,
    free_port,
    log_tail,
    stop_process_group,
    wait_until,
    write_recipe,
)

CHROMIUM = Path("/usr/bin/chromium")
# Offline-safe: no sandbox (root in CI), no GPU, and none of the browser's own network traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCATION = "ragft_dagster"  # [tool.dagster] code_location_name
REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
JOBS = {s.job: list(s.assets) for s in recipe_stages(load_recipe(TINY_RECIPE))}
ALL_ASSETS = sorted({asset for assets in JOBS.values() for asset in assets})
# The whole quickstart: every document and every model x context cell. The run count sets the
# test's time (each run is a fresh process; the gpu pool runs the scoring cells one at a time).
DOCS = sorted(p.name for p in (QUICKSTART_DATA / "docs").glob("*.md"))
MODELS = ["base", "merged", "dpo", "sft"]
# general_scores also scores every merge source (the tiny recipe's tiny:math)
GENERAL = list(dict.fromkeys([*merge_source_keys(load_recipe(TINY_RECIPE)), *MODELS]))
# What a person sees at this size is the whole graph with every node's details (status,
# partitions, checks); a smaller window shows bare names.
VIEWPORT = {"width": 2000, "height": 1150}
RUN_TIMEOUT = 600.0


def _artifact_dir() -> Path:
    return Path(os.environ.get("RAGFT_TEST_ARTIFACTS") or ROOT / ".artifacts" / "test-artifacts")


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live (not zombie) process, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgid = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # the process ended while we looked
            continue
        if state != "Z":
            found.append((int(stat.parent.name), int(ppid), int(pgid)))
    return found


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, _, group in _processes() if group == pgid]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, parent, _ in _processes():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


@dataclass
class DagsterDev:
    url: str
    client: DagsterGraphQLClient
    log: Path
    docs: Path

    pgid: int

    def query(self, query: str, **variables) -> dict:
        """POST a GraphQL query to the webserver; its data, or an AssertionError."""
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        assert not body.get("errors"), body["errors"]
        return body["data"]


@pytest.fixture
def dagster_dev(tmp_path) -> Iterator[DagsterDev]:
    """``dagster dev`` on a free port of 127.0.0.1, over a copy of the quickstart recipe whose
    docs folder starts empty (the test fills it once the docs sensor is stopped)."""
    docs = tmp_path / "docs"
    docs.mkdir()

    def empty_docs(raw: dict) -> None:
        raw["docs"]["path"] = str(docs)
        assert raw["evaluation"]["models"] == MODELS

    recipe = write_recipe(tmp_path, empty_docs)
    profile = yaml.safe_load(LOCAL_PROFILE.read_text())
    profile["artifacts"]["root"] = str(tmp_path / "artifacts")
    profile_path = tmp_path / "profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The opt-in fast instance: queued runs, the gpu pool, telemetry off, and our plugins.
    shutil.copy(ROOT / "dagster-fast.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RAGFT_RECIPE": str(recipe),
        "RAGFT_PROFILE": str(profile_path),
    }
    port = free_port()
    log = tmp_path / "dagster-dev.log"
    with log.open("w") as out:
        # cwd: dagster dev finds the code through pyproject's [tool.dagster] (or workspace.yaml).
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        assert server.poll() is None, f"dagster dev exited ({server.returncode})\n{log_tail(log)}"
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(serving, 120, "dagster dev to serve /server_info", log)
        client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)
        yield DagsterDev(url=url, client=client, log=log, docs=docs, pgid=server.pid)
    finally:
        # The webserver, daemon, code servers and run workers all share this process group.
        stop_process_group(server, timeout=60)
        # run workers and code servers exit on their own after SIGTERM; slower on a loaded CI
        deadline = time.monotonic() + 90
        while _group_members(server.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _group_members(server.pid)
        if left:
            os.killpg(server.pid, signal.SIGKILL)
        assert not left, f"processes of dagster dev still running after SIGTERM: {left}"


LOCATION_STATUS = """
query { workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""
ASSET_NODES = "query { assetNodes { assetKey { path } } }"
INSTIGATORS = """
query ($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) { ... on Sensors { results {
    id name sensorState { ticks(limit: 1) { status } }
  } } }
  schedulesOrError(repositorySelector: $repo) { ... on Schedules { results { id name } } }
}
"""
STOP_SENSOR = """
mutation ($id: String) { stopSensor(id: $id) {
  __typename ... on StopSensorMutationResult { instigationState { status } }
} }
"""
STOP_SCHEDULE = """
mutation ($id: String) { stopRunningSchedule(id: $id) {
  __typename ... on ScheduleStateResult { scheduleState { status } }
} }
"""
ADD_PARTITION = """
mutation ($repo: RepositorySelector!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: "documents",
                      partitionKey: $key) { __typename }
}
"""
RUNS = (
    "query { runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }"
)
FAILURES = """
query ($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  __typename ... on ExecutionStepFailureEvent { stepKey error { message } }
} } } }
"""


def _code_location_loaded(dev: DagsterDev) -> bool:
    entries = dev.query(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
    (entry,) = [e for e in entries if e["name"] == LOCATION]
    loaded = entry["locationOrLoadError"] or {}
    assert loaded.get("__typename") != "PythonError", loaded.get("message")
    return entry["loadStatus"] == "LOADED" and bool(loaded)


def _stop_instigators(dev: DagsterDev) -> list[str]:
    """Stop the docs sensor, the automation sensor and the nightly schedule: every run of this
    test is one it launched itself. Returns their names."""
    found = dev.query(INSTIGATORS, repo=REPOSITORY)
    names = []
    for sensor in found["sensorsOrError"]["results"]:
        state = dev.query(STOP_SENSOR, id=sensor["id"])["stopSensor"]["instigationState"]
        assert state["status"] == "STOPPED", sensor
        names.append(sensor["name"])
    for schedule in found["schedulesOrError"]["results"]:
        state = dev.query(STOP_SCHEDULE, id=schedule["id"])["stopRunningSchedule"]
        assert state["scheduleState"]["status"] == "STOPPED", schedule
        names.append(schedule["name"])

    def no_tick_in_flight() -> bool:
        # A tick that began before its sensor stopped may still request runs: let it end.
        sensors = dev.query(INSTIGATORS, repo=REPOSITORY)["sensorsOrError"]["results"]
        ticks = [t for sensor in sensors for t in sensor["sensorState"]["ticks"]]
        return all(t["status"] != "STARTED" for t in ticks)

    wait_until(no_tick_in_flight, 60, "the sensors' last ticks to end", dev.log)
    return names


def _run_all(dev: DagsterDev, stage: dict[str, list[str | None]]) -> list[str]:
    """Submit one run per job and partition of ``stage`` (None: unpartitioned) and wait until
    every one has succeeded. Returns their run ids."""
    runs = {
        dev.client.submit_job_execution(
            job,
            repository_location_name=LOCATION,
            tags={} if key is None else {"dagster/partition": key},
        ): (job, key)
        for job, keys in stage.items()
        for key in keys
    }

    def finished() -> bool:
        statuses = {run_id: dev.client.get_run_status(run_id) for run_id in runs}
        for run_id, status in statuses.items():
            if status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
                events = dev.query(FAILURES, id=run_id)["logsForRun"]["events"]
                errors = [
                    f"{e['stepKey']}: {e['error']['message']}" for e in events if "error" in e
                ]
                raise AssertionError(f"{runs[run_id]} run {run_id}: {status.value}\n{errors}")
        return all(s == dg.DagsterRunStatus.SUCCESS for s in statuses.values())

    wait_until(finished, RUN_TIMEOUT, f"the runs of {stage}", dev.log, every=2)
    return list(runs)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _screenshot_asset_graph(page, path: Path) -> None:
    """On the asset graph page: open every group, check every asset shows with its details,
    and save a screenshot cropped to the graph."""
    from playwright.sync_api import expect

    # Room for the graph: no navigation, no asset tree; then every group opened.
    page.get_by_role("button", name="Hide navigation").click()
    page.locator("button:has([aria-label=panel_show_right])").click()
    page.mouse.click(100, VIEWPORT["height"] - 20, button="right")  # empty canvas corner
    page.get_by_role("menuitem", name="Expand all groups").click()
    graph = page.locator("[class*=svgContainer]")
    for asset in ALL_ASSETS:
        expect(graph.get_by_text(asset, exact=True).first).to_be_visible()
    # Zoomed in far enough that every node shows its details.
    expect(graph.get_by_text("Latest event", exact=True)).to_have_count(len(ALL_ASSETS))

    def settled_bounds():
        # Nodes and group boxes are foreignObjects: their union is the graph, once the
        # zoom-to-fit animation has stopped moving it.
        def bounds():
            return page.evaluate(
                """() => { const r = [...document.querySelectorAll(
                  "[class*=svgContainer] foreignObject")].map(e => e.getBoundingClientRect());
                  return [Math.min(...r.map(b => b.left)), Math.min(...r.map(b => b.top)),
                          Math.max(...r.map(b => b.right)), Math.max(...r.map(b => b.bottom))]
                          .map(Math.round); }"""
            )

        first = bounds()
        page.wait_for_timeout(500)
        return first if bounds() == first else None

    left, top, right, bottom = wait_until(settled_bounds, 20, "the graph to settle")
    margin = 16
    left, top = max(left - margin, 0), max(top - margin, 0)
    right = min(right + margin, VIEWPORT["width"])
    bottom = min(bottom + margin, VIEWPORT["height"])
    page.screenshot(
        path=str(path), clip={"x": left, "y": top, "width": right - left, "height": bottom - top}
    )


def _browse(page, dev: DagsterDev, screenshot: Path) -> str:
    """Skip the first-visit dialog, screenshot the asset graph, then Materialize ``mcq_report``
    on its asset page and follow the run to its end. Returns the run id."""
    from playwright.sync_api import expect

    page.goto(f"{dev.url}/asset-groups")
    # First visit of a fresh instance: the community dialog covers the page.
    page.get_by_role("button", name="Skip").click()
    _screenshot_asset_graph(page, screenshot)

    page.goto(f"{dev.url}/assets/mcq_report")
    page.locator("button", has_text=re.compile(r"^Materialize$")).click()
    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    short_id = toast.inner_text().split()[-1]
    page.get_by_role("link", name="View", exact=True).click()
    page.wait_for_url(re.compile(rf"/runs/{short_id}[0-9a-f-]{{28}}$"))
    run_id = page.url.rsplit("/", 1)[1]
    status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(status).to_be_visible(timeout=RUN_TIMEOUT * 1000)
    assert status.inner_text() == "Success", f"run {run_id}\n{log_tail(dev.log)}"
    return run_id


@pytest.mark.slow
def test_ui_graph_materialize_and_the_whole_pipeline_through_graphql(
    dagster_dev, tmp_path, monkeypatch
):
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
        "(apt-get install -y --no-install-recommends chromium)"
    )
    from playwright.sync_api import sync_playwright

    dev = dagster_dev
    wait_until(lambda: _code_location_loaded(dev), 120, "the code location to load", dev.log)
    listed = sorted("/".join(n["assetKey"]["path"]) for n in dev.query(ASSET_NODES)["assetNodes"])
    assert listed == ALL_ASSETS

    assert sorted(_stop_instigators(dev)) == [
        "docs_sensor",
        "nightly_evaluation",
        "ragft_automation",
    ]
    # The docs folder was empty until now: nothing can have run yet.
    assert dev.query(RUNS)["runsOrError"]["results"] == []
    for name in DOCS:
        shutil.copy(QUICKSTART_DATA / "docs" / name, dev.docs / name)
        added = dev.query(ADD_PARTITION, repo=REPOSITORY, key=name)["addDynamicPartition"]
        assert added["__typename"] == "AddDynamicPartitionSuccess", added

    # The whole quickstart pipeline, in graph order (as `ragft run` does it in-process); jobs
    # are homogeneous in partitioning, so there is one run per partition of a partitioned job.
    cells: list[str | None] = [
        str(dg.MultiPartitionKey({"model": m, "context": c}))
        for m in MODELS
        for c in ("closed_book", "rag")
    ]
    stages: list[dict[str, list[str | None]]] = [
        {"models_job": [None]},
        {"documents_job": list(DOCS)},
        {"training_job": [None], "retrieval_job": [None]},  # independent: launched together
        {"evaluation_job": cells, "general_job": GENERAL},
        {"report_job": [None]},
    ]
    assert [job for stage in stages for job in stage] == list(JOBS)
    launched = sum(len(_run_all(dev, stage)) for stage in stages)

    # Playwright's driver must never look for (or fetch) a browser of its own.
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "no-playwright-browsers"))
    screenshot = _artifact_dir() / "asset-graph.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(30_000)
            try:
                run_id = _browse(page, dev, screenshot)
            except Exception:
                with contextlib.suppress(Exception):  # the page as it was, for the CI artifacts
                    page.screenshot(path=str(screenshot.with_name("ui-failure.png")))
                raise
        finally:
            browser.close()
    assert dev.client.get_run_status(run_id) == dg.DagsterRunStatus.SUCCESS
    # Playwright's driver and chromium are gone; what is left below this process is dagster dev.
    server = set(_group_members(dev.pgid))
    assert not [pid for pid in _descendants(os.getpid()) if pid not in server]

    width, height = _png_size(screenshot)
    assert width >= 1000 and height >= 500 and screenshot.stat().st_size > 50_000

    runs = dev.query(RUNS)["runsOrError"]["results"]
    assert len(runs) == launched + 1, [(r["jobName"], r["status"]) for r in runs]
    assert {r["status"] for r in runs} == {"SUCCESS"}
    # every run was forked from the daemon's warm run worker (dagster-fast.yaml's run_launcher)
    assert all(any(t["key"] == WORKER_TAG for t in r["tags"]) for r in runs), runs
