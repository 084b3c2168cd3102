"""The RAG index over every document's chunks."""

import shutil
from collections import Counter

import dagster as dg

from ragft_dagster.artifacts import artifact_lock, atomic_dir, read_jsonl
from ragft_dagster.assets.partitions import EAGER, read_all_documents
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource, VectorStoreResource
from ragft_dagster.retrieval.indexing import (
    IndexMismatchError,
    Retriever,
    id_differences,
    retrieval_embedder,
    retrieval_quality,
    sync_index,
)


def build(recipe: Recipe) -> list[dg.AssetsDefinition]:
    r = recipe.retrieval

    @dg.asset(
        automation_condition=EAGER,
        deps=[dg.AssetDep("doc_chunks", partition_mapping=dg.AllPartitionMapping())],
        group_name="retrieval",
        kinds={"llamaindex", "chromadb"},
        code_version=recipe.section_version("retrieval"),
    )
    def vector_index(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
        vector_store: VectorStoreResource,
    ) -> dg.MaterializeResult:
        """A chroma collection holding an embedding of every current chunk (llama-index)."""
        layout = artifacts.layout()
        device = compute.settings().torch_device()
        embedder = retrieval_embedder(r, layout.root, recipe.root, device)
        final = layout.vector_index
        # One writer at a time: a concurrent materialization waits, then reads the chunks and
        # builds on this one's result (embedding only what is still missing) instead of racing
        # it to the swap with chunks read before it waited.
        with (
            artifact_lock(final, "vector_index", context.log.info),
            atomic_dir(final) as tmp,
        ):
            _, chunks = read_all_documents(
                context, "doc_chunks", layout.chunks, docs_dir=recipe.docs_dir
            )
            # Update a copy, then swap: the live index stays whole if this run dies.
            if vector_store.mode == "embedded" and final.exists():
                shutil.copytree(final, tmp, dirs_exist_ok=True)
            with vector_store.collection(r.collection, tmp, r.embedding_model) as collection:
                try:
                    counts = sync_index(collection, chunks, embedder, r.embedding_model)
                except IndexMismatchError as exc:
                    raise dg.Failure(description=str(exc)) from None
        per_doc = Counter(c["doc"] for c in chunks)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(final)),
                "collection": r.collection,
                "embedding_model": r.embedding_model,
                "vectors": counts["total"],
                "dimension": counts["dimension"],
                "embedded_now": counts["added"],
                "deleted_now": counts["deleted"],
                "kept": counts["kept"],
                "documents": len(per_doc),
            }
        )

    @dg.asset_check(
        asset=vector_index,
        description="The collection holds exactly the current chunk ids: none missing, none stale.",
    )
    def vector_index_matches_chunks(
        context: dg.AssetCheckExecutionContext,
        artifacts: ArtifactStoreResource,
        vector_store: VectorStoreResource,
    ) -> dg.AssetCheckResult:
        layout = artifacts.layout()
        _, chunks = read_all_documents(
            context, "doc_chunks", layout.chunks, docs_dir=recipe.docs_dir
        )
        expected = {c["id"] for c in chunks}
        with (
            # not while another run writes or swaps the index
            artifact_lock(layout.vector_index, "vector_index", context.log.info, shared=True),
            vector_store.collection(r.collection, layout.vector_index) as collection,
        ):
            missing, stale = id_differences(collection, expected)
            held = collection.count()
        return dg.AssetCheckResult(
            passed=not missing and not stale,
            metadata={
                "vectors": held,
                "chunk_ids": len(expected),
                "missing": len(missing),
                "stale": len(stale),
                "missing_examples": dg.MetadataValue.json(missing[:10]),
                "stale_examples": dg.MetadataValue.json(stale[:10]),
            },
            description=None
            if not (missing or stale)
            else "re-materialize vector_index: it does not match the current chunks",
        )

    @dg.asset_check(
        asset=vector_index,
        # Training with retrieval makes sft_dataset read the index; then the check reads the
        # held-out questions of the dataset built before (a dependency would be a cycle).
        additional_deps=[] if recipe.sft_dataset.retrieval_context.enabled else ["sft_dataset"],
        description=(
            "Retrieval quality: hit@1, hit@k and MRR of the source chunk for the held-out "
            "(validation) synthetic questions; warns below retrieval.min_hit_rate."
        ),
    )
    def vector_index_retrieval_quality(
        context: dg.AssetCheckExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
        vector_store: VectorStoreResource,
    ) -> dg.AssetCheckResult:
        layout = artifacts.layout()
        held_out = layout.sft_dataset / "validation.jsonl"
        if not held_out.is_file():
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description="no held-out questions: materialize sft_dataset, then run this check",
            )
        rows = sorted(read_jsonl(held_out), key=lambda row: row["id"])
        if not rows:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"held_out_rows": 0},
                description=f"no held-out questions: {held_out} is empty (too few Q&A rows "
                "survived the quality filter and deduplication for a validation split); generate "
                "more Q&A per chunk or raise sft_dataset.validation_fraction, then run this check",
            )
        device = compute.settings().torch_device()
        embedder = retrieval_embedder(r, layout.root, recipe.root, device)
        with (
            artifact_lock(layout.vector_index, "vector_index", context.log.info, shared=True),
            vector_store.collection(r.collection, layout.vector_index) as collection,
        ):
            indexed = set(collection.get(include=[])["ids"])
            pairs = [
                (row.get("question") or row["messages"][-2]["content"], row["chunk_id"])
                for row in rows
                if row["chunk_id"] in indexed
            ][: r.quality_questions]
            retriever = Retriever(collection, embedder, max(r.top_k, 10))
            quality = retrieval_quality(retriever, pairs, r.top_k)
        if not quality["questions"]:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"held_out_rows": len(rows)},
                description="none of the held-out questions' chunks is in the index: "
                "re-materialize sft_dataset and vector_index, then run this check",
            )
        passed = quality["hit_at_k"] >= r.min_hit_rate
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                **quality,
                "top_k": r.top_k,
                "min_hit_rate": r.min_hit_rate,
                "held_out_rows": len(rows),
                "skipped_stale_rows": len(rows) - sum(1 for x in rows if x["chunk_id"] in indexed),
            },
            description=None
            if passed
            else f"hit@{r.top_k} {quality['hit_at_k']:.2f} is below retrieval.min_hit_rate "
            f"{r.min_hit_rate}: try another embedding model, smaller chunks or a larger top_k",
        )

    return [vector_index, vector_index_matches_chunks, vector_index_retrieval_quality]
