"""Open answers: the open questions answered as ``ragft ask`` answers them, and scored
(Dagster-free).

Every cell (model x context) answers with :func:`ragft_dagster.ask.reply_to_question` (local
models: the training prompt, the retrieved chunks as the benchmark's RAG rows show them, greedy
decoding up to ``open_answers.max_new_tokens``) or, for an API model, the same messages at
temperature 0 through the one request runner. Every answer is cached like every generation
(:class:`ragft_dagster.llm.cache.ReplyCache`), keyed by what it depends on (the model's files,
the messages, the decoding), so re-materializing a cell whose answers cannot have changed (a
new judge, a new metric) generates nothing. RAG cells read the same stored retrieval as the
MCQ cells (:func:`ragft_dagster.evaluation.scoring.benchmark_contexts`): every model sees the
same chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import ArtifactLayout, partition_file_name, read_utf8_file
from ragft_dagster.compute import ComputeSettings
from ragft_dagster.config.recipe import EvaluationRecipe, RetrievalRecipe
from ragft_dagster.evaluation.judge import JudgeTask, run_judge
from ragft_dagster.evaluation.open_metrics import coverage, reference_scores, similarities
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import Endpoint, LlmStats, RequestBudget
from ragft_dagster.llm.runner import LlmRequest, run_requests
from ragft_dagster.models.refs import LocalModels
from ragft_dagster.tables import parse_csv
from ragft_dagster.text import content_words, fold

COLUMNS = ("question", "answer")


class OpenQuestionsError(ValueError):
    """An open-question file problem; names the file, row and field and the fix."""


@dataclass(frozen=True)
class OpenQuestion:
    id: str
    """Content hash of the folded question (as the MCQ ids)."""
    row: int
    question: str
    answer: str
    """The reference answer."""
    source: str | None = None
    """The document that answers it (optional)."""


def open_scores_path(layout: ArtifactLayout, model: str, context: str) -> Path:
    """Where one ``open_scores`` cell keeps its records (a flat file name, as ``scores``)."""
    return layout.root / "open_scores" / partition_file_name(f"{model}__{context}")


def judge_agreement_path(layout: ArtifactLayout) -> Path:
    """Where ``judge_agreement`` keeps the judge's trust figures."""
    return layout.root / "open_answers" / "judge_agreement.json"


def load_open_questions(path: Path) -> list[OpenQuestion]:
    """Read ``question,answer[,source]`` from a CSV (values may span lines when quoted) or a
    JSONL file (one object a line; ``.jsonl``/``.json``).

    Raises:
        OpenQuestionsError: Naming the file, the row (and its line) and the field, and the fix.
    """
    path = Path(path)
    text = read_utf8_file(
        path,
        OpenQuestionsError,
        what="open-question file",
        key="evaluation.open_questions",
        expected="a CSV or JSONL file",
        noun="file",
    )
    rows = _jsonl_rows(path, text) if path.suffix in (".jsonl", ".json") else _csv_rows(path, text)
    questions: list[OpenQuestion] = []
    seen: dict[str, int] = {}
    for n, (where, values) in enumerate(rows, 1):
        at = f"{path}: row {n} ({where})"
        for field in COLUMNS:
            if not values.get(field):
                raise OpenQuestionsError(
                    f"{at}: field '{field}' is empty; fill it in or remove the row"
                )
        key = fold(values["question"])
        if key in seen:
            raise OpenQuestionsError(f"{at}: duplicate of row {seen[key]}; remove one of them")
        seen[key] = n
        questions.append(
            OpenQuestion(
                hashlib.sha256(key.encode()).hexdigest()[:16],
                n,
                values["question"],
                values["answer"],
                values.get("source") or None,
            )
        )
    if not questions:
        raise OpenQuestionsError(f"{path}: no questions; add rows with question,answer[,source]")
    return questions


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, str]]]:
    table = parse_csv(
        text,
        path,
        OpenQuestionsError,
        header="question,answer[,source]",
        required=COLUMNS,
        value_noun="a question or answer",
    )
    return [(row.lines, row.values) for row in table.rows]


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {line_no}"
        at = f"{path}: row {len(out) + 1} ({where})"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OpenQuestionsError(
                f"{at}: not a JSON object ({exc.msg}); write one object a line"
            ) from None
        if not isinstance(data, dict):
            raise OpenQuestionsError(f"{at}: not a JSON object; write one object a line")
        values = {}
        for field in (*COLUMNS, "source"):
            value = data.get(field)
            if value is not None and not isinstance(value, str):
                raise OpenQuestionsError(
                    f"{at}: field '{field}' is {type(value).__name__}, not a string"
                )
            values[field] = (value or "").strip()
        out.append((where, values))
    return out


