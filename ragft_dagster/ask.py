"""Ask the finished model a question: retrieve, prompt, stream the answer (Dagster-free).

The finished model is the benchmark's ``sft`` model: ``dpo_model`` with ``lora_adapter`` merged
in. It is prompted the way it was trained (``sft_dataset.system_prompt``, if any, then the
question), with the retrieved chunks put in front of the question exactly as the benchmark's RAG
rows show them (``evaluation.context_template``, chunks joined by a blank line). The benchmark's
own system prompt is not used: it asks for a single answer letter, and ``ask`` is free text.
Nothing is ever downloaded: the model, the adapter and the index are local artifacts.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.compute import ComputeSettings
from ragft_dagster.config.recipe import Recipe, RetrievalRecipe
from ragft_dagster.models.generation import Reply, generate_reply, generation_settings
from ragft_dagster.models.loading import load_local_model
from ragft_dagster.models.refs import LocalModels
from ragft_dagster.prompts import ask_messages
from ragft_dagster.retrieval.indexing import MODEL_KEY, Retriever, retrieval_embedder

HEADING_SEPARATOR = " > "
"""How :func:`ragft_dagster.retrieval.indexing.sync_index` joins a chunk's heading path in
its metadata."""


class AskError(RuntimeError):
    """A question that cannot be answered here; the message says why and what to do."""


@dataclass(frozen=True)
class MissingArtifact:
    """An asset ``ask`` needs whose artifact is absent (or unusable), and why."""

    asset: str
    reason: str


class ArtifactsNotReadyError(AskError):
    """Some assets ``ask`` needs are not materialized yet."""

    def __init__(self, missing: list[MissingArtifact]):
        self.missing = missing
        super().__init__("; ".join(f"{m.asset}: {m.reason}" for m in missing))

    @property
    def assets(self) -> list[str]:
        return [m.asset for m in self.missing]


@dataclass
class Answer:
    text: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    """The retrieved chunks (``id``, ``text``, ``doc``, ``heading``, ``score``), best first;
    empty closed-book."""


def missing_model_artifacts(layout: ArtifactLayout) -> list[MissingArtifact]:
    """``dpo_model`` and ``lora_adapter`` when their directories are absent.

    Artifacts are written to a temporary sibling and renamed into place, so a directory holding
    its config file is a whole artifact.
    """
    missing = []
    if not (layout.dpo_model / "config.json").is_file():
        missing.append(MissingArtifact("dpo_model", f"no model at {layout.dpo_model}"))
    if not (layout.lora_adapter / "adapter_config.json").is_file():
        missing.append(MissingArtifact("lora_adapter", f"no adapter at {layout.lora_adapter}"))
    return missing


def index_problem(collection: Any, retrieval: RetrievalRecipe) -> str | None:
    """Why ``collection`` cannot serve the recipe's retrieval, or None when it can."""
    if not collection.count():
        return f"collection {retrieval.collection!r} holds no chunks"
    built_with = (collection.metadata or {}).get(MODEL_KEY)
    if built_with and built_with != retrieval.embedding_model:
        return (
            f"collection {retrieval.collection!r} holds vectors of {built_with}, but the recipe "
            f"names {retrieval.embedding_model}"
        )
    return None


def heading_trail(doc: str, heading: str) -> str:
    """``installation.md › Requirements › Python``: a chunk's document and heading path."""
    parts = [doc, *(h for h in heading.split(HEADING_SEPARATOR) if h.strip())]
    return " › ".join(p for p in parts if p)


def format_sources(hits: list[dict[str, Any]]) -> list[str]:
    """One line per retrieved chunk: rank, document › heading path, similarity score."""
    return [
        f"  {rank}. {heading_trail(h['doc'], h['heading'])}  (score {h['score']:.3f})"
        for rank, h in enumerate(hits, 1)
    ]


def reply_to_question(
    model: Any,
    tokenizer: Any,
    question: str,
    hits: list[dict[str, Any]],
    *,
    system_prompt: str | None,
    context_template: str,
    device: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    write: Callable[[str], Any] | None = None,
) -> Reply:
    """Answer one question with a loaded model: the one way ``ragft ask`` and ``open_scores``
    answer (the training prompt, the retrieved chunks as the benchmark's RAG rows show them,
    greedy decoding at temperature 0).

    Args:
        model: A causal LM on ``device``.
        tokenizer: Its tokenizer (with a chat template).
        question: The question.
        hits: Retrieved chunks, best first (empty closed-book).
        system_prompt: ``sft_dataset.system_prompt``, or None.
        context_template: ``evaluation.context_template``.
        device: Torch device of the model.
        max_new_tokens: Longest answer, in tokens.
        temperature: 0 is greedy decoding.
        write: Receives the answer piece by piece (None: nobody is watching).

    Returns:
        The reply.
    """
    messages = ask_messages(
        question, hits, system_prompt=system_prompt, context_template=context_template
    )
    return generate_reply(
        model,
        tokenizer,
        messages,
        device=device,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        write=write,
    )


