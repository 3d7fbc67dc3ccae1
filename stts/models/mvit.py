"""MViT v1 (Multiscale Vision Transformers) with STTS token selection, in plain PyTorch.

    model = stts.create_model("mvit_b_16x4", num_classes=400)                  # dense MViT-B 16x4
    model = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7")                    # a published STTS model
    model = stts.create_model("mvit_b_16x4", selection="T0_0.5-S4_0.7")        # any plan
    model = stts.load_model("K400_MVIT_B_16x4_CONV.pyth")                      # official checkpoint
    logits, kept = model(x, return_selections=True)    # x: (B, 3, T, H, W); kept: {"T0": Selection, ...}

Papers: H. Fan et al., "Multiscale Vision Transformers", ICCV 2021 (arXiv 2104.11227); J. Wang et al.,
"Efficient Video Transformers with Spatial-Temporal Token Selection", ECCV 2022 (arXiv 2111.11591).

Credits: the architecture follows PySlowFast's MViT v1 (Apache-2.0) as forked by the STTS authors
(MIT), so that their checkpoints load unchanged; the module layout follows timm's `mvitv2.py` and
torchvision's `mvit.py` (blocks take and return the token grid). Every line is written anew.

Structure (MViT-B 16x4): Conv3d patch embedding (3x7x7, stride 2x4x4) -> class token + separate
space/time position embeddings (added once, before any selection) -> 16 blocks. Block i: pooling
attention (q, k, v each pooled by a depthwise Conv3d + LayerNorm per head; the class token bypasses
the pool), residual max-pooled where q is strided, MLP; channels double in the block before 1, 3 and
14, heads and q-stride change at them. Final LayerNorm -> class token -> dropout -> Linear.

Modifications against the official code:
- k of a selector comes from the tokens it is given (T, H, W of the input), not from the config's
  `NUM_FRAMES // 2`; a spatial selector's k uses the map before the block it runs before.
- No `.cuda()`; selection is a hard gather in eval, so later blocks really run on fewer tokens.
- The pools run channels-last, one depthwise conv over all heads (the per-head kernel repeated
  nh times is the same arithmetic as the official (B*nh, hd, T, H, W) conv), and attention is
  `F.scaled_dot_product_attention`. Both keep the official numbers (tests hold the fixtures).
- A clip whose token grid differs from the default is handled by resampling the position
  embeddings (bicubic in space, linear in time; trilinear for a joint embedding).
- Tokens nothing reads are not computed (`skip_unread_tokens`): in inference, k and v only where their
  strided pools read (blocks 0-2: 13-54% of the grid); the logits' forward runs the last block at the
  class token alone. Same numbers; stts.flops still counts the published computation.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stts.models._registry import register_family, register_model
from stts.models.base import VideoClassifier
from stts.models.layers import DropPath, Mlp, PatchEmbed3d, constant_cache, init_weights_trunc_normal
from stts.models.layers import triple as _triple
from stts.models.pyslowfast import model_from_official
from stts.models.zoo import ZOO
from stts.plan import parse_plan

__all__ = [
    "MViT",
    "MultiScaleBlock",
    "PoolingAttention",
    "TokenPool",
    "mvit_block_configs",
    "checkpoint_filter_fn",
]

Thw = tuple[int, int, int]


def _pool_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _read_positions(size: int, kernel: int, stride: int, padding: int) -> list[int] | None:
    """The input positions along one axis that a pool reads, in order, where no two outputs read the same
    position (kernel <= stride, or one output), they are fewer than `size`, and the pool of them alone
    is a pool with stride = kernel and the same padding; else None. MViT-B's kv pools (kernel 3, stride
    8 or 4 in space, padding 1) read 3 of every 8 or 4 rows and columns: 20 of 56, or 41 of 56."""
    out = _pool_out(size, kernel, stride, padding)
    wanted = [o * stride + t - padding for o in range(out) for t in range(kernel)]
    if any(b <= a for a, b in zip(wanted, wanted[1:])):  # two outputs read a position
        return None
    read = [i for i in wanted if 0 <= i < size]
    leading = sum(i < 0 for i in wanted)
    if len(read) == size or leading != padding or _pool_out(len(read), kernel, kernel, padding) != out:
        return None
    return read


def _grid_to_tokens(grid: Tensor, prefix: Tensor) -> Tensor:
    """Pooled grid (B, C, T', H', W') and prefix tokens (B, P, C) -> tokens (B, P + T'*H'*W', C)."""
    tokens = grid.permute(0, 2, 3, 4, 1).reshape(grid.shape[0], -1, grid.shape[1])
    return torch.cat([prefix, tokens], dim=1) if prefix.shape[1] else tokens


@constant_cache(maxsize=64)
def _read_index(positions: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.tensor(positions, dtype=torch.long, device=device)


def _round_width(width: float, multiplier: float, divisor: int = 1) -> int:
    """PySlowFast's `round_width`: width * multiplier rounded to a multiple of `divisor`."""
    width = width * multiplier
    out = max(divisor, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


# Inference linears with a short reduction (K <= 96 input channels: MViT-B block 0, where most tokens
# are) run as a bare product plus an in-place bias add. F.linear broadcast-copies the bias into its
# output and runs the GEMM with beta = 1, which MKL does slowly for so short a K: the product + add_
# takes 0.83-0.97x its time at K = 96 (measured, 1 thread, 2-25k rows); at K = 192 it gains nothing.
_SHORT_K = 96


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, inference: bool) -> Tensor:
    """F.linear(x, weight, bias): (..., K) -> (..., M)."""
    if inference and bias is not None and weight.shape[1] <= _SHORT_K:
        return torch.matmul(x, weight.t()).add_(bias)
    return F.linear(x, weight, bias)


