"""Differentiable top-K by the perturbed maximum (Berthet et al. 2020; Cordonnier et al. 2021).

    P = perturbed_topk(scores, k=4)                          # (B, N) -> (B, K, N), rows sum to 1
    P = perturbed_topk(scores, k=4, sigma=0.1, jacobian="diagonal")   # the authors' estimator
    idx = hard_topk(scores, k=4)                             # (B, N) -> (B, K), ascending

Forward: draw Z ~ N(0, I) of shape (B, S, N), take the hard top-K of `scores + sigma * Z` for every
sample, sort the K indices ascending (so selected tokens keep their order), and average the one-hot
indicators over the S samples: P[b, i, d] = (1/S) * #{samples whose i-th kept index is d}.

Backward, for an upstream gradient G (B, K, N), with Y_j the (K, N) one-hot of sample j:
- `jacobian="full"` (default, unbiased): dL/ds = 1/(S*sigma) * sum_j <G, Y_j> Z_j.
- `jacobian="diagonal"` (the published STTS code, kept to reproduce its models):
  dL/ds_d = 1/(S*sigma) * sum_j sum_i G[i, d] Y_j[i, d] Z_j[d].

Memory: a naive implementation materialises the (B, S, K, N) one-hots, and the full Jacobian
(B, K, N, N). Neither is built here: the forward keeps the (B, S, K) indices and the (B, S, N) noise,
and both estimators are gathers and scatters over them, O(B*S*(K+N) + B*K*N) in all.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["perturbed_topk", "hard_topk", "linear_sigma_schedule"]

_JACOBIANS = ("full", "diagonal")


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__} (k={k!r}, N={n})")
    if k < 1 or k > n:
        raise ValueError(f"k must satisfy 1 <= k <= N, got k={k} with N={n}")


def hard_topk(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores per row, sorted ascending.

    scores: (B, N) -> indices: (B, K), int64. Ties are broken as `torch.topk` breaks them.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}")
    _check_k(k, scores.shape[1])
    return scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # (B, K)


def _indicator(indices: Tensor, n: int, weight: float) -> Tensor:
    """Average one-hots without building them: indices (B, S, K) -> P (B, K, N), float32."""
    B, S, K = indices.shape
    P = torch.zeros(B, K * n, dtype=torch.float32, device=indices.device)  # (B, K*N)
    # Flat position of the i-th kept index of every sample: i * N + indices[b, j, i].
    flat = indices + torch.arange(K, device=indices.device) * n  # (B, S, K)
    P.scatter_add_(1, flat.view(B, S * K), P.new_full((1, 1), weight).expand(B, S * K))
    return P.view(B, K, n)  # (B, K*N) -> (B, K, N)


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, k: int, num_samples: int, sigma: float, jacobian: str, generator):
        B, N = scores.shape
        s = scores.detach().float()  # accumulate in float32 whatever the input dtype
        if sigma == 0.0 or k == N:
            # Deterministic: the output is piecewise constant in the scores (k == N is the identity),
            # so its true gradient is exactly zero. Say so instead of returning estimator noise.
            ctx.zero_grad = True
            idx = hard_topk(s, k)  # (B, K)
            return _indicator(idx[:, None, :], N, 1.0).to(scores.dtype)
        ctx.zero_grad = False
        noise = torch.randn(B, num_samples, N, generator=generator, device=s.device, dtype=torch.float32)
        perturbed = s[:, None, :] + sigma * noise  # (B, S, N)
        idx = perturbed.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # (B, S, K)
        ctx.save_for_backward(idx, noise)
        ctx.sigma, ctx.jacobian, ctx.n = sigma, jacobian, N
        return _indicator(idx, N, 1.0 / num_samples).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if ctx.zero_grad:
            return torch.zeros(grad_output.shape[0], grad_output.shape[2], dtype=grad_output.dtype,
                               device=grad_output.device), None, None, None, None, None
        idx, noise = ctx.saved_tensors  # (B, S, K), (B, S, N)
        B, S, K = idx.shape
        G = grad_output.float()  # (B, K, N)
        # G[b, i, idx[b, j, i]]: the upstream gradient at each sample's kept positions.
        g_kept = G.gather(2, idx.transpose(1, 2))  # (B, K, S)
        if ctx.jacobian == "full":
            inner = g_kept.sum(dim=1)  # <G, Y_j>: (B, K, S) -> (B, S)
            grad = torch.einsum("bs,bsn->bn", inner, noise)  # (B, N)
        else:  # diagonal
            z_kept = noise.gather(2, idx)  # Z_j at the kept positions: (B, S, K)
            contrib = g_kept.transpose(1, 2) * z_kept  # (B, S, K)
            grad = torch.zeros(B, ctx.n, dtype=torch.float32, device=G.device)  # (B, N)
            grad.scatter_add_(1, idx.reshape(B, S * K), contrib.reshape(B, S * K))
        grad = grad / (S * ctx.sigma)
        return grad.to(grad_output.dtype), None, None, None, None, None


def perturbed_topk(
    scores: Tensor,
    k: int,
    *,
    num_samples: int = 500,
    sigma: float = 0.05,
    jacobian: str = "full",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Soft top-k indicator of `scores`, differentiable by the perturbed-maximum estimator.

    Args:
        scores: (B, N) float32, float16 or bfloat16 (computed in float32, returned in this dtype).
        k: how many to keep, 1 <= k <= N.
        num_samples: S, noise samples per row.
        sigma: noise scale; 0 gives the hard top-k indicator (zero gradient).
        jacobian: "full" (unbiased) or "diagonal" (the published STTS estimator).
        generator: a `torch.Generator` on the scores' device, for reproducible noise.

    Returns:
        P: (B, K, N), P[b, i] is the distribution of the i-th kept index (ascending order).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}")
    _check_k(k, scores.shape[1])
    if jacobian not in _JACOBIANS:
        raise ValueError(f"jacobian must be one of {_JACOBIANS}, got {jacobian!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0 <= sigma < float("inf"):  # also NaN, for which every comparison is False
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}")
    return _PerturbedTopK.apply(scores, k, int(num_samples), float(sigma), jacobian, generator)


def linear_sigma_schedule(step: int, total_steps: int, sigma_max: float, sigma_min: float = 0.0) -> float:
    """Sigma decayed linearly from `sigma_max` at step 0 to `sigma_min` at `total_steps` (then held).

    The published recipe decays sigma to 0 over training, so the scorer ends up trained for the hard
    top-k it meets at inference.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    frac = min(max(step / total_steps, 0.0), 1.0)
    return sigma_max + (sigma_min - sigma_max) * frac
