"""Differentiable top-K by the perturbed maximum (Berthet et al. 2020; Cordonnier et al. 2021).

    P = perturbed_topk(scores, k=4)                          # (B, N) -> (B, K, N), rows sum to 1
    P = perturbed_topk(scores, k=4, sigma=0.1, jacobian="diagonal")   # the authors' estimator
    P = perturbed_topk(scores, k=4, variance_reduction="antithetic")  # same expectation, less variance
    idx = hard_topk(scores, k=4)                             # (B, N) -> (B, K), ascending

Forward: draw Z ~ N(0, I) of shape (B, S, N), take the hard top-K of `scores + sigma * Z` for every
sample, sort the K indices ascending (so selected tokens keep their order), and average the one-hot
indicators over the S samples: P[b, i, d] = (1/S) * #{samples whose i-th kept index is d}.

Backward, for an upstream gradient G (B, K, N), with Y_j the (K, N) one-hot of sample j:
- `jacobian="full"` (default, unbiased): dL/ds = 1/(S*sigma) * sum_j <G, Y_j> Z_j.
- `jacobian="diagonal"` (the published STTS code, kept to reproduce its models):
  dL/ds_d = 1/(S*sigma) * sum_j sum_i G[i, d] Y_j[i, d] Z_j[d].

Variance reduction (`variance_reduction=`), with f_j = <G, Y_j> (full) or f_j[d] = sum_i G[i, d] Y_j[i, d]
(diagonal, one f per coordinate); each keeps the expectation of the estimator it is applied to:
- "none": the sums above.
- "loo": f_j - b_j in place of f_j, b_j the mean of f_i over the other S-1 samples. b_j does not
  depend on Z_j and E[Z_j] = 0, so the expectation is unchanged; equivalently S/(S-1) * (f_j - mean f).
  Needs S >= 2.
- "antithetic": the noise comes in pairs (Z, -Z) (samples j and j + S//2); an odd S adds one unpaired
  sample last. Every sample is still N(0, I), so the forward P stays an unbiased estimate of E[Y] and
  the backward keeps its expectation; a pair contributes (f(Z) - f(-Z)) Z, zero when the noise does not
  change the selection.
- "loo+antithetic": both. A baseline for sample j must leave out j's partner too (which is a
  function of Z_j); that leave-pair-out baseline is then the same for both members of a pair and
  cancels exactly, so only the unpaired sample of an odd S gets one (the mean of f over the pairs).
  For even S it is "antithetic" exactly. Needs S >= 2.

Noise per sample (`seeds=`): by default Z comes from `generator` (or torch's global RNG). With `seeds`
(G ints, G dividing B), the rows of group g (rows g*B/G .. (g+1)*B/G - 1) draw their noise from a
generator seeded with seeds[g] on the scores' device, so a clip's noise is a function of its seed alone,
whatever else is in the batch: one process with batch 4 and two with batch 2 draw the same noise for
the same clip (`noise_seed` mixes integers such as (run seed, step, dataset index) into a seed).

Memory: a naive implementation materialises the (B, S, K, N) one-hots, and the full Jacobian
(B, K, N, N). Neither is built here: the forward keeps the (B, S, K) indices and the (B, S, N) noise,
and both estimators, with any variance reduction, are gathers, scatters and sums over them,
O(B*S*(K+N) + B*K*N) in all.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["perturbed_topk", "hard_topk", "linear_sigma_schedule", "noise_seed"]

_JACOBIANS = ("full", "diagonal")
VARIANCE_REDUCTIONS = ("none", "loo", "antithetic", "loo+antithetic")


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


_MASK64 = (1 << 64) - 1


def noise_seed(*parts: int) -> int:
    """A seed in [0, 2**63) mixed from integers (splitmix64 over the parts): the same parts give the same
    seed in every process, and nearby parts (steps, dataset indices) give unrelated ones."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h >> 1


