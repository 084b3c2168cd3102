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
from ragft_dagster.stats import (
    comparisons_markdown,
    count_text,
    credit,
    mde_sentence,
    paired_comparisons,
    sampled_cell,
    sampled_pair,
    whole,
    wilson_interval,
)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


METRICS = {
    "acc": ("is_correct", "predicted"),
    "acc_norm": ("is_correct_norm", "predicted_norm"),
    "acc_bytes": ("is_correct_bytes", "predicted_bytes"),
    "acc_option": ("is_correct_option", "predicted_option"),
}
"""Each metric's (correctness, answer) fields in the score records; names as
lm-evaluation-harness uses them (see :mod:`ragft_dagster.evaluation.mcq`). Correctness is
credit in [0, 1] (1/k when the correct option ties k - 1 others for the top score); API models
and records written before ties were split hold a bool, and older records have no acc_bytes."""

METRIC_MEANINGS = {
    "acc": "the answer letter's log-probability (as lm-evaluation-harness scores MMLU)",
    "acc_norm": "the option text's log-likelihood per character (lm-evaluation-harness's acc_norm)",
    "acc_bytes": "the option text's log-likelihood per UTF-8 byte (lm-evaluation-harness's "
    "acc_bytes)",
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


def tie_size(record: dict[str, Any], metric: str) -> int:
    """How many choices share the top score under ``metric`` (1: no tie; records written
    before ties were recorded count as 1)."""
    return int((record.get("tied") or {}).get(metric, 1))


def summarise_scores(
    records: dict[tuple[str, str], list[dict[str, Any]]], metric: str = "acc"
) -> list[dict[str, Any]]:
    """One row per (model, context).

    Args:
        records: Each cell's per-question records.
        metric: The headline metric (a key of :data:`METRICS`).

    Returns:
        Rows with ``metric`` and its ``accuracy``, ``correct`` (credit summed: a top choice
        tied among k options counts 1/k when the correct one is among them), ``n``, 95% CI and
        ``ties`` (questions whose top choice is tied); every metric with its CI and
        ``<metric>_ties`` under its own name (NaN where a cell has none, e.g. API models'
        acc_norm); invalid answers; the A-D mass; and, with RAG: how many answers the docs
        were found to hold (``answer_located``), hit@k for k in :data:`HIT_AT` (NaN beyond the
        ranked depth), how often the prompt showed a supporting chunk, and the wrong
        (headline) answers split into retrieval failures, generation failures and questions
        whose answer was not located (expected counts where a tie splits the credit).
    """
    rows = []
    field = METRICS[metric][0]
    for (model, context), recs in sorted(records.items()):
        row: dict[str, Any] = {"model": model, "context": context, "metric": metric}
        for name, (key, _) in METRICS.items():
            scored = [r for r in recs if r.get(key) is not None]
            k = whole(sum(credit(r[key]) for r in scored))
            row[name] = k / len(scored) if scored else float("nan")
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = wilson_interval(k, len(scored))
            row[f"{name}_ties"] = sum(1 for r in scored if tie_size(r, name) > 1)
            if name == metric:
                row.update(n=len(scored), correct=k, accuracy=row[name], ties=row[f"{name}_ties"])
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
    # each answer is wrong by 1 - its credit (a split tie is partly wrong)
    wrong = [(r, 1 - credit(r[field])) for r in recs if r.get(field) is not None]
    for key, verdict in (
        ("wrong_retrieval_miss", False),
        ("wrong_retrieval_hit", True),
        ("wrong_not_located", None),
    ):
        out[key] = whole(sum(w for r, w in wrong if r.get("retrieval_hit") is verdict))
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
            if r["ties"]:
                text += f"; {r['ties']} tied"
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
            + f" | {_pct(r['retrieval_hit_rate'])} | {count_text(r['wrong_retrieval_miss'])} | "
            f"{count_text(r['wrong_retrieval_hit'])} | {count_text(r['wrong_not_located'])} |\n"
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
                row[f"{model} {context}"] = f"{r.get(answer) or '–'} {_mark(r, metric)}"
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


def _mark(r: dict[str, Any], metric: str) -> str:
    """✓ or ✗; a top choice tied among k options shows it (``✓ 1/2 tie``: the correct option is
    among the k, credit 1/k; ``✗ 2-way tie``: it is not)."""
    value = credit(r.get(METRICS[metric][0]) or 0)
    k = tie_size(r, metric)
    if k <= 1:
        return "✓" if value else "✗"
    return f"✓ 1/{k} tie" if value else f"✗ {k}-way tie"


def ties_markdown(rows: list[dict[str, Any]], models: list[str], contexts: list[str]) -> str:
    """Per cell and metric, the questions whose top choice is tied (– where the cell has no
    such metric, e.g. an API model's option metrics)."""
    cell = {(r["model"], r["context"]): r for r in rows}
    out = (
        "Questions whose top choice is tied between options (equal scores). A tie among k "
        "options counts 1/k correct when the correct option is among them (the expected "
        "accuracy of a random tie-break), never the first letter.\n\n"
        "| cell | " + " | ".join(METRICS) + " |\n|---|" + "---:|" * len(METRICS) + "\n"
    )
    for m in models:
        for c in contexts:
            r = cell.get((m, c))
            if r is None:
                continue
            counts = ["–" if math.isnan(r[n]) else str(r[f"{n}_ties"]) for n in METRICS]
            out += f"| {m} {c} | " + " | ".join(counts) + " |\n"
    return out


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
    """Everything ``mcq_report`` shows: the per-cell table, ties, the paired comparisons,
    retrieval diagnostics, the per-question table, in sampled mode the rerun statistics, and
    (when given) Figure 2 on the general set, DPO's held-out preference accuracy and a sentence
    for every stage whose answers equal the previous stage's."""

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
    ties_md: str = ""
    stage_notes: list[str] = field(default_factory=list)
    """One sentence per stage whose answers equal the previous stage's in every cell."""
    general_rows: list[dict[str, Any]] = field(default_factory=list)
    general_pairs: list[dict[str, Any]] = field(default_factory=list)
    general_md: str = ""
    general_models: list[str] = field(default_factory=list)
    """Figure 2's rows (merge sources, merged, dpo, sft) in order."""
    preference: dict[str, Any] | None = None
    """DPO's held-out preference evaluation (``preference_eval.json``), when it exists."""
    preference_md: str = ""
    skill_md: str = ""
    """Whether the specialist has its skill, on its own held-out questions (Figure 2's lead)."""
    open_answers: OpenReport | None = None
    """The "Open answers" section, when the recipe has open questions."""

    @property
    def markdown(self) -> str:
        parts = ["# MCQ benchmark\n", self.table_md]
        if self.stage_notes:
            parts.append("\n" + "\n\n".join(f"**Note:** {n}" for n in self.stage_notes) + "\n")
        if self.ties_md:
            parts += ["\n## Ties\n", self.ties_md]
        parts += [f"\n## Paired comparisons (same questions, {self.metric})\n", self.comparisons_md]
        if self.mismatched_rows:
            parts.append(
                f"\n**Warning:** RAG cells saw different retrieved chunks for rows "
                f"{self.mismatched_rows}; re-score every rag cell on the same index.\n"
            )
        if self.open_answers is not None:
            parts += [
                "\n## Open answers\n",
                self.open_answers.markdown,
                "\n![Open answers](open_answers.png)\n",
            ]
        if self.retrieval_md:
            parts += ["\n## Retrieval vs. generation failures\n", self.retrieval_md]
        if self.general_md or self.skill_md:
            parts += [f"\n## {FIGURE_2_TITLE}\n"]
            if self.skill_md:
                parts += [self.skill_md]
            if self.general_md:
                parts += [self.general_md, "\n![Figure 2](figure2.png)\n"]
        if self.preference_md:
            parts += ["\n## DPO: held-out preference accuracy\n", self.preference_md]
        if self.sampled_md:
            parts += ["\n## Sampled mode (reruns)\n", self.sampled_md]
        if self.questions_md:
            parts += ["\n## Per question\n", self.questions_md]
        return "\n".join(parts)


FIGURE_2_TITLE = "Figure 2: merge sources, merge, DPO and SFT on arithmetic and general knowledge"
PREFERENCE_FILE = "preference_eval.json"
"""What ``dpo_model`` writes into its folder: its held-out preference evaluation."""


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
    *,
    general: dict[str, list[dict[str, Any]]] | None = None,
    general_models: list[str] | None = None,
    sources: list[str] | None = None,
    preference_file: Path | None = None,
    skill_check: dict[str, Any] | None = None,
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
        general: Each scored model's general-set records (``general_scores``), for Figure 2.
        general_models: Figure 2's row order (merge sources first); default ``models``.
        sources: The merge's source models among them (``base`` and e.g. ``specialist:math``).
        preference_file: Where ``dpo_model`` writes its held-out preference evaluation; None
            leaves that section out, a missing file says so.
        skill_check: The specialist against base on held-out questions of its skill
            (:mod:`ragft_dagster.evaluation.skill_check`), when the recipe derives one.
    """
    rows = summarise_scores(records, metric)
    pairs = paired_comparisons(
        _credits({f"{m} {c}": recs for (m, c), recs in records.items()}, metric),
        n_boot=n_boot,
        family=headline_family(models, contexts),
    )
    n_questions = max((r["n"] for r in rows), default=0)
    questions = per_question_rows(records, metric)
    cells = [f"{m} {c}" for m in models for c in contexts if (m, c) in records]
    sampled_cells, sampled_pairs, sampled_md = sampled_report(records)
    order = general_models or models
    general_rows, general_pairs, general_md = general_report(
        general or {}, rows, order, metric, n_boot, sources=sources
    )
    preference = read_preference_eval(preference_file) if preference_file else None
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
        ties_md=ties_markdown(rows, models, contexts),
        stage_notes=unchanged_stages(records, general or {}, models, metric, preference),
        general_rows=general_rows,
        general_pairs=general_pairs,
        general_md=general_md,
        general_models=[m for m in order if m in (general or {})],
        preference=preference,
        preference_md=preference_markdown(preference, preference_file) if preference_file else "",
        skill_md=skill_markdown(skill_check),
    )


def skill_markdown(check: dict[str, Any] | None) -> str:
    """The specialist on its own data, before Figure 2's general set: accuracies with their
    intervals and the sentence of :func:`ragft_dagster.evaluation.skill_check.compare_on_skill`."""
    if not check:
        return ""
    lo_b, hi_b = check["base_interval"]
    lo_s, hi_s = check["specialist_interval"]
    replies = ""
    if "base_replies" in check and "specialist_replies" in check:
        b, s = check["base_replies"], check["specialist_replies"]
        replies = (
            f' Replies that state "The answer is": specialist {s["stated"]}, base '
            f"{b['stated']}; cut off at the token limit: specialist {s['truncated']}, base "
            f"{b['truncated']} (a cut-off reply is judged on its last number)."
        )
    return (
        f"**The specialist on its own data** ({check['questions']} held-out {check['skill']} "
        f"questions, none of its training rows; {check['metric']}): specialist "
        f"{check['specialist_accuracy']:.1%} [{lo_s:.0%}–{hi_s:.0%}], base "
        f"{check['base_accuracy']:.1%} [{lo_b:.0%}–{hi_b:.0%}]. {check['sentence']}{replies}\n"
    )


def _credits(cells: dict[str, list[dict[str, Any]]], metric: str) -> dict[str, dict[str, float]]:
    """``{cell: {question id: credit}}`` under ``metric`` (questions without it left out)."""
    key = METRICS[metric][0]
    return {
        name: {r["question_id"]: credit(r[key]) for r in recs if r.get(key) is not None}
        for name, recs in cells.items()
    }


_STAGE_MEANING = {
    "merged": "the merge did not move the model's choices on this benchmark; see the merge "
    "sources' own scores in Figure 2",
    "dpo": "DPO did not move the model's choices on this benchmark",
    "sft": "the LoRA fine-tune on the docs did not move the model's choices on this benchmark; "
    "see lora_adapter's validation loss",
}


def unchanged_stages(
    records: dict[tuple[str, str], list[dict[str, Any]]],
    general: dict[str, list[dict[str, Any]]],
    models: list[str],
    metric: str,
    preference: dict[str, Any] | None = None,
) -> list[str]:
    """A plain sentence for every training stage whose answers (under ``metric``) equal the
    previous stage's on every question of every benchmark cell (base, merged, dpo, sft; a stage
    not scored is skipped), so identical rows never pass for a broken stage unexplained.

    Args:
        records: Each benchmark cell's records.
        general: Each model's general-set records (whether they moved there is said too).
        models: The scored models.
        metric: The headline metric.
        preference: DPO's held-out preference evaluation, cited for an unmoved dpo.
    """
    answer = METRICS[metric][1]
    contexts = sorted({c for _, c in records})

    def answers(recs: list[dict[str, Any]]) -> dict[str, Any]:
        return {r["question_id"]: r.get(answer) for r in recs}

    stages = [m for m in LOCAL_MODELS if m in models]
    notes = []
    for earlier, later in pairwise(stages):
        shared = [c for c in contexts if (earlier, c) in records and (later, c) in records]
        same = [answers(records[(later, c)]) == answers(records[(earlier, c)]) for c in shared]
        if shared and any(same) and not all(same):
            # identical in some cells only: say where, and how far the others moved
            alike = [c for c, s in zip(shared, same, strict=True) if s]
            moved_in = []
            for c in shared:
                if c in alike:
                    continue
                before, after = answers(records[(earlier, c)]), answers(records[(later, c)])
                moved = sum(1 for q, a in after.items() if before.get(q, a) != a)
                moved_in.append(f"{c}: {moved} of {len(after)} answers differ")
            where = ", ".join(alike)
            meaning = _STAGE_MEANING.get(later, f"{later} did not move the model's choices")
            notes.append(
                f"{later} answers exactly as {earlier} on every question in {where} ({metric}; "
                f"{'; '.join(moved_in)}): in {where}, {meaning}."
            )
            continue
        if not shared or not all(same):
            continue
        sizes = sorted({len(records[(later, c)]) for c in shared})
        n = " / ".join(map(str, sizes))
        text = (
            f"{later} answers exactly as {earlier} on all {n} questions in every cell "
            f"({', '.join(shared)}, {metric})"
        )
        if earlier in general and later in general:
            before, after = answers(general[earlier]), answers(general[later])
            moved = sum(1 for q, a in after.items() if before.get(q, a) != a)
            text += (
                f" and on all {len(after)} general-set questions"
                if not moved
                else f"; on the general set {moved} of {len(after)} answers differ"
            )
        meaning = _STAGE_MEANING.get(later, f"{later} did not move the model's choices")
        if later == "dpo":
            meaning += "; see its held-out preference accuracy: " + _preference_phrase(preference)
        notes.append(f"{text}: {meaning}.")
    return notes


def read_preference_eval(path: Path) -> dict[str, Any] | None:
    """``dpo_model``'s held-out preference evaluation, or None when the file is absent or
    unreadable (the report says so)."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _num(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) else float("nan")


