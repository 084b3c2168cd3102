"""call_llm against a loopback server: which failures are retried (by the openai client, or by
us for unreadable replies), in what time, and the one-line errors the rest end in."""

from __future__ import annotations

import socket
import threading
import time

import openai
import pytest

from ragft_dagster.config.recipe import QaRecipe
from ragft_dagster.llm.client import Endpoint, LlmCallError, LlmStats, call_llm

from ..openai_stub import OpenAIStub

REQUEST = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}


def _call(base_url: str, sleep=lambda s: None, timeout: float = 5, **calls):
    """call_llm with a client built as the resource builds it (``max_retries=0``)."""
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=timeout)
    qa = QaRecipe(generator="openai", model="stub-model", **{"initial_backoff": 0.01, **calls})
    stats = LlmStats()
    return call_llm(
        Endpoint(client, qa, "qa", sleep), dict(REQUEST), stats, threading.Lock()
    ), stats


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_429_with_retry_after_then_200_succeeds_after_the_servers_wait():
    with OpenAIStub([{"status": 429, "headers": {"Retry-After": "0.4"}}, "fine"]) as stub:
        reply, stats = _call(stub.base_url, max_retries=2)
    assert reply["content"] == "fine" and len(stub.requests) == 2
    assert stub.times[1] - stub.times[0] >= 0.35  # the server's wait, not a backoff of ours
    assert stats.retries == 1 and 0.35 <= stats.retry_wait_seconds < 2


def test_5xx_and_timeouts_are_retried_by_the_client():
    with OpenAIStub([{"status": 503}, {"delay": 1.0, "content": "late"}, "fine"]) as stub:
        reply, stats = _call(stub.base_url, timeout=0.3, max_retries=2)
    assert reply["content"] == "fine" and len(stub.requests) == 3 and stats.retries == 2


def test_unreadable_replies_are_retried_with_our_backoff():
    waits: list[float] = []
    body_without_choices = {"body": {"error": {"message": "upstream overloaded"}}}
    with OpenAIStub([{"raw": "{not json"}, body_without_choices, "fine"]) as stub:
        reply, stats = _call(stub.base_url, sleep=waits.append, max_retries=2, max_backoff=0.05)
    assert reply["content"] == "fine" and len(stub.requests) == 3 and stats.retries == 2
    assert len(waits) == 2 and all(0 <= w <= 0.05 for w in waits)  # full jitter, capped


def test_dead_endpoint_fails_in_one_line_in_bounded_time():
    down = f"http://127.0.0.1:{_closed_port()}/v1"
    started = time.monotonic()
    with pytest.raises(LlmCallError) as raised:
        _call(down, max_retries=2)
    message = str(raised.value)
    assert time.monotonic() - started < 10  # the client's backoff: ~0.5 s then ~1 s
    assert "\n" not in message
    assert message == (
        f"gave up after 3 attempts (qa.max_retries=2): could not connect to {down}: start the "
        "server, or correct llm.base_url in the profile"
    )


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ({"status": 401}, "rejected the API key (HTTP 401)"),
        ({"status": 404}, "refused the request for model 'stub-model' (HTTP 404)"),
    ],
)
def test_errors_retrying_cannot_fix_fail_at_once(script, expect):
    with OpenAIStub([script]) as stub:
        with pytest.raises(LlmCallError, match=expect.replace("(", r"\(").replace(")", r"\)")):
            _call(stub.base_url, max_retries=3)
        assert len(stub.requests) == 1


def test_persistent_429_names_the_settings():
    with OpenAIStub([{"status": 429, "headers": {"Retry-After": "0.01"}}]) as stub:
        with pytest.raises(LlmCallError) as raised:
            _call(stub.base_url, max_retries=1)
        assert len(stub.requests) == 2
    assert str(raised.value) == (
        f"gave up after 2 attempts (qa.max_retries=1): {stub.base_url} kept rate-limiting the "
        "requests (HTTP 429): lower qa.max_concurrency, or raise qa.max_retries"
    )


def test_a_wait_longer_than_the_client_honours_is_said_not_retried():
    with OpenAIStub([{"status": 429, "headers": {"Retry-After": "3600"}}]) as stub:
        with pytest.raises(LlmCallError, match=r"asks to wait 3600 s \(Retry-After\)"):
            _call(stub.base_url, max_retries=3)
        assert len(stub.requests) == 1


def test_quota_exhausted_says_so():
    """openai retries every 429, this one included (openai-python#1671); the advice is ours."""
    with OpenAIStub([{"status": 429, "code": "insufficient_quota"}]) as stub:
        with pytest.raises(LlmCallError, match=r"no quota left .*add credit"):
            _call(stub.base_url, max_retries=1)
        assert len(stub.requests) == 2
