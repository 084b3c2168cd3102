"""Per-document data assets: chunks, then synthetic Q&A (one dynamic partition per document,
processed ``docs.batch_size`` documents to a run)."""

import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import read_jsonl, write_jsonl
from ragft_dagster.assets._meta import preview_table
from ragft_dagster.assets.partitions import add_partition_metadata, documents_partitions
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.data.chunking import DocumentError, chunk_document, empty_document_warning
from ragft_dagster.data.convert import ConvertedDocument, convert_document
from ragft_dagster.data.documents import CONTENT_HASH_KEY
from ragft_dagster.data.qa_generation import DocumentQa, generate_qa
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import BudgetExceeded, LlmCallError, LlmStats
from ragft_dagster.models.refs import load_tokenizer, resolve_model_ref
from ragft_dagster.resources import ArtifactStoreResource, LlmEndpointResource

# BackfillPolicy is beta in Dagster 1.13; we rely on it knowingly (tests/orchestration cover it).
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)


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
    # A backfill of N documents is ceil(N / docs.batch_size) runs; every body takes a range.
    batches = dg.BackfillPolicy.multi_run(max_partitions_per_run=recipe.docs.batch_size)

    @dg.asset(
        partitions_def=documents_partitions,
        backfill_policy=batches,
        group_name="documents",
        kinds={"markdown"},
        code_version=recipe.section_version("chunking", "base_model"),
    )
    def doc_chunks(
        context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource
    ) -> dg.MaterializeResult:
        """Each document of the run split into ~300-token, heading-aware chunks with
        content-hash ids (one materialization per document)."""
        layout = artifacts.layout()
        tokenizer = load_tokenizer(
            resolve_model_ref(recipe.base_model, layout.root, recipe.root),
            recipe.chat_template,
            recipe.trust_remote_code,
        )
        failed, by_partition = [], {}
        for key in context.partition_keys:
            path = recipe.docs_dir / key
            try:
                doc = convert_document(path, key)
            except DocumentError as exc:
                failed.append(f"{exc}. {_gone(path)}".strip())
                continue
            chunks = [
                c.to_dict()
                for c in chunk_document(
                    doc.text,
                    key,
                    tokenizer,
                    recipe.chunking.chunk_size,
                    recipe.chunking.chunk_overlap,
                    markup=doc.markup,
                    title=doc.title,
                )
            ]
            write_jsonl(layout.chunks(key), chunks)
            for note in doc.notes:
                context.log.warning(note)
            empty = empty_document_warning(key, doc.text, markup=doc.markup)
            if empty:
                context.log.warning(empty)
            by_partition[key] = chunk_metadata(layout.chunks(key), path, doc, chunks, empty)
        if failed:  # the other documents' chunk files are written: a rerun redoes nothing
            raise dg.Failure(description="doc_chunks: " + "\n".join(failed))
        add_partition_metadata(context, by_partition)
        return dg.MaterializeResult(metadata={"batch_documents": len(context.partition_keys)})

    @dg.asset(
        deps=[doc_chunks],
        partitions_def=documents_partitions,
        backfill_policy=batches,
        group_name="documents",
        kinds={"openai"} if recipe.qa.generator == "openai" else {"python"},
        code_version=recipe.section_version("qa"),
    )
    def synthetic_qa(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        llm: LlmEndpointResource,
    ) -> dg.MaterializeResult:
        """Question/answer pairs generated from every chunk of each document of the run, with
        one request pool (``qa.max_concurrency``) and one budget across the documents."""
        layout = artifacts.layout()
        qa = recipe.qa
        client = None
        if qa.generator == "openai":
            # retries are ours (call_llm): counted, capped, and Retry-After is honoured
            client = llm.client(timeout=qa.request_timeout, max_retries=0)
        documents, missing = {}, []
        for key in context.partition_keys:
            try:
                documents[key] = read_jsonl(layout.chunks(key))
            except FileNotFoundError:
                missing.append(
                    f"{key}: no chunks at {layout.chunks(key)}: materialize doc_chunks for {key} "
                    f"first. {_gone(recipe.docs_dir / key)}".strip()
                )
        if missing:
            raise dg.Failure(description="synthetic_qa: " + "\n".join(missing))
        started = time.monotonic()
        try:
            generated, stats = generate_qa(
                documents,
                qa,
                client=client,
                cache=ReplyCache(layout.llm_cache),
                log=context.log.warning,  # cut-off or short replies: which chunk, what to change
            )
        except (BudgetExceeded, LlmCallError) as exc:
            label = ", ".join(documents) if len(documents) <= 3 else f"{len(documents)} documents"
            raise dg.Failure(description=f"synthetic_qa[{label}]: {exc}") from None
        # the batch's generation alone (requests, parsing, warnings), before files and events
        generation_seconds = round(time.monotonic() - started, 3)
        by_partition = {}
        for key, doc in generated.items():
            write_jsonl(layout.qa(key), doc.rows)
            metadata = qa_metadata(layout.qa(key), doc, len(documents[key]), qa.generator)
            if client is not None:
                metadata.update(llm_metadata(doc.stats, stats, qa.pricing))
            by_partition[key] = metadata
        add_partition_metadata(context, by_partition)
        return dg.MaterializeResult(
            metadata={"batch_documents": len(documents), "generation_seconds": generation_seconds}
        )

    return [doc_chunks, synthetic_qa]


