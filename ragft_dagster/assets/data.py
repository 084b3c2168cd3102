"""Per-document data assets: chunks, then synthetic Q&A (one dynamic partition per document)."""

from collections import Counter
from pathlib import Path

import dagster as dg

from ragft_dagster.artifacts import read_jsonl, write_jsonl
from ragft_dagster.assets._meta import documents_partitions, preview_table
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.data.chunking import (
    DocumentError,
    chunk_document,
    empty_document_warning,
    read_document,
)
from ragft_dagster.data.documents import CONTENT_HASH_KEY, content_hash
from ragft_dagster.data.qa_generation import generate_document_qa
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import BudgetExceeded, LlmCallError
from ragft_dagster.models.refs import load_tokenizer, resolve_model_ref
from ragft_dagster.resources import ArtifactStoreResource, LlmEndpointResource


def _gone(path: Path) -> str:
    """What to do about a document partition whose file is gone (empty if it exists)."""
    if path.exists():
        return ""
    return (
        "The document was deleted after the docs sensor saw it: nothing to do, the sensor "
        "removes its partition and its chunk and Q&A files on its next tick and rebuilds "
        "sft_dataset and vector_index without it (`ragft run` does the same). If it was moved "
        "or renamed, it is picked up under its new path. This partition's previous "
        "materialization is left as it was"
    )


def build(recipe: Recipe) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=documents_partitions,
        group_name="documents",
        kinds={"markdown"},
        code_version=recipe.section_version("chunking", "base_model"),
    )
    def doc_chunks(
        context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource
    ) -> dg.MaterializeResult:
        """One document split into ~300-token, heading-aware chunks with content-hash ids."""
        key = context.partition_key
        layout = artifacts.layout()
        path = recipe.docs_dir / key
        try:
            text = read_document(path, key)
        except DocumentError as exc:
            raise dg.Failure(description=f"doc_chunks: {exc}. {_gone(path)}".strip()) from None
        tokenizer = load_tokenizer(
            resolve_model_ref(recipe.base_model, layout.root, recipe.root),
            recipe.chat_template,
            recipe.trust_remote_code,
        )
        chunks = [
            c.to_dict()
            for c in chunk_document(
                text, key, tokenizer, recipe.chunking.chunk_size, recipe.chunking.chunk_overlap
            )
        ]
        write_jsonl(layout.chunks(key), chunks)
        tokens = [c["n_tokens"] for c in chunks]
        empty = empty_document_warning(key, text)
        if empty:
            context.log.warning(empty)
        return dg.MaterializeResult(
            metadata={
                **({"warning": empty} if empty else {}),
                "path": dg.MetadataValue.path(str(layout.chunks(key))),
                "source": dg.MetadataValue.path(str(path)),
                CONTENT_HASH_KEY: content_hash(text.encode("utf-8")),
                "chunks": len(chunks),
                "tokens": sum(tokens),
                "max_chunk_tokens": max(tokens, default=0),
                "preview": preview_table(chunks, ["id", "heading_path", "n_tokens", "text"]),
            }
        )

    @dg.asset(
        deps=[doc_chunks],
        partitions_def=documents_partitions,
        group_name="documents",
        kinds={"openai"} if recipe.qa.generator == "openai" else {"python"},
        code_version=recipe.section_version("qa"),
    )
    def synthetic_qa(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        llm: LlmEndpointResource,
    ) -> dg.MaterializeResult:
        """Question/answer pairs generated from every chunk of one document."""
        key = context.partition_key
        layout = artifacts.layout()
        qa = recipe.qa
        client = None
        if qa.generator == "openai":
            # retries are ours (call_llm): counted, capped, and Retry-After is honoured
            client = llm.client(timeout=qa.request_timeout, max_retries=0)
        try:
            chunks = read_jsonl(layout.chunks(key))
        except FileNotFoundError:
            raise dg.Failure(
                description=f"synthetic_qa[{key}]: no chunks at {layout.chunks(key)}: "
                f"materialize doc_chunks for {key} first. {_gone(recipe.docs_dir / key)}".strip()
            ) from None
        try:
            rows, stats = generate_document_qa(
                chunks,
                key,
                qa,
                client=client,
                cache=ReplyCache(layout.llm_cache),
                log=context.log.warning,  # cut-off or short replies: which chunk, what to change
            )
        except (BudgetExceeded, LlmCallError) as exc:
            raise dg.Failure(description=f"synthetic_qa[{key}]: {exc}") from None
        write_jsonl(layout.qa(key), rows)
        metadata: dict = {
            "path": dg.MetadataValue.path(str(layout.qa(key))),
            "rows": len(rows),
            "chunks": len(chunks),
            "generator": qa.generator,
            "generated": stats.requests,
            "cache_hits": stats.cache_hits,
            "kinds": dg.MetadataValue.json(dict(Counter(r["kind"] for r in rows))),
            "preview": preview_table(rows, ["question", "answer", "kind", "chunk_id"]),
        }
        if client is not None:
            metadata.update(
                {
                    "llm_requests": stats.requests,
                    "llm_retries": stats.retries,
                    "llm_retry_wait_seconds": round(stats.retry_wait_seconds, 2),
                    "prompt_tokens": stats.prompt_tokens,
                    "completion_tokens": stats.completion_tokens,
                    "estimated_cost_usd": stats.cost_usd(
                        qa.pricing.prompt_per_1k, qa.pricing.completion_per_1k
                    ),
                    "truncated_replies": stats.truncated,
                    "parse_outcomes": dg.MetadataValue.json(stats.parse),
                }
            )
        return dg.MaterializeResult(metadata=metadata)

    return [doc_chunks, synthetic_qa]
