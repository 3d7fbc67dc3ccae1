"""Which frames a clip takes: the two standard regimes, as pure functions of the video length.

    clip_indices(300, 16, 4)                               # Kinetics test view: centred 16x4 clip
    clip_indices(300, 16, 4, view=0, num_views=5)          # first of 5 uniformly spaced clips
    clip_indices(300, 16, 4, generator=g)                  # training: a random clip
    segment_indices(48, 16)                                # SSv2 test: centre of each of 16 segments
    segment_indices(48, 16, generator=g)                   # training: a random frame per segment

- **clip** (Kinetics, SlowFast/MViT): `num_frames` frames `sampling_rate` apart, counted at
  `target_fps` (30: Kinetics' rate) so a 25 or 60 fps video spans the same time as a 30 fps one.
  Training takes a random start; test view v of V starts at v/(V-1) of the free range (the centre
  when V = 1), so the V clips cover the video uniformly.
- **segment** (TSN, SSv2): split the video into `num_frames` equal segments, take one frame from
  each: a random one in training, the centre at test (view v of V at (v + 0.5) / V of each segment).

A video shorter than the clip repeats frames: indices are clamped to [0, num_video_frames - 1]. The
decoder clamps again against what really decodes, since container frame counts can be estimates.
"""

from __future__ import annotations

import math

import torch

__all__ = ["clip_indices", "segment_indices", "sample_indices"]


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def clip_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    *,
    fps: float = 30.0,
    target_fps: float | None = 30.0,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
    random: bool | None = None,
) -> list[int]:
    """A clip of `num_frames` frames, `sampling_rate` apart at `target_fps` -> frame indices at `fps`.

    random: draw the start uniformly (training); default True when a generator is given.
    view, num_views: deterministic test clips spread over the video (ignored when random).
    """
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames}, {sampling_rate}")
    n = max(int(num_video_frames), 1)
    # Span of the clip in source frames; `step` is the gap between taken frames at the video's rate.
    step = sampling_rate * (fps / target_fps if target_fps else 1.0)
    span = step * num_frames
    free = max(n - span, 0.0)
    if random if random is not None else generator is not None:
        start = _uniform(generator) * free
    elif num_views > 1:
        if not 0 <= view < num_views:
            raise ValueError(f"view {view} out of range for num_views={num_views}")
        start = free * view / (num_views - 1)
    else:
        start = free / 2
    return [min(int(start + i * step), n - 1) for i in range(num_frames)]


def segment_indices(
    num_video_frames: int,
    num_frames: int,
    *,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
    random: bool | None = None,
) -> list[int]:
    """One frame from each of `num_frames` equal segments of the video -> frame indices."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= view < max(num_views, 1):
        raise ValueError(f"view {view} out of range for num_views={num_views}")
    n = max(int(num_video_frames), 1)
    seg = n / num_frames
    out = []
    for i in range(num_frames):
        if random if random is not None else generator is not None:
            pos = _uniform(generator)
        else:
            pos = (view + 0.5) / max(num_views, 1)
        out.append(min(int(math.floor(seg * (i + pos))), n - 1))
    return out


def sample_indices(
    mode: str,
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    *,
    fps: float = 30.0,
    target_fps: float | None = 30.0,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Dispatch on `mode` ("clip" | "segment"); random when `generator` is given."""
    if mode == "clip":
        return clip_indices(
            num_video_frames, num_frames, sampling_rate, fps=fps, target_fps=target_fps,
            view=view, num_views=num_views, generator=generator,
        )
    if mode == "segment":
        return segment_indices(num_video_frames, num_frames, view=view, num_views=num_views, generator=generator)
    raise ValueError(f"unknown sampling mode {mode!r}; expected 'clip' or 'segment'")
