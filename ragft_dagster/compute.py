"""Device and dtype choice: CUDA when present, else CPU (Dagster-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ComputeSettings:
    device: str = "auto"
    dtype: str = "auto"
    processes: int = 1
    """Training processes on this host; more than one launches training under ``launcher``."""
    launcher: str = "torchrun"
    """``torchrun`` or ``accelerate`` (used only when ``processes`` > 1)."""

    def torch_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "profile asks for compute.device=cuda but torch sees no CUDA device; use the "
                "local profile or check the driver"
            )
        return self.device

    def torch_dtype(self) -> Any:
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if self.torch_device() == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    def run_identity(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one: a checkpoint taken with
        another world size or precision would skip the wrong batches or change the numbers."""
        return {
            "device": self.torch_device(),
            "dtype": str(self.torch_dtype()),
            "processes": self.processes,
        }

    def trainer_args(self) -> dict[str, Any]:
        """Precision/device fields for trl configs; recipe args may override them."""
        import torch

        on_cpu = self.torch_device() == "cpu"
        dtype = self.torch_dtype()
        args = {
            "use_cpu": on_cpu,
            "bf16": (not on_cpu) and dtype == torch.bfloat16,
            "fp16": (not on_cpu) and dtype == torch.float16,
            "report_to": "none",
        }
        if self.processes > 1:
            # LoRA freezes most weights; DDP's unused-parameter scan would fail or slow down.
            args["ddp_find_unused_parameters"] = False
        return args
