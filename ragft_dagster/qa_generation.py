"""Synthetic Q&A from document chunks (Dagster-free).

Two generators, one row format: ``offline`` mines the markdown structure (headings, bold-term
definitions, "X is Y." sentences, commands in code blocks) with no LLM; ``openai`` asks any
OpenAI-compatible endpoint with the recipe's prompt and parses the JSON reply tolerantly. Every
paid reply is cached on disk before it is parsed, so a crash or a re-run never pays twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import atomic_write_text
from ragft_dagster.recipe import QaRecipe

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
    pairs = []
    for m in re.finditer(
        r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]\s*(.+?)\s*\n\s*(?:A|Answer)\s*[:.]\s*"
        r"(.+?)(?=\n\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]|\Z)",
        body,
        re.S | re.I,
    ):
        pairs.append({"question": m.group(1).strip(), "answer": m.group(2).strip()})
    return (pairs, "text") if pairs else ([], "failed")


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
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    parse: dict[str, int] = field(default_factory=dict)


class ReplyCache:
    """Paid LLM replies on disk, one file per key, written atomically."""

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
        except json.JSONDecodeError:
            return None  # a torn entry is treated as a miss and overwritten

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_text(self.root / key[:2] / f"{key}.json", json.dumps(value))


def generate_llm_qa(
    chunk: dict[str, Any],
    doc_title: str,
    *,
    client: Any,
    model: str,
    prompt_template: str,
    n: int,
    temperature: float,
    max_tokens: int,
    cache: ReplyCache,
    stats: LlmStats,
) -> list[dict[str, str]]:
    """Ask an OpenAI-compatible chat endpoint for Q&A about one chunk (cached).

    Args:
        chunk: A chunk record.
        doc_title: The document's title.
        client: An ``openai.OpenAI`` client (base_url/api_key from the profile).
        model: Model name at the endpoint.
        prompt_template: The recipe's prompt with {n}, {document}, {heading}, {context}.
        n: Questions to ask for.
        temperature: Sampling temperature.
        max_tokens: Reply limit.
        cache: Where paid replies are kept.
        stats: Counters updated in place (requests, cache hits, tokens, parse outcomes).

    Returns:
        ``[{"question", "answer", "kind"}]``.
    """
    heading = " > ".join(chunk["heading_path"]) or doc_title
    prompt = render_prompt(
        prompt_template, n=str(n), document=doc_title, heading=heading, context=chunk["text"]
    )
    key = cache.key(
        model=model,
        template=hashlib.sha256(prompt_template.encode()).hexdigest(),
        chunk=hashlib.sha256(chunk["text"].encode()).hexdigest(),
        heading=heading,
        params={"n": n, "temperature": temperature, "max_tokens": max_tokens},
        pass_index=0,
    )
    cached = cache.get(key)
    if cached is not None:
        stats.cache_hits += 1
        reply = cached
    else:
        started = time.monotonic()
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            temperature=temperature,
            max_tokens=max_tokens,
        )
        usage = getattr(response, "usage", None)
        reply = {
            "content": response.choices[0].message.content or "",
            "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
            "seconds": round(time.monotonic() - started, 3),
        }
        cache.put(key, reply)  # paid for: keep it before anything else can fail
        stats.requests += 1
        stats.prompt_tokens += reply["prompt_tokens"]
        stats.completion_tokens += reply["completion_tokens"]
    pairs, how = parse_qa_reply(reply["content"])
    stats.parse[how] = stats.parse.get(how, 0) + 1
    return [{**p, "kind": f"llm_{how}"} for p in pairs[: max(n, 1) * 2]]


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


def generate_document_qa(
    chunks: list[dict[str, Any]],
    doc_key: str,
    qa: QaRecipe,
    *,
    client: Any | None = None,
    cache: ReplyCache | None = None,
) -> tuple[list[dict[str, Any]], LlmStats]:
    """Q&A rows for every chunk of one document with the recipe's generator.

    Args:
        chunks: The document's chunk records.
        doc_key: The document key (its title falls back to the file name).
        qa: The recipe's ``qa`` section.
        client: An ``openai.OpenAI`` client; required for ``qa.generator == "openai"``.
        cache: Where paid replies are kept; required with ``client``.

    Returns:
        (rows, stats): stored rows, and LLM counters (all zero for the offline generator).
    """
    title = doc_title_of(chunks, doc_key)
    stats = LlmStats()
    rows: list[dict[str, Any]] = []
    for chunk in chunks:
        if qa.generator == "offline":
            pairs = generate_offline_qa(chunk, title, qa.questions_per_chunk)
        else:
            if client is None or cache is None:
                raise ValueError("the openai generator needs a client and a reply cache")
            pairs = generate_llm_qa(
                chunk,
                title,
                client=client,
                model=qa.model or "",
                prompt_template=qa.prompt,
                n=qa.questions_per_chunk,
                temperature=qa.temperature,
                max_tokens=qa.max_tokens,
                cache=cache,
                stats=stats,
            )
        rows += qa_rows_for_chunk(chunk, pairs, qa.generator, qa.model)
    return rows, stats
