"""Benchmark assets: per-question scores for every model x context, then the report."""

import base64
import json
from collections.abc import Mapping
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import (
    ArtifactLayout,
    atomic_dir,
    atomic_write_text,
    read_jsonl,
    write_jsonl,
)
from ragft_dagster.assets._meta import (
    cell_metadata,
    general_metadata,
    preview_table,
    report_metadata,
)
from ragft_dagster.assets.partitions import EAGER, EAGER_SETTLED, TRIGGER_TAG
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.evaluation.gate import GateDecision, release_decision
from ragft_dagster.evaluation.judge import LabelsError, judge_agreement, load_labels
from ragft_dagster.evaluation.mcq import McqError, load_questions, question_set
from ragft_dagster.evaluation.open_answers import (
    OpenQuestionsError,
    evaluate_open_cell,
    judge_agreement_path,
    open_scores_path,
)
from ragft_dagster.evaluation.report import (
    OPEN_SCORES,
    PREFERENCE_FILE,
    build_report,
    open_report,
    regressions,
    write_report_files,
)
from ragft_dagster.evaluation.scoring import evaluate_cell, evaluate_general
from ragft_dagster.evaluation.skill_check import read_skill_eval
from ragft_dagster.llm.cache import ReplyCache
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
    if gate.open_metric is not None:
        missing += [
            f"open_scores[{m}|{gate.context}]"
            for m in models
            if not open_scores_path(layout, m, gate.context).is_file()
        ]
    if missing:
        return f"{', '.join(missing)} not materialized; materialize them, then mcq_report"
    open_scores = (
        {m: read_jsonl(open_scores_path(layout, m, gate.context)) for m in models}
        if gate.open_metric is not None
        else None
    )
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
        open_scores=open_scores,
        open_metric=gate.open_metric,
    )


