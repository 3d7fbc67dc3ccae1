"""Naive selection, written out with loops, to check what a backbone's selectors see and pass on.

Each function takes the token grid entering a selector (B, T, H, W, C), the selector module (for its
scorer) and the `Selection` the backbone recorded; it checks that the recorded scores are those of that
grid and that the choice is their top-K (top-1 per frame for anchors), and returns the kept tokens
gathered by hand. A backbone that feeds its selector the wrong tokens, or passes on anything but the
gathered ones, fails the comparison of the next block's input (or of the output) with the naive chain.
The recorded selection may live on another device than `grid` (a model run on CUDA, checked on the CPU).
"""

from __future__ import annotations

import torch


def minmax(raw: torch.Tensor) -> torch.Tensor:
    """The official score normalisation over the last dim: (s - min) / (max - min + 1e-5)."""
    lo, hi = raw.min(-1, keepdim=True).values, raw.max(-1, keepdim=True).values
    return (raw - lo) / (hi - lo + 1e-5)


def naive_temporal(grid: torch.Tensor, sel, kept, k: int) -> torch.Tensor:
    """(B, T, H, W, C) -> the k kept frames (B, k, H, W, C), in temporal order."""
    B, T, H, W, C = grid.shape
    feats = torch.stack([torch.stack([torch.cat([grid[b, t].reshape(H * W, C).mean(0),
                                                  grid[b, t].reshape(H * W, C).max(0).values])
                                      for t in range(T)]) for b in range(B)])  # (B, T, 2C)
    with torch.no_grad():
        scores = minmax(sel.scorer(feats))  # (B, T)
    assert kept.thw_in == (T, H, W)
    kept_scores = kept.scores.cpu()
    torch.testing.assert_close(kept_scores, scores, atol=1e-5, rtol=1e-5)
    out = []
    for b in range(B):
        best = sorted(sorted(range(T), key=lambda t: -kept_scores[b, t].item())[:k])
        assert kept.indices[b].tolist() == best
        out.append(torch.stack([grid[b, t] for t in best]))
    return torch.stack(out)


def naive_anchor(grid: torch.Tensor, sel, kept, a: int, s: int) -> torch.Tensor:
    """(B, T, H, W, C) -> the best a x a window of every frame (B, T, a, a, C), row-major positions."""
    B, T, H, W, C = grid.shape
    starts = [(r, c) for r in range(0, H - a + 1, s) for c in range(0, W - a + 1, s)]
    assert kept.thw_in == (T, H, W) and kept.scores.shape == (B, T, len(starts))
    kept_scores, kept_boxes = kept.scores.cpu(), kept.boxes.cpu()
    out = torch.empty(B, T, a, a, C, dtype=grid.dtype)
    for b in range(B):
        for t in range(T):
            with torch.no_grad():
                token_scores = sel.scorer(grid[b, t].reshape(1, H * W, C))[0].view(H, W)
            means = torch.stack([token_scores[r:r + a, c:c + a].mean() for r, c in starts])
            # Window means of an untrained scorer are close; min-max magnifies their rounding.
            torch.testing.assert_close(kept_scores[b, t], minmax(means), atol=2e-3, rtol=0)
            best = int(kept.indices[b, t])
            assert best == int(kept_scores[b, t].argmax())
            r, c = starts[best]
            assert kept_boxes[b, t].tolist() == [r, c, a, a]
            out[b, t] = grid[b, t, r:r + a, c:c + a]
    return out


def naive_tokens(tokens: torch.Tensor, sel, kept, k: int) -> torch.Tensor:
    """(B, N, C) -> the k best tokens (B, k, C), in their order."""
    with torch.no_grad():
        scores = minmax(sel.scorer(tokens))  # (B, N)
    kept_scores = kept.scores.cpu()
    torch.testing.assert_close(kept_scores, scores, atol=1e-5, rtol=1e-5)
    out = []
    for b in range(tokens.shape[0]):
        best = sorted(sorted(range(tokens.shape[1]), key=lambda i: -kept_scores[b, i].item())[:k])
        assert kept.indices[b].tolist() == best
        out.append(tokens[b, best])
    return torch.stack(out)
