"""The published evaluation protocol, re-implemented to compare against (Dagster-free).

The March 2024 work scored a model by asking a llama-index query engine each question in turn,
letting the model generate a few tokens and reading the answer letter out of the reply. This
module rebuilds that protocol with our own code on the same inputs our scorer uses (the same
chroma collection, embedder, top-k, system prompt and templates), so that the two can be timed
against each other and their answers compared
(``python -m ragft_dagster.benchmarks.bench scoring``):

- :class:`TransformersLLM`: a llama-index ``CustomLLM`` around a transformers causal LM
  that generates up to ``max_new_tokens`` (3) tokens greedily, one prompt at a time.
- :class:`PublishedProtocol`: a query engine (``VectorStoreIndex.from_vector_store(...)
  .as_query_engine(...)``) whose QA template renders exactly the prompt our scorer builds, or the
  bare LLM for closed-book.
- :func:`ragft_dagster.evaluation.mcq.parse_letter` (the parser of API models' replies too): the
  first standalone A-D of the reply; anything else is an invalid answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts import ChatPromptTemplate
from llama_index.core.schema import NodeWithScore, QueryBundle

from ragft_dagster.evaluation.mcq import Question, parse_letter


def render_chat(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """llama-index chat messages through the model's own chat template, as our scorer does."""
    turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


class TransformersLLM(CustomLLM):
    """A transformers causal LM as a llama-index LLM: a few new tokens, one prompt at a time (no
    batching), as the published notebook ran it; greedy at ``temperature`` 0, else sampled at
    that temperature from the whole vocabulary (no top-k or top-p cut).

    Chat prompts are rendered with the tokenizer's chat template (``messages_to_prompt``) and
    tokenized without extra special tokens, exactly like the log-likelihood scorer's prompts, so
    both protocols put the same token ids before the answer. Every prompt it completes is kept
    in :attr:`prompts` (the benchmark checks them against the scorer's) and the time spent in
    ``generate`` adds up in :attr:`generate_seconds`.
    """

    model_name: str = Field(default="transformers", description="Shown in llama-index metadata.")
    context_window: int = Field(default=4096, gt=0)
    max_new_tokens: int = Field(default=3, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    device: str = "cpu"
    generate_seconds: float = 0.0
    _model: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()
    _prompts: list[str] = PrivateAttr(default_factory=list)

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        kwargs.setdefault("messages_to_prompt", lambda messages: render_chat(tokenizer, messages))
        kwargs.setdefault(
            "model_name", getattr(model.config, "_name_or_path", "") or "transformers"
        )
        kwargs.setdefault(
            "context_window",
            getattr(model.config, "max_position_embeddings", None) or 4096,
        )
        super().__init__(**kwargs)
        self._model = model.eval()
        self._tokenizer = tokenizer

    @classmethod
    def class_name(cls) -> str:
        return "greedy_transformers_llm"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            model_name=self.model_name,
            is_chat_model=False,
        )

    @property
    def prompts(self) -> list[str]:
        """Every prompt completed so far, in order."""
        return self._prompts

    def _generate(self, prompt: str) -> list[int]:
        import torch

        enc = self._tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        started = time.perf_counter()
        with torch.no_grad():
            out = self._model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self._tokenizer.pad_token_id,
                **(
                    {"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0}
                    if self.temperature > 0
                    else {"do_sample": False}
                ),
            )
        self.generate_seconds += time.perf_counter() - started
        self._prompts.append(prompt)
        return out[0, enc["input_ids"].shape[1] :].tolist()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        ids = self._generate(prompt)
        return CompletionResponse(text=self._tokenizer.decode(ids, skip_special_tokens=True))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        # Three tokens are generated in one call; the stream replays them token by token.
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        ids = self._generate(prompt)
        text = ""
        for n in range(1, len(ids) + 1):
            now = self._tokenizer.decode(ids[:n], skip_special_tokens=True)
            yield CompletionResponse(text=now, delta=now[len(text) :])
            text = now


class _HideMetadataFromLLM(BaseNodePostprocessor):
    """Show the LLM a chunk's text only, as our retriever does (no ``doc: ...`` header)."""

    @classmethod
    def class_name(cls) -> str:
        return "hide_metadata_from_llm"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        for hit in nodes:
            hit.node.excluded_llm_metadata_keys = list(hit.node.metadata)
        return nodes


