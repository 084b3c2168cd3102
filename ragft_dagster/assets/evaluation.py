"""Benchmark assets: per-question scores for every model x context, then the report."""

import base64
import json
from collections.abc import Mapping
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import ArtifactLayout, atomic_dir, read_jsonl, write_jsonl
from ragft_dagster.assets._meta import (
    EAGER,
    EAGER_SETTLED,
    TRIGGER_TAG,
    cell_metadata,
    general_metadata,
    report_metadata,
)
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.evaluation.gate import GateDecision, release_decision
from ragft_dagster.evaluation.mcq import McqError, load_questions, question_set
from ragft_dagster.evaluation.report import (
    PREFERENCE_FILE,
    build_report,
    regressions,
    write_report_files,
)
from ragft_dagster.evaluation.scoring import evaluate_cell, evaluate_general
from ragft_dagster.llm.client import BudgetExceeded, LlmCallError
from ragft_dagster.models.refs import LocalModels, merge_source_keys
from ragft_dagster.resources import (
    ArtifactStoreResource,
    ComputeResource,
    LlmEndpointResource,
    VectorStoreResource,
)


def _numeric(metadata: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v.value)
        for k, v in metadata.items()
        if isinstance(v, dg.FloatMetadataValue | dg.IntMetadataValue) and v.value is not None
    }


def release_gate_decision(recipe: Recipe, layout: ArtifactLayout) -> GateDecision | str:
    """The release gate decided from the scored cells, or why it cannot be decided yet."""
    gate, ev = recipe.release_gate, recipe.evaluation
    models = (gate.candidate, gate.baseline)
    missing = [
        f"mcq_scores[{m}|{gate.context}]"
        for m in models
        if not layout.scores(m, gate.context).is_file()
    ]
    use_general = recipe.general_questions_path is not None
    if use_general:
        missing += [
            f"general_scores[{m}]" for m in models if not layout.general_scores(m).is_file()
        ]
    if missing:
        return f"{', '.join(missing)} not materialized; materialize them, then mcq_report"
    return release_decision(
        gate.candidate,
        gate.baseline,
        gate.context,
        {m: read_jsonl(layout.scores(m, gate.context)) for m in models},
        {m: read_jsonl(layout.general_scores(m)) for m in models} if use_general else None,
        metric=ev.headline_metric,
        alpha=gate.alpha,
        max_general_drop=gate.max_general_drop,
        n_boot=ev.bootstrap_samples,
    )