def _preference_phrase(data: dict[str, Any] | None) -> str:
    if data is None:
        return "none was recorded (no preference_eval.json in dpo_model's folder)"
    acc, lo, hi = (_num(data, k) for k in ("accuracy", "ci_low", "ci_high"))
    return f"{_pct(acc)} [{_whole(lo)}–{_whole(hi)}] on {data.get('pairs', '?')} pairs"


def preference_markdown(data: dict[str, Any] | None, path: Path | str | None) -> str:
    """DPO's held-out preference accuracy with its interval, the training figures beside it
    and the note ``dpo_model`` wrote; says so when the file is absent."""
    if data is None:
        return (
            f"No held-out preference evaluation: {path} is absent or unreadable (dpo_model was "
            "materialized before it held out preference pairs, or it failed to write one). "
            "Re-materialize dpo_model to measure it.\n"
        )
    acc, lo, hi = (_num(data, k) for k in ("accuracy", "ci_low", "ci_high"))
    if not math.isnan(lo) and lo > 0.5:
        verdict = "its interval is clear of chance (50%): DPO moved the model on its own data"
    elif not math.isnan(hi) and hi < 0.5:
        verdict = "its interval lies below chance (50%): the policy prefers the rejected answers"
    else:
        verdict = (
            "its interval includes chance (50%): DPO did not measurably move the model's "
            "preferences"
        )
    out = (
        f"On {data.get('pairs', '?')} held-out preference pairs (never trained on), the DPO "
        "model gives the chosen answer a higher reward than the rejected one (log-probability "
        f"against the reference model, as trl computes its rewards) on **{_pct(acc)}** "
        f"[{_pct(lo)}, {_pct(hi)}] (95% Wilson interval) of them"
    )
    margin = _num(data, "margin")
    if not math.isnan(margin):
        out += f", mean reward margin {margin:.4f}"
    out += f"; {verdict}.\n"
    train = data.get("train") if isinstance(data.get("train"), dict) else None
    if train:
        keys = ("loss_first", "loss_last", "reward_accuracy")
        first, last, reward = (_num(train, k) for k in keys)
        out += (
            f"\nTraining: loss {first:.4f} → {last:.4f} over {train.get('steps', '?')} steps, "
            f"reward accuracy on the training batches {reward:.2f}.\n"
        )
    if data.get("note"):
        out += f"\n{data['note']}\n"
    return out


