"""Issue 7, endpoint faults: every fault of the OpenAI-compatible endpoint driven end to end
through the Dagster assets that call it — ``synthetic_qa`` of a document partition
(``qa.generator: openai``) and ``mcq_scores`` of an API-model partition — against the loopback
stub (127.0.0.1 only, started and stopped here, every wait bounded).

Each case (the fault table of docs/troubleshooting.md) asserts what the user sees (the run fails
naming the endpoint, the variable or setting and what to do; or it succeeds after retries), that
the previous materialization's file is intact, and that replies paid for before the fault are
cached: the rerun does not ask for them again (requests are counted at the stub).
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from ragft_dagster.artifacts import ArtifactLayout, read_jsonl
from ragft_dagster.config.profile import load_profile
from ragft_dagster.config.recipe import load_recipe
from ragft_dagster.definitions import build_definitions, build_resources
from ragft_dagster.resources import LlmEndpointResource

from ..conftest import LOCAL_PROFILE, QUICKSTART_DATA, write_recipe
from ..openai_stub import OpenAIStub

KEY_ENV = "RAGFT_FAULT_TEST_KEY"
KEY = "sk-fault-test-0123456789"
DOC = "faults.md"
# Three sections, so three chunks and three Q&A requests per materialization.
DOC_TEXT = """# Fault guide

The fault guide is a short page that the endpoint fault tests chunk into sections.

## Retries

A retry is a second attempt at a request after a transient failure of the server.

## Budgets

A budget is the most requests or tokens one run may spend at the endpoint.
"""
TWO_PAIRS = (
    '[{"question": "What is a retry?", "answer": "A second attempt."},'
    ' {"question": "What is a budget?", "answer": "A spending limit."}]'
)
NEW_PAIRS = (
    '[{"question": "Why retry?", "answer": "Servers fail briefly."},'
    ' {"question": "Why budget?", "answer": "Requests cost money."}]'
)
API_MODEL = "stub-gpt"
RETRY_AFTER = ("429-retry-after", [{"status": 429, "headers": {"Retry-After": "1"}}], 1)
API_CELL = f"closed_book|{API_MODEL}"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    return str(failure.step_failure_data.error)


def _no_leftovers(folder: Path) -> None:
    """An atomic write that failed leaves no temporary sibling behind."""
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@dataclass
class Scene:
    """One artifact root, one instance and one recipe family. The prompt version selects the
    requests a materialization needs (an edited prompt changes every cache key): version 1
    makes the previous materialization, version 2 (the default) is what the faulty run and
    its rerun ask for; ``overrides[version]`` edits more of that version's section."""

    tmp: Path
    root: Path
    instance: dg.DagsterInstance
    asset: str
    partition: str
    recipe_edit: Any
    overrides: dict = field(default_factory=dict)

    def recipe(self, version: int) -> Path:
        path = self.tmp / f"recipe-v{version}.yaml"
        if not path.exists():
            raw = yaml.safe_load((self.tmp / "recipe.yaml").read_text())
            self.recipe_edit(raw, version)
            path.write_text(yaml.safe_dump(raw))
        return path

    def profile(self, base_url: str) -> Path:
        path = self.tmp / "resources" / f"p{abs(hash(base_url))}.yaml"
        path.parent.mkdir(exist_ok=True)
        llm = {"base_url": base_url, "api_key_env": KEY_ENV}
        path.write_text(yaml.safe_dump({"name": "stub", "llm": llm}))
        return path

    def materialize(self, base_url: str, version: int = 2) -> Any:
        """Materialize the asset's partition the way a run does: definitions built from the
        recipe and a profile naming ``base_url`` and the key variable."""
        defs = build_definitions(self.recipe(version), self.profile(base_url), self.root)
        return dg.materialize(
            list(defs.assets or []),
            resources=dict(defs.resources or {}),
            instance=self.instance,
            selection=self.asset,
            partition_key=self.partition,
            raise_on_error=False,
        )

    @property
    def output(self) -> Path:
        layout = ArtifactLayout(self.root)
        if self.asset == "synthetic_qa":
            return layout.qa(DOC)
        return layout.scores(API_MODEL, "closed_book")

    def cached_replies(self) -> int:
        cache = ArtifactLayout(self.root).llm_cache
        return sum(1 for _ in cache.rglob("*.json")) if cache.exists() else 0