def model_fingerprint(models: LocalModels, model_key: str) -> str:
    """What a local model's answers depend on, cheaply: every file of its weights (and
    adapter) folder by name, size and modification time. Artifacts are written to a new folder
    and renamed into place, so a retrained model has new files."""
    parts = []
    for folder in models.paths(model_key):
        if folder is None:
            continue
        root = Path(folder)
        for dirpath, _, names in sorted(os.walk(root)):
            for name in sorted(names):
                st = (Path(dirpath) / name).stat()
                parts.append(
                    f"{Path(dirpath, name).relative_to(root)}:{st.st_size}:{st.st_mtime_ns}"
                )
        parts.append(f"@{folder}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def ask_local(
    questions: list[OpenQuestion],
    hits_per_q: list[list[dict[str, Any]]],
    *,
    models: LocalModels,
    model_key: str,
    compute: ComputeSettings,
    system_prompt: str | None,
    context_template: str,
    max_new_tokens: int,
    cache: ReplyCache,
    batch_size: int = 1,
    log: Callable[[str], Any] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Each question's answer from a local model, as ``ragft ask`` gives it (token for token
    with ``batch_size`` 1; see :func:`ragft_dagster.models.generation.generate_replies`); cached.

    Returns:
        (per question ``{"content", "truncated", "new_tokens", "seconds"}``, answers generated
        in this call: the rest came from the cache and the model was not even loaded when all
        did).
    """
    from ragft_dagster.models.generation import generate_replies, generation_settings
    from ragft_dagster.models.loading import load_local_model
    from ragft_dagster.prompts import ask_messages

    fingerprint = model_fingerprint(models, model_key)
    conversations = [
        ask_messages(
            q.question, hits, system_prompt=system_prompt, context_template=context_template
        )
        for q, hits in zip(questions, hits_per_q, strict=True)
    ]
    keys = [
        ReplyCache.key(
            kind="open_local",
            model=fingerprint,
            messages=messages,
            max_new_tokens=max_new_tokens,
            decoding="greedy",
            dtype=str(generation_settings(compute).inference_dtype()),
            # batched answers may differ from single ones (see generate_replies)
            batch_size=batch_size,
        )
        for messages in conversations
    ]
    replies: list[dict[str, Any] | None] = [cache.get(k) for k in keys]
    todo = [i for i, r in enumerate(replies) if r is None]
    if todo:
        model, tokenizer = load_local_model(models, model_key, generation_settings(compute))
        device = compute.torch_device()
        # a batch at a time, each cached as soon as it is generated
        step = batch_size * max(1, 8 // batch_size)
        for start in range(0, len(todo), step):
            part = todo[start : start + step]
            started = time.monotonic()
            generated = generate_replies(
                model,
                tokenizer,
                [conversations[i] for i in part],
                device=device,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
            seconds = round((time.monotonic() - started) / len(part), 3)
            for i, reply in zip(part, generated, strict=True):
                value = {
                    "content": reply.text,
                    "truncated": reply.truncated,
                    "new_tokens": reply.new_tokens,
                    "seconds": seconds,
                }
                cache.put(keys[i], value)  # generated: keep it before anything else can fail
                replies[i] = value
            if log is not None:
                log(f"{model_key}: {start + len(part)} of {len(todo)} answers generated")
    return [r for r in replies if r is not None], len(todo)


def ask_api(
    questions: list[OpenQuestion],
    hits_per_q: list[list[dict[str, Any]]],
    *,
    model_name: str,
    ev: EvaluationRecipe,
    system_prompt: str | None,
    client: Any,
    cache: ReplyCache,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[dict[str, Any]], LlmStats]:
    """Each question's answer from a model at the profile's endpoint: the same messages as a
    local model gets, temperature 0, ``max_tokens`` = ``open_answers.max_new_tokens``; every
    reply cached, budgeted by ``evaluation.api.budget``."""
    from ragft_dagster.prompts import ask_messages

    api = ev.api
    stats = LlmStats()
    where = str(getattr(client, "base_url", ""))
    replies: dict[int, dict[str, Any]] = {}
    todo = []
    for i, (q, hits) in enumerate(zip(questions, hits_per_q, strict=True)):
        request = {
            "model": model_name,
            "messages": ask_messages(
                q.question, hits, system_prompt=system_prompt, context_template=ev.context_template
            ),
            "temperature": 0.0,
            "max_tokens": ev.open_answers.max_new_tokens,
        }
        key = ReplyCache.key(kind="open", endpoint=where, request=request)
        if (hit := cache.get(key)) is not None:
            stats.cache_hits += 1
            replies[i] = hit
        else:
            todo.append(LlmRequest(i, key, request))
    replies.update(
        run_requests(
            todo,
            Endpoint(client, api, "evaluation.api", sleep),
            cache,
            concurrency=api.max_concurrency,
            budget=RequestBudget(api.budget.max_requests, api.budget.max_tokens, "evaluation.api"),
            stats=stats,
            cached=len(questions) - len(todo),
            total=len(questions),
            what=f"{model_name}: ",
        )
    )
    out = []
    for i in range(len(questions)):
        reply = replies[i]
        out.append(
            {
                "content": reply.get("content", ""),
                "truncated": reply.get("finish_reason") == "length",
                "new_tokens": reply.get("completion_tokens", 0),
                "seconds": reply.get("seconds"),
            }
        )
    return out, stats


def reference_chunk(question: OpenQuestion, chunks: list[dict[str, Any]]) -> str | None:
    """The chunk of the question's ``source`` document (every chunk when it names none) that
    holds the most of the reference's content words; None when no chunk holds any."""
    wanted = content_words(question.answer)
    asked = content_words(question.question)
    best, best_key = None, (0.0, 0.0)
    for chunk in chunks:
        if question.source and chunk.get("doc") != question.source:
            continue
        held = content_words(chunk["text"])
        key = (
            len(wanted & held) / max(len(wanted), 1),
            len(asked & held) / max(len(asked), 1),
        )
        if key[0] > 0 and key > best_key:
            best, best_key = chunk["id"], key
    return best


