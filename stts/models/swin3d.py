"""Video Swin Transformer (3D shifted-window attention) with STTS token selection.

    model = stts.create_model("swin3d_b", num_classes=400)                  # dense Video Swin-B, 32x2 clips
    model = stts.create_model("swin3d_b_stts_t0.5")                         # published: 9 of 16 frames
    model = stts.create_model("swin3d_b_stts_t0.5", temporal_window="fit")  # window-aware: cost ~ kept frames
    model = stts.create_model("swin3d_t", selection="T0_0.5-S2_a7")         # any plan ("S" at a stage boundary)
    model = stts.create_model("swin3d_b", pretrained="swin_base_patch244_window877_kinetics400_22k.pth")
    logits, kept = model(x, return_selections=True)     # x: (B, 3, T, H, W); kept: {"T0": Selection}

Papers: Z. Liu et al., "Video Swin Transformer", CVPR 2022 (arXiv 2106.13230); J. Wang et al.,
"Efficient Video Transformers with Spatial-Temporal Token Selection", ECCV 2022 (arXiv 2111.11591).

Credits: the architecture follows the official Video Swin (SwinTransformer/Video-Swin-Transformer,
mmaction2, Apache-2.0) as forked by the STTS authors (MIT), so that their checkpoints load unchanged;
the split into a functional op plus a thin module follows torchvision's `shifted_window_attention_3d`.
Every line is written anew.

Structure (Swin-B): Conv3d patch embedding (2x4x4) + LayerNorm -> 4 stages of (2, 2, 18, 2) blocks at
128, 256, 512, 1024 channels; a block is LayerNorm -> window attention (window 8x7x7, relative position
bias, every second block shifted by half a window) -> residual, LayerNorm -> MLP -> residual; patch
merging (2x2 in space, never in time) ends stages 0-2; final LayerNorm -> mean over T, H, W -> Linear.
Selectors run before a stage (stage index = selection index) on the (B, T*H*W, C) token map.

Two behaviours of the official code matter once frames are dropped, and `faithful` keeps them:
- a stage whose T exceeds the temporal window pads T with zero tokens up to a multiple of the window
  after norm1, and attention runs over the pad tokens WITHOUT masking them (they carry the qkv bias);
- a window shrunk spatially (map smaller than 7) takes its relative position bias through
  `relative_position_index[:N, :N]` of the full 8x7x7 index, which is not the shrunk window's index.
`faithful=True` (default, what official checkpoints expect) reproduces both; `faithful=False` masks the
pad tokens and uses the true index of the shrunk window. At 224 the index quirk never arises (every
map is a multiple of 7), and padding only when 9-15 of 16 frames are kept.

Beyond the official code, `temporal_window="fit"` (window-aware mode): when T is not a multiple of the
temporal window, the window shrinks so that the kept frames split into equal windows, w = ceil(T / n)
with n = ceil(T / 8) windows, shift w // 2 (14 frames -> 2 windows of 7, 9 -> 2 of 5 with one pad
frame). Nothing is padded up to 16, so the cost of every block falls with the kept frames (the
official "pad" mode keeps the attention of 16 frames for any 9-15 kept). The bias of a smaller
window is the exact sub-table of the 8x7x7 one, and the temporal reach of a window stays 5-8 frames.
The published weights were trained in "pad" mode: use "fit" to fine-tune (or as an approximation).
`model.set_window_mode(faithful=..., temporal_window=...)` switches an existing model.

Modifications against the official code:
- k of the temporal selector comes from the frames it is given, not from the constructor's
  `num_frames` (same k for the published configs and inputs).
- Attention is `F.scaled_dot_product_attention` with the relative position bias (+ shift mask) as
  `attn_mask`; the cyclic shift + window partition (and their inverse + crop) are one cached gather
  each instead of torch.roll and permutes; tokens stay channels-last (B, T, H, W, C) to the head.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stts.models._registry import register_family, register_model
from stts.models.base import VideoClassifier
from stts.models.layers import DropPath, Mlp, PatchEmbed3d, constant_cache, init_weights_trunc_normal
from stts.models.zoo import ZOO
from stts.patch import run_selectors
from stts.plan import parse_plan

__all__ = [
    "SwinTransformer3d",
    "SwinBlock3d",
    "WindowAttention3d",
    "PatchMerging3d",
    "shifted_window_attention_3d",
    "stage_window",
    "relative_position_index",
    "attention_mask",
    "window_order",
    "checkpoint_filter_fn",
]

Thw = tuple[int, int, int]
_MASK_VALUE = -100.0  # the official shift mask value; exp(-100) underflows to 0 against real logits
_TEMPORAL_WINDOWS = ("pad", "fit")


# ---------------------------------------------------------------------------------------------------
# Window geometry: pure functions of sizes, cached (the official code caches its masks too)
# ---------------------------------------------------------------------------------------------------


def stage_window(thw: Thw, window: Thw, temporal_window: str = "pad") -> tuple[Thw, Thw]:
    """Effective (window, shift of the shifted blocks) for a stage whose map is `thw`.

    Official rule: a dimension no larger than its window uses window = size and no shift. With
    `temporal_window="fit"` a longer T is split into n = ceil(T / Wt) equal windows of ceil(T / n).
    """
    win, shift = list(window), [w // 2 for w in window]
    for i, size in enumerate(thw):
        if size <= window[i]:
            win[i], shift[i] = size, 0
    T = thw[0]
    if temporal_window == "fit" and T > window[0]:
        n = math.ceil(T / window[0])
        win[0] = math.ceil(T / n)
        shift[0] = win[0] // 2
    return tuple(win), tuple(shift)


@constant_cache(maxsize=64)
def _relative_position_index_cached(window: Thw, table_window: Thw, faithful: bool, device: torch.device) -> Tensor:
    if faithful:
        N = math.prod(window)
        return _relative_position_index_cached(table_window, table_window, False, device)[:N, :N]
    Wd, Wh, Ww = table_window
    axes = [torch.arange(w, device="cpu") for w in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N), offsets in (-w+1 .. w-1)
    rel += torch.tensor([Wd - 1, Wh - 1, Ww - 1], device="cpu")[:, None, None]  # non-negative, in the table
    index = rel[0] * (2 * Wh - 1) * (2 * Ww - 1) + rel[1] * (2 * Ww - 1) + rel[2]  # (N, N)
    return index.to(device)


def relative_position_index(window: Thw, table_window: Thw, faithful: bool = False,
                            device: "torch.device | str" = "cpu") -> Tensor:
    """(N, N) rows of the (2Wd-1)(2Wh-1)(2Ww-1) bias table for a `window` of N tokens.

    faithful=True reproduces the official `relative_position_index[:N, :N]` of the full table window,
    which is right when only T shrank (T is the outermost axis) and not when H or W shrank.
    """
    return _relative_position_index_cached(tuple(window), tuple(table_window), faithful, torch.device(device))


def window_partition(x: Tensor, window: Thw) -> Tensor:
    """(B, T, H, W, C) -> (B*nW, N, C), windows in (t, h, w) raster order, tokens likewise."""
    B, T, H, W, C = x.shape
    wt, wh, ww = window
    x = x.view(B, T // wt, wt, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wt * wh * ww, C)  # (B*nW, wt*wh*ww, C)


@constant_cache(maxsize=32)
def _attention_mask_cached(padded: Thw, window: Thw, shift: Thw, valid: Thw | None, device: torch.device):
    Tp, Hp, Wp = padded
    shifted = any(s > 0 for s in shift)
    mask = None
    if shifted:
        # Label the regions that the cyclic shift brought together; tokens attend within a label.
        labels = torch.zeros(1, Tp, Hp, Wp, 1, device=device)
        cnt = 0
        spans = [((0, p - w), (p - w, p - s), (p - s, p)) if s > 0 else ((0, p),)
                 for p, w, s in zip(padded, window, shift)]
        for t0, t1 in spans[0]:
            for h0, h1 in spans[1]:
                for w0, w1 in spans[2]:
                    labels[:, t0:t1, h0:h1, w0:w1] = cnt
                    cnt += 1
        lab = window_partition(labels, window).squeeze(-1)  # (nW, N)
        mask = (lab[:, None, :] != lab[:, :, None]).float() * _MASK_VALUE  # (nW, N, N)
    if valid is not None and tuple(valid) != tuple(padded):
        pad = torch.ones(1, Tp, Hp, Wp, 1, device=device, dtype=torch.bool)
        pad[:, :valid[0], :valid[1], :valid[2]] = False
        if shifted:
            pad = torch.roll(pad, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        pad = window_partition(pad, window).squeeze(-1)  # (nW, N), True at pad tokens
        key_mask = pad[:, None, :].float() * _MASK_VALUE  # (nW, 1, N): no query attends to a pad key
        mask = key_mask.expand(-1, pad.shape[1], -1) if mask is None else torch.minimum(mask, key_mask)
    return mask


def attention_mask(padded: Thw, window: Thw, shift: Thw, valid: Thw | None = None,
                   device: "torch.device | str" = "cpu") -> Tensor | None:
    """Additive mask (nW, N, N) of 0 / -100 for the windows of a padded map, or None if not needed.

    Shifted windows may not mix tokens that the cyclic shift brought together (the official mask).
    valid: the unpadded (T, H, W); when given, pad tokens are masked as keys (faithful=False).
    """
    return _attention_mask_cached(tuple(padded), tuple(window), tuple(shift),
                                  None if valid is None else tuple(valid), torch.device(device))


@constant_cache(maxsize=32)
def _window_order_cached(thw: Thw, padded: Thw, window: Thw, shift: Thw, device: torch.device):
    Tp, Hp, Wp = padded
    T, H, W = thw
    pos = torch.arange(Tp * Hp * Wp, device="cpu").view(1, Tp, Hp, Wp, 1)  # flat position in the padded map
    if any(shift):
        pos = torch.roll(pos, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    order = window_partition(pos, window).reshape(-1)  # padded position at every (window, token) slot
    slot = torch.empty_like(order)
    slot[order] = torch.arange(order.numel(), device="cpu")  # inverse: the slot of every padded position
    real = slot.view(Tp, Hp, Wp)[:T, :H, :W].reshape(-1)  # slots of the unpadded tokens, raster order
    return order.to(device), real.to(device)


def window_order(thw: Thw, padded: Thw, window: Thw, shift: Thw,
                 device: "torch.device | str" = "cpu") -> tuple[Tensor, Tensor]:
    """Gather indices that do roll + `window_partition` in one copy, and undo them with the crop.

    Returns (order (Lp,), restore (L,)): `x_padded.flatten(1, 3)[:, order]` lists the tokens window by
    window (B, nW*N, C); `windows.view(B, nW*N, C)[:, restore]` puts the unpadded tokens back in raster
    order (B, T*H*W, C). torch.roll over three dims is three concatenations, this is one gather.
    """
    return _window_order_cached(tuple(thw), tuple(padded), tuple(window), tuple(shift), torch.device(device))


class _Geometry(NamedTuple):
    """Everything one block needs about its windows; shared by the blocks of a stage."""

    window: Thw
    pad: Thw  # zeros added at the end of T, H, W
    order: Tensor  # (Lp,) see `window_order`
    restore: Tensor  # (L,)
    mask: Tensor | None  # (nW, N, N) or None
    index: Tensor  # (N, N) rows of the bias table


# ---------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------


def shifted_window_attention_3d(
    x: Tensor,
    qkv_weight: Tensor,
    qkv_bias: Tensor | None,
    proj_weight: Tensor,
    proj_bias: Tensor | None,
    bias: Tensor,
    num_heads: int,
    window: Thw,
    order: Tensor,
    restore: Tensor,
    pad: Thw = (0, 0, 0),
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Multi-head self-attention within (shifted) 3D windows: (B, T, H, W, C) -> (B, T, H, W, C).

    bias: (nh, N, N) relative position bias; mask: (nW, N, N) additive mask or None; order/restore
    from `window_order` (they carry the cyclic shift). The map is zero-padded at the end by `pad`,
    gathered window by window, attended, and gathered back without the pad. q, k, v and the output
    projection run on the padded windows, as in the official code.
    """
    B, T, H, W, C = x.shape
    if any(pad):
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))  # zeros at the end of W, H, T
    N = math.prod(window)
    windows = x.reshape(B, -1, C).index_select(1, order).view(-1, N, C)  # (B, Lp, C) -> (B*nW, N, C)
    Bw = windows.shape[0]
    nW, hd = Bw // B, C // num_heads
    qkv = F.linear(windows, qkv_weight, qkv_bias).view(Bw, N, 3, num_heads, hd)  # (B*nW, N, 3, nh, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B*nW, nh, N, hd), strided views
    if mask is None:
        # One (1, nh, N, N) mask broadcast over all windows: the fast path of the CPU/GPU kernels.
        attn_mask = bias.to(q.dtype)[None]
    else:
        attn_mask = (bias[None] + mask.to(bias.dtype)[:, None]).to(q.dtype)  # (nW, nh, N, N)
        if B > 1:
            # Windows differ by their mask: put windows beside heads so that the (nW*nh, N, N) mask
            # broadcasts over the batch instead of being copied B times.
            q, k, v = (t.reshape(B, nW * num_heads, N, hd) for t in (q, k, v))
            attn_mask = attn_mask.view(1, nW * num_heads, N, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    out = out.reshape(Bw, num_heads, N, hd).transpose(1, 2).reshape(Bw, N, C)  # (B*nW, nh, N, hd) -> (B*nW, N, C)
    out = F.linear(out, proj_weight, proj_bias)
    out = out.view(B, -1, C).index_select(1, restore)  # (B, nW*N, C) -> (B, T*H*W, C), pad dropped
    return out.view(B, T, H, W, C)


class WindowAttention3d(nn.Module):
    """Window attention with a learned relative position bias table: (B, T, H, W, C) -> same."""

    def __init__(self, dim: int, num_heads: int, window: Thw, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = tuple(window)  # the window the bias table is sized for
        Wd, Wh, Ww = self.window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * Wd - 1) * (2 * Wh - 1) * (2 * Ww - 1), num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def position_bias(self, index: Tensor) -> Tensor:
        """(N, N) table rows -> (nh, N, N) bias."""
        bias = self.relative_position_bias_table[index]  # (N, N, nh)
        return bias.permute(2, 0, 1).contiguous()  # (N, N, nh) -> (nh, N, N)

    def forward(self, x: Tensor, geom: _Geometry) -> Tensor:
        out = shifted_window_attention_3d(
            x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias,
            self.position_bias(geom.index), self.num_heads, geom.window, geom.order, geom.restore, geom.pad,
            geom.mask, self.attn_drop if self.training else 0.0)
        return self.proj_drop(out)


class SwinBlock3d(nn.Module):
    """Pre-norm Swin block on a channels-last map: (B, T, H, W, C) -> (B, T, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window: Thw, shifted: bool, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 eps: float = 1e-5):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention3d(dim, num_heads, window, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, geom: _Geometry) -> Tensor:
        # Pads are added after norm1 (inside the attention), so pad tokens are exact zeros there.
        x = x + self.drop_path(self.attn(self.norm1(x), geom))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging3d(nn.Module):
    """2x2 spatial merging: (B, T, H, W, C) -> (B, T, ceil(H/2), ceil(W/2), 2C); T is kept."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # Order of the official code: (even h, even w), (odd h, even w), (even h, odd w), (odd h, odd w).
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))  # (B, T, H/2, W/2, 4C) -> (B, T, H/2, W/2, 2C)