def _version_of(request: dict) -> int:
    text = " ".join(m["content"] for m in request["messages"])
    return int(text.split("[prompt v", 1)[1].split("]", 1)[0])


def _requests(stub: OpenAIStub, version: int) -> int:
    return sum(1 for r in stub.requests if _version_of(r) == version)


@pytest.fixture(scope="module")
def qa_template(tmp_path_factory, tiny_base) -> Path:
    """An artifact root holding the tiny model and the chunks of the fault document."""
    tmp = tmp_path_factory.mktemp("qa-template")
    root = tmp / "artifacts"
    shutil.copytree(tiny_base.parent, root / "tiny")
    docs = tmp / "docs"
    docs.mkdir()
    (docs / DOC).write_text(DOC_TEXT)
    recipe = write_recipe(tmp, lambda raw: raw["docs"].update(path=str(docs)))
    defs = build_definitions(recipe, LOCAL_PROFILE, root)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", [DOC])
        result = dg.materialize(
            list(defs.assets or []),
            resources=dict(defs.resources or {}),
            instance=instance,
            selection="doc_chunks",
            partition_key=DOC,
        )
    assert result.success
    assert len(read_jsonl(ArtifactLayout(root).chunks(DOC))) == 3
    return tmp


@pytest.fixture
def qa_scene(tmp_path, qa_template, monkeypatch):
    """synthetic_qa of the fault document with the openai generator (3 chunks, 2 pairs asked
    per chunk, one request at a time, 2 retries, 0.5 s timeout), key set."""
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "artifacts"
    shutil.copytree(qa_template / "artifacts", root)
    docs = qa_template / "docs"

    def base(raw):
        raw["docs"].update(path=str(docs))
        raw["qa"] = {
            "generator": "openai",
            "model": "stub-model",
            "questions_per_chunk": 2,
            "max_concurrency": 1,
            "max_retries": 2,
            "initial_backoff": 0.01,
            "request_timeout": 0.5,
        }

    write_recipe(tmp_path, base)
    overrides: dict[int, dict] = {}

    def edit(raw, version):
        raw["qa"]["prompt"] = (
            f"[prompt v{version}] Write {{n}} question/answer pairs about {{heading}} of "
            '{document}. Reply with JSON only: [{"question": ..., "answer": ...}]\n\n{context}'
        )
        raw["qa"].update(overrides.get(version, {}))

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", [DOC])
        yield Scene(tmp_path, root, instance, "synthetic_qa", DOC, edit, overrides)


def _write_questions(path: Path, n: int) -> None:
    rows = list(csv.reader(io.StringIO((QUICKSTART_DATA / "mcq.csv").read_text("utf-8"))))
    out = io.StringIO()
    csv.writer(out).writerows(rows[: n + 1])
    path.write_text(out.getvalue(), encoding="utf-8")


@pytest.fixture
def api_scene(tmp_path, monkeypatch):
    """mcq_scores of the API model's closed-book cell (3 questions, one request at a time,
    2 retries, 0.5 s timeout), key set; the system prompt carries the prompt version."""
    monkeypatch.setenv(KEY_ENV, KEY)
    _write_questions(tmp_path / "mcq.csv", 3)

    def base(raw):
        raw["evaluation"].update(
            questions=str(tmp_path / "mcq.csv"),
            models=[],
            contexts=["closed_book"],
            api={
                "models": [API_MODEL],
                "max_concurrency": 1,
                "max_retries": 2,
                "initial_backoff": 0.01,
                "request_timeout": 0.5,
            },
        )

    write_recipe(tmp_path, base)
    overrides: dict[int, dict] = {}

    def edit(raw, version):
        raw["evaluation"]["system_prompt"] = f"[prompt v{version}] Answer with one letter."
        raw["evaluation"]["api"].update(overrides.get(version, {}))

    with dg.instance_for_test() as instance:
        yield Scene(
            tmp_path, tmp_path / "artifacts", instance, "mcq_scores", API_CELL, edit, overrides
        )


