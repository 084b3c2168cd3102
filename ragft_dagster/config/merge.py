"""The recipe's ``merge`` section as data (no execution): a mergekit configuration or a chain
of them, the model references each names, and the merge options a recipe may set. The merge
itself lives in :mod:`ragft_dagster.models.merging`."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ragft_dagster.config.upstream import validate_merge_options

STAGE_REF = "stage:"
"""Prefix of a reference to an earlier stage's output: ``stage:<name>``."""
STAGES_DIR = "merge_stages"
"""Folder below the artifact root holding the intermediate stages."""
SINGLE_STAGE = "merge"
"""The stage name of a merge section that is one mergekit configuration."""
STAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Bump when the stage key or what a cached stage holds changes: old intermediates then re-merge.
STAGE_CACHE_VERSION = "1"
STAGE_MARKER = "ragft_stage.json"
RECIPE_COPY = "ragft_merge_recipe.yml"
_NOT_MODELS = ("union", "base")  # tokenizer sources that name no model

_DEVICE_FROM_PROFILE = (
    "the merge device comes from the profile (compute.device; auto picks CUDA when present)"
)
OWNED_MERGE_OPTIONS: dict[str, str] = {
    "device": _DEVICE_FROM_PROFILE,
    "cuda": _DEVICE_FROM_PROFILE,
    "gpu_rich": _DEVICE_FROM_PROFILE + "; set read_to_gpu, multi_gpu, low_cpu_memory instead",
    "copy_tokenizer": "the merged model always carries a tokenizer (chunking, DPO and scoring "
    "load it)",
    "trust_remote_code": "set the recipe's top-level trust_remote_code instead",
}
"""MergeOptions fields a recipe may not set, and why."""

RUNTIME_MERGE_OPTIONS = frozenset(
    {
        "lazy_unpickle",
        "low_cpu_memory",
        "out_shard_size",
        "read_to_gpu",
        "multi_gpu",
        "num_threads",
        "async_write",
        "write_threads",
        "verbosity",
        "quiet",
        "transformers_cache",
        "lora_merge_cache",
        "clone_tensors",
    }
)
"""MergeOptions fields that change how a merge runs, not the weights it writes: they are in
neither the asset's code_version nor a stage's cache key (any other field is, e.g. random_seed)."""

GPU_ONLY_MERGE_OPTIONS = ("read_to_gpu", "multi_gpu")
"""Dropped (and reported) when the merge runs on the CPU, so one recipe runs on both."""


def check_merge_options(options: dict[str, Any]) -> None:
    """Check a recipe's ``merge_options`` against mergekit's ``MergeOptions`` fields.

    Raises:
        ValueError: Naming the key that is unknown, owned by the project, or of a wrong value.
    """
    for key in sorted(options):
        if key in OWNED_MERGE_OPTIONS:
            raise ValueError(f"{key!r} cannot be set here: {OWNED_MERGE_OPTIONS[key]}")
    validate_merge_options(options)


# --- the chain --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeStage:
    """One mergekit run of a merge chain."""

    name: str
    config: dict[str, Any]
    """The mergekit configuration as written in the recipe."""
    key_path: str
    """Where the config sits in the recipe: ``merge`` or ``merge.stages[1].config``."""


@dataclass(frozen=True)
class ModelRef:
    loc: str
    """Where the reference sits in its mergekit config (``slices[0].sources[1].model``)."""
    ref: str
    merged: bool
    """Its weights are merged (False for a tokenizer donor)."""


def map_refs(config: Any, fn: Callable[[ModelRef], str]) -> Any:
    """A copy of a mergekit config with every model reference replaced by ``fn(reference)``,
    visited in order of appearance (a reference is a ``model``, ``base_model`` or
    ``tokenizer_source`` string, or a ``source`` inside ``tokenizer``)."""

    def walk(node: Any, loc: str, in_tokenizer: bool) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                here = f"{loc}.{key}" if loc else str(key)
                names_model = key in ("model", "base_model", "tokenizer_source") or (
                    in_tokenizer and key == "source"
                )
                if names_model and isinstance(value, str) and value not in _NOT_MODELS:
                    merged = not in_tokenizer and key != "tokenizer_source"
                    out[key] = fn(ModelRef(here, value, merged))
                else:
                    out[key] = walk(value, here, in_tokenizer or key == "tokenizer")
            return out
        if isinstance(node, list):
            return [walk(value, f"{loc}[{i}]", in_tokenizer) for i, value in enumerate(node)]
        return copy.deepcopy(node)

    return walk(config, "", False)


def model_refs(config: dict[str, Any]) -> list[ModelRef]:
    """Every model reference of a mergekit config, in order of appearance."""
    found: list[ModelRef] = []

    def collect(r: ModelRef) -> str:
        found.append(r)
        return r.ref

    map_refs(config, collect)
    return found


def split_ref(ref: str) -> list[tuple[str, str | None]]:
    """``model@rev+lora@rev`` as mergekit reads it: [(path, revision), ...]."""
    parts = []
    for part in ref.split("+"):
        path, _, revision = part.partition("@")
        parts.append((path, revision or None))
    return parts


def stages_named(ref: str) -> list[str]:
    return [p.removeprefix(STAGE_REF) for p, _ in split_ref(ref) if p.startswith(STAGE_REF)]