def score_answers(
    questions: list[OpenQuestion],
    replies: list[dict[str, Any]],
    hits_per_q: list[list[dict[str, Any]]],
    *,
    rag: bool,
    chunks: list[dict[str, Any]],
    embed: Callable[[list[str]], Any] | None,
) -> list[dict[str, Any]]:
    """Per-question records: the answer beside the reference and every reference metric
    (:mod:`ragft_dagster.evaluation.open_metrics`); for RAG, the answer's coverage by the
    retrieved chunks, whether the ``source`` document was retrieved (None without a source)
    and whether the chunk holding the reference was (None when no chunk holds it)."""
    answers = [r["content"].strip() for r in replies]
    sims = similarities(embed, answers, [q.answer for q in questions]) if embed else None
    records = []
    for i, (q, reply, hits) in enumerate(zip(questions, replies, hits_per_q, strict=True)):
        rec: dict[str, Any] = {
            "question_id": q.id,
            "row": q.row,
            "question": q.question,
            "reference": q.answer,
            "source": q.source,
            "answer": answers[i],
            "truncated": bool(reply.get("truncated")),
            "new_tokens": reply.get("new_tokens"),
            **reference_scores(answers[i], q.answer),
            "similarity": sims[i] if sims is not None else None,
            "retrieved": [{"id": h["id"], "doc": h["doc"], "heading": h["heading"]} for h in hits],
        }
        if rag:
            rec["coverage"] = coverage(answers[i], [h["text"] for h in hits])
            shown = {h["doc"] for h in hits}
            rec["source_retrieved"] = (q.source in shown) if q.source else None
            ref = reference_chunk(q, chunks)
            rec["reference_chunk"] = ref
            rec["reference_chunk_retrieved"] = (
                ref in {h["id"] for h in hits} if ref is not None else None
            )
        records.append(rec)
    return records


