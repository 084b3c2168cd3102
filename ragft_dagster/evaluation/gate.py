"""The release gate: does the fine-tuned model beat the base model on the benchmark, without
forgetting more than a margin of its general capability? Decided from the per-question scores,
the same records the report reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragft_dagster.evaluation.report import METRICS
from ragft_dagster.stats import (
    count_text,
    credit,
    expected_p,
    mcnemar_one_sided,
    paired_comparisons,
    paired_credit,
)


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]
    """Why it failed (empty when it passed)."""
    figures: dict[str, Any] = field(default_factory=dict)
    """The numbers behind the decision, flat (asset check metadata)."""

    def summary(self) -> str:
        return "passed: " + self.figures["docs_verdict"] if self.passed else "; ".join(self.reasons)


def _correct(records: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """Per-question credit (1/k for a correct option tied with k - 1 others)."""
    key = METRICS[metric][0]
    return {str(r["question_id"]): credit(r[key]) for r in records if r.get(key) is not None}


def release_decision(
    candidate: str,
    baseline: str,
    context: str,
    docs: dict[str, list[dict[str, Any]]],
    general: dict[str, list[dict[str, Any]]] | None,
    *,
    metric: str,
    alpha: float,
    max_general_drop: float,
    n_boot: int = 10_000,
    open_scores: dict[str, list[dict[str, Any]]] | None = None,
    open_metric: str | None = None,
) -> GateDecision:
    """Decide the release gate.

    Passes when both hold:
    - on the benchmark in ``context``, the candidate answers more questions correctly than the
      baseline, significantly: exact one-sided McNemar test of the paired answers, p < alpha;
    - on the general-capability set (when scored), the candidate's accuracy is at most
      ``max_general_drop`` below the baseline's (point estimate; its paired 95% CI is reported).

    Args:
        candidate, baseline: Model keys.
        context: ``rag`` or ``closed_book``.
        docs: ``{model: benchmark records in context}`` for both models.
        general: ``{model: general-set records}`` for both, or None when the set is off.
        metric: The headline metric.
        open_scores: ``{model: open_scores records in context}`` for both, with
            ``open_metric``: the candidate must also beat the baseline on that open-answer
            metric (:func:`open_answer_test`).
    """
    reasons: list[str] = []
    a, b = f"{candidate} {context}", f"{baseline} {context}"
    cells = {a: _correct(docs[candidate], metric), b: _correct(docs[baseline], metric)}
    row = paired_comparisons(cells, n_boot=n_boot, family=[(a, b)])[0]
    # tied questions: the one-sided p averaged over random tie-breaks (exact without ties)
    _, credit_a, credit_b = paired_credit(cells[a], cells[b])
    p = expected_p(credit_a, credit_b, mcnemar_one_sided)
    verdict = (
        f"{a} {100 * row['accuracy_a']:.1f}% vs {b} {100 * row['accuracy_b']:.1f}% "
        f"(n={row['n']}, {count_text(row['only_a'])} vs {count_text(row['only_b'])} "
        f"discordant, one-sided McNemar p={p:.3g}, alpha {alpha})"
    )
    if not (row["difference"] > 0 and p < alpha):
        reasons.append(f"{a} does not significantly beat {b}: {verdict}")
    figures: dict[str, Any] = {
        "candidate": a,
        "baseline": b,
        "metric": metric,
        "questions": row["n"],
        "candidate_accuracy": row["accuracy_a"],
        "baseline_accuracy": row["accuracy_b"],
        "difference": row["difference"],
        "difference_ci95_low": row["diff_ci_low"],
        "difference_ci95_high": row["diff_ci_high"],
        "only_candidate_correct": row["only_a"],
        "only_baseline_correct": row["only_b"],
        "p_one_sided": p,
        "alpha": alpha,
        "docs_verdict": verdict,
    }
    if general is not None:
        g = paired_comparisons(
            {
                candidate: _correct(general[candidate], metric),
                baseline: _correct(general[baseline], metric),
            },
            n_boot=n_boot,
            family=[(baseline, candidate)],
        )[0]
        drop = g["difference"]  # baseline - candidate: what the candidate lost
        figures.update(
            general_candidate_accuracy=g["accuracy_b"],
            general_baseline_accuracy=g["accuracy_a"],
            general_drop=drop,
            general_drop_ci95_low=g["diff_ci_low"],
            general_drop_ci95_high=g["diff_ci_high"],
            max_general_drop=max_general_drop,
        )
        if drop > max_general_drop:
            reasons.append(
                f"{candidate}'s general score fell {100 * drop:.1f} points below {baseline}'s "
                f"({100 * g['accuracy_b']:.1f}% vs {100 * g['accuracy_a']:.1f}%, n={g['n']}), "
                f"more than the {100 * max_general_drop:.1f} allowed"
            )
    if open_scores is not None and open_metric is not None:
        test = open_answer_test(
            open_scores[candidate], open_scores[baseline], open_metric, n_boot=n_boot
        )
        figures.update({f"open_{k}": v for k, v in test.items() if k != "verdict"})
        figures["open_verdict"] = (
            f"open answers, {open_metric}: {a} {test['mean_candidate']:.3f} vs {b} "
            f"{test['mean_baseline']:.3f} (n={test['questions']}, one-sided {test['test']} "
            f"p={test['p_one_sided']:.3g}, alpha {alpha})"
        )
        if not (test["difference"] > 0 and test["p_one_sided"] < alpha):
            reasons.append(
                f"{a} does not significantly beat {b} on open answers: {figures['open_verdict']}"
            )
    return GateDecision(passed=not reasons, reasons=reasons, figures=figures)


def open_answer_test(
    candidate: list[dict[str, Any]],
    baseline: list[dict[str, Any]],
    metric: str,
    n_boot: int = 10_000,
) -> dict[str, Any]:
    """One-sided paired test "candidate > baseline" on an open-answer metric, over the
    questions both have a score for: exact McNemar for 0/1 metrics (exact match, the judge's
    verdicts), Wilcoxon signed-rank for graded ones (F1, ROUGE-L, similarity)."""
    from ragft_dagster.stats import (
        is_binary,
        paired_bootstrap_ci,
        wilcoxon_p,
    )

    def scores(records: list[dict[str, Any]]) -> dict[str, float]:
        return {
            str(r["question_id"]): float(r[metric]) for r in records if r.get(metric) is not None
        }

    shared, x, y = paired_credit(scores(candidate), scores(baseline))
    n = len(shared)
    if not n:
        nan = float("nan")
        return {
            "questions": 0,
            "mean_candidate": nan,
            "mean_baseline": nan,
            "difference": nan,
            "test": "none",
            "p_one_sided": 1.0,
        }
    if is_binary(x) and is_binary(y):
        only_a = int(sum(p * (1 - q) for p, q in zip(x, y, strict=True)))
        only_b = int(sum(q * (1 - p) for p, q in zip(x, y, strict=True)))
        test, p = "exact McNemar", mcnemar_one_sided(only_a, only_b)
    else:
        test, p = "Wilcoxon signed-rank", wilcoxon_p(x, y, alternative="greater")
    lo, hi = paired_bootstrap_ci(x, y, n_boot=n_boot)
    return {
        "questions": n,
        "metric": metric,
        "mean_candidate": sum(x) / n,
        "mean_baseline": sum(y) / n,
        "difference": (sum(x) - sum(y)) / n,
        "difference_ci95_low": lo,
        "difference_ci95_high": hi,
        "test": test,
        "p_one_sided": p,
    }
