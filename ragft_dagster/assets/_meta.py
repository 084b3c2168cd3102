"""Metadata helpers shared by the asset modules (private to ``assets/``; the document
partitions and their per-partition metadata, which the CLI drivers, sensors and benchmarks
share too, are in :mod:`ragft_dagster.assets.partitions`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.evaluation.report import METRICS


def preview_table(
    rows: list[dict[str, Any]], columns: list[str], limit: int = 10, width: int = 120
) -> dg.MetadataValue:
    """First rows of a record list as a UI table (long strings shortened)."""

    def cell(value: Any) -> Any:
        if isinstance(value, list):
            value = " > ".join(map(str, value))
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, str) and len(value) > width:
            return value[: width - 1] + "…"
        return value if isinstance(value, int | bool | str) else str(value)

    records = [dg.TableRecord({c: cell(r.get(c, "")) for c in columns}) for r in rows[:limit]]
    schema = dg.TableSchema(columns=[dg.TableColumn(c) for c in columns])
    return dg.MetadataValue.table(records=records, schema=schema)


def training_result(path: Path, metrics: dict[str, Any], **extra: Any) -> dg.MaterializeResult:
    """A trained artifact's metadata: its path, every metric the trainer reported (numbers are
    plotted over time in the UI) and the loss curve as JSON."""
    curve = [round(x, 4) for x in metrics.get("loss_curve", [])]
    scalars = {k: v for k, v in metrics.items() if k != "loss_curve"}
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            **scalars,
            **extra,
            "loss_curve": dg.MetadataValue.json(curve),
        }
    )


def cell_metadata(
    path: Path, records: list[dict[str, Any]], stats: Any, ctx: str, *, sampled: bool
) -> dict[str, Any]:
    """An ``mcq_scores`` partition's metadata: accuracy with its interval, the other metrics,
    retrieval figures (``rag``), the sampled statistic, API request counts (``stats``, API
    models) and a per-question preview."""
    from ragft_dagster.evaluation.report import summarise_scores
    from ragft_dagster.stats import sampled_cell

    row = summarise_scores({("cell", ctx): records})[0]
    metadata: dict[str, Any] = {
        "path": dg.MetadataValue.path(str(path)),
        "accuracy": row["accuracy"],
        "ci95_low": row["ci_low"],
        "ci95_high": row["ci_high"],
        "questions": row["n"],
        "correct": row["correct"],
        "invalid_answers": row["invalid"],
    }
    for name in METRICS:
        if name != "acc" and not math.isnan(row[name]):
            metadata[name] = row[name]
    # questions whose top choice is tied (each counts 1/k correct): numbers, plotted per run
    for name in METRICS:
        if not math.isnan(row[name]):
            metadata[f"ties_{name}"] = row[f"{name}_ties"]
    if not math.isnan(row["mean_letter_mass"]):
        metadata["mean_letter_mass"] = row["mean_letter_mass"]
    if ctx == "rag":
        metadata["answer_located"] = row["answer_located"]
        if not math.isnan(row["retrieval_hit_rate"]):
            metadata["retrieval_hit_rate"] = row["retrieval_hit_rate"]
    if sampled:
        cell = sampled_cell(
            {r["question_id"]: [s == r["correct"] for s in r["samples"]] for r in records}
        )
        metadata["sampled_accuracy"] = cell["accuracy"]
        metadata["sampled_design_effect"] = cell["design_effect"]
    if stats is not None:
        metadata.update(
            {
                "llm_requests": stats.requests,
                "cache_hits": stats.cache_hits,
                "llm_retries": stats.retries,
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
            }
        )
    columns = ["row", "correct", "predicted", "is_correct", "predicted_norm"]
    columns += ["predicted_bytes", "predicted_option"]
    columns += ["reply"] if stats is not None else ["mass"]
    columns += ["support_coverage", "retrieval_hit"] if ctx == "rag" else []
    metadata["per_question"] = preview_table(records, columns, limit=50)
    return metadata


def general_metadata(
    path: Path, records: list[dict[str, Any]], model_key: str, metric: str
) -> dict[str, Any]:
    """A ``general_scores`` partition's metadata: the headline metric overall and per category
    with its interval and ties, and a per-question preview."""
    from ragft_dagster.evaluation.report import general_report

    rows, _, _ = general_report({model_key: records}, [], [model_key], metric, sources=[])
    metadata: dict[str, Any] = {"path": dg.MetadataValue.path(str(path)), "metric": metric}
    for row in rows:
        suffix = "" if row["category"] == "all" else f"_{row['category']}"
        metadata[f"accuracy{suffix}"] = row["accuracy"]
        metadata[f"ci95_low{suffix}"] = row["ci_low"]
        metadata[f"ci95_high{suffix}"] = row["ci_high"]
        metadata[f"ties{suffix}"] = row["ties"]
    metadata["questions"] = len(records)
    correct, answer = METRICS[metric]
    metadata["per_question"] = preview_table(
        records, ["row", "category", "correct", answer, correct], limit=100
    )
    return metadata


def report_metadata(
    folder: Path, report: Any, headline_metric: str, png: str, figure2_png: str | None = None
) -> dict[str, Any]:
    """``mcq_report``'s metadata: the comparison table, ties and tests, the charts, Figure 2,
    DPO's held-out preference accuracy, and each cell's figures as numbers so the UI plots
    their history."""
    metadata: dict = {
        "path": dg.MetadataValue.path(str(folder)),
        "comparison": dg.MetadataValue.md(report.table_md),
        "paired_comparisons": dg.MetadataValue.md(report.comparisons_md),
        "headline_metric": headline_metric,
        # the headline family's verdicts (Holm); exploratory pairs are not findings
        "significant_pairs": sum(
            1 for r in report.pairs if r["family"] == "headline" and r["significant"]
        ),
        "per_question": dg.MetadataValue.md(report.questions_md),
        "context_mismatched_rows": len(report.mismatched_rows),
        "summary": preview_table(
            report.rows,
            ["model", "context", "metric", "n", "correct", "accuracy", "ci_low", "ci_high"]
            + ["ties", *METRICS, "invalid"],
            limit=len(report.rows),
        ),
        "chart": dg.MetadataValue.md(f"![accuracy](data:image/png;base64,{png})"),
        "ties": dg.MetadataValue.md(report.ties_md),
        "unchanged_stages": len(report.stage_notes),
    }
    if report.stage_notes:
        metadata["stage_notes"] = dg.MetadataValue.md("\n\n".join(report.stage_notes))
    if report.general_md:
        metadata["figure_2"] = dg.MetadataValue.md(report.general_md)
        if figure2_png:
            metadata["figure_2_chart"] = dg.MetadataValue.md(
                f"![Figure 2](data:image/png;base64,{figure2_png})"
            )
        for g in report.general_rows:
            category = "" if g["category"] == "all" else f"_{g['category']}"
            metadata[f"general{category}_accuracy_{g['model']}"] = g["accuracy"]
    if report.preference_md:
        metadata["dpo_preference"] = dg.MetadataValue.md(report.preference_md)
        pref = report.preference or {}
        for key in ("accuracy", "ci_low", "ci_high", "pairs", "margin"):
            if isinstance(pref.get(key), int | float):
                metadata[f"dpo_preference_{key}"] = pref[key]
    if report.retrieval_md:
        metadata["retrieval_vs_generation"] = dg.MetadataValue.md(report.retrieval_md)
    if report.sampled_md:
        metadata["sampled_mode"] = dg.MetadataValue.md(report.sampled_md)
    for r in report.rows:  # numeric, so the UI plots each cell's history
        cell = f"{r['model']}_{r['context']}"
        metadata[f"accuracy_{cell}"] = r["accuracy"]
        metadata[f"ci_low_{cell}"] = r["ci_low"]
        metadata[f"ci_high_{cell}"] = r["ci_high"]
        metadata[f"ties_{cell}"] = r["ties"]
        for name in METRICS:
            if not math.isnan(r[name]):
                metadata[f"{name}_{cell}"] = r[name]
    return metadata
