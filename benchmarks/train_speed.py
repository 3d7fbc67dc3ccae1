"""Training-step time (forward, backward, AdamW step) of dense vs STTS video models, next to FLOP ratios.

    python benchmarks/train_speed.py                          # all groups, batch 1, 2 threads, 7 rounds
    python benchmarks/train_speed.py --groups mvit --repeats 9
    python benchmarks/train_speed.py --groups swin --swin-size 112    # a lighter Swin-B clip, published temporal plan
    python benchmarks/train_speed.py --quick                  # smoke run: small clips, 1 round
    python benchmarks/train_speed.py --json benchmarks/results/train_speed.json

Groups (each timed on its own; the models of a group share the dense weights, plans are patched onto
copies):
- `mvit`: mvit_b_16x4 (16x224) dense and the five published STTS models (their settings: 500 samples,
  sigma 0.1, the authors' diagonal estimator);
- `swin`: swin3d_b (32x224) dense, the published T0_0.5 plan (9 of 16 temporal tokens) in the faithful
  window mode (official: pad to the 8-frame window) and with `temporal_window="fit"`;
- `vit`: vit_b_16x16 (16x224, 1568 tokens) dense and token-level selection K4_0.5 / K0_0.5 (keep half
  of the tokens before block 4 / 0; stts defaults: 500 samples, sigma 0.05, full estimator).

A step is `zero_grad(set_to_none)`, cross-entropy of `model(x)` on a random label, `backward()`, then
`AdamW.step()` over `stts.engine.optim.param_groups` (weight decay 0.05), in train mode: drop path and
dropout are on and every selector takes the soft perturbed top-K (P @ X), so the scorers learn and the
later blocks run on the K kept frames / anchors / tokens. Random weights and inputs (the cost does not
depend on them). Timing is round-robin: each round runs one step of every model in turn (after warm-up
steps, which also create the AdamW moments), so the drifts of a shared machine hit all alike; a model's
figures are medians over rounds and its speed-up is the median over rounds of dense / model measured in
the same round. Forward, backward and optimizer times are split by clocks around the three calls
(`--clock cpu`: this process's CPU seconds instead of wall-clock, for 1-thread runs on a busy machine).

FLOPs: stts.flops (fvcore's convention, multiply-adds) of one forward on the meta device, in eval mode
(hard selection, what `stts flops` reports) and in train mode (soft selection: adds the P @ X products
and the scorers' own cost is the same). Backward FLOPs are not counted.
Memory, measured in extra untimed steps (stts.measure's tensor tracker; the weights and AdamW moments,
alive before the step, are not counted): "peak" = stts.measure.peak_memory of one whole step (every
tensor allocated during the step and alive at its peak: activations, gradients, the optimizer's
temporaries); "saved" = bytes the forward allocated that are still alive when it returns, i.e. the
activations autograd keeps for the backward, the part that token selection can shrink.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stts.engine.optim import param_groups
from stts.flops import count_flops
from stts.measure import TensorMemoryTracker, cpu_name, median, peak_memory
from stts.models import create_model, model_entry
from stts.patch import patch

MVIT_PUBLISHED = ["mvit_b_16x4_stts_t0.9_s0.9", "mvit_b_16x4_stts_t0.8_s0.9", "mvit_b_16x4_stts_t0.6_s0.9",
                  "mvit_b_16x4_stts_t0.5_s0.7", "mvit_b_16x4_stts_t0.4_s0.6"]
SWIN_PUBLISHED = "swin3d_b_stts_t0.5"
VIT_PLANS = ["K4_0.5", "K0_0.5"]


class _KeepMode(nn.Module):
    """Wraps a model so that `count_flops` (which switches to eval) counts it in its current mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True):
        return self

    def forward(self, x):
        return self.model(x)


def build_group(group: str, args) -> tuple[dict, tuple]:
    """{label: model} in train mode (first = dense baseline) and the input shape of one group."""
    torch.manual_seed(0)
    B = args.batch
    if group == "mvit":
        shape = (B, 3, 8, 112, 112) if args.quick else (B, 3, 16, 224, 224)
        dense = create_model("mvit_b_16x4")
        models = {"mvit_b_16x4 dense": dense}
        for name in MVIT_PUBLISHED:
            entry = model_entry(name)
            models[f"{name} ({entry.plan})"] = patch(copy.deepcopy(dense), entry.plan)
    elif group == "swin":
        frames = 16 if args.quick else args.swin_frames
        size = 112 if args.quick else args.swin_size
        shape = (B, 3, frames, size, size)
        dense = create_model("swin3d_b")
        entry = model_entry(SWIN_PUBLISHED)
        models = {"swin3d_b dense": dense}
        for mode, tag in (("pad", "faithful"), ("fit", "fit")):
            m = patch(copy.deepcopy(dense), entry.plan)
            m.set_window_mode(temporal_window=mode)
            models[f"swin3d_b {entry.plan} {tag}"] = m
    elif group == "vit":
        shape = (B, 3, 8, 112, 112) if args.quick else (B, 3, 16, 224, 224)
        dense = create_model("vit_b_16x16")
        models = {"vit_b_16x16 dense": dense}
        for plan in VIT_PLANS:
            models[f"vit_b_16x16 {plan}"] = patch(copy.deepcopy(dense), plan)
    else:
        raise ValueError(f"unknown group {group!r}; groups: mvit, swin, vit")
    for m in models.values():
        m.train()
    return models, shape


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clock=time.perf_counter):
    """One training step of `model`; returns a function giving (forward, backward, optimizer) seconds."""
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=1e-4)

    def step() -> tuple[float, float, float]:
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        t1 = clock()
        loss.backward()
        t2 = clock()
        opt.step()
        t3 = clock()
        return t1 - t0, t2 - t1, t3 - t2

    def saved_bytes() -> int:
        """Bytes allocated by the forward and still alive after it: what autograd keeps for backward."""
        opt.zero_grad(set_to_none=True)
        with TensorMemoryTracker() as tracker:
            loss = F.cross_entropy(model(x), y)
        kept = tracker.live
        loss.backward()
        opt.zero_grad(set_to_none=True)
        return kept

    step.saved_bytes = saved_bytes
    return step


