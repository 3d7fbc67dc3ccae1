"""Plain video ViT (joint space-time attention over tubelet tokens) with STTS token selection.

    model = stts.create_model("vit_b_16x16", num_classes=400)             # VideoMAE-B geometry, dense
    model = stts.create_model("vit_b_16x16", selection="T0_0.5")          # keep 4 of 8 temporal slices
    model = stts.create_model("vit_b_16x16", selection="K4_0.5")          # keep half the tokens before block 4
    model = stts.create_model("vit_s_16x16", selection="T0_0.5-S0_0.5")   # frames, then a 9x9 of 14x14 anchor
    model = vit_from_videomae("videomae-base-finetuned-kinetics/")  # from stts.models.hf: HF VideoMAE weights
    logits, kept = model(x, return_selections=True)     # x: (B, 3, T, H, W); kept: {"T0": Selection}

Papers: Z. Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised
Video Pre-Training", NeurIPS 2022 (arXiv 2203.12602); A. Arnab et al., "ViViT: A Video Vision
Transformer", ICCV 2021 (arXiv 2103.15691, the joint space-time model); J. Wang et al., "Efficient Video
Transformers with Spatial-Temporal Token Selection", ECCV 2022 (arXiv 2111.11591).

Credits: the layout follows timm's `vision_transformer.py` and the official VideoMAE fine-tuning model
(MCG-NJU/VideoMAE, CC-BY-NC 4.0; its key names are kept so its checkpoints and Hugging Face
`VideoMAEForVideoClassification` weights convert without surprises). Every line is written anew.

Structure: Conv3d tubelet embedding (2x16x16) -> + position embedding (VideoMAE's fixed 1-D sin-cos
table over the flattened (t, h, w) index, or learned) -> [class token] -> `depth` pre-norm blocks of
joint multi-head attention (`F.scaled_dot_product_attention`) and MLP -> mean over tokens + LayerNorm
(`fc_norm`, VideoMAE) or final LayerNorm + class token -> Linear.

Selection: temporal (T), anchor (S) and token-level (K) selectors may run before any block. Tokens
carry their position embeddings before any selection, so the blocks after a selector need no grid: a
ViT is the backbone where dropping tokens costs nothing in structure. T and S keep a (T, H, W) grid;
after K the map is a plain sequence (no T or S after it, enforced by the plan parser).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stts.models._registry import register_family, register_model
from stts.models.base import VideoClassifier
from stts.models.layers import DropPath, Mlp, PatchEmbed3d, constant_cache, init_weights_trunc_normal

__all__ = ["VisionTransformer3d", "Attention", "Block", "sincos_table", "checkpoint_filter_fn"]

Thw = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------


@constant_cache(maxsize=8)
def _sincos_cpu(n: int, dim: int) -> Tensor:
    pos = torch.arange(n, dtype=torch.float64, device="cpu")[:, None]  # (n, 1)
    # Channel pairs (2i, 2i+1) share the frequency 1 / 10000^(2i / dim): sin in 2i, cos in 2i+1.
    freq = torch.pow(10000.0, 2 * (torch.arange(dim, dtype=torch.float64, device="cpu") // 2) / dim)  # (dim,)
    angle = pos / freq  # (n, dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()[None]  # (1, n, dim), float32 as VideoMAE stores it


def sincos_table(n: int, dim: int) -> Tensor:
    """VideoMAE's fixed position table over n flattened positions: (1, n, dim), interleaved sin/cos."""
    return _sincos_cpu(int(n), int(dim)).clone()


