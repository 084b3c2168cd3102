"""Synthetic Q&A from document chunks (Dagster-free).

Two generators, one row format: ``offline`` mines the markdown structure (headings, bold-term
definitions, "X is Y." sentences, commands in code blocks) with no LLM; ``openai`` asks any
OpenAI-compatible endpoint with the recipe's prompt and parses the JSON reply tolerantly. Every
paid reply is cached on disk before it is parsed, so a crash or a re-run never pays twice.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import atomic_write_text
from ragft_dagster.recipe import EndpointCalls, QaRecipe

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*\"(])")
_BOLD_DEF = re.compile(r"\*\*([^*\n]{2,60})\*\*\s*(?::|—|-|–)?\s*([^\n]{10,400})")
_DEFINITION = re.compile(r"^((?:The |A |An )?[`\w][\w` ./_-]{1,60}?) (is|are) ([^\n]{10,300}[.!])$")
_FENCE_BLOCK = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def qa_row_id(chunk_id: str, question: str) -> str:
    return hashlib.sha256(f"{chunk_id}\n{question.strip().lower()}".encode()).hexdigest()[:24]


def _plain(text: str) -> str:
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def _prose(text: str) -> str:
    """Chunk text without headings and code blocks, for sentence mining."""
    text = _FENCE_BLOCK.sub(" ", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


def _sentences(text: str) -> list[str]:
    flat = re.sub(r"\s*\n\s*(?![-*] )", " ", _prose(text))
    out: list[str] = []
    for block in flat.split("\n"):
        out.extend(s.strip() for s in _SENTENCE_END.split(block) if s.strip())
    return out


def generate_offline_qa(chunk: dict[str, Any], doc_title: str, limit: int) -> list[dict[str, str]]:
    """Derive grounded question/answer pairs from one chunk's markdown structure.

    Args:
        chunk: A chunk record (``text``, ``heading_path``).
        doc_title: The document's title, used to anchor questions.
        limit: Maximum number of pairs.

    Returns:
        ``[{"question", "answer", "kind"}]``, answers quoted from the chunk.
    """
    text = chunk["text"]
    heading = chunk["heading_path"][-1] if chunk["heading_path"] else doc_title
    pairs: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(question: str, answer: str, kind: str) -> None:
        key = question.lower()
        if key not in seen and answer and len(pairs) < limit:
            seen.add(key)
            pairs.append({"question": question, "answer": answer, "kind": kind})

    for term, rest in _BOLD_DEF.findall(_prose(text)):
        add(
            f"In {doc_title}, what is meant by {term.strip()}?",
            _plain(f"{term}: {rest}"),
            "bold_term",
        )
    for sentence in _sentences(text):
        m = _DEFINITION.match(_plain(sentence))
        subject = m.group(1).strip() if m else ""
        if m and subject.split()[0].lower() not in (
            "it",
            "its",
            "this",
            "that",
            "there",
            "these",
            "they",
            "their",
            "we",
            "you",
            "our",
        ):
            subject = (
                subject[0].lower() + subject[1:]
                if subject[:4] in ("The ", "An ") or subject[:2] == "A "
                else subject
            )
            add(f"What {m.group(2)} {subject}?", _plain(sentence), "definition")
    for block in _FENCE_BLOCK.findall(text):
        lines = [ln.rstrip() for ln in block.strip().splitlines() if ln.strip()][:6]
        if lines and sum(len(ln) for ln in lines) < 400:
            add(
                f"What example does the '{heading}' section of {doc_title} give?",
                "\n".join(lines),
                "code",
            )
    sentences = _sentences(text)
    if sentences:
        where = (
            f"the introduction of {doc_title}"
            if heading == doc_title
            else f"the '{heading}' section of {doc_title}"
        )
        add(f"What does {where} explain?", _plain(" ".join(sentences[:2])), "section")
    return pairs


def render_prompt(template: str, **values: str) -> str:
    """Fill only the known placeholders, so braces elsewhere in a prompt (JSON examples) stay."""
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", value)
    return out


def parse_qa_reply(text: str) -> tuple[list[dict[str, str]], str]:
    """Parse an LLM reply into Q&A pairs, tolerating code fences, prose around JSON and
    plain ``Q:``/``A:`` text.

    Returns:
        (pairs, how) where ``how`` is ``json``, ``json_fragment``, ``text`` or ``failed``.
    """
    body = re.sub(r"```(?:json)?", "", text or "").strip()
    candidates = [(body, "json")]
    for open_c, close_c in (("[", "]"), ("{", "}")):
        i, j = body.find(open_c), body.rfind(close_c)
        if 0 <= i < j:
            candidates.append((body[i : j + 1], "json_fragment"))
    for candidate, how in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        pairs = _pairs_from_json(data)
        if pairs:
            return pairs, how
    # A reply cut off mid-JSON (finish_reason "length") still holds its complete objects.
    pairs = _pairs_from_json(_complete_json_objects(body))
    if pairs:
        return pairs, "json_partial"
    for m in re.finditer(
        r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]\s*(.+?)\s*\n\s*(?:A|Answer)\s*[:.]\s*"
        r"(.+?)(?=\n\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]|\Z)",
        body,
        re.S | re.I,
    ):
        pairs.append({"question": m.group(1).strip(), "answer": m.group(2).strip()})
    return (pairs, "text") if pairs else ([], "failed")


def _complete_json_objects(text: str) -> list[Any]:
    """Every complete, outermost JSON object in ``text``, in order (a cut-off tail is left out)."""
    decoder = json.JSONDecoder()
    objects, pos = [], 0
    while (start := text.find("{", pos)) >= 0:
        try:
            obj, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1  # not a complete object from here: try the next brace inside it
            continue
        objects.append(obj)
    return objects


def _pairs_from_json(data: Any) -> list[dict[str, str]]:
    if isinstance(data, dict):
        for key in ("questions", "qa", "pairs", "items", "data"):
            if isinstance(data.get(key), list):
                return _pairs_from_json(data[key])
        data = [data]
    pairs = []
    if isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                continue
            low = {str(k).lower(): v for k, v in item.items()}
            q = low.get("question", low.get("q"))
            a = low.get("answer", low.get("a"))
            if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                pairs.append({"question": q.strip(), "answer": a.strip()})
    return pairs


@dataclass
class LlmStats:
    """What one generator run did: calls made vs. answered from the cache, tokens, retries."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    truncated: int = 0
    """Replies cut off at ``max_tokens`` (finish_reason ``length``)."""
    short_replies: int = 0
    """Q&A replies holding fewer pairs than ``qa.questions_per_chunk``."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_wait_seconds: float = 0.0
    parse: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """One line per reply that was cut off, short or unreadable, saying what to do."""

    def cost_usd(self, prompt_per_1k: float, completion_per_1k: float) -> float:
        return round(
            self.prompt_tokens / 1000 * prompt_per_1k
            + self.completion_tokens / 1000 * completion_per_1k,
            6,
        )


class ReplyCache:
    """Generated replies on disk, one file per key, written atomically before they are used."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.root / key[:2] / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn entry is treated as a miss and overwritten

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_text(self.root / key[:2] / f"{key}.json", json.dumps(value))


