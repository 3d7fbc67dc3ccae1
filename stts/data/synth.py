"""A small synthetic action dataset, written as real video files, where token selection matters.

    out = make_synthetic_dataset("data/synth", seed=0)
    cfg = DataConfig(**out["data_config"])            # the settings that fit these clips
    meta = json.load(open(out["meta"]))              # per clip: the event's frames and box

Each clip (default 16 frames, 64 x 64, 30 fps) is a textured, noisy background with a few muted,
moving distractor blobs in every frame. The label is a short **event**: a saturated coloured shape
(colour x shape = class; the default 6 classes are 6 colours of squares, rings and crosses come
after) shown in `event_frames` (2) consecutive frames, aligned to `temporal_stride` (2, the demo
model's temporal patch stride, so it falls in exactly one of the 8 temporal tokens), in a
`event_size` (16) pixel box at a random position. Everything else carries no label information.

Why this layout: a model that keeps 4 of 8 temporal tokens picks the event's token half the time
if it picks blindly (uniform sampling: 50% miss), and a centred anchor of half the area (a = 11 of 16
tokens, 44 px) fully contains a random 16 px box only about a third of the time; blind selection
at that budget sees the event in roughly 1 clip in 5, a learned selector in all of them.

Files: `<out>/{train,val}/<class>/<nnnn>.mp4`, `train.csv` / `val.csv` (`path label`, Kinetics layout,
paths relative to `out`), `classes.txt`, and `meta.json`. The split folders are also a valid
folder-per-class layout. Deterministic for a seed: clip i of a split depends only on (seed, split, i).
Encoding: libx264 (crf 16, yuv420p, no lookahead) when PyAV's wheel has it, else mpeg4 at a high bit rate; the
saturated colours survive 4:2:0 chroma subsampling at a 16 px event (tested by decoding back).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from stts.errors import UsageError

__all__ = ["make_synthetic_dataset", "synthetic_data_config", "class_names", "render_clip", "COLOURS", "SHAPES"]

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 210, 30),
    "blue": (30, 70, 235),
    "yellow": (235, 215, 30),
    "magenta": (215, 30, 215),
    "cyan": (30, 215, 215),
}
SHAPES = ("square", "ring", "cross")
MAX_CLASSES = len(COLOURS) * len(SHAPES)


def _class_spec(c: int) -> tuple[str, str]:
    """Class c -> (colour, shape): colours vary fastest, shapes only beyond len(COLOURS) classes.

    A colour is told apart from a few event tokens at any resolution, so the default 6 classes are
    learnable by a tiny model in a CPU demo; a shape at 8-16 px is a much harder cue.
    """
    names = list(COLOURS)
    shape, colour = divmod(c, len(names))
    return names[colour], SHAPES[shape]


def class_names(num_classes: int) -> list[str]:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise UsageError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
    return ["_".join(_class_spec(c)) for c in range(num_classes)]


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """(size, size) bool. The shapes differ where compression cannot blur them away: a square fills
    the box, a ring leaves its centre (half the side) empty, a cross leaves the four corners empty."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    r = np.hypot(yy - size / 2, xx - size / 2)
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "ring":
        return (r <= size / 2) & (r >= size / 4)
    if shape == "cross":
        bar = np.abs(np.arange(size) + 0.5 - size / 2) <= size * 3 / 16
        return bar[:, None] | bar[None, :]
    raise ValueError(f"unknown shape {shape!r}")


