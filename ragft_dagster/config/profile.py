"""Environment profiles: the *where/how* (device, storage, endpoint, vector store, cluster).

A profile is a YAML file in ``resources/``. Relative paths in it resolve against the project
root, i.e. the folder that holds ``resources/``. Secrets never live here: ``llm.api_key_env``
names the environment variable that holds the key (on Kubernetes, a Secret named in
``k8s.env_secrets`` provides it).

Dagster-free: the Kubernetes parts are plain dicts in the shapes ``dagster_k8s`` accepts, so
loading a profile never imports ``dagster_k8s`` or ``kubernetes``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

# dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY (tests check they agree).
K8S_CONFIG_TAG = "dagster-k8s/config"

# Kubernetes object names: namespaces are DNS-1123 labels, Secrets/ConfigMaps DNS-1123
# subdomains. Checked here so an env-var name given as a Secret name (OPENAI_API_KEY) fails
# at load time, not as a pod stuck in CreateContainerConfigError.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComputeProfile(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` picks CUDA when present, else CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: bfloat16 on GPUs that support it; on a CPU with native bf16 (AVX512-BF16, AMX)
    float32 weights trained under bfloat16 autocast and scored in bfloat16; else float32."""
    processes: int = Field(default=1, ge=1)
    """Training processes per host (one per GPU); more than one runs training under ``launcher``."""
    launcher: Literal["torchrun", "accelerate"] = "torchrun"
    """How training starts when ``processes`` > 1."""


class ArtifactsProfile(_Section):
    root: str = ".artifacts"


class LlmProfile(_Section):
    base_url: str | None = None
    """OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server); None = OpenAI."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (the key itself never goes in a file)."""


class VectorStoreProfile(_Section):
    mode: Literal["embedded", "http"] = "embedded"
    """``embedded``: a Chroma directory under the artifact root; ``http``: a Chroma server."""
    host: str = "127.0.0.1"
    """Server host name or IP only (no scheme, no port): ``chromadb.HttpClient(host=...)``."""
    port: int = Field(default=8000, gt=0, lt=65536)

    @field_validator("host")
    @classmethod
    def _bare_host(cls, v: str) -> str:
        if "://" in v or not _HOST.match(v):
            raise ValueError(
                f"{v!r} is not a host name or IP address (give the bare host, e.g. "
                "chroma.ragft.svc.cluster.local, and the port in vector_store.port)"
            )
        return v


class K8sResources(_Section):
    """A container's ``resources`` (Kubernetes quantities: "1", "16Gi", "500m")."""

    limits: dict[str, str] = {"nvidia.com/gpu": "1"}
    requests: dict[str, str] = {}

    @field_validator("limits", "requests", mode="before")
    @classmethod
    def _quantities_as_strings(cls, v: Any) -> Any:
        # YAML reads `nvidia.com/gpu: 1` as an int; Kubernetes wants quantity strings.
        if isinstance(v, Mapping):
            return {
                k: str(q) if isinstance(q, int | float) and not isinstance(q, bool) else q
                for k, q in v.items()
            }
        return v

    def gpus(self) -> int | None:
        """GPUs per step from ``limits`` (extended resources are set as limits), if any."""
        counts = [q for k, q in self.limits.items() if k.endswith("/gpu")]
        return int(counts[0]) if counts and counts[0].isdigit() else None

    def as_k8s(self) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in (("limits", self.limits), ("requests", self.requests)) if v}