class Attention(nn.Module):
    """Joint multi-head self-attention over all tokens: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads)  # (B, N, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, N, hd)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, nh, N, hd) -> (B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(round(dim * mlp_ratio)), drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------


class VisionTransformer3d(VideoClassifier):
    """Video ViT with joint space-time attention and optional STTS selectors before its blocks
    (temporal, anchor and token-level: its blocks need no grid).

    Args:
        num_classes: classifier outputs (0: no head).
        in_chans, num_frames, img_size: the default clip (C, T, H, W) (count_flops, check_selection,
            the size of a learned position embedding); other clip sizes run too.
        patch_size, tubelet_size: a token covers tubelet_size x patch_size x patch_size pixels.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size.
        drop_rate, attn_drop_rate, drop_path_rate, head_drop: regularisation (training only).
        pos_embed: "sincos" (VideoMAE's fixed table, a buffer) or "learned" (a parameter).
        class_token: prepend a learned class token (ViViT / timm); VideoMAE has none.
        global_pool: "avg" (mean over the tokens, VideoMAE) or "token" (the first token).
        fc_norm: LayerNorm after pooling instead of before it; default: True for "avg".
        eps, fc_norm_eps: LayerNorm epsilons of the blocks and final norm, and of fc_norm (default eps).
            VideoMAE: 1e-6 everywhere; Hugging Face VideoMAE: 1e-12 in the blocks, 1e-5 in fc_norm.
    """

    selection_kinds = "TSK"

    def __init__(
        self,
        num_classes: int = 400,
        in_chans: int = 3,
        num_frames: int = 16,
        img_size: int = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.0,
        pos_embed: str = "sincos",
        class_token: bool = False,
        global_pool: str = "avg",
        fc_norm: bool | None = None,
        eps: float = 1e-6,
        fc_norm_eps: float | None = None,
    ):
        super().__init__()
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        if global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool must be 'avg' or 'token', got {global_pool!r}")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.pos_embed_type = pos_embed
        self.input_size = (in_chans, num_frames, img_size, img_size)  # default input, without batch
        self.patch_embed = PatchEmbed3d(in_chans, embed_dim, (tubelet_size, patch_size, patch_size))  # tubelets
        self.patch_grid = self.patch_embed.grid(num_frames, img_size, img_size)
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        n = math.prod(self.patch_grid)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + n, embed_dim))
        else:
            # A fixed function of the grid: kept out of the state dict (VideoMAE and HF do not save it).
            self.register_buffer("pos_embed", sincos_table(n, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth grows linearly
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], eps)
            for i in range(depth)])
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=fc_norm_eps or eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(head_drop) if head_drop > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.selectors = nn.ModuleDict()  # filled by stts.patch
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        init_weights_trunc_normal(self, std=0.02)
        if self.pos_embed_type == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    # -- the pieces of VideoClassifier's forward and selection surface -----------------------------

    def _places(self) -> nn.ModuleList:
        return self.blocks

    def _place_dims(self) -> list[int]:
        return [self.embed_dim] * len(self.blocks)

    def _run_place(self, index: int, x: Tensor, thw: Thw) -> tuple[Tensor, Thw]:
        return self.blocks[index](x), thw  # tokens carry their positions: no grid needed

    # -- forward -----------------------------------------------------------------------------------

    def _pos_embed(self, x: Tensor, thw: Thw) -> Tensor:
        """Add position embeddings (and the class token): (B, N, C) -> (B, P + N, C)."""
        B, N, C = x.shape
        P = self.num_prefix_tokens
        if self.pos_embed_type == "sincos":
            # The table is a function of N only, so another clip size gets its own table (as VideoMAE).
            pos = self.pos_embed if self.pos_embed.shape[1] == N else sincos_table(N, C).to(x.device)
            x = x + pos.to(x.dtype)
            cls_pos = None
        else:
            pos = self.pos_embed
            if thw != self.patch_grid:
                pos = _resize_pos_embed(pos, P, self.patch_grid, thw)
            x = x + pos[:, P:]
            cls_pos = pos[:, :P]
        if self.cls_token is not None:
            cls = self.cls_token if cls_pos is None else self.cls_token + cls_pos
            x = torch.cat([cls.expand(B, -1, -1), x], dim=1)  # (B, 1 + N, C)
        return x

    def _embed(self, x: Tensor) -> tuple[Tensor, Thw]:
        x, thw = self.patch_embed(x)  # (B, T*H*W, C)
        return self.pos_drop(self._pos_embed(x, thw)), thw  # (B, P + T*H*W, C)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, P + N, C) -> logits (B, num_classes), or the pooled feature (B, C) if pre_logits."""
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n in ("pos_embed", "cls_token")}