# --- synthetic_qa: faults that fail the run ----------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault scripted at the stub after ``paid`` good replies of the faulty run."""

    script: dict
    expect: tuple[str, ...]  # regular expressions the failure message must match
    attempts: int  # requests the fault itself receives (1 = not retried)
    paid: int = 1


QA_FAILURES = {
    "401-bad-key": Fault(
        {"status": 401},
        (r"rejected the API key \(HTTP 401\)", KEY_ENV, "llm.api_key_env"),
        attempts=1,
    ),
    "403-forbidden": Fault(
        {"status": 403}, (r"rejected the API key \(HTTP 403\)", KEY_ENV), attempts=1
    ),
    "429-quota-exhausted": Fault(  # the openai client retries every 429 (openai-python#1671)
        {"status": 429, "code": "insufficient_quota"},
        (r"no quota left \(HTTP 429 insufficient_quota\)", "add credit", KEY_ENV),
        attempts=3,
    ),
    "429-persistent": Fault(
        {"status": 429, "headers": {"Retry-After": "0"}},
        (r"kept rate-limiting .*HTTP 429", r"qa\.max_concurrency", r"qa\.max_retries=2"),
        attempts=3,
    ),
    "500-persistent": Fault(
        {"status": 500},
        (r"gave up after 3 attempts", r"kept failing with HTTP 500", "try again later"),
        attempts=3,
    ),
    "timeout": Fault(
        {"hang": True},
        (r"no reply .* within qa\.request_timeout=0\.5s", r"raise qa\.request_timeout"),
        attempts=3,
    ),
    "malformed-json-body": Fault(
        {"raw": "{not json"},
        (r"did not answer with an OpenAI chat completion", r"llm\.base_url", "/v1"),
        attempts=3,
    ),
    "reply-without-choices": Fault(
        {"body": {"error": {"message": "upstream overloaded"}}},
        (r"answered without a choice", r"llm\.base_url"),
        attempts=3,
    ),
    "truncated-body": Fault(
        {"cut": True, "content": TWO_PAIRS},
        (r"closed the connection before its reply was complete", "server's log"),
        attempts=3,
    ),
    "404-unknown-model": Fault(
        {"status": 404},
        (r"refused the request for model 'stub-model' \(HTTP 404\)", r"qa\.model", "base_url"),
        attempts=1,
    ),
    "400-prompt-too-long": Fault(
        {"status": 400, "echo_auth": True},
        (r"HTTP 400", r"lower qa\.max_tokens or chunking\.chunk_size", r"Bearer \*\*\*"),
        attempts=1,
    ),
}


@pytest.mark.parametrize("name", list(QA_FAILURES))
def test_synthetic_qa_endpoint_fault(qa_scene, name):
    fault = QA_FAILURES[name]
    with OpenAIStub([TWO_PAIRS], hang_limit=10) as stub:
        assert qa_scene.materialize(stub.base_url, version=1).success  # the previous one
        previous = qa_scene.output.read_bytes()
        assert _requests(stub, 1) == 3

        stub.replies = [TWO_PAIRS] * fault.paid + [fault.script]
        message = _failure_message(qa_scene.materialize(stub.base_url))
        assert _requests(stub, 2) == fault.paid + fault.attempts
        assert f"synthetic_qa[{DOC}]" in message and stub.base_url in message
        for pattern in fault.expect:
            assert re.search(pattern, message), (pattern, message)
        assert f"{fault.paid} of 3 replies are in the cache ({fault.paid} paid" in message
        assert KEY not in message
        assert qa_scene.output.read_bytes() == previous  # the previous materialization
        _no_leftovers(qa_scene.output.parent)

        # Fixed endpoint: the rerun asks only for what was not paid for.
        stub.replies = [TWO_PAIRS]
        rerun = qa_scene.materialize(stub.base_url)
        assert rerun.success
        assert _requests(stub, 2) == fault.paid + fault.attempts + (3 - fault.paid)
        meta = rerun.asset_materializations_for_node("synthetic_qa")[0].metadata
        assert meta["cache_hits"].value == fault.paid
        assert meta["llm_requests"].value == 3 - fault.paid