def render_clip(
    rng: np.random.Generator,
    label: int,
    *,
    num_frames: int = 16,
    size: int = 64,
    event_frames: int = 2,
    event_size: int = 16,
    temporal_stride: int = 2,
    num_distractors: int = 3,
    noise: float = 6.0,
) -> tuple[np.ndarray, dict]:
    """One clip -> (uint8 (T, H, W, 3), {"event_frames": [..], "event_box": [top, left, h, w]})."""
    T, S = num_frames, size
    # Background: a smooth greyish texture (8x8 noise upsampled), slightly tinted, static per clip.
    coarse = rng.uniform(70, 170, (8, 8, 1)) + rng.uniform(-12, 12, (1, 1, 3))
    idx = np.linspace(0, 7, S)
    i0 = np.floor(idx).astype(int).clip(0, 6)
    f = (idx - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # (S, 8, 3)
    bg = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]  # (S, S, 3)
    video = np.repeat(bg[None], T, 0)  # (S, S, 3) -> (T, S, S, 3)

    # Distractors: muted blobs, in every frame, moving on straight lines that bounce off the edges.
    yy, xx = np.mgrid[:S, :S] + 0.5
    for _ in range(num_distractors):
        radius = rng.uniform(5, 9)
        grey = rng.uniform(40, 220)
        colour = np.clip(grey + rng.uniform(-18, 18, 3), 0, 255)
        pos = rng.uniform(radius, S - radius, 2)
        vel = rng.uniform(-2.5, 2.5, 2)
        for t in range(T):
            p = pos + vel * t
            # reflect into [radius, S - radius]
            span = S - 2 * radius
            p = radius + np.abs((p - radius + span) % (2 * span) - span)
            mask = np.hypot(yy - p[0], xx - p[1]) <= radius
            video[t][mask] = colour

    # The event: the class's coloured shape in `event_frames` frames starting at a stride-aligned frame.
    slots = (T - event_frames) // temporal_stride + 1
    start = int(rng.integers(slots)) * temporal_stride
    top, left = (int(v) for v in rng.integers(0, S - event_size + 1, 2))
    colour_name, shape = _class_spec(label)
    mask = _shape_mask(shape, event_size)
    for t in range(start, start + event_frames):
        video[t, top : top + event_size, left : left + event_size][mask] = COLOURS[colour_name]

    video = video + rng.normal(0, noise, video.shape)  # per-frame sensor noise
    meta = {"event_frames": list(range(start, start + event_frames)), "event_box": [top, left, event_size, event_size]}
    return np.clip(video, 0, 255).astype(np.uint8), meta


def _check_synth_args(**a) -> None:
    """UsageError naming the first argument make_synthetic_dataset cannot use (CLI: --size, --classes...)."""
    def bad(name: str, why: str):
        raise UsageError(f"{name}={a[name]}: {why}")

    if not 1 <= a["num_classes"] <= MAX_CLASSES:
        bad("num_classes", f"must be in [1, {MAX_CLASSES}] ({len(COLOURS)} colours x {len(SHAPES)} shapes)")
    for name in ("clips_per_class", "num_frames", "size", "fps", "event_frames", "event_size", "temporal_stride"):
        if a[name] < 1:
            bad(name, "must be >= 1")
    for name in ("val_clips_per_class", "num_distractors", "noise"):
        if a[name] < 0:
            bad(name, "must be >= 0")
    if a["size"] % 4:
        bad("size", "must be a multiple of 4 (4:2:0 video needs even sides, and the encoders 4-pixel steps)")
    if a["event_size"] > a["size"]:
        bad("event_size", f"the event's box must fit in the frame (size={a['size']})")
    if a["event_frames"] > a["num_frames"]:
        bad("event_frames", f"the event must fit in the clip (num_frames={a['num_frames']})")


def _pick_codec(codec: str) -> str:
    import av

    if codec != "auto":
        try:
            av.codec.Codec(codec, "w")
        except Exception:  # noqa: BLE001 - UnknownCodecError, or a decoder-only codec
            raise UsageError(f"codec={codec!r}: PyAV has no such video encoder (try libx264, mpeg4 or auto)") from None
        return codec
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # UnknownCodecError: not in this wheel
            continue
    raise UsageError("codec=auto: PyAV has neither libx264 nor mpeg4 encoders; give codec=<an encoder it has>")


