"""Issue 7, security: the API key never reaches anything written, remote code stays off unless
a recipe opts in, and the UI binds to 127.0.0.1."""

from __future__ import annotations

import ast
import base64
import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.definitions import build_definitions

from .conftest import LOCAL_PROFILE, QUICKSTART_DATA, ROOT, TINY_RECIPE, free_port, write_recipe
from .openai_stub import OpenAIStub

KEY_ENV = "RAGFT_CANARY_KEY"


def _encodings(secret: str) -> dict[str, bytes]:
    """The forms a secret may be written in: as is, URL-encoded, JSON-escaped, and base64 at
    each of the three alignments it can have inside a longer base64 text (the stable middle of
    each, so a match does not depend on what surrounds it)."""
    forms = {
        "raw": secret.encode(),
        "url": urllib.parse.quote(secret, safe="").encode(),
        "url_plus": urllib.parse.quote_plus(secret).encode(),
        "json": json.dumps(secret)[1:-1].encode(),
        "utf16": secret.encode("utf-16-le"),
    }
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret.encode())
        start = (shift * 4 + 2) // 3 + 1  # skip the characters the padding bytes touch
        forms[f"base64+{shift}"] = encoded[start : len(encoded) - 4]
    return forms


def _hits(blob: bytes, forms: dict[str, bytes]) -> list[str]:
    return [name for name, form in forms.items() if form in blob]


def test_encodings_find_the_secret_wherever_it_is_embedded():
    secret = f"sk-ragft-LEAK-CANARY-{uuid.uuid4()}"
    forms = _encodings(secret)
    for prefix in ("", "a", "ab", "Bearer "):
        blob = base64.b64encode(f"{prefix}{secret} tail".encode())
        assert _hits(blob, forms), prefix
    assert _hits(urllib.parse.quote(f"?key={secret}").encode(), forms)
    assert not _hits(b"nothing to see", forms)


