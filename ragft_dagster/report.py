"""The benchmark report: accuracy per model x context with Wilson intervals, and a chart."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragft_dagster.stats import comparisons_markdown, mde_sentence, paired_comparisons


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound at small n and near 0 or 1)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise_scores(records: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (model, context): n, correct, accuracy, CI, mean A-D mass."""
    rows = []
    for (model, context), recs in sorted(records.items()):
        n = len(recs)
        k = sum(1 for r in recs if r["is_correct"])
        lo, hi = wilson_interval(k, n)
        rows.append(
            {
                "model": model,
                "context": context,
                "n": n,
                "correct": k,
                "accuracy": k / n if n else float("nan"),
                "ci_low": lo,
                "ci_high": hi,
                "mean_letter_mass": sum(r["mass"] for r in recs) / n if n else float("nan"),
            }
        )
    return rows


def comparison_markdown(rows: list[dict[str, Any]], models: list[str], contexts: list[str]) -> str:
    """The published-style table: one row per model, one column per context."""
    cell = {(r["model"], r["context"]): r for r in rows}
    head = "| model | " + " | ".join(contexts) + " |\n|---|" + "---|" * len(contexts) + "\n"
    body = ""
    for m in models:
        parts = []
        for c in contexts:
            r = cell.get((m, c))
            parts.append(
                f"{100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.0f}–{100 * r['ci_high']:.0f}] "
                f"(n={r['n']})"
                if r
                else "–"
            )
        body += f"| {m} | " + " | ".join(parts) + " |\n"
    return head + body


@dataclass
class Report:
    """Everything ``mcq_report`` shows: the per-cell table and the paired comparisons."""

    rows: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    table_md: str
    comparisons_md: str

    @property
    def markdown(self) -> str:
        return f"{self.table_md}\n## Paired comparisons (same questions)\n\n{self.comparisons_md}"


def build_report(
    records: dict[tuple[str, str], list[dict[str, Any]]], models: list[str], contexts: list[str]
) -> Report:
    """Summarise every (model, context) cell and compare every pair on the same questions."""
    rows = summarise_scores(records)
    pairs = paired_comparisons(
        {
            f"{m} {c}": {r["question_id"]: bool(r["is_correct"]) for r in recs}
            for (m, c), recs in records.items()
        }
    )
    n_questions = max((r["n"] for r in rows), default=0)
    return Report(
        rows=rows,
        pairs=pairs,
        table_md=comparison_markdown(rows, models, contexts),
        comparisons_md=f"{mde_sentence(n_questions)}\n\n{comparisons_markdown(pairs)}",
    )


def accuracy_chart(
    rows: list[dict[str, Any]], models: list[str], contexts: list[str], path: Path
) -> Path:
    """Grouped bars of accuracy with 95% CI error bars, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell = {(r["model"], r["context"]): r for r in rows}
    width = 0.8 / max(len(contexts), 1)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for j, c in enumerate(contexts):
        xs: list[float] = []
        ys: list[float] = []
        err: list[list[float]] = [[], []]
        for i, m in enumerate(models):
            r = cell.get((m, c))
            if r is None:
                continue
            xs.append(i + (j - (len(contexts) - 1) / 2) * width)
            ys.append(100 * r["accuracy"])
            err[0].append(100 * (r["accuracy"] - r["ci_low"]))
            err[1].append(100 * (r["ci_high"] - r["accuracy"]))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=c)
    ax.axhline(25, color="grey", linestyle=":", linewidth=1, label="chance (25%)")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("MCQ accuracy with 95% Wilson intervals")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
