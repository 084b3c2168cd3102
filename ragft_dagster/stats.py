"""Paired statistics for the benchmark (Dagster-free).

Every cell answers the same questions, so two cells are compared question by question: the exact
McNemar test on the discordant pairs, a paired bootstrap interval of the accuracy difference
(resampling questions, never reruns), and the smallest difference this many questions could
detect. A question's credit may be fractional: a top choice tied among k options counts 1/k
(the expected accuracy of a random tie-break), so discordant pairs are expected counts and the
McNemar p is its expectation over the tie-breaks; without ties both are the usual ones.
Reruns of the same questions are not independent evidence; only more questions are.
Testing many pairs makes some look significant by chance: the comparisons an analysis is about
form one family, Holm-corrected together, and every other pair is labelled exploratory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations
from typing import Any

Z_95 = 1.959964
Z_80 = 0.841621


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    Args:
        only_a: Questions the first cell got right and the second wrong.
        only_b: Questions the second cell got right and the first wrong.

    Returns:
        The two-sided exact binomial test (scipy ``binomtest``) of ``only_a`` successes in
        ``only_a + only_b`` trials at 1/2: ``min(1, 2 * P(X <= min(only_a, only_b)))``; 1.0 when
        there are no discordant questions.
    """
    from scipy.stats import binomtest

    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(binomtest(only_a, n, 0.5).pvalue)


def mcnemar_one_sided(only_a: int, only_b: int) -> float:
    """Exact one-sided McNemar p-value for "a is better than b": ``P(X >= only_a)`` for
    ``X ~ Binomial(only_a + only_b, 1/2)`` (scipy ``binomtest``, alternative greater); 1.0
    when there are no discordant questions."""
    from scipy.stats import binomtest

    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(binomtest(only_a, n, 0.5, alternative="greater").pvalue)


def credit(value: Any) -> float:
    """A record's correctness as credit in [0, 1]: a bool (API models, records written before
    ties were split) as 0 or 1, a number as itself."""
    return float(value)


def whole(value: float) -> int | float:
    """``value`` as an int when it is whole (counts without ties stay integers)."""
    return int(value) if float(value).is_integer() else float(value)


def discordant_distribution(a: list[float], b: list[float]) -> dict[tuple[int, int], float]:
    """The distribution of the discordant counts (only a right, only b right) when every tied
    question is decided by an independent random tie-break in each cell.

    Args:
        a: Per-question credit of the first cell (1/k where its top choice ties k options, the
            correct one among them).
        b: The same questions, second cell.

    Returns:
        ``{(only_a, only_b): probability}``; one entry with probability 1 without ties.
    """
    if len(a) != len(b):
        raise ValueError("paired samples must be of the same length")
    dist = {(0, 0): 1.0}
    for x, y in zip(a, b, strict=True):
        p_a, p_b = x * (1 - y), y * (1 - x)  # a right and b wrong; b right and a wrong
        if p_a in (0.0, 1.0) and p_b in (0.0, 1.0):
            step = (int(p_a), int(p_b))
            dist = {(i + step[0], j + step[1]): p for (i, j), p in dist.items()}
            continue
        nxt: dict[tuple[int, int], float] = {}
        for (i, j), p in dist.items():
            for key, q in (((i + 1, j), p_a), ((i, j + 1), p_b), ((i, j), 1 - p_a - p_b)):
                if q > 0:
                    nxt[key] = nxt.get(key, 0.0) + p * q
        dist = nxt
    return dist


def expected_p(
    a: list[float], b: list[float], test: Callable[[int, int], float] | None = None
) -> float:
    """A discordance test's p-value averaged over the random tie-breaks of both cells.

    Args:
        a: Per-question credit of the first cell.
        b: The same questions, second cell.
        test: ``p(only_a, only_b)``; the two-sided exact McNemar test by default.

    Returns:
        ``E[test(only_a, only_b)]``; exactly ``test`` of the observed counts without ties.
    """
    test = test or mcnemar_exact
    return sum(p * test(i, j) for (i, j), p in discordant_distribution(a, b).items())