# --- synthetic_qa: transient faults the retries absorb -----------------------------------------


@pytest.mark.parametrize(
    ("name", "script", "retries"),
    [
        pytest.param(*RETRY_AFTER, id="429-retry-after"),
        pytest.param("500-then-503", [{"status": 500}, {"status": 503}], 2, id="500-then-503"),
        pytest.param("timeout-once", [{"hang": True}], 1, id="timeout-once"),
        pytest.param(
            "truncated-body-once",
            [{"cut": True, "content": TWO_PAIRS}],
            1,
            id="truncated-body-once",
        ),
    ],
)
def test_synthetic_qa_transient_fault_is_retried(qa_scene, name, script, retries):
    with OpenAIStub([TWO_PAIRS], hang_limit=10) as stub:
        assert qa_scene.materialize(stub.base_url, version=1).success
        previous = qa_scene.output.read_bytes()
        stub.replies = [NEW_PAIRS, *script, NEW_PAIRS]
        result = qa_scene.materialize(stub.base_url)
        assert result.success
        assert _requests(stub, 2) == 3 + retries  # each fault cost one more request, no more
        meta = result.asset_materializations_for_node("synthetic_qa")[0].metadata
        assert meta["llm_retries"].value == retries and meta["llm_requests"].value == 3
        assert qa_scene.output.read_bytes() != previous  # the new rows replaced the old ones
        questions = {r["question"] for r in read_jsonl(qa_scene.output)}
        assert questions == {"Why retry?", "Why budget?"} and meta["rows"].value == 6
        if name == "429-retry-after":  # the server's wait, not our 0.01 s backoff
            times = [
                t for r, t in zip(stub.requests, stub.times, strict=True) if _version_of(r) == 2
            ]
            assert times[2] - times[1] >= 0.95
            # the wait and the refused attempt before it
            assert 1.0 <= meta["llm_retry_wait_seconds"].value < 1.5


# --- synthetic_qa: the endpoint is not there, or goes away ---------------------------------------


def test_synthetic_qa_unreachable_endpoint(qa_scene):
    with OpenAIStub([TWO_PAIRS]) as stub:
        assert qa_scene.materialize(stub.base_url, version=1).success
        previous = qa_scene.output.read_bytes()
        down = f"http://127.0.0.1:{_closed_port()}/v1"
        message = _failure_message(qa_scene.materialize(down))
        assert f"could not connect to {down}" in message
        assert "start the server, or correct llm.base_url in the profile" in message
        assert "gave up after 3 attempts (qa.max_retries=2)" in message
        assert "0 of 3 replies are in the cache" in message
        assert qa_scene.output.read_bytes() == previous
        assert qa_scene.materialize(stub.base_url).success  # the server is back
        assert _requests(stub, 2) == 3


