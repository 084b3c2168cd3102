"""Dagster-level tests: definitions, the OpenAI path through a loopback server, end to end."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
from ragft_dagster.config.recipe import relocatable_raw
from ragft_dagster.definitions import build_definitions, load_inputs, recipe_stages

from .conftest import (
    LOCAL_PROFILE,
    QUICKSTART_DATA,
    TINY_RECIPE,
    stop_process_group,
    write_recipe,
)
from .openai_stub import OpenAIStub

ALL_ASSETS = {
    "merged_model",
    "dpo_model",
    "doc_chunks",
    "synthetic_qa",
    "sft_dataset",
    "lora_adapter",
    "vector_index",
    "mcq_scores",
    "general_scores",
    "mcq_report",
}


def test_definitions_load_with_the_asset_graph():
    from ragft_dagster.definitions import defs

    defs = defs()  # @dg.definitions is lazy
    graph = defs.resolve_asset_graph()
    keys = {k.path[0] for k in graph.get_all_asset_keys()}
    # the quickstart derives a specialist and answers open questions
    assert keys == ALL_ASSETS | {"specialist_model", "open_scores"}
    parents = {
        k.path[0]: {p.path[0] for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()
    }
    assert parents["merged_model"] == {"specialist_model"}
    assert parents["dpo_model"] == {"merged_model"}
    assert parents["synthetic_qa"] == {"doc_chunks"}
    assert parents["lora_adapter"] == {"dpo_model", "sft_dataset"}
    assert parents["vector_index"] == {"doc_chunks"}
    assert parents["mcq_report"] == {"mcq_scores", "general_scores", "open_scores"}
    assert parents["open_scores"] == {"merged_model", "dpo_model", "lora_adapter", "vector_index"}
    # the specialist is scored on the general set too (Figure 2: every merge source)
    assert parents["general_scores"] == {
        "specialist_model",
        "merged_model",
        "dpo_model",
        "lora_adapter",
    }
    gpu_bound = ("specialist_model", "merged_model", "dpo_model", "lora_adapter")
    for name in (*gpu_bound, "mcq_scores", "general_scores", "open_scores"):
        assert graph.get(dg.AssetKey(name)).pools == {"gpu"}
    stages = recipe_stages(load_inputs()[0])  # the default recipe
    assert [s.job for s in stages] == [
        "models_job",
        "documents_job",
        "training_job",
        "retrieval_job",
        "evaluation_job",
        "general_job",
        "open_answers_job",
        "report_job",
    ]
    for stage in stages:
        assert defs.resolve_job_def(stage.job)
    # every eager asset (general_scores too) is ours to evaluate: no default sensor appears
    sensors = {s.name for s in defs.get_repository_def().sensor_defs}
    assert sensors == {"docs_sensor", "ragft_automation"}
    scores = graph.get(dg.AssetKey("mcq_scores")).partitions_def
    assert len(scores.get_partition_keys()) == 8


def _openai_recipe(tmp_path: Path) -> Path:
    qa = {
        "generator": "openai",
        "model": "stub-model",
        "questions_per_chunk": 2,
        "max_retries": 0,
        "request_timeout": 10,
    }
    return write_recipe(tmp_path, lambda raw: raw.update(qa=qa))


def _profile(tmp_path: Path, base_url: str) -> Path:
    p = tmp_path / "resources" / "stub.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(
        yaml.safe_dump(
            {"name": "stub", "llm": {"base_url": base_url, "api_key_env": "RAGFT_TEST_KEY"}}
        )
    )
    return p


def test_synthetic_qa_through_an_openai_compatible_endpoint(tmp_path, tiny_base, monkeypatch):
    secret = "sk-test-DO-NOT-LEAK-8f3a"
    monkeypatch.setenv("RAGFT_TEST_KEY", secret)
    replies = [
        "this is {not json at all",  # malformed: counted, not fatal
        'Here you go:\n```json\n[{"question": "What is X?", "answer": "X is Y."},'
        ' {"question": "Why?", "answer": "Because."}]\n```',
    ]
    doc = "installation.md"
    with OpenAIStub(replies) as stub:
        root = tmp_path / "artifacts"
        shutil.copytree(tiny_base.parent, root / "tiny")  # reuse the session's tiny model
        defs = build_definitions(
            _openai_recipe(tmp_path), _profile(tmp_path, stub.base_url), artifact_root=root
        )
        job = defs.resolve_job_def("documents_job")
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("documents", [doc])
            result = job.execute_in_process(instance=instance, partition_key=doc)
            assert result.success
            n_chunks = len(read_jsonl(ArtifactLayout(root).chunks(doc)))
            assert len(stub.requests) == n_chunks
            assert stub.auth_headers[0] == f"Bearer {secret}"
            sent = stub.requests[0]
            assert sent["model"] == "stub-model"
            assert "Reply with JSON only" in sent["messages"][0]["content"]
            meta = result.asset_materializations_for_node("synthetic_qa")[0].metadata
            assert meta["llm_requests"].value == n_chunks
            assert meta["parse_outcomes"].value["failed"] == 1
            rows = read_jsonl(ArtifactLayout(root).qa(doc))
            assert len(rows) == 2 * (n_chunks - 1)
            assert {r["generator"] for r in rows} == {"openai"}
            chunk_ids = {c["id"] for c in read_jsonl(ArtifactLayout(root).chunks(doc))}
            assert {r["chunk_id"] for r in rows} <= chunk_ids

            # Re-materializing unchanged chunks is free: every reply comes from the cache.
            again = job.execute_in_process(instance=instance, partition_key=doc)
            assert again.success and len(stub.requests) == n_chunks
            meta2 = again.asset_materializations_for_node("synthetic_qa")[0].metadata
            assert meta2["cache_hits"].value == n_chunks and meta2["llm_requests"].value == 0

            for event in instance.all_logs(result.run_id) + instance.all_logs(again.run_id):
                assert secret not in json.dumps(str(event))
    assert not any(
        secret in p.read_text(errors="ignore")
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size < 2**20
    )


def test_missing_api_key_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("RAGFT_TEST_KEY", raising=False)
    defs = build_definitions(
        _openai_recipe(tmp_path),
        _profile(tmp_path, "http://127.0.0.1:9/v1"),
        artifact_root=tmp_path / "a",
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", ["overview.md"])
        with pytest.raises(dg.DagsterInvalidConfigError, match="RAGFT_TEST_KEY.*not set"):
            defs.resolve_job_def("documents_job").execute_in_process(
                instance=instance, partition_key="overview.md"
            )


def chromadb_collection(layout: ArtifactLayout):
    from ragft_dagster.retrieval.indexing import open_collection

    return open_collection("tiny", path=layout.vector_index)


def stale_assets(recipe_dir: Path, instance, root: Path, edit) -> dict[str, int]:
    """Assets Dagster calls stale after editing the recipe in ``recipe_dir`` with ``edit``, with
    how many of their partitions are stale."""
    from dagster._utils.test.data_versions import get_stale_status_resolver

    path = recipe_dir / "recipe.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    edited = recipe_dir / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    defs = build_definitions(edited, LOCAL_PROFILE, artifact_root=root)
    resolver = get_stale_status_resolver(instance, list(defs.assets))
    graph = defs.resolve_asset_graph()
    out = {}
    for key in graph.get_all_asset_keys():
        pdef = graph.get(key).partitions_def
        keys = pdef.get_partition_keys(dynamic_partitions_store=instance) if pdef else [None]
        n = sum(resolver.get_status(key, k).value == "STALE" for k in keys)
        if n:
            out[key.to_user_string()] = n
    return out


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """The whole quickstart graph, exactly as `make run` runs it, into a temporary instance."""
    from ragft_dagster.cli import run_pipeline

    root = tmp_path / "artifacts"
    recipe_dir = tmp_path / "recipe"
    shutil.copytree(QUICKSTART_DATA / "docs", recipe_dir / "docs")  # the test edits them
    recipe = str(recipe_dir / "recipe.yaml")
    raw = relocatable_raw(TINY_RECIPE)
    raw["docs"]["path"] = "docs"
    raw["export"] = {"enabled": True, "dtype": "float32"}  # `ragft run` ends with export_job
    # random weights cannot pass the gate: non-blocking, it is reported and the export runs
    raw["release_gate"] = {"enabled": True, "blocking": False}
    Path(recipe).write_text(yaml.safe_dump(raw, sort_keys=False))
    # Pages as Windows editors save them (a byte-order mark, CRLF, both): the second run must
    # still be a no-op (issue 26: a BOM page was "changed" on every run and retrained SFT).
    for name, bom, crlf in (("chunking.md", True, False), ("glossary.md", False, True)):
        page = recipe_dir / "docs" / name
        text = page.read_text(encoding="utf-8").replace("\n", "\r\n" if crlf else "\n")
        page.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    both = recipe_dir / "docs" / "troubleshooting.md"
    both.write_bytes(b"\xef\xbb\xbf" + both.read_bytes().replace(b"\n", b"\r\n"))
    lines: list[str] = []

    def run():
        lines.clear()
        result = run_pipeline(
            recipe, str(LOCAL_PROFILE), instance=instance, artifact_root=root, echo=lines.append
        )
        assert result, "\n".join(lines)
        return result

    with dg.instance_for_test() as instance:
        full = run()
        jobs = [s.job for s in full.steps]
        assert set(jobs) == {
            "models_job",
            "documents_job",
            "training_job",
            "retrieval_job",
            "evaluation_job",
            "general_job",
            "report_job",
            "export_job",
        }
        # the graph's order: the export follows the report it quotes
        assert jobs.index("retrieval_job") < jobs.index("evaluation_job") < jobs.index("report_job")
        assert jobs[-1] == "export_job"
        failed = [name for step in full.steps for name, ok in step.checks.items() if not ok]
        assert failed == ["release_gate"], failed  # random weights: a warning, below
        layout = ArtifactLayout(root)
        docs = sorted(p.name for p in (recipe_dir / "docs").glob("*.md"))
        assert sorted(instance.get_dynamic_partitions("documents")) == docs

        for d in (layout.merged_model, layout.dpo_model):
            assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
            assert (d / "chat_template.jinja").is_file()
        assert (layout.merged_model / "mergekit_config.yml").is_file()
        assert (layout.exported_model / "model.safetensors").is_file()
        assert not (layout.exported_model / "adapter_config.json").exists()
        assert (layout.lora_adapter / "adapter_config.json").is_file()
        assert json.loads((layout.lora_adapter / "adapter_config.json").read_text())["r"] == 8
        chunks = [c for d in docs for c in read_jsonl(layout.chunks(d))]
        assert len({c["id"] for c in chunks}) == len(chunks) > 50
        qa = [r for d in docs for r in read_jsonl(layout.qa(d))]
        assert {r["chunk_id"] for r in qa} <= {c["id"] for c in chunks}
        assert (layout.sft_dataset / "train.jsonl").stat().st_size > 0
        for m in ("base", "merged", "dpo", "sft"):
            for c in ("closed_book", "rag"):
                recs = read_jsonl(layout.scores(m, c))
                assert len(recs) == 36
                assert all(len(r["retrieved"]) == (3 if c == "rag" else 0) for r in recs)
        assert (layout.report / "accuracy.png").stat().st_size > 5000

        def meta(name, partition=None):
            ev = (
                instance.get_latest_materialization_event(dg.AssetKey(name))
                if partition is None
                else None
            )
            return ev.asset_materialization.metadata

        assert meta("vector_index")["vectors"].value == len(chunks)
        assert meta("lora_adapter")["trainable_parameters"].value > 0
        assert meta("dpo_model")["pairs"].value >= 50
        report = meta("mcq_report")
        assert "| sft |" in report["comparison"].value
        assert "data:image/png;base64," in report["chart"].value
        for m in ("base", "merged", "dpo", "sft"):
            for c in ("closed_book", "rag"):
                assert 0 <= report[f"accuracy_{m}_{c}"].value <= 1
                assert 0 <= report[f"acc_norm_{m}_{c}"].value <= 1
        assert "retrieval failure" in report["retrieval_vs_generation"].value
        assert "| row | correct |" in report["per_question"].value
        assert report["context_mismatched_rows"].value == 0
        rag = read_jsonl(layout.scores("sft", "rag"))
        assert sum(r["retrieval_hit"] is not None for r in rag) > 30  # supporting chunk found
        checks = {name for step in full.steps for name in step.checks}
        assert checks == {
            "sft_dataset_not_contaminated",
            "vector_index_matches_chunks",
            "vector_index_retrieval_quality",
            "mcq_report_no_regression",
            "release_gate",
        }
        # random weights do not beat each other: the gate's warning names the reason
        assert any(
            line.startswith("CHECK FAILED mcq_report: release_gate (") and "sft rag" in line
            for line in lines
        )
        assert any("pipeline finished" in line for line in lines)
        assert meta("synthetic_qa")["generated"].value > 0

        # Nothing changed: nothing runs.
        assert run().steps == []

        # One document edited, one removed: only the edited document's partition reruns, only
        # its new chunks are generated and embedded, the removed document's vectors are gone.
        edited, removed = "glossary.md", "troubleshooting.md"
        old_ids = {c["id"] for c in read_jsonl(layout.chunks(edited))}
        with (recipe_dir / "docs" / edited).open("a") as f:
            f.write("\n## Nightly\n\nThe **nightly schedule** re-scores every cell at 02:00.\n")
        (recipe_dir / "docs" / removed).unlink()
        inc = run()
        assert [s.partition for s in inc.steps if s.job == "documents_job"] == [edited]
        new_ids = {c["id"] for c in read_jsonl(layout.chunks(edited))} - old_ids
        assert new_ids and inc.total("synthetic_qa", "generated") == len(new_ids)
        index = inc.steps[[s.job for s in inc.steps].index("retrieval_job")]
        assert index.metadata["vector_index"]["embedded_now"] == len(new_ids)
        assert index.checks == {
            "vector_index_matches_chunks": True,
            "vector_index_retrieval_quality": True,
        }
        assert not any(p.exists() for p in layout.document_files(removed))
        chunks = [c for d in docs if d != removed for c in read_jsonl(layout.chunks(d))]
        assert index.metadata["vector_index"]["vectors"] == len({c["id"] for c in chunks})
        with chromadb_collection(layout) as col:
            held = col.get(include=["metadatas"])
        assert removed not in {m["doc"] for m in held["metadatas"]}
        assert set(held["ids"]) == {c["id"] for c in chunks}

        # Editing the LoRA section: lora_adapter is stale, nothing upstream is (its downstream
        # turns stale once it is rebuilt, and eager automation rebuilds it then).
        stale = stale_assets(recipe_dir, instance, root, lambda raw: raw["lora"].update(r=4))
        assert stale == {"lora_adapter": 1}
        # Editing the Q&A prompt: every synthetic_qa partition is stale.
        prompt = "Write {n} questions with answers about:\n{context}"
        stale = stale_assets(
            recipe_dir, instance, root, lambda raw: raw["qa"].update(prompt=prompt)
        )
        assert stale == {"synthetic_qa": len(docs) - 1}


@pytest.mark.slow
def test_ragft_run_scores_api_models_at_the_endpoint_and_reports_them(tmp_path):
    """`ragft run` (the CLI, in its own process) takes the cells from mcq_scores' own
    partitions, API models included, scores them at a loopback OpenAI-compatible server and
    ends with the report."""
    import os
    import subprocess
    import sys

    from ragft_dagster.evaluation.mcq import load_questions

    from .conftest import ROOT, recipe_with_docs

    recipe, _ = recipe_with_docs(tmp_path, ["glossary.md", "chunking.md"])
    raw = yaml.safe_load(recipe.read_text())
    # named as vLLM names a model by default: its path (issue 28)
    raw["evaluation"].update(models=["base"], api={"models": ["/models/stub-model"]})
    recipe.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    home.mkdir()
    with OpenAIStub(["B"]) as stub:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ragft_dagster.cli",
                "run",
                "--recipe",
                str(recipe),
                "--profile",
                str(_profile(tmp_path, stub.base_url)),
            ],
            cwd=ROOT,
            env={**os.environ, "DAGSTER_HOME": str(home), "RAGFT_TEST_KEY": "sk-test"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        questions = len(load_questions(QUICKSTART_DATA / "mcq.csv"))
        assert len(stub.requests) == 2 * questions  # closed_book and rag, once each
    assert {r["model"] for r in stub.requests} == {"/models/stub-model"}
    for cell in ("closed_book|/models/stub-model", "rag|/models/stub-model", "rag|base"):
        assert f"evaluation_job [{cell}]" in out
    assert "ok  report_job" in out and "| /models/stub-model |" in out
    assert "Traceback" not in out


def test_a_second_ragft_run_waits_for_the_run_building_the_same_asset(tmp_path):
    """Issue 26: two `ragft run` on one instance trained the same adapter at once. A run in
    progress (a real in-process run, paused inside its asset) makes the next one wait with a
    line naming it; a run whose `ragft run` process is gone (left STARTED) does not."""
    import subprocess
    import sys
    import threading

    from ragft_dagster.runner import (
        OWNER_TAG,
        _owner,
        _wait_for_overlapping_runs,
        overlapping_runs,
    )

    release = threading.Event()
    started = threading.Event()

    @dg.asset
    def adapter() -> None:
        started.set()
        assert release.wait(60)

    @dg.asset
    def other() -> None:
        pass

    defs = dg.Definitions(
        assets=[adapter, other], jobs=[dg.define_asset_job("training_job", selection=[adapter])]
    )
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    host = _owner().split(":", 1)[0]
    for owner, waits in ((f"{host}:{gone.pid}:1.000", False), (_owner(), True)):
        release.clear()
        started.clear()
        timer = threading.Timer(0, release.set)
        with dg.instance_for_test() as instance:
            thread = threading.Thread(
                target=lambda: defs.resolve_job_def("training_job").execute_in_process(
                    instance=instance,
                    tags={OWNER_TAG: owner},  # noqa: B023
                )
            )
            thread.start()
            try:
                assert started.wait(60)
                jobs = {"training_job": ["adapter"]}  # a whole job's run carries no selection
                assert overlapping_runs(instance, ["other"], [], jobs) == []
                assert overlapping_runs(instance, ["adapter"], []) == []  # an unknown job
                found = overlapping_runs(instance, ["adapter"], [], jobs)
                assert len(found) == int(waits)
                lines: list[str] = []
                timer = threading.Timer(1.0, release.set)
                timer.start()
                _wait_for_overlapping_runs(
                    instance, ["adapter"], [], "training_job", lines.append, jobs, every=0.2
                )
                if waits:
                    (line,) = lines
                    assert line.startswith(f"waiting for run {found[0].run_id} (training_job")
                    assert "building adapter" in line
                else:
                    assert lines == []
            finally:
                timer.cancel()
                release.set()
                thread.join(60)
            assert overlapping_runs(instance, ["adapter"], [], {"training_job": ["adapter"]}) == []


def test_an_interrupt_while_sqlalchemy_closes_a_connection_is_not_logged_as_a_traceback():
    """Ctrl-C or SIGTERM landing inside SQLAlchemy's connection close was logged with a
    traceback below the one INTERRUPTED line (seen in CI); any other close failure still is."""
    import io
    import logging

    from ragft_dagster.runner import _quiet_interrupted_connection_closes

    _quiet_interrupted_connection_closes()
    _quiet_interrupted_connection_closes()  # idempotent: one filter per logger
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("sqlalchemy.pool.impl.NullPool")
    assert len(logger.filters) == 1
    logger.addHandler(handler)
    try:
        for exc in (dg.DagsterExecutionInterruptedError(), KeyboardInterrupt(), OSError("disk")):
            try:
                raise exc
            except BaseException:
                logger.error("Exception closing connection %r", "conn", exc_info=True)
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert text.count("Exception closing connection") == 1 and "OSError: disk" in text


_MASKED_JOB = r"""
import subprocess, sys, time
from ragft_dagster.runner import _terminal_interrupts_spare_log_watchers