def test_api_key_is_never_written_anywhere(tmp_path, monkeypatch, capfd, tiny_base):
    """A canary key in the profile's variable; synthetic_qa (openai generator) and an API
    model's score cell run through Dagster on an on-disk instance (the repo's dagster.yaml),
    successes and failures alike, the endpoint echoing the Authorization header in an error.
    Then everything written is searched for the key in every encoding: every file under
    DAGSTER_HOME (sqlite databases as bytes, compute logs), the artifact root (cache, JSONL),
    the recipe and profile, runs, tags, configs, snapshots and events through the instance API,
    and the captured stdout/stderr."""
    canary = f"sk-ragft-LEAK-CANARY-{uuid.uuid4()}"
    forms = _encodings(canary)
    monkeypatch.setenv(KEY_ENV, canary)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_base.parent, root / "tiny")
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(QUICKSTART_DATA / "docs" / "installation.md", docs / "installation.md")
    rows = list(csv.reader(io.StringIO((QUICKSTART_DATA / "mcq.csv").read_text("utf-8"))))
    with (tmp_path / "mcq.csv").open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows[:3])  # the header and two questions

    def recipe(raw):
        raw["docs"].update(path=str(docs))
        raw["qa"] = {"generator": "openai", "model": "stub-model", "max_retries": 0}
        raw["evaluation"].update(
            questions=str(tmp_path / "mcq.csv"),
            models=[],
            contexts=["closed_book"],
            api={"models": ["stub-gpt"], "max_retries": 0},
        )

    recipe_path = write_recipe(tmp_path, recipe)
    good = '[{"question": "How is it installed?", "answer": "With make run."}]'
    with OpenAIStub([good]) as stub:
        profile = tmp_path / "resources" / "canary.yaml"
        profile.parent.mkdir()
        llm = {"base_url": stub.base_url, "api_key_env": KEY_ENV}
        profile.write_text(yaml.safe_dump({"name": "canary", "llm": llm}))
        defs = build_definitions(recipe_path, profile, root)
        instance = dg.DagsterInstance.get()
        assert Path(instance.root_directory) == home  # on disk, not ephemeral
        instance.add_dynamic_partitions("documents", ["installation.md"])
        documents = defs.resolve_job_def("documents_job")
        scores = defs.resolve_job_def("evaluation_job")
        runs = [
            documents.execute_in_process(instance=instance, partition_key="installation.md"),
            scores.execute_in_process(instance=instance, partition_key="closed_book|stub-gpt"),
        ]
        assert all(r.success for r in runs)
        assert stub.auth_headers[-1] == f"Bearer {canary}"  # the key was really used
        # Failures: a server that echoes the Authorization header, and a rejected key.
        layout = ArtifactLayout(root)
        shutil.rmtree(layout.llm_cache)
        for script in ({"status": 400, "echo_auth": True}, {"status": 401, "echo_auth": True}):
            stub.replies = [script]
            for job, key in ((documents, "installation.md"), (scores, "closed_book|stub-gpt")):
                failed = job.execute_in_process(
                    instance=instance, partition_key=key, raise_on_error=False
                )
                assert not failed.success
                runs.append(failed)
        instance.dispose()  # flush and close the sqlite files before they are read

    assert read_jsonl(layout.qa("installation.md"))
    assert read_jsonl(layout.scores("stub-gpt", "closed_book"))
    leaks: dict[str, list[str]] = {}
    written = [p for folder in (home, root, tmp_path / "resources") for p in folder.rglob("*")] + [
        recipe_path
    ]
    files = [p for p in written if p.is_file()]
    assert any(p.suffix == ".db" for p in files)  # the sqlite run and event storage
    for path in files:
        if found := _hits(path.read_bytes(), forms):
            leaks[str(path)] = found

    instance = dg.DagsterInstance.get()
    from dagster._serdes import serialize_value

    records = instance.get_run_records()
    assert len(records) == len(runs) == 6
    for record in records:
        run = record.dagster_run
        parts = {
            "run": serialize_value(run),
            "config": json.dumps(run.run_config, default=str),
            "tags": json.dumps(run.tags),
            "job_snapshot": serialize_value(instance.get_job_snapshot(run.job_snapshot_id)),
            "plan_snapshot": serialize_value(
                instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
            ),
            "events": serialize_value(instance.all_logs(run.run_id)),
        }
        for name, text in parts.items():
            if found := _hits(text.encode(), forms):
                leaks[f"run {run.run_id[:8]} {name}"] = found
    for key in (dg.AssetKey("synthetic_qa"), dg.AssetKey("mcq_scores")):
        event = instance.get_latest_materialization_event(key)
        assert event is not None
        if found := _hits(serialize_value(event).encode(), forms):
            leaks[f"materialization {key.to_user_string()}"] = found
    instance.dispose()
    captured = capfd.readouterr()
    for name, text in (("stdout", captured.out), ("stderr", captured.err)):
        if found := _hits(text.encode(), forms):
            leaks[name] = found
    assert not leaks, leaks
    # The failures were reported, with the echoed key masked.
    failure = next(e for e in runs[2].all_events if e.is_step_failure)
    assert "Bearer ***" in str(failure.step_failure_data.error)


# --- trust_remote_code -------------------------------------------------------------------------


def _record_remote_code_flags(monkeypatch) -> list[tuple[str, bool, str]]:
    """Wrap transformers' and mergekit's loading entry points: each call appends (entry point,
    trust_remote_code as passed, the calling module)."""
    import mergekit.merge
    import transformers

    calls: list[tuple[str, bool, str]] = []

    def caller() -> str:
        frame = sys._getframe(2)
        return frame.f_globals.get("__name__", "?")

    for cls in (transformers.AutoTokenizer, transformers.AutoConfig):
        for name in ("from_pretrained",):
            original = getattr(cls, name)

            def wrapped(*args, _original=original, _label=f"{cls.__name__}.{name}", **kwargs):
                calls.append((_label, bool(kwargs.get("trust_remote_code")), caller()))
                return _original(*args, **kwargs)

            monkeypatch.setattr(cls, name, staticmethod(wrapped))
    auto_model = transformers.AutoModelForCausalLM
    original_model = auto_model.from_pretrained

    def model(*args, **kwargs):
        calls.append(("AutoModelForCausalLM", bool(kwargs.get("trust_remote_code")), caller()))
        return original_model(*args, **kwargs)

    monkeypatch.setattr(auto_model, "from_pretrained", staticmethod(model))
    run_merge = mergekit.merge.run_merge

    def merge(config, out_path, options, **kwargs):
        calls.append(("mergekit.run_merge", bool(options.trust_remote_code), caller()))
        return run_merge(config, out_path, options=options, **kwargs)

    monkeypatch.setattr(mergekit.merge, "run_merge", merge)
    return calls


