"""Model references: ``tiny:``, ``pkg:``, ``specialist:`` names, a local path or a hub id."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.config.references import (  # noqa: F401  (re-exported)
    ModelReferenceError,
    _local_path,
    check_model_ref,
)
from ragft_dagster.models.packaged import (
    PackagedModelError,
    packaged_model_dir,
)
from ragft_dagster.models.tiny import build_tiny_model


def resolve_model_ref(ref: str, artifact_root: Path, base_dir: Path | None = None) -> str:
    """Turn a recipe's model reference into something ``from_pretrained`` accepts.

    Args:
        ref: ``tiny:<name>``, ``pkg:<distribution>[#<name>]``, a local directory or a hub id
            (org/name).
        artifact_root: Where tiny models are cached (``<root>/tiny``) and packaged GGUF models
            converted (``<root>/packaged``).
        base_dir: Folder that relative local paths resolve against (the recipe's folder).

    Returns:
        A local directory path, or the hub id unchanged (loaded by transformers on a GPU host).

    Raises:
        ModelReferenceError: The reference names nothing loadable; the message says why.
    """
    kind = check_model_ref(ref, base_dir)
    if kind == "specialist":
        # The recipe's derived specialist (one per recipe; the name is checked at load).
        folder = ArtifactLayout(artifact_root).specialist_model
        require_model_dir(folder)
        return str(folder)
    if kind == "tiny":
        cache = ArtifactLayout(artifact_root).tiny_models
        return str(build_tiny_model(ref.removeprefix("tiny:"), cache))
    if kind == "pkg":
        try:
            return str(packaged_model_dir(ref, artifact_root))
        except PackagedModelError as exc:
            raise ModelReferenceError(str(exc)) from None
    if kind == "local":
        return str(_local_path(ref, base_dir))
    return ref


# Artifact folders (relative to the artifact root) and the asset that writes each.
_ARTIFACT_ASSETS = {
    getattr(ArtifactLayout(""), asset).parts: asset
    for asset in (
        "specialist_model",
        "merged_model",
        "dpo_model",
        "lora_adapter",
        "exported_model",
    )
}


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+-]+")


def merge_source_keys(recipe: Any) -> dict[str, str]:
    """``{model partition key: model reference}`` of every model the recipe's merge merges
    (stage outputs excluded), in order of appearance, each once: the recipe's ``base_model`` is
    ``base``; a ``specialist:``, ``tiny:`` or ``pkg:`` reference keeps its name (as the merge
    config writes it); a hub id or local folder is its last path part (``MetaMath-Mistral-7B``).
    A reference pinned to a revision (``model@rev``) is left out: scoring loads no revision.
    """
    from ragft_dagster.config.merge import source_models
    from ragft_dagster.config.recipe import LOCAL_MODELS

    keys: dict[str, str] = {}
    for ref in source_models(recipe.merge):
        if "@" in ref:
            continue
        if ref == recipe.base_model:
            keys.setdefault("base", ref)
            continue
        weights = ref.split("+")[0]
        if weights.startswith(("specialist:", "tiny:", "pkg:")):
            name = ref
        else:
            name = "+".join(Path(part.rstrip("/")).name for part in ref.split("+"))
        name = _KEY_UNSAFE.sub("-", name).strip("-") or "source"
        key, i = name, 2
        while key in keys or key in LOCAL_MODELS:
            key, i = f"{name}-{i}", i + 1
        keys[key] = ref
    return keys


@dataclass(frozen=True)
class LocalModels:
    """The pipeline's local models (the ``model`` partitions) and how to load them: what
    scoring and ``ragft ask`` need of the recipe, as plain values."""

    base_ref: str
    recipe_root: Path
    layout: ArtifactLayout
    chat_template: str | None = None
    trust_remote_code: bool = False
    sources: tuple[tuple[str, str], ...] = ()
    """(partition key, model reference) of the merge's sources (:func:`merge_source_keys`)."""

    @classmethod
    def of(cls, recipe: Any, layout: ArtifactLayout) -> LocalModels:
        """The local models of a recipe whose artifacts live in ``layout``."""
        return cls(
            recipe.base_model,
            recipe.root,
            layout,
            recipe.chat_template,
            recipe.trust_remote_code,
            tuple(merge_source_keys(recipe).items()),
        )

    def paths(self, model_key: str) -> tuple[str, str | None]:
        """(weights, adapter) of a ``model`` partition: base, merged, dpo, sft = dpo + adapter,
        or a merge source (``model+lora`` as weights + adapter)."""
        layout = self.layout
        if model_key == "base":
            return resolve_model_ref(self.base_ref, layout.root, self.recipe_root), None
        sources = dict(self.sources)
        if model_key in sources:
            weights, _, adapter = sources[model_key].partition("+")
            root, base_dir = layout.root, self.recipe_root
            return (
                resolve_model_ref(weights, root, base_dir),
                resolve_model_ref(adapter, root, base_dir) if adapter else None,
            )
        if model_key == "sft":
            return str(layout.dpo_model), str(layout.lora_adapter)
        return str({"merged": layout.merged_model, "dpo": layout.dpo_model}[model_key]), None


def require_model_dir(path: str | Path) -> None:
    """Fail clearly when a local model (or adapter) folder is missing or incomplete.

    A folder an asset writes (``models/dpo``...) names that asset and how to re-materialize it;
    a hub id passes unchecked.

    Raises:
        ModelReferenceError: The folder does not exist, or holds neither ``config.json`` nor
            ``adapter_config.json``.
    """
    folder = Path(path)
    if not folder.is_absolute() and not str(path).startswith(".") and not folder.exists():
        return  # a hub id: transformers resolves it
    if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
        return
    problem = "does not exist" if not folder.exists() else "has no config.json"
    asset = next(
        (a for tail, a in _ARTIFACT_ASSETS.items() if folder.parts[-len(tail) :] == tail), None
    )
    if asset is None:
        raise ModelReferenceError(
            f"{folder} {problem}: not a model saved with save_pretrained; fix the reference"
        )
    raise ModelReferenceError(
        f"{asset} at {folder} {problem} (never materialized, or the folder was changed by "
        f"hand); re-materialize {asset} (UI: its asset page > Materialize; CLI: dagster asset "
        f"materialize -m ragft_dagster.definitions --select {asset}), then this asset"
    )


def ensure_chat_template(tokenizer: Any, template: str | None) -> None:
    """Give a tokenizer the recipe's chat template, or fail if it has none at all."""
    if template:
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise ModelReferenceError(
            "the tokenizer has no chat template; set `chat_template` in the recipe"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_tokenizer(path: str, chat_template: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    require_model_dir(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    ensure_chat_template(tok, chat_template)
    return tok


def load_trainable_model(
    model_dir: str,
    dtype: Any,
    trust_remote_code: bool,
    quantization: dict[str, Any] | None,
    trainer_args: dict[str, Any],
    *,
    on_gpu: bool = False,
) -> Any:
    """Load a causal LM for training; with ``quantization`` as a 4-bit QLoRA base.

    On a GPU each process loads straight onto its own device (``LOCAL_RANK``), so N ranks do
    not each hold a full copy of a 7B model in host memory first.

    Args:
        model_dir: Model folder.
        dtype: Torch dtype of the (non-quantized) weights.
        trust_remote_code: Only when the recipe opts in.
        quantization: transformers ``BitsAndBytesConfig`` fields, or None.
        trainer_args: The recipe's trainer arguments (gradient checkpointing for k-bit prep).
        on_gpu: Train on CUDA (the compute profile's choice).
    """
    import os

    from transformers import AutoModelForCausalLM

    require_model_dir(model_dir)
    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if on_gpu else None
    if not quantization:
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code
        )
    import torch

    try:
        import bitsandbytes  # noqa: F401  (imported for the clear error below)
    except ImportError:
        raise RuntimeError(
            "sft.quantization (QLoRA) needs the bitsandbytes package and a CUDA GPU: "
            "pip install bitsandbytes on the GPU host, or remove sft.quantization"
        ) from None
    if not (on_gpu and torch.cuda.is_available()):
        raise RuntimeError(
            "sft.quantization (4-bit QLoRA) needs a CUDA GPU; this host has none. Remove "
            "sft.quantization or run with the gpu profile on a GPU host"
        )
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    bnb = dict(quantization)
    if isinstance(bnb.get("bnb_4bit_compute_dtype"), str):
        bnb["bnb_4bit_compute_dtype"] = getattr(torch, bnb["bnb_4bit_compute_dtype"])
    # Quantized weights cannot be moved after loading: each rank loads onto its own GPU.
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=dtype,
        quantization_config=BitsAndBytesConfig(**bnb),
        device_map=device_map,
        trust_remote_code=trust_remote_code,
    )
    # trl's default is gradient checkpointing on; non-reentrant, as the Trainer will use it.
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=bool(
            checkpointing_args(trainer_args)["activation_checkpointing"]
        ),
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def loss_history(trainer: Any) -> list[dict[str, Any]]:
    """The trainer's logged training steps (entries that carry a ``loss``)."""
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def count_parameters(model: Any) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def checkpointing_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's gradient checkpointing as transformers 5 names it, to pass to a trl config.

    Recipes use trl's field names (``gradient_checkpointing``, on by default in trl 1.x).
    transformers 5 renamed it ``activation_checkpointing`` and warns (FutureWarning, "will be
    removed in v6") whenever only the old name is set, which trl's configs always do; setting the
    new name to the same value keeps the setting and silences nothing else.
    """
    out: dict[str, Any] = {}
    for old, new, default in (
        ("gradient_checkpointing", "activation_checkpointing", True),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs", None),
    ):
        value = args.get(new, args.get(old, default))
        if value is not None:
            out[new] = value
    return out


@contextmanager
def upstream_deprecations_silenced() -> Iterator[None]:
    """Around trl trainers: peft 0.21 (``PeftModel``) and trl 1.16 (DPO's reference pass) read
    ``model.is_gradient_checkpointing``, which transformers 5 deprecated for
    ``is_activation_checkpointing`` with a FutureWarning in every run's log. Only that warning
    is dropped, and only while a trainer is built and trains."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield
