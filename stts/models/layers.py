"""What the backbones share: the classifier interface, MLP, stochastic depth, weight init.

Backbone-specific attention (MViT pooling attention, Swin window attention, ViT joint attention)
lives in the backbone's own file.
"""

from __future__ import annotations

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
