"""Dagster-level tests: definitions, the OpenAI path through a loopback server, end to end."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
from ragft_dagster.definitions import JOB_SELECTIONS, build_definitions

from .conftest import LOCAL_PROFILE, QUICKSTART, write_recipe
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
    "mcq_report",
}


def test_definitions_load_with_the_asset_graph():
    from ragft_dagster.definitions import defs

    defs = defs()  # @dg.definitions is lazy
    graph = defs.resolve_asset_graph()
    keys = {k.path[0] for k in graph.get_all_asset_keys()}
    assert keys == ALL_ASSETS
    parents = {
        k.path[0]: {p.path[0] for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()
    }
    assert parents["dpo_model"] == {"merged_model"}
    assert parents["synthetic_qa"] == {"doc_chunks"}
    assert parents["lora_adapter"] == {"dpo_model", "sft_dataset"}
    assert parents["vector_index"] == {"doc_chunks"}
    assert parents["mcq_report"] == {"mcq_scores"}
    for name in ("merged_model", "dpo_model", "lora_adapter", "mcq_scores"):
        assert graph.get(dg.AssetKey(name)).pools == {"gpu"}
    for name in JOB_SELECTIONS:
        assert defs.resolve_job_def(name)
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
        job = defs.resolve_job_def("document_job")
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
            defs.resolve_job_def("document_job").execute_in_process(
                instance=instance, partition_key="overview.md"
            )


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """The whole quickstart graph, exactly as `make run` runs it, into a temporary instance."""
    from ragft_dagster.cli import run_pipeline

    root = tmp_path / "artifacts"
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        assert run_pipeline(
            str(QUICKSTART),
            str(LOCAL_PROFILE),
            instance=instance,
            artifact_root=root,
            echo=lines.append,
        ), "\n".join(lines)
        layout = ArtifactLayout(root)
        docs = sorted(p.name for p in (QUICKSTART.parent / "docs").glob("*.md"))
        assert sorted(instance.get_dynamic_partitions("documents")) == docs

        for d in (layout.merged_model, layout.dpo_model):
            assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
            assert (d / "chat_template.jinja").is_file()
        assert (layout.merged_model / "mergekit_config.yml").is_file()
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
        assert any("pipeline finished" in line for line in lines)
