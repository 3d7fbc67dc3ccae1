"""The STTS scorer network: a light MLP that gives every candidate token one relevance score.

    scorer = Scorer(dim=192)
    s = scorer(x)              # x (B, N, C) -> raw scores (B, N)
    s = minmax_normalize(s)    # (B, N), in [0, 1) per row

Structure (paper, Sec. 3.2): LayerNorm -> Linear(C, C) -> GELU embeds each token; the first half of
the channels stays per token ("local"), the second half is averaged over the N candidates ("global")
and broadcast back; an MLP C -> C/2 -> C/4 -> 1 with GELUs turns the concatenation into a score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Scorer", "minmax_normalize"]


def minmax_normalize(scores: Tensor, dim: int = -1, eps: float = 1e-5) -> Tensor:
    """(s - min) / (max - min + eps) along `dim`, as the official code normalises before top-k."""
    lo = scores.amin(dim=dim, keepdim=True)
    hi = scores.amax(dim=dim, keepdim=True)
    return (scores - lo) / (hi - lo + eps)


class Scorer(nn.Module):
    """Scores N candidate tokens from their features and a global context: (B, N, C) -> (B, N).

    Args:
        dim: C, channels of the candidates (for frames, 2x the token channels: mean and max).
        eps: LayerNorm epsilon; 1e-5 matches the official checkpoints.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        if dim < 4 or dim % 4:
            raise ValueError(f"Scorer dim must be a multiple of 4 and >= 4, got {dim}")
        self.dim = dim
        self.embed = nn.Sequential(nn.LayerNorm(dim, eps=eps), nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        x = self.embed(x)  # (B, N, C)
        local, context = x.split([C // 2, C - C // 2], dim=-1)  # (B, N, C/2) each
        context = context.mean(dim=1, keepdim=True).expand(B, N, C - C // 2)  # (B, 1, C/2) -> (B, N, C/2)
        return self.head(torch.cat([local, context], dim=-1)).squeeze(-1)  # (B, N, 1) -> (B, N)
