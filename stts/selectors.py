"""Selectors: a scorer plus a top-K that drop tokens from a video transformer's token map.

    sel = TemporalSelector(dim=96, ratio=0.5)        # keep half the frames
    x, thw = sel(x, (8, 56, 56))                      # (B, 1 + 8*56*56, 96) -> (B, 1 + 4*56*56, 96)
    x, thw, kept = sel(x, thw, return_selection=True) # kept.indices: (B, 4) frame indices

Every selector takes `x: (B, P + T*H*W, C)` with P >= 0 prefix tokens (the class token) first,
passes the prefix through untouched, and returns the new token map and grid. Training mode keeps the
soft combination P @ X of the perturbed top-K indicator, so the scorer learns; eval mode takes the hard
top-K and gathers, so every block after the selector really runs on fewer tokens.

- `TemporalSelector`: keeps K whole frames, in temporal order.      (B, T, H*W, C) -> (B, K, H*W, C)
- `AnchorSelector`: keeps one a x a window per frame (its "anchor").  (B, T, H, W, C) -> (B, T, a, a, C)
- `TokenSelector`: keeps the K best tokens, in order (plain ViTs).     (B, N, C) -> (B, K, C)

`policy="uniform"` / `"random"` replace the learned scorer by the non-learned baselines at the same
budget (evenly spaced frames or tokens and the centre anchor; or random ones).

A non-finite score (a diverged scorer) never picks tokens silently: it turns the selector's output for
that clip into NaN, so the loss or the logits become non-finite, which training (its non-finite-loss
check) and evaluation (its non-finite-logits count) catch where they sync anyway; no GPU sync here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stts.scorer import Scorer, minmax_normalize
from stts.topk import hard_topk, perturbed_topk

__all__ = [
    "Selection",
    "TemporalSelector",
    "AnchorSelector",
    "TokenSelector",
    "select_frames",
    "select_anchors",
    "select_tokens",
    "anchor_geometry",
    "anchor_boxes",
    "set_sigma",
    "get_selectors",
]

POLICIES = ("learned", "uniform", "random")
Thw = tuple[int, int, int]


@dataclass
class Selection:
    """What one selector kept, in the coordinates of its own input grid `thw_in` (detached).

    kind: "temporal" | "anchor" | "token".
    indices: temporal (B, K) kept frames; anchor (B, T) chosen anchor per frame; token (B, K) kept
        positions in the flattened T*H*W map. Ascending where order applies. In training mode these
        are the hard top-K of `scores` (what eval would keep), the output itself being soft.
    scores: the normalised scores the choice was made from: (B, T) | (B, T, A) | (B, T*H*W).
    boxes: anchor only, (B, T, 4) as (top, left, height, width) in token units of `thw_in`.
    """

    kind: str
    thw_in: Thw
    indices: Tensor
    scores: Tensor
    boxes: Tensor | None = None


# ---------------------------------------------------------------------------------------------------
# Functional cores: tensors in, tensors out. Tests and other backbones call these directly.
# ---------------------------------------------------------------------------------------------------


def _soft_or_hard(scores: Tensor, k: int, soft: bool, **topk_kwargs) -> tuple[Tensor | None, Tensor]:
    """(B, N) scores -> (indicator (B, K, N) or None, hard indices (B, K))."""
    idx = hard_topk(scores.detach(), k)
    return (perturbed_topk(scores, k, **topk_kwargs) if soft else None), idx


def select_frames(x: Tensor, scores: Tensor, k: int, *, soft: bool = False, **topk_kwargs) -> tuple[Tensor, Tensor]:
    """Keep the k best frames in temporal order.

    x: (B, T, H*W, C), scores: (B, T) -> kept (B, K, H*W, C), indices (B, K).
    soft=True returns the perturbed-top-K combination P @ X (differentiable in `scores`).
    """
    B, T, L, C = x.shape
    P, idx = _soft_or_hard(scores, k, soft, **topk_kwargs)
    if P is not None:
        return torch.einsum("bkt,btlc->bklc", P.to(x.dtype), x), idx  # (B, K, T) @ (B, T, L*C)
    # Advanced indexing copies whole frames; ~25% faster than gather with an expanded index.
    kept = x[torch.arange(B, device=x.device)[:, None], idx]  # (B, T, L, C) -> (B, K, L, C)
    return kept, idx


def select_tokens(x: Tensor, scores: Tensor, k: int, *, soft: bool = False, **topk_kwargs) -> tuple[Tensor, Tensor]:
    """Keep the k best tokens in their original order.

    x: (B, N, C), scores: (B, N) -> kept (B, K, C), indices (B, K).
    """
    B, N, C = x.shape
    P, idx = _soft_or_hard(scores, k, soft, **topk_kwargs)
    if P is not None:
        return torch.bmm(P.to(x.dtype), x), idx  # (B, K, N) @ (B, N, C) -> (B, K, C)
    return x.gather(1, idx[:, :, None].expand(B, k, C)), idx  # (B, N, C) -> (B, K, C)


def anchor_geometry(h: int, w: int, anchor_size: int, stride: int) -> tuple[int, int]:
    """Number of anchor positions (rows, cols) of a x a windows with stride s on an h x w map."""
    if anchor_size < 1 or anchor_size > min(h, w):
        raise ValueError(f"anchor size {anchor_size} does not fit the {h}x{w} token map")
    if stride < 1:
        raise ValueError(f"anchor stride must be >= 1, got {stride}")
    return (h - anchor_size) // stride + 1, (w - anchor_size) // stride + 1


def anchor_boxes(indices: Tensor, h: int, w: int, anchor_size: int, stride: int) -> Tensor:
    """Anchor indices (...,) -> boxes (..., 4) as (top, left, height, width); index = row * cols + col."""
    _, cols = anchor_geometry(h, w, anchor_size, stride)
    top = torch.div(indices, cols, rounding_mode="floor") * stride
    left = (indices % cols) * stride
    size = torch.full_like(indices, anchor_size)
    return torch.stack([top, left, size, size], dim=-1)


def select_anchors(
    x: Tensor, scores: Tensor, anchor_size: int, stride: int, *, soft: bool = False, **topk_kwargs
) -> tuple[Tensor, Tensor]:
    """Keep, in every frame, the best a x a window (row-major token layout).

    x: (B, T, H, W, C), scores: (B, T, A) over the A anchor positions (row-major, see `anchor_boxes`)
    -> kept (B, T, a, a, C), anchor indices (B, T).
    """
    B, T, H, W, C = x.shape
    a, s = anchor_size, stride
    rows, cols = anchor_geometry(H, W, a, s)
    if scores.shape[-1] != rows * cols:
        raise ValueError(f"expected {rows * cols} anchor scores for a {H}x{W} map, got {scores.shape[-1]}")
    frames = x.reshape(B * T, H, W, C)  # (B, T, H, W, C) -> (B*T, H, W, C)
    P, idx = _soft_or_hard(scores.reshape(B * T, -1), 1, soft, **topk_kwargs)  # idx (B*T, 1)
    idx = idx[:, 0]  # (B*T,)
    if P is not None:
        # Every anchor's tokens as columns (the official code does this unfold too), weighted by P.
        patches = F.unfold(frames.permute(0, 3, 1, 2), kernel_size=a, stride=s)  # (B*T, C*a*a, A)
        kept = torch.bmm(patches, P[:, 0, :, None].to(x.dtype))  # (B*T, C*a*a, 1)
        kept = kept.view(B * T, C, a, a).permute(0, 2, 3, 1)  # (B*T, C, a, a) -> (B*T, a, a, C)
    else:
        top = torch.div(idx, cols, rounding_mode="floor") * s  # (B*T,)
        left = (idx % cols) * s
        offs = torch.arange(a, device=x.device)
        pos = (top[:, None, None] + offs[:, None]) * W + (left[:, None, None] + offs)  # (B*T, a, a)
        kept = frames.reshape(B * T, H * W, C).gather(1, pos.view(B * T, a * a, 1).expand(-1, -1, C))
    return kept.reshape(B, T, a, a, C), idx.view(B, T)  # (B*T, a*a, C) -> (B, T, a, a, C)


# ---------------------------------------------------------------------------------------------------
# Modules: hyper-parameters + scorer around the functional cores.
# ---------------------------------------------------------------------------------------------------


def _kept_count(n: int, ratio: float | None, keep: int | None, what: str) -> int:
    if keep is not None:
        k = keep
    else:
        # int() as the official code does; the epsilon only rescues products like 0.29 * 100 = 28.999...
        k = int(n * ratio + 1e-6)
    if k < 1 or k > n:
        raise ValueError(f"cannot keep {k} of {n} {what} (ratio={ratio}, keep={keep})")
    return k


class _Selector(nn.Module):
    """Shared settings: the noise of the perturbed top-K and the scoring policy."""

    kind = ""

    def __init__(self, scorer_dim: int, num_samples: int, sigma: float, jacobian: str, policy: str, eps: float,
                 variance_reduction: str = "none"):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.num_samples = num_samples
        self.sigma = sigma  # changed during training by set_sigma() / the sigma schedule
        self.jacobian = jacobian
        self.variance_reduction = variance_reduction  # perturbed_topk's; keeps the estimator's expectation
        self.before: int | None = None  # block (or stage) index it runs before; set by stts.patch
        self.spec = None  # the plan's SelectorSpec, set by stts.patch
        self.scorer = Scorer(scorer_dim, eps=eps) if policy == "learned" else None

    @property
    def soft(self) -> bool:
        return self.training and self.policy == "learned"

    def topk_kwargs(self) -> dict:
        return dict(num_samples=self.num_samples, sigma=self.sigma, jacobian=self.jacobian,
                    variance_reduction=self.variance_reduction)

    def baseline_scores(self, B: int, n: int, k: int, like: Tensor) -> Tensor:
        """Scores (B, n) whose top-k is the uniform (evenly spaced) or a random choice."""
        if self.policy == "random":
            return torch.rand(B, n, device=like.device)
        centres = (torch.arange(k, dtype=torch.float64) + 0.5) * n / k - 0.5  # evenly spaced picks
        s = torch.zeros(n, dtype=torch.float32)
        s[centres.round().long().clamp_(0, n - 1)] = 1.0
        return s.to(like.device).expand(B, n)

    def extra_repr(self) -> str:
        vr = f", variance_reduction={self.variance_reduction}" if self.variance_reduction != "none" else ""
        return f"before={self.before}, policy={self.policy}, sigma={self.sigma}, jacobian={self.jacobian}{vr}"


def _carry_nonfinite(out: Tensor, scores: Tensor) -> Tensor:
    """out (B, L, C) + 0 * (sum of each clip's scores): exactly `out` when the scores are finite, NaN for
    a clip with a NaN or infinite score (0 * inf is NaN too). Detached: no gradient, no backward cost."""
    zero = scores.detach().reshape(scores.shape[0], -1).sum(dim=-1) * 0  # (B,)
    return out + zero.to(out.dtype)[:, None, None]


def _split_prefix(x: Tensor, thw: Thw) -> tuple[Tensor, Tensor]:
    T, H, W = thw
    P = x.shape[1] - T * H * W
    if P < 0:
        raise ValueError(f"{x.shape[1]} tokens cannot hold a {T}x{H}x{W} grid")
    return x[:, :P], x[:, P:]  # (B, P, C), (B, T*H*W, C)


class TemporalSelector(_Selector):
    """Keep K of T frames, in temporal order: (B, P + T*H*W, C) -> (B, P + K*H*W, C).

    Frames are scored from cat(mean, max) of their tokens (scorer width 2C), scores min-max
    normalised over the T candidates. K = `keep`, or int(T * ratio) of the frames it is given.
    """

    kind = "temporal"

    def __init__(self, dim: int, ratio: float | None = None, *, keep: int | None = None, num_samples: int = 500,
                 sigma: float = 0.05, jacobian: str = "full", policy: str = "learned", eps: float = 1e-5,
                 variance_reduction: str = "none"):
        super().__init__(2 * dim, num_samples, sigma, jacobian, policy, eps, variance_reduction)
        if (ratio is None) == (keep is None):
            raise ValueError("give exactly one of ratio and keep")
        self.ratio, self.keep = ratio, keep

    def frame_scores(self, x: Tensor) -> Tensor:
        """Normalised frame scores: x (B, T, H*W, C) -> (B, T)."""
        feats = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=-1)  # (B, T, 2C)
        return minmax_normalize(self.scorer(feats))

    def forward(self, x: Tensor, thw: Thw, *, return_selection: bool = False):
        B, _, C = x.shape
        T, H, W = thw
        prefix, tokens = _split_prefix(x, thw)
        tokens = tokens.reshape(B, T, H * W, C)  # (B, T*H*W, C) -> (B, T, H*W, C)
        k = _kept_count(T, self.ratio, self.keep, "frames")
        if self.scorer is not None:
            scores = self.frame_scores(tokens)
        else:
            scores = self.baseline_scores(B, T, k, x)
        kept, idx = select_frames(tokens, scores, k, soft=self.soft, **self.topk_kwargs())
        out = _carry_nonfinite(torch.cat([prefix, kept.reshape(B, k * H * W, C)], dim=1), scores)  # (B, P + K*H*W, C)
        new_thw = (k, H, W)
        if return_selection:
            return out, new_thw, Selection(self.kind, tuple(thw), idx, scores.detach())
        return out, new_thw


class AnchorSelector(_Selector):
    """Keep one a x a window per frame: (B, P + T*H*W, C) -> (B, P + T*a*a, C).

    With `ratio`: k = int(H*W * ratio), a = floor(sqrt(k)), stride s = max((H - a) // 2, 1) (paper,
    official code), unless `anchor_size` / `stride` are given. Tokens are scored per frame, each
    anchor scores the mean of its tokens, anchor scores are min-max normalised per frame, top-1 wins.
    """

    kind = "anchor"

    def __init__(self, dim: int, ratio: float | None = None, *, anchor_size: int | None = None,
                 stride: int | None = None, num_samples: int = 500, sigma: float = 0.05, jacobian: str = "full",
                 policy: str = "learned", eps: float = 1e-5, variance_reduction: str = "none"):
        super().__init__(dim, num_samples, sigma, jacobian, policy, eps, variance_reduction)
        if (ratio is None) == (anchor_size is None):
            raise ValueError("give exactly one of ratio and anchor_size")
        self.ratio, self.anchor_size, self.stride = ratio, anchor_size, stride

    def geometry(self, h: int, w: int) -> tuple[int, int]:
        """(anchor size a, stride s) on an h x w map."""
        if self.anchor_size is not None:
            a = self.anchor_size
        else:
            a = math.isqrt(_kept_count(h * w, self.ratio, None, "tokens per frame"))
        s = self.stride if self.stride is not None else max((min(h, w) - a) // 2, 1)
        anchor_geometry(h, w, a, s)  # validates
        return a, s

    def anchor_scores(self, frames: Tensor, h: int, w: int, a: int, s: int) -> Tensor:
        """Normalised anchor scores: frames (B', H*W, C) -> (B', A)."""
        token_scores = self.scorer(frames)  # (B', H*W)
        pooled = F.avg_pool2d(token_scores.view(-1, 1, h, w), kernel_size=a, stride=s)  # (B', 1, rows, cols)
        return minmax_normalize(pooled.flatten(1))  # (B', A)

    def forward(self, x: Tensor, thw: Thw, *, return_selection: bool = False):
        B, _, C = x.shape
        T, H, W = thw
        a, s = self.geometry(H, W)
        rows, cols = anchor_geometry(H, W, a, s)
        prefix, tokens = _split_prefix(x, thw)
        if self.scorer is not None:
            scores = self.anchor_scores(tokens.reshape(B * T, H * W, C), H, W, a, s)  # (B*T, A)
        elif self.policy == "uniform":
            # The anchor nearest the centre of the map (not the middle of the flattened anchor list).
            scores = torch.zeros(B * T, rows * cols, device=x.device)
            scores[:, (rows // 2) * cols + cols // 2] = 1.0
        else:
            scores = self.baseline_scores(B * T, rows * cols, 1, x)
        scores = scores.reshape(B, T, rows * cols)
        kept, idx = select_anchors(tokens.reshape(B, T, H, W, C), scores, a, s, soft=self.soft,
                                   **self.topk_kwargs())
        out = _carry_nonfinite(torch.cat([prefix, kept.reshape(B, T * a * a, C)], dim=1), scores)  # (B, P + T*a*a, C)
        new_thw = (T, a, a)
        if return_selection:
            boxes = anchor_boxes(idx, H, W, a, s)
            return out, new_thw, Selection(self.kind, tuple(thw), idx, scores.detach(), boxes)
        return out, new_thw


class TokenSelector(_Selector):
    """Keep the K best of N = T*H*W tokens, in order: (B, P + N, C) -> (B, P + K, C).

    Beyond the paper, for plain ViTs whose blocks need no grid. The output grid is (1, 1, K): the
    token map is no longer a video grid, so only token-level selection can follow.
    """

    kind = "token"

    def __init__(self, dim: int, ratio: float | None = None, *, keep: int | None = None, num_samples: int = 500,
                 sigma: float = 0.05, jacobian: str = "full", policy: str = "learned", eps: float = 1e-5,
                 variance_reduction: str = "none"):
        super().__init__(dim, num_samples, sigma, jacobian, policy, eps, variance_reduction)
        if (ratio is None) == (keep is None):
            raise ValueError("give exactly one of ratio and keep")
        self.ratio, self.keep = ratio, keep

    def forward(self, x: Tensor, thw: Thw, *, return_selection: bool = False):
        B, _, C = x.shape
        prefix, tokens = _split_prefix(x, thw)
        N = tokens.shape[1]
        k = _kept_count(N, self.ratio, self.keep, "tokens")
        if self.scorer is not None:
            scores = minmax_normalize(self.scorer(tokens))  # (B, N)
        else:
            scores = self.baseline_scores(B, N, k, x)
        kept, idx = select_tokens(tokens, scores, k, soft=self.soft, **self.topk_kwargs())
        out = _carry_nonfinite(torch.cat([prefix, kept], dim=1), scores)  # (B, P + K, C)
        if return_selection:
            return out, (1, 1, k), Selection(self.kind, tuple(thw), idx, scores.detach())
        return out, (1, 1, k)


SELECTORS = {"T": TemporalSelector, "S": AnchorSelector, "K": TokenSelector}


def get_selectors(model: nn.Module) -> list[_Selector]:
    """All selectors inside `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, _Selector)]


def set_sigma(model: nn.Module, sigma: float) -> None:
    """Set the perturbed top-K noise scale of every selector in `model` (the sigma schedule's hook)."""
    for sel in get_selectors(model):
        sel.sigma = float(sigma)
