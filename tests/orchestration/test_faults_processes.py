"""Process faults: kill -9 in the middle of a materialization, two materializations of the same
asset at once, a document deleted mid-run. Each must fail clearly (or serialise), leave the
previous materialization intact and lose nothing paid for.

Training killed mid-run (resume from its last checkpoint, and a second concurrent checkpointed
training refused by its lock) is tested in
tests/training/test_train_worker.py (test_training_killed_mid_run_resumes_from_its_last_checkpoint
and test_a_second_run_of_the_same_checkpointed_training_is_refused).

Killed and concurrent runs are real subprocesses (their own process group, stopped by the test
with SIGKILL and bounded waits) over a Dagster instance in a temporary DAGSTER_HOME.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ragft_dagster.artifacts import ArtifactLayout, atomic_dir, atomic_write_text, read_jsonl
from ragft_dagster.definitions import build_definitions
from ragft_dagster.resources import ArtifactStoreResource
from ragft_dagster.retrieval.indexing import id_differences, open_collection

from ..conftest import QUICKSTART_DATA, recipe_with_docs, write_recipe
from ..openai_stub import OpenAIStub

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "RAGFT_TEST_KEY"
LEFTOVER_MARKS = (".tmp-", ".old-", ".trash-")

# Run by every subprocess: materialize (job, partition) pairs into the instance at DAGSTER_HOME
# and write what happened to cfg["out"]. Fault hooks live here, in the test only:
#   pause_index_add: write half of the new vectors to the index copy, then hang (to be killed);
#   barrier_dir: wait for every process before each job and before vector_index's writes.
SCRIPT = r"""
import json, os, sys, time
from pathlib import Path

cfg = json.loads(Path(sys.argv[1]).read_text())


def barrier(name):
    folder = Path(cfg["barrier_dir"])
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(folder.glob(f"{name}.*"))) < cfg["parties"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"barrier {name} timed out")
        time.sleep(0.05)


if cfg.get("pause_index_add"):
    from llama_index.vector_stores.chroma import ChromaVectorStore

    add = ChromaVectorStore.add

    def half_then_hang(self, nodes, **kwargs):
        half = len(nodes) // 2
        add(self, nodes[:half], **kwargs)
        Path(cfg["pause_index_add"]).write_text(str(half))
        time.sleep(300)  # the test kills the process here
        return add(self, nodes[half:], **kwargs)

    ChromaVectorStore.add = half_then_hang

if cfg.get("barrier_dir"):
    from ragft_dagster.assets import retrieval

    load = retrieval.retrieval_embedder

    def load_then_wait(*args, **kwargs):
        embedder = load(*args, **kwargs)
        barrier("index-writes")  # both runs have read the chunks; now both go for the index
        return embedder

    retrieval.retrieval_embedder = load_then_wait

import dagster as dg
from ragft_dagster.definitions import build_definitions

defs = build_definitions(cfg["recipe"], cfg.get("profile"), artifact_root=Path(cfg["root"]))
instance = dg.DagsterInstance.get()
out = []
for job, partition in cfg["runs"]:
    if cfg.get("barrier_dir"):
        barrier(f"{job}-{partition}")
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False
    )
    metadata = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        metadata[mat.asset_key.to_user_string()] = {
            k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, float, str))
        }
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    out.append(
        {"job": job, "run_id": result.run_id, "success": result.success,
         "metadata": metadata, "checks": checks}
    )
Path(cfg["out"]).write_text(json.dumps(out))
"""


class Worker:
    """One subprocess running SCRIPT in its own process group; always stopped by :meth:`stop`."""

    def __init__(self, tmp_path: Path, name: str, home: Path, cfg: dict[str, Any]):
        self.out = tmp_path / f"{name}.json"
        self.log = tmp_path / f"{name}.log"
        script = tmp_path / "materialize.py"
        if not script.exists():
            script.write_text(SCRIPT)
        config = tmp_path / f"{name}.cfg.json"
        config.write_text(json.dumps({**cfg, "out": str(self.out)}))
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def kill(self) -> None:
        """kill -9 the whole process group, and wait (bounded) for it to be gone."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill()  # also whatever it started that is still in its group

    def wait(self, timeout: float) -> list[dict[str, Any]]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker did not finish in {timeout} s:\n{self.tail()}")
        assert self.proc.returncode == 0, self.tail()
        return json.loads(self.out.read_text())


