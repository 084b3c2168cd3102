"""Model merging with mergekit (Dagster-free)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ragft_dagster.model_refs import load_tokenizer, resolve_model_ref

_MODEL_KEYS = ("model", "base_model", "tokenizer_source")


def resolve_merge_config(config: dict[str, Any], artifact_root: Path, base_dir: Path) -> dict:
    """Return a copy of a mergekit config with ``tiny:``/relative model references resolved."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in _MODEL_KEYS and isinstance(value, str) and value not in ("union", "base"):
                    out[key] = resolve_model_ref(value, artifact_root, base_dir)
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(copy.deepcopy(config))


def source_models(config: dict[str, Any]) -> list[str]:
    """Every model a mergekit config references, in order of first appearance."""
    from mergekit.config import MergeConfiguration

    cfg = MergeConfiguration.model_validate(config)
    return [str(m.model.path) for m in cfg.referenced_models()]


def merge_models(
    config: dict[str, Any],
    out_dir: Path,
    *,
    artifact_root: Path,
    base_dir: Path,
    device: str = "cpu",
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Run a mergekit merge into ``out_dir`` (which must be a fresh, empty directory).

    Args:
        config: A mergekit configuration as in the recipe (``tiny:`` references allowed).
        out_dir: Output directory (model weights, config, tokenizer, model card).
        artifact_root: Artifact root (for tiny models).
        base_dir: Folder relative model paths resolve against.
        device: Torch device for the merge arithmetic.
        chat_template: Template to store with the tokenizer if the merge output lacks one.
        trust_remote_code: Only when the recipe opts in.

    Returns:
        Facts about the merge for metadata: method, sources, parameter count, dtype.
    """
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoConfig

    resolved = resolve_merge_config(config, artifact_root, base_dir)
    merge_config = MergeConfiguration.model_validate(resolved)
    options = MergeOptions(
        device=device,
        copy_tokenizer=True,
        lazy_unpickle=True,
        low_cpu_memory=device != "cpu",
        trust_remote_code=trust_remote_code,
        quiet=True,
    )
    run_merge(merge_config, out_path=str(out_dir), options=options)
    # Keep the recipe's (unresolved) config beside the weights: it is what the user wrote.
    (Path(out_dir) / "ragft_merge_recipe.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    tok = load_tokenizer(str(out_dir), chat_template, trust_remote_code)
    tok.save_pretrained(out_dir)
    out_cfg = AutoConfig.from_pretrained(str(out_dir), trust_remote_code=trust_remote_code)
    return {
        "merge_method": merge_config.merge_method,
        "sources": source_models(config),
        "architecture": (out_cfg.architectures or ["?"])[0],
        "num_hidden_layers": out_cfg.num_hidden_layers,
        "hidden_size": out_cfg.hidden_size,
        "vocab_size": out_cfg.vocab_size,
    }
