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

What a selector keeps is its `spec` (a `stts.plan.SelectorSpec`): the one home of the kept-count,
anchor and output-grid rules, which the backbones use too (`sel.out_grid(thw)`). The spec can be
swapped for another of the same kind and place (`sel.spec = ...`) without touching the scorer.

`policy=` replaces the learned scorer by a training-free policy at the same budget (stts.policies:
"uniform", "random", "change", "saliency"); `_Selector.policy_scores` is the one place that scores
without a scorer, and each kind turns token scores into its candidates' scores as for its scorer.

Noise: in training the perturbed top-K draws from torch's global RNG, or, given `seeds` (one int per
clip, B), from a generator per clip seeded with the clip's seed mixed with the selector's name, so a
clip's noise does not depend on the batch it is in (what makes one and two processes train alike).

A non-finite score (a diverged scorer) never picks tokens silently: it turns the selector's output for
that clip into NaN, so the loss or the logits become non-finite, which training (its non-finite-loss
check) and evaluation (its non-finite-logits count) catch where they sync anyway; no GPU sync here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stts.plan import KINDS, SelectionPlan, SelectorSpec
from stts.policies import POLICIES, centre_anchor, evenly_spaced, random_scores, token_scores
from stts.scorer import Scorer, minmax_normalize
from stts.topk import hard_topk, noise_seed, perturbed_topk

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
    "anchor_means",
    "set_sigma",
    "get_selectors",
    "SELECTORS",
    "POLICIES",
]

_DEFAULT = SelectionPlan()  # the estimator settings' defaults live in the plan (one home)
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
    thw_out: the grid the selector handed on ((1, 1, K) after token-level selection).
    """

    kind: str
    thw_in: Thw
    indices: Tensor
    scores: Tensor
    boxes: Tensor | None = None
    thw_out: Thw | None = None


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


def anchor_means(token_scores: Tensor, h: int, w: int, anchor_size: int, stride: int) -> Tensor:
    """Each anchor's score, the mean of its tokens' scores: (B', H*W) row-major -> (B', A), in `anchor_boxes`
    order. The learned scorer's and the training-free policies' token scores alike."""
    grid = token_scores.reshape(-1, 1, h, w)  # (B', 1, H, W)
    return F.avg_pool2d(grid, kernel_size=anchor_size, stride=stride).flatten(1)  # (B', 1, rows, cols) -> (B', A)


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
# Modules: a spec (what is kept), the settings of the perturbed top-K, a scorer.
# ---------------------------------------------------------------------------------------------------


def _checked(k: int, n: int, what: str, spec: SelectorSpec) -> int:
    if k < 1 or k > n:
        raise ValueError(f"cannot keep {k} of {n} {what} (ratio={spec.ratio}, keep={spec.keep})")
    return k


def _own_spec(letter: str, spec: SelectorSpec | None, **amount) -> SelectorSpec:
    """The constructor's spec: the one given, or one made of the amount (ratio / keep / anchor size)."""
    given = {k: v for k, v in amount.items() if v is not None}
    if spec is None:
        return SelectorSpec(letter, None, **given)
    if given:
        raise ValueError(f"give a spec or {', '.join(amount)}, not both (got spec {spec} and {given})")
    if spec.kind != letter:
        raise ValueError(f"a {KINDS[letter]} selector cannot run the {KINDS[spec.kind]} spec {spec}")
    return spec


@torch.compiler.disable
def _call_eagerly(module: nn.Module, *args, **kwargs):
    return nn.Module.__call__(module, *args, **kwargs)


