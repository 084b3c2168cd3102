"""Scoring one benchmark cell (model x context) end to end (Dagster-free)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import atomic_write_text
from ragft_dagster.compute import ComputeSettings
from ragft_dagster.config.recipe import (
    ApiScoringRecipe,
    EvaluationRecipe,
    RetrievalRecipe,
    SamplingRecipe,
)
from ragft_dagster.evaluation.mcq import (
    Question,
    answer_support,
    load_questions,
    parse_letter,
    score_questions,
)
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import Endpoint, LlmStats, RequestBudget
from ragft_dagster.llm.runner import LlmRequest, run_requests
from ragft_dagster.models.loading import load_local_model
from ragft_dagster.models.refs import LocalModels
from ragft_dagster.prompts import mcq_messages


def retrieve_all(questions: list[Question], retriever: Any | None) -> list[list[dict[str, Any]]]:
    """The top-k chunks of every question (empty lists closed-book)."""
    if retriever is None:
        return [[] for _ in questions]
    return retriever.retrieve_many([q.question for q in questions])


def question_messages(
    questions: list[Question],
    hits_per_q: list[list[dict[str, Any]]],
    *,
    system_prompt: str,
    user_template: str,
    context_template: str,
) -> list[list[dict[str, str]]]:
    """The chat messages every model sees: the same prompt and the same retrieved context."""
    return [
        mcq_messages(
            q.question,
            q.options,
            system_prompt=system_prompt,
            user_template=user_template,
            context_template=context_template,
            context="\n\n".join(h["text"] for h in hits) if hits else None,
        )
        for q, hits in zip(questions, hits_per_q, strict=True)
    ]


def _base_record(q: Question, hits: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "question_id": q.id,
        "row": q.row,
        "question": q.question,
        "correct": q.correct,
        "retrieved": [{"id": h["id"], "doc": h["doc"], "heading": h["heading"]} for h in hits],
    }


def _sample_seed(seed: int, key: str, question_id: str) -> int:
    digest = hashlib.sha256(f"{seed}|{key}|{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def tie_credit(top: list[str], correct: str) -> float:
    """A question's credit: 1/k when the correct letter is among the k choices tied for the top
    score (the expected accuracy of a random tie-break), else 0; never the first letter's."""
    return 1.0 / len(top) if correct in top else 0.0


def score_cell(
    questions: list[Question],
    model: Any,
    tokenizer: Any,
    *,
    retriever: Any | None,
    system_prompt: str,
    user_template: str,
    context_template: str,
    batch_size: int,
    device: str,
    sampling: SamplingRecipe | None = None,
    sample_key: str = "",
) -> list[dict[str, Any]]:
    """Score every question for one local model, closed-book (no retriever) or with RAG.

    Args:
        questions: The benchmark.
        model: A causal LM.
        tokenizer: Its tokenizer (with a chat template).
        retriever: A :class:`ragft_dagster.retrieval.indexing.Retriever`, or None for closed-book.
        system_prompt: The same system prompt for every model.
        user_template: Question template.
        context_template: How retrieved context is shown.
        batch_size: Prompts per forward pass.
        device: Torch device of the model.
        sampling: With ``rounds > 0``, also draw that many sampled answers per question at the
            recipe's temperature (the published protocol), seeded per question.
        sample_key: Part of the sampling seed (the cell's name), so cells draw independently.

    Returns:
        One record per question: ``predicted``/``is_correct`` (acc: the letter),
        ``predicted_norm``/``is_correct_norm`` (acc_norm: the option text per character),
        ``predicted_bytes``/``is_correct_bytes`` (acc_bytes: per UTF-8 byte),
        ``predicted_option``/``is_correct_option`` (acc_option: the option text), each
        ``is_correct*`` a credit in [0, 1] (:func:`tie_credit`), ``tied`` (per metric, how many
        choices share the top score; 1 = no tie), letter
        probabilities, A-D mass, the retrieved chunks and, in sampled mode, ``samples`` (a
        letter, or None for an invalid answer, per round).
    """
    hits_per_q = retrieve_all(questions, retriever)
    messages = question_messages(
        questions,
        hits_per_q,
        system_prompt=system_prompt,
        user_template=user_template,
        context_template=context_template,
    )
    return score_local(
        questions,
        hits_per_q,
        messages,
        model,
        tokenizer,
        batch_size=batch_size,
        device=device,
        sampling=sampling,
        sample_key=sample_key,
    )