def _write_mp4(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # crf 16: visually lossless at this size. x264's lookahead (mb-tree) gave different files
            # for one input within one process at 64 px (PyAV 18); without it the output is a
            # function of the frames, and a seed must give identical files.
            stream.options = {"crf": "16", "preset": "fast", "threads": "1", "x264-params": "rc-lookahead=0:mbtree=0"}
        else:
            stream.bit_rate = 2_000_000
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 6,
    clips_per_class: int = 60,
    val_clips_per_class: int = 20,
    num_frames: int = 16,
    size: int = 64,
    fps: int = 30,
    event_frames: int = 2,
    event_size: int = 16,
    temporal_stride: int = 2,
    num_distractors: int = 3,
    noise: float = 6.0,
    codec: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Write the dataset under `out_dir` -> dict of paths and a suggested `DataConfig`:
    {"root", "train_annotations", "val_annotations", "classes_file", "meta", "num_classes", "codec",
    "data_config": kwargs for DataConfig (clip sampling of all frames, no augmentation that could cut
    the event away)}."""
    _check_synth_args(num_classes=num_classes, clips_per_class=clips_per_class,
                      val_clips_per_class=val_clips_per_class, num_frames=num_frames, size=size, fps=fps,
                      event_frames=event_frames, event_size=event_size, temporal_stride=temporal_stride,
                      num_distractors=num_distractors, noise=noise)
    classes = class_names(num_classes)
    codec = _pick_codec(codec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    render_kw = dict(
        num_frames=num_frames, size=size, event_frames=event_frames, event_size=event_size,
        temporal_stride=temporal_stride, num_distractors=num_distractors, noise=noise,
    )
    clips = {}
    jobs = [(split, c, i) for split, n in (("train", clips_per_class), ("val", val_clips_per_class))
            for c in range(num_classes) for i in range(n)]
    if progress:
        try:
            from tqdm import tqdm

            jobs = tqdm(jobs, desc="synth", unit="clip")
        except ImportError:
            pass
    lines = {"train": [], "val": []}
    for split, c, i in jobs:
        # One generator per clip, from (seed, split, class, i): adding clips never changes the others.
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, c, i])
        frames, meta = render_clip(rng, c, **render_kw)
        rel = f"{split}/{classes[c]}/{i:04d}.mp4"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_mp4(out / rel, frames, fps, codec)
        lines[split].append(f"{rel} {c}")
        clips[rel] = {"split": split, "label": c, "class": classes[c], **meta,
                      "event_token": meta["event_frames"][0] // temporal_stride}
    for split in ("train", "val"):
        (out / f"{split}.csv").write_text("\n".join(lines[split]) + "\n")
    meta = {
        "num_classes": num_classes, "classes": classes, "num_frames": num_frames, "size": size, "fps": fps,
        "temporal_stride": temporal_stride, "codec": codec, "seed": seed,
        "box_format": "top, left, height, width in pixels", "clips": clips,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return {
        "root": str(out),
        "train_annotations": str(out / "train.csv"),
        "val_annotations": str(out / "val.csv"),
        "classes_file": str(out / "classes.txt"),
        "meta": str(out / "meta.json"),
        "num_classes": num_classes,
        "codec": codec,
        "data_config": synthetic_data_config(out, num_frames=num_frames, size=size),
    }


def synthetic_data_config(out_dir: "str | os.PathLike", *, num_frames: int = 16, size: int = 64) -> dict:
    """DataConfig kwargs that fit a synthetic dataset in `out_dir`: all frames, the whole frame, and no
    augmentation that could cut the event away."""
    out = Path(out_dir)
    return {
        "format": "kinetics", "root": str(out), "train_annotations": str(out / "train.csv"),
        "val_annotations": str(out / "val.csv"), "classes_file": str(out / "classes.txt"),
        "num_frames": num_frames, "sampling_rate": 1, "target_fps": 0.0,
        "crop_size": size, "test_short_side": size, "random_resized_crop": False,
        "train_jitter_scales": (size, size), "flip": False, "randaug": False, "erase_prob": 0.0,
        "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.0,
        "num_temporal_views": 1, "num_spatial_crops": 1,
    }
