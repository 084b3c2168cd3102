"""Training assets: the SFT dataset from every document's Q&A, then the LoRA adapter."""

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import ArtifactLayout, atomic_dir, read_jsonl
from ragft_dagster.assets._meta import preview_table, training_result
from ragft_dagster.assets._training import train_artifact
from ragft_dagster.assets.partitions import EAGER, read_all_documents
from ragft_dagster.config.recipe import Recipe
from ragft_dagster.data.contamination import Finding, find_contamination
from ragft_dagster.data.own_qa import OwnQaError, ground_on_documents, load_own_qa
from ragft_dagster.data.quality import filter_rows, llm_judge
from ragft_dagster.data.raft import add_retrieved_context
from ragft_dagster.evaluation.mcq import McqError, load_questions
from ragft_dagster.evaluation.open_answers import OpenQuestionsError, load_open_questions
from ragft_dagster.llm.cache import ReplyCache
from ragft_dagster.llm.client import BudgetExceeded, LlmCallError, LlmStats
from ragft_dagster.resources import (
    ArtifactStoreResource,
    ComputeResource,
    LlmEndpointResource,
    VectorStoreResource,
)
from ragft_dagster.retrieval.indexing import Retriever, length_sorted_embed, retrieval_embedder
from ragft_dagster.training.sft import (
    CONTAMINATION_FILE,
    QUALITY_FILE,
    ContextAdder,
    EmptyDataset,
    QualityFilter,
    adapter_config,
    build_sft_dataset,
)

FINDING_COLUMNS = [
    "detector",
    "mcq_row",
    "mcq_question",
    "train_question",
    "doc",
    "ngram",
    "embedding",
]


def sft_dataset_version(recipe: Recipe) -> str:
    """The recipe section, plus what the contamination detectors and the quality filter read:
    the benchmark file and the embedding model (editing either can change which rows are
    kept)."""
    c, quality = recipe.sft_dataset.contamination, recipe.sft_dataset.quality
    uses_embeddings = (c.enabled and c.embedding_threshold is not None) or quality.uses_embeddings
    embedding = ["retrieval.embedding_model"] if uses_embeddings else []
    if recipe.sft_dataset.retrieval_context.enabled:  # what the prompts show, and how
        embedding = ["retrieval", "evaluation.context_template"]
    files: tuple[Path, ...] = ()
    if c.enabled:  # what training is decontaminated against
        files = (recipe.questions_path,)
        if recipe.open_questions_path is not None:
            files += (recipe.open_questions_path,)
    own = [recipe.own_qa_path(o.source) for o in recipe.sft_dataset.own_qa]
    files += tuple(p for p in [*own, recipe.generic_path] if p is not None)
    return recipe.section_version("sft_dataset", *embedding, files=files)


def generic_rows(recipe: Recipe) -> list[dict[str, Any]]:
    """The generic instruction pairs, in a stable seeded order (the draw)."""
    path = recipe.generic_path
    if path is None:
        return []
    rows = load_own_qa(str(path), root=recipe.root, key="sft_dataset.generic.source")
    seed = recipe.sft_dataset.generic.seed
    rows.sort(key=lambda r: hashlib.sha256(f"{seed}\n{r['id']}".encode()).digest())
    return [{**r, "generator": "generic"} for r in rows]


def own_rows(recipe: Recipe, layout: ArtifactLayout, docs: list[str]) -> tuple[list[Any], int]:
    """The recipe's own Q&A rows, grounded on the chunks of the documents they name; and how
    many name a document that is not in the docs folder."""
    rows: list[dict[str, Any]] = []
    for i, own in enumerate(recipe.sft_dataset.own_qa):
        rows += load_own_qa(
            own.source,
            root=recipe.root,
            key=f"sft_dataset.own_qa.{i}.source",
            split=own.split,
            max_rows=own.max_rows,
        )
    by_doc = {d: read_jsonl(layout.chunks(d)) for d in docs if layout.chunks(d).is_file()}
    return rows, ground_on_documents(rows, by_doc)


def context_adder(
    recipe: Recipe, layout: ArtifactLayout, docs: list[str], device: str, collection: Any
) -> ContextAdder:
    """add_retrieved_context bound to the index's retriever and the recipe's settings."""
    cfg, retrieval = recipe.sft_dataset.retrieval_context, recipe.retrieval
    chunks = cfg.chunks or retrieval.top_k
    embedder = retrieval_embedder(retrieval, layout.root, recipe.root, device)
    retriever = Retriever(collection, embedder, chunks + 1)  # one more: the gold may be among
    return functools.partial(
        add_retrieved_context,
        retrieve_many=retriever.retrieve_many,
        chunk_text=chunk_texts(layout, docs),
        chunks=chunks,
        gold_probability=cfg.gold_probability,
        seed=cfg.seed,
        quote_evidence=cfg.quote_evidence,
    )


def chunk_texts(layout: ArtifactLayout, docs: list[str]) -> dict[str, str]:
    """Chunk texts by id; a document without a chunks file adds none."""
    out: dict[str, str] = {}
    for doc in docs:
        if layout.chunks(doc).is_file():
            out.update({c["id"]: c["text"] for c in read_jsonl(layout.chunks(doc))})
    return out


