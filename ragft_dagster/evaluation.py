"""Scoring one benchmark cell (model x context) end to end (Dagster-free)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.compute import ComputeSettings
from ragft_dagster.mcq import Question, build_messages, load_questions, score_letters
from ragft_dagster.model_refs import resolve_model_ref
from ragft_dagster.recipe import Recipe


def load_scoring_model(
    model_dir: str,
    adapter_dir: str | None,
    *,
    device: str,
    dtype: Any,
    chat_template: str | None,
    trust_remote_code: bool = False,
):
    """Load a causal LM (optionally with a PEFT adapter merged in) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    from ragft_dagster.model_refs import load_tokenizer

    tokenizer = load_tokenizer(adapter_dir or model_dir, chat_template, trust_remote_code)
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code
    )
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.to(device), tokenizer


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
) -> list[dict[str, Any]]:
    """Score every question for one model, closed-book (no retriever) or with RAG.

    Args:
        questions: The benchmark.
        model: A causal LM.
        tokenizer: Its tokenizer (with a chat template).
        retriever: A :class:`ragft_dagster.indexing.Retriever`, or None for closed-book.
        system_prompt: The same system prompt for every model.
        user_template: Question template.
        context_template: How retrieved context is shown.
        batch_size: Prompts per forward pass.
        device: Torch device of the model.

    Returns:
        One record per question: prediction, correctness, letter probabilities, A-D mass and
        the ids of the retrieved chunks.
    """
    prompts, hits_per_q = [], []
    for q in questions:
        hits = retriever.retrieve(q.question) if retriever is not None else []
        context = "\n\n".join(h["text"] for h in hits) if hits else None
        messages = build_messages(q, system_prompt, user_template, context_template, context)
        prompts.append(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
        hits_per_q.append(hits)
    scores = score_letters(model, tokenizer, prompts, batch_size=batch_size, device=device)
    return [
        {
            "question_id": q.id,
            "row": q.row,
            "question": q.question,
            "correct": q.correct,
            "predicted": s["predicted"],
            "is_correct": s["predicted"] == q.correct,
            "probs": s["probs"],
            "mass": s["mass"],
            "retrieved": [{"id": h["id"], "doc": h["doc"], "heading": h["heading"]} for h in hits],
        }
        for q, s, hits in zip(questions, scores, hits_per_q, strict=True)
    ]


def model_paths(recipe: Recipe, layout: ArtifactLayout, model_key: str) -> tuple[str, str | None]:
    """(weights, adapter) of a ``model`` partition: base, merged, dpo, or sft = dpo + adapter."""
    if model_key == "base":
        return resolve_model_ref(recipe.base_model, layout.root, recipe.root), None
    if model_key == "sft":
        return str(layout.dpo_model), str(layout.lora_adapter)
    return str({"merged": layout.merged_model, "dpo": layout.dpo_model}[model_key]), None


def evaluate_cell(
    recipe: Recipe,
    layout: ArtifactLayout,
    model_key: str,
    context_name: str,
    *,
    compute: ComputeSettings,
    open_collection: Callable[[], AbstractContextManager[Any]],
) -> list[dict[str, Any]]:
    """Score the recipe's benchmark for one model x context cell.

    Args:
        recipe: The recipe (models, questions, prompts, retrieval settings).
        layout: Where the upstream artifacts are.
        model_key: ``base``, ``merged``, ``dpo`` or ``sft``.
        context_name: ``closed_book`` or ``rag``.
        compute: Device and dtype.
        open_collection: Opens the index's chroma collection (used for ``rag`` only).

    Returns:
        Per-question records (see :func:`score_cell`).
    """
    ev = recipe.evaluation
    device = compute.torch_device()
    weights, adapter = model_paths(recipe, layout, model_key)
    model, tokenizer = load_scoring_model(
        weights,
        adapter,
        device=device,
        dtype=compute.torch_dtype(),
        chat_template=recipe.chat_template,
        trust_remote_code=recipe.trust_remote_code,
    )
    questions = load_questions(recipe.questions_path)
    kwargs: dict[str, Any] = dict(
        system_prompt=ev.system_prompt,
        user_template=ev.user_template,
        context_template=ev.context_template,
        batch_size=ev.batch_size,
        device=device,
    )
    if context_name != "rag":
        return score_cell(questions, model, tokenizer, retriever=None, **kwargs)
    from ragft_dagster.indexing import Retriever, load_embedder

    embedder = load_embedder(
        resolve_model_ref(recipe.retrieval.embedding_model, layout.root, recipe.root), device
    )
    with open_collection() as collection:
        retriever = Retriever(collection, embedder, recipe.retrieval.top_k)
        return score_cell(questions, model, tokenizer, retriever=retriever, **kwargs)
