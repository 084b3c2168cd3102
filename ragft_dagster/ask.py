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
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.compute import ComputeSettings
from ragft_dagster.config.recipe import Recipe, RetrievalRecipe
from ragft_dagster.evaluation.scoring import load_local_model
from ragft_dagster.models.refs import LocalModels
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


def generation_settings(compute: ComputeSettings) -> ComputeSettings:
    """The settings a local model generates answers with (``ragft ask`` and ``open_scores``):
    the profile's, except that ``dtype: auto`` on a CPU generates in float32.

    Token-by-token decoding is where bfloat16 loses on a CPU: measured on this project's
    2-core CPU with avx512_bf16 (SmolLM2-135M sft, a 3-chunk RAG prompt, load average ~7),
    reading the prompt took 5-6 s and each new token 1.3 s in bfloat16, 0.85 s and 0.12 s in
    float32. Scoring (one forward pass per question) keeps the profile's inference dtype.
    """
    if compute.dtype == "auto" and compute.torch_device() == "cpu":
        return replace(compute, dtype="float32")
    return compute


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


def ask_messages(
    question: str,
    hits: list[dict[str, Any]],
    *,
    system_prompt: str | None,
    context_template: str,
) -> list[dict[str, str]]:
    """The chat messages of a question: the training prompt, with the benchmark's context block.

    Args:
        question: The user's question.
        hits: Retrieved chunks (empty closed-book).
        system_prompt: ``sft_dataset.system_prompt`` (the model was trained with it), or None.
        context_template: ``evaluation.context_template`` (``{context}`` = chunks joined by a
            blank line, as in :func:`ragft_dagster.evaluation.scoring.question_messages`).

    Returns:
        System (when given) and user messages.
    """
    block = ""
    if hits:
        block = context_template.replace("{context}", "\n\n".join(h["text"] for h in hits))
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": block + question}]


@dataclass(frozen=True)
class Reply:
    """A generated reply and how it ended."""

    text: str
    new_tokens: int
    """Tokens generated (the end-of-turn token included when the model wrote one)."""
    truncated: bool
    """Cut off at ``max_new_tokens`` before the model ended its turn."""


def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    device: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    write: Callable[[str], Any] | None = None,
) -> Reply:
    """Generate a reply, handing each piece of text to ``write`` as soon as it is decoded.

    Generation runs in a thread feeding a ``TextIteratorStreamer``; this thread writes. The
    text is the streamer's, so what ``ragft ask`` prints and what ``open_scores`` scores are the
    same characters.

    Args:
        model: A causal LM on ``device``.
        tokenizer: Its tokenizer (with a chat template).
        messages: The chat so far.
        device: Torch device of the model.
        max_new_tokens: Longest reply, in tokens.
        temperature: 0 decodes greedily; above 0 samples at that temperature.
        write: Receives the reply piece by piece (None: nobody is watching).

    Returns:
        The whole reply, its length in tokens and whether it was cut off.
    """
    import torch
    from transformers import TextIteratorStreamer

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The chat template writes the BOS token itself.
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        sampling["temperature"] = temperature
    failure: list[BaseException] = []
    output: list[Any] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                output.append(
                    model.generate(
                        **enc,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=tokenizer.pad_token_id,
                        streamer=streamer,
                        **sampling,
                    )
                )
        except BaseException as exc:
            failure.append(exc)
            streamer.end()  # else the loop below waits for text forever

    model.eval()
    worker = threading.Thread(target=generate, name="ragft-ask-generate", daemon=True)
    worker.start()
    pieces = []
    for piece in streamer:
        if piece:
            pieces.append(piece)
            if write is not None:
                write(piece)
    worker.join()
    if failure:
        raise failure[0]
    new = output[0][0, enc["input_ids"].shape[1] :].tolist() if output else []
    stops = model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, list) else [stops] if stops is not None else [])
    ended = bool(new) and new[-1] in stops
    return Reply("".join(pieces), len(new), len(new) >= max_new_tokens and not ended)


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    device: str,
    max_new_tokens: int,
    batch_size: int = 1,
) -> list[Reply]:
    """Greedy replies to many conversations, ``batch_size`` prompts a forward pass.

    With ``batch_size`` 1 every reply is the one :func:`generate_reply` streams at temperature
    0, token for token (the same prompt, the same greedy search). Above 1, prompts of similar
    length are left-padded into one batch: the same search, but the padded matrix products add
    in another order, so a near-tie between two tokens may break the other way and the reply
    differ from there on.

    Args:
        model: A causal LM on ``device``.
        tokenizer: Its tokenizer (with a chat template).
        conversations: One chat per reply.
        device: Torch device of the model.
        max_new_tokens: Longest reply, in tokens.
        batch_size: Prompts per forward pass.

    Returns:
        The replies, in the order of ``conversations``.
    """
    import torch

    prompts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in conversations
    ]
    stops = model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, list) else [stops] if stops is not None else [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding
    replies: dict[int, Reply] = {}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the new tokens follow every prompt directly
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # The chat template writes the BOS token itself.
            enc = tokenizer(
                [prompts[i] for i in batch],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
                )
            for i, row in zip(batch, out[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
                end = next((k + 1 for k, t in enumerate(row) if t in stops), None)
                ids = row if end is None else row[:end]
                text = tokenizer.decode(ids, skip_special_tokens=True)
                replies[i] = Reply(text, len(ids), end is None and len(ids) >= max_new_tokens)
    finally:
        tokenizer.padding_side = side
    return [replies[i] for i in range(len(prompts))]


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