class LlmCallError(RuntimeError):
    """An endpoint failure that retrying will not fix (or that outlasted the retries)."""


class BudgetExceeded(RuntimeError):
    """The run's request/token budget would be exceeded by the next request."""


class RequestBudget:
    """Per-run limits on LLM requests and tokens, shared by the worker threads.

    A request reserves its estimated tokens (prompt estimate + ``max_tokens``) before it is sent
    and settles to the endpoint's reported usage afterwards, so the limit is never crossed.
    """

    def __init__(self, max_requests: int | None = None, max_tokens: int | None = None):
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def reserve(self, estimated_tokens: int) -> None:
        with self._lock:
            if self.max_requests is not None and self.requests + 1 > self.max_requests:
                raise BudgetExceeded(
                    f"qa.budget.max_requests={self.max_requests} reached after "
                    f"{self.requests} requests"
                )
            if self.max_tokens is not None and self.tokens + estimated_tokens > self.max_tokens:
                raise BudgetExceeded(
                    f"qa.budget.max_tokens={self.max_tokens} would be exceeded: {self.tokens} "
                    f"tokens used or reserved, the next request may use up to {estimated_tokens}"
                )
            self.requests += 1
            self.tokens += estimated_tokens

    def settle(self, estimated_tokens: int, used_tokens: int) -> None:
        with self._lock:
            self.tokens += used_tokens - estimated_tokens


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a server asks for: ``retry-after-ms``, or ``Retry-After`` as seconds or a date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)


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
    (``max_retries``, ``initial_backoff``, ``max_backoff``, ``request_timeout``), named in error
    messages."""

    client: Any
    retry: EndpointCalls
    section: str = "qa"
    sleep: Callable[[float], None] = time.sleep

    @property
    def url(self) -> str:
        return endpoint_url(self.client)

    @property
    def key_env(self) -> str:
        name = getattr(self.client, API_KEY_ENV_ATTR, None)
        if name:
            return f"{name} (llm.api_key_env in the profile)"
        return "the variable named by llm.api_key_env in the profile"

    @property
    def model_field(self) -> str:
        return "qa.model" if self.section == "qa" else f"{self.section}.models"

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
                f"{section}.max_concurrency, or raise {section}.max_backoff"
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


def call_llm(
    endpoint: Endpoint, request: dict[str, Any], stats: LlmStats, stats_lock: threading.Lock
) -> dict[str, Any]:
    """One chat completion with retries: 408/409/429/5xx, timeouts, dropped connections and
    unreadable replies are retried with exponential backoff (jittered, capped at
    ``max_backoff``), honouring the server's Retry-After; other errors fail at once.

    Args:
        endpoint: Client and retry settings.
        request: ``chat.completions.create`` arguments (model, messages, temperature, ...).
        stats: Retries and waits are counted here.
        stats_lock: Guards ``stats`` across worker threads.

    Raises:
        LlmCallError: Naming the endpoint, what went wrong and what to do; never the API key.
    """
    import openai

    retry, section, url = endpoint.retry, endpoint.section, endpoint.url
    last: BaseException | None = None
    for attempt in range(retry.max_retries + 1):
        started = time.monotonic()
        wait: float | None = None
        try:
            response = endpoint.client.chat.completions.create(**request)
            choice = response.choices[0]
            usage = getattr(response, "usage", None)
            return {
                "content": choice.message.content or "",
                "finish_reason": getattr(choice, "finish_reason", None),
                "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
                "seconds": round(time.monotonic() - started, 3),
            }
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
            wait = retry_after_seconds(exc.response.headers if exc.response else None)
            last = exc
        except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError) as exc:
            # APITimeoutError is an APIConnectionError; ValueError covers unreadable JSON bodies
            last = exc
        except (AttributeError, IndexError, TypeError) as exc:  # a reply without choices
            last = exc
        if attempt == retry.max_retries:
            break
        if wait is None:
            wait = retry.initial_backoff * 2**attempt * (0.5 + random.random() / 2)
        wait = min(wait, retry.max_backoff)
        with stats_lock:
            stats.retries += 1
            stats.retry_wait_seconds += wait
        endpoint.sleep(wait)
    advice = _retryable_advice(endpoint, last) if last is not None else f"{url}: no attempt"
    raise LlmCallError(
        f"gave up after {retry.max_retries + 1} attempts ({section}.max_retries="
        f"{retry.max_retries}): {advice}"
    )


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


OFFLINE_GENERATOR_VERSION = 1


@dataclass(frozen=True)
class _Task:
    index: int
    chunk: dict[str, Any]
    key: str
    prompt: str


def _estimate_tokens(prompt: str, max_tokens: int) -> int:
    return len(prompt) // 3 + max_tokens  # generous: ~4 characters per token in English


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
    """Q&A rows for every chunk (and pass) of one document with the recipe's generator.

    Every generation goes through ``cache``, keyed by (generator/model, prompt template hash,
    chunk text hash, heading, generation parameters, pass index): an unchanged chunk is never
    generated twice, and a reply is stored the moment it arrives, so a crash loses nothing paid.
    LLM requests run ``qa.max_concurrency`` at a time within ``qa.budget``.

    Args:
        chunks: The document's chunk records.
        doc_key: The document key (its title falls back to the file name).
        qa: The recipe's ``qa`` section.
        cache: Where generated replies are kept.
        client: An ``openai.OpenAI`` client; required for ``qa.generator == "openai"``.
        sleep: Used between retries (tests pass a recorder).
        log: Receives a warning line per reply that was cut off, short or unreadable.

    Returns:
        (rows, stats): stored rows in chunk order, and what was generated vs. cached.

    Raises:
        BudgetExceeded: Before a request would cross ``qa.budget``; completed replies are cached.
        LlmCallError: An endpoint failure retries could not fix, or replies of which not one
            held a pair; completed replies are cached.
    """
    if qa.generator == "openai" and client is None:
        raise ValueError("the openai generator needs a client")
    title = doc_title_of(chunks, doc_key)
    template_hash = hashlib.sha256(qa.prompt.encode()).hexdigest()
    params = {
        "n": qa.questions_per_chunk,
        "temperature": qa.temperature,
        "max_tokens": qa.max_tokens,
    }
    tasks: list[_Task] = []
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
            tasks.append(_Task(len(tasks), chunk, key, prompt))

    stats = LlmStats()
    lock = threading.Lock()
    replies: dict[int, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        cached = cache.get(task.key)
        if cached is not None:
            stats.cache_hits += 1
            replies[task.index] = cached
        else:
            todo.append(task)

    if qa.generator == "offline":
        for task in todo:
            reply: dict[str, Any] = {
                "pairs": generate_offline_qa(task.chunk, title, qa.questions_per_chunk)
            }
            cache.put(task.key, reply)
            stats.requests += 1
            replies[task.index] = reply
    elif todo:
        _run_llm_tasks(todo, qa, client, cache, stats, lock, replies, sleep, len(tasks))

    rows: list[dict[str, Any]] = []
    for task in tasks:
        reply = replies[task.index]
        pairs = reply["pairs"] if "pairs" in reply else _llm_pairs(task, reply, qa, stats)
        rows += qa_rows_for_chunk(task.chunk, pairs, qa.generator, qa.model)
    if log is not None:
        for line in stats.warnings:
            log(f"{doc_key}: {line}")
    if qa.generator == "openai" and tasks and not rows:
        outcomes = ", ".join(f"{how} {n}" for how, n in sorted(stats.parse.items()))
        raise LlmCallError(
            f"none of the {len(tasks)} replies of model {qa.model!r} held a question/answer "
            f"pair (parse outcomes: {outcomes}; {stats.truncated} cut off at qa.max_tokens); "
            f"nothing was written, and the replies stay cached under {cache.root}, so a rerun "
            "pays nothing for them. Make qa.prompt ask for a JSON list of "
            '{"question", "answer"} objects, raise qa.max_tokens if replies were cut off, or '
            "pick a qa.model that follows the prompt (either edit makes new requests)"
        )
    return _dedupe_rows(rows), stats


def _llm_pairs(
    task: _Task, reply: dict[str, Any], qa: QaRecipe, stats: LlmStats
) -> list[dict[str, str]]:
    """The pairs of one LLM reply; cut-off, short and unreadable replies are counted and get a
    warning naming the chunk and what to do."""
    parsed, how = parse_qa_reply(reply["content"])
    stats.parse[how] = stats.parse.get(how, 0) + 1
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


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join((text or "").split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _run_llm_tasks(
    todo: list[_Task],
    qa: QaRecipe,
    client: Any,
    cache: ReplyCache,
    stats: LlmStats,
    lock: threading.Lock,
    replies: dict[int, dict[str, Any]],
    sleep: Callable[[float], None],
    total: int,
) -> None:
    endpoint = Endpoint(client, qa, "qa", sleep)
    budget = RequestBudget(qa.budget.max_requests, qa.budget.max_tokens)
    stop = threading.Event()

    def work(task: _Task) -> None:
        if stop.is_set():
            return
        estimate = _estimate_tokens(task.prompt, qa.max_tokens)
        try:
            budget.reserve(estimate)
            request = {
                "model": qa.model,
                "messages": [{"role": "user", "content": task.prompt}],
                "temperature": qa.temperature,
                "max_tokens": qa.max_tokens,
            }
            reply = call_llm(endpoint, request, stats, lock)
        except BaseException:
            stop.set()  # no new requests once one has failed or the budget is spent
            raise
        cache.put(task.key, reply)  # paid for: keep it before anything else can fail
        budget.settle(estimate, reply["prompt_tokens"] + reply["completion_tokens"])
        with lock:
            stats.requests += 1
            stats.prompt_tokens += reply["prompt_tokens"]
            stats.completion_tokens += reply["completion_tokens"]
            replies[task.index] = reply

    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=qa.max_concurrency) as pool:
        for future in [pool.submit(work, t) for t in todo]:
            exc = future.exception()
            if exc is not None:
                errors.append(exc)
    if errors:
        first = next((e for e in errors if isinstance(e, BudgetExceeded)), errors[0])
        note = (
            f"{len(replies)} of {total} replies are in the cache "
            f"({stats.requests} paid in this run); a rerun continues from there"
        )
        if isinstance(first, BudgetExceeded):
            raise BudgetExceeded(
                f"{first}; stopped before exceeding it. {note}. "
                "Raise qa.budget in the recipe to go on."
            ) from None
        if isinstance(first, LlmCallError):
            raise LlmCallError(f"{first}. {note}.") from None
        raise first


def _dedupe_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeated questions about the same chunk (several passes may ask the same)."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            out.append(row)
    return out