class _Selector(nn.Module):
    """What every selector shares: its spec, the noise of the perturbed top-K, the scoring policy."""

    letter = ""  # the plan letter of the subclass ("T", "S", "K"); `kind` is its name (KINDS)
    kind = ""

    def __init__(self, spec: SelectorSpec, scorer_dim: int, *, num_samples: int, sigma: float, jacobian: str,
                 variance_reduction: str, policy: str, eps: float):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.spec = spec  # what it keeps, and where (spec.before); the one source of truth
        self.policy = policy
        self.num_samples = num_samples
        self.sigma = sigma  # changed during training by set_sigma() / the sigma schedule
        self.jacobian = jacobian
        self.variance_reduction = variance_reduction  # perturbed_topk's; keeps the estimator's expectation
        self.scorer = Scorer(scorer_dim, eps=eps) if policy == "learned" else None

    def __call__(self, *args, **kwargs):
        # A training selector (perturbed top-K) runs outside torch.compile's graph (train.compile): its
        # noise comes from per-clip Python seeds and its sigma changes every step, values dynamo would
        # specialise the graph on and recompile for at each step. Eval selection (hard top-K) traces.
        if self.soft and torch.compiler.is_compiling():
            return _call_eagerly(self, *args, **kwargs)
        return super().__call__(*args, **kwargs)

    @property
    def before(self) -> int | None:
        """The block (or stage) index it runs before (None: not placed in a model)."""
        return self.spec.before

    @property
    def ratio(self) -> float | None:
        return self.spec.ratio

    @property
    def keep(self) -> int | None:
        return self.spec.keep

    def out_grid(self, thw: Thw) -> Thw:
        """The grid it outputs for an input grid (T, H, W): the spec's rule."""
        return self.spec.out_grid(thw)

    @property
    def soft(self) -> bool:
        return self.training and self.policy == "learned"

    def topk_kwargs(self, seeds: "Tensor | Sequence[int] | None" = None) -> dict:
        """perturbed_topk's settings; with per-clip `seeds` (B,), this selector's own seed of each clip."""
        kw = dict(num_samples=self.num_samples, sigma=self.sigma, jacobian=self.jacobian,
                  variance_reduction=self.variance_reduction)
        if seeds is not None and self.soft:
            salt = zlib.crc32(self.spec.name.encode())  # T0 and S4 of one clip draw different noise
            values = seeds.tolist() if isinstance(seeds, Tensor) else seeds
            kw["seeds"] = [noise_seed(s, salt) for s in values]
        return kw

    def policy_scores(self, tokens: Tensor, thw: Thw, k: int) -> Tensor:
        """Scores of the non-learned policy (stts.policies) over this selector's candidates, whose top-k
        (anchors: top-1 per frame) is its choice: tokens (B, T*H*W, C) without the prefix ->
        temporal (B, T) | anchor (B*T, A) | token (B, T*H*W). A token policy's scores are reduced as the
        scorer's are: a frame the mean of its tokens, an anchor the mean of its window, then min-max."""
        B, _, C = tokens.shape
        T, H, W = thw
        if self.letter == "S":
            a, s = self.spec.anchor(H, W)
            rows, cols = anchor_geometry(H, W, a, s)
            shape = (B * T, rows * cols)
        else:
            shape = (B, T if self.letter == "T" else T * H * W)
        if self.policy == "random":
            return random_scores(*shape, device=tokens.device)
        if self.policy == "uniform":
            pick = centre_anchor(rows, cols) if self.letter == "S" else evenly_spaced(shape[1], k)
            return pick.to(tokens.device).expand(shape)
        try:
            per_token = token_scores(self.policy, tokens.reshape(B, T, H * W, C))  # (B, T, H*W)
        except ValueError as e:
            raise ValueError(f"{self.spec.name}: {e}") from None
        if self.letter == "T":
            return minmax_normalize(per_token.mean(dim=-1))  # (B, T)
        if self.letter == "S":
            return minmax_normalize(anchor_means(per_token.reshape(B * T, H * W), H, W, a, s))  # (B*T, A)
        return minmax_normalize(per_token.reshape(B, T * H * W))  # (B, N)

    def extra_repr(self) -> str:
        vr = f", variance_reduction={self.variance_reduction}" if self.variance_reduction != "none" else ""
        return f"spec={self.spec}, policy={self.policy}, sigma={self.sigma}, jacobian={self.jacobian}{vr}"


def _carry_nonfinite(out: Tensor, scores: Tensor) -> Tensor:
    """out (B, L, C) + 0 * (sum of each clip's scores): exactly `out` when the scores are finite, NaN for
    a clip with a NaN or infinite score (0 * inf is NaN too). Detached: no gradient, no backward cost.
    `out` must be the selector's own fresh buffer: the zero is added in place (no second (B, L, C) buffer;
    the cat that made it does not need its output for backward)."""
    zero = scores.detach().reshape(scores.shape[0], -1).sum(dim=-1) * 0  # (B,)
    return out.add_(zero.to(out.dtype)[:, None, None])