class SwinStage3d(nn.Module):
    """`depth` blocks, alternately unshifted and shifted, then optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Thw, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_path: Sequence[float], downsample: bool, eps: float,
                 faithful: bool, temporal_window: str):
        super().__init__()
        self.window = tuple(window)
        self.faithful = faithful
        self.temporal_window = temporal_window
        self.blocks = nn.ModuleList([
            SwinBlock3d(dim, num_heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                        drop=drop, attn_drop=attn_drop, drop_path=drop_path[i], eps=eps)
            for i in range(depth)])
        self.downsample = PatchMerging3d(dim, eps=eps) if downsample else None

    def geometry(self, thw: Thw, device: torch.device) -> tuple[_Geometry, _Geometry]:
        """(unshifted, shifted) window geometry for a map of `thw` tokens."""
        window, shift = stage_window(thw, self.window, self.temporal_window)
        pad = tuple((w - s % w) % w for s, w in zip(thw, window))
        padded = tuple(s + p for s, p in zip(thw, pad))
        valid = None if self.faithful else thw  # faithful: pad tokens stay unmasked
        index = relative_position_index(window, self.window, self.faithful, device)
        geoms = []
        for sh in ((0, 0, 0), shift):
            order, restore = window_order(thw, padded, window, sh, device)
            geoms.append(_Geometry(window, pad, order, restore, attention_mask(padded, window, sh, valid, device),
                                   index))
        return geoms[0], geoms[1]

    def forward(self, x: Tensor) -> Tensor:
        plain, shifted = self.geometry(tuple(x.shape[1:4]), x.device)
        for blk in self.blocks:
            x = blk(x, shifted if blk.shifted else plain)
        return self.downsample(x) if self.downsample is not None else x


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------


class SwinTransformer3d(VideoClassifier):
    """Video Swin Transformer with optional STTS selectors before its stages.

    Args:
        num_classes: classifier outputs (0: no head, forward returns pooled features).
        in_chans: input channels.
        patch_size: (t, h, w) patch of the embedding.
        embed_dim: channels of stage 0 (doubled by every patch merging).
        depths, num_heads: blocks and heads per stage.
        window_size: (t, h, w) attention window (its bias table is sized for it).
        mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: as in timm.
        head_drop: dropout before the classifier (mmaction I3DHead: 0.5).
        num_frames, img_size: the default clip (3, num_frames, img_size, img_size), used by count_flops
            and check_selection; any clip runs.
        faithful: reproduce the official treatment of padded and spatially shrunk windows (unmasked pad
            tokens, `index[:N, :N]` bias), as official checkpoints expect; False masks pads and uses the
            true bias index.
        temporal_window: "pad" (official: pad T to a multiple of the window) or "fit" (window-aware:
            shrink the temporal window so that T splits into equal windows; see the module docstring).
    """

    selection_kinds = "TS"

    def __init__(
        self,
        num_classes: int = 400,
        in_chans: int = 3,
        patch_size: Thw = (2, 4, 4),
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Thw = (8, 7, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.5,
        num_frames: int = 32,
        img_size: int = 224,
        faithful: bool = True,
        temporal_window: str = "pad",
        eps: float = 1e-5,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        if temporal_window not in _TEMPORAL_WINDOWS:
            raise ValueError(f"temporal_window must be one of {_TEMPORAL_WINDOWS}, got {temporal_window!r}")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.window_size = tuple(window_size)
        self.faithful = faithful
        self.temporal_window = temporal_window
        self.input_size = (in_chans, num_frames, img_size, img_size)  # default input, without batch
        # Non-overlapping patches + LayerNorm; a clip the patches do not tile is zero-padded (official).
        self.patch_embed = PatchEmbed3d(in_chans, embed_dim, patch_size, pad_to_patches=True, norm=True, eps=eps)
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # stochastic depth grows linearly
        self.stage_dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            self.layers.append(SwinStage3d(
                self.stage_dims[i], depth, heads, self.window_size, mlp_ratio, qkv_bias, drop_rate,
                attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < len(depths) - 1,
                eps=eps, faithful=faithful, temporal_window=temporal_window))
        self.num_features = self.stage_dims[-1]
        self.norm = nn.LayerNorm(self.num_features, eps=eps)
        self.head_drop = nn.Dropout(head_drop) if head_drop > 0 else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.selectors = nn.ModuleDict()  # filled by stts.patch
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        init_weights_trunc_normal(self, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("relative_position_bias_table"):
                nn.init.trunc_normal_(p, std=0.02)

    def set_window_mode(self, *, faithful: bool | None = None, temporal_window: str | None = None) -> None:
        """Switch faithful / temporal_window after construction (same weights, no new parameters)."""
        if temporal_window is not None and temporal_window not in _TEMPORAL_WINDOWS:
            raise ValueError(f"temporal_window must be one of {_TEMPORAL_WINDOWS}, got {temporal_window!r}")
        for stage in self.layers:
            if faithful is not None:
                stage.faithful = self.faithful = faithful
            if temporal_window is not None:
                stage.temporal_window = self.temporal_window = temporal_window
        if getattr(self, "model_kwargs", None) is not None:  # so that stts.save_model records the mode
            self.model_kwargs.update({k: v for k, v in (("faithful", faithful), ("temporal_window", temporal_window))
                                      if v is not None})

    # -- the pieces of VideoClassifier's forward and selection surface -----------------------------
    # The map stays channels-last (B, T, H, W, C) from the stem to the head; selectors see it flattened.

    selection_place = "stage"

    def _places(self) -> nn.ModuleList:
        return self.layers

    def _place_dims(self) -> list[int]:
        return list(self.stage_dims)

    def _grid_after_place(self, index: int, thw: Thw) -> Thw:
        T, H, W = thw
        if self.layers[index].downsample is None:
            return thw
        return T, math.ceil(H / 2), math.ceil(W / 2)  # patch merging

    def _embed(self, x: Tensor) -> tuple[Tensor, Thw]:
        tokens, (T, H, W) = self.patch_embed(x)  # (B, T*H*W, C)
        return self.pos_drop(tokens.view(x.shape[0], T, H, W, -1)), (T, H, W)  # (B, T, H, W, C)

    def _run_place(self, index: int, x: Tensor, thw: Thw) -> tuple[Tensor, Thw]:
        x = self.layers[index](x)
        return x, tuple(x.shape[1:4])

    def _select(self, index: int, x: Tensor, thw: Thw, record: dict | None, seeds: Tensor | None):
        """Run the selectors before stage `index` on the channels-last map, flattened for them."""
        B, T, H, W, C = x.shape
        tokens, (T, H, W) = run_selectors(self.selectors, index, x.reshape(B, T * H * W, C), (T, H, W), record,
                                          seeds)
        return tokens.reshape(B, T, H, W, C), (T, H, W)  # (B, T*H*W, C) -> (B, T, H, W, C)

    def valid_anchor_sizes(self, index: int) -> list[int]:
        """Anchor sizes a before stage `index` (default input) that keep every later stage's windows
        whole: at each later stage the map side is a multiple of the spatial window or fits in one."""
        _, H, _ = self.grid_before(index)
        ws = self.window_size[1]
        sizes = []
        for a in range(1, H + 1):
            side, ok = a, True
            for _ in range(index, len(self.layers)):
                ok &= side <= ws or side % ws == 0
                side = math.ceil(side / 2)
            if ok:
                sizes.append(a)
        return sizes

    def check_anchor(self, spec, a: int, thw: tuple[int, int, int], where: str) -> None:
        """Anchors must keep the window partition valid at every later stage (`valid_anchor_sizes`): at
        224 (56x56 before stage 0, 28, 14, 7 before stages 1-3) that is a <= 7 or a in {14, 28, 56} before
        stage 0, a <= 7 or {14, 28} before stage 1, a <= 7 or 14 before stage 2, any a <= 7 before stage 3."""
        _, H, W = thw
        if H != W:
            raise ValueError(f"{spec}: anchors need a square map: {where}")
        valid = self.valid_anchor_sizes(spec.before)
        if a not in valid:
            raise ValueError(f"{spec} gives a {a}x{a} anchor, which breaks the {self.window_size[1]}x"
                             f"{self.window_size[2]} window partition of later stages: {where}; valid anchor "
                             f"sizes there: {valid} (give one as S{spec.before}_a<size>)")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Map (B, T, H, W, C) -> logits (B, num_classes), or the pooled feature (B, C) if pre_logits."""
        x = self.head_drop(x.mean(dim=(1, 2, 3)))  # (B, T, H, W, C) -> (B, C)
        return x if pre_logits else self.head(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative position bias tables and norms (Swin's recipe)."""
        return {n for n, _ in self.named_parameters()
                if n.endswith("relative_position_bias_table") or ".norm" in f".{n}"}


# ---------------------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict, model: SwinTransformer3d) -> dict:
    """Official (mmaction2 Recognizer3D) keys -> ours; stts checkpoints pass through unchanged.

    `backbone.` is dropped, `cls_head.fc_cls.*` -> `head.*`, the STTS temporal scorer
    `time_score_predictor.0.score_network.{in_conv,out_conv}.*` -> `selectors.T0.scorer.{embed,head}.*`.
    The int64 `relative_position_index` buffers are checked against the index we compute and dropped.
    """
    if not any(k.startswith(("backbone.", "cls_head.")) for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        if k.startswith("backbone."):
            k = k[len("backbone."):]
        elif k.startswith("cls_head.fc_cls."):
            k = "head." + k[len("cls_head.fc_cls."):]
        elif k.startswith("cls_head."):
            continue  # e.g. mmaction's consensus/dropout have no weights; anything else is not ours
        if k.endswith("relative_position_index"):
            window = model.window_size
            expected = relative_position_index(window, window)
            if tuple(v.shape) != tuple(expected.shape) or not torch.equal(v.long().cpu(), expected):
                raise ValueError(f"{k}: the checkpoint's relative position index (shape {tuple(v.shape)}) is not "
                                 f"the one of a {window} window; is window_size right?")
            continue
        if k.startswith("time_score_predictor."):
            # The official Swin has one temporal scorer, before stage 0 (ModuleList index 0).
            rest = k.split(".score_network.", 1)[1]
            k = "selectors.T0.scorer." + rest.replace("in_conv.", "embed.", 1).replace("out_conv.", "head.", 1)
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------
# Builders and registered variants
# ---------------------------------------------------------------------------------------------------

# Video Swin configs (mmaction2 swin_{tiny,small,base}.py with patch 2x4x4, window 8x7x7, 32x2 clips);
# drop path only acts in training.
_SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.1)
_SWIN_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
_SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.3)

# The STTS Video Swin models were trained with the authors' diagonal estimator; sigma 0.05 is stts's
# default (the paper gives 0.1 for MViT only).
STTS_SWIN_SETTINGS = dict(num_samples=500, sigma=0.05, jacobian="diagonal")

register_family(SwinTransformer3d, checkpoint_filter=checkpoint_filter_fn)


def _create_swin3d(defaults: dict, kwargs: dict) -> SwinTransformer3d:
    return SwinTransformer3d(**{**defaults, **kwargs})


def _zoo_meta(name: str) -> dict:
    z = ZOO[name]
    return dict(top1=z.top1, readme_gflops=z.readme_gflops, official_gflops=z.official_gflops,
                official_gflops_hooks=z.official_gflops_hooks, frames_kept=z.frames_kept,
                official_config=z.official_config, dataset="kinetics400")


def _stts(name: str) -> dict:
    return dict(plan=parse_plan(ZOO[name].plan, **STTS_SWIN_SETTINGS), meta=_zoo_meta(name))


@register_model(meta=_zoo_meta("swin3d_t"))
def swin3d_t(**kwargs) -> SwinTransformer3d:
    """Video Swin-T, 32x2 clips at 224 (16x56x56 tokens), dense."""
    return _create_swin3d(_SWIN_T, kwargs)


@register_model(meta=dict(dataset="kinetics400", paper_gflops=166.0))
def swin3d_s(**kwargs) -> SwinTransformer3d:
    """Video Swin-S, 32x2 clips at 224, dense."""
    return _create_swin3d(_SWIN_S, kwargs)


@register_model(meta=_zoo_meta("swin3d_b"))
def swin3d_b(**kwargs) -> SwinTransformer3d:
    """Video Swin-B, 32x2 clips at 224, dense."""
    return _create_swin3d(_SWIN_B, kwargs)


@register_model("swin3d_b_stts_t0.9", **_stts("swin3d_b_stts_t0.9"))
def _swin3d_b_stts_t09(**kwargs) -> SwinTransformer3d:
    """Video Swin-B, 14 of 16 temporal tokens before stage 0."""
    return swin3d_b(**kwargs)


@register_model("swin3d_b_stts_t0.8", **_stts("swin3d_b_stts_t0.8"))
def _swin3d_b_stts_t08(**kwargs) -> SwinTransformer3d:
    """Video Swin-B, 12 of 16 temporal tokens."""
    return swin3d_b(**kwargs)


@register_model("swin3d_b_stts_t0.6", **_stts("swin3d_b_stts_t0.6"))
def _swin3d_b_stts_t06(**kwargs) -> SwinTransformer3d:
    """Video Swin-B, 10 of 16 temporal tokens."""
    return swin3d_b(**kwargs)


@register_model("swin3d_b_stts_t0.5", **_stts("swin3d_b_stts_t0.5"))
def _swin3d_b_stts_t05(**kwargs) -> SwinTransformer3d:
    """Video Swin-B, 9 of 16 temporal tokens."""
    return swin3d_b(**kwargs)


@register_model("swin3d_b_stts_t0.4", **_stts("swin3d_b_stts_t0.4"))
def _swin3d_b_stts_t04(**kwargs) -> SwinTransformer3d:
    """Video Swin-B, 6 of 16 temporal tokens."""
    return swin3d_b(**kwargs)
