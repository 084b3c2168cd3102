"""Model merging with mergekit (Dagster-free): one mergekit config, or a chain of them.

The recipe's ``merge`` section is either a mergekit configuration, verbatim, or a chain of
stages whose configs may name an earlier stage's output as ``stage:<name>``::

    merge:
      stages:
        - name: math
          config: {merge_method: slerp, base_model: ..., slices: [...]}
        - name: code
          config: {merge_method: slerp, base_model: stage:math, slices: [...]}

Every stage but the last is written to ``<artifact root>/merge_stages/<name>-<key>/`` and reused
while its key is unchanged: the stage's config as written, a fingerprint of every input (a
local model's files, a hub id and revision, an earlier stage's key), the merge options that
change the output and the mergekit version. The last stage writes the merged model itself.

Before any weight is read, the whole chain is checked from the models' ``config.json`` alone
(:func:`ragft_dagster.models.merge_preflight.preflight_merge`); this module runs the plan that
check returns.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ragft_dagster.artifacts import atomic_dir
from ragft_dagster.config.merge import (
    GPU_ONLY_MERGE_OPTIONS,
    RECIPE_COPY,
    STAGE_MARKER,
    source_models,
)
from ragft_dagster.config.upstream import build_merge_options
from ragft_dagster.models.merge_preflight import ChainPlan, plan_chain, substitute_refs
from ragft_dagster.models.refs import load_tokenizer


def _merge_options(
    options: dict[str, Any], device: str, trust_remote_code: bool
) -> tuple[Any, list[str]]:
    values: dict[str, Any] = {
        "device": device,
        "copy_tokenizer": True,
        "lazy_unpickle": True,
        "low_cpu_memory": device != "cpu",
        "trust_remote_code": trust_remote_code,
        "quiet": True,
    }
    ignored = []
    for key, value in options.items():
        if device == "cpu" and key in GPU_ONLY_MERGE_OPTIONS:
            ignored.append(key)
            continue
        values[key] = value
    return build_merge_options(values), ignored


def _run_mergekit(config: dict[str, Any], out_dir: Path, options: Any) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge

    # mergekit 0.1.5 writes the output dtype through transformers 5's deprecated alias
    # (``config.torch_dtype = ...`` in mergekit.merge._model_out_config), which logs "`torch_dtype`
    # is deprecated! Use `dtype` instead!" into every merge's output: the value is stored the
    # same, and there is nothing for a user to change. Only that record is dropped, only here.
    logger = logging.getLogger("transformers.configuration_utils")
    mergekit_alias = _DropRecords("`torch_dtype` is deprecated")
    logger.addFilter(mergekit_alias)
    try:
        run_merge(MergeConfiguration.model_validate(config), out_path=str(out_dir), options=options)
    finally:
        logger.removeFilter(mergekit_alias)


class _DropRecords(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _prune_stale(plan: ChainPlan) -> list[str]:
    """Remove earlier versions of this chain's intermediate stages (a 7B stage is ~14 GB)."""
    pruned = []
    for sp in plan.stages:
        if sp.cache_dir is None:
            continue
        stale = re.compile(rf"{re.escape(sp.stage.name)}-[0-9a-f]{{16}}")
        for old in sp.cache_dir.parent.iterdir():
            if old != sp.cache_dir and old.is_dir() and stale.fullmatch(old.name):
                shutil.rmtree(old, ignore_errors=True)
                pruned.append(old.name)
    return pruned