def quality_filter(
    recipe: Recipe,
    layout: ArtifactLayout,
    docs: list[str],
    device: str,
    llm: LlmEndpointResource,
    stats: LlmStats,
) -> QualityFilter:
    """filter_rows bound to the recipe's thresholds, the documents' chunks, the embedding model
    and, when configured, the LLM judge."""
    quality = recipe.sft_dataset.quality
    chunk_text = chunk_texts(layout, docs)  # rows of unknown chunks: not grounding-checked
    embed = None
    if quality.uses_embeddings:
        embedder = retrieval_embedder(recipe.retrieval, layout.root, recipe.root, device)
        embed = length_sorted_embed(embedder)
    judge = None
    if quality.judge is not None:
        client = llm.client(timeout=quality.judge.request_timeout, max_retries=0)
        judge = llm_judge(
            quality.judge, cache=ReplyCache(layout.llm_cache), client=client, stats=stats
        )
    return functools.partial(
        filter_rows, chunk_text=chunk_text, rules=quality, embed=embed, judge=judge
    )


def contamination_detector(
    recipe: Recipe, artifact_root: Path, device: str
) -> Callable[[list[dict[str, Any]]], list[Finding]]:
    """find_contamination bound to the recipe's benchmark, thresholds and embedding model."""
    c = recipe.sft_dataset.contamination
    # every question the recipe evaluates on: the multiple-choice benchmark, then the open
    # questions (when evaluation.open_questions is set); training must contain none of them
    try:
        questions: list[Any] = list(load_questions(recipe.questions_path))
        if recipe.open_questions_path is not None:
            questions += load_open_questions(recipe.open_questions_path)
    except (McqError, OpenQuestionsError) as exc:
        raise dg.Failure(description=f"sft_dataset contamination check: {exc}") from None
    embed = None
    if c.embedding_threshold is not None:
        embedder = retrieval_embedder(recipe.retrieval, artifact_root, recipe.root, device)
        embed = length_sorted_embed(embedder)
    return functools.partial(
        find_contamination,
        questions=questions,
        embed=embed,
        ngram=c.ngram,
        ngram_threshold=c.ngram_threshold,
        embedding_threshold=c.embedding_threshold,
    )