def _draw_noise(B: int, S: int, N: int, antithetic: bool, generator, device, seeds) -> Tensor:
    """Z (B, S, N) ~ N(0, I) per sample; antithetic: samples j and j + S//2 are (Z, -Z), an odd S's last
    sample unpaired. seeds: None (draw from `generator`) or G ints, group g's B/G rows from their own."""
    drawn = S - S // 2 if antithetic else S  # independent samples per row
    if seeds is None:
        base = torch.randn(B, drawn, N, generator=generator, device=device, dtype=torch.float32)
    else:
        rows = B // len(seeds)
        base = torch.cat([torch.randn(rows, drawn, N, generator=torch.Generator(device).manual_seed(int(seed)),
                                      device=device, dtype=torch.float32) for seed in seeds])  # (B, drawn, N)
    if not antithetic:
        return base
    half = S // 2
    return torch.cat([base[:, :half], -base[:, :half], base[:, half:]], dim=1)  # (B, S, N)


def _baseline_weights(f: Tensor, loo: bool, antithetic: bool) -> Tensor:
    """f - b (B, S) for f = <G, Y_j> (B, S), b the leave-one-out baseline of each sample (0 without loo).

    With antithetic pairs the baseline leaves the partner out too and cancels within a pair (module
    docstring), so only an odd S's unpaired last sample gets one.
    """
    S = f.shape[1]
    if not loo:
        return f
    if not antithetic:
        return f - (f.sum(dim=1, keepdim=True) - f) / (S - 1)  # b_j = mean of f_i, i != j
    w = f.clone()
    if S % 2:
        w[:, -1] -= f[:, :-1].mean(dim=1)  # the pairs' mean: independent of the unpaired noise
    return w


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, k: int, num_samples: int, sigma: float, jacobian: str, generator,
                variance_reduction: str, seeds):
        B, N = scores.shape
        s = scores.detach().float()  # accumulate in float32 whatever the input dtype
        if sigma == 0.0 or k == N:
            # Deterministic: the output is piecewise constant in the scores (k == N is the identity),
            # so its true gradient is exactly zero. Say so instead of returning estimator noise.
            ctx.zero_grad = True
            idx = hard_topk(s, k)  # (B, K)
            return _indicator(idx[:, None, :], N, 1.0).to(scores.dtype)
        ctx.zero_grad = False
        antithetic = "antithetic" in variance_reduction
        noise = _draw_noise(B, num_samples, N, antithetic, generator, s.device, seeds)  # (B, S, N)
        perturbed = s[:, None, :] + sigma * noise  # (B, S, N)
        idx = perturbed.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # (B, S, K)
        ctx.save_for_backward(idx, noise)
        ctx.sigma, ctx.jacobian, ctx.n = sigma, jacobian, N
        ctx.loo, ctx.antithetic = "loo" in variance_reduction, antithetic
        return _indicator(idx, N, 1.0 / num_samples).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        nones = (None,) * 7
        if ctx.zero_grad:
            return torch.zeros(grad_output.shape[0], grad_output.shape[2], dtype=grad_output.dtype,
                               device=grad_output.device), *nones
        idx, noise = ctx.saved_tensors  # (B, S, K), (B, S, N)
        B, S, K = idx.shape
        G = grad_output.float()  # (B, K, N)
        # G[b, i, idx[b, j, i]]: the upstream gradient at each sample's kept positions.
        g_kept = G.gather(2, idx.transpose(1, 2))  # (B, K, S)
        if ctx.jacobian == "full":
            inner = g_kept.sum(dim=1)  # f_j = <G, Y_j>: (B, K, S) -> (B, S)
            weights = _baseline_weights(inner, ctx.loo, ctx.antithetic)  # (B, S)
            grad = torch.einsum("bs,bsn->bn", weights, noise)  # (B, N)
        else:  # diagonal
            z_kept = noise.gather(2, idx)  # Z_j at the kept positions: (B, S, K)
            contrib = g_kept.transpose(1, 2) * z_kept  # (B, S, K)
            grad = torch.zeros(B, ctx.n, dtype=torch.float32, device=G.device)  # (B, N)
            grad.scatter_add_(1, idx.reshape(B, S * K), contrib.reshape(B, S * K))  # sum_j f_j[d] Z_j[d]
            if ctx.loo:
                grad = grad - _diagonal_baseline_term(idx, g_kept, noise, grad, ctx.antithetic)
        grad = grad / (S * ctx.sigma)
        return grad.to(grad_output.dtype), *nones


