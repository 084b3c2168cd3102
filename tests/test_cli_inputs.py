"""``ragft run`` as a user meets it with real inputs and real interruptions (issue 26): pages
that are not documentation, pages re-saved by Windows editors, two ``ragft run`` on one
instance, a replaced benchmark, Ctrl-C at the terminal.

Every test drives the real CLI in its own process group over one shared copy of the tiny recipe
(a few quickstart pages, a short benchmark, two models) with its own DAGSTER_HOME: the module
fixture materializes it once; each test edits the docs folder or the recipe, reruns
``ragft run`` and leaves everything up to date again. Waits are bounded; every process started
here is killed by its process group in a ``finally``."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
from ragft_dagster.config.recipe import DEFAULT_EXCLUDE
from ragft_dagster.runner import OWNER_TAG

from .conftest import (
    LOCAL_PROFILE,
    QUICKSTART_DATA,
    ROOT,
    log_tail,
    stop_process_group,
    wait_until,
    write_recipe,
)
from .test_cli import RAGFT

pytestmark = pytest.mark.slow

PAGES = ["chunking.md", "glossary.md", "overview.md"]
SENTINEL = "QUAGGA-EXCLUDED-7731"  # only in the pages that are not documentation
NOT_DOCS = {  # path below the docs folder -> why it is not documentation
    "node_modules/some-pkg/README.md": "a dependency's readme",
    "node_modules/some-pkg/docs/guide.md": "a dependency's docs",
    ".draft.md": "a hidden file",
    ".vitepress/notes.md": "a hidden folder",
    "archive/old.md": "the recipe's own docs.exclude entry",
}
RUN_TIMEOUT = 900  # one `ragft run` of this recipe; a few minutes on a loaded 2-core machine


@dataclass
class Site:
    """The shared tiny recipe: its files, its instance, and what the first run printed."""

    base: Path
    docs: Path
    recipe: Path
    profile: Path
    home: Path
    artifacts: Path
    first_output: str
    runs: int = 0

    @property
    def layout(self) -> ArtifactLayout:
        return ArtifactLayout(self.artifacts)

    def env(self) -> dict[str, str]:
        # unbuffered: the log shows each line when a terminal would
        return {**os.environ, "DAGSTER_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}

    def start(self, name: str) -> tuple[subprocess.Popen, Path]:
        """``ragft run`` in its own process group, its output in ``<name>.log``."""
        self.runs += 1
        log = self.base / f"{self.runs:02d}-{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(RAGFT), "run", "--recipe", str(self.recipe), "--profile", str(self.profile)],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc, log

    def run(self, name: str) -> tuple[int, str]:
        """``ragft run`` to its end (bounded): its exit status and everything it printed."""
        proc, log = self.start(name)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ragft run did not end in {RUN_TIMEOUT} s:\n{log_tail(log)}")
        finally:
            stop_process_group(proc)
        return code, log.read_text(errors="replace")

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            yield instance


def _write_questions(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    """The tiny recipe over three quickstart pages plus pages that are not documentation,
    materialized once by a real ``ragft run``."""
    base = tmp_path_factory.mktemp("cli-inputs")
    docs = base / "docs"
    docs.mkdir()
    for name in PAGES:
        shutil.copy(QUICKSTART_DATA / "docs" / name, docs / name)
    for key, what in NOT_DOCS.items():
        page = docs / key
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f"# Not documentation\n\n{what}: {SENTINEL}.\n" * 20)
    with (QUICKSTART_DATA / "mcq.csv").open(newline="", encoding="utf-8") as f:
        questions = list(csv.DictReader(f))
    _write_questions(base / "mcq.csv", questions[:12])
    _write_questions(base / "other_mcq.csv", questions[12:24])  # the replacement benchmark

    def small(raw: dict) -> None:
        # The plumbing of every stage, as little of it as shows each case: two closed-book
        # cells on a 12-question benchmark, no general set, one SFT epoch, and no
        # decontamination (with it, a replaced benchmark also retrains: another test's case).
        raw["docs"].update(path=str(docs), exclude=[*DEFAULT_EXCLUDE, "archive"])
        raw["evaluation"].update(
            questions=str(base / "mcq.csv"),
            models=["base", "sft"],
            contexts=["closed_book"],
            general_questions=None,
            bootstrap_samples=200,
        )
        raw["sft_dataset"]["contamination"] = {"enabled": False}
        raw["sft"]["args"]["num_train_epochs"] = 1

    recipe = write_recipe(base, small)
    artifacts = base / "artifacts"
    profile = base / "profile.yaml"
    profile.write_text(
        LOCAL_PROFILE.read_text().replace("root: .artifacts", f"root: {artifacts}", 1)
    )
    home = base / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    site = Site(base, docs, recipe, profile, home, artifacts, first_output="")
    code, site.first_output = site.run("first")
    assert code == 0, site.first_output[-4000:]
    assert "pipeline finished" in site.first_output, site.first_output[-4000:]
    return site


def _ok_runs(output: str) -> list[str]:
    """What a ``ragft run`` ran, from its ``ok  <job> [<partitions>]   <seconds>s`` lines."""
    return [line[4:].rsplit(None, 1)[0] for line in output.splitlines() if line.startswith("ok  ")]


def _ok_jobs(output: str) -> list[str]:
    return [label.split()[0] for label in _ok_runs(output)]


def _materializations(instance: dg.DagsterInstance, asset: str) -> list[str]:
    """Run ids of every materialization of ``asset`` (newest first)."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
    return [r.run_id for r in records]