def merge_stages(merge: dict[str, Any]) -> list[MergeStage]:
    """The recipe's ``merge`` section as an ordered chain of stages.

    Args:
        merge: One mergekit configuration, or ``{"stages": [{"name": ..., "config": ...}]}``.

    Returns:
        The stages in order; a single configuration is one stage named ``merge``.

    Raises:
        ValueError: A malformed chain, naming the key (unknown or later stage, unused stage...).
    """
    if "stages" not in merge:
        for r in model_refs(merge):
            if stages_named(r.ref):
                raise ValueError(
                    f"merge.{r.loc}: {r.ref!r} names a stage, but merge is a single mergekit "
                    "configuration; write merge as `stages: [{name: ..., config: ...}, ...]`"
                )
        return [MergeStage(SINGLE_STAGE, merge, "merge")]
    extra = sorted(set(merge) - {"stages"})
    if extra:
        raise ValueError(
            f"merge: {extra} next to `stages`; with stages, every mergekit key goes inside a "
            "stage's `config`"
        )
    raw = merge["stages"]
    if not isinstance(raw, list) or not raw:
        raise ValueError("merge.stages must be a non-empty list of {name: ..., config: ...}")
    stages: list[MergeStage] = []
    used: set[str] = set()
    for i, item in enumerate(raw):
        where = f"merge.stages[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a mapping with `name` and `config`")
        unknown = sorted(set(item) - {"name", "config"})
        missing = [k for k in ("name", "config") if k not in item]
        if unknown or missing:
            raise ValueError(
                f"{where}: a stage has exactly `name` and `config`"
                + (f"; unknown key(s) {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        name, config = item["name"], item["config"]
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            raise ValueError(
                f"{where}.name {name!r}: use lower-case letters, digits, '-' or '_' (it names "
                "the stage's folder)"
            )
        if any(s.name == name for s in stages):
            raise ValueError(f"{where}.name: stage {name!r} is defined twice")
        if not isinstance(config, dict):
            raise ValueError(f"{where}.config must be a mergekit configuration (a mapping)")
        earlier = [s.name for s in stages]
        for r in model_refs(config):
            for target in stages_named(r.ref):
                if target not in earlier:
                    later = " (a stage may only use stages before it)" if target != name else ""
                    raise ValueError(
                        f"{where}.config.{r.loc}: {r.ref!r} is not an earlier stage{later}; "
                        f"earlier stages: {earlier or 'none'}"
                    )
                used.add(target)
        stages.append(MergeStage(name, config, f"{where}.config"))
    unused = [s.name for s in stages[:-1] if s.name not in used]
    if unused:
        raise ValueError(
            f"merge.stages: stage(s) {unused} are merged but no later stage uses them; "
            "reference them as stage:<name> or remove them (the last stage is the merged model)"
        )
    return stages


def source_models(config: dict[str, Any]) -> list[str]:
    """Every model a merge section merges (stage outputs excluded), in order of appearance."""
    seen: dict[str, None] = {}
    for stage in merge_stages(config):
        for r in model_refs(stage.config):
            if r.merged and not stages_named(r.ref):
                seen.setdefault(r.ref, None)
    return list(seen)


def from_mergekit_multi(text: str, where: str) -> dict[str, Any]:
    """A ``mergekit-multi`` file (YAML documents, each a mergekit configuration with an
    optional ``name``; a later document names an earlier merge by that name) as our chain:
    ``{"stages": [...]}`` in dependency order, the unnamed document (or the one merge nothing
    else uses) last, its references to other merges written ``stage:<name>``.

    Raises:
        ValueError: Naming ``where`` (the file) and what is wrong.
    """
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {exc}") from None
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise ValueError(f"{where}: a mergekit-multi file is YAML documents of merge configs")
    named: dict[str | None, dict[str, Any]] = {}
    for doc in docs:
        doc = dict(doc)
        name = doc.pop("name", None)
        if name in named:
            what = f"merge name {name!r} twice" if name else "two unnamed (final) merges"
            raise ValueError(f"{where}: {what}; mergekit-multi allows one of each")
        if name is not None and not STAGE_NAME.match(str(name)):
            raise ValueError(
                f"{where}: merge name {name!r}: use lower-case letters, digits, '-' or '_'"
            )
        named[name] = doc
    names = {n for n in named if n is not None}

    def uses(config: dict[str, Any]) -> set[str]:
        return {r.ref for r in model_refs(config) if r.ref in names}

    final: str | None = None
    if None not in named:
        unused = names - set().union(*(uses(c) for c in named.values()))
        if len(unused) != 1:
            raise ValueError(
                f"{where}: no unnamed final merge, and {sorted(unused)} are used by no other "
                "merge; name exactly one final merge (leave its `name` out)"
            )
        final = unused.pop()
    order: list[str | None] = []
    visiting: set[str | None] = set()

    def visit(name: str | None) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"{where}: merges {sorted(map(str, visiting))} use each other")
        visiting.add(name)
        for dep in sorted(uses(named[name])):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    visit(final)
    left_out = names - {n for n in order if n is not None}
    if left_out:
        raise ValueError(f"{where}: merges {sorted(left_out)} do not lead to the final merge")
    stages = []
    for name in order:
        config = map_refs(named[name], lambda r: f"{STAGE_REF}{r.ref}" if r.ref in names else r.ref)
        stages.append({"name": name or SINGLE_STAGE, "config": config})
    return {"stages": stages}
