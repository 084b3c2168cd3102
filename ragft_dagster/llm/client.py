"""One chat completion against an OpenAI-compatible endpoint, with retries, backoff and errors
that say what to do (never the API key).

The openai client retries what it knows to be transient (408/409/429/5xx, timeouts, dropped
connections) with its own backoff, honouring the server's ``Retry-After``; tenacity retries what
it does not (a body that is not a chat completion). What is ours is the advice in the errors."""

from __future__ import annotations

import base64
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ragft_dagster.config.recipe import EndpointCalls


@dataclass
class LlmStats:
    """What one generator run did: calls made vs. answered from the cache, tokens, retries."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    """Retries before a reply: the openai client's and ours (of unreadable replies)."""
    truncated: int = 0
    """Replies cut off at ``max_tokens`` (finish_reason ``length``)."""
    short_replies: int = 0
    """Q&A replies holding fewer pairs than ``qa.questions_per_chunk``."""
    off_schema: int = 0
    """Replies to a request with a JSON schema (``response_format``) that do not follow it."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_wait_seconds: float = 0.0
    """Seconds lost to retries: the waits and the failed attempts before a reply."""
    parse: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """One line per reply that was cut off, short or unreadable, saying what to do."""

    def cost_usd(self, prompt_per_1k: float, completion_per_1k: float) -> float:
        return round(
            self.prompt_tokens / 1000 * prompt_per_1k
            + self.completion_tokens / 1000 * completion_per_1k,
            6,
        )


class LlmCallError(RuntimeError):
    """An endpoint failure that retrying will not fix (or that outlasted the retries)."""


class BudgetExceeded(RuntimeError):
    """The run's request/token budget would be exceeded by the next request."""


class RequestBudget:
    """Per-run limits on LLM requests and tokens, shared by the worker threads.

    A request reserves its estimated tokens (prompt estimate + ``max_tokens``) before it is sent
    and settles to the endpoint's reported usage afterwards, so the limit is never crossed.
    """

    def __init__(
        self, max_requests: int | None = None, max_tokens: int | None = None, section: str = "qa"
    ):
        self.section = section
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def reserve(self, estimated_tokens: int) -> None:
        with self._lock:
            if self.max_requests is not None and self.requests + 1 > self.max_requests:
                raise BudgetExceeded(
                    f"{self.section}.budget.max_requests={self.max_requests} reached after "
                    f"{self.requests} requests"
                )
            if self.max_tokens is not None and self.tokens + estimated_tokens > self.max_tokens:
                raise BudgetExceeded(
                    f"{self.section}.budget.max_tokens={self.max_tokens} would be exceeded: "
                    f"{self.tokens} tokens used or reserved, the next request may use up to "
                    f"{estimated_tokens}"
                )
            self.requests += 1
            self.tokens += estimated_tokens

    def settle(self, estimated_tokens: int, used_tokens: int) -> None:
        with self._lock:
            self.tokens += used_tokens - estimated_tokens


API_KEY_ENV_ATTR = "ragft_api_key_env"
"""Attribute of a client naming the variable its key came from (set by LlmEndpointResource), so
errors can say which variable to fix; clients without it are described generically."""


def endpoint_url(client: Any) -> str:
    """The client's base URL without credentials or query (safe to show in errors and logs)."""
    return safe_url(str(getattr(client, "base_url", "") or ""))


def safe_url(raw: str) -> str:
    """``raw`` without user info, query or fragment, where an API key could hide."""
    parts = urllib.parse.urlsplit(raw)
    if not parts.scheme:
        return raw or "the endpoint"
    try:
        port = parts.port
    except ValueError:  # not a valid port: show nothing rather than a malformed secret
        return "the endpoint"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")


