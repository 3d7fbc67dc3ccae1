"""RandAugment on video clips: one op sequence and one set of magnitudes for every frame of a clip.

    aug = RandAugment(magnitude=7, num_ops=4, magnitude_std=0.5)   # "rand-m7-n4-mstd0.5-inc1"
    x = aug(x, generator=g)                                         # (T, C, H, W) in [0, 1], same shape

The recipe's policy (timm's string above, used by PySlowFast for MViT): draw `num_ops` ops with
replacement from the 15 below, apply each with probability 0.5 at magnitude m ~ N(7, 0.5) clipped to
[0, 10], signs random where an op has a direction. "inc1" is the increasing set: a larger m is always a
stronger change (posterize keeps fewer bits, solarize lowers its threshold, enhancements move further
from 1). We write the ops on tensors (PIL's definitions, checked against PIL in the tests) because
video needs two things image libraries do not give:
- the same parameters for every frame (one call per clip, not per frame), and
- clip-level statistics: autocontrast, equalize and contrast build one mapping from the whole clip,
  so a frame's colours do not flicker with its own histogram.
Geometric ops sample bilinearly with grey fill (128), about the frame centre for rotation and about the
top-left corner for shear (as PIL's affine transform does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RandAugment",
    "OPS",
    "auto_contrast",
    "equalize",
    "invert",
    "posterize",
    "solarize",
    "solarize_add",
    "adjust_color",
    "adjust_contrast",
    "adjust_brightness",
    "adjust_sharpness",
    "affine",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
]

FILL = 128 / 255


def _levels(x: Tensor) -> Tensor:
    """float [0, 1] -> integer levels 0..255 (long)."""
    return (x * 255).round().clamp(0, 255).long()


def _blend(x: Tensor, degenerate: Tensor, factor: float) -> Tensor:
    return (degenerate + factor * (x - degenerate)).clamp(0, 1)


def _gray(x: Tensor) -> Tensor:
    """(T, 3, H, W) -> (T, 1, H, W), ITU-R 601 luma as PIL's "L" conversion."""
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


# --- colour ops (x: (T, C, H, W) float in [0, 1]) -------------------------------------------------