def score_local(
    questions: list[Question],
    hits_per_q: list[list[dict[str, Any]]],
    messages: list[list[dict[str, str]]],
    model: Any,
    tokenizer: Any,
    *,
    batch_size: int,
    device: str,
    sampling: SamplingRecipe | None = None,
    sample_key: str = "",
) -> list[dict[str, Any]]:
    """:func:`score_cell` on questions whose chunks are retrieved and messages rendered
    already (:func:`retrieve_all`, :func:`question_messages`)."""
    prompts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages
    ]
    sampled = sampling is not None and sampling.rounds > 0
    scores = score_questions(
        model,
        tokenizer,
        prompts,
        [q.options for q in questions],
        batch_size=batch_size,
        device=device,
        temperature=sampling.temperature if sampled and sampling else None,
    )
    records = []
    for q, s, hits in zip(questions, scores, hits_per_q, strict=True):
        rec = {
            **_base_record(q, hits),
            "predicted": s["predicted"],
            "is_correct": tie_credit(s["top"]["acc"], q.correct),
            "invalid": False,
            "predicted_norm": s["predicted_norm"],
            "is_correct_norm": tie_credit(s["top"]["acc_norm"], q.correct),
            "predicted_bytes": s["predicted_bytes"],
            "is_correct_bytes": tie_credit(s["top"]["acc_bytes"], q.correct),
            "predicted_option": s["predicted_option"],
            "is_correct_option": tie_credit(s["top"]["acc_option"], q.correct),
            "tied": {metric: len(letters) for metric, letters in s["top"].items()},
            "probs": s["probs"],
            "mass": s["mass"],
            "option_logprobs": s["option_logprobs"],
            "option_chars": s["option_chars"],
            "option_bytes": s["option_bytes"],
        }
        if sampled and sampling:
            rng = random.Random(_sample_seed(sampling.seed, sample_key, q.id))
            letters = list(s["sample_probs"])
            weights = [s["sample_probs"][x] for x in letters]
            invalid = max(0.0, 1.0 - sum(weights))
            draws = rng.choices([*letters, None], weights=[*weights, invalid], k=sampling.rounds)
            rec["samples"] = draws
            # the exact chance of sampling each letter (the rest: an invalid first token)
            rec["sample_probs"] = s["sample_probs"]
        records.append(rec)
    return records


