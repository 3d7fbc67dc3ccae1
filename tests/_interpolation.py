"""Resampling written out for the tests: per-axis interpolation matrices from the published formulas.

Both follow the half-pixel convention (align_corners=False): output sample i of n_out looks at source
position x = (i + 0.5) * n_in / n_out - 0.5 and clamps indices to the edge.
- linear: x clamped at 0, weights (1 - t, t) on floor(x), floor(x) + 1;
- cubic: Keys' cubic convolution with a = -0.75 on floor(x) - 1 .. floor(x) + 2 (OpenCV / PyTorch).
A separable resize of a grid G is then M_axis0 @ G @ M_axis1^T (and so on per axis).
"""

from __future__ import annotations

import math

import torch


def _keys_cubic(d: float, a: float = -0.75) -> float:
    d = abs(d)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def linear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of 1-D linear interpolation."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        f = math.floor(x)
        t = x - f
        m[i, min(f, n_in - 1)] += 1 - t
        m[i, min(f + 1, n_in - 1)] += t
    return m


def cubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of 1-D cubic convolution (one axis of bicubic)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        f = math.floor(x)
        t = x - f
        for j in range(f - 1, f + 3):
            m[i, min(max(j, 0), n_in - 1)] += _keys_cubic(t - (j - f))
    return m


def bicubic(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H0, W0, C) -> (H, W, C), float64."""
    mh, mw = cubic_matrix(grid.shape[0], size[0]), cubic_matrix(grid.shape[1], size[1])
    return torch.einsum("hi,wj,ijc->hwc", mh, mw, grid.double())


def linear(line: torch.Tensor, n: int) -> torch.Tensor:
    """(T0, C) -> (T, C), float64."""
    return linear_matrix(line.shape[0], n) @ line.double()


def trilinear(grid: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """(T0, H0, W0, C) -> (T, H, W, C), float64."""
    mt, mh, mw = (linear_matrix(n0, n) for n0, n in zip(grid.shape[:3], size))
    return torch.einsum("ti,hj,wk,ijkc->thwc", mt, mh, mw, grid.double())