with _terminal_interrupts_spare_log_watchers():
    # what Dagster's log capture starts: a watcher, asleep
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"])
    print("ready", flush=True)
    started = time.monotonic()
    try:
        time.sleep(20)  # a blocking call, as a slow request is
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - started:.1f}s", flush=True)
    time.sleep(0.5)
    print("child alive" if child.poll() is None else f"child died {child.returncode}", flush=True)
    child.kill()
    child.wait()
time.sleep(0.2)
print("mask restored", flush=True)
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="POSIX only")
def test_ctrl_c_to_the_group_spares_the_processes_a_job_starts_and_still_breaks_a_sleep():
    """The terminal's Ctrl-C reaches every process of its group: the ones a job starts (Dagster's
    log watcher) inherit a blocked SIGINT and live on, and the job itself still gets its
    KeyboardInterrupt at once, out of a blocking call."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", _MASKED_JOB],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = out.splitlines()
    assert lines[0].startswith("interrupted after ") and float(lines[0].split()[-1][:-1]) < 5
    assert lines[1:] == ["child alive", "mask restored"], (out, err)
    assert "Traceback" not in err


def test_an_interrupt_while_a_run_starts_its_resources_reads_as_an_interrupt():
    """Ctrl-C can land before any step starts (while Dagster initialises the resources): the
    run then fails as a whole, with no step failure, and must still read as interrupted (a CI
    run of the Ctrl-C test printed 'run ... failed' and exited 1 there)."""
    from ragft_dagster.runner import _failure_messages, _was_interrupted

    for interrupt in (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):

        @dg.resource
        def interrupted_resource(_, interrupt=interrupt):
            raise interrupt()

        @dg.op(required_resource_keys={"slow"})
        def uses_it(_):
            return None

        @dg.job(resource_defs={"slow": interrupted_resource})
        def starts_resources():
            uses_it()

        outcome = starts_resources.execute_in_process(raise_on_error=False)
        assert not outcome.success
        assert _failure_messages(outcome.all_events)  # the run's own failure, not nothing
        assert _was_interrupted(outcome.all_events), interrupt


def test_one_ragft_run_at_a_time_per_instance_folder(tmp_path):
    """The run lock: a second holder waits with one line naming the first's pid and goes on
    when that process ends (here by kill -9, which releases it too); Ctrl-C while waiting stops
    it as an interrupt, with nothing started."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from ragft_dagster.runner import PipelineInterrupted, one_ragft_run_at_a_time

    holder_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from ragft_dagster.runner import one_ragft_run_at_a_time\n"
        "with one_ragft_run_at_a_time(Path(sys.argv[1]), print):\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(120)\n"
    )

    def hold() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", holder_code, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        return proc

    holder = hold()
    try:
        lines: list[str] = []
        threading.Timer(1.0, lambda: os.kill(holder.pid, signal.SIGKILL)).start()
        with one_ragft_run_at_a_time(tmp_path, lines.append):
            assert holder.poll() is not None  # went on only once the holder was gone
            assert (tmp_path / "ragft-run.lock").read_text().strip() == str(os.getpid())
        (line,) = lines
        assert line.startswith(f"waiting for another `ragft run` (pid {holder.pid})"), line
        assert str(tmp_path) in line and "Ctrl-C" in line
    finally:
        stop_process_group(holder)

    holder = hold()
    try:
        lines = []
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        with (
            pytest.raises(PipelineInterrupted),
            one_ragft_run_at_a_time(tmp_path, lines.append),
        ):
            raise AssertionError("the lock was taken while another process held it")
        assert lines[-1].startswith("INTERRUPTED while waiting for the other `ragft run`")
        assert holder.poll() is None
    finally:
        stop_process_group(holder)