def regressions(
    previous: dict[str, Any], rows: list[dict[str, Any]], comparable: set[str] | None = None
) -> list[dict[str, Any]]:
    """Cells whose accuracy fell below the lower end of the 95% CI they had in the previous
    report (its numeric metadata ``accuracy_<model>_<context>`` / ``ci_low_<model>_<context>``);
    with ``comparable``, only those cells (``<model>_<context>``: scored on the same questions
    as then)."""
    out = []
    for r in rows:
        cell = f"{r['model']}_{r['context']}"
        if comparable is not None and cell not in comparable:
            continue
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
            # max: the Wilson bound at 0% or 100% may miss the point by a rounding error
            err[0].append(max(0.0, 100 * (r["accuracy"] - r["ci_low"])))
            err[1].append(max(0.0, 100 * (r["ci_high"] - r["accuracy"])))
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


_ROLE = {"merged": "merge", "dpo": "DPO of the merge", "sft": "LoRA SFT of the DPO model"}


def general_report(
    general: dict[str, list[dict[str, Any]]],
    docs_rows: list[dict[str, Any]],
    models: list[str],
    metric: str = "acc",
    n_boot: int = 10_000,
    sources: list[str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Figure 2 of the published method: each merge source, the merge, DPO and SFT on the
    general set's categories (arithmetic, general knowledge), beside the docs benchmark.

    The general set is scored closed-book like the benchmark. The paired tests, per category
    and Holm-corrected together: each source other than base vs. base (the skill the
    specialist brings), the merge vs. each source (what the merge kept of each), then each
    training stage vs. the one before it (dpo vs. merged, sft vs. dpo: what they cost).

    Args:
        general: Each model's general-capability records (``category`` per question).
        docs_rows: :func:`summarise_scores` rows of the benchmark.
        models: Row order: the merge sources, then merged, dpo, sft (those scored get a row).
        metric: The headline metric.
        n_boot: Bootstrap resamples per comparison.
        sources: The merge's source models (keys of ``general``); default ``["base"]``.

    Returns:
        (summary rows per model and category, paired comparisons, markdown).
    """
    scored = [m for m in models if m in general]
    if not scored:
        return [], [], ""
    sources = [s for s in (sources if sources is not None else ["base"]) if s in scored]
    categories: list[str] = sorted(
        {str(r["category"]) for recs in general.values() for r in recs if r.get("category")}
    )
    groups: dict[str, str | None] = {**{c: c for c in categories}, "all": None}
    rows = []
    for m in scored:
        for name, category in groups.items():
            recs = [r for r in general[m] if category is None or r.get("category") == category]
            row = summarise_scores({(m, "general"): recs}, metric)[0]
            rows.append({**row, "category": name})
    tested = categories or ["all"]
    family: list[tuple[str, str]] = []
    for g in tested:
        if "base" in sources:
            family += [(f"{s} {g}", f"base {g}") for s in sources if s != "base"]
        if "merged" in scored:
            family += [(f"merged {g}", f"{s} {g}") for s in sources]
        stages = [m for m in LOCAL_MODELS if m in scored]
        family += [(f"{b} {g}", f"{a} {g}") for a, b in pairwise(stages)]
    family = list(dict.fromkeys(family))
    cells = {
        f"{m} {g}": [r for r in general[m] if g == "all" or r.get("category") == g]
        for m in scored
        for g in tested
    }
    pairs = paired_comparisons(_credits(cells, metric), n_boot=n_boot, family=family)
    pairs = [p for p in pairs if p["family"] == "headline"]
    docs = {(r["model"], r["context"]): r for r in docs_rows}
    cell = {(r["model"], r["category"]): r for r in rows}

    def fmt(r: dict[str, Any] | None) -> str:
        if r is None:
            return "–"
        text = f"{_pct(r['accuracy'])} [{_whole(r['ci_low'])}–{_whole(r['ci_high'])}]"
        return text + (f" ({r['ties']} tied)" if r.get("ties") else "")

    def role(m: str) -> str:
        if m in sources:
            return "merge source (base)" if m == "base" else "merge source"
        return _ROLE.get(m, "")

    n = cell[(scored[0], "all")]["n"]
    columns = [*categories, "general set (all)"] if categories else ["general set"]
    out = (
        f"Each merge source, the merge, DPO and SFT on the general-capability set ({n} "
        f"questions: {', '.join(categories) or 'uncategorised'}; closed-book, scored like the "
        f"benchmark), beside this project's docs benchmark; {metric} with 95% Wilson "
        "intervals. A specialist that has its skill beats base in its column; a merge that "
        "carries it keeps that gain; forgetting shows as a general score that falls from one "
        "stage to the next.\n\n"
        "| model | role | " + " | ".join(columns) + " | docs closed-book | docs RAG |\n"
        "|---|---|" + "---|" * (len(columns) + 2) + "\n"
    )
    for m in scored:
        values = [fmt(cell.get((m, c))) for c in categories] + [fmt(cell[(m, "all")])]
        out += (
            f"| {m} | {role(m)} | " + " | ".join(values) + f" | "
            f"{fmt(docs.get((m, 'closed_book')))} | {fmt(docs.get((m, 'rag')))} |\n"
        )
    if pairs:
        out += (
            f"\nPaired tests on the same questions, per {'category' if categories else 'set'} "
            "(Holm-corrected together): each specialist vs. base, the merge vs. each source, "
            "dpo vs. merged, sft vs. dpo.\n\n" + comparisons_markdown(pairs, metric)
        )
    return rows, pairs, out


def figure2_chart(rows: list[dict[str, Any]], models: list[str], path: Path) -> Path:
    """Figure 2 as grouped bars: each model on each general-set category, 95% Wilson error
    bars, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(dict.fromkeys(r["category"] for r in rows if r["category"] != "all"))
    categories = categories or ["all"]
    shown = [m for m in models if any(r["model"] == m for r in rows)]
    cell = {(r["model"], r["category"]): r for r in rows}
    width = 0.8 / len(categories)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(shown)), 4), dpi=100)
    for j, c in enumerate(categories):
        xs: list[float] = []
        ys: list[float] = []
        err: list[list[float]] = [[], []]
        for i, m in enumerate(shown):
            r = cell.get((m, c))
            if r is None or math.isnan(r["accuracy"]):
                continue
            xs.append(i + (j - (len(categories) - 1) / 2) * width)
            ys.append(100 * r["accuracy"])
            # max: the Wilson bound at 0% or 100% may miss the point by a rounding error
            err[0].append(max(0.0, 100 * (r["accuracy"] - r["ci_low"])))
            err[1].append(max(0.0, 100 * (r["ci_high"] - r["accuracy"])))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=c)
    ax.axhline(25, color="grey", linestyle=":", linewidth=1, label="chance (25%)")
    ax.set_xticks(range(len(shown)), shown)
    ax.set_ylabel(f"{rows[0]['metric'] if rows else 'acc'} (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Merge sources, merge, DPO and SFT on the general set (95% Wilson)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report_files(
    folder: Path, report: Report, models: list[str], contexts: list[str]
) -> tuple[Path, Path | None]:
    """Write the report's files into ``folder`` (report.md, summary.json, comparisons.json,
    questions.json, accuracy.png; general.json and figure2.png with a general set;
    sampled.json in sampled mode; open_answers.json and open_answers.png with open answers);
    returns the two charts' paths (None: no Figure 2)."""
    chart = accuracy_chart(report.rows, models, contexts, folder / "accuracy.png")
    figure2 = None
    if report.general_md:
        figure2 = figure2_chart(report.general_rows, report.general_models, folder / "figure2.png")
        _write_json(
            folder / "general.json", {"rows": report.general_rows, "pairs": report.general_pairs}
        )
    if report.open_answers is not None:
        open_chart(report.open_answers.rows, folder / "open_answers.png")
        _write_json(
            folder / "open_answers.json",
            {
                "rows": report.open_answers.rows,
                "pairs": report.open_answers.pairs,
                "questions": report.open_answers.questions,
                "judge_agreement": report.open_answers.agreement,
                "judge_vs_metrics": report.open_answers.metric_agreement,
            },
        )
    atomic_write_text(folder / "report.md", report.markdown)
    _write_json(folder / "summary.json", report.rows)
    _write_json(folder / "comparisons.json", report.pairs)
    _write_json(folder / "questions.json", report.questions)
    if report.sampled_cells:
        _write_json(
            folder / "sampled.json", {"cells": report.sampled_cells, "pairs": report.sampled_pairs}
        )
    return chart, figure2


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2))


