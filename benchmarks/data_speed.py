"""Clips per second for decode + augmentation in one process ("per worker"), at two sizes.

    python benchmarks/data_speed.py                 # both settings, median of 5 repeats
    python benchmarks/data_speed.py --repeats 3 --clips 10

1. Kinetics recipe: a 10 s, 30 fps, 320 x 426 libx264 video written to a temp dir, `DataConfig()`
   defaults (16 x 4 clip, RRC to 224, flip, RandAugment m7 n4, erasing 0.25), training items.
   Also decode only (same clips, no transform) and the test-view pipeline (short side 224, centre crop).
2. Demo: the synthetic dataset's defaults (16 frames at 64 x 64, its suggested DataConfig).

Runs `dataset[i]` in the main process with torch at one thread, as a DataLoader worker does (PyAV's
own decoder threads are left as the dataset sets them). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_test_video(path: Path, *, seconds: float = 10, fps: int = 30, height: int = 320, width: int = 426) -> None:
    """Smooth moving texture + a few moving discs + mild noise: compresses like camera footage."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width, s.pix_fmt = height, width, "yuv420p"
        s.options = {"crf": "23", "preset": "veryfast"}  # typical of Kinetics re-encodes
        for t in range(int(seconds * fps)):
            base = 128 + 60 * np.sin((xx + 3 * t) / 37.0) * np.cos((yy - 2 * t) / 29.0)
            frame = np.stack([base, np.roll(base, t, 1), 255 - base], -1)
            for k in range(4):
                cy, cx = (np.array([80 + 40 * k, 60 + 90 * k]) + 4 * t * np.array([1, (-1) ** k])) % [height, width]
                frame[(yy - cy) ** 2 + (xx - cx) ** 2 < 900] = (60 * k, 200, 255 - 50 * k)
            frame += rng.normal(0, 4, frame.shape)
            vf = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def clips_per_second(fn, n: int, repeats: int) -> tuple[float, list[float]]:
    fn(0)  # warm-up: first open, allocator
    rates = []
    for r in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates), rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clips", type=int, default=20, help="clips per repeat (Kinetics); 5x that for the demo")
    args = ap.parse_args()

    from stts.data import DataConfig, build_dataset, decode_frames
    from stts.data.synth import make_synthetic_dataset

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = tmp / "k.mp4"
        write_test_video(video)
        (tmp / "k.csv").write_text("".join(f"k.mp4 {i % 2}\n" for i in range(8)))
        cfg = DataConfig(root=str(tmp), train_annotations=str(tmp / "k.csv"), val_annotations=str(tmp / "k.csv"),
                         num_temporal_views=1)
        train = build_dataset(cfg, "train")
        test = build_dataset(cfg, "test")
        n = args.clips

        def decode_only(i):
            g = torch.Generator().manual_seed(i)
            start = int(torch.randint(300 - 64, (), generator=g))
            decode_frames(video, list(range(start, start + 64, 4)))

        def train_item(i):
            train.set_epoch(i)  # a new random clip and augmentation each call
            train[i % len(train)]

        def test_item(i):
            test._cache = None  # no reuse between items
            test[i % len(test)]

        for name, fn in (("decode only, 16x4 from 320p", decode_only),
                         ("train item 16x224 (decode + RRC + flip + RandAugment + erase)", train_item),
                         ("test item 16x224 (decode + resize + centre crop)", test_item)):
            med, rates = clips_per_second(fn, n, args.repeats)
            rows.append((name, med, rates))

        out = make_synthetic_dataset(tmp / "synth", clips_per_class=4, val_clips_per_class=1)
        augment = {"randaug": True, "erase_prob": 0.25, "random_resized_crop": True}
        for name, extra in (("demo train item 16x64 (synth defaults, its DataConfig)", {}),
                            ("demo train item 16x64 + RRC, RandAugment, erase", augment)):
            demo_train = build_dataset(DataConfig(**{**out["data_config"], **extra}), "train")

            def demo_item(i, ds=demo_train):
                ds.set_epoch(i)
                ds[i % len(ds)]

            med, rates = clips_per_second(demo_item, 5 * n, args.repeats)
            rows.append((name, med, rates))

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread, "
          f"torch {torch.__version__}, median of {args.repeats} repeats")
    print("| pipeline | clips/s (median) | repeats |")
    print("|---|---|---|")
    for name, med, rates in rows:
        print(f"| {name} | {med:.1f} | {', '.join(f'{r:.1f}' for r in rates)} |")


if __name__ == "__main__":
    main()