class K8sVolumeMount(_Section):
    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str | None = None

    def as_k8s(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class K8sProfile(_Section):
    """Where steps run with ``executor: k8s_job`` (each step its own Kubernetes Job).

    Settings here apply on top of the K8sRunLauncher's in dagster.yaml (dagster_k8s merges them).
    """

    namespace: str = "default"
    """Namespace of the step Jobs."""
    image: str | None = None
    """Step image; None = the image the run was launched with (the code location's)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    service_account_name: str | None = None
    env_config_maps: list[str] = []
    """ConfigMaps whose keys become environment variables in every step pod."""
    env_secrets: list[str] = []
    """Secrets whose keys become environment variables (the LLM key: a key named like
    ``llm.api_key_env``)."""
    volumes: list[dict[str, Any]] = []
    """Pod volumes (Kubernetes Volume objects), e.g. the ReadWriteMany claim of the artifacts."""
    volume_mounts: list[K8sVolumeMount] = []
    max_concurrent: int | None = Field(default=None, ge=1)
    """Step pods at once per run; None = as many as the graph allows."""
    gpu_resources: K8sResources = K8sResources()
    """Container resources of GPU steps (see :meth:`Profile.gpu_op_tags`)."""
    node_selector: dict[str, str] = {}
    """Node labels GPU steps must land on (e.g. ``nvidia.com/gpu.product``)."""
    tolerations: list[dict[str, Any]] = []
    """Tolerations of GPU steps, e.g. for a ``nvidia.com/gpu:NoSchedule`` taint."""

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes namespace name (lowercase a-z, 0-9, -)")
        return v

    @field_validator("env_config_maps", "env_secrets")
    @classmethod
    def _object_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _DNS_SUBDOMAIN.match(name):
                raise ValueError(
                    f"{name!r} is not a Kubernetes object name (lowercase a-z, 0-9, -, .): "
                    "list the Secret/ConfigMap, not the variable it provides"
                )
        return v

    @field_validator("volumes")
    @classmethod
    def _named_volumes(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, vol in enumerate(v):
            if not isinstance(vol.get("name"), str):
                raise ValueError(f"volume {i} has no 'name'")
        return v

    def executor_config(self, env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Config of ``dagster_k8s.k8s_job_executor`` (its own field names)."""
        config: dict[str, Any] = {
            "job_namespace": self.namespace,
            "env_config_maps": list(self.env_config_maps),
            "env_secrets": list(self.env_secrets),
            "env_vars": [f"{k}={v}" for k, v in (env_vars or {}).items()],
            "volumes": [dict(v) for v in self.volumes],
            "volume_mounts": [m.as_k8s() for m in self.volume_mounts],
        }
        optional = {
            "job_image": self.image,
            "image_pull_policy": self.image_pull_policy,
            "service_account_name": self.service_account_name,
            "max_concurrent": self.max_concurrent,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        return config


class Profile(_Section):
    name: str
    description: str = ""
    executor: Literal["in_process", "multiprocess", "k8s_job"] = "in_process"
    """in_process avoids paying the ~20 s torch/transformers import once per step;
    k8s_job runs each step as a Kubernetes Job (needs the ``k8s`` section)."""
    compute: ComputeProfile = ComputeProfile()
    artifacts: ArtifactsProfile = ArtifactsProfile()
    llm: LlmProfile = LlmProfile()
    vector_store: VectorStoreProfile = VectorStoreProfile()
    k8s: K8sProfile | None = None
    """Only with ``executor: k8s_job``, and required there."""
    hub_mirror: dict[str, str] = {}
    """Hub ids (models and datasets) mapped to what this site has instead: a local folder or
    file (absolute, or relative to this profile) or any model reference (``pkg:...``,
    ``tiny:...``). Every occurrence of the id in the recipe uses the mirror: an air-gapped
    cluster's model store, or small stand-ins of the same family for a rehearsal on a CPU."""

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("hub_mirror")
    @classmethod
    def _hub_ids(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", key):
                raise ValueError(f"{key!r} is not a hub id (org/name)")
        return v

    def mirror(self) -> dict[str, str]:
        """``hub_mirror`` with relative local paths made absolute (against this profile)."""
        base = self._path.parent if self._path else Path.cwd()
        out = {}
        for key, target in self.hub_mirror.items():
            local = not re.match(r"^[a-z]+:", target) and not re.match(
                r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", target
            )
            out[key] = str((base / Path(target).expanduser()).resolve()) if local else target
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.k8s is not None and self.executor != "k8s_job":
            raise ValueError(
                f"key 'k8s' is only valid with executor: k8s_job (executor is {self.executor!r})"
            )
        if self.executor != "k8s_job":
            return self
        if self.k8s is None:
            raise ValueError(
                "key 'k8s': executor k8s_job needs a k8s section (namespace, gpu_resources, ...)"
            )
        if not PurePosixPath(self.artifacts.root).is_absolute():
            raise ValueError(
                f"key 'artifacts.root': {self.artifacts.root!r} must be an absolute path on a "
                "volume every step pod mounts (executor k8s_job runs each step in its own pod)"
            )
        if self.vector_store.mode != "http":
            raise ValueError(
                "key 'vector_store.mode': executor k8s_job needs 'http' (a Chroma server); an "
                "embedded Chroma is a SQLite file that pods on a shared volume cannot share safely"
            )
        gpus = self.k8s.gpu_resources.gpus()
        if self.compute.device == "cuda":
            # Only GPU-bound steps get a GPU (op tags); the others (chunking, the index, the SFT
            # dataset's contamination check) run in pods without one and must fall back to CPU.
            raise ValueError(
                "key 'compute.device': use 'auto' with executor k8s_job: GPU steps get CUDA "
                "through their k8s.gpu_resources request, the other steps run on CPU pods"
            )
        if self.compute.device != "cpu" and gpus is not None and self.compute.processes > gpus:
            raise ValueError(
                f"key 'compute.processes': {self.compute.processes} training processes but GPU "
                f"steps request {gpus} GPU(s) in k8s.gpu_resources.limits (one process per GPU)"
            )
        return self

    @property
    def path(self) -> Path | None:
        """The file this profile was loaded from (None when built in code)."""
        return self._path

    @property
    def project_root(self) -> Path:
        return self._path.parent.parent if self._path else Path.cwd()

    @property
    def artifact_root(self) -> Path:
        root = Path(self.artifacts.root)
        return root if root.is_absolute() else (self.project_root / root).resolve()

    def gpu_op_tags(self) -> dict[str, Any]:
        """Op tags for GPU-bound steps: their pod's GPU request on Kubernetes, else none.

        Returns:
            ``{"dagster-k8s/config": {...}}`` for executor k8s_job (container resources, node
            selector, tolerations, and a memory-backed /dev/shm when several processes train
            together: NCCL needs more than the 64 MiB default); ``{}`` otherwise.
        """
        if self.k8s is None:
            return {}
        container: dict[str, Any] = {"resources": self.k8s.gpu_resources.as_k8s()}
        pod_spec: dict[str, Any] = {}
        if self.k8s.node_selector:
            pod_spec["node_selector"] = dict(self.k8s.node_selector)
        if self.k8s.tolerations:
            pod_spec["tolerations"] = [dict(t) for t in self.k8s.tolerations]
        if self.compute.processes > 1:
            pod_spec["volumes"] = [{"name": "dshm", "empty_dir": {"medium": "Memory"}}]
            container["volume_mounts"] = [{"name": "dshm", "mount_path": "/dev/shm"}]
        config: dict[str, Any] = {"container_config": container}
        if pod_spec:
            config["pod_spec_config"] = pod_spec
        return {K8S_CONFIG_TAG: config}

    def k8s_executor_config(self, env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``dagster_k8s.k8s_job_executor`` config; step pods get ``RAGFT_PROFILE`` pinned to
        this file so they load the same profile as the run."""
        if self.k8s is None:
            raise ProfileError(f"{self._path or self.name}: executor is not k8s_job")
        env = {"RAGFT_PROFILE": str(self._path)} if self._path else {}
        return self.k8s.executor_config({**env, **(env_vars or {})})


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
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            msg = msg.removeprefix("Value error, ")
            if e["loc"]:
                key = ".".join(str(p) for p in e["loc"])
                lines.append(f"  - key '{key}': {msg}")
            else:
                # Cross-field checks name their keys in the message itself.
                lines.append(f"  - {msg}")
        raise ProfileError("\n".join(lines)) from None
    profile._path = path
    if profile.executor != "k8s_job":  # on Kubernetes the root is a volume of the step pods
        problem = artifact_root_problem(profile.artifact_root)
        if problem:
            raise ProfileError(f"{path}: invalid profile\n  - key 'artifacts.root': {problem}")
    return profile


def artifact_root_problem(root: Path) -> str | None:
    """Why ``root`` cannot hold the artifacts on this machine (a file in the way, a folder that
    cannot be created or written), or None. Nothing is created here."""
    import os

    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return (
            f"{root}: {existing} is a file, not a folder; point artifacts.root at a folder "
            "(it is created when missing)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "cannot be written" if existing == root else f"cannot be created in {existing}"
        return f"{root} {what} (no permission); point artifacts.root at a writable folder"
    return None
