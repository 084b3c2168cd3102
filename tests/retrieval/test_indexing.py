"""The vector index: incremental sync, one embedding model per collection."""

import pytest


def test_sync_index_is_incremental_and_refuses_mixed_models(tmp_path):
    from llama_index.core.embeddings import MockEmbedding

    from ragft_dagster.retrieval.indexing import IndexMismatchError, open_collection, sync_index

    def chunk(i: int) -> dict:
        return {"id": f"id{i}", "text": f"text {i}", "doc": "d.md", "heading_path": ["D"]}

    embedder = MockEmbedding(embed_dim=8)
    with open_collection("docs", path=tmp_path, embedding_model="model-a") as col:
        first = sync_index(col, [chunk(0), chunk(1), chunk(2)], embedder, "model-a")
        assert first == {"added": 3, "deleted": 0, "kept": 0, "total": 3, "dimension": 8}
        second = sync_index(col, [chunk(1), chunk(3)], embedder, "model-a")
        assert second == {"added": 1, "deleted": 2, "kept": 1, "total": 2, "dimension": 8}
        assert sorted(col.get(include=[])["ids"]) == ["id1", "id3"]
    mismatch = pytest.raises(IndexMismatchError, match="model-a.*model-b.*retrieval.collection")
    with open_collection("docs", path=tmp_path, embedding_model="model-b") as col, mismatch:
        sync_index(col, [chunk(1)], embedder, "model-b")


def test_sync_index_writes_more_chunks_than_one_chroma_batch(tmp_path):
    """A first index of ~700 documents (7,645 chunks, found by make bench-scale) is more than
    Chroma takes in one write; and removing them all is too."""
    from llama_index.core.embeddings import MockEmbedding

    from ragft_dagster.retrieval.indexing import open_collection, sync_index

    chunks = [
        {"id": f"id{i}", "text": f"t{i}", "doc": "d.md", "heading_path": []} for i in range(7645)
    ]
    embedder = MockEmbedding(embed_dim=4)
    with open_collection("docs", path=tmp_path) as col:
        assert sync_index(col, chunks, embedder)["total"] == 7645
        assert sync_index(col, chunks[:1], embedder)["deleted"] == 7644