def _finite(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata without NaN numbers (an undefined kappa, a score no answer has)."""
    return {k: v for k, v in metadata.items() if not (isinstance(v, float) and v != v)}


def open_cell_metadata(
    path: Any, records: list[dict[str, Any]], figures: dict[str, Any], ctx: str
) -> dict[str, Any]:
    """An ``open_scores`` partition's metadata: each score's mean (numbers, plotted per run),
    answers generated vs. cached, judge figures, and the answers beside their references."""
    from ragft_dagster.assets._meta import preview_table
    from ragft_dagster.stats import mean_interval

    metadata: dict[str, Any] = {"path": dg.MetadataValue.path(str(path))}
    for name in OPEN_SCORES:
        values = [float(r[name]) for r in records if r.get(name) is not None]
        if values:
            mean, low, high = mean_interval(values)
            metadata[name] = mean
            metadata[f"{name}_ci95_low"] = low
            metadata[f"{name}_ci95_high"] = high
    for key in ("source_retrieved", "reference_chunk_retrieved"):
        known = [float(r[key]) for r in records if r.get(key) is not None]
        if known:
            metadata[f"{key}_rate"] = sum(known) / len(known)
    metadata["empty_answers"] = sum(1 for r in records if not r["answer"])
    metadata["truncated_answers"] = sum(1 for r in records if r.get("truncated"))
    metadata.update({k: v for k, v in figures.items() if isinstance(v, int | float | str)})
    columns = ["row", "question", "reference", "answer", "token_f1", "rouge_l", "similarity"]
    columns += ["coverage", "source_retrieved"] if ctx == "rag" else []
    columns += ["judge_correct"] if "judge_verdicts" in figures else []
    columns += ["judge_faithful"] if "judge_verdicts" in figures and ctx == "rag" else []
    metadata["per_question"] = preview_table(records, columns, limit=100)
    return metadata


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

    open_path = recipe.open_questions_path
    oa = ev.open_answers
    open_models, open_contexts = ev.open_models, ev.open_contexts
    open_scores = judge_trust = None
    if open_path is not None:
        same_cells = open_models == ev.all_models and open_contexts == list(ev.contexts)
        open_partitions = (
            partitions
            if same_cells
            else dg.MultiPartitionsDefinition(
                {
                    "model": dg.StaticPartitionsDefinition(open_models),
                    "context": dg.StaticPartitionsDefinition(open_contexts),
                }
            )
        )
        uses_api = oa.judge is not None or any(m in ev.api.models for m in open_models)

        @dg.asset(
            automation_condition=EAGER_SETTLED,
            deps=["merged_model", "dpo_model", "lora_adapter", "vector_index"],
            partitions_def=open_partitions,
            group_name="open_answers",
            pool="gpu",
            op_tags=dict(gpu_tags or {}),
            kinds={"pytorch", "openai"} if uses_api else {"pytorch"},
            code_version=recipe.section_version(
                "evaluation.open_answers",
                "evaluation.context_template",
                "sft_dataset.system_prompt",
                "retrieval",
                "base_model",
                files=(open_path,),
            ),
        )
        def open_scores(
            context: dg.AssetExecutionContext,
            artifacts: ArtifactStoreResource,
            compute: ComputeResource,
            vector_store: VectorStoreResource,
            llm: LlmEndpointResource,
        ) -> dg.MaterializeResult:
            """Open answers of one model, closed-book or with RAG, given as `ragft ask` gives
            them (greedy, cached), beside their references: exact match and token F1 (SQuAD),
            ROUGE-L, embedding similarity, for RAG the answer's coverage by the chunks, and the
            optional LLM judge's verdicts."""
            keys = open_partitions.get_partition_key_from_str(
                context.partition_key
            ).keys_by_dimension
            model_key, ctx = keys["model"], keys["context"]
            layout = artifacts.layout()
            timeout = oa.judge.request_timeout if oa.judge else ev.api.request_timeout
            try:
                records, figures = evaluate_open_cell(
                    ev,
                    recipe.retrieval,
                    open_path,
                    LocalModels.of(recipe, layout),
                    model_key,
                    ctx,
                    compute=compute.settings(),
                    system_prompt=recipe.sft_dataset.system_prompt,
                    open_collection=lambda: vector_store.collection(
                        recipe.retrieval.collection, layout.vector_index
                    ),
                    llm_client=lambda: llm.client(timeout=timeout, max_retries=0),
                    log=context.log.info,
                )
            except (BudgetExceeded, LlmCallError, OpenQuestionsError) as exc:
                raise dg.Failure(description=f"open_scores[{model_key}|{ctx}]: {exc}") from None
            if figures.get("judge_unreadable"):
                context.log.warning(
                    f"{figures['judge_unreadable']} of {figures['judge_verdicts']} judge replies "
                    "named no verdict; they are counted and left out of the judge's figures"
                )
            path = open_scores_path(layout, model_key, ctx)
            write_jsonl(path, records)
            return dg.MaterializeResult(
                metadata=_finite(open_cell_metadata(path, records, figures, ctx))
            )

        labels_path = recipe.judge_labels_path
        if oa.judge is not None and labels_path is not None:
            judge_cfg = oa.judge

            @dg.asset(
                name="judge_agreement",
                automation_condition=EAGER,
                group_name="report",
                kinds={"openai"},
                code_version=recipe.section_version(
                    "evaluation.open_answers.judge", files=(labels_path,)
                ),
            )
            def judge_agreement_asset(
                context: dg.AssetExecutionContext,
                artifacts: ArtifactStoreResource,
                llm: LlmEndpointResource,
            ) -> dg.MaterializeResult:
                """How far the open-answer judge can be trusted: its verdicts on answers labelled
                by people (agreement, Cohen's kappa with a 95% interval) and, on a sample judged
                twice, how often it gives the same verdict."""
                layout = artifacts.layout()
                try:
                    figures = judge_agreement(
                        load_labels(labels_path),
                        judge_cfg,
                        client=llm.client(timeout=judge_cfg.request_timeout, max_retries=0),
                        cache=ReplyCache(layout.llm_cache),
                    )
                except (BudgetExceeded, LlmCallError, LabelsError) as exc:
                    raise dg.Failure(description=f"judge_agreement: {exc}") from None
                path = judge_agreement_path(layout)
                atomic_write_text(path, json.dumps(figures, indent=2))
                human, again = figures["human"], figures["self_consistency"]
                return dg.MaterializeResult(
                    metadata=_finite(
                        {
                            "path": dg.MetadataValue.path(str(path)),
                            "judge_model": judge_cfg.model,
                            "labelled_answers": figures["labelled"],
                            "unreadable": figures["unreadable"],
                            "agreement": human["agreement"],
                            "kappa": human["kappa"],
                            "kappa_ci95_low": human["kappa_ci_low"],
                            "kappa_ci95_high": human["kappa_ci_high"],
                            "asked_twice": again["asked_twice"],
                            "self_agreement": again["agreement"],
                            "self_kappa": again["kappa"],
                            **{k: v for k, v in figures.items() if k.startswith("judge_")},
                            "verdicts": preview_table(
                                figures["rows"],
                                ["row", "question", "answer", "label", "verdict", "again"],
                                limit=200,
                            ),
                        }
                    )
                )

            judge_trust = judge_agreement_asset

    report_deps: list[Any] = [dg.AssetDep(mcq_scores, partition_mapping=dg.AllPartitionMapping())]
    if general_scores is not None:
        report_deps.append(dg.AssetDep(general_scores, partition_mapping=dg.AllPartitionMapping()))
    if open_scores is not None:
        report_deps.append(dg.AssetDep(open_scores, partition_mapping=dg.AllPartitionMapping()))
    if judge_trust is not None:
        report_deps.append(judge_trust)
    # open answers are in the report's version only where the recipe has them
    open_sections = ("evaluation.open_answers", "evaluation.open_questions") if open_path else ()

    @dg.asset(
        automation_condition=EAGER,
        deps=report_deps,
        group_name="report",
        kinds={"pandas", "matplotlib"},
        # the headline metric is left out of mcq_scores' version (choosing it re-scores nothing)
        code_version=recipe.section_version(
            "evaluation", "evaluation.headline_metric", *open_sections
        ),
    )
    def mcq_report(artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
        """Accuracy per model x context with 95% intervals and ties, paired tests (the method's
        comparisons Holm-corrected, the rest exploratory), retrieval vs. generation failures,
        Figure 2 (merge sources, merge, DPO and SFT on the general set), DPO's held-out
        preference accuracy, a per-question table and charts; with open questions, the open
        answers' scores, paired tests and the judge's trust."""
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
            skill_check=read_skill_eval(layout.specialist_model) if recipe.specialist else None,
        )
        if open_scores is not None:
            report.open_answers = _open_answers(layout)
        with atomic_dir(layout.report) as tmp:
            chart, figure2 = write_report_files(tmp, report, models, contexts)
            png = base64.b64encode(chart.read_bytes()).decode()
            figure2_png = base64.b64encode(figure2.read_bytes()).decode() if figure2 else None
        metadata = report_metadata(layout.report, report, ev.headline_metric, png, figure2_png)
        if report.open_answers is not None:
            open_png = base64.b64encode((layout.report / "open_answers.png").read_bytes())
            metadata.update(_finite(open_report_metadata(report.open_answers, open_png.decode())))
        # which questions each cell was scored on: the regression check compares like with like
        for (m, c), records in scored.items():
            metadata[f"questions_{m}_{c}"] = dg.MetadataValue.text(question_set(records))
        return dg.MaterializeResult(metadata=metadata)

    def _open_answers(layout: ArtifactLayout) -> Any:
        cells = [(m, c) for m in open_models for c in open_contexts]
        missing = [f"{m}|{c}" for m, c in cells if not open_scores_path(layout, m, c).is_file()]
        if missing:
            raise dg.Failure(
                f"open_scores is not materialized for {missing}; materialize every open_scores "
                "partition first"
            )
        agreement = None
        if judge_trust is not None:
            path = judge_agreement_path(layout)
            if not path.is_file():
                raise dg.Failure("judge_agreement is not materialized; materialize it first")
            agreement = json.loads(path.read_text(encoding="utf-8"))
        return open_report(
            {(m, c): read_jsonl(open_scores_path(layout, m, c)) for m, c in cells},
            open_models,
            open_contexts,
            n_boot=ev.bootstrap_samples,
            agreement=agreement,
            correct_f1=oa.correct_f1,
        )

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
            f"{gate.baseline}'s"
            + (
                f"; and it beats {gate.baseline} on the open answers' {gate.open_metric} "
                "(one-sided paired test)."
                if gate.open_metric
                else "."
            ),
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
    extra = [a for a in (open_scores, judge_trust) if a is not None]
    return [mcq_scores, *general, *extra, mcq_report, *checks]


def open_report_metadata(report: Any, png: str) -> dict[str, Any]:
    """``mcq_report``'s open-answer metadata: the section, its chart, and each cell's scores and
    the judge's trust figures as numbers, so the UI plots their history."""
    metadata: dict[str, Any] = {
        "open_answers": dg.MetadataValue.md(report.markdown),
        "open_answers_chart": dg.MetadataValue.md(f"![open answers](data:image/png;base64,{png})"),
    }
    for r in report.rows:
        cell = f"{r['model']}_{r['context']}"
        for name in OPEN_SCORES:
            if r[f"{name}_n"]:
                metadata[f"open_{name}_{cell}"] = r[name]
    for name, rows in report.pairs.items():
        metadata[f"open_significant_pairs_{name}"] = sum(1 for p in rows if p["significant"])
    if report.agreement:
        human = report.agreement["human"]
        for key in ("kappa", "kappa_ci_low", "kappa_ci_high", "agreement"):
            metadata[f"judge_{key}"] = human[key]
        metadata["judge_self_agreement"] = report.agreement["self_consistency"]["agreement"]
    return metadata
