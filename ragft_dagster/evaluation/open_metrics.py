"""Reference-based metrics of an open answer (Dagster-free).

- ``exact_match`` and ``token_f1``: as SQuAD defines them (its evaluation script, v1.1 and
  v2.0): both texts lower-cased, punctuation removed, the articles a/an/the removed, whitespace
  collapsed; exact match compares the normalised strings, F1 is the harmonic mean of the
  precision and recall of the normalised tokens (a multiset: a word counted as often as both
  texts share it). An empty text matches only an empty text (F1 1 when both are empty, else 0).
- ``rouge_l``: the F-measure of ROUGE-L (longest common subsequence) from Google's
  ``rouge-score`` package, its default tokenizer, no stemming.
- ``similarity``: cosine similarity of the answer's and the reference's embeddings with the
  recipe's embedding model (``retrieval.embedding_model``, the one retrieval uses).
- ``coverage`` (RAG cells): the share of the answer's content words (function words dropped)
  that the retrieved chunks contain: how much of the answer the context could support.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ragft_dagster.text import content_words

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalise_answer(answer) == normalise_answer(reference))


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's token F1 of the normalised texts (1.0 when both are empty, 0.0 when one is)."""
    said, wanted = normalise_answer(answer).split(), normalise_answer(reference).split()
    if not said or not wanted:
        return float(said == wanted)
    shared = sum((Counter(said) & Counter(wanted)).values())
    if not shared:
        return 0.0
    precision, recall = shared / len(said), shared / len(wanted)
    return 2 * precision * recall / (precision + recall)


_ROUGE: Any = None


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (``rouge-score``; its tokenizer lower-cases and keeps [a-z0-9])."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_ROUGE.score(reference, answer)["rougeL"].fmeasure)


def coverage(answer: str, chunks: Sequence[str]) -> float | None:
    """Share of the answer's content words that occur in the chunks; None when the answer has
    none (an empty or all-function-word answer supports nothing to check)."""
    said = content_words(answer)
    if not said:
        return None
    held: set[str] = set()
    for text in chunks:
        held |= content_words(text)
    return len(said & held) / len(said)


EmbedFn = Callable[[list[str]], Sequence[Sequence[float]]]


def similarities(embed: EmbedFn, answers: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each answer with its reference, from one batched embedding call;
    an empty answer scores 0.0 (it says nothing)."""
    import numpy as np

    if not answers:
        return []
    vectors = np.asarray(embed(list(answers) + list(references)), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    n = len(answers)
    cos = (vectors[:n] * vectors[n:]).sum(axis=1)
    return [float(c) if a.strip() else 0.0 for c, a in zip(cos, answers, strict=True)]


def reference_scores(answer: str, reference: str) -> dict[str, float]:
    """Exact match, token F1 and ROUGE-L of one answer."""
    return {
        "exact_match": exact_match(answer, reference),
        "token_f1": token_f1(answer, reference),
        "rouge_l": rouge_l(answer, reference),
    }
