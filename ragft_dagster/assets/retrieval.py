"""The RAG index over every document's chunks."""

import shutil
from collections import Counter

import dagster as dg

from ragft_dagster.artifacts import atomic_dir
from ragft_dagster.assets._meta import read_all_documents
from ragft_dagster.indexing import load_embedder, sync_index
from ragft_dagster.model_refs import resolve_model_ref
from ragft_dagster.recipe import Recipe
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource, VectorStoreResource


def build(recipe: Recipe) -> list[dg.AssetsDefinition]:
    r = recipe.retrieval

    @dg.asset(
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
        _, chunks = read_all_documents(context, "doc_chunks", layout.chunks)
        model_dir = resolve_model_ref(r.embedding_model, layout.root, recipe.root)
        embedder = load_embedder(model_dir, compute.settings().torch_device(), r.embed_batch_size)
        final = layout.vector_index
        with atomic_dir(final) as tmp:
            # Update a copy, then swap: the live index stays whole if this run dies.
            if vector_store.mode == "embedded" and final.exists():
                shutil.copytree(final, tmp, dirs_exist_ok=True)
            with vector_store.collection(r.collection, tmp) as collection:
                counts = sync_index(collection, chunks, embedder)
        per_doc = Counter(c["doc"] for c in chunks)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(final)),
                "collection": r.collection,
                "embedding_model": r.embedding_model,
                "vectors": counts["total"],
                "embedded_now": counts["added"],
                "deleted_now": counts["deleted"],
                "documents": len(per_doc),
            }
        )

    return [vector_index]
