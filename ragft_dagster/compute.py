"""Device and dtype choice: CUDA when present, else CPU (Dagster-free)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): there, bf16 matmuls
    run about 3x faster than float32 (measured on SmolLM2-135M, 2 cores); elsewhere torch
    emulates them and they are slower."""
    # /proc/cpuinfo's flags: psutil reports no CPU features, and torch only through private
    # helpers (torch.cpu._is_avx512_bf16_supported)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


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

    def _prepare_cpu(self) -> None:
        # Fine-tuning drives many fp32 values into the denormal range, where x86 arithmetic is
        # an order of magnitude slower: with them flushed to zero a SmolLM2 training step took
        # 9.6 s instead of 18.0 s on 2 cores (the slower run shared the CPU). Set per process,
        # before the math starts. (trl's fused LM head on a CPU: the trainers in training/
        # route it to ragft_dagster/training/dense_logprobs.py themselves.)
        import torch

        if self.torch_device() != "cpu":
            return
        torch.set_flush_denormal(True)

    def cpu_autocast(self) -> bool:
        """bfloat16 autocast over float32 weights: ``dtype: auto`` on a CPU with native bf16.
        The weights (and the optimizer's updates) stay float32, so small learning rates are
        not lost to bf16 rounding; the matmuls run in bf16."""
        return self.dtype == "auto" and self.torch_device() == "cpu" and cpu_has_native_bf16()

    def inference_dtype(self) -> Any:
        """The weights' dtype for scoring and generation (no optimizer updates to lose):
        bfloat16 where :meth:`cpu_autocast` would train in it, else :meth:`torch_dtype`."""
        import torch

        self._prepare_cpu()
        return torch.bfloat16 if self.cpu_autocast() else self.torch_dtype()

    def run_identity(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one: a checkpoint taken with
        another world size or precision would skip the wrong batches or change the numbers."""
        return {
            "device": self.torch_device(),
            "dtype": str(self.torch_dtype()),
            "autocast": self.cpu_autocast(),
            "processes": self.processes,
        }

    def trainer_args(self) -> dict[str, Any]:
        """Precision/device fields for trl configs; recipe args may override them. On a CPU
        it also prepares this process, which is about to train (see :meth:`_prepare_cpu`)."""
        import torch

        self._prepare_cpu()
        on_cpu = self.torch_device() == "cpu"
        dtype = self.torch_dtype()
        args = {
            "use_cpu": on_cpu,
            "bf16": ((not on_cpu) and dtype == torch.bfloat16) or self.cpu_autocast(),
            "fp16": (not on_cpu) and dtype == torch.float16,
            "report_to": "none",
        }
        if self.processes > 1:
            # LoRA freezes most weights; DDP's unused-parameter scan would fail or slow down.
            args["ddp_find_unused_parameters"] = False
        return args
