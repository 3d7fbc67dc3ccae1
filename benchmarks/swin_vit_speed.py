"""CPU latency and FLOPs of dense vs STTS-selected video ViTs and Video Swin (faithful vs window-aware).

    python benchmarks/swin_vit_speed.py                            # all groups, batch 1, 2 threads
    python benchmarks/swin_vit_speed.py --groups swin --swin swin3d_t --repeats 5
    python benchmarks/swin_vit_speed.py --quick                    # smoke run: small clips, 1 round
    python benchmarks/swin_vit_speed.py --json benchmarks/results/swin_vit.json

Groups (each timed on its own, models in turn):
- `vit_s`, `vit_b`: vit_{s,b}_16x16 (16x224x224, 1568 tokens) dense and with T0_0.5, K0_0.5, K4_0.5,
  S0_0.5, T0_0.5-S0_0.5;
- `swin`: Video Swin 32x224x224 dense, then the five published temporal plans (14/12/10/9/6 of 16
  frames) in the faithful mode (official padding to the 8-frame window) and the window-aware mode
  (`temporal_window="fit"`). `--swin swin3d_t` runs the same plans on Swin-T (cheaper on 2 cores).

Eval mode, torch.inference_mode, float32, random weights (the cost does not depend on them). All models
of a group share the dense weights (selection plans are patched onto copies). Timing is round-robin and
paired: every round runs each selected model (in shuffled order) right next to a dense call, so that
the slow and fast phases of a shared machine hit both alike; "speed-up" is the median over rounds of
these side-by-side ratios, "median ms" the median of a model's calls, and "cpu x" the paired ratio of
this process's CPU seconds (a cross-check). GFLOPs come from stts.flops (fvcore's convention) on the
meta device.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

from stts.flops import count_flops
from stts.measure import cpu_name, median
from stts.models import create_model, model_entry
from stts.patch import patch

VIT_PLANS = [None, "T0_0.5", "K0_0.5", "K4_0.5", "S0_0.5", "T0_0.5-S0_0.5"]
SWIN_PUBLISHED = ["swin3d_b_stts_t0.9", "swin3d_b_stts_t0.8", "swin3d_b_stts_t0.6", "swin3d_b_stts_t0.5",
                  "swin3d_b_stts_t0.4"]


def build_group(group: str, args) -> tuple[dict, tuple]:
    """{label: model} (first = dense baseline) and the input shape of one group."""
    torch.manual_seed(0)
    if group in ("vit_s", "vit_b"):
        name = f"{group}_16x16"
        shape = (1, 3, 8, 112, 112) if args.quick else (1, 3, 16, 224, 224)
        dense = create_model(name).eval()
        models = {}
        for plan in VIT_PLANS:
            label = f"{name} {plan or 'dense'}"
            models[label] = dense if plan is None else patch(copy.deepcopy(dense), plan).eval()
        return models, shape
    if group == "swin":
        shape = (1, 3, 16, 112, 112) if args.quick else (1, 3, 32, 224, 224)
        dense = create_model(args.swin).eval()
        models = {f"{args.swin} dense": dense}
        for mode in ("pad", "fit"):
            for published in SWIN_PUBLISHED:
                entry = model_entry(published)
                m = patch(copy.deepcopy(dense), entry.plan).eval()
                m.set_window_mode(temporal_window=mode)
                kept = entry.meta["frames_kept"]
                tag = "faithful" if mode == "pad" else "window-aware"
                models[f"{args.swin} {entry.plan} ({kept}) {tag}"] = m
        return models, shape
    raise ValueError(f"unknown group {group!r}; groups: vit_s, vit_b, swin")


def time_group(models: dict, shape: tuple, args) -> list[dict]:
    """Paired timing: in every round each selected model runs right next to a dense call (in random
    model order, pair order alternating), so both see the same phase of a shared machine; the speed-up
    is the median over rounds of the paired ratios dense / model."""
    gflops = {label: count_flops(m, shape).gflops for label, m in models.items()}
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    base = next(iter(models))
    times = {label: [] for label in models}
    ratios = {label: [] for label in models}
    cpu_ratios = {label: [] for label in models}
    rng = random.Random(0)

    def timed(m):
        c0, t0 = time.process_time(), time.perf_counter()
        m(x)
        return time.perf_counter() - t0, time.process_time() - c0

    with torch.inference_mode():
        for m in models.values():  # warm-up: oneDNN primitives, allocator, cached window masks
            for _ in range(args.warmup):
                m(x)
        for r in range(args.repeats):
            labels = [label for label in models if label != base]
            rng.shuffle(labels)
            for label in labels:
                pair = (base, label) if r % 2 == 0 else (label, base)
                (t_a, c_a), (t_b, c_b) = timed(models[pair[0]]), timed(models[pair[1]])
                (t_base, c_base), (t_m, c_m) = ((t_a, c_a), (t_b, c_b)) if pair[0] == base else ((t_b, c_b), (t_a, c_a))
                times[base].append(t_base)
                times[label].append(t_m)
                ratios[label].append(t_base / t_m)
                # CPU seconds of this process (both threads): a cross-check on a shared machine.
                cpu_ratios[label].append(c_base / c_m)
    rows = []
    for label in models:
        speedup = median(ratios[label]) if label != base else 1.0
        flop_ratio = gflops[base] / gflops[label]
        rows.append(dict(model=label, input=list(shape), gflops=gflops[label], flop_ratio=flop_ratio,
                         median_s=median(times[label]), min_s=min(times[label]), runs_s=times[label],
                         speedup=speedup, speedup_over_flop_ratio=speedup / flop_ratio,
                         paired_ratios=ratios[label],
                         cpu_speedup=median(cpu_ratios[label]) if label != base else 1.0))
    return rows


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    result = dict(meta=dict(threads=args.threads, repeats=args.repeats, warmup=args.warmup, torch=torch.__version__,
                            cpu=cpu_name(), cores=os.cpu_count(), python=platform.python_version(),
                            mode="eval + torch.inference_mode, float32, random weights, batch 1, round-robin"),
                  groups={})
    for group in args.groups:
        models, shape = build_group(group, args)
        load_before = os.getloadavg()
        t0 = time.time()
        rows = time_group(models, shape, args)
        result["groups"][group] = dict(rows=rows, loadavg_before=load_before, loadavg_after=os.getloadavg(),
                                       wall_s=time.time() - t0)
        print_group(group, result["groups"][group])
        del models
    return result


def print_group(group: str, g: dict) -> None:
    print(f"\n[{group}] input {'x'.join(map(str, g['rows'][0]['input']))}, load average before "
          f"{tuple(round(v, 2) for v in g['loadavg_before'])}, after {tuple(round(v, 2) for v in g['loadavg_after'])}, "
          f"{g['wall_s']:.0f} s")
    print(f"{'model':<46} {'GFLOPs':>8} {'FLOP x':>7} {'median ms':>10} {'min ms':>9} {'speed-up':>9} {'/FLOP x':>8} "
          f"{'cpu x':>6}")
    for r in g["rows"]:
        print(f"{r['model']:<46} {r['gflops']:>8.2f} {r['flop_ratio']:>7.2f} {r['median_s'] * 1e3:>10.1f} "
              f"{r['min_s'] * 1e3:>9.1f} {r['speedup']:>9.2f} {r['speedup_over_flop_ratio']:>8.2f} "
              f"{r['cpu_speedup']:>6.2f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", nargs="+", default=["vit_s", "vit_b", "swin"], choices=["vit_s", "vit_b", "swin"])
    p.add_argument("--swin", default="swin3d_b", choices=["swin3d_t", "swin3d_s", "swin3d_b"],
                   help="Video Swin size for the swin group")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each selected model once per round, "
                                                           "next to a dense call)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per model first")
    p.add_argument("--quick", action="store_true", help="smoke run: small clips, 1 round, 1 warm-up")
    p.add_argument("--json", default="", help="also write the result to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 1, 1
    result = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
