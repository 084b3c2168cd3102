"""Dagster resources: the *where/how* of a run, built from an environment profile."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from ragft_dagster.artifacts import ArtifactLayout
from ragft_dagster.compute import ComputeSettings


class ArtifactStoreResource(dg.ConfigurableResource):
    """Root directory of every model, adapter, index and data file the assets write."""

    root: str

    def layout(self) -> ArtifactLayout:
        return ArtifactLayout(Path(self.root))


class ComputeResource(dg.ConfigurableResource):
    """Device, precision and training processes: ``auto`` picks CUDA when present, else CPU."""

    device: str = "auto"
    dtype: str = "auto"
    processes: int = 1
    """Training processes per host; more than one runs training under ``launcher``."""
    launcher: str = "torchrun"
    """``torchrun`` or ``accelerate``."""

    def settings(self) -> ComputeSettings:
        return ComputeSettings(
            device=self.device, dtype=self.dtype, processes=self.processes, launcher=self.launcher
        )


OPENAI_URL = "https://api.openai.com/v1"  # the openai client's default base_url


class LlmEndpointResource(dg.ConfigurableResource):
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

    The key arrives through ``dg.EnvVar`` only, and is never logged or stored in metadata:
    either ``api_key=dg.EnvVar(NAME)`` (Dagster resolves it when a run that uses this resource
    starts, and fails the run if NAME is unset), or ``api_key_env=NAME`` alone (read through
    ``dg.EnvVar(NAME)`` when a client is made, so a run that never calls the endpoint — a local
    model's score cell — does not need the key, and Dagster's run config holds only the name).
    """

    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    """The variable holding the key: read at use when ``api_key`` is unset; named in errors."""

    def __init__(self, **data: Any):
        key = data.get("api_key")
        if isinstance(key, dg.EnvVar) and not data.get("api_key_env"):
            # Remember the variable's name (not its value) so errors can say which to fix.
            data["api_key_env"] = key.env_var_name
        super().__init__(**data)

    def client(self, *, timeout: float, max_retries: int) -> Any:
        """An ``openai.OpenAI`` client for the endpoint.

        Raises:
            LlmCallError: No key, naming the variable to export.
        """
        import openai

        from ragft_dagster.llm.client import API_KEY_ENV_ATTR, LlmCallError, safe_url

        key = self.api_key
        if not key and self.api_key_env:
            key = dg.EnvVar(self.api_key_env).get_value()
        if not key:
            name = self.api_key_env or "the variable named by llm.api_key_env in the profile"
            raise LlmCallError(
                f"no API key for the LLM endpoint {safe_url(self.base_url or OPENAI_URL)}"
                f": {name} is unset or empty. Export the endpoint's key in it (the profile's "
                "llm.api_key_env names the variable); to run without an endpoint, set "
                "qa.generator: offline and list no evaluation.api.models"
            )
        client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries
        )
        setattr(client, API_KEY_ENV_ATTR, self.api_key_env)
        return client


class VectorStoreResource(dg.ConfigurableResource):
    """Chroma: embedded (a directory under the artifact root) or a server through HttpClient."""

    mode: str = "embedded"
    host: str = "127.0.0.1"
    port: int = 8000

    @contextmanager
    def collection(
        self, name: str, path: Path, embedding_model: str | None = None
    ) -> Iterator[Any]:
        from ragft_dagster.retrieval.indexing import open_collection

        where = {"host": self.host, "port": self.port} if self.mode == "http" else {"path": path}
        with open_collection(name, embedding_model=embedding_model, **where) as col:
            yield col