def score_api_cell(
    questions: list[Question],
    hits_per_q: list[list[dict[str, Any]]],
    messages: list[list[dict[str, str]]],
    *,
    model_name: str,
    api: ApiScoringRecipe,
    client: Any,
    cache: ReplyCache,
    sampling: SamplingRecipe | None = None,
    refresh: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[dict[str, Any]], LlmStats]:
    """Score every question with a model behind an OpenAI-compatible endpoint.

    The reply at temperature 0 is parsed for its answer letter; a reply without one is an
    invalid answer (counted, and wrong). Every reply is cached by (model, messages, parameters,
    round, endpoint), so an unchanged question is never paid for twice; ``refresh`` asks the
    temperature-0 question again anyway (the nightly re-evaluation does, to see a hosted model
    change) and stores the new reply; sampled rounds are never re-asked.
    In sampled mode ``rounds`` more replies per question are drawn at the recipe's temperature.

    Returns:
        (records, stats): per-question records as :func:`score_cell` (``reply``, and
        ``truncated`` when it was cut off at ``max_tokens``, instead of probabilities; no
        acc_norm or acc_option) and the request counts, with a warning per cut-off reply
        without a letter.
    """
    sampled = sampling is not None and sampling.rounds > 0
    endpoint = Endpoint(client, api, "evaluation.api", sleep)
    stats = LlmStats()
    jobs: list[tuple[int, int, dict[str, Any]]] = []  # (question, round or -1, request)
    for i, msgs in enumerate(messages):
        settings = [(-1, 0.0)]
        if sampled and sampling:
            settings += [(r, sampling.temperature) for r in range(sampling.rounds)]
        for round_index, temperature in settings:
            jobs.append(
                (
                    i,
                    round_index,
                    {
                        "model": model_name,
                        "messages": msgs,
                        "temperature": temperature,
                        "max_tokens": api.max_tokens,
                    },
                )
            )
    replies: dict[tuple[int, int], dict[str, Any]] = {}
    todo = []
    where = str(getattr(client, "base_url", ""))  # the same model name at another provider
    for i, round_index, request in jobs:
        key = ReplyCache.key(kind="mcq", endpoint=where, request=request, round=round_index)
        # refresh re-asks the temperature-0 answer only; sampled rounds stay cached
        hit = None if refresh and round_index < 0 else cache.get(key)
        if hit is not None:
            stats.cache_hits += 1
            replies[(i, round_index)] = hit
        else:
            todo.append((i, round_index, request, key))

    replies.update(
        run_requests(
            [LlmRequest((i, round_index), key, request) for i, round_index, request, key in todo],
            endpoint,
            cache,
            concurrency=api.max_concurrency,
            budget=RequestBudget(api.budget.max_requests, api.budget.max_tokens, "evaluation.api"),
            stats=stats,
            cached=len(jobs) - len(todo),
            total=len(jobs),
            what=f"{model_name}: ",
        )
    )

    records = []
    for i, (q, hits) in enumerate(zip(questions, hits_per_q, strict=True)):
        reply = replies[(i, -1)]
        letter = parse_letter(reply["content"])
        truncated = reply.get("finish_reason") == "length"
        rec = {
            **_base_record(q, hits),
            "predicted": letter,
            "is_correct": letter == q.correct,
            "invalid": letter is None,
            "predicted_norm": None,
            "is_correct_norm": None,
            "predicted_bytes": None,
            "is_correct_bytes": None,
            "predicted_option": None,
            "is_correct_option": None,
            "reply": reply["content"],
            "truncated": truncated,
        }
        if truncated:
            stats.truncated += 1
            if letter is None:
                stats.warnings.append(
                    f"question row {q.row}: the reply was cut off at evaluation.api.max_tokens="
                    f"{api.max_tokens} before a letter A-D ({reply['content']!r}); it counts "
                    "as an invalid answer. Raise evaluation.api.max_tokens to ask again."
                )
        if sampled and sampling:
            rec["samples"] = [
                parse_letter(replies[(i, r)]["content"]) for r in range(sampling.rounds)
            ]
        records.append(rec)
    return records, stats


RANK_DEPTH = 10
"""How deep the retrieval diagnostics rank the supporting chunk (hit@k up to this k)."""