def merge_models(
    config: dict[str, Any],
    out_dir: Path,
    *,
    artifact_root: Path,
    base_dir: Path,
    device: str = "cpu",
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    options: dict[str, Any] | None = None,
    recipe_path: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check, then run a merge (one mergekit config or a chain) into ``out_dir``.

    Args:
        config: The recipe's merge section (``tiny:`` and ``stage:`` references allowed).
        out_dir: Output directory, fresh and empty (weights, config, tokenizer, model card).
        artifact_root: Artifact root (tiny models, cached intermediate stages).
        base_dir: Folder relative model paths resolve against.
        device: Torch device for the merge arithmetic (the profile's).
        chat_template: Template to store with the tokenizer if the merge output lacks one.
        trust_remote_code: Only when the recipe opts in.
        options: The recipe's ``merge_options`` (mergekit MergeOptions fields).
        recipe_path: Named in error messages.
        log: Receives one line per stage.

    Returns:
        Facts for metadata: method, sources, architecture and shapes of the result, the stages
        (merged or reused, seconds), the preflight facts, ignored options, pruned intermediates.

    Raises:
        MergeCompatibilityError: From the preflight, before any weight is loaded.
    """
    from transformers import AutoConfig

    say = log or (lambda _line: None)
    options = dict(options or {})
    artifact_root, out_dir = Path(artifact_root), Path(out_dir)
    plan = plan_chain(
        config,
        artifact_root,
        Path(base_dir),
        trust_remote_code=trust_remote_code,
        options=options,
        recipe_path=recipe_path,
    )
    preflight = plan.facts()
    for warning in plan.warnings:
        say(f"preflight: {warning}")
    merge_options, ignored = _merge_options(options, device, trust_remote_code)
    if ignored:
        say(f"merging on the CPU: ignoring GPU-only merge_options {ignored}")
    stages = []
    for sp in plan.stages:
        started = time.monotonic()
        target = sp.cache_dir or out_dir
        if sp.cache_dir is not None and (sp.cache_dir / STAGE_MARKER).is_file():
            status = "reused"
        else:
            resolved = substitute_refs(sp.stage.config, sp.resolved)
            if sp.cache_dir is None:
                _run_mergekit(resolved, out_dir, merge_options)
            else:
                with atomic_dir(sp.cache_dir) as tmp:
                    _run_mergekit(resolved, tmp, merge_options)
                    marker = {"name": sp.stage.name, "key": sp.key, "config": sp.stage.config}
                    (tmp / STAGE_MARKER).write_text(json.dumps(marker, indent=2))
            status = "merged"
        seconds = round(time.monotonic() - started, 2)
        stages.append(
            {
                "name": sp.stage.name,
                "merge_method": sp.stage.config.get("merge_method"),
                "models": sp.merged_refs,
                "key": sp.key,
                "status": status,
                "path": str(target),
                "seconds": seconds,
            }
        )
        say(f"stage {sp.stage.name!r}: {status} in {seconds} s ({target})")
    pruned = _prune_stale(plan)
    # Keep the recipe's (unresolved) merge section beside the weights: it is what the user wrote.
    (out_dir / RECIPE_COPY).write_text(yaml.safe_dump(config, sort_keys=False))
    tok = load_tokenizer(str(out_dir), chat_template, trust_remote_code)
    tok.save_pretrained(out_dir)
    out_cfg = AutoConfig.from_pretrained(str(out_dir), trust_remote_code=trust_remote_code)
    return {
        "merge_method": plan.stages[-1].stage.config.get("merge_method"),
        "sources": source_models(config),
        "architecture": (out_cfg.architectures or ["?"])[0],
        "num_hidden_layers": out_cfg.num_hidden_layers,
        "hidden_size": out_cfg.hidden_size,
        "vocab_size": out_cfg.vocab_size,
        "stages": stages,
        "preflight": preflight,
        "ignored_options": ignored,
        "pruned": pruned,
    }


def stages_markdown(stages: list[dict[str, Any]]) -> str:
    """The stages of a merge as a markdown table (for the asset's metadata)."""
    rows = ["| stage | method | models | status | seconds | key |", "|---|---|---|---|---|---|"]
    for s in stages:
        models = ", ".join(s["models"])
        rows.append(
            f"| {s['name']} | {s['merge_method']} | {models} | {s['status']} | {s['seconds']} "
            f"| {s['key']} |"
        )
    return "\n".join(rows)
