"""Open answers one at a time against batched, after a ``make run``: time and identity.

``open_answers.batch_size`` trades ``ragft ask``'s token-for-token answers for speed (a padded
batch adds the matrix products in another order). This measures both on the recipe's open
questions with the stored RAG contexts of the finished run, each model and dtype asked::

    python -m ragft_dagster.benchmarks.open_batching --models base,sft \
        --dtypes float32,bfloat16 --batch-sizes 1,8

No answer is cached; the run's stored retrieval is read (or, when absent, made and stored as
``open_scores`` would).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

RAG = "rag"


def _contexts(recipe: Any, profile: Any, questions: list[Any]) -> list[list[dict[str, Any]]]:
    """The RAG contexts ``open_scores`` gave these questions (the stored retrieval)."""
    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.definitions import build_resources
    from ragft_dagster.evaluation.scoring import RANK_DEPTH, benchmark_contexts
    from ragft_dagster.retrieval.indexing import retrieval_embedder

    layout = ArtifactLayout(profile.artifact_root)
    store = build_resources(recipe, profile)["vector_store"]
    with store.collection(recipe.retrieval.collection, layout.vector_index) as collection:
        _, hits, _ = benchmark_contexts(
            questions,
            collection,
            recipe.retrieval,
            depth=max(recipe.retrieval.top_k, RANK_DEPTH),
            store=layout.retrieved_contexts,
            embedder=lambda: retrieval_embedder(recipe.retrieval, layout.root, recipe.root),
        )
    return hits


def main(argv: list[str] | None = None) -> int:
    import torch

    from ragft_dagster.artifacts import ArtifactLayout
    from ragft_dagster.definitions import load_inputs
    from ragft_dagster.evaluation.open_answers import load_open_questions
    from ragft_dagster.models.generation import generate_replies
    from ragft_dagster.models.loading import load_scoring_model
    from ragft_dagster.models.refs import LocalModels
    from ragft_dagster.prompts import ask_messages

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--models", default="base,sft")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--batch-sizes", default="1,8")
    args = parser.parse_args(argv)

    recipe, profile = load_inputs(args.recipe, args.profile)
    ev = recipe.evaluation
    if recipe.open_questions_path is None:
        parser.error(f"recipe {recipe.name!r} has no evaluation.open_questions")
    questions = load_open_questions(recipe.open_questions_path)
    hits = _contexts(recipe, profile, questions)
    conversations = [
        ask_messages(
            q.question,
            h,
            system_prompt=recipe.sft_dataset.system_prompt,
            context_template=ev.context_template,
        )
        for q, h in zip(questions, hits, strict=True)
    ]
    models = LocalModels.of(recipe, ArtifactLayout(profile.artifact_root))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    tokens = ev.open_answers.max_new_tokens
    print(f"{len(questions)} questions, RAG, up to {tokens} new tokens")
    print("model   dtype     batch  seconds  identical to batch " + str(sizes[0]))
    for key in args.models.split(","):
        weights, adapter = models.paths(key)
        for dtype in args.dtypes.split(","):
            model, tokenizer = load_scoring_model(
                weights,
                adapter,
                device="cpu",
                dtype=getattr(torch, dtype),
                chat_template=models.chat_template,
                trust_remote_code=models.trust_remote_code,
            )
            first: list[str] | None = None
            for size in sizes:
                started = time.monotonic()
                replies = generate_replies(
                    model,
                    tokenizer,
                    conversations,
                    device="cpu",
                    max_new_tokens=tokens,
                    batch_size=size,
                )
                seconds = time.monotonic() - started
                texts = [r.text for r in replies]
                first = first or texts
                same = sum(a == b for a, b in zip(first, texts, strict=True))
                print(f"{key:7s} {dtype:9s} {size:5d} {seconds:8.1f}  {same} of {len(texts)}")
            del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