def build(recipe: Recipe, gpu_tags: Mapping[str, Any] | None = None) -> list[Any]:
    ev = recipe.evaluation
    partitions = dg.MultiPartitionsDefinition(
        {
            "model": dg.StaticPartitionsDefinition(ev.all_models),
            "context": dg.StaticPartitionsDefinition(list(ev.contexts)),
        }
    )

    @dg.asset(
        automation_condition=EAGER_SETTLED,
        deps=["merged_model", "dpo_model", "lora_adapter", "vector_index"],
        partitions_def=partitions,
        group_name="evaluation",
        pool="gpu",
        op_tags=dict(gpu_tags or {}),
        kinds={"pytorch", "openai"} if ev.api.models else {"pytorch"},
        code_version=recipe.section_version(
            "evaluation", "retrieval", "base_model", files=(recipe.questions_path,)
        ),
    )
    def mcq_scores(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
        vector_store: VectorStoreResource,
        llm: LlmEndpointResource,
    ) -> dg.MaterializeResult:
        """Per-question multiple-choice results of one model, closed-book or with RAG: local
        models by log-likelihood (acc: the letter; acc_norm, acc_option: the option text), API
        models by the letter they answer."""
        keys = partitions.get_partition_key_from_str(context.partition_key).keys_by_dimension
        model_key, ctx = keys["model"], keys["context"]
        layout = artifacts.layout()
        try:
            records, stats = evaluate_cell(
                ev,
                recipe.retrieval,
                recipe.questions_path,
                LocalModels.of(recipe, layout),
                model_key,
                ctx,
                compute=compute.settings(),
                open_collection=lambda: vector_store.collection(
                    recipe.retrieval.collection, layout.vector_index
                ),
                llm_client=lambda: llm.client(
                    timeout=ev.api.request_timeout, max_retries=0
                ),  # retries are ours (call_llm)
                # the nightly run re-asks hosted models: their answers may change over time
                refresh_api=context.run.tags.get(TRIGGER_TAG) == "nightly",
            )
        except (BudgetExceeded, LlmCallError, McqError) as exc:
            raise dg.Failure(description=f"mcq_scores[{model_key}|{ctx}]: {exc}") from None
        path = layout.scores(model_key, ctx)
        write_jsonl(path, records)
        metadata = cell_metadata(path, records, stats, ctx, sampled=bool(ev.sampling.rounds))
        metadata["question_set"] = dg.MetadataValue.text(question_set(records))
        prefixed = sum(q.letter_prefixed for q in load_questions(recipe.questions_path))
        if prefixed:  # the published benchmark's format: "A. To send a single query ..."
            metadata["letter_prefixes_stripped"] = prefixed
            context.log.info(
                f"{prefixed} question(s) of {recipe.questions_path.name} wrote each option with "
                "its letter ('A. ...'); the letters were stripped, so the prompt shows them once "
                "and the option-text metrics score the answer alone"
            )
        return dg.MaterializeResult(metadata=metadata)

    general_path = recipe.general_questions_path
    general_scores = None
    # Figure 2: every merge source (base, the specialist...) is scored beside the stages
    sources = list(merge_source_keys(recipe))
    general_keys = list(dict.fromkeys([*sources, *ev.models]))
    if general_path is not None and ev.models:
        general_partitions = dg.StaticPartitionsDefinition(general_keys)

        @dg.asset(
            automation_condition=EAGER_SETTLED,
            deps=[
                *(["specialist_model"] if recipe.specialist else []),
                "merged_model",
                "dpo_model",
                "lora_adapter",
            ],
            partitions_def=general_partitions,
            group_name="general",
            pool="gpu",
            op_tags=dict(gpu_tags or {}),
            kinds={"pytorch"},
            code_version=recipe.section_version(
                "evaluation.general_questions",
                "evaluation.system_prompt",
                "evaluation.user_template",
                "base_model",
                files=(general_path,),
            ),
        )
        def general_scores(
            context: dg.AssetExecutionContext,
            artifacts: ArtifactStoreResource,
            compute: ComputeResource,
        ) -> dg.MaterializeResult:
            """One local model (a merge source such as the specialist, or a pipeline stage) on
            the general-capability set (general knowledge and arithmetic), closed-book and
            scored like the benchmark: what each source brings, what merging keeps and what
            fine-tuning forgets."""
            model_key = context.partition_key
            layout = artifacts.layout()
            try:
                records = evaluate_general(
                    ev,
                    general_path,
                    LocalModels.of(recipe, layout),
                    model_key,
                    compute=compute.settings(),
                )
            except McqError as exc:
                raise dg.Failure(description=f"general_scores[{model_key}]: {exc}") from None
            path = layout.general_scores(model_key)
            write_jsonl(path, records)
            return dg.MaterializeResult(
                metadata=general_metadata(path, records, model_key, ev.headline_metric)
            )

    report_deps: list[Any] = [dg.AssetDep(mcq_scores, partition_mapping=dg.AllPartitionMapping())]
    if general_scores is not None:
        report_deps.append(dg.AssetDep(general_scores, partition_mapping=dg.AllPartitionMapping()))

    @dg.asset(
        automation_condition=EAGER,
        deps=report_deps,
        group_name="report",
        kinds={"pandas", "matplotlib"},
        # the headline metric is left out of mcq_scores' version (choosing it re-scores nothing)
        code_version=recipe.section_version("evaluation", "evaluation.headline_metric"),
    )
    def mcq_report(artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
        """Accuracy per model x context with 95% intervals and ties, paired tests (the method's
        comparisons Holm-corrected, the rest exploratory), retrieval vs. generation failures,
        Figure 2 (merge sources, merge, DPO and SFT on the general set), DPO's held-out
        preference accuracy, a per-question table and charts."""
        layout = artifacts.layout()
        models, contexts = ev.all_models, [str(c) for c in ev.contexts]
        cells = [(m, c) for m in models for c in contexts]
        missing = [f"{m}|{c}" for m, c in cells if not layout.scores(m, c).is_file()]
        if missing:
            raise dg.Failure(
                f"mcq_scores is not materialized for {missing}; materialize "
                "every mcq_scores partition first"
            )
        general: dict[str, list[dict[str, Any]]] = {}
        if general_scores is not None:
            absent = [m for m in general_keys if not layout.general_scores(m).is_file()]
            if absent:
                raise dg.Failure(
                    f"general_scores is not materialized for {absent}; materialize every "
                    "general_scores partition first"
                )
            general = {m: read_jsonl(layout.general_scores(m)) for m in general_keys}
        scored = {(m, c): read_jsonl(layout.scores(m, c)) for m, c in cells}
        report = build_report(
            scored,
            models,
            contexts,
            n_boot=ev.bootstrap_samples,
            metric=ev.headline_metric,
            support_threshold=ev.support_threshold,
            general=general,
            general_models=general_keys,
            sources=sources,
            preference_file=layout.dpo_model / PREFERENCE_FILE,
        )
        with atomic_dir(layout.report) as tmp:
            chart, figure2 = write_report_files(tmp, report, models, contexts)
            png = base64.b64encode(chart.read_bytes()).decode()
            figure2_png = base64.b64encode(figure2.read_bytes()).decode() if figure2 else None
        metadata = report_metadata(layout.report, report, ev.headline_metric, png, figure2_png)
        # which questions each cell was scored on: the regression check compares like with like
        for (m, c), records in scored.items():
            metadata[f"questions_{m}_{c}"] = dg.MetadataValue.text(question_set(records))
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset_check(
        asset=mcq_report,
        description="No cell's accuracy fell below the 95% CI it had in the previous report.",
    )
    def mcq_report_no_regression(
        context: dg.AssetCheckExecutionContext, artifacts: ArtifactStoreResource
    ) -> dg.AssetCheckResult:
        history = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=mcq_report.key), limit=2
        ).records
        rows = json.loads((artifacts.layout().report / "summary.json").read_text("utf-8"))
        if len(history) < 2:
            return dg.AssetCheckResult(
                passed=True,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"compared_with": "nothing (first report)"},
            )
        previous = history[1].asset_materialization
        before = dict(previous.metadata) if previous else {}
        # reports before headline_metric existed headlined acc
        metric = before["headline_metric"].value if "headline_metric" in before else "acc"
        if metric != ev.headline_metric:
            return dg.AssetCheckResult(
                passed=True,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "compared_with": f"nothing (the previous report's headline was {metric}, "
                    f"this one's is {ev.headline_metric})"
                },
            )
        now = (
            dict(history[0].asset_materialization.metadata)
            if history[0].asset_materialization
            else {}
        )
        comparable, rebased = set(), []
        for r in rows:
            cell = f"{r['model']}_{r['context']}"
            then, current = before.get(f"questions_{cell}"), now.get(f"questions_{cell}")
            if then is not None and current is not None and then.value == current.value:
                comparable.add(cell)
            else:
                rebased.append(f"{r['model']} {r['context']}")
        dropped = regressions(_numeric(before), rows, comparable)
        said = []
        if dropped:
            said.append(
                "accuracy fell below the previous 95% CI in: "
                + ", ".join(f"{d['cell']} ({d['previous']:.3f} → {d['now']:.3f})" for d in dropped)
            )
        if rebased:
            said.append(
                f"{', '.join(rebased)}: scored on other questions than the previous report (or "
                "it recorded none): a new baseline, not compared"
            )
        return dg.AssetCheckResult(
            passed=not dropped,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "regressions": len(dropped),
                "cells": dg.MetadataValue.json(dropped),
                "new_baseline": dg.MetadataValue.json(rebased),
                "previous_run_id": history[1].run_id,
            },
            description="; ".join(said) or None,
        )

    checks: list[Any] = [mcq_report_no_regression]
    gate = recipe.release_gate
    # Blocking only means something with an export to hold back: without one, a failed gate is
    # a warning, and `make run` ends successfully with it reported.
    blocking = gate.blocking and recipe.export.enabled
    if gate.enabled:

        @dg.asset_check(
            asset=mcq_report,
            blocking=blocking,
            description=f"Release gate: {gate.candidate} {gate.context} beats {gate.baseline} "
            f"{gate.context} on the benchmark (one-sided paired test, alpha {gate.alpha}) and "
            f"its general score fell at most {gate.max_general_drop:g} below "
            f"{gate.baseline}'s.",
        )
        def release_gate(artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
            severity = dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN
            decision = release_gate_decision(recipe, artifacts.layout())
            if isinstance(decision, str):
                return dg.AssetCheckResult(passed=False, severity=severity, description=decision)
            return dg.AssetCheckResult(
                passed=decision.passed,
                severity=severity,
                description=decision.summary(),
                metadata={
                    "decision": "release" if decision.passed else "hold",
                    **decision.figures,
                    "reasons": dg.MetadataValue.json(decision.reasons),
                },
            )

        checks.append(release_gate)
    general: list[Any] = [general_scores] if general_scores is not None else []
    return [mcq_scores, *general, mcq_report, *checks]
