"""The benchmark report: accuracy per model x context with Wilson intervals, paired tests (the
comparisons the method is about Holm-corrected, the rest exploratory), retrieval diagnostics,
a per-question table, sampled-mode statistics and a chart."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import atomic_write_text
from ragft_dagster.config.recipe import LOCAL_MODELS
from ragft_dagster.evaluation.stats import (
    comparisons_markdown,
    mde_sentence,
    paired_comparisons,
    sampled_cell,
    sampled_pair,
    wilson_interval,
)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


METRICS = {
    "acc": ("is_correct", "predicted"),
    "acc_norm": ("is_correct_norm", "predicted_norm"),
    "acc_option": ("is_correct_option", "predicted_option"),
}
"""Each metric's (correctness, answer) fields in the score records; names as
lm-evaluation-harness uses them (see :mod:`ragft_dagster.evaluation.mcq`)."""

METRIC_MEANINGS = {
    "acc": "the answer letter's log-probability (as lm-evaluation-harness scores MMLU)",
    "acc_norm": "the option text's log-likelihood per byte (lm-evaluation-harness's ARC acc_norm)",
    "acc_option": "the option text's log-likelihood, unnormalised (lm-evaluation-harness's ARC "
    "acc)",
}

HIT_AT = (1, 3, 5, 10)
"""The k of the hit@k retrieval diagnostics."""


def _support_rank(r: dict[str, Any]) -> tuple[int | None, int]:
    """(1-based rank of the first supporting chunk, how deep the ranking went) of a RAG record;
    records scored before ``support_rank`` existed are ranked within their retrieved chunks."""
    shown = [h["id"] for h in r["retrieved"]]
    if "support_rank" in r:
        return r["support_rank"], r.get("ranked_to", len(shown))
    ranks = [shown.index(c) + 1 for c in r.get("support") or [] if c in shown]
    return (min(ranks) if ranks else None), len(shown)


def summarise_scores(
    records: dict[tuple[str, str], list[dict[str, Any]]], metric: str = "acc"
) -> list[dict[str, Any]]:
    """One row per (model, context).

    Args:
        records: Each cell's per-question records.
        metric: The headline metric (``acc``, ``acc_norm`` or ``acc_option``).

    Returns:
        Rows with ``metric`` and its ``accuracy``, ``correct``, ``n`` and 95% CI; every metric
        with its CI under its own name (NaN where a cell has none, e.g. API models' acc_norm);
        invalid answers; the A-D mass; and, with RAG: how many answers the docs were found to
        hold (``answer_located``), hit@k for k in :data:`HIT_AT` (NaN beyond the ranked depth),
        how often the prompt showed a supporting chunk, and the wrong (headline) answers split
        into retrieval failures, generation failures and questions whose answer was not located.
    """
    rows = []
    field = METRICS[metric][0]
    for (model, context), recs in sorted(records.items()):
        row: dict[str, Any] = {"model": model, "context": context, "metric": metric}
        for name, (key, _) in METRICS.items():
            known = [bool(r[key]) for r in recs if r.get(key) is not None]
            k = sum(known)
            row[name] = k / len(known) if known else float("nan")
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = wilson_interval(k, len(known))
            if name == metric:
                row.update(n=len(known), correct=k, accuracy=row[name])
                row["ci_low"], row["ci_high"] = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
        row["invalid"] = sum(1 for r in recs if r.get("invalid"))
        row["mean_letter_mass"] = _mean([r["mass"] for r in recs if r.get("mass") is not None])
        if context == "rag":
            row.update(_retrieval_figures(recs, field))
        rows.append(row)
    return rows


def _retrieval_figures(recs: list[dict[str, Any]], field: str) -> dict[str, Any]:
    located = [r for r in recs if r.get("retrieval_hit") is not None]
    ranked = [_support_rank(r) for r in located]
    depth = min((d for _, d in ranked), default=0)
    out: dict[str, Any] = {
        "answer_located": len(located),
        "retrieval_hit_rate": _mean([float(r["retrieval_hit"]) for r in located]),
    }
    for k in HIT_AT:
        hits = [float(rank is not None and rank <= k) for rank, _ in ranked]
        out[f"hit_at_{k}"] = _mean(hits) if k <= depth else float("nan")
    wrong = [r for r in recs if r.get(field) is False]
    out["wrong_retrieval_miss"] = sum(1 for r in wrong if r.get("retrieval_hit") is False)
    out["wrong_retrieval_hit"] = sum(1 for r in wrong if r.get("retrieval_hit") is True)
    out["wrong_not_located"] = sum(1 for r in wrong if r.get("retrieval_hit") is None)
    return out


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}%"


def _whole(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.0f}"


def comparison_markdown(rows: list[dict[str, Any]], models: list[str], contexts: list[str]) -> str:
    """The published-style table: one row per model, one column per context (the headline
    metric with its 95% CI; the other metrics and invalid answers where they apply)."""
    cell = {(r["model"], r["context"]): r for r in rows}
    metric = rows[0]["metric"] if rows else "acc"
    others = [m for m in METRICS if m != metric]
    out = (
        f"Headline metric: **{metric}**, {METRIC_MEANINGS[metric]}, with its 95% Wilson "
        f"interval; then {', '.join(f'{m} ({METRIC_MEANINGS[m]})' for m in others)}.\n\n"
    )
    out += "| model | " + " | ".join(contexts) + " |\n|---|" + "---|" * len(contexts) + "\n"
    for m in models:
        parts = []
        for c in contexts:
            r = cell.get((m, c))
            if r is None:
                parts.append("–")
                continue
            text = f"{_pct(r['accuracy'])} [{_whole(r['ci_low'])}–{_whole(r['ci_high'])}]"
            text += f" (n={r['n']})"
            text += "".join(f"; {o} {_pct(r[o])}" for o in others if not math.isnan(r[o]))
            if r["invalid"]:
                text += f"; {r['invalid']} invalid"
            parts.append(text)
        out += f"| {m} | " + " | ".join(parts) + " |\n"
    return out


def retrieval_markdown(rows: list[dict[str, Any]], support_threshold: float | None = None) -> str:
    """Per RAG cell: for how many questions the docs hold the answer, hit@k of its chunk, how
    often the prompt showed it, and the wrong answers split into retrieval failures (not shown),
    generation failures (shown) and questions whose answer was not located (no verdict)."""
    rag = [r for r in rows if r["context"] == "rag"]
    if not rag:
        return ""
    held = (
        f"at least {100 * support_threshold:.0f}% of the correct option's content words "
        "(`evaluation.support_threshold`)"
        if support_threshold is not None
        else "the correct option's content words"
    )
    out = (
        f"A chunk holds a question's answer when it contains {held}; among such chunks, those "
        "with the highest share win, ties going to the one sharing most words with the question. "
        "hit@k: share of the located questions whose answer chunk is among the top k retrieved "
        "(– where retrieval was not ranked that deep).\n\n"
        "| cell | answer located | " + " | ".join(f"hit@{k}" for k in HIT_AT) + " | supporting "
        "chunk in the prompt | wrong: retrieval failure | wrong: generation failure | wrong: "
        "answer not located |\n|---|---:|" + "---:|" * len(HIT_AT) + "---:|---:|---:|---:|\n"
    )
    for r in rag:
        out += (
            f"| {r['model']} rag | {r['answer_located']} of {r['n']} | "
            + " | ".join(_pct(r[f"hit_at_{k}"]) for k in HIT_AT)
            + f" | {_pct(r['retrieval_hit_rate'])} | {r['wrong_retrieval_miss']} | "
            f"{r['wrong_retrieval_hit']} | {r['wrong_not_located']} |\n"
        )
    return out


def per_question_rows(
    records: dict[tuple[str, str], list[dict[str, Any]]], metric: str = "acc"
) -> list[dict[str, Any]]:
    """One row per question: each cell's answer under the headline metric (``B ✓``, ``C ✗``,
    ``– ✗`` for invalid), the chunks retrieved for it, the chunks that hold its answer with
    their coverage (or the best coverage found), whether the prompt showed one and its rank."""
    field, answer = METRICS[metric]
    by_q: dict[str, dict[str, Any]] = {}
    for (model, context), recs in sorted(records.items()):
        for r in recs:
            row = by_q.setdefault(
                r["question_id"],
                {"row": r["row"], "question": r["question"], "correct": r["correct"]},
            )
            if r.get(field) is None and metric != "acc":
                row[f"{model} {context}"] = "n/a"
            else:
                mark = "✓" if r.get(field) else "✗"
                row[f"{model} {context}"] = f"{r.get(answer) or '–'} {mark}"
            if context == "rag" and "retrieved" not in row:
                row["retrieved"] = " ".join(h["id"][:8] for h in r["retrieved"])
                row["support"] = _support_text(r)
                hit = r.get("retrieval_hit")
                row["retrieval_hit"] = "n/a" if hit is None else ("yes" if hit else "no")
                rank, depth = _support_rank(r)
                row["support_rank"] = (
                    "n/a" if hit is None else str(rank) if rank is not None else f"> {depth}"
                )
    return sorted(by_q.values(), key=lambda x: x["row"])


def _support_text(r: dict[str, Any]) -> str:
    coverage = r.get("support_coverage")
    if r.get("support"):
        ids = " ".join(s[:8] for s in r["support"])
        return ids if coverage is None else f"{ids} ({100 * coverage:.0f}%)"
    return "not found" if coverage is None else f"not found (best {100 * coverage:.0f}%)"


def per_question_markdown(rows: list[dict[str, Any]], cells: list[str]) -> str:
    extra = ["retrieved", "support", "retrieval_hit", "support_rank"]
    extra = [c for c in extra if rows and c in rows[0]]
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
    metric: str = "acc"

    @property
    def markdown(self) -> str:
        parts = [
            "# MCQ benchmark\n",
            self.table_md,
            f"\n## Paired comparisons (same questions, {self.metric})\n",
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


def headline_family(models: list[str], contexts: list[str]) -> list[tuple[str, str]]:
    """The comparisons the method is about, each ``(a, b)`` read as "a vs. b", for the
    multiplicity correction.

    Every model with vs. without RAG; each training stage vs. the one before it in the same
    context (merged vs. base, dpo vs. merged, sft vs. dpo; a stage not scored is skipped, so the
    next is compared with the last one scored); and the finished model with RAG vs. the base
    model with RAG. Cells are named ``"<model> <context>"``.
    """
    pairs = []
    if "rag" in contexts and "closed_book" in contexts:
        pairs += [(f"{m} rag", f"{m} closed_book") for m in models]
    stages = [m for m in LOCAL_MODELS if m in models]
    for c in contexts:
        pairs += [(f"{later} {c}", f"{earlier} {c}") for earlier, later in pairwise(stages)]
    if "rag" in contexts and {"base", "sft"} <= set(models):
        pairs.append(("sft rag", "base rag"))
    return list(dict.fromkeys(pairs))


def build_report(
    records: dict[tuple[str, str], list[dict[str, Any]]],
    models: list[str],
    contexts: list[str],
    n_boot: int = 10_000,
    metric: str = "acc",
    support_threshold: float | None = None,
) -> Report:
    """Summarise every (model, context) cell and compare pairs on the same questions: the
    :func:`headline_family` Holm-corrected, every other pair exploratory.

    Args:
        records: Each cell's per-question records.
        models: Row order.
        contexts: Column order.
        n_boot: Bootstrap resamples per comparison.
        metric: The headline metric (``evaluation.headline_metric``).
        support_threshold: ``evaluation.support_threshold``, named in the retrieval section.
    """
    rows = summarise_scores(records, metric)
    field = METRICS[metric][0]
    pairs = paired_comparisons(
        {
            f"{m} {c}": {r["question_id"]: bool(r[field]) for r in recs if r.get(field) is not None}
            for (m, c), recs in records.items()
        },
        n_boot=n_boot,
        family=headline_family(models, contexts),
    )
    n_questions = max((r["n"] for r in rows), default=0)
    questions = per_question_rows(records, metric)
    cells = [f"{m} {c}" for m in models for c in contexts if (m, c) in records]
    sampled_cells, sampled_pairs, sampled_md = sampled_report(records)
    return Report(
        rows=rows,
        pairs=pairs,
        table_md=comparison_markdown(rows, models, contexts),
        comparisons_md=f"{mde_sentence(n_questions)}\n\n{comparisons_markdown(pairs, metric)}",
        retrieval_md=retrieval_markdown(rows, support_threshold),
        questions=questions,
        questions_md=per_question_markdown(questions, cells),
        sampled_cells=sampled_cells,
        sampled_pairs=sampled_pairs,
        sampled_md=sampled_md,
        mismatched_rows=context_mismatches(records),
        metric=metric,
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
    """Grouped bars of the headline metric with 95% CI error bars, saved as PNG."""
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
    ax.set_ylabel(f"{rows[0]['metric'] if rows else 'acc'} (%)")
    ax.set_ylim(0, 100)
    ax.set_title("MCQ accuracy with 95% Wilson intervals")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def general_report(
    general: dict[str, list[dict[str, Any]]],
    docs_rows: list[dict[str, Any]],
    models: list[str],
    metric: str = "acc",
    n_boot: int = 10_000,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Forgetting and skill gain: every local model's docs score beside its general score.

    The general-capability set is scored closed-book like the benchmark; each stage is compared
    with the one before it on the same general questions (merged vs. base: what the merge
    gained or lost; dpo vs. merged; sft vs. dpo: what fine-tuning on the docs cost), the pairs
    Holm-corrected together.

    Args:
        general: Each model's general-capability records (``category`` per question).
        docs_rows: :func:`summarise_scores` rows of the benchmark.
        models: Row order (local models only are scored on the general set).
        metric: The headline metric.
        n_boot: Bootstrap resamples per comparison.

    Returns:
        (summary rows per model and category, paired comparisons, markdown).
    """
    scored = [m for m in models if m in general]
    if not scored:
        return [], [], ""
    field = METRICS[metric][0]
    categories: list[str] = sorted(
        {str(r["category"]) for recs in general.values() for r in recs if r.get("category")}
    )
    groups: dict[str, str | None] = {"all": None, **{c: c for c in categories}}
    rows = []
    for m in scored:
        for name, category in groups.items():
            recs = [r for r in general[m] if category is None or r.get("category") == category]
            row = summarise_scores({(m, "general"): recs}, metric)[0]
            rows.append({**row, "category": name})
    stages: list[str] = [m for m in LOCAL_MODELS if m in scored]
    family = [(later, earlier) for earlier, later in pairwise(stages)]
    pairs = paired_comparisons(
        {m: {r["question_id"]: bool(r[field]) for r in general[m]} for m in scored},
        n_boot=n_boot,
        family=family,
    )
    pairs = [p for p in pairs if p["family"] == "headline"]
    docs = {(r["model"], r["context"]): r for r in docs_rows}
    cell = {(r["model"], r["category"]): r for r in rows}

    def fmt(r: dict[str, Any] | None) -> str:
        if r is None:
            return "–"
        return f"{_pct(r['accuracy'])} [{_whole(r['ci_low'])}–{_whole(r['ci_high'])}]"

    n = cell[(scored[0], "all")]["n"]
    out = (
        f"Each local model on this project's docs benchmark and on the general-capability set "
        f"({n} questions: {', '.join(categories) or 'uncategorised'}; closed-book, scored like "
        f"the benchmark), {metric} with 95% Wilson intervals. A merge that adds a skill shows "
        "in the arithmetic column; forgetting shows as a general score that falls from one "
        "stage to the next.\n\n"
        "| model | docs closed-book | docs RAG | general set | "
        + " | ".join(categories)
        + " |\n|---|---|---|---|"
        + "---|" * len(categories)
        + "\n"
    )
    for m in scored:
        out += (
            f"| {m} | {fmt(docs.get((m, 'closed_book')))} | {fmt(docs.get((m, 'rag')))} | "
            f"{fmt(cell[(m, 'all')])} | "
            + " | ".join(fmt(cell.get((m, c))) for c in categories)
            + " |\n"
        )
    if pairs:
        out += (
            "\nEach stage vs. the one before it on the general set (same questions; Holm-"
            "corrected together):\n\n" + comparisons_markdown(pairs, metric)
        )
    return rows, pairs, out


def write_report_files(
    folder: Path,
    report: Report,
    models: list[str],
    contexts: list[str],
    general_rows: list[dict[str, Any]],
    general_pairs: list[dict[str, Any]],
    general_md: str,
) -> Path:
    """Write the report's files into ``folder`` (report.md, summary.json, comparisons.json,
    questions.json, general.json and sampled.json when they apply, accuracy.png); returns the
    chart's path."""
    chart = accuracy_chart(report.rows, models, contexts, folder / "accuracy.png")
    markdown = report.markdown
    if general_md:
        markdown += "\n## Docs vs. general capability (forgetting)\n\n" + general_md
        _write_json(folder / "general.json", {"rows": general_rows, "pairs": general_pairs})
    atomic_write_text(folder / "report.md", markdown)
    _write_json(folder / "summary.json", report.rows)
    _write_json(folder / "comparisons.json", report.pairs)
    _write_json(folder / "questions.json", report.questions)
    if report.sampled_cells:
        _write_json(
            folder / "sampled.json", {"cells": report.sampled_cells, "pairs": report.sampled_pairs}
        )
    return chart


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2))
