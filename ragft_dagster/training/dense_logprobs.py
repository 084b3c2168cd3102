"""Per-token log-probabilities for trl's trainers, computed densely on a CPU (Dagster-free).

trl 1.16's SFT and DPO trainers score tokens through a fused LM head
(``trl.kernels.ChunkedLogProbFunction``) that never materializes the ``[tokens, vocabulary]``
logits: a GPU memory saving, built on Triton. Without Triton it folds each vocabulary tile in
torch and recomputes it in the backward pass, which on a 2-core CPU made it the slowest part of
a step (SmolLM2-135M, 856 tokens, vocabulary 49,152: 2.8 s forward + backward against 1.3 s for
the same values computed densely). On a CPU the logits of a small model's batch fit in memory
(856 x 49,152 floats = 168 MB), so :func:`use_dense_logprobs_on_cpu` routes CPU tensors to
:class:`DenseLogProbs`, which returns the same outputs with plain autograd; other devices keep
trl's kernel. ``tests/training/test_dense_logprobs.py`` checks values and gradients against trl's.
"""

from __future__ import annotations

from typing import Any


def dense_logprobs(
    hidden: Any,
    weight: Any,
    bias: Any,
    targets: Any,
    temperature: float,
    chunk_size: int,
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    outputs: tuple[str, ...] = ("log_probs",),
) -> tuple[Any, Any, Any, Any, Any]:
    """What ``ChunkedLogProbFunction.apply`` returns, from the full logits.

    Returns:
        (log-probability of each target, entropy, log of the sum of squared probabilities,
        mean logit, whether the target is the first argmax); the optional ones are None unless
        named in ``outputs``. ``chunk_size`` is accepted for the same signature and unused.
    """
    import torch
    import torch.nn.functional as F

    del chunk_size
    z = F.linear(hidden, weight, bias).float() * logit_scale  # under the caller's autocast
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    log_probs = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    entropy = log_sum_sq = mean_logits = is_top1 = None
    if "entropy" in outputs:
        entropy = log_z - (torch.softmax(z, dim=-1) * z).sum(-1)
    if "log_sum_sq_probs" in outputs:
        log_sum_sq = (torch.logsumexp(2 * z, dim=-1) - 2 * log_z).detach()
    if "mean_logits" in outputs:
        mean_logits = z.mean(-1).detach()
    if "is_top1" in outputs:
        is_top1 = z.argmax(-1) == targets
    return log_probs, entropy, log_sum_sq, mean_logits, is_top1


class DenseLogProbs:
    """A stand-in for trl's ``ChunkedLogProbFunction``: dense on a CPU, trl's kernel elsewhere."""

    def __init__(self, fused: Any):
        self.fused = fused

    def apply(self, hidden: Any, *args: Any) -> Any:
        if hidden.device.type != "cpu":
            return self.fused.apply(hidden, *args)
        return dense_logprobs(hidden, *args)


def use_dense_logprobs_on_cpu() -> bool:
    """Route trl's fused LM head to :func:`dense_logprobs` for CPU tensors (idempotent).

    Returns:
        Whether trl has the fused head this replaces (False on trl versions without it: then
        nothing is changed).
    """
    try:
        from trl.trainer import utils
    except ImportError:
        return False
    current = getattr(utils, "_ChunkedLogProbFunction", None)
    if current is None:
        return False
    if not isinstance(current, DenseLogProbs):
        # trl's patched forward looks the name up at call time: this swaps the implementation
        vars(utils)["_ChunkedLogProbFunction"] = DenseLogProbs(current)
    return True
