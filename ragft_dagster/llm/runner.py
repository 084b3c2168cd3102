"""The one request runner: synthetic Q&A and API scoring send their requests through it.

Requests run ``max_concurrency`` at a time; each reserves its token estimate against the
section's budget before it is sent, is retried as :func:`~ragft_dagster.llm.client.call_llm`
says, and its reply goes to the cache before anything else can fail. The first failure stops
new requests; the error says how many replies are cached and that a rerun continues from
there.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import (
    BudgetExceeded,
    Endpoint,
    LlmCallError,
    LlmStats,
    RequestBudget,
    call_llm,
)


@dataclass(frozen=True)
class LlmRequest:
    """One request: where its reply goes (``index``), its cache key and the
    ``chat.completions.create`` arguments."""

    index: Hashable
    key: str
    request: dict[str, Any]


def estimate_tokens(request: dict[str, Any]) -> int:
    """A generous upper bound of a request's tokens: its prompt at ~3 characters a token (4 is
    usual in English) plus the reply's ``max_tokens``."""
    chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
    return chars // 3 + int(request.get("max_tokens") or 0)


def run_requests(
    todo: Sequence[LlmRequest],
    endpoint: Endpoint,
    cache: ReplyCache,
    *,
    concurrency: int,
    budget: RequestBudget,
    stats: LlmStats,
    cached: int = 0,
    total: int | None = None,
    what: str = "",
) -> dict[Any, dict[str, Any]]:
    """Send ``todo`` and return each reply by its request's ``index``.

    Args:
        todo: The requests whose replies are not cached.
        endpoint: Client and retry settings (its ``section`` names the recipe keys in errors).
        cache: Where every reply is written as soon as it arrives.
        concurrency: Requests in flight at once.
        budget: Shared request/token limits of the run.
        stats: Requests, tokens and retries are counted here.
        cached: Replies already taken from the cache (for the error's count).
        total: All replies the caller needs (cached + todo by default).
        what: Prefix of an endpoint error (e.g. the model scored).

    Raises:
        BudgetExceeded: The next request would have crossed the budget; nothing crossed it.
        LlmCallError: The endpoint failed in a way retrying did not fix.
    """
    replies: dict[Any, dict[str, Any]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def work(item: LlmRequest) -> None:
        if stop.is_set():
            return
        estimate = estimate_tokens(item.request)
        try:
            budget.reserve(estimate)
            reply = call_llm(endpoint, item.request, stats, lock)
        except BaseException:
            stop.set()  # no new requests once one has failed or the budget is spent
            raise
        cache.put(item.key, reply)  # paid for: keep it before anything else can fail
        budget.settle(estimate, reply["prompt_tokens"] + reply["completion_tokens"])
        with lock:
            stats.requests += 1
            stats.prompt_tokens += reply["prompt_tokens"]
            stats.completion_tokens += reply["completion_tokens"]
            replies[item.index] = reply

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(work, item) for item in todo]
        errors = [e for e in (f.exception() for f in futures) if e is not None]
    if not errors:
        return replies
    first: BaseException = next(
        (e for e in errors if isinstance(e, BudgetExceeded)),
        next((e for e in errors if not isinstance(e, LlmCallError)), errors[0]),
    )
    note = (
        f"{cached + len(replies)} of {total if total is not None else cached + len(todo)} "
        f"replies are in the cache ({stats.requests} paid in this run); a rerun continues "
        "from there"
    )
    if isinstance(first, BudgetExceeded):
        raise BudgetExceeded(
            f"{what}{first}; stopped before exceeding it. {note}. Raise "
            f"{endpoint.section}.budget in the recipe to go on."
        ) from None
    if isinstance(first, LlmCallError):
        raise LlmCallError(f"{what}{first}. {note}.") from None
    raise first  # a bug, not the endpoint: keep its traceback
