"""The LLM path of synthetic_qa: cache, retries, concurrency, budget, cost (which failures are
retried and how long they wait: tests/llm/test_client.py)."""

from __future__ import annotations

import openai
import pytest

from ragft_dagster.config.recipe import QaRecipe
from ragft_dagster.data.qa_generation import generate_document_qa
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import BudgetExceeded, LlmCallError

from ..openai_stub import OpenAIStub

GOOD = '[{"question": "What is X?", "answer": "X is Y."}]'


def _chunks(n: int) -> list[dict]:
    return [
        {"id": f"c{i}", "doc": "d.md", "heading_path": ["Doc", f"Part {i}"], "text": f"Text {i}."}
        for i in range(n)
    ]


def _qa(**overrides) -> QaRecipe:
    settings = {
        "generator": "openai",
        "model": "stub-model",
        "questions_per_chunk": 1,
        "initial_backoff": 0.01,
        "request_timeout": 5,
        **overrides,
    }
    return QaRecipe(**settings)


def _client(stub: OpenAIStub, timeout: float = 5) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key="sk-test", max_retries=0, timeout=timeout)


def _generate(cache_dir, client, n: int = 1, sleep=lambda s: None, **qa_overrides):
    """Generate for ``n`` chunks of one document with the stub's client (our retries of
    unreadable replies do not sleep; the openai client's own backoff does)."""
    return generate_document_qa(
        _chunks(n),
        "d.md",
        _qa(**qa_overrides),
        cache=ReplyCache(cache_dir),
        client=client,
        sleep=sleep,
    )


def test_unchanged_chunks_make_zero_requests(tmp_path):
    cache = ReplyCache(tmp_path)
    with OpenAIStub([GOOD]) as stub:
        rows, stats = generate_document_qa(
            _chunks(4), "d.md", _qa(), cache=cache, client=_client(stub)
        )
        assert len(stub.requests) == 4 and stats.requests == 4 and len(rows) == 4
        # One chunk edited: exactly one new request, three cache hits.
        edited = _chunks(4)
        edited[2] = {**edited[2], "text": "Text 2, now longer."}
        _, again = generate_document_qa(edited, "d.md", _qa(), cache=cache, client=_client(stub))
        assert len(stub.requests) == 5 and again.requests == 1 and again.cache_hits == 3
        # A new prompt template or new generation parameters are new cache keys.
        generate_document_qa(
            edited, "d.md", _qa(temperature=0.1), cache=cache, client=_client(stub)
        )
        assert len(stub.requests) == 9
        # Operational settings are not part of the key.
        generate_document_qa(
            edited,
            "d.md",
            _qa(temperature=0.1, max_concurrency=1, max_retries=0),
            cache=cache,
            client=_client(stub),
        )
        assert len(stub.requests) == 9


def test_passes_are_separate_cache_entries(tmp_path):
    with OpenAIStub([GOOD]) as stub:
        _, stats = generate_document_qa(
            _chunks(2), "d.md", _qa(passes=3), cache=ReplyCache(tmp_path), client=_client(stub)
        )
    assert stats.requests == 6 and len(stub.requests) == 6


def test_401_fails_at_once_naming_the_key_variable(tmp_path):
    with OpenAIStub([{"status": 401}]) as stub:
        with pytest.raises(LlmCallError, match="rejected the API key.*api_key_env"):
            _generate(tmp_path, _client(stub), n=3, max_concurrency=1)
        assert len(stub.requests) == 1  # not retried, and no further chunk was tried


def test_unreachable_endpoint_gives_up_with_advice(tmp_path):
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0, timeout=1)
    with pytest.raises(LlmCallError, match="gave up after 3 attempts.*llm.base_url"):
        _generate(tmp_path, client, max_retries=2)


def test_timeouts_are_retried(tmp_path):
    with OpenAIStub([{"delay": 1.0, "content": GOOD}, GOOD]) as stub:
        rows, stats = generate_document_qa(
            _chunks(1),
            "d.md",
            _qa(),
            cache=ReplyCache(tmp_path),
            client=_client(stub, 0.3),
            sleep=lambda s: None,
        )
    assert stats.retries == 1 and len(rows) == 1


def test_concurrency_is_bounded(tmp_path):
    with OpenAIStub([{"delay": 0.15, "content": GOOD}]) as stub:
        _generate(tmp_path, _client(stub), n=10, max_concurrency=3)
    assert stub.max_in_flight == 3 and len(stub.requests) == 10