def test_synthetic_qa_endpoint_goes_down_mid_run(qa_scene):
    """Two replies paid, then the server stops: the run fails, and against a server that is
    back (a new port: the Q&A cache does not depend on the URL) only the third is asked for."""
    with OpenAIStub([TWO_PAIRS, TWO_PAIRS, TWO_PAIRS, {"stop": True}]) as dying:
        assert qa_scene.materialize(dying.base_url, version=1).success
        previous = qa_scene.output.read_bytes()
        dying.replies = [TWO_PAIRS, TWO_PAIRS, {"stop": True}]
        message = _failure_message(qa_scene.materialize(dying.base_url))
    assert "2 of 3 replies are in the cache (2 paid in this run)" in message
    assert qa_scene.output.read_bytes() == previous
    assert qa_scene.cached_replies() == 3 + 2
    with OpenAIStub([TWO_PAIRS]) as back:
        result = qa_scene.materialize(back.base_url)
        assert result.success and _requests(back, 2) == 1
    meta = result.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert meta["cache_hits"].value == 2


# --- synthetic_qa: replies that arrive but are not what was asked for ---------------------------


def test_synthetic_qa_reply_cut_off_at_max_tokens(qa_scene):
    """finish_reason length with the JSON cut in its third object: the two complete pairs
    are kept (they were lost before), the cut is counted, the paid reply is cached; raising
    qa.max_tokens asks again."""
    cut = TWO_PAIRS[:-1] + ', {"question": "What is a sen'
    with OpenAIStub([TWO_PAIRS]) as stub:
        stub.replies = [{"content": cut, "finish_reason": "length"}, NEW_PAIRS, NEW_PAIRS]
        result = qa_scene.materialize(stub.base_url)
        assert result.success
        meta = result.asset_materializations_for_node("synthetic_qa")[0].metadata
        assert meta["truncated_replies"].value == 1
        assert meta["parse_outcomes"].value == {"json": 2, "json_partial": 1}
        rows = read_jsonl(qa_scene.output)
        first_chunk = read_jsonl(ArtifactLayout(qa_scene.root).chunks(DOC))[0]["id"]
        assert [r["question"] for r in rows if r["chunk_id"] == first_chunk] == [
            "What is a retry?",
            "What is a budget?",
        ]
        assert qa_scene.materialize(stub.base_url).success  # cached: nothing asked again
        assert _requests(stub, 2) == 3
        qa_scene.overrides[3] = {"max_tokens": 2048}
        assert qa_scene.materialize(stub.base_url, version=3).success
        assert _requests(stub, 3) == 3  # a new max_tokens is a new request for every chunk


def test_synthetic_qa_reply_with_fewer_pairs_than_asked(qa_scene):
    one_pair = '[{"question": "What is a retry?", "answer": "A second attempt."}]'
    with OpenAIStub([one_pair]) as stub:
        result = qa_scene.materialize(stub.base_url)
    assert result.success
    meta = result.asset_materializations_for_node("synthetic_qa")[0].metadata
    assert meta["parse_outcomes"].value == {"json": 3}
    assert meta["rows"].value == 3  # one per chunk where two were asked: kept, not re-asked


def test_synthetic_qa_no_reply_holds_a_pair(qa_scene):
    """Every reply is prose: nothing is written over the previous rows, the paid replies stay
    cached (a rerun pays nothing) and the message says which settings to change."""
    prose = "I am sorry, I can only answer questions about cooking."
    with OpenAIStub([TWO_PAIRS]) as stub:
        assert qa_scene.materialize(stub.base_url, version=1).success
        previous = qa_scene.output.read_bytes()
        stub.replies = [prose]
        message = _failure_message(qa_scene.materialize(stub.base_url))
        assert "none of the 3 replies of model 'stub-model' held a question/answer pair" in message
        assert "parse outcomes: failed 3" in message and "qa.prompt" in message
        assert "qa.model" in message and "rerun pays nothing" in message
        assert qa_scene.output.read_bytes() == previous
        _failure_message(qa_scene.materialize(stub.base_url))
        assert _requests(stub, 2) == 3  # the rerun asked nothing again