OPEN_SCORES = {
    "token_f1": "token F1 (SQuAD)",
    "exact_match": "exact match (SQuAD)",
    "rouge_l": "ROUGE-L F",
    "similarity": "embedding cosine to the reference",
    "coverage": "answer words in the retrieved chunks",
    "judge_correct": "judge: correct",
    "judge_faithful": "judge: faithful to the chunks",
}
"""The open-answer scores of ``open_scores`` records, in the report's column order."""

OPEN_TESTED = ("token_f1", "rouge_l", "similarity", "exact_match", "judge_correct")
"""The scores whose comparisons are tested (each its own Holm family)."""


@dataclass
class OpenReport:
    """The report's "Open answers" section: per cell each score's mean with its 95% interval,
    the method's comparisons per score (paired, Holm-corrected), the judge's trust, a
    per-question table with each cell's answer beside the reference, and a chart."""

    rows: list[dict[str, Any]]
    pairs: dict[str, list[dict[str, Any]]]
    markdown: str
    questions: list[dict[str, Any]]
    agreement: dict[str, Any] | None = None
    metric_agreement: dict[str, Any] = field(default_factory=dict)


def _or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: float, pct: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}"


def _md_cell(text: Any, limit: int = 160) -> str:
    """A table cell: one line, pipes escaped, long answers cut (the JSON file keeps them)."""
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    if "```" in text or text.count("`") % 2:  # an unclosed code span would swallow the row
        text = text.replace("`", "\\`")
    return text