def annotate_support(
    records: list[dict[str, Any]],
    questions: list[Question],
    chunks: list[dict[str, Any]],
    *,
    threshold: float,
    ranked: list[list[dict[str, Any]]] | None = None,
    depth: int = RANK_DEPTH,
) -> None:
    """Add where the answer is in the docs and whether retrieval found it, to RAG records.

    Args:
        records: A RAG cell's records (with ``retrieved``, the chunks the prompt showed).
        questions: Their questions.
        chunks: Every chunk of the index.
        threshold: Coverage from which a chunk holds the answer (``evaluation.support_threshold``).
        ranked: Per question, a deeper retrieval (``depth`` chunks), to rank the supporting
            chunk beyond the prompt's top-k; None ranks within the retrieved chunks only.
        depth: How deep ``ranked`` goes.

    Adds ``support`` (the chunks that best hold the answer, when they reach ``threshold``; else
    none: the answer is not located, and a wrong answer is blamed on neither retrieval nor
    generation), ``support_coverage`` (their coverage, even below the threshold),
    ``retrieval_hit`` (the prompt showed a supporting chunk; None when not located),
    ``support_rank`` (1-based rank of the first supporting chunk in the retrieval ranking: the
    prompt's chunks, then ``ranked``'s others; None when not located or not in it) and
    ``ranked_to`` (how deep that ranking went, for hit@k).
    """
    for i, (rec, q) in enumerate(zip(records, questions, strict=True)):
        found = answer_support(q, chunks)
        support = found.chunk_ids if found.coverage >= threshold else []
        shown = [r["id"] for r in rec["retrieved"]]
        # The prompt's own chunks first, so rank <= top_k exactly when retrieval_hit is True.
        order = shown + [h["id"] for h in (ranked[i] if ranked else []) if h["id"] not in shown]
        ranks = [order.index(c) + 1 for c in support if c in order]
        rec["support"] = support
        rec["support_coverage"] = found.coverage
        rec["retrieval_hit"] = bool(set(shown) & set(support)) if support else None
        rec["support_rank"] = min(ranks) if ranks else None
        rec["ranked_to"] = max(depth, len(shown)) if ranked is not None else len(shown)


def recipe_messages(
    ev: EvaluationRecipe, questions: list[Question], hits: list[list[dict[str, Any]]]
) -> list[list[dict[str, str]]]:
    """:func:`question_messages` with the recipe's system prompt and templates."""
    return question_messages(
        questions,
        hits,
        system_prompt=ev.system_prompt,
        user_template=ev.user_template,
        context_template=ev.context_template,
    )


def evaluate_general(
    ev: EvaluationRecipe,
    questions_path: Path,
    models: LocalModels,
    model_key: str,
    *,
    compute: ComputeSettings,
) -> list[dict[str, Any]]:
    """Score one local model on the general-capability set (``questions_path``), closed-book,
    exactly as the benchmark's closed-book cells are scored (same prompt, same scorer).

    Returns:
        Per-question records (see :func:`score_cell`), each with its ``category`` column
        (e.g. ``general`` or ``arithmetic``) when the CSV has one.
    """
    questions = load_questions(questions_path)
    hits: list[list[dict[str, Any]]] = [[] for _ in questions]
    messages = recipe_messages(ev, questions, hits)
    records = score_local(
        questions,
        hits,
        messages,
        *load_local_model(models, model_key, compute),
        batch_size=ev.batch_size,
        device=compute.torch_device(),
    )
    for record, question in zip(records, questions, strict=True):
        record["category"] = question.category
    return records


def _embedder(retrieval: RetrievalRecipe, models: LocalModels, compute: ComputeSettings) -> Any:
    from ragft_dagster.retrieval.indexing import retrieval_embedder

    return retrieval_embedder(
        retrieval, models.layout.root, models.recipe_root, compute.torch_device()
    )


