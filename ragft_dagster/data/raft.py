"""Training with retrieval (RAFT, Zhang et al. 2024), Dagster-free.

The published method trains closed-book and serves with retrieval, so the model never learns to
read the context it is shown. With retrieval training, each training question carries the
chunks the index retrieves for it, shown exactly as the benchmark's RAG rows and ``ragft ask``
show them (``evaluation.context_template``, chunks joined by a blank line): the question's own
(gold) chunk with probability ``gold_probability``, among distractors, the retrieved chunks
that are not the gold one; otherwise distractors only, so the model also learns to answer what
the context does not hold. Optionally the answer first quotes its evidence, the sentence of the
gold chunk that shares most words with it.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from typing import Any

from ragft_dagster.text import content_words

# queries -> each query's ranked hits ({"id", "text", ...}), e.g. Retriever.retrieve_many
RetrieveMany = Callable[[list[str]], list[list[dict[str, Any]]]]

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*\[(])")


def evidence_sentence(chunk: str, answer: str) -> str | None:
    """The chunk's sentence sharing most content words with the answer (None if none does)."""
    wanted = content_words(answer)
    best, score = None, 0
    for sentence in _SENTENCE.split(chunk):
        sentence = " ".join(sentence.split())
        shared = len(content_words(sentence) & wanted)
        if shared > score:
            best, score = sentence, shared
    return best


def add_retrieved_context(
    rows: list[dict[str, Any]],
    retrieve_many: RetrieveMany,
    chunk_text: dict[str, str],
    *,
    chunks: int,
    gold_probability: float,
    seed: int,
    quote_evidence: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Give every row the chunks its training prompt shows (``context``: ``[{"id", "text"}]``).

    Args:
        rows: Q&A rows (``id``, ``question``, ``answer``, ``chunk_id``).
        retrieve_many: The index's retriever, ranked deep enough for ``chunks`` + 1 hits.
        chunk_text: Chunk texts by id (the gold chunk need not be retrieved to be shown).
        chunks: Chunks per prompt (``retrieval.top_k``, as the RAG cells show).
        gold_probability: Share of rows whose prompt holds the gold chunk.
        seed: Salt of the per-row draw (stable: a row keeps its draw when others change).
        quote_evidence: Prefix the answer with the gold chunk's best-matching sentence
            (rows whose prompt holds the gold chunk only).

    Returns:
        (new rows, figures: rows with the gold chunk shown, with it retrieved in the top
        ``chunks`` by itself, with a quoted answer).
    """
    hits_per_row = retrieve_many([r["question"] for r in rows])
    out: list[dict[str, Any]] = []
    shown_gold = retrieved_gold = quoted = 0
    for row, hits in zip(rows, hits_per_row, strict=True):
        gold = row.get("chunk_id")
        draw = hashlib.sha256(f"{seed}\n{row['id']}".encode()).digest()
        rng = random.Random(draw)
        retrieved_gold += any(h["id"] == gold for h in hits[:chunks])
        distractors = [{"id": h["id"], "text": h["text"]} for h in hits if h["id"] != gold]
        gold_text = chunk_text.get(gold) if gold is not None else None
        with_gold = gold_text is not None and rng.random() < gold_probability
        if with_gold and gold_text is not None:
            context = [{"id": gold, "text": gold_text}, *distractors[: chunks - 1]]
        else:
            context = distractors[:chunks]
        rng.shuffle(context)
        answer = row["answer"]
        if quote_evidence and with_gold and gold_text is not None:
            evidence = evidence_sentence(gold_text, answer)
            if evidence:
                answer = f'The docs say: "{evidence}"\n\n{answer}'
                quoted += 1
        shown_gold += with_gold
        out.append({**row, "answer": answer, "context": context})
    figures = {
        "rows": len(rows),
        "gold_shown": shown_gold,
        "gold_retrieved_in_top_k": retrieved_gold,
        "quoted_answers": quoted,
    }
    return out, figures