def _resize_pos_embed(pos: Tensor, num_prefix: int, src: Thw, dst: Thw) -> Tensor:
    """Learned joint embedding (1, P + T0*H0*W0, C) -> (1, P + T*H*W, C), trilinear over the grid."""
    C = pos.shape[-1]
    grid = pos[:, num_prefix:].reshape(1, *src, C).permute(0, 4, 1, 2, 3)  # (1, C, T0, H0, W0)
    grid = F.interpolate(grid, size=dst, mode="trilinear", align_corners=False)
    return torch.cat([pos[:, :num_prefix], grid.flatten(2).transpose(1, 2)], dim=1)  # (1, P + T*H*W, C)


# ---------------------------------------------------------------------------------------------------
# Checkpoints: stts, the official VideoMAE fine-tuning models, Hugging Face VideoMAE
# ---------------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict, model: VisionTransformer3d) -> dict:
    """VideoMAE (official or Hugging Face) keys -> ours; stts checkpoints pass through unchanged.

    Official VideoMAE keeps `attn.q_bias` / `attn.v_bias` with no k bias: they become `attn.qkv.bias`
    with zeros in the k third (a k bias adds the same q.b_k to every logit of a row, which softmax
    ignores, so zeros are exact). Hugging Face keys are translated by `stts.models.hf`.
    """
    from stts.models.hf import convert_videomae_state_dict, is_hf_videomae_state_dict

    if is_hf_videomae_state_dict(state_dict):
        return convert_videomae_state_dict(state_dict)
    sd = {}
    for k, v in state_dict.items():
        if k.startswith(("decoder.", "encoder_to_decoder.", "mask_token")):
            continue  # the VideoMAE pre-training decoder
        sd[k[len("encoder."):] if k.startswith("encoder.") else k] = v
    out = {}
    for k, v in sd.items():
        if k.endswith("attn.q_bias"):
            prefix = k[: -len("q_bias")]
            if prefix + "v_bias" not in sd:
                raise ValueError(f"{k} has no matching {prefix}v_bias in the checkpoint")
            out[prefix + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), sd[prefix + "v_bias"]])  # (3C,)
        elif k.endswith("attn.v_bias") or (k == "pos_embed" and model.pos_embed_type == "sincos"):
            continue  # v_bias merged above; a stored sin-cos table is recomputed
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------
# Builders and registered variants
# ---------------------------------------------------------------------------------------------------


def _create_vit(defaults: dict, kwargs: dict) -> VisionTransformer3d:
    return VisionTransformer3d(**{**defaults, **kwargs})


# VideoMAE fine-tuning geometry: 16 frames at 224, tubelet 2x16x16 -> 8x14x14 = 1568 tokens.
_VIT_16x16 = dict(num_frames=16, img_size=224, patch_size=16, tubelet_size=2, pos_embed="sincos",
                  global_pool="avg", eps=1e-6)


@register_model(meta=dict(dataset="kinetics400", paper_gflops=180.0, source="VideoMAE ViT-B 16x4"))
def vit_b_16x16(**kwargs) -> VisionTransformer3d:
    """ViT-B, 16 frames at 224 (8x14x14 tokens), VideoMAE fine-tuning layout (mean pool + fc_norm)."""
    return _create_vit(dict(_VIT_16x16, embed_dim=768, depth=12, num_heads=12), kwargs)


@register_model(meta=dict(dataset="kinetics400", paper_gflops=57.0, source="VideoMAE ViT-S 16x4"))
def vit_s_16x16(**kwargs) -> VisionTransformer3d:
    """ViT-S, 16 frames at 224 (8x14x14 tokens), VideoMAE fine-tuning layout."""
    return _create_vit(dict(_VIT_16x16, embed_dim=384, depth=12, num_heads=6), kwargs)


register_family(VisionTransformer3d, checkpoint_filter=checkpoint_filter_fn)