def open_report(
    records: dict[tuple[str, str], list[dict[str, Any]]],
    models: list[str],
    contexts: list[str],
    *,
    n_boot: int = 10_000,
    agreement: dict[str, Any] | None = None,
    correct_f1: float = 0.5,
    alpha: float = 0.05,
) -> OpenReport:
    """The "Open answers" section from every ``open_scores`` cell.

    Args:
        records: Each cell's per-question records.
        models: Row order.
        contexts: Column order.
        n_boot: Bootstrap resamples (intervals of graded scores and of differences).
        agreement: ``judge_agreement``'s figures (the judge vs. people), when there is a judge.
        correct_f1: Token F1 from which an answer matches its reference, to compare the judge
            with the reference metrics.
        alpha: Significance level of the comparisons.
    """
    from ragft_dagster.evaluation.judge import kappa
    from ragft_dagster.stats import mean_interval, score_comparisons

    rows = []
    for m in models:
        for c in contexts:
            recs = records.get((m, c))
            if recs is None:
                continue
            row: dict[str, Any] = {"model": m, "context": c, "n": len(recs)}
            for name in OPEN_SCORES:
                values = [float(r[name]) for r in recs if r.get(name) is not None]
                mean, low, high = mean_interval(values, n_boot=n_boot)
                row.update({name: mean, f"{name}_ci_low": low, f"{name}_ci_high": high})
                row[f"{name}_n"] = len(values)
            row["empty_answers"] = sum(1 for r in recs if not r["answer"].strip())
            row["truncated"] = sum(1 for r in recs if r.get("truncated"))
            judged = [r for r in recs if "judge_correct" in r]
            row["judge_unreadable"] = sum(
                1
                for r in judged
                for k in ("judge_correct", "judge_faithful")
                if k in r and r[k] is None
            )
            if c == "rag":
                for key in ("source_retrieved", "reference_chunk_retrieved"):
                    known = [float(r[key]) for r in recs if r.get(key) is not None]
                    row[key] = sum(known) / len(known) if known else float("nan")
            rows.append(row)
    cells = {f"{m} {c}": recs for (m, c), recs in records.items()}
    family = headline_family(models, contexts)
    pairs = {}
    for name in OPEN_TESTED:
        scores = {
            cell: {str(r["question_id"]): float(r[name]) for r in recs if r.get(name) is not None}
            for cell, recs in cells.items()
        }
        scores = {k: v for k, v in scores.items() if v}
        if scores:
            pairs[name] = score_comparisons(scores, family, alpha=alpha, n_boot=n_boot)
    judged = [r for recs in records.values() for r in recs if r.get("judge_correct") is not None]
    metric_agreement: dict[str, Any] = {}
    if judged:
        from scipy.stats import spearmanr

        verdicts = [bool(r["judge_correct"]) for r in judged]
        metric_agreement["f1_kappa"] = kappa(
            [(v, r["token_f1"] >= correct_f1) for v, r in zip(verdicts, judged, strict=True)]
        )
        metric_agreement["exact_kappa"] = kappa(
            [(v, bool(r["exact_match"])) for v, r in zip(verdicts, judged, strict=True)]
        )
        for name in ("token_f1", "rouge_l", "similarity"):
            values = [_or_nan(r.get(name)) for r in judged]
            if len(set(verdicts)) > 1 and len(set(values)) > 1:
                rho = spearmanr([float(v) for v in verdicts], values)
                metric_agreement[f"{name}_spearman"] = float(rho.statistic)
            for v in (True, False):
                group = [x for x, w in zip(values, verdicts, strict=True) if w is v]
                label = "correct" if v else "incorrect"
                metric_agreement[f"{name}_mean_when_{label}"] = (
                    sum(group) / len(group) if group else float("nan")
                )
        metric_agreement["judged"] = len(judged)
    questions = _open_question_rows(records, models, contexts)
    md = _open_markdown(
        rows, pairs, questions, models, contexts, agreement, metric_agreement, correct_f1
    )
    return OpenReport(rows, pairs, md, questions, agreement, metric_agreement)


