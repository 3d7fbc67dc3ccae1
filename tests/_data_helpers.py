"""Helpers for the stts.data tests: write small real videos whose frames say their own index.

Each frame carries its index as 10 bits, one 8x8 block per bit (white = 1) along the top rows;
blocks aligned to the codec's 8x8/16x16 grid survive lossy compression, so a decoded frame can be
read back to the index it was encoded from: an oracle independent of the decoder.
"""

from __future__ import annotations

import os

import numpy as np

BITS = 10
BLOCK = 8

# (extension, codec) pairs the tests cover; all are in PyAV's wheel (checked in test_codecs_available).
CONTAINERS = [("mp4", "libx264"), ("webm", "libvpx"), ("mkv", "ffv1"), ("avi", "mpeg4")]


def index_frames(n: int, height: int = 64, width: int = 96, start: int = 0) -> np.ndarray:
    """uint8 (n, H, W, 3): frame i has grey background and the bits of start + i in the top row."""
    assert width >= BITS * BLOCK and height >= 2 * BLOCK
    frames = np.full((n, height, width, 3), 96, np.uint8)
    for i in range(n):
        v = start + i
        for b in range(BITS):
            on = (v >> b) & 1
            frames[i, 0:BLOCK, b * BLOCK : (b + 1) * BLOCK] = 255 if on else 0
        # a gradient below so the frame is not flat (gives encoders something to do)
        frames[i, 2 * BLOCK :, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return frames


def read_index(frame) -> int:
    """Inverse of `index_frames` on one decoded (H, W, 3) frame (tensor or array)."""
    f = np.asarray(frame, dtype=np.float32)
    v = 0
    for b in range(BITS):
        block = f[1 : BLOCK - 1, b * BLOCK + 1 : (b + 1) * BLOCK - 1]
        v |= int(block.mean() > 127) << b
    return v


def write_video(path, frames: np.ndarray, *, fps: int = 30, codec: str = "libx264", gop: int | None = None) -> str:
    """Encode uint8 (T, H, W, 3) frames with PyAV; returns the path."""
    import av

    path = str(path)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p" if codec != "ffv1" else "yuv444p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast"}
        elif codec in ("mpeg4", "libvpx"):
            stream.bit_rate = 4_000_000
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_empty_video(path, codec: str = "mpeg4") -> str:
    """A valid container (use .avi: mp4 drops the stream, mkv/webm write no header) with zero frames."""
    import av

    path = str(path)
    container = av.open(path, "w")
    stream = container.add_stream(codec, rate=30)
    stream.height, stream.width = 64, 96
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
    container.close()
    return path


def truncate(path, fraction: float = 0.5) -> str:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))
    return str(path)


def garbage(path, nbytes: int = 4096, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return str(path)


def make_kinetics_dataset(root, *, num_good: int = 6, num_frames: int = 64, size: int = 96, bad: tuple = ("missing", "garbage")):
    """Videos v/<i>.mp4 (label i % 3, index-coded frames, `size` x `size`) plus bad entries; writes
    root/train.csv and root/classes.txt -> (csv path, list of (relative path, label, kind))."""
    import pathlib

    root = pathlib.Path(root)
    (root / "v").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(num_good):
        write_video(root / "v" / f"{i}.mp4", index_frames(num_frames, size, size))
        entries.append((f"v/{i}.mp4", i % 3, "good"))
    for j, kind in enumerate(bad):
        rel = f"v/bad{j}.mp4"
        if kind == "garbage":
            garbage(root / rel, seed=j)
        elif kind == "empty":
            rel = f"v/bad{j}.avi"
            write_empty_video(root / rel)
        elif kind != "missing":
            raise ValueError(kind)
        entries.append((rel, j % 3, kind))
    (root / "classes.txt").write_text("a\nb\nc\n")
    (root / "train.csv").write_text("".join(f"{p} {y}\n" for p, y, _ in entries))
    return str(root / "train.csv"), entries


def clip_indices_of(video) -> list[int]:
    """Frame indices encoded in a dataset item's video (C, T, H, W) normalised with mean 0, std 1."""
    frames = (video.permute(1, 2, 3, 0) * 255).clamp(0, 255)  # (C, T, H, W) -> (T, H, W, C)
    return [read_index(f.numpy()) for f in frames]