def test_synthetic_qa_missing_key_fails_before_any_request(qa_scene, monkeypatch):
    with OpenAIStub([TWO_PAIRS]) as stub:
        assert qa_scene.materialize(stub.base_url, version=1).success
        previous = qa_scene.output.read_bytes()
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(dg.DagsterInvalidConfigError, match=f"{KEY_ENV}.*not set"):
            qa_scene.materialize(stub.base_url)
        monkeypatch.setenv(KEY_ENV, "")
        message = _failure_message(qa_scene.materialize(stub.base_url))
        assert f"no API key for the LLM endpoint {stub.base_url}" in message
        assert f"{KEY_ENV} is unset or empty" in message and "llm.api_key_env" in message
        assert _requests(stub, 2) == 0
        assert qa_scene.output.read_bytes() == previous


# --- mcq_scores of an API model ----------------------------------------------------------------

API_FAILURES = {
    "401-bad-key": Fault(
        {"status": 401}, (r"rejected the API key \(HTTP 401\)", KEY_ENV), attempts=1
    ),
    "500-persistent": Fault(
        {"status": 500},
        (r"gave up after 3 attempts \(evaluation\.api\.max_retries=2\)", "HTTP 500"),
        attempts=3,
    ),
    "timeout": Fault(
        {"hang": True},
        (r"within evaluation\.api\.request_timeout=0\.5s", r"raise evaluation\.api"),
        attempts=3,
    ),
    "malformed-json-body": Fault(
        {"raw": "<html>502 Bad Gateway</html>"},
        (r"did not answer with an OpenAI chat completion", "/v1"),
        attempts=3,
    ),
    "404-unknown-model": Fault(
        {"status": 404},
        (rf"refused the request for model '{API_MODEL}' \(HTTP 404\)", r"evaluation\.api\.models"),
        attempts=1,
    ),
}


@pytest.mark.parametrize("name", list(API_FAILURES))
def test_api_score_cell_endpoint_fault(api_scene, name):
    fault = API_FAILURES[name]
    with OpenAIStub(["B"], hang_limit=10) as stub:
        assert api_scene.materialize(stub.base_url, version=1).success
        previous = api_scene.output.read_bytes()
        stub.replies = ["C"] * fault.paid + [fault.script]
        message = _failure_message(api_scene.materialize(stub.base_url))
        assert _requests(stub, 2) == fault.paid + fault.attempts
        assert f"mcq_scores[{API_MODEL}|closed_book]" in message and stub.base_url in message
        for pattern in fault.expect:
            assert re.search(pattern, message), (pattern, message)
        assert (
            f"{fault.paid} of 3 replies are in the cache ({fault.paid} paid in this run)" in message
        )
        assert api_scene.output.read_bytes() == previous
        _no_leftovers(api_scene.output.parent)

        stub.replies = ["C"]
        rerun = api_scene.materialize(stub.base_url)
        assert rerun.success
        assert _requests(stub, 2) == fault.paid + fault.attempts + (3 - fault.paid)
        meta = rerun.asset_materializations_for_node("mcq_scores")[0].metadata
        assert meta["cache_hits"].value == fault.paid and meta["llm_requests"].value == 2
        assert [r["predicted"] for r in read_jsonl(api_scene.output)] == ["C"] * 3


@pytest.mark.parametrize(
    ("name", "script", "retries"),
    [
        pytest.param(*RETRY_AFTER, id="429-retry-after"),
        pytest.param("503-once", [{"status": 503}], 1, id="503-once"),
    ],
)
def test_api_score_cell_transient_fault_is_retried(api_scene, name, script, retries):
    with OpenAIStub(["B", *script, "B"]) as stub:
        result = api_scene.materialize(stub.base_url)
        assert result.success and _requests(stub, 2) == 3 + retries
        meta = result.asset_materializations_for_node("mcq_scores")[0].metadata
        assert meta["llm_retries"].value == retries and meta["invalid_answers"].value == 0
        if name == "429-retry-after":
            assert stub.times[2] - stub.times[1] >= 0.95