def paired_bootstrap_ci(
    a: list[float], b: list[float], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of accuracy(a) - accuracy(b), resampling questions with replacement.

    Args:
        a: Per-question correctness (credit in [0, 1]) of the first cell.
        b: The same questions, second cell (same order).
        n_boot: Bootstrap resamples.
        seed: For a reproducible interval.
        level: Coverage.
    """
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError("paired samples must be non-empty and of the same length")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    means = diff[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def minimum_detectable_difference(
    n: int, discordant: float, z_alpha: float = Z_95, z_power: float = Z_80
) -> float:
    """Smallest accuracy difference a paired (McNemar) test of ``n`` questions detects with 80%
    power at the 5% level, given the share of questions on which the two cells disagree.

    Solves ``n = (z_a * sqrt(p_d) + z_b * sqrt(p_d - d^2))^2 / d^2`` for ``d`` (Connor, 1987).

    Args:
        n: Questions.
        discordant: Share of questions answered correctly by exactly one of the two cells.

    Returns:
        The difference, or NaN when no difference possible at this discordance (``|d| <= p_d``)
        is detectable.
    """
    p_d = min(max(discordant, 1.0 / n), 1.0)

    def needed(d: float) -> float:
        return (z_alpha * math.sqrt(p_d) + z_power * math.sqrt(max(p_d - d * d, 0.0))) ** 2 / (
            d * d
        )

    lo, hi = 1e-6, p_d
    if needed(hi) > n:
        return float("nan")
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if needed(mid) > n else (lo, mid)
    return hi


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values of one family of tests (step-down Bonferroni).

    The smallest p is multiplied by the family's size m, the next by m - 1, and so on, each kept
    at least as large as the one before and at most 1; rejecting where the adjusted p is below
    alpha keeps the chance of any false positive in the family at most alpha.

    Args:
        p_values: The family's raw p-values, in any order.

    Returns:
        The adjusted p-values, in the same order.
    """
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(p) for p in multipletests(p_values, method="holm")[1]]