def _materialize_model_assets(tmp_path: Path, tiny_base: Path, opt_in: bool):
    """merged_model, doc_chunks of one document and the base model's closed-book score cell
    of the quickstart recipe (tiny models), with or without ``trust_remote_code: true``."""

    def mutate(raw):
        if opt_in:
            raw["trust_remote_code"] = True
        raw["evaluation"].update(models=["base"], contexts=["closed_book"])

    tmp_path.mkdir()
    recipe_path = write_recipe(tmp_path, mutate)
    assert load_recipe(recipe_path).trust_remote_code is opt_in
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_base.parent, root / "tiny")
    defs = build_definitions(recipe_path, LOCAL_PROFILE, root)
    assets, resources = list(defs.assets or []), dict(defs.resources or {})
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", ["overview.md"])
        for selection, partition in (
            ("merged_model", None),
            ("doc_chunks", "overview.md"),
            ("mcq_scores", "closed_book|base"),
        ):
            result = dg.materialize(
                assets,
                resources=resources,
                instance=instance,
                selection=selection,
                partition_key=partition,
            )
            assert result.success, selection


def test_remote_code_stays_off_unless_the_recipe_opts_in(tmp_path, monkeypatch, tiny_base):
    assert load_recipe(TINY_RECIPE).trust_remote_code is False
    calls = _record_remote_code_flags(monkeypatch)
    _materialize_model_assets(tmp_path / "default", tiny_base, opt_in=False)
    entry_points = {label for label, _, _ in calls}
    assert {
        "AutoTokenizer.from_pretrained",
        "AutoConfig.from_pretrained",
        "AutoModelForCausalLM",
        "mergekit.run_merge",
    } <= entry_points
    assert not [c for c in calls if c[1]], "trust_remote_code=True without the recipe's opt-in"

    calls.clear()
    _materialize_model_assets(tmp_path / "opt-in", tiny_base, opt_in=True)
    ours = [c for c in calls if c[2].startswith("ragft_dagster")]
    assert {label for label, _, _ in ours} >= {
        "AutoTokenizer.from_pretrained",
        "AutoConfig.from_pretrained",
        "AutoModelForCausalLM",
        "mergekit.run_merge",
    }
    assert all(flag for _, flag, _ in ours), [c for c in ours if not c[1]]


def test_every_loading_call_site_passes_the_flag():
    """Statically: every ``from_pretrained`` call of a transformers class in the package
    passes ``trust_remote_code=`` (peft adapters take no such argument and run no code), and
    mergekit's options carry it."""
    missing = []
    for path in sorted((ROOT / "ragft_dagster").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "from_pretrained":
                continue
            owner = ast.unparse(node.func.value)
            if owner == "PeftModel":
                continue
            if not any(k.arg == "trust_remote_code" for k in node.keywords):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner}")
    assert not missing, missing
    from ragft_dagster.models.merging import _merge_options

    assert _merge_options({}, "cpu", True)[0].trust_remote_code is True
    assert _merge_options({}, "cpu", False)[0].trust_remote_code is False


# --- the UI binds to 127.0.0.1 -----------------------------------------------------------------


def test_make_ui_and_documented_commands_bind_loopback():
    makefile = (ROOT / "Makefile").read_text()
    ui = re.search(r"^ui:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert ui, "the Makefile has no ui target"
    starts = [line for line in ui.group(1).splitlines() if "dagster" in line]
    assert starts and all(re.search(r"\s(-h|--host)\s+127\.0\.0\.1\b", s) for s in starts)
    # Every command line in the README and docs/ that starts the UI names the host (or is
    # `make ui`). An inline command may wrap onto the next line; it is read as one line.
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    spans: list[str] = []
    for page in pages:
        text = page.read_text()
        blocks = re.findall(r"```.*?\n(.*?)```", text, re.S)
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        spans += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
        spans += [line for block in blocks for line in block.splitlines()]
    starts_ui = re.compile(r"(dagster dev|dagster-webserver|dg dev)\b(.*)")
    commands = [m.group(0) for span in spans if (m := starts_ui.search(span))]
    assert commands, "the README and docs/ name no way to start the UI"
    for command in commands:
        if not starts_ui.match(command).group(2).strip():
            continue  # the tool's name in prose (its default host is checked below)
        assert re.search(r"(-h|--host)\s+127\.0\.0\.1\b", command), command


def _listening_addresses(port: int) -> set[str]:
    import psutil

    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }


def _start_dagster_dev(args: list[str], env: dict[str, str], home: Path) -> subprocess.Popen:
    """``dagster dev`` with no code, in (and with DAGSTER_HOME at) its own folder ``home``."""
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    return subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "--empty-workspace", *args],
        env={**env, "DAGSTER_HOME": str(home)},
        cwd=home,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_no_config_file_can_set_the_webserver_host():
    """The host is a command-line option (or DAGSTER_WEBSERVER_HOST) only: the instance schema
    of dagster.yaml has no such key, and pyproject's [tool.dagster] and workspace.yaml only say
    where the code is."""
    import tomllib

    from dagster._core.instance.config import dagster_instance_config_schema

    schema = set(dagster_instance_config_schema())
    assert not {k for k in schema if "host" in k or "webserver" in k}
    assert set(yaml.safe_load((ROOT / "dagster.yaml").read_text())) <= schema
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    assert set(tool) == {"module_name", "code_location_name"}
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert set(workspace) == {"load_from"}


@pytest.mark.slow
def test_dagster_dev_binds_loopback(tmp_path):
    """``dagster dev`` 1.13 without ``-h`` binds 127.0.0.1 (dagster-webserver's default), but
    ``DAGSTER_WEBSERVER_HOST`` in the environment changes that; ``make ui``'s explicit
    ``-h 127.0.0.1`` wins over it."""
    prefixes = ("DAGSTER_WEBSERVER", "DAGSTER_CLI")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    hostile = {**env, "DAGSTER_WEBSERVER_HOST": "0.0.0.0"}
    plain, pinned, redirected = free_port(), free_port(), free_port()
    procs = [
        _start_dagster_dev(["-p", str(plain)], env, tmp_path / "plain"),
        _start_dagster_dev(["-h", "127.0.0.1", "-p", str(pinned)], hostile, tmp_path / "pinned"),
        _start_dagster_dev(["-p", str(redirected)], hostile, tmp_path / "redirected"),
    ]
    try:
        deadline = time.monotonic() + 120
        seen: dict[int, set[str]] = {}
        while time.monotonic() < deadline:
            seen = {p: _listening_addresses(p) for p in (plain, pinned, redirected)}
            if all(seen.values()):
                break
            assert all(p.poll() is None for p in procs), "dagster dev exited"
            time.sleep(0.5)
        assert seen[plain] == {"127.0.0.1"}
        assert seen[pinned] == {"127.0.0.1"}
        assert seen[redirected] == {"0.0.0.0"}  # why make ui passes -h explicitly
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def test_errors_show_the_endpoint_without_credentials():
    """A key put in llm.base_url (user info or query, as some gateways take it) or echoed by
    the server never reaches an error message."""
    import openai

    from ragft_dagster.config.recipe import QaRecipe
    from ragft_dagster.llm.client import Endpoint, LlmCallError, LlmStats, call_llm

    canary = f"sk-ragft-LEAK-CANARY-{uuid.uuid4()}"
    forms = _encodings(canary)
    qa = QaRecipe(generator="openai", model="m", max_retries=0)
    with OpenAIStub([{"status": 400, "echo_auth": True}]) as stub:
        port = stub.server.server_address[1]
        for base_url in (
            f"http://user:{canary}@127.0.0.1:{port}/v1",
            f"http://127.0.0.1:{port}/v1?api-key={canary}",
        ):
            client = openai.OpenAI(base_url=base_url, api_key=canary, max_retries=0)
            endpoint = Endpoint(client, qa, "qa", lambda s: None)
            request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            with pytest.raises(LlmCallError) as raised:
                call_llm(endpoint, request, LlmStats(), threading.Lock())
            message = str(raised.value)
            assert f"http://127.0.0.1:{port}/v1 refused the request" in message
            assert not _hits(message.encode(), forms), message
