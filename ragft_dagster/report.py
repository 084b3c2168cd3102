"""The benchmark report: accuracy per model x context with Wilson intervals, paired tests,
retrieval diagnostics, a per-question table, sampled-mode statistics and a chart."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragft_dagster.stats import (
    comparisons_markdown,
    mde_sentence,
    paired_comparisons,
    sampled_cell,
    sampled_pair,
)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound at small n and near 0 or 1)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise_scores(records: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (model, context): acc with its CI, acc_norm (local models), invalid answers,
    the A-D mass and, with RAG, how often retrieval surfaced the supporting chunk and how the
    wrong answers split into retrieval and generation failures."""
    rows = []
    for (model, context), recs in sorted(records.items()):
        n = len(recs)
        k = sum(1 for r in recs if r["is_correct"])
        lo, hi = wilson_interval(k, n)
        row: dict[str, Any] = {
            "model": model,
            "context": context,
            "n": n,
            "correct": k,
            "accuracy": k / n if n else float("nan"),
            "ci_low": lo,
            "ci_high": hi,
            "invalid": sum(1 for r in recs if r.get("invalid")),
            "acc_norm": float("nan"),
            "acc_norm_ci_low": float("nan"),
            "acc_norm_ci_high": float("nan"),
            "mean_letter_mass": _mean([r["mass"] for r in recs if r.get("mass") is not None]),
        }
        normed = [r["is_correct_norm"] for r in recs if r.get("is_correct_norm") is not None]
        if normed:
            kn = sum(normed)
            row["acc_norm"] = kn / len(normed)
            row["acc_norm_ci_low"], row["acc_norm_ci_high"] = wilson_interval(kn, len(normed))
        hits = [r.get("retrieval_hit") for r in recs]
        if context == "rag":
            known = [h for h in hits if h is not None]
            row["retrieval_hit_rate"] = _mean([float(h) for h in known])
            row["wrong_retrieval_miss"] = sum(
                1 for r in recs if not r["is_correct"] and r.get("retrieval_hit") is False
            )
            row["wrong_retrieval_hit"] = sum(
                1 for r in recs if not r["is_correct"] and r.get("retrieval_hit") is True
            )
        rows.append(row)
    return rows


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}%"


def comparison_markdown(rows: list[dict[str, Any]], models: list[str], contexts: list[str]) -> str:
    """The published-style table: one row per model, one column per context (acc with its 95%
    CI; acc_norm and invalid answers where they apply)."""
    cell = {(r["model"], r["context"]): r for r in rows}
    head = "| model | " + " | ".join(contexts) + " |\n|---|" + "---|" * len(contexts) + "\n"
    body = ""
    for m in models:
        parts = []
        for c in contexts:
            r = cell.get((m, c))
            if r is None:
                parts.append("–")
                continue
            text = (
                f"{100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.0f}–{100 * r['ci_high']:.0f}]"
                f" (n={r['n']})"
            )
            if not math.isnan(r["acc_norm"]):
                text += f"; acc_norm {_pct(r['acc_norm'])}"
            if r["invalid"]:
                text += f"; {r['invalid']} invalid"
            parts.append(text)
        body += f"| {m} | " + " | ".join(parts) + " |\n"
    return head + body


def retrieval_markdown(rows: list[dict[str, Any]]) -> str:
    """Per RAG cell: how often the supporting chunk was retrieved, and the wrong answers split
    into retrieval failures (chunk not retrieved) and generation failures (it was)."""
    rag = [r for r in rows if r["context"] == "rag"]
    if not rag:
        return ""
    out = (
        "| cell | supporting chunk retrieved | wrong: retrieval failure | "
        "wrong: generation failure |\n|---|---:|---:|---:|\n"
    )
    for r in rag:
        out += (
            f"| {r['model']} rag | {_pct(r['retrieval_hit_rate'])} | "
            f"{r['wrong_retrieval_miss']} | {r['wrong_retrieval_hit']} |\n"
        )
    return out