def paired_comparisons(
    cells: dict[str, dict[str, float]],
    alpha: float = 0.05,
    n_boot: int = 10_000,
    family: list[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Pairs of cells compared on the questions both answered.

    Args:
        cells: ``{cell name: {question id: credit}}`` (a bool, or 1/k for a correct option
            tied with k - 1 others, 0 for a wrong one).
        alpha: Significance level for the verdict.
        n_boot: Bootstrap resamples.
        family: The comparisons the analysis is about, each ``(a, b)`` oriented as given and
            Holm-corrected together; every other pair is exploratory (p uncorrected). None puts
            every pair in the family. Pairs naming a missing cell are left out.

    Returns:
        The family's rows, then the exploratory ones. Each: accuracies, difference, discordant
        counts (expected counts where ties split the credit), McNemar p (its expectation over
        the tie-breaks), bootstrap CI, the minimum detectable difference, ``family``
        (``headline`` or ``exploratory``), ``holm_p`` (None when exploratory) and
        ``significant`` (``holm_p < alpha`` in the family, the raw ``p < alpha`` otherwise).
    """
    pairs = list(combinations(cells, 2)) if family is None else family
    headline = [(a, b) for a, b in dict.fromkeys(pairs) if a in cells and b in cells]
    chosen = {frozenset(p) for p in headline}
    others = [p for p in combinations(cells, 2) if frozenset(p) not in chosen]
    rows = []
    for kind, group in (("headline", headline), ("exploratory", others)):
        compared = [r for a, b in group if (r := _paired_row(cells, a, b, n_boot)) is not None]
        adjusted = holm_adjust([r["mcnemar_p"] for r in compared]) if kind == "headline" else []
        for i, row in enumerate(compared):
            row["family"] = kind
            row["holm_p"] = adjusted[i] if adjusted else None
            row["significant"] = (adjusted[i] if adjusted else row["mcnemar_p"]) < alpha
        rows += compared
    return rows


def paired_credit(
    a: dict[str, float], b: dict[str, float]
) -> tuple[list[str], list[float], list[float]]:
    """(question ids both cells answered, in sorted order; a's credit; b's credit)."""
    shared = sorted(set(a) & set(b))
    return shared, [credit(a[q]) for q in shared], [credit(b[q]) for q in shared]


def _paired_row(
    cells: dict[str, dict[str, float]], name_a: str, name_b: str, n_boot: int
) -> dict[str, Any] | None:
    shared, a, b = paired_credit(cells[name_a], cells[name_b])
    if not shared:
        return None
    only_a = whole(sum(x * (1 - y) for x, y in zip(a, b, strict=True)))
    only_b = whole(sum(y * (1 - x) for x, y in zip(a, b, strict=True)))
    n = len(shared)
    lo, hi = paired_bootstrap_ci(a, b, n_boot=n_boot)
    return {
        "a": name_a,
        "b": name_b,
        "n": n,
        "accuracy_a": sum(a) / n,
        "accuracy_b": sum(b) / n,
        "difference": (sum(a) - sum(b)) / n,
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": expected_p(a, b),
        "diff_ci_low": lo,
        "diff_ci_high": hi,
        "mde": minimum_detectable_difference(n, (only_a + only_b) / n),
    }


def comparisons_markdown(rows: list[dict[str, Any]], metric: str = "acc") -> str:
    """The paired comparisons as two tables: the headline family with raw and Holm-adjusted p
    (verdict from the adjusted one), then the exploratory pairs, uncorrected and labelled so."""
    headline = [r for r in rows if r.get("family", "headline") == "headline"]
    exploratory = [r for r in rows if r.get("family") == "exploratory"]
    out = ""
    if headline:
        out += (
            f"**Headline comparisons** ({len(headline)}, Holm-corrected together; the verdict "
            "is from the adjusted p):\n\n" + _comparisons_head(metric, holm=True)
        )
        for r in headline:
            verdict = "significant" if r["significant"] else "not significant"
            out += _comparison_line(r, f"{r['holm_p']:.3f} | ", verdict)
    if exploratory:
        out += (
            f"\n**Exploratory comparisons** ({len(exploratory)}, every other pair; p not "
            "corrected for multiplicity: a small p here is a lead to test on new questions, not "
            "a finding):\n\n" + _comparisons_head(metric, holm=False)
        )
        for r in exploratory:
            verdict = "p < 0.05 uncorrected" if r["significant"] else "not significant"
            out += _comparison_line(r, "", verdict)
    if any(not float(r[k]).is_integer() for r in rows for k in ("only_a", "only_b")):
        out += (
            "\nA question whose top choice is tied among k options counts 1/k correct (the "
            "expected accuracy of a random tie-break): its discordant counts are expected counts, "
            "and the McNemar p is averaged over the tie-breaks of both cells.\n"
        )
    return out


def _comparisons_head(metric: str, holm: bool) -> str:
    return (
        f"| A vs B | n | {metric} A | {metric} B | A − B [95% bootstrap CI] | only A / only B "
        f"| exact McNemar p | {'Holm-adjusted p | ' if holm else ''}min. detectable diff. "
        f"| verdict |\n|---|---:|---:|---:|---|---:|---:|{'---:|' if holm else ''}---:|---|\n"
    )


def _comparison_line(r: dict[str, Any], holm: str, verdict: str) -> str:
    return (
        f"| {r['a']} vs {r['b']} | {r['n']} | {100 * r['accuracy_a']:.1f}% | "
        f"{100 * r['accuracy_b']:.1f}% | {100 * r['difference']:+.1f} pts "
        f"[{100 * r['diff_ci_low']:+.1f}, {100 * r['diff_ci_high']:+.1f}] | "
        f"{count_text(r['only_a'])} / {count_text(r['only_b'])} | {r['mcnemar_p']:.3f} | {holm}"
        f"{_pts(r['mde'])} | {verdict} |\n"
    )


def count_text(value: float) -> str:
    """A count as text: whole counts as integers, expected counts (ties) with one decimal."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _pts(value: float) -> str:
    return "n/a (too few disagreements)" if math.isnan(value) else f"{100 * value:.1f} pts"


def mde_sentence(n: int, discordant: float = 0.3) -> str:
    """A one-line reading aid for the report."""
    return (
        f"With {n} questions, a paired comparison detects (80% power, 5% level) a difference of "
        f"{_pts(minimum_detectable_difference(n, discordant))} when the two cells disagree on "
        f"{100 * discordant:.0f}% of the questions; smaller true differences usually come out "
        '"not significant" in the exact McNemar test below. Reruns of the same questions add '
        "no independent evidence; only more questions do."
    )


def sampled_cell(samples: dict[str, list[bool]]) -> dict[str, Any]:
    """Accuracy of a sampled cell (``rounds`` answers per question) with two intervals.

    ``naive``: every answer counted as an independent observation (n x rounds of them), which
    is what a t-test over reruns assumes. ``question``: the sample is the n questions; each
    contributes its mean over rounds, and the standard error is that of the n means. Reruns of
    the same question are correlated, so the honest interval is the question-level one;
    ``design_effect`` is the variance ratio and ``effective_n`` the number of independent
    answers the n x rounds are worth.

    Args:
        samples: ``{question id: [correct?] per round}`` (every question with the same rounds).
    """
    import numpy as np

    per_q = np.array([np.mean(v) for v in samples.values()], dtype=float)
    n = len(per_q)
    rounds = len(next(iter(samples.values()))) if samples else 0
    total = n * rounds
    acc = float(per_q.mean()) if n else float("nan")
    se_naive = math.sqrt(acc * (1 - acc) / total) if total else float("nan")
    se_q = float(per_q.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    deff = (se_q / se_naive) ** 2 if se_naive > 0 else float("nan")
    return {
        "questions": n,
        "rounds": rounds,
        "answers": total,
        "accuracy": acc,
        "se_naive": se_naive,
        "se_question": se_q,
        "naive_ci_low": max(0.0, acc - Z_95 * se_naive),
        "naive_ci_high": min(1.0, acc + Z_95 * se_naive),
        "question_ci_low": max(0.0, acc - Z_95 * se_q),
        "question_ci_high": min(1.0, acc + Z_95 * se_q),
        "design_effect": deff,
        "effective_n": total / deff if deff and not math.isnan(deff) else float("nan"),
    }


def sampled_pair(a: dict[str, list[bool]], b: dict[str, list[bool]]) -> dict[str, Any]:
    """Two sampled cells compared as the published work did and as the design allows.

    ``naive_p``: Welch's t-test over all n x rounds answers of each cell as independent samples
    (the published test). ``question_p``: a paired t-test over the n questions of the
    per-question mean accuracies (reruns averaged within a question first).
    """
    import numpy as np
    from scipy import stats as sps

    shared = sorted(set(a) & set(b))
    if not shared:
        nan = float("nan")
        return {"questions": 0, "difference": nan, "naive_p": nan, "question_p": nan}
    flat_a = np.array([x for q in shared for x in a[q]], dtype=float)
    flat_b = np.array([x for q in shared for x in b[q]], dtype=float)
    mean_a = np.array([np.mean(a[q]) for q in shared], dtype=float)
    mean_b = np.array([np.mean(b[q]) for q in shared], dtype=float)
    naive = sps.ttest_ind(flat_a, flat_b, equal_var=False).pvalue
    diffs = mean_a - mean_b
    question = (
        1.0
        if np.allclose(diffs, diffs[0]) and diffs[0] == 0
        else sps.ttest_rel(mean_a, mean_b).pvalue
    )
    return {
        "questions": len(shared),
        "difference": float(mean_a.mean() - mean_b.mean()),
        "naive_p": float(naive) if not math.isnan(naive) else 1.0,
        "question_p": float(question) if not math.isnan(question) else 1.0,
    }


def wilson_interval(correct: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound at small n and near 0 or 1), from
    statsmodels ``proportion_confint(method="wilson")``; ``correct`` may be fractional (credit
    summed over questions with split ties)."""
    from scipy.stats import norm
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return (float("nan"), float("nan"))
    low, high = proportion_confint(correct, n, alpha=2 * norm.sf(z), method="wilson")
    # a bound at 0% or 100% may miss by a rounding error
    return (max(0.0, float(low)), min(1.0, float(high)))


def is_binary(values: list[float]) -> bool:
    """Whether every value is 0 or 1 (a verdict, an exact match) rather than a graded score."""
    return all(v in (0.0, 1.0) for v in values)


def mean_interval(
    values: list[float], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """A per-question score's mean with its 95% interval, the questions the unit: the Wilson
    interval for 0/1 scores, else the percentile bootstrap of the mean (resampling
    questions).

    Returns:
        (mean, low, high); NaNs without values.
    """
    import numpy as np

    if not values:
        nan = float("nan")
        return nan, nan, nan
    mean = float(np.mean(values))
    if is_binary(values):
        low, high = wilson_interval(sum(values), len(values))
        return mean, low, high
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(n_boot, len(data)))].mean(axis=1)
    tail = (1 - level) / 2
    return mean, float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def wilcoxon_p(a: list[float], b: list[float], alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of paired scores (scipy; exact for small samples without
    ties, else the normal approximation; zero differences dropped, Wilcoxon's own rule); 1.0
    when every pair is equal."""
    from scipy.stats import wilcoxon

    if all(x == y for x, y in zip(a, b, strict=True)):
        return 1.0
    return float(wilcoxon(a, b, alternative=alternative).pvalue)


def continuous_mdd(diffs: list[float], z_alpha: float = Z_95, z_power: float = Z_80) -> float:
    """Smallest mean difference of a paired continuous score that this many questions detect
    with 80% power at the 5% level (two-sided), from the observed spread of the per-question
    differences: ``(z_a + z_b) * sd / sqrt(n)`` (the paired t-test's normal approximation;
    Wilcoxon's efficiency relative to it is 0.955 for normal differences, higher for heavy
    tails). NaN when the differences do not vary (nothing to scale by)."""
    import numpy as np

    n = len(diffs)
    if n < 2:
        return float("nan")
    sd = float(np.std(diffs, ddof=1))
    return (z_alpha + z_power) * sd / math.sqrt(n) if sd > 0 else float("nan")


def score_comparisons(
    cells: dict[str, dict[str, float]],
    family: list[tuple[str, str]],
    *,
    alpha: float = 0.05,
    n_boot: int = 10_000,
) -> list[dict[str, Any]]:
    """The family's paired comparisons of a per-question score, Holm-corrected together.

    0/1 scores (verdicts, exact match) get the exact McNemar test and its minimum detectable
    difference; graded scores (F1, ROUGE-L, similarity) the Wilcoxon signed-rank test and the
    paired t approximation of it (:func:`continuous_mdd`); both the paired bootstrap interval of
    the mean difference. Questions missing in either cell (an unreadable verdict) are left out
    of that pair.

    Args:
        cells: ``{cell: {question id: score}}``.
        family: ``(a, b)`` pairs, read "a vs. b"; pairs naming a missing cell are left out.
        alpha: Significance level of the verdict (on the Holm-adjusted p).
        n_boot: Bootstrap resamples.

    Returns:
        One row per pair: ``n``, ``mean_a``, ``mean_b``, ``difference``, its CI, ``test``,
        ``p``, ``holm_p``, ``mde`` and ``significant``; for McNemar also ``only_a``/``only_b``.
    """
    rows = []
    for a, b in dict.fromkeys(family):
        if a not in cells or b not in cells:
            continue
        shared, x, y = paired_credit(cells[a], cells[b])
        if not shared:
            continue
        n = len(shared)
        lo, hi = paired_bootstrap_ci(x, y, n_boot=n_boot)
        row: dict[str, Any] = {
            "a": a,
            "b": b,
            "n": n,
            "mean_a": sum(x) / n,
            "mean_b": sum(y) / n,
            "difference": (sum(x) - sum(y)) / n,
            "diff_ci_low": lo,
            "diff_ci_high": hi,
        }
        if is_binary(x) and is_binary(y):
            only_a = int(sum(p * (1 - q) for p, q in zip(x, y, strict=True)))
            only_b = int(sum(q * (1 - p) for p, q in zip(x, y, strict=True)))
            row.update(
                test="exact McNemar",
                only_a=only_a,
                only_b=only_b,
                p=mcnemar_exact(only_a, only_b),
                mde=minimum_detectable_difference(n, (only_a + only_b) / n),
            )
        else:
            row.update(
                test="Wilcoxon signed-rank",
                p=wilcoxon_p(x, y),
                mde=continuous_mdd([p - q for p, q in zip(x, y, strict=True)]),
            )
        rows.append(row)
    adjusted = holm_adjust([r["p"] for r in rows])
    for row, p in zip(rows, adjusted, strict=True):
        row["holm_p"] = p
        row["significant"] = p < alpha
    return rows