def chunk_metadata(
    path: Path,
    source: Path,
    doc: ConvertedDocument,
    chunks: list[dict[str, Any]],
    warning: str | None,
) -> dict[str, Any]:
    """One document's ``doc_chunks`` metadata (its content hash tells what it was built from)."""
    tokens = [c["n_tokens"] for c in chunks]
    return {
        **({"warning": warning} if warning else {}),
        **({"notes": "\n".join(doc.notes)} if doc.notes else {}),
        "path": dg.MetadataValue.path(str(path)),
        "source": dg.MetadataValue.path(str(source)),
        CONTENT_HASH_KEY: doc.content_hash,
        "format": doc.format,
        **({"document_metadata": dg.MetadataValue.json(doc.metadata)} if doc.metadata else {}),
        "chunks": len(chunks),
        "tokens": sum(tokens),
        "max_chunk_tokens": max(tokens, default=0),
        "preview": preview_table(chunks, ["id", "heading_path", "n_tokens", "text"]),
    }


def qa_metadata(path: Path, doc: DocumentQa, chunks: int, generator: str) -> dict[str, Any]:
    """One document's ``synthetic_qa`` metadata."""
    rows = doc.rows
    return {
        "path": dg.MetadataValue.path(str(path)),
        "rows": len(rows),
        "chunks": chunks,
        "generator": generator,
        "generated": doc.stats.requests,
        "cache_hits": doc.stats.cache_hits,
        "kinds": dg.MetadataValue.json(dict(Counter(r["kind"] for r in rows))),
        "preview": preview_table(rows, ["question", "answer", "kind", "chunk_id"]),
    }


def llm_metadata(doc: LlmStats, batch: LlmStats, pricing: Any) -> dict[str, Any]:
    """One document's requests, tokens, cost and reply outcomes; retries are the batch's (one
    pool served every document of the run)."""
    return {
        "llm_requests": doc.requests,
        "prompt_tokens": doc.prompt_tokens,
        "completion_tokens": doc.completion_tokens,
        "estimated_cost_usd": doc.cost_usd(pricing.prompt_per_1k, pricing.completion_per_1k),
        "truncated_replies": doc.truncated,
        "short_replies": doc.short_replies,
        # replies that ignored the JSON schema the endpoint accepted (qa.structured_output)
        "off_schema_replies": doc.off_schema,
        "parse_outcomes": dg.MetadataValue.json(doc.parse),
        "llm_retries": batch.retries,
        "llm_retry_wait_seconds": round(batch.retry_wait_seconds, 2),
    }