def benchmark_contexts(
    questions: list[Question],
    collection: Any,
    retrieval: RetrievalRecipe,
    *,
    depth: int,
    store: Path,
    embedder: Callable[[], Any],
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
    """Every question's retrieved chunks, retrieved once per benchmark and index version.

    The first RAG cell retrieves and stores them under ``store``, keyed by the questions, the
    index's chunk ids (content hashes: the index version), the embedder, ``top_k`` and
    ``depth``; every other RAG cell (and the report's diagnosis) reads the same file, so all
    models see exactly the same context even when nearest-neighbour search is not bit-for-bit
    repeatable between processes.

    Args:
        questions: The benchmark.
        collection: The index's chroma collection.
        retrieval: The recipe's ``retrieval`` section.
        depth: How deep the ranking for the hit@k diagnostics goes (>= ``top_k``).
        store: The folder of stored retrievals.
        embedder: Makes the query embedder (only called when nothing is stored yet).

    Returns:
        (every chunk of the index, each question's top-k chunks, each question's ``depth``
        ranking).
    """
    from ragft_dagster.retrieval.indexing import Retriever, all_chunks

    chunks = all_chunks(collection)
    key = hashlib.sha256(
        json.dumps(
            {
                "questions": [[q.id, q.question] for q in questions],
                "chunks": sorted(c["id"] for c in chunks),
                "embedding_model": retrieval.embedding_model,
                "top_k": retrieval.top_k,
                "depth": depth,
            }
        ).encode()
    ).hexdigest()[:20]
    path = store / f"{key}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if len(saved["hits"]) == len(saved["ranked"]) == len(questions):
                return chunks, saved["hits"], saved["ranked"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: retrieve again and overwrite it
    query = embedder()
    hits = retrieve_all(questions, Retriever(collection, query, retrieval.top_k))
    # deeper, for hit@k beyond top_k; the prompts keep the top-k retriever's own hits
    ranked = retrieve_all(questions, Retriever(collection, query, depth))
    store.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"key": key, "hits": hits, "ranked": ranked}))
    return chunks, hits, ranked


def evaluate_cell(
    ev: EvaluationRecipe,
    retrieval: RetrievalRecipe,
    questions_path: Path,
    models: LocalModels,
    model_key: str,
    context_name: str,
    *,
    compute: ComputeSettings,
    open_collection: Callable[[], AbstractContextManager[Any]],
    llm_client: Callable[[], Any] | None = None,
    refresh_api: bool = False,
) -> tuple[list[dict[str, Any]], LlmStats | None]:
    """Score the recipe's benchmark for one model x context cell.

    Args:
        ev: The recipe's ``evaluation`` section (prompts, API models, sampling).
        retrieval: The recipe's ``retrieval`` section (embedder, top_k).
        questions_path: The benchmark CSV.
        models: The local models, and where the artifacts are.
        model_key: ``base``, ``merged``, ``dpo``, ``sft`` or a name in ``evaluation.api.models``.
        context_name: ``closed_book`` or ``rag``.
        compute: Device and dtype.
        open_collection: Opens the index's chroma collection (used for ``rag`` only).
        llm_client: Makes an ``openai.OpenAI`` client (API models only).
        refresh_api: Ask API models again instead of reusing cached replies.

    Returns:
        Per-question records (see :func:`score_cell`) and, for an API model, request counts.
    """
    layout = models.layout
    questions = load_questions(questions_path)
    with ExitStack() as stack:
        hits: list[list[dict[str, Any]]] = [[] for _ in questions]
        chunks: list[dict[str, Any]] = []
        ranked = None
        depth = max(retrieval.top_k, RANK_DEPTH)
        if context_name == "rag":
            collection = stack.enter_context(open_collection())
            chunks, hits, ranked = benchmark_contexts(
                questions,
                collection,
                retrieval,
                depth=depth,
                store=layout.retrieved_contexts,
                embedder=lambda: _embedder(retrieval, models, compute),
            )
        messages = recipe_messages(ev, questions, hits)
        if model_key in ev.api.models:
            if llm_client is None:
                raise ValueError(f"scoring the API model {model_key!r} needs an LLM client")
            records, stats = score_api_cell(
                questions,
                hits,
                messages,
                model_name=model_key,
                api=ev.api,
                client=llm_client(),
                cache=ReplyCache(layout.llm_cache),
                sampling=ev.sampling,
                refresh=refresh_api,
            )
        else:
            records = score_local(
                questions,
                hits,
                messages,
                *load_local_model(models, model_key, compute),
                batch_size=ev.batch_size,
                device=compute.torch_device(),
                sampling=ev.sampling,
                sample_key=f"{model_key}|{context_name}",
            )
            stats = None
        if context_name == "rag":
            annotate_support(
                records,
                questions,
                chunks,
                threshold=ev.support_threshold,
                ranked=ranked,
                depth=depth,
            )
    return records, stats
