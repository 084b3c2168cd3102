"""Merge preflight (Dagster-free): the whole chain checked from the models' ``config.json``
alone, before any weight is read: architecture, shapes, vocabulary, RoPE settings and every
slice's ``layer_range``. A later stage is checked against the output an earlier stage will have
(its base model's config, with the layer count its slices produce), so a chain that cannot run
fails before its first stage spends an hour merging. The plan it returns (each stage's resolved
models, cache key and folder) is what :func:`ragft_dagster.models.merging.merge_models` runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ragft_dagster.config.merge import (
    RUNTIME_MERGE_OPTIONS,
    SINGLE_STAGE,
    STAGE_CACHE_VERSION,
    STAGE_MARKER,
    STAGE_REF,
    STAGES_DIR,
    MergeStage,
    ModelRef,
    map_refs,
    merge_stages,
    model_refs,
    split_ref,
    stages_named,
)
from ragft_dagster.models.refs import resolve_model_ref

_ARCH_FIELDS = ("model_type", "architectures")
_SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)

# Differences that mean another base model: tensors of other shapes or of other meanings.
_STRUCTURAL = frozenset(
    {
        *_ARCH_FIELDS,
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
    }
)


class MergeCompatibilityError(ValueError):
    """The merge cannot run: found from the models' configs before any weight was loaded."""


def _resolve_ref(ref: str, artifact_root: Path, base_dir: Path, stage_dirs: dict[str, Path]) -> str:
    parts = []
    for path, revision in split_ref(ref):
        if path.startswith(STAGE_REF):
            target = str(stage_dirs[path.removeprefix(STAGE_REF)])
        else:
            target = resolve_model_ref(path, artifact_root, base_dir)
        parts.append(target + (f"@{revision}" if revision else ""))
    return "+".join(parts)


def substitute_refs(config: dict[str, Any], resolved: dict[str, str]) -> dict[str, Any]:
    """A copy of ``config`` with its model references replaced as ``resolved`` maps them."""
    return map_refs(config, lambda r: resolved[r.ref])


# --- preflight --------------------------------------------------------------------------------


def config_facts(cfg: Any) -> dict[str, Any]:
    """The fields of a transformers config that decide whether two models merge tensor by
    tensor: architecture, shapes, vocabulary and RoPE settings (flattened: ``rope_parameters.
    rope_theta``)."""
    facts: dict[str, Any] = {
        "model_type": getattr(cfg, "model_type", None) or None,
        "architectures": list(getattr(cfg, "architectures", None) or []) or None,
    }
    for name in _SHAPE_FIELDS:
        facts[name] = getattr(cfg, name, None)
    # transformers 5 folds rope_theta and rope_scaling into rope_parameters (per layer type for
    # some models); remote-code configs may still carry the old attributes: read those the way
    # transformers 5 folds them, so that both kinds compare.
    params = getattr(cfg, "rope_parameters", None)
    if not (isinstance(params, dict) and params):
        scaling = getattr(cfg, "rope_scaling", None)
        params = dict(scaling) if isinstance(scaling, dict) else {}
        if "type" in params:
            params.setdefault("rope_type", params.pop("type"))
        if getattr(cfg, "rope_theta", None) is not None:
            params["rope_theta"] = cfg.rope_theta
        if params:
            params.setdefault("rope_type", "default")
    facts.update(_flatten("rope_parameters", params))
    return facts


