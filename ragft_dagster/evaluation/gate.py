"""The release gate: does the fine-tuned model beat the base model on the benchmark, without
forgetting more than a margin of its general capability? Decided from the per-question scores,
the same records the report reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ragft_dagster.evaluation.report import METRICS
from ragft_dagster.evaluation.stats import (
    count_text,
    credit,
    expected_p,
    paired_comparisons,
    paired_credit,
)


def mcnemar_one_sided(only_a: int, only_b: int) -> float:
    """Exact one-sided McNemar p-value for "a is better than b": ``P(X >= only_a)`` for
    ``X ~ Binomial(only_a + only_b, 1/2)``; 1.0 when there are no discordant questions."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(only_a, n + 1)) / 2**n


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
    return GateDecision(passed=not reasons, reasons=reasons, figures=figures)