def time_group(models: dict, shape: tuple, args) -> list[dict]:
    eval_flops = {}
    train_flops = {}
    for label, m in models.items():
        eval_flops[label] = count_flops(m, shape).gflops  # switches to eval and back
        train_flops[label] = count_flops(_KeepMode(m), shape).gflops
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 400, (shape[0],), generator=g)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    steps = {label: make_step(m, x, y, clock) for label, m in models.items()}
    for step in steps.values():  # warm-up: AdamW moments, oneDNN primitives, allocator
        for _ in range(args.warmup):
            step()
    peak, saved = {}, {}
    for label, step in steps.items():  # untimed: the tracker's dispatch mode slows every op
        _, peak[label] = peak_memory(step)
        saved[label] = step.saved_bytes()
    base = next(iter(models))
    parts = {label: [] for label in models}
    ratios = {label: [] for label in models}
    for _ in range(args.repeats):
        this_round = {label: step() for label, step in steps.items()}
        for label, p in this_round.items():
            parts[label].append(p)
            ratios[label].append(sum(this_round[base]) / sum(p))
    rows = []
    for label in models:
        total = [sum(p) for p in parts[label]]
        rows.append(dict(
            model=label, input=list(shape), eval_gflops=eval_flops[label], train_fwd_gflops=train_flops[label],
            flop_ratio=eval_flops[base] / eval_flops[label], train_flop_ratio=train_flops[base] / train_flops[label],
            step_median_s=median(total), step_min_s=min(total), steps_s=total,
            forward_median_s=median([p[0] for p in parts[label]]),
            backward_median_s=median([p[1] for p in parts[label]]),
            optimizer_median_s=median([p[2] for p in parts[label]]),
            speedup=median(ratios[label]), paired_ratios=ratios[label],
            speedup_over_flop_ratio=median(ratios[label]) / (eval_flops[base] / eval_flops[label]),
            peak_memory_mb=peak[label] / 2**20, saved_activations_mb=saved[label] / 2**20))
    return rows


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    result = dict(meta=dict(threads=args.threads, batch=args.batch, clock=args.clock, repeats=args.repeats,
                            warmup=args.warmup,
                            torch=torch.__version__, cpu=cpu_name(), cores=os.cpu_count(),
                            python=platform.python_version(),
                            mode="train mode (soft selection), float32, random weights, round-robin steps"),
                  groups={})
    for group in args.groups:
        models, shape = build_group(group, args)
        load_before = os.getloadavg()
        t0 = time.time()
        rows = time_group(models, shape, args)
        result["groups"][group] = dict(rows=rows, loadavg_before=load_before, loadavg_after=os.getloadavg(),
                                       wall_s=time.time() - t0)
        print_group(group, result["groups"][group])
        del models, rows
    return result


def print_group(group: str, g: dict) -> None:
    print(f"\n[{group}] input {'x'.join(map(str, g['rows'][0]['input']))}, load average before "
          f"{tuple(round(v, 2) for v in g['loadavg_before'])}, after {tuple(round(v, 2) for v in g['loadavg_after'])}, "
          f"{g['wall_s']:.0f} s")
    print(f"{'model':<58} {'GFLOPs':>7} {'FLOP x':>7} {'train x':>7} {'step s':>7} {'fwd s':>6} {'bwd s':>6} "
          f"{'opt s':>6} {'speed-up':>8} {'/FLOP x':>7} {'peak MB':>8} {'saved MB':>8}")
    for r in g["rows"]:
        print(f"{r['model']:<58} {r['eval_gflops']:>7.2f} {r['flop_ratio']:>7.2f} {r['train_flop_ratio']:>7.2f} "
              f"{r['step_median_s']:>7.2f} {r['forward_median_s']:>6.2f} {r['backward_median_s']:>6.2f} "
              f"{r['optimizer_median_s']:>6.2f} {r['speedup']:>8.2f} {r['speedup_over_flop_ratio']:>7.2f} "
              f"{r['peak_memory_mb']:>8.0f} {r['saved_activations_mb']:>8.0f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", nargs="+", default=["mvit", "swin", "vit"], choices=["mvit", "swin", "vit"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--swin-frames", type=int, default=32, help="clip length of the swin group (32: published)")
    p.add_argument("--swin-size", type=int, default=224,
                   help="frame size of the swin group (224: published; 112 keeps the 32 frames, hence the "
                        "temporal plan, faithful-vs-fit geometry, at a quarter of the tokens)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (one step of each model per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: this process's CPU seconds (at 1 thread, less sensitive to other jobs)")
    p.add_argument("--quick", action="store_true", help="smoke run: small clips, 1 round, 1 warm-up step")
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
