"""Layers the backbones share: stochastic depth (DropPath) against its definition."""

import math

import pytest
import torch

from stts.models.layers import DropPath


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_drop_path_zeroes_whole_samples_and_rescales_the_rest(p):
    """Training: each sample's branch is dropped (all zeros) or kept and scaled by 1 / (1 - p); about a
    fraction p is dropped, and the mean over samples stays the input's (the expectation is preserved)."""
    torch.manual_seed(0)
    n = 20000
    x = torch.rand(n, 3, 4) + 0.5  # (B, N, C), no zeros of its own
    out = DropPath(p).train()(x)
    dropped = (out == 0).flatten(1).all(1)  # (B,)
    kept = ~dropped
    assert ((out == 0).flatten(1).any(1) == dropped).all()  # a whole sample or nothing
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))
    # Binomial(n, p): 5 standard deviations.
    assert abs(dropped.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    # E[out] = x: with x the same for every sample, the sample mean of out estimates it.
    const = torch.full((n, 2), 3.0)
    mean = DropPath(p).train()(const).mean(0)
    assert torch.allclose(mean, torch.full((2,), 3.0), atol=5 * 3.0 * math.sqrt(p / ((1 - p) * n)))


def test_drop_path_is_the_identity_in_eval_and_at_zero():
    x = torch.randn(64, 5, 8)
    assert torch.equal(DropPath(0.3).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)
