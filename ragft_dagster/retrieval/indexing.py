"""The RAG index: llama-index over chromadb, with our own embeddings (Dagster-free).

Chroma's default embedding function is never used (it would download a model): every vector is
computed by the recipe's embedding model through llama-index. Updates are incremental: only new
chunk ids are embedded, vectors of chunks that no longer exist are deleted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

INDEX_METADATA = "ragft_index.json"
MODEL_KEY = "ragft_embedding_model"


def load_embedder(model_dir: str, device: str = "cpu", batch_size: int = 32) -> Any:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=model_dir, device=device, embed_batch_size=batch_size)


def retrieval_embedder(
    retrieval: Any, artifact_root: Path, recipe_root: Path, device: str = "cpu"
) -> Any:
    """The embedding model of a recipe's ``retrieval`` section (its reference resolved, its
    ``embed_batch_size``): the one way every stage, ``ragft ask`` and the benchmarks get it."""
    from ragft_dagster.models.refs import resolve_model_ref

    model_dir = resolve_model_ref(retrieval.embedding_model, artifact_root, recipe_root)
    return load_embedder(model_dir, device, retrieval.embed_batch_size)


def length_sorted_embed(embedder: Any) -> Any:
    """``embedder.get_text_embedding_batch`` with the texts taken longest first, the vectors
    returned in the order given. The embedder cuts the texts into batches of its
    ``embed_batch_size`` and each batch is padded to its longest text: 300-token chunks mixed
    with 20-token questions made most of a batch padding (the quickstart's grounding check
    embeds both)."""

    def embed(texts: list[str]) -> list[list[float]]:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = embedder.get_text_embedding_batch([texts[i] for i in order])
        out: list[list[float]] = [[] for _ in texts]
        for i, vector in zip(order, vectors, strict=True):
            out[i] = vector
        return out

    return embed


class IndexMismatchError(ValueError):
    """The collection holds vectors of another embedding model."""


@contextmanager
def open_collection(
    name: str,
    *,
    path: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    embedding_model: str | None = None,
) -> Iterator[Any]:
    """A chroma collection from an embedded store at ``path`` or a server at host:port.

    A new collection records ``embedding_model`` in its metadata (see :func:`sync_index`).
    """
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    if path is not None:
        client = chromadb.PersistentClient(path=str(path), settings=settings)
    else:
        client = chromadb.HttpClient(host=host or "127.0.0.1", port=port or 8000, settings=settings)
    try:
        # embedding_function=None: vectors always come from our embedder.
        metadata = {"hnsw:space": "cosine"}
        if embedding_model:
            metadata[MODEL_KEY] = embedding_model
        yield client.get_or_create_collection(name, embedding_function=None, metadata=metadata)
    finally:
        # Chroma caches one system per path in-process; drop it so a renamed or replaced
        # directory is reopened from disk next time.
        SharedSystemClient.clear_system_cache()


def id_differences(collection: Any, ids: set[str]) -> tuple[list[str], list[str]]:
    """(missing, stale): the ``ids`` the collection lacks, and the ids it holds beyond them."""
    held = set(collection.get(include=[])["ids"])
    return sorted(ids - held), sorted(held - ids)


WRITE_BATCH = 1000
"""Records per Chroma write (its limit is a few thousand)."""


def sync_index(
    collection: Any, chunks: list[dict[str, Any]], embedder: Any, embedding_model: str = ""
) -> dict[str, int]:
    """Make the collection hold exactly ``chunks``: embed new ids, delete vanished ones.

    Args:
        collection: A chroma collection.
        chunks: Every current chunk record (``id``, ``text``, ``doc``, ``heading_path``).
        embedder: A llama-index embedding model.
        embedding_model: The recipe's name for it; a collection built with another is refused.

    Returns:
        Counts: added, deleted, kept, total, dimension.

    Raises:
        IndexMismatchError: The collection holds vectors of another embedding model.
    """
    from llama_index.core.schema import BaseNode, TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    built_with = (collection.metadata or {}).get(MODEL_KEY)
    if embedding_model and built_with and built_with != embedding_model and collection.count():
        raise IndexMismatchError(
            f"collection {collection.name!r} holds vectors of {built_with}, but the recipe now "
            f"names {embedding_model}: vectors of two models cannot be mixed. Set "
            "retrieval.collection to a new name (or delete the index directory) and re-materialize"
        )

    current = {c["id"]: c for c in chunks}
    missing, stale = id_differences(collection, set(current))
    new = [current[i] for i in missing]
    # Chroma refuses a write of more than its max batch size (5,461 records in chromadb 1.5):
    # a first index of ~700 documents crosses it, so writes go in slices.
    for i in range(0, len(stale), WRITE_BATCH):
        collection.delete(ids=stale[i : i + WRITE_BATCH])
    store = ChromaVectorStore(chroma_collection=collection)
    for i in range(0, len(new), WRITE_BATCH):
        part = new[i : i + WRITE_BATCH]
        vectors = embedder.get_text_embedding_batch([c["text"] for c in part])
        nodes: list[BaseNode] = [
            TextNode(
                id_=c["id"],
                text=c["text"],
                embedding=vec,
                metadata={"doc": c["doc"], "heading": " > ".join(c["heading_path"])},
            )
            for c, vec in zip(part, vectors, strict=True)
        ]
        store.add(nodes)
    sample = collection.get(limit=1, include=["embeddings"])["embeddings"]
    return {
        "added": len(new),
        "deleted": len(stale),
        "kept": len(current) - len(new),
        "total": collection.count(),
        "dimension": len(sample[0]) if sample is not None and len(sample) else 0,
    }


def all_chunks(collection: Any) -> list[dict[str, Any]]:
    """Every chunk the collection holds: id, text and document."""
    got = collection.get(include=["documents", "metadatas"])
    return [
        {"id": i, "text": text or "", "doc": (meta or {}).get("doc", "")}
        for i, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
    ]


class Retriever:
    """Top-k retrieval of chunks for a question through llama-index."""

    def __init__(self, collection: Any, embedder: Any, top_k: int):
        from llama_index.core import VectorStoreIndex
        from llama_index.vector_stores.chroma import ChromaVectorStore

        index = VectorStoreIndex.from_vector_store(
            ChromaVectorStore(chroma_collection=collection), embed_model=embedder
        )
        self._embedder = embedder
        self._retriever = index.as_retriever(similarity_top_k=top_k)

    @staticmethod
    def _hits(nodes: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "id": hit.node.node_id,
                "text": hit.node.get_content(),
                "doc": hit.node.metadata.get("doc", ""),
                "heading": hit.node.metadata.get("heading", ""),
                "score": float(hit.score or 0.0),
            }
            for hit in nodes
        ]

    def retrieve(self, query: str) -> list[dict[str, Any]]:
        return self._hits(self._retriever.retrieve(query))

    def retrieve_many(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        """:meth:`retrieve` for many queries, their embeddings computed in one batch."""
        from llama_index.core.schema import QueryBundle

        embed_queries = getattr(self._embedder, "_embed", None)  # HuggingFaceEmbedding's batch
        if embed_queries is None or not queries:
            return [self.retrieve(q) for q in queries]
        vectors = embed_queries(list(queries), prompt_name="query")
        return [
            self._hits(self._retriever.retrieve(QueryBundle(q, embedding=list(v))))
            for q, v in zip(queries, vectors, strict=True)
        ]


def retrieval_quality(
    retriever: Retriever, questions: list[tuple[str, str]], k: int
) -> dict[str, float | int]:
    """How well retrieval finds the chunk a question was written from.

    Args:
        retriever: Retrieves at least ``k`` chunks (ranks beyond ``k`` count for MRR only).
        questions: ``(question, source chunk id)`` pairs, e.g. held-out synthetic questions.
        k: The recipe's top-k.

    Returns:
        ``questions``, ``hit_at_1``, ``hit_at_k`` (share whose source chunk is in the top 1 / k)
        and ``mrr`` (mean reciprocal rank of the source chunk; 0 when it is not retrieved).
    """
    ranks = []
    found = retriever.retrieve_many([q for q, _ in questions])
    for (_, chunk_id), hits in zip(questions, found, strict=True):
        ids = [h["id"] for h in hits]
        ranks.append(ids.index(chunk_id) + 1 if chunk_id in ids else None)
    n = len(ranks)
    if not n:
        return {"questions": 0, "hit_at_1": float("nan"), "hit_at_k": float("nan"), "mrr": 0.0}
    return {
        "questions": n,
        "hit_at_1": sum(1 for r in ranks if r == 1) / n,
        "hit_at_k": sum(1 for r in ranks if r is not None and r <= k) / n,
        "mrr": sum(1 / r for r in ranks if r is not None) / n,
    }
