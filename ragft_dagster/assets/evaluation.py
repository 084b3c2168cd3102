"""Benchmark assets: per-question scores for every model x context, then the report."""

import base64
import json

import dagster as dg

from ragft_dagster.artifacts import atomic_dir, atomic_write_text, read_jsonl, write_jsonl
from ragft_dagster.assets._meta import EAGER, preview_table
from ragft_dagster.evaluation import evaluate_cell
from ragft_dagster.recipe import Recipe
from ragft_dagster.report import accuracy_chart, build_report, wilson_interval
from ragft_dagster.resources import ArtifactStoreResource, ComputeResource, VectorStoreResource


def build(recipe: Recipe) -> list[dg.AssetsDefinition]:
    ev = recipe.evaluation
    partitions = dg.MultiPartitionsDefinition(
        {
            "model": dg.StaticPartitionsDefinition(list(ev.models)),
            "context": dg.StaticPartitionsDefinition(list(ev.contexts)),
        }
    )

    @dg.asset(
        automation_condition=EAGER,
        deps=["merged_model", "dpo_model", "lora_adapter", "vector_index"],
        partitions_def=partitions,
        group_name="evaluation",
        pool="gpu",
        kinds={"pytorch"},
        code_version=recipe.section_version(
            "evaluation", "retrieval", "base_model", files=(recipe.questions_path,)
        ),
    )
    def mcq_scores(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
        vector_store: VectorStoreResource,
    ) -> dg.MaterializeResult:
        """Per-question multiple-choice results of one model, closed-book or with RAG."""
        keys = partitions.get_partition_key_from_str(context.partition_key).keys_by_dimension
        model_key, ctx = keys["model"], keys["context"]
        layout = artifacts.layout()
        records = evaluate_cell(
            recipe,
            layout,
            model_key,
            ctx,
            compute=compute.settings(),
            open_collection=lambda: vector_store.collection(
                recipe.retrieval.collection, layout.vector_index
            ),
        )
        path = layout.scores(model_key, ctx)
        write_jsonl(path, records)
        k, n = sum(r["is_correct"] for r in records), len(records)
        lo, hi = wilson_interval(k, n)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "accuracy": k / n,
                "ci95_low": lo,
                "ci95_high": hi,
                "questions": n,
                "correct": k,
                "mean_letter_mass": sum(r["mass"] for r in records) / n,
                "per_question": preview_table(
                    records, ["row", "correct", "predicted", "is_correct", "mass"], limit=50
                ),
            }
        )

    @dg.asset(
        automation_condition=EAGER,
        deps=[dg.AssetDep(mcq_scores, partition_mapping=dg.AllPartitionMapping())],
        group_name="evaluation",
        kinds={"pandas", "matplotlib"},
        code_version=recipe.section_version("evaluation"),
    )
    def mcq_report(artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
        """Accuracy per model x context with 95% intervals, as a table and a bar chart."""
        layout = artifacts.layout()
        cells = [(m, c) for m in ev.models for c in ev.contexts]
        missing = [f"{m}|{c}" for m, c in cells if not layout.scores(m, c).is_file()]
        if missing:
            raise dg.Failure(
                f"mcq_scores is not materialized for {missing}; materialize "
                "every mcq_scores partition first"
            )
        report = build_report(
            {(m, c): read_jsonl(layout.scores(m, c)) for m, c in cells},
            list(ev.models),
            list(ev.contexts),
        )
        rows = report.rows
        with atomic_dir(layout.report) as tmp:
            chart = accuracy_chart(rows, list(ev.models), list(ev.contexts), tmp / "accuracy.png")
            atomic_write_text(tmp / "report.md", report.markdown)
            atomic_write_text(tmp / "summary.json", json.dumps(rows, indent=2))
            atomic_write_text(tmp / "comparisons.json", json.dumps(report.pairs, indent=2))
            png = base64.b64encode(chart.read_bytes()).decode()
        metadata: dict = {
            "path": dg.MetadataValue.path(str(layout.report)),
            "comparison": dg.MetadataValue.md(report.table_md),
            "paired_comparisons": dg.MetadataValue.md(report.comparisons_md),
            "significant_pairs": sum(1 for r in report.pairs if r["significant"]),
            "summary": preview_table(
                rows,
                [
                    "model",
                    "context",
                    "n",
                    "correct",
                    "accuracy",
                    "ci_low",
                    "ci_high",
                    "mean_letter_mass",
                ],
                limit=len(rows),
            ),
            "chart": dg.MetadataValue.md(f"![accuracy](data:image/png;base64,{png})"),
        }
        for r in rows:  # numeric, so the UI plots each cell's history
            metadata[f"accuracy_{r['model']}_{r['context']}"] = r["accuracy"]
        return dg.MaterializeResult(metadata=metadata)

    return [mcq_scores, mcq_report]
