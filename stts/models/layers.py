"""Layers the backbones share: patch embedding, MLP, stochastic depth, weight init, and the cache of
constant geometry tensors (window masks, index tables) that stays valid under torch.export/compile.

Backbone-specific attention (MViT pooling attention, Swin window attention, ViT joint attention)
lives in the backbone's own file; the classifier interface and selection surface in `base.py`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchEmbed3d", "Mlp", "DropPath", "drop_path", "init_weights_trunc_normal",
           "constant_cache"]

Thw = tuple[int, int, int]


def triple(v) -> Thw:
    """An int or 3 ints -> (t, h, w)."""
    t = tuple(int(a) for a in (v if isinstance(v, Sequence) else (v, v, v)))
    if len(t) != 3:
        raise ValueError(f"expected 3 values (t, h, w), got {v!r}")
    return t


class PatchEmbed3d(nn.Module):
    """Conv3d patches: (B, C_in, T, H, W) -> tokens (B, T'*H'*W', C) in (t, h, w) order, grid (T', H', W').

    kernel, stride (default: the kernel), padding: MViT's overlapping stem (3x7x7, stride 2x4x4, padding
    1x3x3); non-overlapping patches (ViT's 2x16x16 tubelets, Swin's 2x4x4) have stride = kernel.
    pad_to_patches: zero-pad the end of a clip the strides do not tile (Swin, as the official code).
    norm: LayerNorm over each token's channels (Swin), epsilon `eps`.
    channels_last: run the conv channels-last (MViT): its output is then token-major already, so the
        flattening is a view instead of a copy (and oneDNN's conv is faster so).
    State dict: `proj.*` (and `norm.*`), the keys of the official checkpoints.
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel, stride=None, padding=0, *, pad_to_patches: bool = False,
                 norm: bool = False, eps: float = 1e-5, channels_last: bool = False):
        super().__init__()
        kernel = triple(kernel)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel, triple(stride if stride is not None else kernel),
                              triple(padding))
        self.norm = nn.LayerNorm(embed_dim, eps=eps) if norm else None
        self.pad_to_patches = pad_to_patches
        self.channels_last = channels_last

    def grid(self, t: int, h: int, w: int) -> Thw:
        """The token grid of a T x H x W clip."""
        c = self.proj
        sizes = (t, h, w)
        if self.pad_to_patches:
            sizes = tuple(n + (-n % s) for n, s in zip(sizes, c.stride))
        return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(sizes, c.kernel_size, c.stride, c.padding))

    def forward(self, x: Tensor) -> tuple[Tensor, Thw]:
        if self.pad_to_patches:
            _, _, T, H, W = x.shape
            pt, ph, pw = self.proj.stride
            if T % pt or H % ph or W % pw:
                x = F.pad(x, (0, -W % pw, 0, -H % ph, 0, -T % pt))  # zeros at the end of T, H, W
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.proj(x)  # (B, C, T', H', W')
        thw = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # (B, C, T'*H'*W') -> (B, T'*H'*W', C)
        return (self.norm(x) if self.norm is not None else x), thw


@contextlib.contextmanager
def _real_tensors():
    """Plain eager tensor code inside, whatever traces outside: torch.export's fake and proxy modes (and
    torch-function modes) are switched off, autograd and inference mode too (cached tensors outlive the
    call: an inference tensor could not be saved for backward later)."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), torch._C.DisableTorchFunction(), torch.inference_mode(False), torch.no_grad():
        yield


def constant_cache(maxsize: int = 32) -> Callable:
    """Cache a function of plain Python values (sizes, flags, a device) that builds constant tensors.

        @constant_cache(maxsize=32)
        def window_mask(padded, window, shift, device): ...   # -> the same real tensor on every call

    Eagerly it is a cache keyed by the arguments (the oldest entry goes when full), built on real
    tensors whatever traces the caller, so a fake tensor of torch.export is never cached. A traced
    call (torch.compile, torch.export) that finds the entry gets the cached tensor (a constant input
    of the graph, nothing rebuilt per call); one that misses traces the builder into the graph and
    caches nothing. So compile or export a model after one eager call to bake its geometry in.
    """

    def wrap(build: Callable) -> Callable:
        cache: dict = {}

        @functools.wraps(build)
        def get(*args):
            if args in cache:
                return cache[args]
            if torch.compiler.is_compiling():
                return build(*args)
            with _real_tensors():
                value = build(*args)
            if len(cache) >= maxsize:
                del cache[next(iter(cache))]
            cache[args] = value
            return value

        get.cache, get.cache_clear = cache, cache.clear
        return get

    return wrap


class Mlp(nn.Module):
    """Linear -> GELU -> (dropout) -> Linear: (..., C_in) -> (..., C_out)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples' residual branches with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@torch.no_grad()
def init_weights_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """timm/PySlowFast init: Linear weights ~ trunc N(0, std), biases 0; LayerNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