def answer_question(
    recipe: Recipe,
    layout: ArtifactLayout,
    question: str,
    *,
    compute: ComputeSettings,
    open_collection: Callable[[], AbstractContextManager[Any]] | None,
    index_dir: Path | None = None,
    store_name: str = "the vector store",
    top_k: int | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    write: Callable[[str], Any],
) -> Answer:
    """Answer one question with the finished model, streaming the reply to ``write``.

    Every artifact is checked before anything heavy is loaded: a missing one raises
    :class:`ArtifactsNotReadyError` naming them all.

    Args:
        recipe: The recipe whose artifacts answer (prompts, retrieval settings, chat template).
        layout: Where its artifacts are.
        question: The question.
        compute: Device and dtype.
        open_collection: Opens the index's chroma collection; None answers closed-book.
        index_dir: The directory an embedded store lives in (None for a Chroma server): when it
            is absent the index is not materialized, and nothing is created there.
        store_name: Names the store in errors (``the Chroma server at host:port``).
        top_k: Chunks to retrieve (default ``retrieval.top_k``).
        max_new_tokens: Longest answer, in tokens.
        temperature: 0 is greedy decoding.
        write: Receives the answer piece by piece.

    Returns:
        The answer and the chunks it was given.

    Raises:
        ArtifactsNotReadyError: An asset it needs is not materialized.
        AskError: The vector store or the embedding model cannot be opened.
    """
    if not question.strip():
        raise AskError("the question is empty")
    missing = missing_model_artifacts(layout)
    hits: list[dict[str, Any]] = []
    with ExitStack() as stack:
        collection = None
        if open_collection is not None:
            if index_dir is not None and not index_dir.is_dir():
                missing.append(MissingArtifact("vector_index", f"no index at {index_dir}"))
            else:
                try:
                    collection = stack.enter_context(open_collection())
                except Exception as exc:
                    raise AskError(f"cannot open {store_name}: {exc}") from None
                problem = index_problem(collection, recipe.retrieval)
                if problem:
                    missing.append(MissingArtifact("vector_index", problem))
        if missing:
            raise ArtifactsNotReadyError(missing)
        if collection is not None:
            ref = recipe.retrieval.embedding_model
            try:
                embedder = retrieval_embedder(
                    recipe.retrieval, layout.root, recipe.root, compute.torch_device()
                )
            except OSError as exc:
                raise AskError(
                    f"cannot load the embedding model {ref!r} from local files (ask never "
                    f"downloads): {exc}"
                ) from None
            retriever = Retriever(collection, embedder, top_k or recipe.retrieval.top_k)
            hits = retriever.retrieve(question)
    device = compute.torch_device()
    model, tokenizer = load_local_model(
        LocalModels.of(recipe, layout), "sft", generation_settings(compute)
    )
    reply = reply_to_question(
        model,
        tokenizer,
        question,
        hits,
        system_prompt=recipe.sft_dataset.system_prompt,
        context_template=recipe.evaluation.context_template,
        device=device,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        write=write,
    )
    return Answer(reply.text, hits)


def materialize_hint(
    assets: list[str],
    *,
    recipe_arg: str | None,
    profile_arg: str | None,
    dagster_home: str | None,
) -> str:
    """The commands that materialize ``assets`` for the recipe and profile ``ask`` was given.

    Args:
        assets: Asset names, in graph order.
        recipe_arg: ``--recipe`` as given (None: RAGFT_RECIPE or the default).
        profile_arg: ``--profile`` as given (None: RAGFT_PROFILE or the default).
        dagster_home: None when DAGSTER_HOME is set already; else the directory ``make run``
            uses, to put in front of the commands.

    Returns:
        Lines to print.
    """
    home = f"DAGSTER_HOME={shlex.quote(dagster_home)} " if dagster_home else ""
    flags = "".join(
        f" --{name} {shlex.quote(value)}"
        for name, value in (("recipe", recipe_arg), ("profile", profile_arg))
        if value
    )
    env = "".join(
        f"{name}={shlex.quote(value)} "
        for name, value in (("RAGFT_RECIPE", recipe_arg), ("RAGFT_PROFILE", profile_arg))
        if value
    )
    first = "make run" if not flags else f"{home}ragft run{flags}"
    return "\n".join(
        [
            f"Materialize {' and '.join(assets)} first:",
            f"  {first}",
            "or only these assets, when their upstream assets are materialized already:",
            f"  {home}{env}dagster asset materialize -m ragft_dagster.definitions "
            f"--select {','.join(assets)}",
        ]
    )
