"""Contamination of the training Q&A by the benchmarks (Dagster-free): the multiple-choice
questions and, when the recipe has them, the open questions (``evaluation.open_questions``).

The published method scored its model on questions that overlapped its own training data. Three
detectors compare every training question with every benchmark question:

- ``exact``: the same question once case, punctuation and spacing are ignored;
- ``ngram``: the share of the benchmark question's word n-grams that occur in the training
  question (the n-gram overlap test of GPT-3 and lm-evaluation-harness, with n capped at the
  benchmark question's length because these questions are short);
- ``embedding``: cosine similarity of the two questions' embeddings, which catches paraphrases
  that share few words.

Every pair that any detector flags becomes one :class:`Finding` holding both texts and all three
scores, so a reviewer can see why a row was flagged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ragft_dagster.config.recipe import ContaminationRecipe
from ragft_dagster.data.benchmark import LETTERS, Question
from ragft_dagster.text import words

# The recipe section holds the defaults (and documents them); the core function shares them.
_DEFAULTS = ContaminationRecipe()

DETECTORS = ("exact", "ngram", "embedding")

# (texts) -> one vector per text, e.g. a llama-index embedding's get_text_embedding_batch
EmbedFn = Callable[[list[str]], Sequence[Sequence[float]]]


def normalise(text: str) -> str:
    """The text the exact detector compares: lower case, no punctuation, single spaces."""
    return " ".join(words(text))


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass(frozen=True)
class Finding:
    """One training row that resembles one benchmark question."""

    mcq_row: int
    """Row number of the question in the benchmark CSV (1 = first question)."""
    mcq_id: str
    mcq_question: str
    mcq_answer: str
    """The correct option's text."""
    train_id: str
    train_question: str
    train_answer: str
    doc: str
    chunk_id: str
    detectors: tuple[str, ...]
    """The detectors that flagged the pair, strongest evidence first."""
    exact: bool
    ngram: float
    """Share of the benchmark question's word n-grams found in the training question."""
    embedding: float | None
    """Cosine similarity of the two questions; None when the embedding detector is off."""
    benchmark: str = "mcq"
    """Which benchmark the question is from: ``mcq`` (``evaluation.questions``; ``mcq_row``
    is its row) or ``open`` (``evaluation.open_questions``; ``mcq_answer`` is the reference)."""

    @property
    def detector(self) -> str:
        return self.detectors[0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detectors": list(self.detectors), "detector": self.detector}


def ngram_containment(
    questions: list[Question], train_questions: list[str], n: int
) -> dict[tuple[int, int], float]:
    """Share of each benchmark question's word n-grams that occur in each training question.

    n is capped at a benchmark question's length, so a question shorter than n words counts
    only when all of it occurs verbatim.

    Args:
        questions: The benchmark questions.
        train_questions: The training questions.
        n: Words per n-gram.

    Returns:
        ``{(question index, training index): share}`` for every pair that shares an n-gram.
    """
    wanted: dict[int, list[tuple[int, set[tuple[str, ...]]]]] = defaultdict(list)
    for qi, q in enumerate(questions):
        tokens = words(q.question)
        if tokens:
            size = min(n, len(tokens))
            wanted[size].append((qi, _ngrams(tokens, size)))
    shares: dict[tuple[int, int], float] = {}
    for size, grams_of in wanted.items():
        # Inverted index of only the n-grams some benchmark question has: one pass over the rows.
        needed = set().union(*(g for _, g in grams_of))
        holders: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for ti, text in enumerate(train_questions):
            for gram in _ngrams(words(text), size) & needed:
                holders[gram].append(ti)
        for qi, grams in grams_of:
            hits = Counter(ti for gram in grams for ti in holders.get(gram, ()))
            for ti, count in hits.items():
                shares[(qi, ti)] = count / len(grams)
    return shares


def cosine_matrix(embed: EmbedFn, left: list[str], right: list[str]) -> Any:
    """Cosine similarities, ``left`` x ``right``, from one batched embedding call."""
    import numpy as np

    vectors = np.asarray(embed(left + right), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.maximum(norms, 1e-12)
    return vectors[: len(left)] @ vectors[len(left) :].T


def find_contamination(
    rows: list[dict[str, Any]],
    questions: list[Question],
    *,
    embed: EmbedFn | None = None,
    ngram: int = _DEFAULTS.ngram,
    ngram_threshold: float = _DEFAULTS.ngram_threshold,
    embedding_threshold: float | None = _DEFAULTS.embedding_threshold,
) -> list[Finding]:
    """Training rows whose question resembles a benchmark question, by three detectors.

    Args:
        rows: Training Q&A rows (``id``, ``question``, ``answer``, ``doc``, ``chunk_id``).
        questions: The benchmark questions (assets/training.py reads them: multiple-choice
            :class:`Question` objects and open questions; each needs ``row``, ``id``,
            ``question`` and an answer).
        embed: Embeds a list of texts (e.g. ``embedder.get_text_embedding_batch``); None turns
            the embedding detector off.
        ngram: Words per n-gram (capped at each benchmark question's length).
        ngram_threshold: Flag when at least this share of a benchmark question's n-grams occurs
            in the training question.
        embedding_threshold: Flag when the cosine similarity of the two questions reaches this;
            None turns the embedding detector off.

    Returns:
        One finding per flagged (benchmark question, training row) pair, in benchmark order,
        most similar first.
    """
    if not rows or not questions:
        return []
    train_questions = [r["question"] for r in rows]
    exact_index: dict[str, list[int]] = defaultdict(list)
    for ti, text in enumerate(train_questions):
        exact_index[normalise(text)].append(ti)
    exact = {
        (qi, ti)
        for qi, q in enumerate(questions)
        for ti in exact_index.get(normalise(q.question), ())
    }
    shares = ngram_containment(questions, train_questions, ngram)
    flagged = exact | {pair for pair, share in shares.items() if share >= ngram_threshold}
    cosine = None
    similar: set[tuple[int, int]] = set()
    if embed is not None and embedding_threshold is not None:
        cosine = cosine_matrix(embed, [q.question for q in questions], train_questions)
        qs, ts = (cosine >= embedding_threshold).nonzero()
        similar = {(int(qi), int(ti)) for qi, ti in zip(qs, ts, strict=True)}

    findings = []
    for qi, ti in flagged | similar:
        q, row = questions[qi], rows[ti]
        share = shares.get((qi, ti), 0.0)
        fired = {
            "exact": (qi, ti) in exact,
            "ngram": share >= ngram_threshold,
            "embedding": (qi, ti) in similar,
        }
        findings.append(
            Finding(
                mcq_row=q.row,
                mcq_id=q.id,
                mcq_question=q.question,
                mcq_answer=_answer(q),
                train_id=row["id"],
                train_question=row["question"],
                train_answer=row["answer"],
                doc=row.get("doc", ""),
                chunk_id=row.get("chunk_id", ""),
                detectors=tuple(d for d in DETECTORS if fired[d]),
                exact=fired["exact"],
                ngram=round(share, 4),
                embedding=None if cosine is None else round(float(cosine[qi, ti]), 4),
                benchmark="mcq" if isinstance(q, Question) else "open",
            )
        )
    findings.sort(
        key=lambda f: (f.benchmark, f.mcq_row, not f.exact, -f.ngram, -(f.embedding or 0.0))
    )
    return findings


def summarise(findings: list[Finding]) -> dict[str, int]:
    """Counts for metadata: flagged pairs per detector, contaminated rows, benchmark questions
    hit (multiple-choice and, when any is hit, open)."""
    counts = {f"{d}_matches": sum(d in f.detectors for f in findings) for d in DETECTORS}
    counts["contaminated_rows"] = len({f.train_id for f in findings})
    counts["mcq_questions_hit"] = len({f.mcq_id for f in findings if f.benchmark == "mcq"})
    open_hit = {f.mcq_id for f in findings if f.benchmark == "open"}
    if open_hit:
        counts["open_questions_hit"] = len(open_hit)
    return counts


def _answer(q: Any) -> str:
    """A benchmark question's answer: the correct option's text, or an open question's
    reference."""
    return q.options[LETTERS.index(q.correct)] if isinstance(q, Question) else q.answer
