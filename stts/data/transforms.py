"""Clip transforms on tensors (no torchvision): one set of random parameters per clip, every frame alike.

    train = TrainTransform(crop_size=224)                 # RRC, flip, RandAugment, normalise, erase
    video = train(frames, generator=g)                    # uint8 (T, H, W, 3) -> float (3, T, 224, 224)
    views = EvalTransform(224, 224, num_crops=3)(frames)  # -> [(3, T, 224, 224)] * 3, left/centre/right

Functional ops take `x: (T, C, H, W)` float in [0, 1] (before `normalize`) and explicit parameters,
so tests can check them against slicing; the `*_params` functions draw those parameters from a
`torch.Generator`, which is what makes a dataset item reproducible from its seed.

Order in training, and why:
1. random resized crop (scale 0.08-1, aspect 3/4-4/3) straight from the decoded frame to the crop
   size. The recipe's short-side jitter [256, 320] before it changes nothing but the interpolation:
   an RRC box is drawn as a fraction of the frame's area and its aspect, so resizing the frame first
   and cropping after gives the same view. One resize from the source is cheaper and sharper. With
   `random_resized_crop=False` the jitter is used: short side to U[256, 320], then a random square crop
   (the SlowFast recipe).
2. horizontal flip (p = 0.5).
3. RandAugment at crop size (cheaper than at 320 px; the same ops either way).
4. normalise (Kinetics mean/std), then random erasing (p = 0.25, the same rectangle and noise in every
   frame, so erasing hides a region of the scene rather than flickering). PySlowFast erases each frame
   independently; we do not.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from stts.data.randaugment import RandAugment

__all__ = [
    "to_float",
    "short_side_resize",
    "resized_crop",
    "random_resized_crop_params",
    "random_crop_params",
    "hflip",
    "uniform_crop",
    "normalize",
    "erase",
    "random_erasing_params",
    "TrainTransform",
    "EvalTransform",
    "KINETICS_MEAN",
    "KINETICS_STD",
]

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def to_float(frames: Tensor) -> Tensor:
    """uint8 (T, H, W, C) -> float (T, C, H, W) in [0, 1]."""
    return frames.permute(0, 3, 1, 2).float().div_(255)  # (T, H, W, C) -> (T, C, H, W)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # antialias when shrinking, as PIL does; bilinear throughout.
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def short_side_resize(x: Tensor, size: int) -> Tensor:
    """(T, C, H, W) -> (T, C, H', W') with min(H', W') = size, aspect kept."""
    H, W = x.shape[-2:]
    if H <= W:
        new = (size, max(int(round(W * size / H)), size))
    else:
        new = (max(int(round(H * size / W)), size), size)
    return _resize(x, new)


def resized_crop(x: Tensor, box: Box, size: int | tuple[int, int]) -> Tensor:
    """Crop `box` = (top, left, height, width) from every frame, resize to `size`. (T, C, H, W) -> (T, C, s, s)."""
    top, left, h, w = box
    size = (size, size) if isinstance(size, int) else tuple(size)
    return _resize(x[..., top : top + h, left : left + w], size)


def random_resized_crop_params(
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Box:
    """A box covering a random fraction in `scale` of the frame's area with aspect w/h in `ratio`
    (log-uniform). Falls back to the largest centred box with aspect clamped to `ratio`, as
    Inception-style RRC does, when ten draws do not fit."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * (scale[0] + _rand(generator) * (scale[1] - scale[0]))
        aspect = math.exp(log_r[0] + _rand(generator) * (log_r[1] - log_r[0]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(0, height - h, generator), _randint(0, width - w, generator), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_crop_params(height: int, width: int, size: int, generator: torch.Generator | None = None) -> Box:
    """A size x size box at a uniform position (size <= both sides)."""
    if size > height or size > width:
        raise ValueError(f"crop {size} larger than frame {height}x{width}")
    return _randint(0, height - size, generator), _randint(0, width - size, generator), size, size


def hflip(x: Tensor) -> Tensor:
    """Mirror every frame left-right. (..., H, W) -> (..., H, W)."""
    return x.flip(-1)


def uniform_crop(x: Tensor, size: int, index: int = 1, num_crops: int = 3) -> Tensor:
    """The index-th of `num_crops` size x size crops spread along the long side (0 = left/top,
    num_crops // 2 = centre, last = right/bottom); centred on the short side. (T, C, H, W) -> (T, C, s, s)."""
    H, W = x.shape[-2:]
    if size > H or size > W:
        raise ValueError(f"crop {size} larger than frame {H}x{W}")
    if not 0 <= index < num_crops:
        raise ValueError(f"crop index {index} out of range for num_crops={num_crops}")
    frac = 0.5 if num_crops == 1 else index / (num_crops - 1)
    top, left = (H - size) // 2, (W - size) // 2
    if W >= H:
        left = int(round((W - size) * frac))
    else:
        top = int(round((H - size) * frac))
    return x[..., top : top + size, left : left + size]


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel. x: (T, C, H, W)."""
    m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def random_erasing_params(
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 3.3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Box | None:
    """A rectangle of a random area fraction in `scale`, log-uniform aspect in `ratio`; None if none fits."""
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = height * width * (scale[0] + _rand(generator) * (scale[1] - scale[0]))
        aspect = math.exp(log_r[0] + _rand(generator) * (log_r[1] - log_r[0]))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            return _randint(0, height - h, generator), _randint(0, width - w, generator), h, w
    return None


def erase(x: Tensor, box: Box, value: Tensor | float) -> Tensor:
    """Fill `box` in every frame with `value` (a scalar or a (C, h, w) patch shared by all frames)."""
    top, left, h, w = box
    x = x.clone()
    x[..., top : top + h, left : left + w] = value
    return x


class TrainTransform:
    """uint8 frames (T, H, W, 3) -> normalised float (3, T, S, S) with the training augmentation.

    All random draws come from the `generator` passed to `__call__`, so an item is a function of
    its seed. Set `randaug_num_ops=0`, `erase_prob=0`, `flip=False`, `random_resized_crop=False`
    to switch each part off.
    """

    def __init__(
        self,
        crop_size: int = 224,
        *,
        random_resized_crop: bool = True,
        rrc_scale: tuple[float, float] = (0.08, 1.0),
        rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter_scales: tuple[int, int] = (256, 320),
        flip: bool = True,
        randaug_magnitude: float = 7,
        randaug_num_ops: int = 4,
        randaug_magnitude_std: float = 0.5,
        erase_prob: float = 0.25,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
    ):
        self.crop_size = crop_size
        self.random_resized_crop = random_resized_crop
        self.rrc_scale, self.rrc_ratio = tuple(rrc_scale), tuple(rrc_ratio)
        self.jitter_scales = tuple(jitter_scales)
        self.flip = flip
        self.randaug = (
            RandAugment(randaug_magnitude, randaug_num_ops, magnitude_std=randaug_magnitude_std)
            if randaug_num_ops > 0
            else None
        )
        self.erase_prob = erase_prob
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, frames: Tensor, generator: torch.Generator | None = None) -> Tensor:
        T, H, W, _ = frames.shape
        S = self.crop_size
        if self.random_resized_crop:
            top, left, h, w = random_resized_crop_params(H, W, scale=self.rrc_scale, ratio=self.rrc_ratio, generator=generator)
            # crop the uint8 frames before converting: the same pixels, a fraction of the float work
            x = to_float(frames[:, top : top + h, left : left + w])  # (T, h, w, 3) -> (T, 3, h, w)
            x = resized_crop(x, (0, 0, h, w), S)
        else:
            x = to_float(frames)  # (T, H, W, 3) -> (T, 3, H, W)
            lo, hi = self.jitter_scales
            x = short_side_resize(x, max(_randint(lo, hi, generator), S))
            x = resized_crop(x, random_crop_params(*x.shape[-2:], S, generator), S)
        if self.flip and _rand(generator) < 0.5:
            x = hflip(x)
        if self.randaug is not None:
            x = self.randaug(x, generator=generator)
        x = normalize(x, self.mean, self.std)
        if self.erase_prob > 0 and _rand(generator) < self.erase_prob:
            box = random_erasing_params(S, S, generator=generator)
            if box is not None:
                # "pixel" mode: N(0, 1) noise in normalised units, one patch for all frames.
                noise = torch.randn((x.shape[1], box[2], box[3]), generator=generator)
                x = erase(x, box, noise)
        return x.permute(1, 0, 2, 3).contiguous()  # (T, C, S, S) -> (C, T, S, S)


class EvalTransform:
    """uint8 frames (T, H, W, 3) -> list of `num_crops` normalised views (3, T, S, S).

    Short side to `short_side`, then 1 centre crop or 3 crops along the long side (PySlowFast's
    test-time "uniform crop").
    """

    def __init__(
        self,
        crop_size: int = 224,
        short_side: int = 224,
        *,
        num_crops: int = 1,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
    ):
        if short_side < crop_size:
            raise ValueError(f"short_side {short_side} < crop_size {crop_size}")
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        self.crop_size, self.short_side, self.num_crops = crop_size, short_side, num_crops
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, frames: Tensor, crops: Sequence[int] | None = None) -> list[Tensor]:
        """crops: which crop indices to return (default all)."""
        x = short_side_resize(to_float(frames), self.short_side)  # (T, H, W, 3) -> (T, 3, H', W')
        x = normalize(x, self.mean, self.std)
        out = []
        for i in range(self.num_crops) if crops is None else crops:
            index = 1 if self.num_crops == 1 else i  # num_crops == 1: the centre
            v = uniform_crop(x, self.crop_size, index, 3)
            out.append(v.permute(1, 0, 2, 3).contiguous())  # (T, C, S, S) -> (C, T, S, S)
        return out
