"""Model references as the recipe writes them (``tiny:``, ``pkg:``, ``specialist:``, a local
path or a hub id), checked without loading or building anything. Resolving them to weights is
:func:`ragft_dagster.models.refs.resolve_model_ref`."""

from __future__ import annotations

import re
from pathlib import Path

from ragft_dagster.config.packages import PackagedModelError, find_packaged_model

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelReferenceError(ValueError):
    """A model reference that names nothing we can load."""


def check_model_ref(ref: str, base_dir: Path | None = None) -> str:
    """Check a model reference without loading or building anything (for recipe validation).

    Args:
        ref: As in :func:`resolve_model_ref`.
        base_dir: Folder that relative local paths resolve against.

    Returns:
        Its kind: ``tiny``, ``pkg``, ``specialist`` (the recipe's derived specialist),
        ``local`` or ``hub``.

    Raises:
        ModelReferenceError: Naming the reference, what is wrong and what to write instead.
    """
    if ref.startswith("specialist:"):
        return "specialist"
    if ref.startswith("tiny:"):
        name = ref.removeprefix("tiny:")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ModelReferenceError(
                f"model reference {ref!r}: a tiny model name is letters, digits, '-' or '_' "
                "(e.g. tiny:base)"
            )
        return "tiny"
    if ref.startswith("pkg:"):
        try:
            find_packaged_model(ref)  # installed, and names exactly one model: nothing loaded
        except PackagedModelError as exc:
            raise ModelReferenceError(str(exc)) from None
        return "pkg"
    local = _local_path(ref, base_dir)
    if ref.startswith((".", "/", "~")) or local.exists():
        if not local.is_dir():
            what = "is a file, not a model directory" if local.exists() else "does not exist"
            raise ModelReferenceError(
                f"model reference {ref!r}: {local} {what}; point it at a model directory saved "
                "with save_pretrained (relative paths start at the recipe's folder)"
            )
        if not (local / "config.json").is_file() and not (local / "modules.json").is_file():
            raise ModelReferenceError(
                f"model reference {ref!r}: {local} has no config.json; point it at a model "
                "directory saved with save_pretrained"
            )
        return "local"
    if _HUB_ID.match(ref):
        return "hub"
    prefix = ref.split(":", 1)[0] + ":" if ":" in ref else ""
    typo = f" ({prefix!r} is not a known prefix)" if prefix else ""
    raise ModelReferenceError(
        f"model reference {ref!r} is not tiny:<name>, pkg:<distribution>, an existing local "
        f"directory or a hub id of the form org/name{typo}"
    )


def _local_path(ref: str, base_dir: Path | None) -> Path:
    path = Path(ref).expanduser()
    return path if path.is_absolute() else (base_dir or Path.cwd()) / path