def per_question_rows(
    records: dict[tuple[str, str], list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """One row per question: each cell's answer (``B ✓``, ``C ✗``, ``– ✗`` for invalid), the
    chunks retrieved for it, the chunks that support its answer and whether retrieval found one."""
    by_q: dict[str, dict[str, Any]] = {}
    for (model, context), recs in sorted(records.items()):
        for r in recs:
            row = by_q.setdefault(
                r["question_id"],
                {"row": r["row"], "question": r["question"], "correct": r["correct"]},
            )
            mark = "✓" if r["is_correct"] else "✗"
            row[f"{model} {context}"] = f"{r['predicted'] or '–'} {mark}"
            if context == "rag" and "retrieved" not in row:
                row["retrieved"] = " ".join(h["id"][:8] for h in r["retrieved"])
                row["support"] = " ".join(s[:8] for s in r.get("support") or []) or "not found"
                hit = r.get("retrieval_hit")
                row["retrieval_hit"] = "n/a" if hit is None else ("yes" if hit else "no")
    return sorted(by_q.values(), key=lambda x: x["row"])


def per_question_markdown(rows: list[dict[str, Any]], cells: list[str]) -> str:
    extra = [c for c in ("retrieved", "support", "retrieval_hit") if rows and c in rows[0]]
    head = ["row", "correct", *cells, *extra]
    out = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    for r in rows:
        out += "| " + " | ".join(str(r.get(h, "")) for h in head) + " |\n"
    return out


def context_mismatches(records: dict[tuple[str, str], list[dict[str, Any]]]) -> list[int]:
    """Rows whose retrieved chunks differ between RAG cells (every model must see the same
    context; a difference means the index changed between cells: re-score them)."""
    seen: dict[str, tuple[str, ...]] = {}
    bad: set[int] = set()
    for (_, context), recs in records.items():
        if context != "rag":
            continue
        for r in recs:
            ids = tuple(h["id"] for h in r["retrieved"])
            if seen.setdefault(r["question_id"], ids) != ids:
                bad.add(r["row"])
    return sorted(bad)


def sampled_report(
    records: dict[tuple[str, str], list[dict[str, Any]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Sampled mode: per cell the accuracy over all rounds with the naive (answers as
    independent) and the question-level interval; per pair the published naive t-test next to
    the paired question-level test. Empty when no cell has samples."""
    samples = {
        f"{m} {c}": {
            r["question_id"]: [s == r["correct"] for s in r["samples"]]
            for r in recs
            if r.get("samples")
        }
        for (m, c), recs in sorted(records.items())
    }
    samples = {k: v for k, v in samples.items() if v}
    if not samples:
        return [], [], ""
    cells = [{"cell": name, **sampled_cell(v)} for name, v in samples.items()]
    pairs = [
        {"a": a, "b": b, **sampled_pair(samples[a], samples[b])}
        for i, a in enumerate(samples)
        for b in list(samples)[i + 1 :]
    ]
    md = (
        "Every question was answered several times at temperature > 0. Counting every answer "
        "as independent (the published t-test) makes the interval look narrow; the questions "
        "are the sample, so the honest interval is the question-level one.\n\n"
        "| cell | rounds | accuracy | naive 95% CI (answers independent) | "
        "question-level 95% CI | design effect | worth this many independent answers |\n"
        "|---|---:|---:|---|---|---:|---:|\n"
    )
    for c in cells:
        md += (
            f"| {c['cell']} | {c['rounds']} | {_pct(c['accuracy'])} | "
            f"[{_pct(c['naive_ci_low'])}, {_pct(c['naive_ci_high'])}] | "
            f"[{_pct(c['question_ci_low'])}, {_pct(c['question_ci_high'])}] | "
            f"{c['design_effect']:.1f} | {c['effective_n']:.0f} of {c['answers']} |\n"
        )
    md += (
        "\n| A vs B | difference | naive t-test p (published) | question-level paired t p |\n"
        "|---|---:|---:|---:|\n"
    )
    for p in pairs:
        md += (
            f"| {p['a']} vs {p['b']} | {100 * p['difference']:+.1f} pts | {p['naive_p']:.3g} | "
            f"{p['question_p']:.3g} |\n"
        )
    return cells, pairs, md


@dataclass
class Report:
    """Everything ``mcq_report`` shows: the per-cell table, the paired comparisons, retrieval
    diagnostics, the per-question table and, in sampled mode, the rerun statistics."""

    rows: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    table_md: str
    comparisons_md: str
    retrieval_md: str = ""
    questions: list[dict[str, Any]] = field(default_factory=list)
    questions_md: str = ""
    sampled_cells: list[dict[str, Any]] = field(default_factory=list)
    sampled_pairs: list[dict[str, Any]] = field(default_factory=list)
    sampled_md: str = ""
    mismatched_rows: list[int] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        parts = [
            "# MCQ benchmark\n",
            self.table_md,
            "\n## Paired comparisons (same questions)\n",
            self.comparisons_md,
        ]
        if self.mismatched_rows:
            parts.append(
                f"\n**Warning:** RAG cells saw different retrieved chunks for rows "
                f"{self.mismatched_rows}; re-score every rag cell on the same index.\n"
            )
        if self.retrieval_md:
            parts += ["\n## Retrieval vs. generation failures\n", self.retrieval_md]
        if self.sampled_md:
            parts += ["\n## Sampled mode (reruns)\n", self.sampled_md]
        if self.questions_md:
            parts += ["\n## Per question\n", self.questions_md]
        return "\n".join(parts)


def build_report(
    records: dict[tuple[str, str], list[dict[str, Any]]],
    models: list[str],
    contexts: list[str],
    n_boot: int = 10_000,
) -> Report:
    """Summarise every (model, context) cell and compare every pair on the same questions."""
    rows = summarise_scores(records)
    pairs = paired_comparisons(
        {
            f"{m} {c}": {r["question_id"]: bool(r["is_correct"]) for r in recs}
            for (m, c), recs in records.items()
        },
        n_boot=n_boot,
    )
    n_questions = max((r["n"] for r in rows), default=0)
    questions = per_question_rows(records)
    cells = [f"{m} {c}" for m in models for c in contexts if (m, c) in records]
    sampled_cells, sampled_pairs, sampled_md = sampled_report(records)
    return Report(
        rows=rows,
        pairs=pairs,
        table_md=comparison_markdown(rows, models, contexts),
        comparisons_md=f"{mde_sentence(n_questions)}\n\n{comparisons_markdown(pairs)}",
        retrieval_md=retrieval_markdown(rows),
        questions=questions,
        questions_md=per_question_markdown(questions, cells),
        sampled_cells=sampled_cells,
        sampled_pairs=sampled_pairs,
        sampled_md=sampled_md,
        mismatched_rows=context_mismatches(records),
    )


def regressions(previous: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells whose accuracy fell below the lower end of the 95% CI they had in the previous
    report (its numeric metadata ``accuracy_<model>_<context>`` / ``ci_low_<model>_<context>``)."""
    out = []
    for r in rows:
        cell = f"{r['model']}_{r['context']}"
        before, low = previous.get(f"accuracy_{cell}"), previous.get(f"ci_low_{cell}")
        if before is None or low is None:
            continue
        if r["accuracy"] < low:
            out.append(
                {
                    "cell": f"{r['model']} {r['context']}",
                    "previous": before,
                    "previous_ci_low": low,
                    "now": r["accuracy"],
                }
            )
    return out


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
