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


class LlmEndpointResource(dg.ConfigurableResource):
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

    The key arrives through ``dg.EnvVar`` only; it is never logged or stored in metadata.
    """

    base_url: str | None = None
    api_key: str | None = None

    def client(self, *, timeout: float, max_retries: int) -> Any:
        import openai

        if not self.api_key:
            raise RuntimeError(
                "no API key for the LLM endpoint: export the variable named by llm.api_key_env "
                "in the profile (default OPENAI_API_KEY), or use qa.generator: offline"
            )
        return openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key, timeout=timeout, max_retries=max_retries
        )


class VectorStoreResource(dg.ConfigurableResource):
    """Chroma: embedded (a directory under the artifact root) or a server through HttpClient."""

    mode: str = "embedded"
    host: str = "127.0.0.1"
    port: int = 8000

    @contextmanager
    def collection(
        self, name: str, path: Path, embedding_model: str | None = None
    ) -> Iterator[Any]:
        from ragft_dagster.indexing import open_collection

        where = {"host": self.host, "port": self.port} if self.mode == "http" else {"path": path}
        with open_collection(name, embedding_model=embedding_model, **where) as col:
            yield col