def judge_records(
    records: list[dict[str, Any]],
    hits_per_q: list[list[dict[str, Any]]],
    ev: EvaluationRecipe,
    context_template: str,
    *,
    client: Any,
    cache: ReplyCache,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Add the judge's verdicts to the records: ``judge_correct`` (1.0/0.0, None unreadable)
    and, in RAG cells, ``judge_faithful``; returns the request and parse figures."""
    judge = ev.open_answers.judge
    assert judge is not None
    tasks = []
    for i, (rec, hits) in enumerate(zip(records, hits_per_q, strict=True)):
        tasks.append(
            JudgeTask(
                (i, "correctness"), "correctness", rec["question"], rec["answer"], rec["reference"]
            )
        )
        if hits:
            context = context_template.replace(
                "{context}", "\n\n".join(h["text"] for h in hits)
            ).strip()
            tasks.append(
                JudgeTask(
                    (i, "faithfulness"),
                    "faithfulness",
                    rec["question"],
                    rec["answer"],
                    context=context,
                )
            )
    run = run_judge(tasks, judge, client=client, cache=cache, sleep=sleep)
    for (i, rubric), verdict in run.verdicts.items():
        field = "judge_correct" if rubric == "correctness" else "judge_faithful"
        records[i][field] = None if verdict.value is None else float(verdict.value)
        records[i][f"{field}_reason"] = verdict.reason or (
            verdict.reply[:200] if verdict.value is None else ""
        )
    figures = run.figures()
    if run.structured_refused:
        figures["judge_structured_refused"] = run.structured_refused
    return figures


def evaluate_open_cell(
    ev: EvaluationRecipe,
    retrieval: RetrievalRecipe,
    questions_path: Path,
    models: LocalModels,
    model_key: str,
    context_name: str,
    *,
    compute: ComputeSettings,
    system_prompt: str | None,
    open_collection: Callable[[], AbstractContextManager[Any]],
    llm_client: Callable[[], Any] | None = None,
    log: Callable[[str], Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Answer and score the open questions for one model x context cell.

    Args:
        ev: The recipe's ``evaluation`` section.
        retrieval: The recipe's ``retrieval`` section (embedder, top_k).
        questions_path: The open questions (``evaluation.open_questions``).
        models: The local models, and where the artifacts are.
        model_key: A local model or an ``evaluation.api.models`` name.
        context_name: ``closed_book`` or ``rag``.
        compute: Device and dtype.
        system_prompt: ``sft_dataset.system_prompt`` (what ``ragft ask`` sends), or None.
        open_collection: Opens the index's chroma collection (RAG only).
        llm_client: Makes an ``openai.OpenAI`` client (API models and the judge).
        log: Progress lines.

    Returns:
        Per-question records and the cell's figures (answers generated vs. cached, API and
        judge requests).
    """
    from ragft_dagster.evaluation.scoring import RANK_DEPTH, benchmark_contexts
    from ragft_dagster.retrieval.indexing import retrieval_embedder

    layout = models.layout
    questions = load_open_questions(questions_path)
    cache = ReplyCache(layout.llm_cache)
    figures: dict[str, Any] = {"questions": len(questions)}
    embedder: Any = None

    def embedder_once() -> Any:
        nonlocal embedder
        if embedder is None:
            # the one embedder resolution: retrieval's model embeds the answers too
            embedder = retrieval_embedder(
                retrieval, layout.root, models.recipe_root, compute.torch_device()
            )
        return embedder

    with ExitStack() as stack:
        hits: list[list[dict[str, Any]]] = [[] for _ in questions]
        chunks: list[dict[str, Any]] = []
        if context_name == "rag":
            collection = stack.enter_context(open_collection())
            # the stored retrieval reads the questions' ids and texts only
            chunks, hits, _ = benchmark_contexts(
                questions,  # type: ignore[arg-type]
                collection,
                retrieval,
                depth=max(retrieval.top_k, RANK_DEPTH),
                store=layout.retrieved_contexts,
                embedder=embedder_once,
            )
    if model_key in ev.api.models:
        if llm_client is None:
            raise ValueError(f"answering with the API model {model_key!r} needs an LLM client")
        replies, stats = ask_api(
            questions,
            hits,
            model_name=model_key,
            ev=ev,
            system_prompt=system_prompt,
            client=llm_client(),
            cache=cache,
        )
        figures.update(
            answers_generated=stats.requests,
            answers_cached=stats.cache_hits,
            api_tokens=stats.prompt_tokens + stats.completion_tokens,
        )
    else:
        replies, generated = ask_local(
            questions,
            hits,
            models=models,
            model_key=model_key,
            compute=compute,
            system_prompt=system_prompt,
            context_template=ev.context_template,
            max_new_tokens=ev.open_answers.max_new_tokens,
            cache=cache,
            batch_size=ev.open_answers.batch_size,
            log=log,
        )
        figures.update(answers_generated=generated, answers_cached=len(questions) - generated)
    records = score_answers(
        questions,
        replies,
        hits,
        rag=context_name == "rag",
        chunks=chunks,
        embed=embedder_once().get_text_embedding_batch,
    )
    if ev.open_answers.judge is not None:
        if llm_client is None:
            raise ValueError("the open-answer judge needs an LLM client")
        figures.update(
            judge_records(records, hits, ev, ev.context_template, client=llm_client(), cache=cache)
        )
    return records, figures