def _flatten(prefix: str, value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in sorted(value.items()):
        if isinstance(item, dict):
            out.update(_flatten(f"{prefix}.{key}", item))
        else:
            out[f"{prefix}.{key}"] = item
    return out


def _read_facts(resolved: str, trust_remote_code: bool) -> dict[str, Any]:
    """Facts from the config.json of a model (its LoRA, if any, does not change them)."""
    from transformers import AutoConfig

    path, revision = split_ref(resolved)[0]
    cfg = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    return config_facts(cfg)


def _mismatches(
    reference: dict[str, Any], other: dict[str, Any], *, skip: frozenset[str]
) -> list[tuple[str, Any, Any]]:
    """(field, other's value, reference's value) for every field that differs."""
    names = list(dict.fromkeys([*reference, *other]))
    out = []
    for name in names:
        if name in skip:
            continue
        mine, theirs = other.get(name), reference.get(name)
        is_rope = name.startswith("rope")
        if not is_rope and (mine is None or theirs is None):
            continue  # unknown on one side (e.g. a stage's vocabulary before its tokenizer)
        if mine != theirs:
            out.append((name, mine, theirs))
    return out


def _advice(fields: list[str], reference: str, other: str) -> str:
    names = set(fields)
    if names & _STRUCTURAL or any(f.startswith("rope") for f in names):
        tip = (
            f"{other!r} is not a fine-tune of the same base model as {reference!r}: merge only "
            "models that share its architecture, shapes and RoPE settings (e.g. specialists "
            "fine-tuned from the same base), or leave this one out of the stage"
        )
        if names <= set(_ARCH_FIELDS):
            tip += "; if the two architectures share tensor names and shapes, set "
            tip += "merge_options.allow_crimes: true"
        return tip
    tips = []
    if "num_hidden_layers" in names:
        tips.append("pick matching layers with `slices` and `layer_range`")
    if "vocab_size" in names:
        tips.append(
            "set `tokenizer_source: base` (or `union`) in this mergekit config so mergekit "
            "aligns the vocabularies"
        )
    return "; ".join(tips)


def _fmt(value: Any) -> str:
    return "(not set)" if value is None else repr(value)


def _pair_problem(
    stage: MergeStage, reference: str, role: str, other: str, diffs: list[tuple[str, Any, Any]]
) -> str:
    lines = [
        f"{_where(stage)}: {other!r} cannot be merged with {reference!r} ({role}); "
        f"differences ({other!r} vs {reference!r}):"
    ]
    lines += [f"      {name}: {_fmt(mine)} vs {_fmt(theirs)}" for name, mine, theirs in diffs]
    lines.append(f"    What to do: {_advice([d[0] for d in diffs], reference, other)}.")
    return "\n".join(lines)


def _where(stage: MergeStage) -> str:
    if stage.name == SINGLE_STAGE and stage.key_path == "merge":
        return "key 'merge'"
    return f"key '{stage.key_path}' (stage {stage.name!r})"


def _slice_sources(config: dict[str, Any]) -> Iterator[tuple[str, list[tuple[str, int, int]]]]:
    """(location, [(model, start, end), ...]) of each top-level slice of a mergekit config."""
    for i, s in enumerate(config.get("slices") or []):
        sources = []
        for src in (s.get("sources") or []) if isinstance(s, dict) else []:
            model, span = src.get("model"), src.get("layer_range")
            if isinstance(model, str) and isinstance(span, list | tuple) and len(span) == 2:
                sources.append((model, int(span[0]), int(span[1])))
        yield f"slices[{i}]", sources


def _duplicate_problems(
    stage: MergeStage, refs: list[ModelRef], resolved: dict[str, str]
) -> list[str]:
    """Two inputs of one merge (a slice's sources, or ``models``) that are the same model:
    mergekit refuses them ("Duplicate merge inputs"), and a model merged with itself is itself."""
    groups: dict[str, list[ModelRef]] = {}
    for r in refs:
        if r.merged and "[" in r.loc:
            groups.setdefault(r.loc.rsplit("[", 1)[0], []).append(r)
    problems = []
    for group, members in groups.items():
        seen: dict[str, ModelRef] = {}
        for r in members:
            target = resolved.get(r.ref, r.ref)
            first = seen.setdefault(target, r)
            if first is r:
                continue
            same = f"{r.ref!r} twice" if first.ref == r.ref else f"{first.ref!r} and {r.ref!r}"
            problems.append(
                f"{_where(stage)}: {group} names {same} ({first.loc} and {r.loc} are the same "
                "model; mergekit refuses duplicate merge inputs).\n"
                "    What to do: merge two distinct models of one architecture. With only one "
                "model at hand, derive a specialist from it (the recipe's `specialist` section, "
                "then `model: specialist:<name>` here)."
            )
    return problems


def _layer_problems(stage: MergeStage, facts: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for loc, sources in _slice_sources(stage.config):
        spans = []
        for j, (ref, start, end) in enumerate(sources):
            spans.append(end - start)
            layers = facts.get(ref, {}).get("num_hidden_layers")
            if layers is None:
                continue
            if not 0 <= start < end <= layers:
                problems.append(
                    f"{_where(stage)}: {loc}.sources[{j}].layer_range [{start}, {end}] does not "
                    f"fit {ref!r}, which has num_hidden_layers = {layers}.\n"
                    f"    What to do: use a range within [0, {layers}] with start < end."
                )
        if len(set(spans)) > 1:
            problems.append(
                f"{_where(stage)}: the sources of {loc} span {spans} layers.\n"
                "    What to do: give every source of a slice a layer_range of the same length."
            )
    return problems


def _expected_output(config: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """What a stage's output config will say, as mergekit builds it: its base model's config,
    with the layer count of its slices and, with a tokenizer setting, a vocabulary known only
    once merged."""
    out = dict(reference)
    spans = [sources[0][2] - sources[0][1] for _, sources in _slice_sources(config) if sources]
    if spans:
        out["num_hidden_layers"] = sum(spans)
    # tokenizer_source: base keeps the base model's vocabulary (the one in ``reference``);
    # a union or another model's tokenizer is only known once merged.
    if config.get("tokenizer") or config.get("tokenizer_source") not in (None, "base"):
        out["vocab_size"] = None
    return out


# --- cache keys -------------------------------------------------------------------------------


def _fingerprint(resolved_part: str, revision: str | None) -> str:
    local = Path(resolved_part)
    if local.is_dir():
        # Names, sizes and modification times: cheap on a 14 GB model, and a model re-saved in
        # place (same shapes, same sizes) still changes its times.
        h = hashlib.sha256()
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(local)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return f"dir:{h.hexdigest()[:16]}"
    return f"hub:{resolved_part}@{revision or 'default'}"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _stage_key(
    stage: MergeStage, resolved: dict[str, str], keys: dict[str, str], options: dict[str, Any]
) -> str:
    inputs = {}
    for ref, target in resolved.items():
        prints = []
        for (path, revision), (target_path, _) in zip(
            split_ref(ref), split_ref(target), strict=True
        ):
            if path.startswith(STAGE_REF):
                prints.append(f"stage:{keys[path.removeprefix(STAGE_REF)]}")
            else:
                prints.append(_fingerprint(target_path, revision))
        inputs[ref] = prints
    payload = {
        "cache": STAGE_CACHE_VERSION,
        "mergekit": _package_version("mergekit"),
        "config": stage.config,
        "inputs": inputs,
        "options": options,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class StagePlan:
    stage: MergeStage
    resolved: dict[str, str]
    merged_refs: list[str]
    reference: str | None
    output: dict[str, Any]
    key: str
    cache_dir: Path | None
    """None for the last stage (it writes the merged model)."""


@dataclass
class ChainPlan:
    stages: list[StagePlan]
    models: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def facts(self) -> dict[str, Any]:
        return {
            "stages": [
                {
                    "name": sp.stage.name,
                    "merge_method": sp.stage.config.get("merge_method"),
                    "models": sp.merged_refs,
                    "reference": sp.reference,
                    "num_hidden_layers": sp.output.get("num_hidden_layers"),
                    "key": sp.key,
                    "cached": bool(sp.cache_dir and (sp.cache_dir / STAGE_MARKER).is_file()),
                }
                for sp in self.stages
            ],
            "models": self.models,
            "warnings": self.warnings,
        }


def _reference_model(
    stage: MergeStage, merged_refs: list[str], models: dict[str, dict[str, Any]]
) -> str | None:
    """The model a stage's others are compared with: its base_model, as mergekit builds the
    output config from it, else its first model."""
    base = stage.config.get("base_model")
    if isinstance(base, str) and base in models:
        return base
    return next((m for m in merged_refs if m in models), None)


def _pair_problems(
    stage: MergeStage,
    reference: str | None,
    merged_refs: list[str],
    plan: ChainPlan,
    crimes: frozenset[str],
) -> list[str]:
    if reference is None or not plan.models[reference]:
        return []
    whose = "the" if stage.key_path == "merge" else "the stage's"
    role = f"{whose} base_model" if reference == stage.config.get("base_model") else ""
    role = role or f"{whose} first model"
    if stages_named(reference):
        role += f", the expected output of stage {stages_named(reference)[0]!r}"
    skip = set(crimes)
    if stage.config.get("tokenizer") or stage.config.get("tokenizer_source"):
        skip.add("vocab_size")  # mergekit aligns the vocabularies
    if stage.config.get("slices"):
        skip.add("num_hidden_layers")  # slices pick layers by layer_range (checked apart)
    ref_facts, problems = plan.models[reference], []
    for other in merged_refs:
        facts = plan.models.get(other)
        if other == reference or not facts:
            continue
        if any(ref_facts.get(f) != facts.get(f) for f in crimes):
            plan.warnings.append(
                f"{_where(stage)}: {other!r} and {reference!r} differ in architecture "
                "(allowed by merge_options.allow_crimes)"
            )
        diffs = _mismatches(ref_facts, facts, skip=frozenset(skip))
        if diffs:
            problems.append(_pair_problem(stage, reference, role, other, diffs))
    return problems


def plan_chain(
    config: dict[str, Any],
    artifact_root: Path,
    base_dir: Path,
    *,
    trust_remote_code: bool,
    options: dict[str, Any],
    recipe_path: Path | None,
) -> ChainPlan:
    stages = merge_stages(config)
    versioned = {k: v for k, v in sorted(options.items()) if k not in RUNTIME_MERGE_OPTIONS}
    crimes = frozenset(_ARCH_FIELDS) if options.get("allow_crimes") else frozenset()
    problems: list[str] = []
    plan = ChainPlan([], {})
    plans: dict[str, StagePlan] = {}
    stage_dirs: dict[str, Path] = {}
    keys: dict[str, str] = {}
    for stage in stages:
        refs = model_refs(stage.config)
        resolved: dict[str, str] = {}
        for r in refs:
            if r.ref in resolved:
                continue
            try:
                resolved[r.ref] = _resolve_ref(r.ref, artifact_root, base_dir, stage_dirs)
            except (ValueError, KeyError) as exc:
                problems.append(f"{_where(stage)}: {r.loc}: {exc}")
        merged_refs = list(dict.fromkeys(r.ref for r in refs if r.merged))
        for ref in merged_refs:
            if ref in plan.models or ref not in resolved:
                continue
            named = stages_named(ref)
            if named:
                plan.models[ref] = plans[named[0]].output
                continue
            try:
                plan.models[ref] = _read_facts(resolved[ref], trust_remote_code)
            except (OSError, ValueError, KeyError) as exc:
                problems.append(
                    f"{_where(stage)}: cannot read the config of {ref!r} "
                    f"({type(exc).__name__}: {exc}).\n    What to do: check the reference; a hub "
                    "model needs hub access (and a login for gated models) on this host."
                )
        problems += _duplicate_problems(stage, refs, resolved)
        reference = _reference_model(stage, merged_refs, plan.models)
        problems += _pair_problems(stage, reference, merged_refs, plan, crimes)
        problems.extend(_layer_problems(stage, plan.models))
        output = _expected_output(stage.config, plan.models.get(reference or "", {}))
        key = ""
        if len(resolved) == len({r.ref for r in refs}):
            key = _stage_key(stage, resolved, keys, versioned)
        keys[stage.name] = key
        cache_dir = None
        if stage is not stages[-1]:
            cache_dir = Path(artifact_root) / STAGES_DIR / f"{stage.name}-{key}"
            stage_dirs[stage.name] = cache_dir
        sp = StagePlan(stage, resolved, merged_refs, reference, output, key, cache_dir)
        plans[stage.name] = sp
        plan.stages.append(sp)
    if problems:
        head = f"{recipe_path}: " if recipe_path else ""
        raise MergeCompatibilityError(
            f"{head}the merge cannot run (found from the models' config.json files; no weights "
            "were loaded):\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return plan


def preflight_merge(
    config: dict[str, Any],
    artifact_root: Path,
    base_dir: Path,
    *,
    trust_remote_code: bool = False,
    options: dict[str, Any] | None = None,
    recipe_path: Path | None = None,
) -> dict[str, Any]:
    """Check a whole merge chain from the models' configs, before any weight is loaded.

    Args:
        config: The recipe's merge section (one mergekit config or ``{stages: [...]}``).
        artifact_root: Artifact root (tiny models, cached stages).
        base_dir: Folder relative model paths resolve against.
        trust_remote_code: Only when the recipe opts in.
        options: The recipe's ``merge_options`` (``allow_crimes`` relaxes the architecture check).
        recipe_path: Named in the error message.

    Returns:
        Facts for metadata: per stage its models, reference model, expected layer count, cache
        key and whether it is cached; per model the compared config fields; warnings.

    Raises:
        MergeCompatibilityError: Naming every incompatible pair of models with each differing
            field and both values, every layer_range that does not fit, and what to do.
    """
    return plan_chain(
        config,
        Path(artifact_root),
        Path(base_dir),
        trust_remote_code=trust_remote_code,
        options=dict(options or {}),
        recipe_path=recipe_path,
    ).facts()


# --- the merge --------------------------------------------------------------------------------


def preflight_markdown(preflight: dict[str, Any]) -> str:
    """The compared config fields of every merged model as a markdown table."""
    columns = ["model_type", *_SHAPE_FIELDS]
    rope = sorted({k for facts in preflight["models"].values() for k in facts if "rope" in k})
    header = ["model", *columns, *rope]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for ref, facts in preflight["models"].items():
        cells = [ref, *(_fmt(facts.get(c)).strip("'") for c in [*columns, *rope])]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)