def test_api_score_cell_unreachable_endpoint(api_scene):
    with OpenAIStub(["B"]) as stub:
        assert api_scene.materialize(stub.base_url, version=1).success
        previous = api_scene.output.read_bytes()
    down = f"http://127.0.0.1:{_closed_port()}/v1"
    message = _failure_message(api_scene.materialize(down))
    assert f"could not connect to {down}" in message and "llm.base_url" in message
    assert "0 of 3 replies are in the cache" in message
    assert api_scene.output.read_bytes() == previous


def test_api_score_cell_reply_cut_off_before_the_letter(api_scene):
    """evaluation.api.max_tokens too small: the cut reply is an invalid answer (counted and
    shown, flagged truncated), cached like any paid reply."""
    cut = {"content": "The correct answer", "finish_reason": "length"}
    with OpenAIStub([cut, "B", "C"]) as stub:
        result = api_scene.materialize(stub.base_url)
        assert result.success
        meta = result.asset_materializations_for_node("mcq_scores")[0].metadata
        assert meta["invalid_answers"].value == 1
        records = read_jsonl(api_scene.output)
        assert [(r["predicted"], r["truncated"]) for r in records] == [
            (None, True),
            ("B", False),
            ("C", False),
        ]
        assert records[0]["reply"] == "The correct answer" and records[0]["invalid"]
        assert api_scene.materialize(stub.base_url).success
        assert _requests(stub, 2) == 3


def test_api_score_cell_missing_key(api_scene, monkeypatch):
    """As wired by the profile (``api_key=dg.EnvVar``), the run fails at start naming the
    variable; with the resource reading the key at use (``api_key_env``), the API cell fails
    naming it and a local model's cell, which needs no key, still runs."""
    monkeypatch.delenv(KEY_ENV)
    with OpenAIStub(["B"]) as stub:
        with pytest.raises(dg.DagsterInvalidConfigError, match=f"{KEY_ENV}.*not set"):
            api_scene.materialize(stub.base_url)

        raw = yaml.safe_load(api_scene.recipe(2).read_text())
        raw["evaluation"]["models"] = ["base"]
        path = api_scene.tmp / "with-local.yaml"
        path.write_text(yaml.safe_dump(raw))
        recipe = load_recipe(path)
        resources = build_resources(recipe, load_profile(LOCAL_PROFILE), api_scene.root)
        resources["llm"] = LlmEndpointResource(base_url=stub.base_url, api_key_env=KEY_ENV)
        assets = list(build_definitions(path, LOCAL_PROFILE, api_scene.root).assets or [])

        def cell(model: str):
            return dg.materialize(
                assets,
                resources=resources,
                instance=api_scene.instance,
                selection="mcq_scores",
                partition_key=f"closed_book|{model}",
                raise_on_error=False,
            )

        message = _failure_message(cell(API_MODEL))
        assert f"no API key for the LLM endpoint {stub.base_url}" in message
        assert f"{KEY_ENV} is unset or empty" in message
        assert cell("base").success  # tiny:base, scored locally without any key
        assert stub.requests == []


