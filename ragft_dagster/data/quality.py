"""The quality filter of the SFT dataset (Dagster-free): which Q&A rows are fit to train on.

Generated pairs are not all worth training on: some answers state what their chunk does not say,
some questions are the same question asked twice in other words, some pairs are empty, repeat
the question or are too short or too long to teach anything. Every row is checked, in order:

- ``malformed`` / ``length`` / ``repeats_question``: empty texts, word counts out of bounds, an
  answer that only repeats the question's words;
- ``grounding``: the answer must be supported by its source chunk: the share of the answer's
  content words that the chunk contains (``min_overlap``) and the cosine similarity of the
  pair's (question + answer) and the chunk's embeddings (``min_similarity``); a row without a
  source chunk is not checked;
- ``judge`` (optional): an LLM at the recipe's endpoint rates each remaining pair's
  faithfulness to its chunk and relevance (1-5); pairs below the thresholds are dropped;
- ``near_duplicate``: a question whose embedding is at least ``duplicate_threshold`` similar to
  an earlier kept question (rows in document order: the first is kept).

Each rejected row becomes one :class:`Rejection` with the reason and the figures behind it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ragft_dagster.config.recipe import JudgeRecipe, QualityRecipe
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import Endpoint, LlmStats, RequestBudget
from ragft_dagster.llm.runner import LlmRequest, run_requests
from ragft_dagster.prompts import render_prompt
from ragft_dagster.text import content_words, fold, words

EmbedFn = Callable[[list[str]], Sequence[Sequence[float]]]

REASONS = ("malformed", "length", "repeats_question", "grounding", "near_duplicate", "judge")


@dataclass(frozen=True)
class Rejection:
    id: str
    doc: str
    question: str
    answer: str
    reason: str
    detail: str
    """Human-readable: the figures and the threshold that rejected it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unit(vectors: Any) -> Any:
    import numpy as np

    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _form(row: dict[str, Any], rules: QualityRecipe) -> tuple[str, str] | None:
    """(reason, detail) when the pair is malformed, out of bounds or repeats its question."""
    question, answer = str(row.get("question") or "").strip(), str(row.get("answer") or "").strip()
    if not question or not answer:
        return "malformed", "empty " + ("question" if not question else "answer")
    q_words, a_words = len(question.split()), len(answer.split())
    if not rules.min_question_words <= q_words <= rules.max_question_words:
        return "length", (
            f"question of {q_words} words (allowed {rules.min_question_words}–"
            f"{rules.max_question_words})"
        )
    if not rules.min_answer_words <= a_words <= rules.max_answer_words:
        return "length", (
            f"answer of {a_words} words (allowed {rules.min_answer_words}–{rules.max_answer_words})"
        )
    said = set(words(answer))
    if fold(answer) == fold(question) or (said and said <= set(words(question))):
        return "repeats_question", "the answer adds no word the question does not hold"
    return None


# (rows still kept, their chunk texts) -> {row id: (faithfulness, relevance, reason) or None}
JudgeFn = Callable[[list[dict[str, Any]], dict[str, str]], dict[str, tuple[int, int, str] | None]]


