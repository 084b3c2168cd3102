"""Recipe checks against upstream schemas (trl, peft, mergekit), remembered per installed version.

Importing trl, peft or mergekit costs ~10 s (they import torch and transformers), and every
Dagster code load (``dagster dev``, each run's process, the daemon) validates the recipe. The
field names of a config class and the verdict "this mergekit config is valid" only change when
the package version does, so both are kept in a small on-disk cache keyed by that version: the
first load imports the package, later loads do not. Nothing breaks when the cache cannot be
written; it is then recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("RAGFT_SCHEMA_CACHE") or Path(base) / "ragft_dagster" / "schema")


def _remembered(kind: str, package: str, payload: Any) -> tuple[Path, Any]:
    try:
        pkg_version = version(package)
    except PackageNotFoundError:
        pkg_version = "unknown"
    key = json.dumps([kind, package, pkg_version, payload], sort_keys=True, default=str)
    path = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path, None


def _remember(path: Path, value: Any) -> None:
    try:
        from ragft_dagster.artifacts import atomic_write_text

        atomic_write_text(path, json.dumps(value))
    except OSError:
        pass  # a read-only home: recompute next time


def dataclass_fields(cls_path: str) -> frozenset[str]:
    """Field names of an upstream config dataclass, e.g. ``trl.DPOConfig``."""
    path, known = _remembered("fields", cls_path.split(".")[0], cls_path)
    if known is None:
        module_name, cls_name = cls_path.rsplit(".", 1)
        cls = getattr(import_module(module_name), cls_name)
        known = sorted(f.name for f in dataclasses.fields(cls))
        _remember(path, known)
    return frozenset(known)


def init_parameters(cls_path: str) -> frozenset[str]:
    """Keyword parameters of an upstream class's constructor, e.g.
    ``transformers.BitsAndBytesConfig`` (not a dataclass)."""
    path, known = _remembered("init-parameters", cls_path.split(".")[0], cls_path)
    if known is None:
        import inspect

        module_name, cls_name = cls_path.rsplit(".", 1)
        cls = getattr(import_module(module_name), cls_name)
        params = inspect.signature(cls.__init__).parameters.values()
        known = sorted(p.name for p in params if p.name != "self" and p.kind != p.VAR_KEYWORD)
        _remember(path, known)
    return frozenset(known)


def validate_merge_config(config: dict[str, Any]) -> None:
    """Validate a mergekit configuration with mergekit's own schema (remembered when valid).

    Raises:
        ValueError: When mergekit rejects the configuration (its message included).
    """
    path, verdict = _remembered("mergekit-config", "mergekit", config)
    if verdict == "valid":
        return
    from mergekit.config import MergeConfiguration

    try:
        MergeConfiguration.model_validate(config)
    except RuntimeError as exc:  # some mergekit validators raise RuntimeError
        raise ValueError(f"mergekit rejects this configuration: {exc}") from None
    _remember(path, "valid")


def model_fields(cls_path: str) -> frozenset[str]:
    """Field names of an upstream pydantic model, e.g. ``mergekit.options.MergeOptions``."""
    path, known = _remembered("model-fields", cls_path.split(".")[0], cls_path)
    if known is None:
        module_name, cls_name = cls_path.rsplit(".", 1)
        cls = getattr(import_module(module_name), cls_name)
        known = sorted(cls.model_fields)
        _remember(path, known)
    return frozenset(known)


def build_merge_options(values: dict[str, Any]) -> Any:
    """A mergekit ``MergeOptions`` from plain values; ``out_shard_size`` may be written as on
    mergekit's command line (``"1B"``, ``"500M"``)."""
    from mergekit.common import parse_kmb
    from mergekit.options import MergeOptions

    values = dict(values)  # MergeOptions' validators fill in the dict they are given
    if isinstance(values.get("out_shard_size"), str):
        try:
            values["out_shard_size"] = parse_kmb(values["out_shard_size"])
        except ValueError:
            raise ValueError(
                f"out_shard_size {values['out_shard_size']!r} is not a number of parameters "
                "(e.g. 2000000000, 500M or 2B)"
            ) from None
    return MergeOptions.model_validate(values)


def validate_merge_options(options: dict[str, Any]) -> None:
    """Validate run options with mergekit's ``MergeOptions`` (remembered when valid).

    Raises:
        ValueError: Naming unknown fields, or with mergekit's message for a wrong value.
    """
    unknown = sorted(set(options) - model_fields("mergekit.options.MergeOptions"))
    if unknown:
        raise ValueError(
            f"unknown mergekit MergeOptions field(s) {unknown}; see `mergekit-yaml --help` for "
            "the options (write them with underscores: lazy_unpickle, out_shard_size, ...)"
        )
    path, verdict = _remembered("mergekit-options", "mergekit", options)
    if verdict == "valid":
        return
    build_merge_options(options)
    _remember(path, "valid")


def _plain(value: Any, original: Any) -> Any:
    """A validated value as plain JSON data (an enum as its value); the original when the
    upstream type has no plain form."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return original
    return value


def _type_name(hint: Any) -> str:
    """``float``, ``int | None``, ``SchedulerType | str``: a type as a reader writes it."""
    import re

    if isinstance(hint, type):
        return hint.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", str(hint))


def typed_dataclass_values(cls_path: str, values: dict[str, Any]) -> dict[str, Any]:
    """Check ``values`` against the field types of an upstream config dataclass (e.g.
    ``trl.SFTConfig``) and return them converted the way pydantic's lax mode converts (YAML
    reads ``5e-5`` as a string: it becomes the float 5e-05). Remembered per package version
    and payload, like the other checks here.

    Raises:
        ValueError: Naming each field whose value does not fit its upstream type.
    """
    path, known = _remembered("typed-values", cls_path.split(".")[0], [cls_path, values])
    if isinstance(known, dict):
        return known
    import typing

    from pydantic import ConfigDict, PydanticSchemaGenerationError, TypeAdapter, ValidationError

    module_name, cls_name = cls_path.rsplit(".", 1)
    hints = typing.get_type_hints(getattr(import_module(module_name), cls_name))
    out: dict[str, Any] = {}
    errors = []
    for key, value in values.items():
        try:
            adapter = TypeAdapter(hints[key], config=ConfigDict(arbitrary_types_allowed=True))
        except (KeyError, PydanticSchemaGenerationError, TypeError):
            out[key] = value  # no usable annotation: upstream checks it when training starts
            continue
        try:
            out[key] = _plain(adapter.validate_python(value), value)
        except ValidationError as exc:
            first = exc.errors()[0]
            errors.append(f"{key}: {value!r} is not {_type_name(hints[key])} ({first['msg']})")
    if errors:
        raise ValueError(f"{cls_name}: " + "; ".join(errors))
    _remember(path, out)
    return out