@contextmanager
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def wait_for(condition: Callable[[], bool], what: str, worker: Worker, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited before {what}:\n{worker.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{worker.tail()}")
        time.sleep(0.05)


def leftovers(root: Path) -> list[Path]:
    """Temporary siblings, swapped-out versions or trash of any artifact below ``root``."""
    return [p for p in root.rglob("*") if any(mark in p.name for mark in LEFTOVER_MARKS)]


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    texts = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            texts.append(data.error.to_string() if data.error else "")
            if data.user_failure_data is not None:
                texts.append(data.user_failure_data.description or "")
    return "\n".join(texts)


def artifact_root(tmp_path: Path, tiny_base: Path, name: str = "artifacts") -> Path:
    root = tmp_path / name
    shutil.copytree(tiny_base.parent, root / "tiny")  # the session's tiny model, not rebuilt
    return root


def index_state(path: Path) -> dict[str, tuple[str, dict, list[float]]]:
    """id -> (text, metadata, vector) of every vector in the index at ``path``."""
    with open_collection("tiny", path=path) as collection:
        got = collection.get(include=["documents", "metadatas", "embeddings"])
    return {
        i: (text, dict(meta or {}), [float(x) for x in vec])
        for i, text, meta, vec in zip(
            got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
        )
    }


def chunk_ids(layout: ArtifactLayout, docs: list[str]) -> set[str]:
    return {c["id"] for d in docs for c in read_jsonl(layout.chunks(d))}


def materialize_documents(defs: dg.Definitions, instance, docs: list[str]) -> None:
    job = defs.resolve_job_def("documents_job")
    for doc in docs:
        assert job.execute_in_process(instance=instance, partition_key=doc).success


# --- kill -9 during synthetic_qa --------------------------------------------------------------


def qa_reply(body: dict) -> str:
    """The stub's deterministic answer to a Q&A request: two pairs named after the prompt."""
    tag = hashlib.sha256(body["messages"][0]["content"].encode()).hexdigest()[:10]
    return json.dumps(
        [
            {"question": f"What does part {tag} describe?", "answer": f"Part {tag} describes it."},
            {"question": f"Why does part {tag} matter?", "answer": f"Part {tag} matters."},
        ]
    )


def request_key(body: dict) -> str:
    return json.dumps(body["messages"], sort_keys=True)


class GatedReplies:
    """Answers the first ``answered`` requests at once, then holds every later one until
    :attr:`release` is set (bounded), so a kill lands with replies paid and requests pending."""

    def __init__(self, answered: int):
        self.limit = answered
        self.answered: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, body: dict) -> str:
        with self._lock:
            first = len(self.answered) < self.limit
            if first:
                self.answered.append(request_key(body))
        if not first:
            self.release.wait(timeout=60)
        return qa_reply(body)


def openai_setup(tmp_path: Path, base_url: str) -> tuple[Path, Path]:
    qa = {
        "generator": "openai",
        "model": "test-model",
        "questions_per_chunk": 2,
        "max_retries": 0,
        "request_timeout": 30,
        "max_concurrency": 2,
    }
    recipe = write_recipe(tmp_path, lambda raw: raw.update(qa=qa))
    profile = tmp_path / "stub-profile.yaml"
    profile.write_text(
        json.dumps({"name": "stub", "llm": {"base_url": base_url, "api_key_env": KEY_ENV}})
    )
    return recipe, profile


@pytest.mark.slow
def test_synthetic_qa_killed_mid_run_reruns_without_paying_twice(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-kill")
    doc, paid_before_kill = "evaluation.md", 5
    root = artifact_root(tmp_path, tiny_base)
    layout = ArtifactLayout(root)
    home = tmp_path / "home"
    home.mkdir()
    previous = '{"id": "previous materialization"}\n'
    atomic_write_text(layout.qa(doc), previous)
    gate = GatedReplies(paid_before_kill)
    with OpenAIStub([gate]) as stub, workers() as started:
        try:
            recipe, profile = openai_setup(tmp_path, stub.base_url)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("documents", [doc])
            cfg = {
                "recipe": str(recipe),
                "profile": str(profile),
                "root": str(root),
                "runs": [["documents_job", doc]],
            }
            worker = Worker(tmp_path, "killed", home, cfg)
            started.append(worker)

            def cached() -> list[Path]:
                return list(layout.llm_cache.rglob("*.json"))

            # Every answered reply is on disk and more requests are waiting on the stub.
            wait_for(
                lambda: len(cached()) == paid_before_kill and len(stub.requests) > paid_before_kill,
                "replies to be cached with requests still pending",
                worker,
            )
            worker.kill()
        finally:
            gate.release.set()  # let the held handler threads finish (into a closed socket)
        assert worker.proc.returncode == -signal.SIGKILL
        assert layout.qa(doc).read_text() == previous, "the previous Q&A must stay intact"
        assert all(json.loads(p.read_text())["content"] for p in cached())
        assert not leftovers(root)
        n_chunks = len(read_jsonl(layout.chunks(doc)))
        assert n_chunks > paid_before_kill + 2, "the kill must land mid-run"

        sent_before = len(stub.requests)
        defs = build_definitions(recipe, profile, artifact_root=root)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            rerun = defs.resolve_job_def("documents_job").execute_in_process(
                instance=instance, partition_key=doc
            )
        assert rerun.success
        again = Counter(request_key(body) for body in stub.requests[sent_before:])
        assert not set(again) & set(gate.answered), "a reply received before the kill was re-paid"
        assert set(again.values()) == {1}
        assert len(again) + len(gate.answered) == n_chunks
        meta = rerun.asset_materializations_for_node("synthetic_qa")[0].metadata
        assert meta["cache_hits"].value == paid_before_kill
        assert meta["llm_requests"].value == n_chunks - paid_before_kill
        rows = read_jsonl(layout.qa(doc))
    assert not leftovers(root)

    # A clean run (no kill, empty cache) produces the same rows.
    clean_root = artifact_root(tmp_path, tiny_base, "clean")
    (tmp_path / "clean-recipe").mkdir()
    with OpenAIStub([qa_reply]) as clean_stub, dg.instance_for_test() as instance:
        recipe, profile = openai_setup(tmp_path / "clean-recipe", clean_stub.base_url)
        instance.add_dynamic_partitions("documents", [doc])
        defs = build_definitions(recipe, profile, artifact_root=clean_root)
        job = defs.resolve_job_def("documents_job")
        assert job.execute_in_process(instance=instance, partition_key=doc).success
        assert len(clean_stub.requests) == n_chunks
    assert rows == read_jsonl(ArtifactLayout(clean_root).qa(doc))
    assert len(rows) == 2 * n_chunks


# --- kill -9 during vector_index --------------------------------------------------------------


@pytest.mark.slow
def test_vector_index_killed_mid_write_keeps_the_previous_index_and_resumes(tmp_path, tiny_base):
    before, added = ["glossary.md", "preference-tuning.md"], ["lora-training.md", "recipes.md"]
    root = artifact_root(tmp_path, tiny_base)
    layout = ArtifactLayout(root)
    home = tmp_path / "home"
    home.mkdir()
    recipe = write_recipe(tmp_path)
    defs = build_definitions(recipe, artifact_root=root)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("documents", before)
        materialize_documents(defs, instance, before)
        assert defs.resolve_job_def("retrieval_job").execute_in_process(instance=instance).success
        instance.add_dynamic_partitions("documents", added)
        materialize_documents(defs, instance, added)
    old_ids, new_ids = chunk_ids(layout, before), chunk_ids(layout, added)
    previous = index_state(layout.vector_index)
    assert set(previous) == old_ids

    marker = tmp_path / "half-written"
    with workers() as started:
        cfg = {
            "recipe": str(recipe),
            "root": str(root),
            "runs": [["retrieval_job", None]],
            "pause_index_add": str(marker),
        }
        worker = Worker(tmp_path, "killed", home, cfg)
        started.append(worker)
        wait_for(marker.exists, "half of the new vectors to be written", worker)
        worker.kill()
    assert worker.proc.returncode == -signal.SIGKILL
    assert int(marker.read_text()) > 0

    # Between the kill and the rerun: the index is the previous materialization, byte for byte
    # in content (no vector of the killed run), opens and answers queries.
    (half_written,) = root.glob(".vector_index.tmp-*")  # the killed run's working copy
    assert len(index_state(half_written)) > len(old_ids)
    assert index_state(layout.vector_index) == previous
    with open_collection("tiny", path=layout.vector_index) as collection:
        missing, stale = id_differences(collection, old_ids | new_ids)
        some_id, (_, _, vector) = next(iter(previous.items()))
        hits = collection.query(query_embeddings=[vector], n_results=3)
    assert (set(missing), stale) == (new_ids, [])
    assert hits["ids"][0][0] == some_id

    # The rerun embeds only what is missing, cleans up the killed run's copy, and matches.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        rerun = defs.resolve_job_def("retrieval_job").execute_in_process(instance=instance)
    assert rerun.success
    meta = rerun.asset_materializations_for_node("vector_index")[0].metadata
    assert meta["embedded_now"].value == len(new_ids)
    assert meta["kept"].value == len(old_ids)
    assert meta["deleted_now"].value == 0
    checks = {e.check_name: e.passed for e in rerun.get_asset_check_evaluations()}
    assert checks["vector_index_matches_chunks"]
    after = index_state(layout.vector_index)
    assert set(after) == old_ids | new_ids
    assert {i: after[i] for i in old_ids} == previous
    assert not leftovers(root)


# --- two materializations of the same asset at once -------------------------------------------


@pytest.mark.slow
def test_concurrent_materializations_of_the_same_assets_do_not_corrupt(tmp_path, tiny_base):
    doc, other = "glossary.md", "preference-tuning.md"
    root = artifact_root(tmp_path, tiny_base)
    layout = ArtifactLayout(root)
    home = tmp_path / "home"
    home.mkdir()
    recipe = write_recipe(tmp_path)
    defs = build_definitions(recipe, artifact_root=root)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("documents", [doc, other])
        materialize_documents(defs, instance, [other])

    cfg = {
        "recipe": str(recipe),
        "root": str(root),
        "runs": [["documents_job", doc], ["retrieval_job", None]],
        "barrier_dir": str(tmp_path / "barrier"),
        "parties": 2,
    }
    with workers() as started:
        started += [Worker(tmp_path, f"twin{i}", home, cfg) for i in (1, 2)]
        outs = [w.wait(timeout=300) for w in started]
    for out in outs:
        assert [(r["job"], r["success"]) for r in out] == [
            ("documents_job", True),
            ("retrieval_job", True),
        ]
        assert out[1]["checks"]["vector_index_matches_chunks"]

    # One index write waited for the other, then found nothing left to embed.
    embedded = sorted(out[1]["metadata"]["vector_index"]["embedded_now"] for out in outs)
    expected_ids = chunk_ids(layout, [doc, other])
    assert embedded == [0, len(expected_ids)]
    waited = next(out for out in outs if out[1]["metadata"]["vector_index"]["embedded_now"] == 0)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        messages = [e.user_message for e in instance.all_logs(waited[1]["run_id"])]
    assert any("another materialization of vector_index" in m for m in messages)
    assert not leftovers(root)

    # A clean, single run gives the same files and the same index.
    clean = artifact_root(tmp_path, tiny_base, "clean")
    clean_defs = build_definitions(recipe, artifact_root=clean)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", [doc, other])
        materialize_documents(clean_defs, instance, [doc, other])
        assert (
            clean_defs.resolve_job_def("retrieval_job")
            .execute_in_process(instance=instance)
            .success
        )
    for path_of in (ArtifactLayout.chunks, ArtifactLayout.qa):
        assert path_of(layout, doc).read_bytes() == path_of(ArtifactLayout(clean), doc).read_bytes()
    got, want = index_state(layout.vector_index), index_state(ArtifactLayout(clean).vector_index)
    assert set(got) == set(want) == expected_ids
    for i, (text, meta, vector) in want.items():
        assert got[i][:2] == (text, meta)
        assert max(abs(a - b) for a, b in zip(got[i][2], vector, strict=True)) < 1e-5


def test_concurrent_swaps_of_one_directory_all_land(tmp_path):
    """Many writers replacing one artifact at once: every swap lands whole, none fails."""
    final = tmp_path / "artifact"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for round_ in range(10):
                with atomic_dir(final) as tmp:
                    (tmp / "a").write_text(f"{i}-{round_}")
                    (tmp / "b").write_text(f"{i}-{round_}")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert (final / "a").read_text() == (final / "b").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_leftovers_of_a_killed_write_are_recovered_or_removed(tmp_path):
    final = tmp_path / "index"
    with atomic_dir(final) as tmp:
        (tmp / "data").write_text("v1")
    # Killed between the two renames of a swap: only the previous version remains, as .old.
    os.rename(final, tmp_path / ".index.old-dead0001")
    # Killed while writing: a working copy nobody holds any more; and one a live writer holds.
    dead = tmp_path / ".index.tmp-dead0002"
    dead.mkdir()
    (dead / "data").write_text("half")
    live = tmp_path / ".index.tmp-live0003"
    live.mkdir()
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    stale_file = tmp_path / ".rows.jsonl.tmp-dead0004"
    stale_file.write_text('{"half": ')
    try:
        with atomic_dir(final) as tmp:
            assert (final / "data").read_text() == "v1", "the previous version is put back"
            assert not dead.exists() and live.exists()
            (tmp / "data").write_text("v2")
        atomic_write_text(tmp_path / "rows.jsonl", "{}\n")
        assert not stale_file.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            ".index.tmp-live0003",
            "index",
            "rows.jsonl",
        ]
        assert (final / "data").read_text() == "v2"
    finally:
        os.close(holder)


# --- a document deleted mid-run ---------------------------------------------------------------


@pytest.mark.slow
def test_a_document_deleted_mid_run_fails_clearly_and_keeps_every_artifact(tmp_path, tiny_base):
    docs = ["glossary.md", "installation.md", "overview.md"]
    gone = "installation.md"
    recipe, docs_dir = recipe_with_docs(tmp_path, docs)
    root = artifact_root(tmp_path, tiny_base)
    layout = ArtifactLayout(root)
    defs = build_definitions(recipe, artifact_root=root)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", docs)
        materialize_documents(defs, instance, docs)
        assert defs.resolve_job_def("retrieval_job").execute_in_process(instance=instance).success
        files = {p: p.read_bytes() for d in docs for p in layout.document_files(d)}
        index_before = index_state(layout.vector_index)

        # Its partition is requested after the file went (the sensor saw it, then it was deleted).
        (docs_dir / gone).unlink()
        result = defs.resolve_job_def("documents_job").execute_in_process(
            instance=instance, partition_key=gone, raise_on_error=False
        )
        assert not result.success
        text = failure_text(result)
        assert f"{gone}: document not found" in text
        assert "the sensor removes its partition" in text
        assert not result.asset_materializations_for_node("synthetic_qa")
        assert {p: p.read_bytes() for p in files} == files, "no artifact may change"

        # The docs sensor's tick deletes the document's files; its partition goes once the tick
        # is applied. An index or dataset built in between fails naming it, and keeps the old.
        tick = dg.build_sensor_context(
            instance=instance,
            resources={"artifacts": ArtifactStoreResource(root=str(root))},
            definitions=defs,
        )
        sensor_result = defs.get_sensor_def("docs_sensor")(tick)
        assert isinstance(sensor_result, dg.SensorResult)
        (delete,) = sensor_result.dynamic_partitions_requests or []
        assert list(delete.partition_keys or []) == [gone]
        assert not any(p.exists() for p in layout.document_files(gone))
        for job, asset, upstream in (
            ("retrieval_job", "vector_index", "doc_chunks"),
            ("training_job", "sft_dataset", "synthetic_qa"),
        ):
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance,
                raise_on_error=False,
                asset_selection=[dg.AssetKey(asset)],
            )
            assert not result.success
            text = failure_text(result)
            assert gone in text and upstream in text and "docs sensor removes" in text, text
        assert index_state(layout.vector_index) == index_before

        # Once the partition is gone, the rebuild drops the document's vectors.
        instance.delete_dynamic_partition("documents", gone)
        rebuild = defs.resolve_job_def("retrieval_job").execute_in_process(instance=instance)
        assert rebuild.success
        meta = rebuild.asset_materializations_for_node("vector_index")[0].metadata
        assert meta["embedded_now"].value == 0
        assert meta["deleted_now"].value == len(index_before) - len(chunk_ids(layout, docs[::2]))
        checks = {e.check_name: e.passed for e in rebuild.get_asset_check_evaluations()}
        assert checks["vector_index_matches_chunks"]
    assert not leftovers(root)


def test_reading_all_documents_skips_one_removed_while_reading(tmp_path):
    from ragft_dagster.artifacts import write_jsonl
    from ragft_dagster.assets.partitions import read_all_documents

    docs = ["a.md", "b.md", "c.md"]
    for d in docs:
        write_jsonl(tmp_path / f"{d}.jsonl", [{"doc": d}])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", docs)
        context = dg.build_asset_context(instance=instance)

        def path_of(doc: str) -> Path:
            if doc == "b.md" and instance.has_dynamic_partition("documents", doc):
                # the docs sensor removes b.md between the listing and the read
                (tmp_path / "b.md.jsonl").unlink()
                instance.delete_dynamic_partition("documents", doc)
            return tmp_path / f"{doc}.jsonl"

        got = read_all_documents(context, "doc_chunks", path_of, docs_dir=QUICKSTART_DATA)
        assert got == (["a.md", "c.md"], [{"doc": "a.md"}, {"doc": "c.md"}])

        # A partition still listed without its file (and its document still there) fails.
        (tmp_path / "c.md.jsonl").unlink()
        with pytest.raises(dg.Failure, match=r"doc_chunks is not materialized for \['c.md'\]"):
            read_all_documents(context, "doc_chunks", lambda d: tmp_path / f"{d}.jsonl")


def test_files_written_inside_an_atomic_dir_do_not_wait_on_its_own_lock(tmp_path):
    # sft_dataset writes JSONL files into its atomic_dir; the owner lock of that temporary
    # folder must not make those writes wait for ever (run in a child, bounded by a timeout).
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ragft_dagster.artifacts import atomic_dir, atomic_write_text, write_jsonl\n"
        "root = Path(sys.argv[1])\n"
        "with atomic_dir(root / 'x') as tmp:\n"
        "    write_jsonl(tmp / 'a.jsonl', [{}])\n"
        "    with atomic_dir(tmp / 'sub') as inner:\n"
        "        atomic_write_text(inner / 'b.txt', 'hi')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], timeout=60, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x" / "a.jsonl").is_file() and (tmp_path / "x" / "sub" / "b.txt").is_file()