def test_budget_stops_before_it_is_exceeded_and_keeps_what_was_paid(tmp_path):
    cache = ReplyCache(tmp_path)
    with OpenAIStub([GOOD]) as stub:
        qa = _qa(max_concurrency=1, budget={"max_requests": 2})
        with pytest.raises(
            BudgetExceeded, match=r"max_requests=2.*2 of 5 replies are in the cache"
        ):
            generate_document_qa(_chunks(5), "d.md", qa, cache=cache, client=_client(stub))
        assert len(stub.requests) == 2
        # The rerun pays only for the rest.
        rows, stats = generate_document_qa(
            _chunks(5), "d.md", _qa(), cache=cache, client=_client(stub)
        )
        assert len(stub.requests) == 5 and stats.cache_hits == 2 and len(rows) == 5


def test_token_budget_counts_the_reply_limit(tmp_path):
    # each request may use its prompt (~len/3) + max_tokens=100: two fit in 300, three do not
    qa = _qa(
        max_concurrency=1, max_tokens=100, prompt="Q {n}: {context}", budget={"max_tokens": 300}
    )
    with OpenAIStub([GOOD]) as stub:
        with pytest.raises(BudgetExceeded, match="max_tokens=300 would be exceeded"):
            generate_document_qa(
                _chunks(5), "d.md", qa, cache=ReplyCache(tmp_path), client=_client(stub)
            )
        # each reply reports 120 tokens: 2 x 120 used + ~104 reserved for a third > 300
        assert len(stub.requests) == 2


def test_usage_cost_and_truncation_are_reported(tmp_path):
    qa = _qa(pricing={"prompt_per_1k": 0.03, "completion_per_1k": 0.06})
    with OpenAIStub([{"content": GOOD, "finish_reason": "length"}, GOOD]) as stub:
        _, stats = generate_document_qa(
            _chunks(2), "d.md", qa, cache=ReplyCache(tmp_path), client=_client(stub)
        )
    assert stats.prompt_tokens == 200 and stats.completion_tokens == 40
    assert stats.cost_usd(0.03, 0.06) == pytest.approx(0.0084)
    assert stats.truncated == 1


def test_offline_generator_is_cached_too(tmp_path):
    chunk = {
        "id": "c",
        "doc": "d.md",
        "heading_path": ["Doc"],
        "text": "# Doc\n\nThe sensor is a watcher of files.",
    }
    qa = QaRecipe(generator="offline")
    rows, stats = generate_document_qa([chunk], "d.md", qa, cache=ReplyCache(tmp_path))
    assert rows and stats.requests == 1
    rows2, stats2 = generate_document_qa([chunk], "d.md", qa, cache=ReplyCache(tmp_path))
    assert rows2 == rows and stats2.requests == 0 and stats2.cache_hits == 1


ON_SCHEMA = '{"pairs": [{"question": "What is X?", "answer": "X is Y."}]}'
PROSE = "Question: What is X?\nAnswer: X is Y."


def test_structured_output_on_a_server_that_enforces_it(tmp_path):
    """Issue 28: the pairs are asked for with a JSON schema (vLLM, llama.cpp, Ollama and OpenAI
    constrain the reply to it)."""
    with OpenAIStub([ON_SCHEMA]) as stub:
        rows, stats = _generate(tmp_path, _client(stub), n=3)
    assert all(r["response_format"]["json_schema"]["name"] == "qa_pairs" for r in stub.requests)
    assert len(rows) == 3 and stats.off_schema == 0
    assert not any("response_format" in w for w in stats.warnings)


def test_a_server_that_refuses_the_schema_is_asked_without_it_once_said(tmp_path):
    def server(body):  # as an endpoint without structured output answers
        if "response_format" in body:
            return {"status": 400, "code": "response_format is not supported"}
        return GOOD

    with OpenAIStub([server]) as stub:
        rows, stats = _generate(tmp_path, _client(stub), n=3, max_concurrency=1)
    with_schema = [r for r in stub.requests if "response_format" in r]
    assert len(with_schema) == 1 and len(stub.requests) == 4  # refused once, then never sent
    assert len(rows) == 3 and stats.retries == 0
    (said,) = [w for w in stats.warnings if "refused response_format" in w]
    assert "qa.structured_output: off" in said
    # forced: the refusal is an error naming the key
    with OpenAIStub([server]) as stub, pytest.raises(LlmCallError, match="structured_output"):
        _generate(tmp_path / "forced", _client(stub), structured_output="json_schema")
    # off: never sent
    with OpenAIStub([server]) as stub:
        _generate(tmp_path / "off", _client(stub), n=2, structured_output="off")
    assert stub.requests and not any("response_format" in r for r in stub.requests)


def test_a_server_that_accepts_the_schema_and_answers_prose_is_noticed(tmp_path):
    """`transformers serve` accepts response_format, ignores it and answers prose."""
    with OpenAIStub([PROSE]) as stub:
        rows, stats = _generate(tmp_path, _client(stub), n=3)
    assert len(rows) == 3  # the lenient parser still reads the pairs
    assert stats.off_schema == 3
    (said,) = [w for w in stats.warnings if "ignored the JSON schema" in w]
    assert said.startswith("3 repl")
