"""Check a video dataset for bad entries, or write a synthetic one.

    stts data check /data/k400 val.csv --classes-file classes.txt   # every bad entry: file, reason
    stts data check /data/ssv2/videos validation.json --labels-file labels.json --quick
    stts data check /data/k400 val.csv --num-frames 16 --sampling-rate 4   # also: videos shorter than a clip
    stts data synth data/synth --classes 6 --clips-per-class 60       # mp4s + train/val.csv + meta.json

`check` exits 1 if any entry is bad (missing, empty or undecodable file, malformed line, unknown
label), 0 otherwise; videos that break after some frames, and with --num-frames the videos too short
for one clip (their clips repeat frames), are listed as warnings only. An annotation file without
entries, or one that cannot be read, is an error (exit 2).
"""

from __future__ import annotations

import argparse
import sys

from stts.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("check", help="list every bad entry of a dataset (exit 1 if any)")
    p.add_argument("root", help="folder the video paths in ANNOTATIONS are relative to")
    p.add_argument("annotations", help="Kinetics CSV, SSv2 JSON, or a folder of class folders")
    p.add_argument("--format", default="auto", choices=["auto", "kinetics", "ssv2", "folder"])
    p.add_argument("--classes-file", default="", help="one class name per line (Kinetics / folder)")
    p.add_argument("--labels-file", default="", help="SSv2 labels JSON")
    p.add_argument("--video-extension", default=".webm", help="SSv2: <root>/<id><ext> (default .webm)")
    p.add_argument("--quick", action="store_true", help="decode only the first frame of each video")
    p.add_argument("--num-frames", type=int, default=None, metavar="N",
                   help="frames per clip: warn about videos too short for one clip")
    p.add_argument("--sampling-rate", type=int, default=4, metavar="R",
                   help="with --num-frames: frames between taken frames (default 4, data.sampling_rate)")
    p.add_argument("--sampling", default="auto", choices=["auto", "clip", "pyslowfast", "mmaction", "segment"],
                   help="with --num-frames: the sampling rule (default auto: segment for SSv2, else clip)")
    p.add_argument("--target-fps", type=float, default=30.0,
                   help="with --num-frames: the rate the sampling rate counts at (default 30; 0 = the video's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("synth", help="write a synthetic action dataset (mp4 + Kinetics CSVs + meta.json)")
    p.add_argument("out_dir")
    p.add_argument("--classes", type=int, default=6, help="number of classes, 1 to 18")
    p.add_argument("--clips-per-class", type=int, default=60, help="training clips per class")
    p.add_argument("--val-clips-per-class", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64,
                   help="frame height = width in pixels: a multiple of 4 (4:2:0 video), >= --event-size")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--event-frames", type=int, default=2, help="frames that show the label")
    p.add_argument("--event-size", type=int, default=16, help="side of the event's box, pixels")
    p.add_argument("--temporal-stride", type=int, default=2, help="events start on multiples of this")
    p.add_argument("--distractors", type=int, default=3)
    p.add_argument("--noise", type=float, default=6.0, help="per-frame noise std (grey levels)")
    p.add_argument("--codec", default="auto", help="auto (libx264, else mpeg4) or an encoder name PyAV has")
    p.add_argument("--seed", type=int, default=0)


def _check(args) -> int:
    from stts.data.check import check_dataset

    for option in ("num_frames", "sampling_rate"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UsageError(f"--{option.replace('_', '-')} {value}: must be >= 1")
    if args.target_fps < 0:
        raise UsageError(f"--target-fps {args.target_fps}: must be >= 0")
    report = check_dataset(
        args.root, args.annotations, format=args.format, classes_file=args.classes_file,
        labels_file=args.labels_file, video_extension=args.video_extension, quick=args.quick,
        progress=not args.no_progress, num_frames=args.num_frames, sampling_rate=args.sampling_rate,
        sampling=args.sampling, target_fps=args.target_fps,
    )
    for where, reason in report.bad:
        print(f"BAD\t{where}\t{reason}")
    for where, reason in report.warnings:
        print(f"WARN\t{where}\t{reason}")
    print(f"{report.entries} entries: {len(report.bad)} bad, {len(report.warnings)} warnings", file=sys.stderr)
    return 1 if report.bad else 0


def _synth(args) -> int:
    from stts.data.synth import make_synthetic_dataset

    out = make_synthetic_dataset(
        args.out_dir, num_classes=args.classes, clips_per_class=args.clips_per_class,
        val_clips_per_class=args.val_clips_per_class, num_frames=args.frames, size=args.size, fps=args.fps,
        event_frames=args.event_frames, event_size=args.event_size, temporal_stride=args.temporal_stride,
        num_distractors=args.distractors, noise=args.noise, codec=args.codec, seed=args.seed, progress=True,
    )
    n_train = args.classes * args.clips_per_class
    n_val = args.classes * args.val_clips_per_class
    print(f"wrote {n_train} train + {n_val} val clips ({out['codec']}) to {out['root']}")
    for key in ("train_annotations", "val_annotations", "classes_file", "meta"):
        print(f"  {key}: {out[key]}")
    return 0


def run(args) -> int:
    return _check(args) if args.data_command == "check" else _synth(args)