def test_cut_short_and_unreadable_replies_are_logged_with_what_to_do(tmp_path):
    """What synthetic_qa hands to the run log (``log=``) for replies that arrive but are not
    what was asked for: one line each, naming the document, the chunk and the setting."""
    import openai

    from ragft_dagster.config.recipe import QaRecipe
    from ragft_dagster.data.qa_generation import generate_document_qa
    from ragft_dagster.llm.cache import ReplyCache

    chunks = [
        {"id": f"c{i}", "doc": "d.md", "heading_path": ["Doc", f"Part {i}"], "text": f"T {i}."}
        for i in range(3)
    ]
    # structured_output off: these replies ignore a schema, which is counted and said apart
    qa = QaRecipe(
        generator="openai",
        model="m",
        questions_per_chunk=2,
        max_concurrency=1,
        structured_output="off",
    )
    one_pair = '[{"question": "What is a retry?", "answer": "A second attempt."}]'
    cut = {"content": TWO_PAIRS[:-1] + ', {"question": "Wh', "finish_reason": "length"}
    lines: list[str] = []
    with OpenAIStub([cut, one_pair, "Sorry, I cannot help with that."]) as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key=KEY, max_retries=0)
        rows, stats = generate_document_qa(
            chunks, "d.md", qa, cache=ReplyCache(tmp_path), client=client, log=lines.append
        )
    assert len(rows) == 3 and (stats.truncated, stats.short_replies) == (1, 1)
    assert stats.parse == {"json_partial": 1, "json": 1, "failed": 1}
    assert len(lines) == 3 and all(line.startswith("d.md: chunk c") for line in lines)
    assert "cut off at qa.max_tokens=1024" in lines[0] and "2 complete pair(s) kept" in lines[0]
    assert "1 pair(s) instead of qa.questions_per_chunk=2" in lines[1]
    assert "held no question/answer pair" in lines[2] and "qa.prompt" in lines[2]


def test_a_batch_logs_its_first_warnings_and_sums_up_the_rest(tmp_path):
    """A model that always answers short would otherwise put one run-log event per chunk in a
    batch of thousands: the first WARNINGS_LOGGED are logged, then one line with the counts."""
    import openai

    from ragft_dagster.config.recipe import QaRecipe
    from ragft_dagster.data.qa_generation import WARNINGS_LOGGED, generate_qa
    from ragft_dagster.llm.cache import ReplyCache

    documents = {
        f"d{d}.md": [
            {
                "id": f"d{d}c{i}",
                "doc": f"d{d}.md",
                "heading_path": [f"D{d}", f"P{i}"],
                "text": f"T {d} {i}.",
            }
            for i in range(5)
        ]
        for d in range(6)
    }
    # structured_output off: these replies ignore a schema, which is counted and said apart
    qa = QaRecipe(
        generator="openai",
        model="m",
        questions_per_chunk=2,
        max_concurrency=4,
        structured_output="off",
    )
    one_pair = '[{"question": "What is a retry?", "answer": "A second attempt."}]'
    lines: list[str] = []
    with OpenAIStub([one_pair]) as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key=KEY, max_retries=0)
        docs, stats = generate_qa(
            documents, qa, cache=ReplyCache(tmp_path), client=client, log=lines.append
        )
    assert len(stub.requests) == 30 and stats.short_replies == 30
    assert len(lines) == WARNINGS_LOGGED + 1
    assert all("1 pair(s) instead of qa.questions_per_chunk=2" in x for x in lines[:-1])
    assert lines[-1].startswith(f"... and {30 - WARNINGS_LOGGED} more warnings")
    assert "30 short" in lines[-1] and "6 documents" in lines[-1]
    assert all(doc.stats.short_replies == 5 for doc in docs.values())


def test_api_score_cell_stops_at_its_budget_like_qa_generation(api_scene):
    """API scoring goes through the same runner as Q&A generation: evaluation.api.budget stops
    it before the limit is crossed, and a rerun with a larger budget pays only for the rest."""
    api_scene.overrides[2] = {"budget": {"max_requests": 2}}
    with OpenAIStub(["B"]) as stub:  # one endpoint: the cache keys name it
        message = _failure_message(api_scene.materialize(stub.base_url, version=2))
        assert len(stub.requests) == 2
        assert "evaluation.api.budget.max_requests=2" in message
        assert "2 of 3 replies are in the cache (2 paid in this run)" in message
        assert "Raise evaluation.api.budget in the recipe" in message
        api_scene.overrides[2] = {"budget": {"max_requests": 5}}
        api_scene.recipe(2).unlink()  # the same prompt version (cache keys), a larger budget
        rerun = api_scene.materialize(stub.base_url, version=2)
        assert rerun.success, _failure_message(rerun)
        assert len(stub.requests) == 3