def redact_secret(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` masked in the forms a server or library may echo it in (as is,
    URL-encoded, or inside base64, e.g. an ``Authorization: Basic`` header), so an error
    message never carries the API key into the run log."""
    if not secret or len(secret) < 4:
        return text
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")

    def decoded_holds_secret(match: re.Match[str]) -> str:
        token = match.group(0)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                raw = decode(token.rstrip("=") + "=" * (-len(token.rstrip("=")) % 4))
            except ValueError:
                continue
            if secret.encode() in raw:
                return "***"
        return token

    return _BASE64_TOKEN.sub(decoded_holds_secret, text)


@dataclass
class Endpoint:
    """How to call the LLM: the client, and the recipe section holding the retry settings
    (``max_retries``; ``initial_backoff`` and ``max_backoff`` for unreadable replies;
    ``request_timeout``), named in error messages."""

    client: Any
    retry: EndpointCalls
    section: str = "qa"
    sleep: Callable[[float], None] = time.sleep
    """How the retries of unreadable replies wait (the openai client's own waits are its own)."""
    structured: str = "off"
    """``auto``: a request with ``response_format`` that the endpoint refuses (HTTP 400) is sent
    again without it, and so is every later one; ``json_schema``: the refusal is an error."""
    structured_refused: str | None = None
    """Set when the endpoint refused ``response_format``: the reason, said once."""

    @property
    def url(self) -> str:
        return endpoint_url(self.client)

    @cached_property
    def retrying_client(self) -> Any:
        """The client, retrying transient failures ``max_retries`` times (however it was built:
        the resource builds clients with ``max_retries=0``); it shares the client's connections."""
        return self.client.with_options(max_retries=self.retry.max_retries)

    @property
    def key_env(self) -> str:
        name = getattr(self.client, API_KEY_ENV_ATTR, None)
        if name:
            return f"{name} (llm.api_key_env in the profile)"
        return "the variable named by llm.api_key_env in the profile"

    @property
    def model_field(self) -> str:
        return (
            f"{self.section}.models"
            if self.section == "evaluation.api"
            else f"{self.section}.model"
        )

    def describe(self, exc: BaseException) -> str:
        """The exception's message with the client's API key masked."""
        text = str(getattr(exc, "message", "") or exc)
        text = text if len(text) <= 300 else text[:299] + "…"
        return redact_secret(text, getattr(self.client, "api_key", None))


def _never_connected(exc: BaseException) -> bool:
    """Whether a connection error happened before any connection (refused, unknown host), as
    opposed to one dropped mid-reply. openai wraps its HTTP library's ``ConnectError``."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "ConnectError" or isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retryable_advice(endpoint: Endpoint, exc: BaseException) -> str:
    """What a failure that retries did not fix means, and what to do about it."""
    import openai

    url, section = endpoint.url, endpoint.section
    if isinstance(exc, openai.APITimeoutError):
        return (
            f"no reply from {url} within {section}.request_timeout="
            f"{endpoint.retry.request_timeout:g}s: raise {section}.request_timeout (long "
            "generations need more) or check the server's load"
        )
    if isinstance(exc, openai.APIConnectionError):
        if _never_connected(exc):
            return (
                f"could not connect to {url}: start the server, or correct llm.base_url in the "
                "profile"
            )
        return (
            f"{url} closed the connection before its reply was complete "
            f"({type(exc.__cause__ or exc).__name__}): check the server's log and that "
            "llm.base_url in the profile points at it"
        )
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 429:
            return (
                f"{url} kept rate-limiting the requests (HTTP 429): lower "
                f"{section}.max_concurrency, or raise {section}.max_retries"
            )
        return (
            f"{url} kept failing with HTTP {exc.status_code} ({endpoint.describe(exc)}): the "
            "server is in trouble; try again later"
        )
    if isinstance(exc, ValueError | openai.APIResponseValidationError):
        return (
            f"{url} did not answer with an OpenAI chat completion (unreadable body: "
            f"{endpoint.describe(exc)}): check that llm.base_url in the profile points at the "
            "server's OpenAI-compatible API (usually ending in /v1)"
        )
    return (
        f"{url} answered without a choice ({type(exc).__name__}): check that llm.base_url in "
        "the profile points at an OpenAI-compatible chat completions API"
    )


def _about_schema(exc: BaseException) -> bool:
    """Whether an HTTP 400 is about structured output (servers without it name the field)."""
    text = f"{getattr(exc, 'message', '') or exc} {getattr(exc, 'body', '')}".lower()
    return any(w in text for w in ("response_format", "json_schema", "schema", "structured"))


class _Unreadable(Exception):
    """A 200 reply that is not a chat completion (the openai client does not retry these)."""


def _reply(endpoint: Endpoint, request: dict[str, Any], tally: dict[str, float]) -> dict[str, Any]:
    """One request through the retrying client, its retries and final attempt's time in
    ``tally``."""
    import openai

    raw = endpoint.retrying_client.chat.completions.with_raw_response.create(**request)
    tally["retries"] += raw.retries_taken
    tally["final"] = raw.elapsed.total_seconds()
    try:
        response = raw.parse()
        choice = response.choices[0]
        content = choice.message.content
    except (ValueError, openai.APIResponseValidationError) as exc:  # unreadable JSON body
        raise _Unreadable() from exc
    except (AttributeError, IndexError, TypeError) as exc:  # a reply without choices
        raise _Unreadable() from exc
    usage = getattr(response, "usage", None)
    return {
        "content": content or "",
        "structured": "response_format" in request,
        "finish_reason": getattr(choice, "finish_reason", None),
        "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        "seconds": round(tally["final"], 3),
    }


def call_llm(
    endpoint: Endpoint, request: dict[str, Any], stats: LlmStats, stats_lock: threading.Lock
) -> dict[str, Any]:
    """One chat completion with retries: the openai client retries 408/409/429/5xx, timeouts
    and dropped connections (its backoff, the server's Retry-After); a reply that is not a chat
    completion is asked for again with tenacity (full-jitter exponential backoff from
    ``initial_backoff``, capped at ``max_backoff``); other errors fail at once.

    Args:
        endpoint: Client and retry settings.
        request: ``chat.completions.create`` arguments (model, messages, temperature, ...).
        stats: Retries and their time are counted here.
        stats_lock: Guards ``stats`` across worker threads.

    Raises:
        LlmCallError: Naming the endpoint, what went wrong and what to do; never the API key.
    """
    import openai
    import tenacity

    retry, section, url = endpoint.retry, endpoint.section, endpoint.url
    if endpoint.structured_refused is not None:
        request = {k: v for k, v in request.items() if k != "response_format"}
    started = time.monotonic()
    tally = {"retries": 0, "final": 0.0}

    def count_retry(state: tenacity.RetryCallState) -> None:
        tally["retries"] += 1

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Unreadable),
        stop=tenacity.stop_after_attempt(retry.max_retries + 1),
        wait=tenacity.wait_random_exponential(
            multiplier=retry.initial_backoff, max=retry.max_backoff
        ),
        sleep=endpoint.sleep,
        before_sleep=count_retry,
        reraise=True,
    )
    try:
        reply = retrying(_reply, endpoint, request, tally)
    except openai.APIStatusError as exc:
        status = exc.status_code
        if status in (401, 403):
            raise LlmCallError(
                f"{url} rejected the API key (HTTP {status}): put a valid key for this "
                f"endpoint in {endpoint.key_env}"
            ) from None
        if status == 429 and getattr(exc, "code", None) == "insufficient_quota":
            raise LlmCallError(
                f"{url} says the account has no quota left (HTTP 429 insufficient_quota): "
                f"add credit to the account, or put another key in {endpoint.key_env}"
            ) from None
        if status == 400 and "response_format" in request and _about_schema(exc):
            if endpoint.structured != "auto":
                raise LlmCallError(
                    f"{url} refused the JSON schema in response_format (HTTP 400: "
                    f"{endpoint.describe(exc)}); this endpoint has no structured output: "
                    f"set {section}.structured_output: auto (try, then fall back) or off"
                ) from None
            # This server has no structured output: ask without it from now on (the same
            # request again at once, not a retry).
            endpoint.structured_refused = endpoint.describe(exc)
            return call_llm(endpoint, request, stats, stats_lock)
        if status not in (408, 409, 429) and status < 500:
            hint = (
                f"; check the model name ({endpoint.model_field} in the recipe) and "
                "llm.base_url in the profile"
            )
            if status == 400:  # most often: prompt + max_tokens exceed the context
                shorter = (
                    "qa.max_tokens or chunking.chunk_size"
                    if section == "qa"
                    else f"{section}.max_tokens or retrieval.top_k"
                )
                hint = f"; if the prompt is too long for the model, lower {shorter}" + hint
            raise LlmCallError(
                f"{url} refused the request for model {request.get('model')!r} "
                f"(HTTP {status}): {endpoint.describe(exc)}{hint}"
            ) from None
        last: BaseException = exc
    except (openai.APIConnectionError, _Unreadable) as exc:  # APITimeoutError included
        last = exc.__cause__ if isinstance(exc, _Unreadable) and exc.__cause__ else exc
    else:
        if tally["retries"]:
            with stats_lock:
                stats.retries += int(tally["retries"])
                stats.retry_wait_seconds += max(time.monotonic() - started - tally["final"], 0.0)
        return reply
    asked = _long_retry_after(last)
    if asked is not None:
        raise LlmCallError(
            f"{url} rate-limited the requests (HTTP 429) and asks to wait {asked:g} s "
            f"(Retry-After), longer than the openai client waits ({_CLIENT_MAX_RETRY_AFTER} s), "
            f"so it was not retried: try again later, or lower {section}.max_concurrency"
        ) from None
    raise LlmCallError(
        f"gave up after {retry.max_retries + 1} attempts ({section}.max_retries="
        f"{retry.max_retries}): {_retryable_advice(endpoint, last)}"
    ) from None


_CLIENT_MAX_RETRY_AFTER = 120
"""The longest Retry-After, in seconds, the openai client waits for (``MAX_RETRY_AFTER_DELAY``
in openai 3.x); it does not retry a response asking for more."""


def _long_retry_after(exc: BaseException) -> float | None:
    """The seconds a 429 asked to wait, when that is more than the client waits (so the
    request was tried once, not ``max_retries + 1`` times)."""
    import openai

    if not isinstance(exc, openai.APIStatusError) or exc.response is None:
        return None
    try:
        asked = float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return asked if _CLIENT_MAX_RETRY_AFTER < asked < float("inf") else None