def _frames_behind_prefix(prefix: Tensor, frames: Tensor, idx: Tensor) -> Tensor:
    """cat([prefix, frames[b, idx[b]]]) with the frames' tokens in a row: (B, P, C), (B, T, L, C), (B, K)
    -> (B, P + K*L, C). Eager inference on one clip (the latency case) copies the kept frames straight
    behind the prefix (index_select out=): one copy of them instead of two (gather, then cat)."""
    B, T, L, C = frames.shape
    K, P = idx.shape[1], prefix.shape[1]
    if not (torch.compiler.is_compiling() or torch.is_grad_enabled()) and B == 1:  # no guard on B when traced
        out = frames.new_empty(1, P + K * L, C)
        out[:, :P] = prefix
        torch.index_select(frames[0], 0, idx[0], out=out[0, P:].view(K, L, C))
        return out
    kept = frames[torch.arange(B, device=frames.device)[:, None], idx]  # (B, K, L, C), as select_frames
    return torch.cat([prefix, kept.reshape(B, K * L, C)], dim=1)


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

    letter, kind = "T", KINDS["T"]

    def __init__(self, dim: int, ratio: float | None = None, *, keep: int | None = None,
                 spec: SelectorSpec | None = None, num_samples: int = 500, sigma: float = 0.05,
                 jacobian: str = _DEFAULT.jacobian, policy: str = "learned", eps: float = 1e-5, variance_reduction: str = "none"):
        super().__init__(_own_spec("T", spec, ratio=ratio, keep=keep), 2 * dim, num_samples=num_samples,
                         sigma=sigma, jacobian=jacobian, variance_reduction=variance_reduction, policy=policy, eps=eps)

    def frame_scores(self, x: Tensor) -> Tensor:
        """Normalised frame scores: x (B, T, H*W, C) -> (B, T)."""
        feats = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=-1)  # (B, T, 2C)
        return minmax_normalize(self.scorer(feats))

    def forward(self, x: Tensor, thw: Thw, *, return_selection: bool = False, seeds=None):
        B, _, C = x.shape
        T, H, W = thw
        prefix, tokens = _split_prefix(x, thw)
        tokens = tokens.reshape(B, T, H * W, C)  # (B, T*H*W, C) -> (B, T, H*W, C)
        k = _checked(self.spec.kept(T), T, "frames", self.spec)
        if self.scorer is not None:
            scores = self.frame_scores(tokens)
        else:
            scores = self.policy_scores(tokens.reshape(B, T * H * W, C), thw, k)
        if self.soft:
            kept, idx = select_frames(tokens, scores, k, soft=True, **self.topk_kwargs(seeds))
            out = torch.cat([prefix, kept.reshape(B, k * H * W, C)], dim=1)
        else:
            idx = hard_topk(scores.detach(), k)  # what select_frames takes in eval
            out = _frames_behind_prefix(prefix, tokens, idx)
        out = _carry_nonfinite(out, scores)  # (B, P + K*H*W, C)
        new_thw = (k, H, W)
        if return_selection:
            return out, new_thw, Selection(self.kind, tuple(thw), idx, scores.detach(), thw_out=new_thw)
        return out, new_thw


