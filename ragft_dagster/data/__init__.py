"""Documents, chunks, synthetic Q&A, contamination checks and the skill sets: the training and
retrieval data."""
