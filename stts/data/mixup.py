"""Mixup / CutMix with label smoothing on training batches of clips.

    mix = MixupCutmix(num_classes=400)                    # mixup 0.8, cutmix 1.0, smoothing 0.1
    video, target = mix(batch["video"], batch["label"])   # (B, C, T, H, W), (B,) -> same, (B, 400)
    loss = torch.sum(-target * logits.log_softmax(-1), dim=-1).mean()

One lambda per batch; each clip is mixed with its mirror in the batch (`x.flip(0)`), as timm's
"batch" mode does. With both alphas > 0, CutMix is chosen with probability `switch_prob`, else Mixup.
CutMix pastes the same box into every frame (a region of the partner clip, for the whole clip) and
corrects lambda to the box's real area after clipping at the borders. Targets are the smoothed one-hots
mixed with the same lambda: lam * smooth(y) + (1 - lam) * smooth(y.flip(0)), where
smooth(y) = (1 - smoothing) * onehot(y) + smoothing / num_classes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["MixupCutmix", "smooth_one_hot", "cutmix_box"]


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B,) int -> (B, num_classes) float: 1 - smoothing + smoothing/n on the label, smoothing/n elsewhere."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the area, centre uniform over the frame, clipped at the borders
    -> (top, bottom, left, right), half-open."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return top, bottom, left, right


class MixupCutmix:
    """Callable on a batch: (video (B, C, T, H, W), labels (B,)) -> (mixed video, soft targets (B, num_classes)).

    prob: chance that a batch is mixed at all (unmixed batches still get smoothed targets).
    The last call's draw is kept in `last` (mode "mixup" | "cutmix" | "none", lam, box) for tests and logs.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing
        self.last: dict = {}

    def _draw(self, generator: torch.Generator | None) -> tuple[str, float]:
        def beta(alpha: float) -> float:
            # torch.distributions.Beta takes no generator; numpy's does, seeded from ours.
            seed = int(torch.randint(2**62, (), generator=generator))
            return float(np.random.default_rng(seed).beta(alpha, alpha))

        if torch.rand((), generator=generator) >= self.prob:
            return "none", 1.0
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if use_mixup and use_cutmix:
            use_cutmix = bool(torch.rand((), generator=generator) < self.switch_prob)
            use_mixup = not use_cutmix
        if use_cutmix:
            return "cutmix", beta(self.cutmix_alpha)
        if use_mixup:
            return "mixup", beta(self.mixup_alpha)
        return "none", 1.0

    def __call__(
        self, video: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        B, C, T, H, W = video.shape
        mode, lam = self._draw(generator)
        box = None
        if mode == "mixup":
            video = video * lam + video.flip(0) * (1.0 - lam)
        elif mode == "cutmix":
            box = cutmix_box(H, W, lam, generator)
            top, bottom, left, right = box
            video = video.clone()
            video[..., top:bottom, left:right] = video.flip(0)[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (H * W)  # the box may have been clipped
        y = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        target = y * lam + y.flip(0) * (1.0 - lam)
        self.last = {"mode": mode, "lam": lam, "box": box}
        return video, target
