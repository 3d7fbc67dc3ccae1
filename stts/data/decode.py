"""Decoding with PyAV: read only the frames a clip needs, seeking instead of decoding whole videos.

    info = probe("clip.mp4")                       # VideoInfo(num_frames=300, fps=30.0, ...)
    frames, info = decode_frames("clip.mp4", [120, 124, 128])   # uint8 (3, H, W, 3), RGB

Frame indices count frames at the video's own rate from its first frame. `decode_frames` seeks to
the key frame before the first wanted index, decodes forward and stops after the last one, so a
2 s clip from a 10 min video costs about one GOP plus the clip.

Short and truncated videos: an index past the last frame that really decodes is clamped to that
frame (the container's frame count is often an estimate, and a truncated file stops early). Only a
video from which no frame decodes at all is an error. Every failure is a `DecodeError` naming the
file and the reason; PyAV is imported inside the functions, so `import stts.data` stays light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["DecodeError", "VideoInfo", "probe", "decode_frames", "decode_all"]


class DecodeError(Exception):
    """A video that cannot be used: `path` and a one-line `reason`."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class VideoInfo:
    """What the container says (before decoding): `num_frames` may be an estimate from the duration.

    decoded: frames actually decoded by the call that returned this (0 for `probe`).
    last_index: highest frame index seen while decoding (-1 for `probe`); smaller than
        `num_frames - 1` for a short or truncated file.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    decoded: int = 0
    last_index: int = -1


def _describe(e: Exception) -> str:
    # FFmpeg errors repeat the path in str(e); their strerror is the useful part.
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError(path, "missing file")
    if os.path.isdir(path):
        raise DecodeError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")


def _open(path: str):
    """-> (container, video stream, VideoInfo); raises DecodeError."""
    import av

    _check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise DecodeError(path, f"cannot open: {_describe(e)}") from None
    if not container.streams.video:
        container.close()
        raise DecodeError(path, "no video stream")
    stream = container.streams.video[0]
    # Frame-level threads: a clip decodes 10-60 frames, enough to keep 2 threads busy.
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 30.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    else:
        duration = 0.0
    # `stream.frames` comes from the container index (exact for mp4/avi); webm and mkv often
    # leave it 0, so fall back to duration * fps and let decoding clamp if that overshoots.
    num_frames = int(stream.frames) if stream.frames else int(round(duration * fps))
    cc = stream.codec_context
    info = VideoInfo(num_frames=num_frames, fps=fps, width=cc.width, height=cc.height, duration=duration)
    return container, stream, info


def probe(path: str | os.PathLike) -> VideoInfo:
    """Container metadata without decoding. Raises DecodeError."""
    container, _, info = _open(str(path))
    container.close()
    return info


def decode_frames(
    path: str | os.PathLike, indices: Sequence[int] | Callable[[VideoInfo], Sequence[int]]
) -> tuple[torch.Tensor, VideoInfo]:
    """Decode the frames at `indices` (any order, repeats allowed) -> (uint8 (len(indices), H, W, 3), info).

    indices: a list, or a function of the container's `VideoInfo` returning one (one open instead
        of a probe and a decode, for samplers that need the frame count).
    Indices past the last decodable frame are clamped to it; negative indices to 0. A decode error
    after some frames behaves like a truncated file. Raises DecodeError when no frame decodes.
    """
    import av

    path = str(path)
    container, stream, info = _open(path)
    if callable(indices):
        indices = indices(info)
    if len(indices) == 0:
        container.close()
        raise ValueError("decode_frames: empty index list")
    wanted = sorted({max(int(i), 0) for i in indices})
    got: dict[int, np.ndarray] = {}
    last_frame, last_idx, decoded = None, -1, 0
    tb = float(stream.time_base) if stream.time_base else None
    t0 = stream.start_time or 0
    try:
        first = wanted[0]
        if first > 0 and tb:
            # Seek to the key frame at or before the first wanted frame (backward=True), half a
            # frame early so rounding of pts never lands us after it.
            target = t0 + int((first - 0.5) / info.fps / tb)
            container.seek(max(target, t0), stream=stream, backward=True, any_frame=False)
        pos, counter = 0, 0  # pos: next entry of `wanted` to fill
        for frame in container.decode(stream):
            decoded += 1
            if frame.pts is not None and tb:
                idx = int(round((frame.pts - t0) * tb * info.fps))
            else:  # no timestamps (rare, raw streams): count from wherever decoding started
                idx = counter
            counter += 1
            last_frame, last_idx = frame, idx
            if idx < wanted[pos]:
                continue
            # This frame is the first one at or after wanted[pos] (and maybe several more: a
            # variable-rate file can skip indices).
            array = None
            while pos < len(wanted) and wanted[pos] <= idx:
                array = frame.to_ndarray(format="rgb24") if array is None else array
                got[wanted[pos]] = array
                pos += 1
            if pos == len(wanted):
                break
    except (av.FFmpegError, OSError, ValueError, EOFError, MemoryError) as e:
        if last_frame is None:
            container.close()
            raise DecodeError(path, f"decode failed before the first frame: {_describe(e)}") from None
        # Truncated or corrupt in the middle: keep what decoded; the missing indices clamp below.
    finally:
        container.close()
    if last_frame is None:
        raise DecodeError(path, "no decodable frame")
    info.decoded, info.last_index = decoded, last_idx
    if len(got) < len(wanted):  # short video: clamp the rest to the last decoded frame
        tail = last_frame.to_ndarray(format="rgb24")
        for i in wanted:
            got.setdefault(i, tail)
    frames = np.stack([got[max(int(i), 0)] for i in indices])  # (T, H, W, 3)
    return torch.from_numpy(frames), info


def decode_all(path: str | os.PathLike, *, max_frames: int | None = None) -> tuple[torch.Tensor, VideoInfo]:
    """Every frame in order -> (uint8 (N, H, W, 3), info). For checks and tests, not for training."""
    import av

    path = str(path)
    container, stream, info = _open(path)
    out = []
    try:
        for frame in container.decode(stream):
            out.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(out) >= max_frames:
                break
    except (av.FFmpegError, OSError, ValueError, EOFError, MemoryError) as e:
        if not out:
            raise DecodeError(path, f"decode failed before the first frame: {_describe(e)}") from None
    finally:
        container.close()
    if not out:
        raise DecodeError(path, "no decodable frame")
    info.decoded, info.last_index = len(out), len(out) - 1
    return torch.from_numpy(np.stack(out)), info