def _append(page: Path, text: str) -> None:
    with page.open("a", encoding="utf-8") as f:
        f.write(text)


def test_pages_that_are_not_documentation_are_named_and_never_reach_the_chunks(site):
    line = (
        f"  {site.docs}: skipped 5 file(s) as not documentation (docs.exclude): "
        ".draft.md, .vitepress/, archive/, node_modules/ (2 files)"
    )
    assert line in site.first_output.splitlines(), site.first_output[:3000]
    assert f"recipe tiny: {len(PAGES)} documents (+{len(PAGES)} new," in site.first_output
    with site.instance() as instance:
        assert sorted(instance.get_dynamic_partitions("documents")) == PAGES
    chunks = [c for page in PAGES for c in read_jsonl(site.layout.chunks(page))]
    assert chunks and not any(SENTINEL in c["text"] for c in chunks)
    # Nothing the pipeline wrote, nor the instance's records, holds a word of them: not the
    # chunks, Q&A, training set, vector index, scores or report.
    planted = [p for p in site.docs.rglob("*") if p.is_file() and SENTINEL in p.read_text()]
    assert len(planted) == len(NOT_DOCS)
    written = [p for folder in (site.artifacts, site.home) for p in folder.rglob("*")]
    assert len(written) > 50
    leaked = [p for p in written if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    assert leaked == []


def test_pages_resaved_with_a_bom_or_crlf_leave_the_next_run_a_no_op(site):
    with site.instance() as instance:
        runs, adapters = len(instance.get_runs()), _materializations(instance, "lora_adapter")
    assert adapters
    # As Windows editors save them: a byte-order mark, CRLF line endings, both.
    for name, bom, crlf in zip(PAGES, (True, False, True), (False, True, True), strict=True):
        page = site.docs / name
        before = page.read_bytes()
        text = before.replace(b"\r\n", b"\n")
        page.write_bytes(
            (b"\xef\xbb\xbf" if bom else b"") + (text.replace(b"\n", b"\r\n") if crlf else text)
        )
        assert page.read_bytes() != before
    code, out = site.run("resaved")
    assert code == 0, out[-4000:]
    assert f"(+0 new, ~0 changed, -0 removed, {len(PAGES)} unchanged)" in out, out[-4000:]
    assert "everything is up to date" in out and _ok_jobs(out) == [], out[-4000:]
    with site.instance() as instance:
        assert len(instance.get_runs()) == runs  # not one run, let alone a training job
        assert _materializations(instance, "lora_adapter") == adapters


def _owner_pid(run: dg.DagsterRun) -> int | None:
    """The pid of the ``ragft run`` process that executed ``run`` (its owner tag)."""
    owner = run.tags.get(OWNER_TAG)
    return int(owner.split(":")[1]) if owner else None


def _runs_of(instance: dg.DagsterInstance, pid: int, *statuses: dg.DagsterRunStatus) -> list:
    found = instance.get_runs(dg.RunsFilter(statuses=list(statuses)) if statuses else None)
    return [run for run in found if _owner_pid(run) == pid]


def test_two_ragft_runs_started_at_once_run_one_after_the_other(site):
    """Started in the same second, neither finds a run of the other in progress: the instance's
    run lock orders them. The one that waited says for which process, in one line, then plans
    from what the other built and trains nothing itself."""
    with site.instance() as instance:
        adapters = _materializations(instance, "lora_adapter")
    _append(site.docs / PAGES[1], "\n## Nightly\n\nThe nightly schedule re-scores every cell.\n")
    procs = {}
    try:
        for name in ("one-of-two", "other-of-two"):
            procs[name] = site.start(name)

        def both_ended() -> bool:
            return all(proc.poll() is not None for proc, _ in procs.values())

        wait_until(both_ended, RUN_TIMEOUT, "both ragft runs to end", procs["other-of-two"][1], 0.5)
    finally:
        for proc, _ in procs.values():
            stop_process_group(proc)
    out = {name: log.read_text(errors="replace") for name, (_, log) in procs.items()}
    for name, (proc, _) in procs.items():
        assert proc.returncode == 0, out[name][-4000:]
    waited = [name for name in procs if "waiting for another `ragft run`" in out[name]]
    assert len(waited) == 1, {name: text[-2000:] for name, text in out.items()}
    (waiter,) = waited
    (worker,) = set(procs) - {waiter}
    (line,) = [x for x in out[waiter].splitlines() if x.startswith("waiting for another")]
    assert f"(pid {procs[worker][0].pid})" in line, line
    assert "training_job" in _ok_jobs(out[worker]), out[worker][-4000:]
    assert _ok_jobs(out[waiter]) == [] and "everything is up to date" in out[waiter]
    # (it planned after the other had built everything: it found nothing stale; the other
    # process itself may end later, its run lock released before its interpreter shuts down)
    with site.instance() as instance:
        assert _runs_of(instance, procs[waiter][0].pid) == []
        now = _materializations(instance, "lora_adapter")
        new = now[: len(now) - len(adapters)]
        assert [_owner_pid(instance.get_run_by_id(run_id)) for run_id in new] == [
            procs[worker][0].pid
        ]
    assert "Traceback" not in out[worker] + out[waiter]


def test_a_replaced_benchmark_starts_a_new_baseline_without_a_regression_alarm(site):
    raw = yaml.safe_load(site.recipe.read_text())
    raw["evaluation"]["questions"] = str(site.base / "other_mcq.csv")
    site.recipe.write_text(yaml.safe_dump(raw))
    with site.instance() as instance:
        reports = _materializations(instance, "mcq_report")
    code, out = site.run("benchmark")
    assert code == 0, out[-4000:]
    assert set(_ok_jobs(out)) == {"evaluation_job", "report_job"}, out[-4000:]
    assert "CHECK FAILED" not in out, out[-4000:]
    cells = ["base closed_book", "sft closed_book"]
    with site.instance() as instance:
        latest, previous = instance.fetch_materializations(
            dg.AssetKey("mcq_report"), limit=2
        ).records
        assert latest.run_id not in reports and previous.run_id == reports[0]
        now, then = latest.asset_materialization.metadata, previous.asset_materialization.metadata
        for cell in cells:  # each cell says which questions it was scored on; all changed
            key = "questions_" + cell.replace(" ", "_")
            assert now[key].value != then[key].value
        evaluations = [
            entry.dagster_event.event_specific_data
            for entry in instance.all_logs(
                latest.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            )
        ]
    (check,) = [e for e in evaluations if e.check_name == "mcq_report_no_regression"]
    assert check.passed and check.metadata["regressions"].value == 0
    assert sorted(check.metadata["new_baseline"].value) == cells
    assert check.metadata["previous_run_id"].value == previous.run_id
    assert "a new baseline, not compared" in (check.description or "")


def test_the_published_letter_prefixed_format_scores_as_the_plain_questions(site):
    """The published benchmark writes each option with its letter ("A. To send ..."): the same
    questions in that format are scored exactly as without the prefixes, and the run says it
    stripped them."""
    raw = yaml.safe_load(site.recipe.read_text())
    plain = Path(raw["evaluation"]["questions"])
    with plain.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    styles = ["{}. {}", "{}) {}", "({}) {}", "{}: {}"]
    prefixed = [
        {**r, **{x: styles[i % 4].format(x.upper(), r[x]) for x in "abcd"}}
        for i, r in enumerate(rows)
    ]
    _write_questions(site.base / "prefixed_mcq.csv", prefixed)
    layout = ArtifactLayout(site.artifacts)
    cells = [("base", "closed_book"), ("sft", "closed_book")]
    before = {c: read_jsonl(layout.scores(*c)) for c in cells}
    raw["evaluation"]["questions"] = str(site.base / "prefixed_mcq.csv")
    site.recipe.write_text(yaml.safe_dump(raw))
    code, out = site.run("prefixed")
    assert code == 0, out[-4000:]
    assert set(_ok_jobs(out)) == {"evaluation_job", "report_job"}, out[-4000:]
    fields = ["question_id", "predicted", "predicted_norm", "predicted_option", "option_logprobs"]
    for cell in cells:
        after = read_jsonl(layout.scores(*cell))
        assert [{k: r[k] for k in fields} for r in after] == [
            {k: r[k] for k in fields} for r in before[cell]
        ], cell
    with site.instance() as instance:
        (latest,) = instance.fetch_materializations(dg.AssetKey("mcq_scores"), limit=1).records
    assert latest.asset_materialization.metadata["letter_prefixes_stripped"].value == len(rows)


def test_ctrl_c_at_the_terminal_prints_one_line_exits_130_and_the_rerun_continues(site):
    """Ctrl-C at a terminal sends SIGINT to the whole foreground process group: ragft and
    every process it started (each run's compute-log tail and its orphan watcher)."""
    raw = yaml.safe_load(site.recipe.read_text())
    raw["evaluation"]["system_prompt"] = "Answer with the letter of the correct option."
    site.recipe.write_text(yaml.safe_dump(raw))  # every cell is re-scored, then the report
    proc, log = site.start("ctrl-c")
    try:

        def in_a_run_after_a_finished_cell() -> bool:
            assert proc.poll() is None, log_tail(log)
            if "ok  evaluation_job" not in log.read_text(errors="replace"):
                return False
            with site.instance() as instance:
                return bool(_runs_of(instance, proc.pid, dg.DagsterRunStatus.STARTED))

        wait_until(in_a_run_after_a_finished_cell, 300, "a run after the first cell", log, 0.2)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        stop_process_group(proc)
    out = log.read_text(errors="replace")
    assert code == 130, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    interrupted = [line for line in out.splitlines() if line.startswith("INTERRUPTED")]
    assert len(interrupted) == 1, out[-4000:]
    # in a run (not between two): the run whose watcher processes got the SIGINT too
    match = re.match(r"INTERRUPTED (.+?): stopped; run \S+ kept \d+ finished", interrupted[0])
    assert match, interrupted[0]
    assert "ragft run: stopped by SIGINT; run `ragft run` again to continue" in out
    finished = _ok_runs(out)
    assert finished and finished[0].startswith("evaluation_job ["), out[-4000:]
    code, rerun = site.run("after-ctrl-c")
    assert code == 0, rerun[-4000:]
    assert "Traceback" not in rerun
    again = _ok_runs(rerun)  # what was interrupted and what followed it; nothing that finished
    assert again[0] == match[1] and again[-1] == "report_job", rerun[-4000:]
    assert not set(finished) & set(again), rerun[-4000:]