def _open_question_rows(
    records: dict[tuple[str, str], list[dict[str, Any]]], models: list[str], contexts: list[str]
) -> list[dict[str, Any]]:
    by_q: dict[str, dict[str, Any]] = {}
    for m in models:
        for c in contexts:
            for r in records.get((m, c), []):
                row = by_q.setdefault(
                    r["question_id"],
                    {"row": r["row"], "question": r["question"], "reference": r["reference"]},
                )
                row[f"{m} {c}"] = {
                    k: r.get(k)
                    for k in ("answer", "token_f1", "rouge_l", "judge_correct", "truncated")
                }
    return sorted(by_q.values(), key=lambda x: x["row"])


def _open_markdown(
    rows: list[dict[str, Any]],
    pairs: dict[str, list[dict[str, Any]]],
    questions: list[dict[str, Any]],
    models: list[str],
    contexts: list[str],
    agreement: dict[str, Any] | None,
    metric_agreement: dict[str, Any],
    correct_f1: float,
) -> str:
    shown = [n for n in OPEN_SCORES if any(r[f"{n}_n"] for r in rows)]
    n = max((r["n"] for r in rows), default=0)
    out = (
        f"The {n} open questions answered by each cell as `ragft ask` answers them (greedy "
        "decoding), scored against the reference answers. Each score is its mean over the "
        "questions with a 95% interval (Wilson for 0/1 scores, else a bootstrap over "
        "questions).\n\n"
        "| cell | " + " | ".join(OPEN_SCORES[s] for s in shown) + " | empty / cut off |\n"
        "|---|" + "---:|" * len(shown) + "---:|\n"
    )
    for r in rows:
        parts = [
            f"{_fmt(r[s])} [{_fmt(r[f'{s}_ci_low'])}, {_fmt(r[f'{s}_ci_high'])}]"
            if r[f"{s}_n"]
            else "–"
            for s in shown
        ]
        out += (
            f"| {r['model']} {r['context']} | "
            + " | ".join(parts)
            + f" | {r['empty_answers']} / {r['truncated']} |\n"
        )
    rag = [r for r in rows if r["context"] == "rag"]
    if rag:
        out += (
            "\nRetrieval for the open questions: the share whose `source` document was among "
            "the retrieved chunks, and whose reference-holding chunk was (the chunk of that "
            "document holding most of the reference's content words).\n\n"
            "| cell | source document retrieved | reference chunk retrieved |\n|---|---:|---:|\n"
        )
        for r in rag:
            out += (
                f"| {r['model']} rag | {_fmt(r['source_retrieved'], True)} | "
                f"{_fmt(r['reference_chunk_retrieved'], True)} |\n"
            )
    if any(r["judge_unreadable"] for r in rows):
        out += "\nUnreadable judge verdicts (left out of the judge's figures, never guessed): "
        out += ", ".join(
            f"{r['model']} {r['context']} {r['judge_unreadable']}"
            for r in rows
            if r["judge_unreadable"]
        )
        out += ".\n"
    for name, rows_ in pairs.items():
        if not rows_:
            continue
        out += (
            f"\n**{OPEN_SCORES[name]}**: the method's comparisons, paired per question, "
            "Holm-corrected together (the verdict is from the adjusted p).\n\n"
            "| A vs B | n | A | B | A − B [95% bootstrap CI] | test | p | Holm p "
            "| min. detectable diff. | verdict |\n|---|---:|---:|---:|---|---|---:|---:|---:|---|\n"
        )
        for p in rows_:
            mde = "n/a" if math.isnan(p["mde"]) else f"{p['mde']:.3f}"
            extra = f" ({p['only_a']} / {p['only_b']})" if "only_a" in p else ""
            out += (
                f"| {p['a']} vs {p['b']} | {p['n']} | {_fmt(p['mean_a'])} | {_fmt(p['mean_b'])} "
                f"| {p['difference']:+.3f} [{p['diff_ci_low']:+.3f}, {p['diff_ci_high']:+.3f}] | "
                f"{p['test']}{extra} | {p['p']:.3f} | {p['holm_p']:.3f} | {mde} | "
                f"{'significant' if p['significant'] else 'not significant'} |\n"
            )
    if agreement:
        h, s = agreement["human"], agreement["self_consistency"]
        out += (
            f"\n**Can the judge be trusted?** `{agreement['model']}` on {agreement['labelled']} "
            f"answers labelled by people: agreement {_fmt(h['agreement'], True)}, Cohen's kappa "
            f"{_fmt(h['kappa'])} [95% CI {_fmt(h['kappa_ci_low'])}, {_fmt(h['kappa_ci_high'])}] "
            f"over {h['n']} readable verdicts ({agreement['unreadable']} unreadable). Asked "
            f"twice on {s['asked_twice']}: the same verdict {_fmt(s['agreement'], True)} of the "
            f"time (kappa {_fmt(s['kappa'])}; {s['unreadable']} pair(s) with an unreadable "
            f"reply). Requests {agreement['judge_requests']}, cached "
            f"{agreement['judge_cache_hits']}; replies ignoring the JSON schema "
            f"{agreement['judge_off_schema']}.\n"
        )
    if metric_agreement:
        f1k, exk = metric_agreement["f1_kappa"], metric_agreement["exact_kappa"]
        out += (
            f"\n**The judge vs. the reference metrics** ({metric_agreement['judged']} judged "
            f"answers): kappa with token F1 ≥ {correct_f1:g} {_fmt(f1k['kappa'])} "
            f"[{_fmt(f1k['kappa_ci_low'])}, {_fmt(f1k['kappa_ci_high'])}], with exact match "
            f"{_fmt(exk['kappa'])}; "
            + "; ".join(
                f"{OPEN_SCORES[n]}: mean {_fmt(metric_agreement[f'{n}_mean_when_correct'])} "
                f"where judged correct, {_fmt(metric_agreement[f'{n}_mean_when_incorrect'])} "
                f"where incorrect"
                + (
                    f", Spearman {metric_agreement[f'{n}_spearman']:.2f}"
                    if f"{n}_spearman" in metric_agreement
                    else ""
                )
                for n in ("token_f1", "rouge_l", "similarity")
            )
            + ".\n"
        )
    cells = [
        f"{m} {c}" for m in models for c in contexts if any(f"{m} {c}" in q for q in questions)
    ]
    out += (
        "\n**Per question**: each cell's answer beside the reference (token F1; judge ✓/✗ "
        "where judged; ✂ cut off at max_new_tokens).\n\n"
        "| row | question | reference | "
        + " | ".join(cells)
        + " |\n|---:|---|---|"
        + "---|" * len(cells)
        + "\n"
    )
    for q in questions:
        parts = []
        for cell in cells:
            a = q.get(cell)
            if a is None:
                parts.append("–")
                continue
            mark = (
                {1.0: " ✓", 0.0: " ✗"}.get(a["judge_correct"], "")
                if a["judge_correct"] is not None
                else ""
            )
            cut = " ✂" if a["truncated"] else ""
            parts.append(f"{_md_cell(a['answer'])} (F1 {a['token_f1']:.2f}{mark}{cut})")
        out += (
            f"| {q['row']} | {_md_cell(q['question'])} | {_md_cell(q['reference'])} | "
            + " | ".join(parts)
            + " |\n"
        )
    return out


def open_chart(rows: list[dict[str, Any]], path: Path) -> Path:
    """Bars of token F1, ROUGE-L and (when judged) the judge's correct share per cell, with
    their 95% intervals, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [
        s
        for s in ("token_f1", "rouge_l", "similarity", "judge_correct")
        if any(r[f"{s}_n"] for r in rows)
    ]
    width = 0.8 / max(len(scores), 1)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for j, s in enumerate(scores):
        xs = [i + (j - (len(scores) - 1) / 2) * width for i in range(len(rows))]
        ys = [0.0 if math.isnan(r[s]) else r[s] for r in rows]
        err = [
            [
                max(0.0, y - r[f"{s}_ci_low"]) if not math.isnan(r[f"{s}_ci_low"]) else 0.0
                for y, r in zip(ys, rows, strict=True)
            ],
            [
                max(0.0, r[f"{s}_ci_high"] - y) if not math.isnan(r[f"{s}_ci_high"]) else 0.0
                for y, r in zip(ys, rows, strict=True)
            ],
        ]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=OPEN_SCORES[s])
    ax.set_xticks(range(len(rows)), [f"{r['model']}\n{r['context']}" for r in rows])
    ax.set_ylim(0, 1)
    ax.set_title("Open answers with 95% intervals")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
