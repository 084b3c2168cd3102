"""Environment profiles: the *where/how* (device, storage, endpoint, vector store).

A profile is a YAML file in ``resources/``. Relative paths in it resolve against the project
root, i.e. the folder that holds ``resources/``. Secrets never live here: ``llm.api_key_env``
names the environment variable that holds the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComputeProfile(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` picks CUDA when present, else CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: bfloat16 on GPUs that support it, float32 on CPU."""


class ArtifactsProfile(_Section):
    root: str = ".artifacts"


class LlmProfile(_Section):
    base_url: str | None = None
    """OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server); None = OpenAI."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (the key itself never goes in a file)."""


class VectorStoreProfile(_Section):
    mode: Literal["embedded", "http"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)


class Profile(_Section):
    name: str
    description: str = ""
    executor: Literal["in_process", "multiprocess"] = "in_process"
    """in_process avoids paying the ~20 s torch/transformers import once per step."""
    compute: ComputeProfile = ComputeProfile()
    artifacts: ArtifactsProfile = ArtifactsProfile()
    llm: LlmProfile = LlmProfile()
    vector_store: VectorStoreProfile = VectorStoreProfile()

    _path: Path | None = PrivateAttr(default=None)

    @property
    def project_root(self) -> Path:
        return self._path.parent.parent if self._path else Path.cwd()

    @property
    def artifact_root(self) -> Path:
        root = Path(self.artifacts.root)
        return root if root.is_absolute() else (self.project_root / root).resolve()


def load_profile(path: Path | str) -> Profile:
    """Load and validate a profile YAML; errors name the file and the key."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ProfileError(f"{path}: profile file not found (set RAGFT_PROFILE or --profile)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        profile = Profile.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        lines = [f"{path}: invalid profile"]
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"]) or "<top level>"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  - key '{key}': {msg}")
        raise ProfileError("\n".join(lines)) from None
    profile._path = path
    return profile
