"""CPU latency of torch.compile (inductor) vs eager, dense vs STTS, side by side in one run.

    python benchmarks/compile_speed.py --json benchmarks/results/compile_speed.json
    python benchmarks/compile_speed.py --groups demo --threads 2 1
    python benchmarks/compile_speed.py --quick

Groups (a dense model first, then STTS variants on the same weights):
- `demo`: mvit_tiny (16x32x32) dense and T0_0.5-S1_0.6 (the demo's model);
- `mvit`: mvit_b_16x4 (16x224x224) dense and mvit_b_16x4_stts_t0.5_s0.7;
- `vit`: vit_b_16x16 (16x224x224) dense and K4_0.5;
- `swin`: swin3d_b_stts_t0.5 (32x224x224) faithful and window-aware (`fit`); not in the default run.

Each model is compiled once (`torch.compile(model, fullgraph=True, dynamic=False)`, inductor's default
mode; static shapes, since models of several clip sizes are compiled in one process) after one eager
call (the geometry caches then become graph constants); the first compiled call's time is
"compile s". Then, per thread count, eager and compiled calls run round-robin over every (model,
mode) pair (stts.measure.time_round_robin). "compile x" = eager / compiled of a model and "speed-up"
= dense / model within a mode, each the median over rounds of that round's ratio (the JSON also has
the ratios of medians and every call's time). Batch 1, float32, eval, inference_mode.
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

from stts.flops import count_flops
from stts.measure import cpu_name, median, time_fn, time_round_robin
from stts.models import create_model, model_entry
from stts.patch import patch


def _variant(dense, plan, **mode):
    m = patch(copy.deepcopy(dense), plan)  # a published plan carries its settings
    if mode:
        m.set_window_mode(**mode)
    return m.eval()


def build_group(group: str, quick: bool) -> tuple[dict, tuple]:
    torch.manual_seed(0)
    small = dict(img_size=112, num_frames=8) if quick else {}
    if group == "demo":
        dense = create_model("mvit_tiny").eval()
        return {"mvit_tiny dense": dense, "mvit_tiny T0_0.5-S1_0.6": _variant(dense, "T0_0.5-S1_0.6")}, dense.input_size
    if group == "mvit":
        dense = create_model("mvit_b_16x4", **small).eval()
        e = model_entry("mvit_b_16x4_stts_t0.5_s0.7")
        return ({"mvit_b_16x4 dense": dense, "mvit_b_16x4_stts_t0.5_s0.7": _variant(dense, e.plan)},
                dense.input_size)
    if group == "vit":
        dense = create_model("vit_b_16x16", **small).eval()
        return {"vit_b_16x16 dense": dense, "vit_b_16x16 K4_0.5": _variant(dense, "K4_0.5")}, dense.input_size
    if group == "swin":
        dense = create_model("swin3d_b", **(dict(img_size=112) if quick else {})).eval()
        e = model_entry("swin3d_b_stts_t0.5")
        return ({"swin3d_b_stts_t0.5 faithful": _variant(dense, e.plan),
                 "swin3d_b_stts_t0.5 fit": _variant(dense, e.plan, temporal_window="fit")},
                dense.input_size)
    raise ValueError(f"unknown group {group!r}")


def run_group(group: str, args) -> list[dict]:
    # Every model is a new `self` for the same forward code, and every thread count a new global state:
    # each is a compiled entry of that code. Start each group afresh so dynamo's recompile limit (8)
    # counts one group's entries only (fullgraph=True makes hitting it an error, not silent eager).
    torch._dynamo.reset()
    models, shape = build_group(group, args.quick)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    compiled, compile_s, diff = {}, {}, {}
    torch.set_num_threads(args.threads[0])
    with torch.inference_mode():
        for label, m in models.items():
            ref = m(x)  # eager first: fills the geometry caches that the graph then reads as constants
            compiled[label] = torch.compile(m, fullgraph=True, dynamic=False)
            compile_s[label] = time_fn(lambda c=compiled[label]: c(x), warmup=0, repeats=1)[0]
            diff[label] = float((compiled[label](x) - ref).abs().max())
            print(f"compiled {label} in {compile_s[label]:.0f} s, max |compiled - eager| {diff[label]:.2g}", flush=True)
    gflops = {label: count_flops(m, (1, *shape)).gflops for label, m in models.items()}
    out = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        fns = {}
        for label in models:
            fns[(label, "eager")] = lambda m=models[label]: m(x)
            fns[(label, "compiled")] = lambda c=compiled[label]: c(x)
        load_before, t0 = os.getloadavg(), time.time()
        with torch.inference_mode():
            times = time_round_robin(fns, warmup=args.warmup, repeats=args.repeats)
        med = {k: median(v) for k, v in times.items()}
        base = next(iter(models))

        def paired(a, b):  # median over rounds of a[r] / b[r]
            return median([x / y for x, y in zip(times[a], times[b])])

        rows = []
        for label in models:
            rows.append(dict(model=label, gflops=gflops[label], flop_ratio=gflops[base] / gflops[label],
                             compile_s=compile_s[label], max_abs_diff=diff[label],
                             eager_ms=1e3 * med[(label, "eager")], compiled_ms=1e3 * med[(label, "compiled")],
                             compile_speedup=paired((label, "eager"), (label, "compiled")),
                             eager_speedup=paired((base, "eager"), (label, "eager")),
                             compiled_speedup=paired((base, "compiled"), (label, "compiled")),
                             compile_speedup_of_medians=med[(label, "eager")] / med[(label, "compiled")],
                             runs_ms={mode: [1e3 * t for t in times[(label, mode)]] for mode in ("eager", "compiled")}))
        g = dict(group=group, threads=threads, repeats=args.repeats, input=[1, *shape], rows=rows,
                 loadavg_before=load_before, loadavg_after=os.getloadavg(), wall_s=time.time() - t0)
        print_group(g)
        out.append(g)
    return out


def print_group(g: dict) -> None:
    la = lambda v: "/".join(f"{a:.1f}" for a in v)  # noqa: E731
    print(f"\n[{g['group']}] {g['threads']} thread(s), {g['repeats']} rounds, input {'x'.join(map(str, g['input']))}, "
          f"load average {la(g['loadavg_before'])} before, {la(g['loadavg_after'])} after, {g['wall_s']:.0f} s")
    print(f"{'model':<30} {'GFLOPs':>7} {'FLOPs x':>7} {'compile s':>9} | {'eager ms':>9} {'speed-up':>8} | "
          f"{'compiled ms':>11} {'speed-up':>8} | {'compile x':>9}")
    for r in g["rows"]:
        print(f"{r['model']:<30} {r['gflops']:>7.2f} {r['flop_ratio']:>7.2f} {r['compile_s']:>9.0f} | "
              f"{r['eager_ms']:>9.1f} {r['eager_speedup']:>8.2f} | {r['compiled_ms']:>11.1f} "
              f"{r['compiled_speedup']:>8.2f} | {r['compile_speedup']:>9.2f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", nargs="+", default=["demo", "mvit", "vit"], choices=["demo", "mvit", "vit", "swin"])
    p.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: small clips, 1 round")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 1, 1
    result = dict(meta=dict(torch=torch.__version__, cpu=cpu_name(), cores=os.cpu_count(),
                            python=platform.python_version(), repeats=args.repeats, warmup=args.warmup,
                            mode="batch 1, float32, eval, inference_mode; "
                                 "torch.compile(fullgraph=True, dynamic=False), inductor"),
                  groups=[])
    if args.json and Path(args.json).is_file():  # a run of some groups updates the others' file
        kept = json.loads(Path(args.json).read_text())["groups"]
        result["groups"] = [g for g in kept if g["group"] not in args.groups]
    for group in args.groups:
        result["groups"] += run_group(group, args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
