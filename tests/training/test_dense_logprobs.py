"""The dense CPU stand-in for trl's fused LM head gives trl's values and gradients."""

import pytest
import torch

from ragft_dagster.training.dense_logprobs import (
    DenseLogProbs,
    dense_logprobs,
    use_dense_logprobs_on_cpu,
)

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_dense_logprobs_match_trls_fused_kernel(softcap):
    from trl.kernels import ChunkedLogProbFunction

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 300, (37,))
    args = (targets, 0.7, 128, softcap, 1.3, OUTPUTS)
    theirs = ChunkedLogProbFunction.apply(hidden, weight, None, *args)
    ours = dense_logprobs(hidden, weight, None, *args)
    for a, b in zip(theirs, ours, strict=True):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            assert torch.allclose(a, b, atol=1e-4), (a, b)
    grads = []
    for out in (theirs, ours):
        hidden.grad = weight.grad = None
        (out[0].sum() + 0.5 * out[1].sum()).backward()
        grads.append((hidden.grad.clone(), weight.grad.clone()))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_trl_trainers_use_the_dense_head_on_cpu_only():
    from trl.trainer import utils

    assert use_dense_logprobs_on_cpu()
    assert use_dense_logprobs_on_cpu()  # idempotent: wrapped once
    wrapper = utils._ChunkedLogProbFunction
    assert isinstance(wrapper, DenseLogProbs)
    assert not isinstance(wrapper.fused, DenseLogProbs)

    class Fused:
        @staticmethod
        def apply(hidden, *args):
            return "fused"

    meta = torch.empty(2, 3, device="meta")
    assert DenseLogProbs(Fused).apply(meta) == "fused"