def filter_rows(
    rows: list[dict[str, Any]],
    chunk_text: dict[str, str],
    rules: QualityRecipe,
    embed: EmbedFn | None = None,
    judge: JudgeFn | None = None,
) -> tuple[list[dict[str, Any]], list[Rejection], dict[str, Any]]:
    """Split rows into kept and rejected.

    Args:
        rows: Q&A rows (``id``, ``doc``, ``question``, ``answer``, optional ``chunk_id``), in
            the order that decides which of two near-duplicates is kept.
        chunk_text: Source chunk texts by chunk id.
        rules: The thresholds; a None threshold turns its test off.
        embed: Texts -> vectors (the retrieval embedding model); needed by ``min_similarity``
            and ``duplicate_threshold``, which are skipped without it.
        judge: Scores the rows that passed the other tests (:func:`llm_judge`); rows it could
            not score are kept and counted (``judge_unscored``).

    Returns:
        (kept rows, rejections in row order, figures: the counts per reason and the grounding
        scores' distribution).
    """
    rejected: dict[str, Rejection] = {}

    def reject(row: dict[str, Any], reason: str, detail: str) -> None:
        rejected[row["id"]] = Rejection(
            row["id"],
            row.get("doc", ""),
            str(row.get("question") or ""),
            str(row.get("answer") or ""),
            reason,
            detail,
        )

    for row in rows:
        if (problem := _form(row, rules)) is not None:
            reject(row, *problem)
    candidates = candidates_checked = [r for r in rows if r["id"] not in rejected]

    grounded = [r for r in candidates if r.get("chunk_id") in chunk_text]
    overlaps: list[float] = []
    similarities: list[float] = []
    if grounded and rules.min_overlap is not None:
        for row in grounded:
            said = content_words(row["answer"])
            share = (
                len(said & content_words(chunk_text[row["chunk_id"]])) / len(said) if said else 1.0
            )
            overlaps.append(share)
            if share < rules.min_overlap:
                reject(
                    row,
                    "grounding",
                    f"{100 * share:.0f}% of the answer's content words are in its chunk "
                    f"(min_overlap {rules.min_overlap:g})",
                )
    if grounded and rules.min_similarity is not None and embed is not None:
        # the pair, not the bare answer: a short command ("make ui") says little on its own
        pairs = [f"{r['question']} {r['answer']}" for r in grounded]
        # each chunk once: a chunk's rows (3 a chunk in the quickstart) share its vector, and
        # the chunks, 300 tokens each, are most of what embedding costs
        at = {c: i for i, c in enumerate(dict.fromkeys(r["chunk_id"] for r in grounded))}
        both = _unit(embed(pairs + [chunk_text[c] for c in at]))  # one batch
        answers, vectors = both[: len(grounded)], both[len(grounded) :]
        chunks = vectors[[at[r["chunk_id"]] for r in grounded]]
        for row, sim in zip(grounded, (answers * chunks).sum(axis=1).tolist(), strict=True):
            similarities.append(sim)
            if sim < rules.min_similarity and row["id"] not in rejected:
                reject(
                    row,
                    "grounding",
                    f"pair-chunk embedding similarity {sim:.2f} (min_similarity "
                    f"{rules.min_similarity:g})",
                )
    candidates = [r for r in candidates if r["id"] not in rejected]

    unscored = 0
    if candidates and judge is not None and rules.judge is not None:
        cfg = rules.judge
        verdicts = judge(candidates, chunk_text)
        for row in candidates:
            verdict = verdicts.get(row["id"])
            if verdict is None:
                unscored += 1
                continue
            faithful, relevant, why = verdict
            if faithful < cfg.min_faithfulness or relevant < cfg.min_relevance:
                reject(
                    row,
                    "judge",
                    f"faithfulness {faithful}/5 (min {cfg.min_faithfulness}), relevance "
                    f"{relevant}/5 (min {cfg.min_relevance}): {why}",
                )
        candidates = [r for r in candidates if r["id"] not in rejected]

    if candidates and rules.duplicate_threshold is not None and embed is not None:
        _near_duplicates(candidates, embed, rules.duplicate_threshold, reject)

    kept = [r for r in rows if r["id"] not in rejected]
    ordered = [rejected[r["id"]] for r in rows if r["id"] in rejected]
    figures: dict[str, Any] = {
        "checked": len(rows),
        "kept": len(kept),
        "rejected": len(ordered),
        "without_source_chunk": len(candidates_checked) - len(grounded),
        **{f"rejected_{reason}": sum(r.reason == reason for r in ordered) for reason in REASONS},
    }
    if judge is not None and rules.judge is not None:
        figures["judge_unscored"] = unscored
    for name, values in (("overlap", overlaps), ("similarity", similarities)):
        if values:
            ranked = sorted(values)
            figures[f"{name}_median"] = ranked[len(ranked) // 2]
            figures[f"{name}_p10"] = ranked[len(ranked) // 10]
    return kept, ordered, figures


def _near_duplicates(
    rows: list[dict[str, Any]],
    embed: EmbedFn,
    threshold: float,
    reject: Callable[[dict[str, Any], str, str], None],
    block: int = 512,
) -> None:
    """Greedy in row order: a question at least ``threshold`` similar to a kept one is
    rejected. Blocks of ``block`` rows against the kept rows bound memory."""
    vectors = _unit(embed([r["question"] for r in rows]))
    kept: list[int] = []
    for start in range(0, len(rows), block):
        before = list(kept)
        earlier = vectors[start : start + block] @ vectors[before].T if before else None
        for i in range(start, min(start + block, len(rows))):
            twin, score = -1, -1.0
            if earlier is not None:
                k = int(earlier[i - start].argmax())
                twin, score = before[k], float(earlier[i - start][k])
            inside = kept[len(before) :]  # kept earlier in this block
            if inside:
                local = vectors[inside] @ vectors[i]
                k = int(local.argmax())
                if float(local[k]) > score:
                    twin, score = inside[k], float(local[k])
            if score >= threshold:
                reject(
                    rows[i],
                    "near_duplicate",
                    f"similarity {score:.2f} (duplicate_threshold {threshold:g}) to the kept "
                    f"question {rows[twin]['question']!r} ({rows[twin]['id']})",
                )
            else:
                kept.append(i)


_SCORES = re.compile(r"\{[^{}]*\}", re.S)


def parse_verdict(text: str) -> tuple[int, int, str] | None:
    """(faithfulness, relevance, reason) from a judge's reply: the first JSON object holding
    both scores as integers 1-5 (code fences and prose around it are ignored)."""
    for match in _SCORES.finditer(text or ""):
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        scores = [data.get("faithfulness"), data.get("relevance")]
        if all(isinstance(v, int | float) and 1 <= v <= 5 for v in scores):
            return int(scores[0]), int(scores[1]), str(data.get("reason", ""))[:300]
    return None


def llm_judge(
    judge: JudgeRecipe,
    *,
    cache: ReplyCache,
    client: Any,
    stats: LlmStats,
    sleep: Callable[[float], None] = time.sleep,
) -> JudgeFn:
    """A judge function sending one request per row (``judge.max_concurrency`` in flight, the
    budget ``judge.budget``), every reply cached by (model, prompt, question, answer, chunk)
    the moment it arrives: an unchanged pair is never judged twice."""
    section = "sft_dataset.quality.judge"
    template = hashlib.sha256(judge.prompt.encode()).hexdigest()

    def run(rows: list[dict[str, Any]], chunk_text: dict[str, str]) -> dict[str, Any]:
        replies: dict[str, dict[str, Any]] = {}
        todo: list[LlmRequest] = []
        for row in rows:
            context = chunk_text.get(row.get("chunk_id") or "", "(no source passage)")
            key = ReplyCache.key(
                judge=judge.model,
                template=template,
                question=row["question"],
                answer=row["answer"],
                chunk=hashlib.sha256(context.encode()).hexdigest(),
                max_tokens=judge.max_tokens,
            )
            if (cached := cache.get(key)) is not None:
                stats.cache_hits += 1
                replies[row["id"]] = cached
                continue
            prompt = render_prompt(
                judge.prompt, context=context, question=row["question"], answer=row["answer"]
            )
            todo.append(
                LlmRequest(
                    row["id"],
                    key,
                    {
                        "model": judge.model,
                        "messages": [{"role": "user", "content": prompt}],
                        "temperature": 0.0,
                        "max_tokens": judge.max_tokens,
                    },
                )
            )
        if todo:
            replies.update(
                run_requests(
                    todo,
                    Endpoint(client, judge, section, sleep),
                    cache,
                    concurrency=judge.max_concurrency,
                    budget=RequestBudget(
                        judge.budget.max_requests, judge.budget.max_tokens, section
                    ),
                    stats=stats,
                    cached=len(rows) - len(todo),
                    total=len(rows),
                    what="the quality judge: ",
                )
            )
        return {rid: parse_verdict(reply.get("content", "")) for rid, reply in replies.items()}

    return run