class AnchorSelector(_Selector):
    """Keep one a x a window per frame: (B, P + T*H*W, C) -> (B, P + T*a*a, C).

    With `ratio`: k = int(H*W * ratio), a = floor(sqrt(k)), stride s = max((H - a) // 2, 1) (paper,
    official code), unless `anchor_size` / `stride` are given. Tokens are scored per frame, each
    anchor scores the mean of its tokens, anchor scores are min-max normalised per frame, top-1 wins.
    """

    letter, kind = "S", KINDS["S"]

    def __init__(self, dim: int, ratio: float | None = None, *, anchor_size: int | None = None,
                 stride: int | None = None, spec: SelectorSpec | None = None, num_samples: int = 500,
                 sigma: float = 0.05, jacobian: str = _DEFAULT.jacobian, policy: str = "learned", eps: float = 1e-5,
                 variance_reduction: str = "none"):
        super().__init__(_own_spec("S", spec, ratio=ratio, anchor_size=anchor_size, anchor_stride=stride), dim,
                         num_samples=num_samples, sigma=sigma, jacobian=jacobian,
                         variance_reduction=variance_reduction, policy=policy, eps=eps)

    @property
    def anchor_size(self) -> int | None:
        return self.spec.anchor_size

    @property
    def stride(self) -> int | None:
        return self.spec.anchor_stride

    def geometry(self, h: int, w: int) -> tuple[int, int]:
        """(anchor size a, stride s) on an h x w map (the spec's rule), validated."""
        if self.spec.ratio is not None:
            _checked(self.spec.kept(h * w), h * w, "tokens per frame", self.spec)
        a, s = self.spec.anchor(h, w)
        anchor_geometry(h, w, a, s)  # validates
        return a, s

    def anchor_scores(self, frames: Tensor, h: int, w: int, a: int, s: int) -> Tensor:
        """Normalised anchor scores: frames (B', H*W, C) -> (B', A)."""
        return minmax_normalize(anchor_means(self.scorer(frames), h, w, a, s))  # (B', H*W) -> (B', A)

    def forward(self, x: Tensor, thw: Thw, *, return_selection: bool = False, seeds=None):
        B, _, C = x.shape
        T, H, W = thw
        a, s = self.geometry(H, W)
        rows, cols = anchor_geometry(H, W, a, s)
        prefix, tokens = _split_prefix(x, thw)
        if self.scorer is not None:
            scores = self.anchor_scores(tokens.reshape(B * T, H * W, C), H, W, a, s)  # (B*T, A)
        else:
            scores = self.policy_scores(tokens, thw, 1)  # (B*T, A)
        scores = scores.reshape(B, T, rows * cols)
        kept, idx = select_anchors(tokens.reshape(B, T, H, W, C), scores, a, s, soft=self.soft,
                                   **self.topk_kwargs(seeds))  # seeds (B,): each clip's T rows share one
        out = _carry_nonfinite(torch.cat([prefix, kept.reshape(B, T * a * a, C)], dim=1), scores)  # (B, P + T*a*a, C)
        new_thw = (T, a, a)
        if return_selection:
            boxes = anchor_boxes(idx, H, W, a, s)
            return out, new_thw, Selection(self.kind, tuple(thw), idx, scores.detach(), boxes, thw_out=new_thw)
        return out, new_thw


class TokenSelector(_Selector):
    """Keep the K best of N = T*H*W tokens, in order: (B, P + N, C) -> (B, P + K, C).

    Beyond the paper, for plain ViTs whose blocks need no grid. The output grid is (1, 1, K): the
    token map is no longer a video grid, so only token-level selection can follow.
    """

    letter, kind = "K", KINDS["K"]

    def __init__(self, dim: int, ratio: float | None = None, *, keep: int | None = None,
                 spec: SelectorSpec | None = None, num_samples: int = 500, sigma: float = 0.05,
                 jacobian: str = _DEFAULT.jacobian, policy: str = "learned", eps: float = 1e-5, variance_reduction: str = "none"):
        super().__init__(_own_spec("K", spec, ratio=ratio, keep=keep), dim, num_samples=num_samples, sigma=sigma,
                         jacobian=jacobian, variance_reduction=variance_reduction, policy=policy, eps=eps)

    def forward(self, x: Tensor, thw: Thw, *, return_selection: bool = False, seeds=None):
        B, _, C = x.shape
        prefix, tokens = _split_prefix(x, thw)
        N = tokens.shape[1]
        k = _checked(self.spec.kept(N), N, "tokens", self.spec)
        if self.scorer is not None:
            scores = minmax_normalize(self.scorer(tokens))  # (B, N)
        else:
            scores = self.policy_scores(tokens, thw, k)
        kept, idx = select_tokens(tokens, scores, k, soft=self.soft, **self.topk_kwargs(seeds))
        out = _carry_nonfinite(torch.cat([prefix, kept], dim=1), scores)  # (B, P + K, C)
        if return_selection:
            return out, (1, 1, k), Selection(self.kind, tuple(thw), idx, scores.detach(), thw_out=(1, 1, k))
        return out, (1, 1, k)


# Plan letter -> selector class: how `stts.patch` builds a spec's selector.
SELECTORS: dict[str, type[_Selector]] = {cls.letter: cls for cls in (TemporalSelector, AnchorSelector, TokenSelector)}


def get_selectors(model: nn.Module) -> list[_Selector]:
    """All selectors inside `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, _Selector)]


def set_sigma(model: nn.Module, sigma: float) -> None:
    """Set the perturbed top-K noise scale of every selector in `model` (the sigma schedule's hook)."""
    for sel in get_selectors(model):
        sel.sigma = float(sigma)