def qa_template(
    system_prompt: str, user_template: str, context_template: str, *, rag: bool
) -> ChatPromptTemplate:
    """Our evaluation prompt as a llama-index chat template.

    The variables are the query engine's own ``{context_str}`` (the retrieved chunks) and
    ``{query_str}`` (the question), plus ``{a}``-``{d}`` for the options.
    """
    block = context_template.replace("{context}", "{context_str}") if rag else ""
    user = user_template.replace("{context_block}", block).replace("{question}", "{query_str}")
    return ChatPromptTemplate(
        message_templates=[
            ChatMessage(role=MessageRole.SYSTEM, content=system_prompt),
            ChatMessage(role=MessageRole.USER, content=user),
        ]
    )


class PublishedProtocol:
    """Answer multiple-choice questions one at a time by generation, as published.

    Args:
        llm: The generating model.
        system_prompt: The same system prompt as our scorer.
        user_template: The same question template.
        context_template: The same context block.
        collection: A chroma collection for RAG, or None for closed-book (the LLM alone).
        embedder: The llama-index embedding model of the collection (RAG only).
        top_k: Chunks retrieved per question (RAG only).
        response_mode: llama-index response mode. The default ``compact`` joins the retrieved
            chunks with a blank line, as our scorer does, and answers in ONE LLM call whenever
            they fit the context window (its repacking is then the identity and nothing is
            refined); ``simple_summarize`` would join them with a single newline.
    """

    def __init__(
        self,
        llm: TransformersLLM,
        *,
        system_prompt: str,
        user_template: str,
        context_template: str,
        collection: Any | None = None,
        embedder: Any | None = None,
        top_k: int = 3,
        response_mode: str = "compact",
    ) -> None:
        self.llm = llm
        self.rag = collection is not None
        self.template = qa_template(system_prompt, user_template, context_template, rag=self.rag)
        self.engine: Any = None
        if self.rag:
            from llama_index.core import VectorStoreIndex
            from llama_index.vector_stores.chroma import ChromaVectorStore

            if embedder is None:
                raise ValueError("a RAG protocol needs the collection's embedder")
            index = VectorStoreIndex.from_vector_store(
                ChromaVectorStore(chroma_collection=collection), embed_model=embedder
            )
            self.engine = index.as_query_engine(
                llm=llm,
                similarity_top_k=top_k,
                text_qa_template=self.template,
                response_mode=response_mode,
                node_postprocessors=[_HideMetadataFromLLM()],
            )

    def answer(self, question: Question) -> dict[str, Any]:
        """Ask one question; returns the reply, the parsed letter (None if invalid) and the ids
        of the chunks the engine retrieved."""
        a, b, c, d = question.options
        template = self.template.partial_format(a=a, b=b, c=c, d=d)
        if self.engine is None:
            reply = self.llm.predict(template, query_str=question.question)
            retrieved: list[str] = []
        else:
            self.engine.update_prompts({"response_synthesizer:text_qa_template": template})
            response = self.engine.query(question.question)
            reply = response.response or ""
            retrieved = [hit.node.node_id for hit in response.source_nodes]
        return {
            "question_id": question.id,
            "reply": reply,
            "predicted": parse_letter(reply),
            "retrieved": retrieved,
        }

    def answer_all(self, questions: Sequence[Question]) -> list[dict[str, Any]]:
        return [self.answer(q) for q in questions]


def scorer_prompt(
    question: Question,
    tokenizer: Any,
    hits: list[dict[str, Any]],
    *,
    system_prompt: str,
    user_template: str,
    context_template: str,
) -> str:
    """The prompt :func:`ragft_dagster.evaluation.scoring.score_cell` feeds the model for
    ``question`` given the retriever's ``hits`` (empty for closed-book): what the protocol must
    reproduce."""
    from ragft_dagster.evaluation.scoring import question_messages

    (messages,) = question_messages(
        [question],
        [hits],
        system_prompt=system_prompt,
        user_template=user_template,
        context_template=context_template,
    )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
