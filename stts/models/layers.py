"""What the backbones share: the classifier interface, MLP, stochastic depth, weight init.

Backbone-specific attention (MViT pooling attention, Swin window attention, ViT joint attention)
lives in the backbone's own file.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["VideoClassifier", "Mlp", "DropPath", "drop_path", "init_weights_trunc_normal"]


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


class VideoClassifier(nn.Module):
    """The interface every stts backbone shares (timm's): `forward_features` -> `forward_head`.

    Subclasses define `forward_features(x, return_selections=False)` and `forward_head(x, pre_logits)`,
    and keep their classifier in `self.head` over `self.num_features` channels.
    """

    def forward(self, x: Tensor, return_selections: bool = False):
        """(B, C_in, T, H, W) -> logits (B, num_classes) [, {selector name: Selection}]."""
        if return_selections:
            x, record = self.forward_features(x, return_selections=True)
            return self.forward_head(x), record
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    selection_place = "block"  # what a plan's index counts ("T0": before block 0; Swin: stage)

    def check_selection(self, spec) -> None:
        """Raise ValueError if `spec` (a PlanSpec) cannot run at the default input size: no such place
        (`selection_dim`), more frames or tokens kept than there are, an anchor larger than the map, or
        what the backbone's own `check_anchor` forbids. The message names the map it would see."""
        self.selection_dim(spec.before)
        T, H, W = self.grid_before(spec.before)
        where = (f"before {self.selection_place} {spec.before} of {type(self).__name__} the map is {T}x{H}x{W} "
                 f"(T x H x W) for the default {self.input_size[1]}x{self.input_size[2]}x{self.input_size[3]} input")
        if spec.kind == "T":
            k = spec.keep if spec.keep is not None else int(T * spec.ratio + 1e-6)
            if not 1 <= k <= T:
                raise ValueError(f"{spec} keeps {k} frames: {where}")
        elif spec.kind == "S":
            # The same rule as AnchorSelector: a = floor(sqrt(int(H*W*ratio))), unless given.
            a = spec.anchor_size if spec.anchor_size is not None else math.isqrt(int(H * W * spec.ratio + 1e-6))
            if not 1 <= a <= min(H, W):
                raise ValueError(f"{spec} asks for a {a}x{a} anchor: {where}")
            self.check_anchor(spec, a, (T, H, W), where)
        elif spec.kind == "K":
            k = spec.keep if spec.keep is not None else int(T * H * W * spec.ratio + 1e-6)
            if not 1 <= k <= T * H * W:
                raise ValueError(f"{spec} keeps {k} tokens: {where}")

    def check_anchor(self, spec, a: int, thw: tuple[int, int, int], where: str) -> None:
        """Backbone-specific limits on an a x a anchor (Swin: the window partition); none by default."""
