"""Synthetic Q&A from document chunks: the driver over a batch of documents (Dagster-free).

Two generators, one row format: ``offline`` mines facts from the markdown with no LLM
(:mod:`ragft_dagster.data.offline_qa`: definitions, defaults, limits, settings, commands, steps,
examples: questions a user would ask, answered by the sentence that states the fact);
``openai`` asks any OpenAI-compatible endpoint with the recipe's prompt and parses the JSON reply
tolerantly (:mod:`ragft_dagster.data.qa_reply`). Every
paid reply is cached on disk before it is parsed, so a crash or a re-run never pays twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragft_dagster.config.recipe import QaRecipe
from ragft_dagster.data.offline_qa import generate_offline_qa
from ragft_dagster.data.qa_reply import parse_qa_reply
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import Endpoint, LlmCallError, LlmStats, RequestBudget
from ragft_dagster.llm.runner import LlmRequest, run_requests
from ragft_dagster.prompts import render_prompt


def qa_row_id(chunk_id: str, question: str) -> str:
    return hashlib.sha256(f"{chunk_id}\n{question.strip().lower()}".encode()).hexdigest()[:24]


def doc_title_of(chunks: list[dict[str, Any]], doc_key: str) -> str:
    for c in chunks:
        if c["heading_path"]:
            return c["heading_path"][0]
    return Path(doc_key).stem.replace("-", " ")


def qa_rows_for_chunk(
    chunk: dict[str, Any], pairs: list[dict[str, str]], generator: str, model: str | None
) -> list[dict[str, Any]]:
    """Turn pairs into stored rows: every row records its chunk id and generator."""
    return [
        {
            "id": qa_row_id(chunk["id"], p["question"]),
            "chunk_id": chunk["id"],
            "doc": chunk["doc"],
            "heading_path": chunk["heading_path"],
            "question": p["question"],
            "answer": p["answer"],
            "kind": p.get("kind", ""),
            "generator": generator,
            "model": model,
        }
        for p in pairs
    ]


# Part of the offline generator's reply cache key: bump it whenever generate_offline_qa's output
# changes, or cached pairs of the old generator are served (2: fact-stating questions).
OFFLINE_GENERATOR_VERSION = 2


@dataclass
class _Task:
    index: int
    doc: str
    chunk: dict[str, Any]
    key: str
    prompt: str


@dataclass
class DocumentQa:
    """The Q&A of one document of a batch: its rows, and its share of the requests."""

    rows: list[dict[str, Any]]
    stats: LlmStats
    """This document's generated vs. cached replies and parse outcomes (tokens and retries are
    counted for the whole batch)."""


def generate_document_qa(
    chunks: list[dict[str, Any]],
    doc_key: str,
    qa: QaRecipe,
    *,
    cache: ReplyCache,
    client: Any | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], LlmStats]:
    """:func:`generate_qa` for one document: (rows, stats)."""
    docs, stats = generate_qa(
        {doc_key: chunks}, qa, cache=cache, client=client, sleep=sleep, log=log
    )
    return docs[doc_key].rows, stats


WARNINGS_LOGGED = 20
"""Warnings about replies that one batch hands to the run log line by line; the rest are
summed up in one line."""


def generate_qa(
    documents: Mapping[str, list[dict[str, Any]]],
    qa: QaRecipe,
    *,
    cache: ReplyCache,
    client: Any | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, DocumentQa], LlmStats]:
    """Q&A rows for every chunk (and pass) of a batch of documents with the recipe's generator.

    Every generation goes through ``cache``, keyed by (generator/model, prompt template hash,
    chunk text hash, heading, generation parameters, pass index): an unchanged chunk is never
    generated twice, and a reply is stored the moment it arrives, so a crash loses nothing paid.
    The LLM requests of the whole batch share one pool (``qa.max_concurrency`` in flight, across
    documents) and one ``qa.budget``.

    Args:
        documents: Each document key's chunk records (its title falls back to the file name).
        qa: The recipe's ``qa`` section.
        cache: Where generated replies are kept.
        client: An ``openai.OpenAI`` client; required for ``qa.generator == "openai"``.
        sleep: Used between retries (tests pass a recorder).
        log: Receives a warning line per reply that was cut off, short or unreadable.

    Returns:
        Each document's rows (in chunk order) and counts, and the batch's request statistics.

    Raises:
        BudgetExceeded: Before a request would cross ``qa.budget``; completed replies are cached.
        LlmCallError: An endpoint failure retries could not fix, or a document of whose replies
            not one held a pair; completed replies are cached.
    """
    if qa.generator == "openai" and client is None:
        raise ValueError("the openai generator needs a client")
    template_hash = hashlib.sha256(qa.prompt.encode()).hexdigest()
    params = {
        "n": qa.questions_per_chunk,
        "temperature": qa.temperature,
        "max_tokens": qa.max_tokens,
    }
    tasks: list[_Task] = []
    titles: dict[str, str] = {}
    for doc_key, chunks in documents.items():
        title = titles[doc_key] = doc_title_of(chunks, doc_key)
        for chunk in chunks:
            heading = " > ".join(chunk["heading_path"]) or title
            prompt = render_prompt(
                qa.prompt,
                n=str(qa.questions_per_chunk),
                document=title,
                heading=heading,
                context=chunk["text"],
            )
            for pass_index in range(qa.passes):
                key = ReplyCache.key(
                    model=qa.model
                    if qa.generator == "openai"
                    else f"offline-v{OFFLINE_GENERATOR_VERSION}",
                    template=template_hash if qa.generator == "openai" else None,
                    chunk=hashlib.sha256(chunk["text"].encode()).hexdigest(),
                    heading=heading,
                    title=title,
                    params=params,
                    pass_index=pass_index,
                )
                tasks.append(_Task(len(tasks), doc_key, chunk, key, prompt))

    stats = LlmStats()
    per_doc = {doc_key: LlmStats() for doc_key in documents}
    replies: dict[int, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        cached = cache.get(task.key)
        if cached is not None:
            stats.cache_hits += 1
            per_doc[task.doc].cache_hits += 1
            replies[task.index] = cached
        else:
            per_doc[task.doc].requests += 1
            todo.append(task)

    if qa.generator == "offline":
        for task in todo:
            reply: dict[str, Any] = {
                "pairs": generate_offline_qa(task.chunk, titles[task.doc], qa.questions_per_chunk)
            }
            cache.put(task.key, reply)
            stats.requests += 1
            replies[task.index] = reply
    elif todo:
        schema = {"response_format": QA_RESPONSE_FORMAT} if qa.structured_output != "off" else {}
        requests = [
            LlmRequest(
                task.index,
                task.key,
                {
                    "model": qa.model,
                    "messages": [{"role": "user", "content": task.prompt}],
                    "temperature": qa.temperature,
                    "max_tokens": qa.max_tokens,
                    **schema,
                },
            )
            for task in todo
        ]
        endpoint = Endpoint(client, qa, "qa", sleep, structured=qa.structured_output)
        replies.update(
            run_requests(
                requests,
                endpoint,
                cache,
                concurrency=qa.max_concurrency,
                budget=RequestBudget(qa.budget.max_requests, qa.budget.max_tokens, "qa"),
                stats=stats,
                cached=len(tasks) - len(todo),
                total=len(tasks),
            )
        )

        if endpoint.structured_refused is not None:
            stats.warnings.append(
                f"{endpoint.url} refused response_format ({endpoint.structured_refused}); the "
                "pairs were asked for by the prompt alone (qa.structured_output: off skips the "
                "attempt)"
            )
        for task in todo:  # each document's share of the tokens
            reply = replies[task.index]
            per_doc[task.doc].prompt_tokens += reply.get("prompt_tokens", 0) or 0
            per_doc[task.doc].completion_tokens += reply.get("completion_tokens", 0) or 0

    rows: dict[str, list[dict[str, Any]]] = {doc_key: [] for doc_key in documents}
    for task in tasks:
        reply = replies[task.index]
        if "pairs" in reply:
            pairs = reply["pairs"]
        else:
            pairs = _llm_pairs(task, reply, qa, per_doc[task.doc])
        rows[task.doc] += qa_rows_for_chunk(task.chunk, pairs, qa.generator, qa.model)
    for doc_key, doc_stats in per_doc.items():
        for name in ("truncated", "short_replies", "off_schema"):
            setattr(stats, name, getattr(stats, name) + getattr(doc_stats, name))
        for how, n in doc_stats.parse.items():
            stats.parse[how] = stats.parse.get(how, 0) + n
        stats.warnings += [f"{doc_key}: {line}" for line in doc_stats.warnings]
    if stats.off_schema:
        stats.warnings.append(
            f"{stats.off_schema} repl(ies) ignored the JSON schema the endpoint accepted in "
            "response_format (transformers serve accepts the field and answers prose); their "
            "pairs were read by the lenient parser"
        )
    if log is not None:
        for line in stats.warnings[:WARNINGS_LOGGED]:
            log(line)
        if len(stats.warnings) > WARNINGS_LOGGED:
            # a run log line is a stored event: thousands of them slowed a 100-document batch
            # by a third; each document's metadata keeps the counts
            log(
                f"... and {len(stats.warnings) - WARNINGS_LOGGED} more warnings like these in "
                f"this batch of {len(documents)} documents ({stats.truncated} replies cut off, "
                f"{stats.short_replies} short, {stats.parse.get('failed', 0)} unreadable in "
                "all); each document's truncated_replies, short_replies and parse_outcomes "
                "metadata count its own"
            )
    if qa.generator == "openai":
        empty = [
            d for d in documents if per_doc[d].requests + per_doc[d].cache_hits and not rows[d]
        ]
        if empty:
            n = sum(per_doc[d].requests + per_doc[d].cache_hits for d in empty)
            outcomes = ", ".join(f"{how} {k}" for how, k in sorted(stats.parse.items()))
            raise LlmCallError(
                f"{', '.join(empty)}: none of the {n} replies of model {qa.model!r} held a "
                f"question/answer pair (parse outcomes: {outcomes}; {stats.truncated} cut off at "
                f"qa.max_tokens); nothing was written, and the replies stay cached under "
                f"{cache.root}, so a rerun pays nothing for them. Make qa.prompt ask for a JSON "
                'list of {"question", "answer"} objects, raise qa.max_tokens if replies were '
                "cut off, or pick a qa.model that follows the prompt (either edit makes new "
                "requests)"
            )
    return {d: DocumentQa(_dedupe_rows(rows[d]), per_doc[d]) for d in documents}, stats


def _llm_pairs(
    task: _Task, reply: dict[str, Any], qa: QaRecipe, stats: LlmStats
) -> list[dict[str, str]]:
    """The pairs of one LLM reply; cut-off, short and unreadable replies are counted and get a
    warning naming the chunk and what to do."""
    parsed, how = parse_qa_reply(reply["content"])
    stats.parse[how] = stats.parse.get(how, 0) + 1
    if reply.get("structured") and not _on_schema(reply["content"]):
        stats.off_schema += 1
    where = f"chunk {task.chunk['id']} ({' > '.join(task.chunk['heading_path']) or 'top'})"
    if reply.get("finish_reason") == "length":
        stats.truncated += 1
        stats.warnings.append(
            f"{where}: the reply was cut off at qa.max_tokens={qa.max_tokens} (finish_reason "
            f"length); {len(parsed)} complete pair(s) kept. Raise qa.max_tokens to ask again."
        )
    elif how == "failed":
        stats.warnings.append(
            f"{where}: the reply held no question/answer pair "
            f"({_preview(reply['content'])}); check that qa.prompt asks for JSON."
        )
    elif len(parsed) < qa.questions_per_chunk:
        stats.short_replies += 1
        stats.warnings.append(
            f"{where}: {len(parsed)} pair(s) instead of qa.questions_per_chunk="
            f"{qa.questions_per_chunk}; kept as they are."
        )
    return [{**p, "kind": f"llm_{how}"} for p in parsed[: qa.questions_per_chunk * 2]]


QA_RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "qa_pairs",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "pairs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "question": {"type": "string"},
                            "answer": {"type": "string"},
                        },
                        "required": ["question", "answer"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["pairs"],
            "additionalProperties": False,
        },
    },
}
"""The Q&A list as a JSON schema (``qa.structured_output``): servers with structured output
constrain the reply to it."""


def _on_schema(content: str) -> bool:
    """Whether a reply is exactly :data:`QA_RESPONSE_FORMAT`'s JSON (no prose, no fences)."""
    try:
        data = json.loads(content)
    except (TypeError, ValueError):
        return False
    pairs = data.get("pairs") if isinstance(data, dict) else None
    return isinstance(pairs, list) and all(
        isinstance(p, dict)
        and isinstance(p.get("question"), str)
        and isinstance(p.get("answer"), str)
        for p in pairs
    )


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join((text or "").split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _dedupe_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeated questions about the same chunk (several passes may ask the same)."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            out.append(row)
    return out