def auto_contrast(x: Tensor) -> Tensor:
    """Stretch each channel's [min, max] over the clip to [0, 1]; flat channels unchanged."""
    lo = x.amin(dim=(0, 2, 3), keepdim=True)
    hi = x.amax(dim=(0, 2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
    lo = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return ((x - lo) * scale).clamp(0, 1)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per channel with one lookup table for the whole clip (PIL's algorithm)."""
    v = _levels(x)
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        vc = v[:, c]
        hist = torch.bincount(vc.flatten(), minlength=256)
        nonzero = hist[hist > 0]
        # PIL: step = (pixels - count of the brightest level) // 255; a flat channel is left alone.
        step = int((hist.sum() - nonzero[-1]) // 255)
        if step == 0:
            out[:, c] = x[:, c]
            continue
        cum = torch.cumsum(hist, 0) - hist  # pixels strictly below each level
        lut = ((cum + step // 2) // step).clamp(max=255)
        out[:, c] = lut[vc].float() / 255
    return out


def invert(x: Tensor) -> Tensor:
    return 1.0 - x


def posterize(x: Tensor, bits: int) -> Tensor:
    """Keep the `bits` high bits of each 8-bit level."""
    if bits >= 8:
        return x
    mask = ~((1 << (8 - max(bits, 0))) - 1) & 0xFF
    return (_levels(x) & mask).float() / 255


def solarize(x: Tensor, threshold: float) -> Tensor:
    """Invert levels >= threshold (threshold on the 0..256 scale)."""
    return torch.where(_levels(x) >= threshold, 1.0 - x, x)


def solarize_add(x: Tensor, add: int, threshold: int = 128) -> Tensor:
    """Add `add` levels to levels below `threshold`, clipped at 255."""
    v = _levels(x)
    return torch.where(v < threshold, (v + add).clamp(max=255).float() / 255, x)


def adjust_color(x: Tensor, factor: float) -> Tensor:
    """Saturation: 0 gives grey, 1 the input."""
    return _blend(x, _gray(x).expand_as(x), factor)


def adjust_contrast(x: Tensor, factor: float) -> Tensor:
    """Blend with the clip's mean grey level (PIL uses each image's own mean)."""
    return _blend(x, _gray(x).mean().expand_as(x), factor)


def adjust_brightness(x: Tensor, factor: float) -> Tensor:
    return (x * factor).clamp(0, 1)


def adjust_sharpness(x: Tensor, factor: float) -> Tensor:
    """Blend with PIL's SMOOTH-filtered frame (3x3 kernel, centre weight 5, border pixels unchanged)."""
    T, C, H, W = x.shape
    if H < 3 or W < 3:
        return x
    k = torch.ones(3, 3, dtype=x.dtype)
    k[1, 1] = 5
    k = (k / k.sum()).expand(C, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, k, groups=C)  # (T, C, H, W) -> (T, C, H-2, W-2)
    return _blend(x, smooth, factor)


# --- geometric ops ---------------------------------------------------------------------------------


def affine(x: Tensor, matrix: tuple[float, float, float, float, float, float], fill: float = FILL) -> Tensor:
    """PIL-style inverse affine: output pixel centre (u, v) samples input (a u + b v + c, d u + e v + f),
    coordinates in pixels with the origin at the frame's top-left corner. Same grid for every frame."""
    T, C, H, W = x.shape
    a, b, c, d, e, f = matrix
    v, u = torch.meshgrid(
        torch.arange(H, dtype=x.dtype) + 0.5, torch.arange(W, dtype=x.dtype) + 0.5, indexing="ij"
    )
    src_u = a * u + b * v + c
    src_v = d * u + e * v + f
    # pixels -> grid_sample's [-1, 1] (align_corners=False: -1 and 1 are the outer pixel edges)
    grid = torch.stack((2 * src_u / W - 1, 2 * src_v / H - 1), dim=-1)  # (H, W, 2)
    grid = grid.unsqueeze(0).expand(T, H, W, 2)
    # grid_sample pads with zeros; shift so that zero padding means `fill`.
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out + fill).clamp(0, 1)


def rotate(x: Tensor, degrees: float, fill: float = FILL) -> Tensor:
    """Rotate counter-clockwise by `degrees` about the frame centre (PIL's `Image.rotate`)."""
    H, W = x.shape[-2:]
    cx, cy = W / 2, H / 2
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    # output (u, v) <- input: rotate the offset from the centre by +t (y axis points down)
    return affine(x, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy), fill)


def shear_x(x: Tensor, factor: float, fill: float = FILL) -> Tensor:
    return affine(x, (1, factor, 0, 0, 1, 0), fill)


def shear_y(x: Tensor, factor: float, fill: float = FILL) -> Tensor:
    return affine(x, (1, 0, 0, factor, 1, 0), fill)


def translate_x(x: Tensor, pixels: float, fill: float = FILL) -> Tensor:
    """Content moves left by `pixels` (PIL's sign convention, as timm uses it)."""
    return affine(x, (1, 0, pixels, 0, 1, 0), fill)


def translate_y(x: Tensor, pixels: float, fill: float = FILL) -> Tensor:
    return affine(x, (1, 0, 0, 0, 1, pixels), fill)


# --- the policy: op name -> (x, magnitude in [0, 10], random sign) -> x ---------------------------


def _signed(v: float, negate: bool) -> float:
    return -v if negate else v


def _enhance(m: float, negate: bool) -> float:
    return 1.0 + _signed(0.9 * m / 10, negate)


OPS = {
    "AutoContrast": lambda x, m, neg: auto_contrast(x),
    "Equalize": lambda x, m, neg: equalize(x),
    "Invert": lambda x, m, neg: invert(x),
    "Rotate": lambda x, m, neg: rotate(x, _signed(30 * m / 10, neg)),
    "PosterizeIncreasing": lambda x, m, neg: posterize(x, 4 - int(4 * m / 10)),
    "SolarizeIncreasing": lambda x, m, neg: solarize(x, 256 - int(256 * m / 10)),
    "SolarizeAdd": lambda x, m, neg: solarize_add(x, int(110 * m / 10)),
    "ColorIncreasing": lambda x, m, neg: adjust_color(x, _enhance(m, neg)),
    "ContrastIncreasing": lambda x, m, neg: adjust_contrast(x, _enhance(m, neg)),
    "BrightnessIncreasing": lambda x, m, neg: adjust_brightness(x, _enhance(m, neg)),
    "SharpnessIncreasing": lambda x, m, neg: adjust_sharpness(x, _enhance(m, neg)),
    "ShearX": lambda x, m, neg: shear_x(x, _signed(0.3 * m / 10, neg)),
    "ShearY": lambda x, m, neg: shear_y(x, _signed(0.3 * m / 10, neg)),
    "TranslateXRel": lambda x, m, neg: translate_x(x, _signed(0.45 * m / 10, neg) * x.shape[-1]),
    "TranslateYRel": lambda x, m, neg: translate_y(x, _signed(0.45 * m / 10, neg) * x.shape[-2]),
}


class RandAugment:
    """`num_ops` random ops per clip, each applied with probability `prob` at magnitude ~ N(m, std).

    `__call__(x, generator)` with x: (T, C, H, W) float in [0, 1]; returns the same shape. Use
    `sample(generator)` to see the draws: a list of (op name, magnitude, negate) for the ops applied.
    """

    def __init__(
        self,
        magnitude: float = 7,
        num_ops: int = 4,
        *,
        magnitude_std: float = 0.5,
        prob: float = 0.5,
        ops: tuple[str, ...] | None = None,
    ):
        self.magnitude, self.num_ops, self.magnitude_std, self.prob = magnitude, num_ops, magnitude_std, prob
        self.ops = tuple(OPS) if ops is None else tuple(ops)
        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment op(s) {unknown}; known: {sorted(OPS)}")

    def sample(self, generator: torch.Generator | None = None) -> list[tuple[str, float, bool]]:
        chosen = []
        for _ in range(self.num_ops):
            name = self.ops[int(torch.randint(len(self.ops), (), generator=generator))]
            r = torch.rand(3, generator=generator)
            if float(r[0]) >= self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std > 0:
                m = m + self.magnitude_std * float(torch.randn((), generator=generator))
            chosen.append((name, min(max(m, 0.0), 10.0), bool(r[1] < 0.5)))
        return chosen

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for name, m, negate in self.sample(generator):
            x = OPS[name](x, m, negate)
        return x

    def __repr__(self) -> str:
        return f"RandAugment(magnitude={self.magnitude}, num_ops={self.num_ops}, magnitude_std={self.magnitude_std})"
