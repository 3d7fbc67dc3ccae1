"""Draw which frames and regions a trained model keeps for some videos (PNG + animated GIF each).

    stts visualize --checkpoint runs/t05/best.pt clip1.mp4 clip2.webm --out vis/
    stts visualize --checkpoint mvit_stts.safetensors clip.mp4 --frames 16 --size 224 --no-gif
    stts visualize --checkpoint runs/t05/best.pt clip.mp4 --policy change           # what a policy keeps instead
    stts visualize --checkpoint dense.pt clip.mp4 --selection T0_0.5-S4_0.7 --policy saliency   # training-free
    stts visualize --checkpoint elastic.pt clip.mp4 --selection T0_0.3-S4_0.6   # another budget, same scorers
    stts visualize --checkpoint elastic.pt clip.mp4 --gflops 20                 # the budget that fits 20 GFLOPs

Each video is decoded and transformed as the model was evaluated: the checkpoint's run config (training
checkpoints carry it: num_frames, sampling, short side / crop, mean/std) or, without one, the model's
own input size with Kinetics defaults; --frames, --size, --sampling-rate override. One centred clip,
centre crop. Prints the predicted class (named when the checkpoint, its config or --classes give names)
and the files written. A video that cannot be read is reported and skipped; the exit status is 1 when
no video worked. A model without selectors still gets pictures, every frame kept. --selection runs other
amounts at the checkpoint's selection points with its trained scorers (stts.set_plan; an elastic
checkpoint runs the middle of its ranges otherwise), or adds a plan to a dense checkpoint (scored by a
training-free --policy; without one its scorers would be untrained). --policy scores the selectors by a
training-free policy (stts.policies) instead of the checkpoint's. --gflops X runs the plan of the
largest counted cost at most X on the clips drawn (stts.plan_for; within an elastic plan's ranges).
The checkpoint is read safely (tensors and plain data only); --trust-checkpoint unpickles one the safe
loader refuses, which runs any code a crafted file carries: only for files you trust.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stts.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (anything PyAV decodes)")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="stts checkpoint (.pt from training or save_model, or exported .safetensors)")
    parser.add_argument("--out", default="vis", metavar="DIR", help="output folder (default: vis)")
    parser.add_argument("--gif", action=argparse.BooleanOptionalAction, default=True,
                        help="also write an animated GIF per video (default: on)")
    parser.add_argument("--frames", type=int, default=None, metavar="N", help="frames per clip (default: config)")
    parser.add_argument("--size", type=int, default=None, metavar="S", help="crop size in px (default: config)")
    parser.add_argument("--sampling-rate", type=int, default=None, metavar="R",
                        help="frames between taken frames at the target fps (default: config)")
    parser.add_argument("--classes", default=None, metavar="FILE", help="class names, one per line")
    parser.add_argument("--selection", default=None, metavar="PLAN",
                        help="other amounts at the checkpoint's selection points (e.g. T0_0.3-S4_0.6: its trained "
                             "scorers stay), or a plan added to a dense checkpoint (give --policy too)")
    parser.add_argument("--policy", default=None, metavar="NAME",
                        help="score the selectors by a training-free policy: uniform | random | change | saliency")
    parser.add_argument("--gflops", type=float, default=None, metavar="X",
                        help="the plan of the model's selection points with the largest counted cost <= X GFLOPs")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle a checkpoint that the safe (weights-only) loader refuses. RISK: a "
                             "crafted file runs code as it loads; only for files you trust")


def _select_by(model, args):
    """The checkpoint's model as --selection and --policy ask; UsageError naming the option.

    --selection at the checkpoint's own selection points: other amounts, its trained scorers kept
    (stts.set_plan); on a dense checkpoint: the plan added, scored by a training-free --policy.
    --policy: every selector scored by that policy (stts.set_policy)."""
    from stts.patch import patch, set_plan, set_policy

    plan = getattr(model, "plan", None)
    option, value = "--selection", args.selection
    try:
        if args.selection:
            if plan is not None and len(plan):
                set_plan(model, args.selection)
            else:
                if args.policy in (None, "learned"):
                    raise ValueError("a dense checkpoint has no trained scorers: give a training-free --policy "
                                     "(uniform, random, change, saliency)")
                return patch(model, args.selection, policy=args.policy)
        option, value = "--policy", args.policy
        if args.policy:
            return set_policy(model, args.policy)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{option} {value}: {e}") from None
    return model


def _data_config(ckpt: dict, model, args):
    """DataConfig from the checkpoint's run config, else from the model's input size; flags on top."""
    from dataclasses import fields

    from stts.data.config import DataConfig

    for flag in ("frames", "size", "sampling_rate"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be >= 1")
    data = ((ckpt.get("config") or {}).get("data") or {})
    known = {f.name for f in fields(DataConfig)}
    if data:
        cfg = DataConfig(**{k: v for k, v in data.items() if k in known})
        source = "checkpoint config"
    else:
        _, t, h, w = getattr(model, "input_size", (3, 16, 224, 224))
        cfg = DataConfig(num_frames=t, crop_size=min(h, w), test_short_side=min(h, w))
        source = "model input size"
    if args.frames is not None:
        cfg.num_frames = args.frames
    if args.sampling_rate is not None:
        cfg.sampling_rate = args.sampling_rate
    if args.size is not None:
        # Keep the config's short-side / crop ratio (e.g. 256 / 224) at the new size.
        cfg.test_short_side = max(args.size, round(args.size * cfg.test_short_side / cfg.crop_size))
        cfg.crop_size = args.size
    cfg.__post_init__()  # re-validate the overridden values
    return cfg, source


def _class_names(ckpt: dict, cfg, args, num_classes: int) -> list[str] | None:
    """Names from --classes, the checkpoint, or the dataset files its config names (if still readable)."""
    from stts.data.annotations import read_classes

    if args.classes:  # the user's file: a missing or bad one is an error (DataError names it)
        return read_classes(args.classes)
    for key in ("classes", "class_names"):
        if isinstance(ckpt.get(key), (list, tuple)):
            return [str(c) for c in ckpt[key]]
    if not (ckpt.get("config") or {}).get("data"):
        return None
    try:  # the run's annotation files may be elsewhere now: names are a nicety, never an error
        if cfg.classes_file:
            names = read_classes(cfg.classes_file)
        elif cfg.train_annotations:
            from stts.data.datasets import load_annotations

            names = load_annotations(cfg, cfg.train_annotations, classes_from=cfg.train_annotations).classes
        else:
            return None
    except Exception:  # noqa: BLE001
        return None
    return names if len(names) == num_classes else None


def run(args) -> int:
    import inspect

    import torch

    from stts.checkpoint import load_model, read_checkpoint
    from stts.engine.build import set_plan_for_gflops
    from stts.patch import running_plan
    from stts.data.datasets import resolve_sampling
    from stts.data.decode import DecodeError, decode_frames
    from stts.data.sampling import sample_indices
    from stts.data.transforms import EvalTransform
    from stts.engine.distributed import parse_device
    from stts.vis import kept_regions, plot_selection, save_selection_animation

    device = parse_device(args.device)
    ckpt = read_checkpoint(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
    model = load_model(ckpt, name=args.checkpoint)  # the file is read once, above
    model = _select_by(model, args)
    cfg, source = _data_config(ckpt, model, args)  # a bad --frames / --size is a ConfigError naming it
    if args.gflops is not None:  # the cost of the clips drawn here
        picked = set_plan_for_gflops(model, args.gflops, input_size=(3, cfg.num_frames, cfg.crop_size, cfg.crop_size))
        print(f"--gflops {args.gflops:g}: running {picked}")
    model.to(device).eval()
    num_classes = getattr(model, "num_classes", 0)
    names = _class_names(ckpt, cfg, args, num_classes)
    selective = "return_selections" in inspect.signature(model.forward).parameters
    if not (selective and len(getattr(model, "selectors", ()))):
        print("note: the model has no selectors; every frame is drawn as kept")
    plan = running_plan(model)  # what it runs (an elastic plan: its middle, unless --selection / --gflops)
    if plan is not None:
        print(f"selection: {plan}, {plan.policy} policy")
    sampling = resolve_sampling(cfg, cfg.format)
    print(f"clips: {cfg.num_frames} frames ({sampling}, rate {cfg.sampling_rate}), short side "
          f"{cfg.test_short_side}, crop {cfg.crop_size} ({source})")
    # Two transforms, one geometry: normalised input for the model, [0, 1] pixels for the picture.
    to_model = EvalTransform(cfg.crop_size, cfg.test_short_side, mean=cfg.mean, std=cfg.std)
    to_pixels = EvalTransform(cfg.crop_size, cfg.test_short_side, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = Path(args.out)
    done, used = 0, set()
    for video in args.videos:
        try:
            frames, _ = decode_frames(video, lambda info: sample_indices(
                sampling, info.num_frames, cfg.num_frames, cfg.sampling_rate, fps=info.fps,
                target_fps=cfg.target_fps or None))
        except (DecodeError, ValueError, OSError) as e:
            print(f"skipped {video}: {getattr(e, 'reason', e)}", file=sys.stderr)
            continue
        x = to_model(frames)[0][None].to(device)  # (1, C, T, S, S)
        pixels = (to_pixels(frames)[0].permute(1, 2, 3, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        try:
            with torch.no_grad():
                if selective:
                    logits, selections = model(x, return_selections=True)
                else:
                    logits, selections = model(x), {}
        except ValueError as e:  # clip settings the model cannot take (e.g. too few frames to select from)
            raise UsageError(f"{video}: the model rejects a {tuple(x.shape[1:])} clip (--frames, --size): {e}") from None
        prob = logits.float().softmax(-1)[0]
        p, c = prob.max(0)
        c = int(c)
        pred = names[c] if names and c < len(names) else f"class {c}"
        regions = kept_regions(selections, 0, pixels.shape[0], pixels.shape[1:3])
        kept = sum(r.kept for r in regions)
        label = f"{Path(video).name}  |  pred: {pred} ({float(p):.2f})  |  {kept}/{len(regions)} frames kept"
        name = Path(video).stem
        stem = out / (name if name not in used else f"{name}-{len(used)}")  # a/clip.mp4, b/clip.mp4
        used.add(name)
        png = stem.with_suffix(".png")
        plot_selection([(pixels, regions, label)], png)
        written = [str(png)]
        if args.gif:
            written.append(str(save_selection_animation(pixels, regions, stem.with_suffix(".gif"), label=pred)))
        print(f"{video}: predicted {pred} (p={float(p):.2f}), {kept}/{len(regions)} frames kept -> "
              f"{', '.join(written)}")
        done += 1
    if done == 0:
        print("error: no video could be visualised", file=sys.stderr)
        return 1
    return 0
