"""The vector index (llama-index over Chroma) and retrieval."""