def build(recipe: Recipe, gpu_tags: Mapping[str, Any] | None = None) -> list[dg.AssetsDefinition]:
    contamination = recipe.sft_dataset.contamination

    @dg.asset(
        automation_condition=EAGER,
        deps=[dg.AssetDep("synthetic_qa", partition_mapping=dg.AllPartitionMapping())]
        + (["vector_index"] if recipe.sft_dataset.retrieval_context.enabled else []),
        group_name="training",
        kinds={"huggingface"},
        code_version=sft_dataset_version(recipe),
    )
    def sft_dataset(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
        llm: LlmEndpointResource,
        vector_store: VectorStoreResource,
    ) -> dg.MaterializeResult:
        """All documents' Q&A, deduplicated, filtered for quality (malformed, ungrounded,
        near-duplicate pairs), cleared of rows resembling the benchmark questions and split
        train/validation, in chat format."""
        layout = artifacts.layout()
        docs, rows = read_all_documents(
            context, "synthetic_qa", layout.qa, docs_dir=recipe.docs_dir
        )
        cfg = recipe.sft_dataset
        if not cfg.generated:
            rows = []
        try:
            own, unknown_docs = own_rows(recipe, layout, docs)
            generic = generic_rows(recipe)
        except OwnQaError as exc:
            raise dg.Failure(description=f"sft_dataset: {exc}", allow_retries=False) from None
        rows += own
        detect, keep = None, None
        device = compute.settings().torch_device()
        if contamination.enabled:
            detect = contamination_detector(recipe, layout.root, device)
        judge_stats = LlmStats()
        if cfg.quality.enabled:
            keep = quality_filter(recipe, layout, docs, device, llm, judge_stats)
        try:
            with contextlib.ExitStack() as stack, atomic_dir(layout.sft_dataset) as tmp:
                add_context = None
                if cfg.retrieval_context.enabled:
                    collection = stack.enter_context(
                        vector_store.collection(recipe.retrieval.collection, layout.vector_index)
                    )
                    add_context = context_adder(recipe, layout, docs, device, collection)
                counts = build_sft_dataset(
                    rows,
                    tmp,
                    validation_fraction=cfg.validation_fraction,
                    seed=cfg.seed,
                    system_prompt=cfg.system_prompt,
                    detect_contamination=detect,
                    remove_contaminated=contamination.remove,
                    quality_filter=keep,
                    add_context=add_context,
                    context_template=recipe.evaluation.context_template,
                    generic_rows=generic,
                    generic_share=cfg.generic.share,
                )
        except (BudgetExceeded, LlmCallError) as exc:
            raise dg.Failure(description=f"sft_dataset quality judge: {exc}") from None
        except EmptyDataset as exc:
            raise dg.Failure(description=f"sft_dataset: {exc}", allow_retries=False) from None
        sample = read_jsonl(layout.sft_dataset / "train.jsonl")[:10]
        preview = [
            {
                "question": r.get("question") or r["messages"][-2]["content"],
                "answer": r["messages"][-1]["content"],
                "doc": r["doc"],
            }
            for r in sample
        ]
        metadata: dict[str, Any] = {
            "path": dg.MetadataValue.path(str(layout.sft_dataset)),
            "documents": len(docs),
            **counts,
            **(
                {"own_qa_rows": len(own), "own_qa_unknown_docs": unknown_docs} if cfg.own_qa else {}
            ),
            "preview": preview_table(preview, ["question", "answer", "doc"]),
        }
        if keep is not None:
            report = layout.sft_dataset / QUALITY_FILE
            rejected = json.loads(report.read_text(encoding="utf-8"))["rejected_rows"]
            metadata["quality_report"] = dg.MetadataValue.path(str(report))
            metadata["quality_rejected_rows"] = preview_table(
                rejected, ["reason", "detail", "question", "answer", "doc"], limit=50
            )
            if cfg.quality.judge is not None:
                metadata["judge_requests"] = judge_stats.requests
                metadata["judge_cache_hits"] = judge_stats.cache_hits
                metadata["judge_tokens"] = judge_stats.prompt_tokens + judge_stats.completion_tokens
        if detect is not None:
            report = layout.sft_dataset / CONTAMINATION_FILE
            findings = json.loads(report.read_text(encoding="utf-8"))["findings"]
            metadata["contamination_report"] = dg.MetadataValue.path(str(report))
            metadata["contamination"] = preview_table(findings, FINDING_COLUMNS, limit=20)
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset_check(
        asset=sft_dataset,
        blocking=contamination.blocking,
        description="No training row resembles a benchmark question (exact, n-gram overlap or "
        "embedding near-duplicate); see contamination.json in the dataset folder.",
    )
    def sft_dataset_not_contaminated(artifacts: ArtifactStoreResource) -> dg.AssetCheckResult:
        folder = artifacts.layout().sft_dataset
        severity = (
            dg.AssetCheckSeverity.ERROR if contamination.blocking else dg.AssetCheckSeverity.WARN
        )
        report_path = folder / CONTAMINATION_FILE
        if not report_path.is_file():
            return dg.AssetCheckResult(
                passed=False,
                severity=severity,
                description=f"{report_path} is missing: re-materialize sft_dataset",
            )
        findings = json.loads(report_path.read_text(encoding="utf-8"))["findings"]
        kept = {r["id"] for s in ("train", "validation") for r in read_jsonl(folder / f"{s}.jsonl")}
        remaining = [f for f in findings if f["train_id"] in kept]
        removed = [f for f in findings if f["train_id"] not in kept]
        rows_left = len({f["train_id"] for f in remaining})
        return dg.AssetCheckResult(
            passed=not remaining,
            severity=severity,
            metadata={
                "findings": len(findings),
                "contaminated_rows_remaining": rows_left,
                "contaminated_rows_removed": len({f["train_id"] for f in removed}),
                "remaining": preview_table(remaining, FINDING_COLUMNS, limit=20),
                "removed": preview_table(removed, FINDING_COLUMNS, limit=20),
            },
            description=None
            if not remaining
            else f"{rows_left} training row(s) resembling benchmark questions are still in the "
            "dataset (listed under 'remaining'); set sft_dataset.contamination.remove: true",
        )

    # A blocking check stops downstream steps only within its own run; the gate also keeps
    # automation from training on the dataset in a later run while the check is failing.
    lora_condition = EAGER
    if contamination.enabled and contamination.blocking:
        lora_condition = EAGER & dg.AutomationCondition.all_deps_blocking_checks_passed()

    @dg.asset(
        automation_condition=lora_condition,
        deps=["dpo_model", sft_dataset],
        group_name="training",
        pool="gpu",
        op_tags=dict(gpu_tags or {}),
        kinds={"trl", "peft"},
        code_version=recipe.section_version("lora", "sft", "chat_template"),
    )
    def lora_adapter(
        context: dg.AssetExecutionContext,
        artifacts: ArtifactStoreResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        """A LoRA adapter for the DPO model, fine-tuned (assistant-only loss) on the SFT data."""
        layout = artifacts.layout()
        settings = compute.settings()
        m = train_artifact(
            context,
            "sft",
            settings,
            recipe,
            final=layout.lora_adapter,
            artifact_root=layout.root,
            model_dir=layout.dpo_model,
            data={"dataset_dir": layout.sft_dataset},
            data_files=[layout.sft_dataset / f"{s}.jsonl" for s in ("train", "validation")],
            run={
                "args": recipe.sft.args,
                "lora": recipe.lora.model_dump(),
                "quantization": recipe.sft.quantization,
            },
        )
        saved = adapter_config(layout.lora_adapter)
        return training_result(
            layout.lora_adapter, m, lora_r=saved["r"], lora_alpha=saved["lora_alpha"]
        )

    checks = [sft_dataset_not_contaminated] if contamination.enabled else []
    return [sft_dataset, *checks, lora_adapter]