def _diagonal_baseline_term(idx: Tensor, g_kept: Tensor, noise: Tensor, fz: Tensor, antithetic: bool) -> Tensor:
    """sum_j b_j[d] Z_j[d] for the diagonal estimator's per-coordinate leave-one-out baselines, (B, N).

    idx (B, S, K), g_kept (B, K, S), noise (B, S, N), fz = sum_j f_j[d] Z_j[d] (B, N). f_j[d] is sparse
    (K non-zeros per sample), so it is never built: with F = sum_j f_j (B, N), b_j = (F - f_j) / (S-1)
    and sum_j b_j Z_j = (F * sum_j Z_j - fz) / (S-1).
    """
    B, S, K = idx.shape
    N = noise.shape[2]
    F = torch.zeros(B, N, dtype=torch.float32, device=noise.device)  # sum_j f_j: (B, N)
    F.scatter_add_(1, idx.reshape(B, S * K), g_kept.transpose(1, 2).reshape(B, S * K))
    if not antithetic:
        return (F * noise.sum(dim=1) - fz) / (S - 1)
    if S % 2 == 0:  # pairs only: their baselines cancel
        return torch.zeros_like(F)
    f_last = torch.zeros_like(F).scatter_add_(1, idx[:, -1], g_kept[:, :, -1])  # the unpaired sample's f
    return (F - f_last) / (S - 1) * noise[:, -1]  # the pairs' mean, times the unpaired noise


def perturbed_topk(
    scores: Tensor,
    k: int,
    *,
    num_samples: int = 500,
    sigma: float = 0.05,
    jacobian: str = "full",
    variance_reduction: str = "none",
    generator: torch.Generator | None = None,
    seeds: "Sequence[int] | Tensor | None" = None,
) -> Tensor:
    """Soft top-k indicator of `scores`, differentiable by the perturbed-maximum estimator.

    Args:
        scores: (B, N) float32, float16 or bfloat16 (computed in float32, returned in this dtype).
        k: how many to keep, 1 <= k <= N.
        num_samples: S, noise samples per row.
        sigma: noise scale; 0 gives the hard top-k indicator (zero gradient).
        jacobian: "full" (unbiased) or "diagonal" (the published STTS estimator).
        variance_reduction: "none", "loo", "antithetic" or "loo+antithetic" (module docstring); each
            keeps the estimator's expectation. "loo" variants need num_samples >= 2.
        generator: a `torch.Generator` on the scores' device, for reproducible noise.
        seeds: G ints (a list or an int64 tensor), G dividing B: each group of B/G rows draws its noise
            from its own generator seeded with its seed (module docstring); not with `generator`.

    Returns:
        P: (B, K, N), P[b, i] is the distribution of the i-th kept index (ascending order).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}")
    _check_k(k, scores.shape[1])
    if jacobian not in _JACOBIANS:
        raise ValueError(f"jacobian must be one of {_JACOBIANS}, got {jacobian!r}")
    if variance_reduction not in VARIANCE_REDUCTIONS:
        raise ValueError(f"variance_reduction must be one of {VARIANCE_REDUCTIONS}, got {variance_reduction!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if "loo" in variance_reduction and num_samples < 2:
        raise ValueError(f"variance_reduction={variance_reduction!r} needs num_samples >= 2 (a leave-one-out "
                         f"baseline averages the other samples), got {num_samples}")
    if not 0 <= sigma < float("inf"):  # also NaN, for which every comparison is False
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}")
    if seeds is not None:
        seeds = seeds.tolist() if isinstance(seeds, Tensor) else [int(v) for v in seeds]
        if generator is not None:
            raise ValueError("give seeds or generator, not both")
        if not seeds or scores.shape[0] % len(seeds):
            raise ValueError(f"{len(seeds)} seeds cannot split {scores.shape[0]} rows into equal groups")
    return _PerturbedTopK.apply(scores, k, int(num_samples), float(sigma), jacobian, generator, variance_reduction,
                                seeds)


def linear_sigma_schedule(step: int, total_steps: int, sigma_max: float, sigma_min: float = 0.0) -> float:
    """Sigma decayed linearly from `sigma_max` at step 0 to `sigma_min` at `total_steps` (then held).

    The published recipe decays sigma to 0 over training, so the scorer ends up trained for the hard
    top-k it meets at inference.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    frac = min(max(step / total_steps, 0.0), 1.0)
    return sigma_max + (sigma_min - sigma_max) * frac
