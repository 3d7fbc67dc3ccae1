"""Which frames a clip takes: pure functions of the video length, one per published rule.

    clip_indices(300, 16, 4)                               # stts: the centred 16x4 clip
    clip_indices(300, 16, 4, view=0, num_views=5)          # first of 5 uniformly spaced clips
    clip_indices(300, 16, 4, generator=g)                  # training: a random clip
    pyslowfast_indices(300, 16, 4, view=1, num_views=5)    # PySlowFast's test clip 1 of 5 (MViT's views)
    mmaction_indices(300, 32, 2, view=3, num_views=4)      # mmaction2 SampleFrames(test_mode) (Swin's views)
    segment_indices(48, 16)                                # SSv2 test: centre of each of 16 segments
    sample_indices("pyslowfast", 300, 16, 4, view=1, num_views=5, return_padded=True)   # (indices, padded)

- **clip** (stts's rule, the default for custom data): `num_frames` frames `sampling_rate` apart,
  counted at `target_fps` (30: Kinetics' rate) so a 25 or 60 fps video spans the same time as a 30 fps
  one. Training takes a random start; test view v of V starts at v/(V-1) of the free range (the
  centre when V = 1), so the V clips reach both ends of the video.
- **pyslowfast** (how the published MViT models were tested; PySlowFast's decoder): the clip covers
  clip_size = sampling_rate * num_frames * fps / target_fps source frames; with delta = max(frames -
  clip_size, 0), clip v of V starts at delta * v / V (a float: the last clip ends before the video
  does), training at uniform(0, delta); the frames are linspace(start, start + clip_size - 1,
  num_frames) (torch's float32 linspace, as PySlowFast), clamped to the video, truncated to integers.
  One view starts at frame 0.
- **mmaction** (how the published Video Swin models were tested; mmaction2's
  `SampleFrames(clip_len, frame_interval, num_clips, test_mode=True)`, out_of_bound_opt='loop'): with
  L = num_frames * sampling_rate and avg = (frames - L + 1) / V, clip v starts at int(v * avg + avg / 2)
  if frames > L - 1, else at 0; it takes start + i * sampling_rate, and indices past the end loop
  (modulo the frame count). The interval counts source frames: no fps resampling. Training: a random
  integer start in [0, frames - L] (0 when the video is shorter).
- **segment** (TSN, SSv2): split the video into `num_frames` equal segments, take one frame from
  each: a random one in training, the centre at test (view v of V at (v + 0.5) / V of each segment).

A video shorter than the clip repeats frames: clip and pyslowfast clamp indices to [0, frames - 1],
mmaction loops. `return_padded=True` also says whether that happened (an index past the last frame;
for segment: fewer frames than segments), so datasets can count such clips. The decoder clamps again
against what really decodes, since container frame counts can be estimates.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SAMPLING_RULES", "clip_indices", "pyslowfast_indices", "mmaction_indices", "segment_indices",
           "sample_indices"]

SAMPLING_RULES = ("clip", "pyslowfast", "mmaction", "segment")


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _is_random(random: bool | None, generator: torch.Generator | None) -> bool:
    return random if random is not None else generator is not None


def _check(num_frames: int, sampling_rate: int, view: int, num_views: int) -> None:
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames}, {sampling_rate}")
    if num_views < 1 or not 0 <= view < num_views:
        raise ValueError(f"view {view} out of range for num_views={num_views}")


def _clamped(raw: list[int], n: int, return_padded: bool):
    """Clamp raw indices to [0, n - 1]; padded = some index was past the last frame."""
    out = [min(max(i, 0), n - 1) for i in raw]
    return (out, max(raw) > n - 1) if return_padded else out


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
    return_padded: bool = False,
):
    """stts's rule: `num_frames` frames `sampling_rate` apart at `target_fps` -> frame indices at `fps`.

    random: draw the start uniformly (training); default True when a generator is given.
    view, num_views: deterministic test clips spread over the video (ignored when random).
    """
    _check(num_frames, sampling_rate, view, num_views)
    n = max(int(num_video_frames), 1)
    # Span of the clip in source frames; `step` is the gap between taken frames at the video's rate.
    step = sampling_rate * (fps / target_fps if target_fps else 1.0)
    free = max(n - step * num_frames, 0.0)
    if _is_random(random, generator):
        start = _uniform(generator) * free
    elif num_views > 1:
        start = free * view / (num_views - 1)
    else:
        start = free / 2
    return _clamped([int(start + i * step) for i in range(num_frames)], n, return_padded)


def pyslowfast_indices(
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
    return_padded: bool = False,
):
    """PySlowFast's rule (MViT's published test views): see the module docstring."""
    _check(num_frames, sampling_rate, view, num_views)
    n = max(int(num_video_frames), 1)
    clip_size = sampling_rate * num_frames * (fps / target_fps if target_fps else 1.0)  # source frames
    delta = max(n - clip_size, 0.0)
    start = _uniform(generator) * delta if _is_random(random, generator) else delta * view / num_views
    end = start + clip_size - 1
    # torch's float32 linspace, as PySlowFast samples: the truncation below depends on its rounding.
    positions = torch.linspace(start, end, num_frames)
    out = positions.clamp(0, n - 1).long().tolist()
    return (out, end > n - 1) if return_padded else out


def mmaction_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    *,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
    random: bool | None = None,
    return_padded: bool = False,
):
    """mmaction2's `SampleFrames(clip_len=num_frames, frame_interval=sampling_rate, num_clips=num_views,
    test_mode=True)` (Video Swin's published test views), clip `view`; see the module docstring."""
    _check(num_frames, sampling_rate, view, num_views)
    n = max(int(num_video_frames), 1)
    span = num_frames * sampling_rate  # mmaction's ori_clip_len
    if _is_random(random, generator):  # _get_train_clips with one clip
        start = int(torch.randint(n - span + 1, (), generator=generator)) if n - span + 1 > 0 else 0
    elif n > span - 1:  # _get_test_clips: offsets int(v * avg + avg / 2), truncated like numpy's astype(int)
        avg = (n - span + 1) / num_views
        start = int(view * avg + avg / 2.0)
    else:
        start = 0
    raw = [start + i * sampling_rate for i in range(num_frames)]
    out = [i % n for i in raw]  # out_of_bound_opt="loop"
    return (out, max(raw) > n - 1) if return_padded else out


def segment_indices(
    num_video_frames: int,
    num_frames: int,
    *,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
    random: bool | None = None,
    return_padded: bool = False,
):
    """One frame from each of `num_frames` equal segments of the video -> frame indices.
    Padded: fewer frames than segments, so some frame is taken twice."""
    _check(num_frames, 1, view, num_views)
    n = max(int(num_video_frames), 1)
    seg = n / num_frames
    out = []
    for i in range(num_frames):
        pos = _uniform(generator) if _is_random(random, generator) else (view + 0.5) / num_views
        out.append(min(int(math.floor(seg * (i + pos))), n - 1))
    return (out, n < num_frames) if return_padded else out


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
    return_padded: bool = False,
):
    """Dispatch on `mode` (one of SAMPLING_RULES); random when `generator` is given."""
    common = dict(view=view, num_views=num_views, generator=generator, return_padded=return_padded)
    if mode == "clip":
        return clip_indices(num_video_frames, num_frames, sampling_rate, fps=fps, target_fps=target_fps, **common)
    if mode == "pyslowfast":
        return pyslowfast_indices(num_video_frames, num_frames, sampling_rate, fps=fps, target_fps=target_fps,
                                  **common)
    if mode == "mmaction":  # counts source frames: fps plays no part
        return mmaction_indices(num_video_frames, num_frames, sampling_rate, **common)
    if mode == "segment":
        return segment_indices(num_video_frames, num_frames, **common)
    raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_RULES}")