# ---------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------


class _DepthwiseConv3d(torch.autograd.Function):
    """F.conv3d(x, weight, stride, padding, groups=C) (no bias, no dilation) with a CPU backward built
    from fast kernels. ATen's CPU backward of a depthwise 3D conv is a generic loop: 10-100x the
    forward, a fifth of an MViT-B training step. Here the input gradient is the stride-1 depthwise
    conv (oneDNN, as the forward) of the output gradient spread onto the input grid (zeros between
    the strided positions) with the flipped kernel; the weight gradient is one reduction per kernel
    tap, sum(grad_out * the input positions that tap reads). Same sums, another order."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: Thw, padding: Thw) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv3d(x, weight, None, stride, padding, 1, x.shape[1])  # (B, C, T', H', W')

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors  # (B, C, T, H, W), (C, 1, kt, kh, kw)
        stride, padding, kernel = ctx.stride, ctx.padding, weight.shape[2:]
        B, C = x.shape[:2]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # Stride-1 output grid (in + 2p - k + 1 per axis), the gradient at every stride-th place.
            full = tuple(n + 2 * p - k + 1 for n, p, k in zip(x.shape[2:], padding, kernel))
            T_, H_, W_ = grad_out.shape[2:]
            spread = grad_out.new_zeros(B, *full, C)  # channels-last
            st, sh, sw = stride
            spread[:, ::st, ::sh, ::sw][:, :T_, :H_, :W_] = grad_out.permute(0, 2, 3, 4, 1)
            grad_x = F.conv3d(spread.permute(0, 4, 1, 2, 3), weight.flip(2, 3, 4), None, 1,
                              tuple(k - 1 - p for k, p in zip(kernel, padding)), 1, C)  # (B, C, T, H, W)
        if ctx.needs_input_grad[1]:
            g = grad_out.permute(0, 2, 3, 4, 1)  # (B, T', H', W', C)
            xc = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C)
            grad_w = x.new_zeros(C, math.prod(kernel))
            for i, tap in enumerate(itertools.product(*(range(k) for k in kernel))):
                # Output positions o whose input o * s + tap - p lies inside the grid (not in the padding).
                g_idx, x_idx = [slice(None)], [slice(None)]
                for o_len, n, s, t, p in zip(g.shape[1:4], xc.shape[1:4], stride, tap, padding):
                    lo, hi = max(0, -((t - p) // s)), min(o_len, (n - 1 - t + p) // s + 1)
                    g_idx.append(slice(lo, max(hi, lo)))
                    x_idx.append(slice(lo * s + t - p, (max(hi, lo) - 1) * s + t - p + 1, s))
                if all(sl.stop > sl.start for sl in g_idx[1:]):
                    grad_w[:, i] = (g[tuple(g_idx)] * xc[tuple(x_idx)]).sum((0, 1, 2, 3))
            grad_w = grad_w.view_as(weight)
        return grad_x, grad_w, None, None


class TokenPool(nn.Module):
    """Pool a token grid, prefix (class) tokens bypassing it: (B, P + T*H*W, C) -> (B, P + T'*H'*W', C).

    mode "conv": depthwise Conv3d without bias whose kernel is shared by the heads, weight
    (hd, 1, kt, kh, kw) as in the official checkpoints; "max" / "avg": parameter-free pooling.
    The grid is pooled channels-last (a view of the token tensor, no permuting copy).
    """

    def __init__(self, head_dim: int, kernel: Sequence[int], stride: Sequence[int], mode: str = "conv"):
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)
        self.padding = tuple(k // 2 for k in self.kernel)
        self.mode = mode
        if mode == "conv":
            self.weight = nn.Parameter(torch.empty(head_dim, 1, *self.kernel))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv3d's default init
        elif mode not in ("max", "avg"):
            raise ValueError(f"pool mode must be 'conv', 'max' or 'avg', got {mode!r}")

    def out_thw(self, thw: Thw) -> Thw:
        return tuple(_pool_out(n, k, s, p) for n, k, s, p in zip(thw, self.kernel, self.stride, self.padding))

    def read_positions(self, thw: Thw) -> tuple[list[int] | None, ...] | None:
        """Per axis, the positions this conv pool reads where it reads fewer than all (else None per
        axis); None if it reads the whole grid. The tokens it never reads need not be computed."""
        if self.mode != "conv":
            return None
        axes = tuple(_read_positions(n, k, s, p) for n, k, s, p in zip(thw, self.kernel, self.stride, self.padding))
        return axes if any(a is not None for a in axes) else None

    def forward_read(self, grid: Tensor, thw: Thw, axes: tuple, prefix: Tensor) -> tuple[Tensor, Thw]:
        """The pool of the full grid, from its read positions alone.

        grid (B, T_r, H_r, W_r, C): the positions `read_positions(thw)` names (all along an axis that
        is None); prefix (B, P, C) bypasses the pool. Along a read axis the positions are adjacent in
        groups of `kernel`, so the pool is a stride-`kernel` conv there, with the same padding.
        """
        C = grid.shape[-1]
        stride = tuple(k if a is not None else s for a, k, s in zip(axes, self.kernel, self.stride))
        out = F.conv3d(grid.permute(0, 4, 1, 2, 3), self._channel_weight(C), None, stride, self.padding, 1, C)
        return _grid_to_tokens(out, prefix), tuple(out.shape[2:])

    def _channel_weight(self, C: int) -> Tensor:
        """(C, 1, kt, kh, kw): channel c of head h uses kernel c % hd, one depthwise conv over all heads."""
        hd = self.weight.shape[0]
        return self.weight if C == hd else self.weight.repeat(C // hd, 1, 1, 1, 1)

    def forward(self, x: Tensor, thw: Thw, num_prefix: int) -> tuple[Tensor, Thw]:
        B, N, C = x.shape
        T, H, W = thw
        prefix, grid = x[:, :num_prefix], x[:, num_prefix:]
        # Channels-last: (B, T*H*W, C) -> (B, T, H, W, C) -> (B, C, T, H, W) with C innermost, which
        # oneDNN pools fast. It must be dense (with B > 1 the prefix leaves gaps between samples):
        # otherwise the conv falls back to a channels-first copy, slower than the pooling itself.
        grid = grid.reshape(B, T, H, W, C)
        if not grid.is_contiguous():
            grid = grid.contiguous()
        grid = grid.permute(0, 4, 1, 2, 3)
        if self.mode == "conv":
            weight = self._channel_weight(C)  # (C, 1, kt, kh, kw)
            # The fast backward is for plain CPU training: under autocast the conv's inputs are cast
            # (a bf16 grid, a float32 weight) and ATen's own backward handles the casts.
            if (grid.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling()
                    and not torch.is_autocast_enabled("cpu") and grid.dtype == weight.dtype):
                grid = _DepthwiseConv3d.apply(grid, weight, self.stride, self.padding)  # same forward, fast backward
            else:
                grid = F.conv3d(grid, weight, None, self.stride, self.padding, 1, C)
        elif self.mode == "max":
            grid = F.max_pool3d(grid, self.kernel, self.stride, self.padding)
        else:
            grid = F.avg_pool3d(grid, self.kernel, self.stride, self.padding)
        return _grid_to_tokens(grid, prefix), tuple(grid.shape[2:])

    def extra_repr(self) -> str:
        return f"mode={self.mode}, kernel={self.kernel}, stride={self.stride}, padding={self.padding}"


class PoolingAttention(nn.Module):
    """Multi-head pooling attention: (B, P + T*H*W, C) -> (B, P + T'*H'*W', C), T'H'W' = q-pooled grid.

    q, k, v = qkv(x); each is pooled over the grid (`pool_q` sets the output resolution, `pool_k` /
    `pool_v` shrink the keys) and layer-normalised per head; out = proj(softmax(q k^T / sqrt(hd)) v).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, kernel_q=(), stride_q=(1, 1, 1),
                 kernel_kv=(), stride_kv=(1, 1, 1), mode: str = "conv", num_prefix: int = 1,
                 norm_eps: float = 1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_prefix = num_prefix
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # As PySlowFast: no pool where the kernel and stride are both 1 (or no kernel is given);
        # the conv pools come with a LayerNorm, the max/avg pools without.
        use_q = len(kernel_q) > 0 and not (math.prod(kernel_q) == 1 and math.prod(stride_q) == 1)
        use_kv = len(kernel_kv) > 0 and not (math.prod(kernel_kv) == 1 and math.prod(stride_kv) == 1)
        hd, with_norm = self.head_dim, mode == "conv"
        self.pool_q = TokenPool(hd, kernel_q, stride_q, mode) if use_q else None
        self.pool_k = TokenPool(hd, kernel_kv, stride_kv, mode) if use_kv else None
        self.pool_v = TokenPool(hd, kernel_kv, stride_kv, mode) if use_kv else None
        self.norm_q = nn.LayerNorm(hd, eps=norm_eps) if use_q and with_norm else None
        self.norm_k = nn.LayerNorm(hd, eps=norm_eps) if use_kv and with_norm else None
        self.norm_v = nn.LayerNorm(hd, eps=norm_eps) if use_kv and with_norm else None

    def _pool(self, x: Tensor, pool: TokenPool | None, norm: nn.LayerNorm | None, thw: Thw) -> tuple[Tensor, Thw]:
        """(B, N, C) -> (B, nh, N', hd)."""
        if pool is not None:
            x, thw = pool(x, thw, self.num_prefix)  # (B, N', C)
        B, N, C = x.shape
        x = x.view(B, N, self.num_heads, self.head_dim)  # (B, N', C) -> (B, N', nh, hd)
        if norm is not None:
            x = norm(x)
        return x.transpose(1, 2), thw  # (B, N', nh, hd) -> (B, nh, N', hd)

    # Inference computes k and v only at the tokens their strided pools read (MViT-B blocks 0-2: 13-54%
    # of the grid): the same numbers. stts.flops turns it off, to count the published computation.
    skip_unread_tokens = True

    def _pooled_kv_read(self, x: Tensor, thw: Thw, axes: tuple, w, b) -> tuple[Tensor, Tensor]:
        """Pooled, normed k and v (B, nh, Nk, hd) from the prefix tokens and the grid positions `axes` names."""
        B, P = x.shape[0], self.num_prefix
        grid = x[:, P:].unflatten(1, thw)  # (B, T, H, W, C), a view also where B > 1
        for dim, positions in enumerate(axes, start=1):
            if positions is not None:
                grid = grid.index_select(dim, _read_index(tuple(positions), x.device))  # (B, T_r, H_r, W_r, C)
        out = []
        for weight, bias, pool, norm in ((w[1], b[1], self.pool_k, self.norm_k), (w[2], b[2], self.pool_v, self.norm_v)):
            # The prefix's product apart from the grid's: no copy joins them before the pool.
            y, _ = pool.forward_read(_linear(grid, weight, bias, True), thw, axes, _linear(x[:, :P], weight, bias, True))
            y = y.view(B, -1, self.num_heads, self.head_dim)  # (B, Nk, C) -> (B, Nk, nh, hd)
            out.append((norm(y) if norm is not None else y).transpose(1, 2))
        return out[0], out[1]

    def forward(self, x: Tensor, thw: Thw, prefix_only: bool = False) -> tuple[Tensor, Thw]:
        """prefix_only: the output at the prefix (class) tokens alone, (B, P, C): their q only."""
        B, N, C = x.shape
        # q, k, v as three products with slices of the fused weight: each comes out contiguous, so
        # its grid is a dense channels-last tensor for the pools (slices of one (B, N, 3C) output
        # would need a copy each). Same multiply-adds as the fused product.
        inference = not (self.training or torch.is_grad_enabled())
        w, b = self.qkv.weight.chunk(3), self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None,) * 3
        if prefix_only:  # the prefix bypasses the q pool: its q is the linear of its own tokens, normed
            q, _ = self._pool(_linear(x[:, :self.num_prefix], w[0], b[0], inference), None, self.norm_q, thw)
            q_thw = self.pool_q.out_thw(thw) if self.pool_q is not None else thw
        else:
            q, q_thw = self._pool(_linear(x, w[0], b[0], inference), self.pool_q, self.norm_q, thw)  # (B, nh, Nq, hd)
        axes = self.pool_k.read_positions(thw) if inference and self.pool_k is not None and self.skip_unread_tokens else None
        if axes is not None:  # k and v of the tokens the pools read (the prefix and a subset of the grid)
            k, v = self._pooled_kv_read(x, thw, axes, w, b)
        else:
            k, _ = self._pool(_linear(x, w[1], b[1], inference), self.pool_k, self.norm_k, thw)  # (B, nh, Nk, hd)
            v, _ = self._pool(_linear(x, w[2], b[2], inference), self.pool_v, self.norm_v, thw)
        # q's layout is (B, Nq, nh, hd) under the transpose, and SDPA gives its output the same one,
        # so merging the heads back is a view.
        x = F.scaled_dot_product_attention(q, k, v)  # (B, nh, Nq, hd), scale hd^-0.5
        x = x.transpose(1, 2).reshape(B, q.shape[2], C)  # (B, nh, Nq, hd) -> (B, Nq, C)
        return _linear(x, self.proj.weight, self.proj.bias, inference), q_thw


class MultiScaleBlock(nn.Module):
    """x + attn(norm1(x)), then + mlp(norm2(x)): (B, P + T*H*W, dim) -> (B, P + T'*H'*W', dim_out).

    Where q is strided the residual is max-pooled (kernel stride + 1, class token bypassing); where
    dim != dim_out the MLP widens and the residual becomes proj(norm2(x)) (PySlowFast MViT v1).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, kernel_q=(), stride_q=(1, 1, 1), kernel_kv=(), stride_kv=(1, 1, 1),
                 mode: str = "conv", num_prefix: int = 1, norm_eps: float = 1e-6, pool_norm_eps: float = 1e-5):
        super().__init__()
        self.dim, self.dim_out, self.num_prefix = dim, dim_out, num_prefix
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = PoolingAttention(dim, num_heads, qkv_bias=qkv_bias, kernel_q=kernel_q, stride_q=stride_q,
                                     kernel_kv=kernel_kv, stride_kv=stride_kv, mode=mode, num_prefix=num_prefix,
                                     norm_eps=pool_norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim_out)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        stride_q = _triple(stride_q)
        if math.prod(stride_q) > 1:
            kernel_skip = tuple(s + 1 if s > 1 else s for s in stride_q)
            self.pool_skip = TokenPool(1, kernel_skip, stride_q, mode="max")
        else:
            self.pool_skip = None

    def forward(self, x: Tensor, thw: Thw, prefix_only: bool = False) -> tuple[Tensor, Thw]:
        """prefix_only: the output at the prefix (class) tokens alone, (B, P, dim_out)."""
        # Without autograd (inference), the branch outputs are fresh buffers nobody else holds: the
        # residual is added into them and GELU runs in place, saving three (B, N, C)-sized allocations
        # per block (at block 0 the MLP's hidden tensor alone is 38 MB). Same arithmetic, same bits.
        inplace = not (self.training or torch.is_grad_enabled())
        x_attn, new_thw = self.attn(self.norm1(x), thw, prefix_only)
        if prefix_only:  # the prefix bypasses the residual pool
            x = x[:, :self.num_prefix]
        elif self.pool_skip is not None:
            x, _ = self.pool_skip(x, thw, self.num_prefix)
        x = x_attn.add_(x) if inplace else x + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        if not inplace:
            x_mlp = self.mlp(x_norm)
            if self.proj is not None:
                x = self.proj(x_norm)
            return x + self.drop_path(x_mlp), new_thw
        fc1 = self.mlp.fc1
        hidden = torch.ops.aten.gelu_(_linear(x_norm, fc1.weight, fc1.bias, True))  # (B, N, 4C); Mlp, no dropout
        # fc2 accumulates straight into the residual (addmm_: residual += hidden @ W2^T, one GEMM with
        # beta 1), so its output is never allocated, its bias never broadcast-copied, and the final add
        # is gone: one (B, N, C_out) buffer and two passes over it fewer per block. fc2's bias rides on
        # proj's where the residual is proj(x_norm), else it is added to the residual (x is our own
        # buffer here: x_attn above). Same sums in another order (float32 rounding).
        fc2 = self.mlp.fc2
        if x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):  # addmm_ gets no autocast
            residual = self.proj(x_norm) if self.proj is not None else x
            return fc2(hidden).add_(residual), new_thw
        if self.proj is not None:
            bias = self.proj.bias + fc2.bias if fc2.bias is not None else self.proj.bias
            x = _linear(x_norm, self.proj.weight, bias, True)  # (B, N, C_out)
        elif fc2.bias is not None:
            x = x.add_(fc2.bias)
        x.view(-1, x.shape[-1]).addmm_(hidden.view(-1, hidden.shape[-1]), fc2.weight.t())
        return x, new_thw


def mvit_block_configs(depth: int, embed_dim: int, num_heads: int, dim_mul, head_mul, pool_q_stride,
                       pool_kv_stride_adaptive, pool_kv_stride, pool_kernel) -> list[dict]:
    """Per-block dim, dim_out, heads, q/kv kernels and strides, resolved as PySlowFast MViT v1 does.

    dim_mul / head_mul: [(block, multiplier), ...]: heads and q-stride change AT the block, channels
    in the block before it (block i's dim_out is rounded with block i+1's multipliers).
    pool_q_stride: [(block, st, sh, sw), ...]. pool_kv_stride_adaptive: the kv stride of block 0,
    divided by every q-stride met on the way (it overrides pool_kv_stride, given as pool_q_stride).
    pool_kernel: kernel of every pool; None gives stride + 1 where the stride is > 1.
    """
    d_mul, h_mul = [1.0] * (depth + 1), [1.0] * (depth + 1)
    for what, table, mul in (("dim_mul", dim_mul, d_mul), ("head_mul", head_mul, h_mul)):
        for entry in table:
            i, m = int(entry[0]), float(entry[1])
            if not 0 <= i <= depth:
                raise ValueError(f"{what} entry {list(entry)} names block {i}; the model has blocks 0..{depth - 1}")
            mul[i] = m
    stride_q: list[tuple] = [()] * depth
    for entry in pool_q_stride:
        if len(entry) != 4 or not 0 <= int(entry[0]) < depth:
            raise ValueError(f"pool_q_stride entry {list(entry)} must be [block, st, sh, sw] with block < {depth}")
        stride_q[int(entry[0])] = tuple(int(s) for s in entry[1:])
    stride_kv: list[tuple] = [()] * depth
    if pool_kv_stride_adaptive is not None:
        s = _triple(pool_kv_stride_adaptive)
        for i in range(depth):
            if stride_q[i]:
                s = tuple(max(a // b, 1) for a, b in zip(s, stride_q[i]))
            stride_kv[i] = s
    else:
        for entry in pool_kv_stride or ():
            if len(entry) != 4 or not 0 <= int(entry[0]) < depth:
                raise ValueError(f"pool_kv_stride entry {list(entry)} must be [block, st, sh, sw] with block < {depth}")
            stride_kv[int(entry[0])] = tuple(int(v) for v in entry[1:])

    def kernel_for(stride):
        if not stride:
            return ()
        return _triple(pool_kernel) if pool_kernel is not None else tuple(v + 1 if v > 1 else v for v in stride)

    configs, heads, dim = [], num_heads, embed_dim
    for i in range(depth):
        heads = _round_width(heads, h_mul[i])
        dim = _round_width(dim, d_mul[i], divisor=heads)
        dim_out = _round_width(dim, d_mul[i + 1], divisor=_round_width(heads, h_mul[i + 1]))
        configs.append(dict(dim=dim, dim_out=dim_out, num_heads=heads,
                            kernel_q=kernel_for(stride_q[i]), stride_q=stride_q[i] or (1, 1, 1),
                            kernel_kv=kernel_for(stride_kv[i]), stride_kv=stride_kv[i] or (1, 1, 1)))
        # `dim` runs on by its own multipliers: block i+1 re-derives dim_in = dim * dim_mul[i+1].
    return configs


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------


class MViT(VideoClassifier):
    """MViT v1 video classifier with STTS selection points before every block.

    Input (B, C_in, T, H, W); output logits (B, num_classes). `selectors` (filled by `stts.patch`)
    run before their block: temporal ("T": keep frames) and spatial anchor ("S": keep one window
    per frame) selection; token-level selection does not apply since pooling needs a grid.

    Args (timm names; PySlowFast MVIT.* key in brackets):
        img_size: crop size (DATA.TRAIN_CROP_SIZE); num_frames: clip length (DATA.NUM_FRAMES).
        in_chans, num_classes (MODEL.NUM_CLASSES; 0 gives no head).
        embed_dim (EMBED_DIM), depth (DEPTH), num_heads (NUM_HEADS), mlp_ratio (MLP_RATIO),
        qkv_bias (QKV_BIAS), drop_path_rate (DROPPATH_RATE, linear over blocks),
        head_drop (MODEL.DROPOUT_RATE).
        dim_mul, head_mul: [(block, mul)] (DIM_MUL, HEAD_MUL); pool_q_stride: [(block, st, sh, sw)]
        (POOL_Q_STRIDE); pool_kv_stride_adaptive (POOL_KV_STRIDE_ADAPTIVE) or pool_kv_stride
        (POOL_KV_STRIDE); pool_kernel (POOL_KVQ_KERNEL); pool_mode (MODE: conv | max | avg).
        patch_kernel, patch_stride, patch_padding (PATCH_KERNEL/STRIDE/PADDING).
        sep_pos_embed (SEP_POS_EMBED), class_token (CLS_EMBED_ON; False: mean-pooled features).
        norm_eps / pool_norm_eps: LayerNorm eps of the blocks and final norm / of the q, k, v pools
        (1e-6 / 1e-5 in the official checkpoints).
    """

    selection_kinds = "TS"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        num_frames: int = 16,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dim: int = 96,
        depth: int = 16,
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.0,
        dim_mul: Sequence = ((1, 2.0), (3, 2.0), (14, 2.0)),
        head_mul: Sequence = ((1, 2.0), (3, 2.0), (14, 2.0)),
        pool_q_stride: Sequence = ((1, 1, 2, 2), (3, 1, 2, 2), (14, 1, 2, 2)),
        pool_kv_stride_adaptive: Sequence[int] | None = (1, 8, 8),
        pool_kv_stride: Sequence | None = None,
        pool_kernel: Sequence[int] | None = (3, 3, 3),
        pool_mode: str = "conv",
        patch_kernel: Sequence[int] = (3, 7, 7),
        patch_stride: Sequence[int] = (2, 4, 4),
        patch_padding: Sequence[int] = (1, 3, 3),
        sep_pos_embed: bool = True,
        class_token: bool = True,
        norm_eps: float = 1e-6,
        pool_norm_eps: float = 1e-5,
    ):
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.input_size = (in_chans, num_frames, h, w)  # default input, without batch (count_flops)
        self.num_prefix_tokens = 1 if class_token else 0
        self.sep_pos_embed = sep_pos_embed

        # Channels-last stem: its output is token-major, so the flattened tokens are a free view.
        self.patch_embed = PatchEmbed3d(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding,
                                        channels_last=True)
        self.patch_grid: Thw = self.patch_embed.grid(num_frames, h, w)
        T, H, W = self.patch_grid
        if min(self.patch_grid) < 1:
            raise ValueError(f"a {num_frames}x{h}x{w} clip gives no tokens with patch kernel {patch_kernel}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        if sep_pos_embed:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, H * W, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, T, embed_dim))
            self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + T * H * W, embed_dim))

        self.block_configs = mvit_block_configs(depth, embed_dim, num_heads, dim_mul, head_mul, pool_q_stride,
                                                pool_kv_stride_adaptive, pool_kv_stride, pool_kernel)
        # Stochastic depth rises linearly over the blocks (plain floats: the model may be built on meta).
        dpr = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path_rate] * depth
        self.blocks = nn.ModuleList([
            MultiScaleBlock(**cfg, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i], mode=pool_mode,
                            num_prefix=self.num_prefix_tokens, norm_eps=norm_eps, pool_norm_eps=pool_norm_eps)
            for i, cfg in enumerate(self.block_configs)
        ])
        self.num_features = self.block_configs[-1]["dim_out"] if depth else embed_dim
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.selectors = nn.ModuleDict()  # filled by stts.patch; keys like "T0", "S4"
        self._init_weights()

    def _init_weights(self):
        init_weights_trunc_normal(self, std=0.02)
        for p in (self.cls_token, *self._pos_params()):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def _pos_params(self):
        if self.sep_pos_embed:
            return [self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class]
        return [self.pos_embed]

    # -- the pieces of VideoClassifier's forward and selection surface -----------------------------

    def _places(self) -> nn.ModuleList:
        return self.blocks

    def _place_dims(self) -> list[int]:
        return [cfg["dim"] for cfg in self.block_configs]

    def _grid_after_place(self, index: int, thw: Thw) -> Thw:
        """Block `index` pools the grid where its q is strided. MViT-B at 16x224: 8 frames; 56x56 before
        blocks 0-1, 28x28 before 2-3, 14x14 before 4-14, 7x7 before 15."""
        pool = self.blocks[index].attn.pool_q
        return pool.out_thw(thw) if pool is not None else thw

    def _run_place(self, index: int, x: Tensor, thw: Thw) -> tuple[Tensor, Thw]:
        return self.blocks[index](x, thw)

    def _head_reads_prefix_only(self) -> bool:
        return self.cls_token is not None

    def _run_place_prefix_only(self, index: int, x: Tensor, thw: Thw) -> tuple[Tensor, Thw]:
        return self.blocks[index](x, thw, prefix_only=True)

    # -- forward -----------------------------------------------------------------------------------

    def _pos_embed(self, x: Tensor, thw: Thw) -> Tensor:
        """Add class token and position embeddings: (B, T*H*W, C) -> (B, P + T*H*W, C)."""
        B, N, C = x.shape
        T, H, W = thw
        if self.sep_pos_embed:
            spatial, temporal = self.pos_embed_spatial, self.pos_embed_temporal
            if (T, H, W) != self.patch_grid:
                spatial, temporal = _resize_sep_pos_embed(spatial, temporal, self.patch_grid, thw)
            # spatial.repeat(T) + temporal.repeat_interleave(H*W), by broadcasting: (1, T, H*W, C)
            pos = (spatial.reshape(1, 1, H * W, C) + temporal.reshape(1, T, 1, C)).reshape(1, N, C)
            cls_pos = self.pos_embed_class
        else:
            pos = self.pos_embed
            if (T, H, W) != self.patch_grid:
                pos = _resize_joint_pos_embed(pos, self.num_prefix_tokens, self.patch_grid, thw)
            pos, cls_pos = pos[:, self.num_prefix_tokens:], pos[:, :self.num_prefix_tokens]
        if self.cls_token is None:
            return x + pos
        cls = (self.cls_token + cls_pos).expand(B, -1, -1)  # (B, 1, C)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # out= has no autograd, no Dynamo rule
            return torch.cat([cls, x + pos], dim=1)  # (B, 1 + N, C)
        # Eager inference: the sum is written straight behind the class token (out=), not added and then
        # copied by a cat: one pass over the whole clip's tokens and one clip-sized buffer fewer.
        dtype = torch.promote_types(torch.promote_types(x.dtype, pos.dtype), cls.dtype)  # as add + cat
        out = x.new_empty(B, 1 + N, C, dtype=dtype)
        out[:, :1] = cls
        torch.add(x, pos, out=out[:, 1:])
        return out

    def _embed(self, x: Tensor) -> tuple[Tensor, Thw]:
        x, thw = self.patch_embed(x)  # (B, T*H*W, C)
        return self._pos_embed(x, thw), thw  # (B, P + T*H*W, C)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, N, C) -> logits (B, num_classes), or the pooled feature (B, C) if pre_logits."""
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {"cls_token", "pos_embed", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}
        return {n for n, _ in self.named_parameters() if n in names}


def _resize_sep_pos_embed(spatial: Tensor, temporal: Tensor, src: Thw, dst: Thw) -> tuple[Tensor, Tensor]:
    """Resample separate embeddings to another grid: spatial (1, H0*W0, C) bicubic, temporal (1, T0, C) linear."""
    (T0, H0, W0), (T, H, W) = src, dst
    C = spatial.shape[-1]
    if (H, W) != (H0, W0):
        grid = spatial.reshape(1, H0, W0, C).permute(0, 3, 1, 2)  # (1, H0*W0, C) -> (1, C, H0, W0)
        grid = F.interpolate(grid, size=(H, W), mode="bicubic", align_corners=False)
        spatial = grid.permute(0, 2, 3, 1).reshape(1, H * W, C)  # (1, C, H, W) -> (1, H*W, C)
    if T != T0:
        line = F.interpolate(temporal.transpose(1, 2), size=T, mode="linear", align_corners=False)  # (1, C, T)
        temporal = line.transpose(1, 2)  # (1, C, T) -> (1, T, C)
    return spatial, temporal


def _resize_joint_pos_embed(pos: Tensor, num_prefix: int, src: Thw, dst: Thw) -> Tensor:
    """Resample a joint embedding (1, P + T0*H0*W0, C) to (1, P + T*H*W, C), trilinear."""
    C = pos.shape[-1]
    grid = pos[:, num_prefix:].reshape(1, *src, C).permute(0, 4, 1, 2, 3)  # (1, C, T0, H0, W0)
    grid = F.interpolate(grid, size=dst, mode="trilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 4, 1).reshape(1, math.prod(dst), C)  # (1, C, T, H, W) -> (1, T*H*W, C)
    return torch.cat([pos[:, :num_prefix], grid], dim=1)


# ---------------------------------------------------------------------------------------------------
# Official checkpoints (PySlowFast / STTS .pyth)
# ---------------------------------------------------------------------------------------------------

_SCORER_PARTS = {"in_conv": "embed", "out_conv": "head"}
_OFFICIAL_SCORERS = {"time_score_predictor": "T", "space_score_predictor": "S"}  # official ModuleList -> kind


def checkpoint_filter_fn(state_dict: dict, model: MViT) -> dict:
    """Official PySlowFast/STTS keys -> ours; stts state dicts pass through.

    head.projection.* -> head.*; time_score_predictor.{i}.score_network.{in_conv,out_conv}.* ->
    selectors.T{loc}.scorer.{embed,head}.* where loc is the i-th temporal selector of `model`
    (official TIME_PRUNING_LOC order); space_score_predictor likewise -> selectors.S{loc}. Scorer keys
    with no matching selector keep their official name, so a strict load reports them. Position
    embeddings of another grid are resampled to the model's.
    """
    by_kind = {official: sorted((s.before, n) for n, s in model.selectors.items() if s.spec.kind == letter)
               for official, letter in _OFFICIAL_SCORERS.items()}
    out = {}
    for key, value in state_dict.items():
        new = key
        if key.startswith("head.projection."):
            new = "head." + key[len("head.projection."):]
        else:
            parts = key.split(".")
            if parts[0] in by_kind and len(parts) > 4 and parts[2] == "score_network" and parts[3] in _SCORER_PARTS:
                i = int(parts[1])
                if i < len(by_kind[parts[0]]):
                    name = by_kind[parts[0]][i][1]
                    new = ".".join(["selectors", name, "scorer", _SCORER_PARTS[parts[3]], *parts[4:]])
        out[new] = value
    return _resize_checkpoint_pos_embed(out, model)


def _resize_checkpoint_pos_embed(sd: dict, model: MViT) -> dict:
    own = dict(model.named_parameters())
    if model.sep_pos_embed and "pos_embed_spatial" in sd and "pos_embed_temporal" in sd:
        s, t = sd["pos_embed_spatial"], sd["pos_embed_temporal"]
        if s.shape != own["pos_embed_spatial"].shape or t.shape != own["pos_embed_temporal"].shape:
            side = math.isqrt(s.shape[1])
            if side * side != s.shape[1]:
                raise ValueError(f"cannot resample pos_embed_spatial of shape {tuple(s.shape)}: not a square grid")
            src = (t.shape[1], side, side)
            sd["pos_embed_spatial"], sd["pos_embed_temporal"] = _resize_sep_pos_embed(s, t, src, model.patch_grid)
    return sd


# ---------------------------------------------------------------------------------------------------
# Builders and registered variants
# ---------------------------------------------------------------------------------------------------

# PySlowFast's MVIT_B_16x4_CONV architecture; drop path 0.2 and head dropout 0.5 of the STTS recipe.
_MVIT_B = dict(embed_dim=96, depth=16, num_heads=1, dim_mul=((1, 2.0), (3, 2.0), (14, 2.0)),
               head_mul=((1, 2.0), (3, 2.0), (14, 2.0)), pool_q_stride=((1, 1, 2, 2), (3, 1, 2, 2), (14, 1, 2, 2)),
               pool_kv_stride_adaptive=(1, 8, 8), pool_kernel=(3, 3, 3), patch_kernel=(3, 7, 7),
               patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True, drop_path_rate=0.2,
               head_drop=0.5)

# The published STTS models were trained with sigma 0.1 (MViT) and the authors' diagonal estimator;
# the registered variants' plans keep both so that fine-tuning them reproduces the paper. New plans get
# the same diagonal estimator by default (it fine-tuned best on the demo) with stts's sigma 0.05; the
# unbiased full one: pass selection=plan.with_settings(jacobian="full", variance_reduction="loo") (or set
# model.jacobian / model.variance_reduction in a run config).
STTS_MVIT_SETTINGS = dict(num_samples=500, sigma=0.1, jacobian="diagonal")

register_family(MViT, checkpoint_filter=checkpoint_filter_fn, official_reader=model_from_official)


def _create_mvit(defaults: dict, kwargs: dict) -> MViT:
    return MViT(**{**defaults, **kwargs})


def _zoo_meta(name: str) -> dict:
    z = ZOO[name]
    return dict(top1=z.top1, readme_gflops=z.readme_gflops, official_gflops=z.official_gflops,
                official_gflops_hooks=z.official_gflops_hooks, frames_kept=z.frames_kept, anchor=z.anchor,
                official_config=z.official_config, dataset="kinetics400")


@register_model(meta=_zoo_meta("mvit_b_16x4"))
def mvit_b_16x4(**kwargs) -> MViT:
    """MViT-B 16x4 (16 frames, 224^2; 8x56x56 tokens), dense."""
    return _create_mvit(dict(_MVIT_B, num_frames=16), kwargs)


@register_model(meta=dict(dataset="kinetics400", top1=80.2, paper_gflops=170.0))  # MViT paper, Table 2
def mvit_b_32x3(**kwargs) -> MViT:
    """MViT-B 32x3 (32 frames, 224^2; 16x56x56 tokens), dense; 170.4 GFLOPs by our count."""
    return _create_mvit(dict(_MVIT_B, num_frames=32), kwargs)


@register_model(meta=dict(note="demo/test size, no published weights"))
def mvit_tiny(**kwargs) -> MViT:
    """A 0.4M-parameter MViT for 16x32x32 clips (8x8x8 tokens): the demo's backbone.

    Two stages of q-pooling (blocks 1 and 3), kv pooled 2x in space. The stem's temporal kernel is 2
    (stride 2, no padding): each temporal token sees exactly two frames, as in VideoMAE or Swin, so a
    two-frame event lives in one token instead of leaking into its neighbour through a kernel of 3.
    """
    return _create_mvit(dict(img_size=32, num_frames=16, embed_dim=32, depth=4, num_heads=1,
                             dim_mul=((1, 2.0), (3, 2.0)), head_mul=((1, 2.0), (3, 2.0)),
                             pool_q_stride=((1, 1, 2, 2), (3, 1, 2, 2)), pool_kv_stride_adaptive=(1, 2, 2),
                             patch_kernel=(2, 7, 7), patch_stride=(2, 4, 4), patch_padding=(0, 3, 3)), kwargs)


def _stts(name: str):
    return dict(plan=parse_plan(ZOO[name].plan, **STTS_MVIT_SETTINGS), meta=_zoo_meta(name))


@register_model("mvit_b_16x4_stts_t0.9_s0.9", **_stts("mvit_b_16x4_stts_t0.9_s0.9"))
def _mvit_b_16x4_stts_t09_s09(**kwargs) -> MViT:
    """MViT-B 16x4, 7 of 8 frames before block 0, 13x13 of 14x14 before block 4."""
    return mvit_b_16x4(**kwargs)


@register_model("mvit_b_16x4_stts_t0.8_s0.9", **_stts("mvit_b_16x4_stts_t0.8_s0.9"))
def _mvit_b_16x4_stts_t08_s09(**kwargs) -> MViT:
    """MViT-B 16x4, 6 of 8 frames, 13x13 anchor."""
    return mvit_b_16x4(**kwargs)


@register_model("mvit_b_16x4_stts_t0.6_s0.9", **_stts("mvit_b_16x4_stts_t0.6_s0.9"))
def _mvit_b_16x4_stts_t06_s09(**kwargs) -> MViT:
    """MViT-B 16x4, 5 of 8 frames, 13x13 anchor."""
    return mvit_b_16x4(**kwargs)


@register_model("mvit_b_16x4_stts_t0.5_s0.7", **_stts("mvit_b_16x4_stts_t0.5_s0.7"))
def _mvit_b_16x4_stts_t05_s07(**kwargs) -> MViT:
    """MViT-B 16x4, 4 of 8 frames, 12x12 anchor."""
    return mvit_b_16x4(**kwargs)


@register_model("mvit_b_16x4_stts_t0.4_s0.6", **_stts("mvit_b_16x4_stts_t0.4_s0.6"))
def _mvit_b_16x4_stts_t04_s06(**kwargs) -> MViT:
    """MViT-B 16x4, 3 of 8 frames, 11x11 anchor."""
    return mvit_b_16x4(**kwargs)
