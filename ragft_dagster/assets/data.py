"""Per-document data assets: chunks, then synthetic Q&A (one dynamic partition per document)."""

from collections import Counter

import dagster as dg

from ragft_dagster.artifacts import read_jsonl, write_jsonl
from ragft_dagster.assets._meta import documents_partitions, preview_table
from ragft_dagster.chunking import chunk_document, read_document
from ragft_dagster.model_refs import load_tokenizer, resolve_model_ref
from ragft_dagster.qa_generation import (
    LlmStats,
    ReplyCache,
    doc_title_of,
    generate_llm_qa,
    generate_offline_qa,
    qa_rows_for_chunk,
)
from ragft_dagster.recipe import Recipe
from ragft_dagster.resources import ArtifactStoreResource, LlmEndpointResource


def build(recipe: Recipe) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=documents_partitions,
        group_name="data",
        kinds={"markdown"},
        code_version=recipe.section_version("chunking", "base_model"),
    )
    def doc_chunks(
        context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource
    ) -> dg.MaterializeResult:
        """One document split into ~300-token, heading-aware chunks with content-hash ids."""
        key = context.partition_key
        layout = artifacts.layout()
        text = read_document(recipe.docs_dir / key, key)
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
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(layout.chunks(key))),
                "chunks": len(chunks),
                "tokens": sum(tokens),
                "max_chunk_tokens": max(tokens, default=0),
                "preview": preview_table(chunks, ["id", "heading_path", "n_tokens", "text"]),
            }
        )

    @dg.asset(
        deps=[doc_chunks],
        partitions_def=documents_partitions,
        group_name="data",
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
        chunks = read_jsonl(layout.chunks(key))
        title = doc_title_of(chunks, key)
        qa = recipe.qa
        stats = LlmStats()
        rows = []
        client = (
            llm.client(timeout=qa.request_timeout, max_retries=qa.max_retries)
            if qa.generator == "openai"
            else None
        )
        for chunk in chunks:
            if client is None:
                pairs = generate_offline_qa(chunk, title, qa.questions_per_chunk)
            else:
                pairs = generate_llm_qa(
                    chunk,
                    title,
                    client=client,
                    model=qa.model or "",
                    n=qa.questions_per_chunk,
                    prompt_template=qa.prompt,
                    temperature=qa.temperature,
                    max_tokens=qa.max_tokens,
                    cache=ReplyCache(layout.root / "llm_cache"),
                    stats=stats,
                )
            rows += qa_rows_for_chunk(chunk, pairs, qa.generator, qa.model)
        write_jsonl(layout.qa(key), rows)
        metadata: dict = {
            "path": dg.MetadataValue.path(str(layout.qa(key))),
            "rows": len(rows),
            "chunks": len(chunks),
            "generator": qa.generator,
            "kinds": dg.MetadataValue.json(dict(Counter(r["kind"] for r in rows))),
            "preview": preview_table(rows, ["question", "answer", "kind", "chunk_id"]),
        }
        if client is not None:
            metadata.update(
                {
                    "llm_requests": stats.requests,
                    "llm_cache_hits": stats.cache_hits,
                    "prompt_tokens": stats.prompt_tokens,
                    "completion_tokens": stats.completion_tokens,
                    "parse_outcomes": dg.MetadataValue.json(stats.parse),
                }
            )
        return dg.MaterializeResult(metadata=metadata)

    return [doc_chunks, synthetic_qa]
