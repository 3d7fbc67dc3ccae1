"""CPU latency of ONNX Runtime vs torch eager, dense vs STTS, next to the FLOP ratio.

    python benchmarks/onnx_speed.py --json benchmarks/results/onnx_speed.json   # all groups, 2 then 1 threads
    python benchmarks/onnx_speed.py --groups mvit --threads 2 --repeats 5
    python benchmarks/onnx_speed.py --threads 1 --repeats 5 --mvit mvit_b_16x4_stts_t0.9_s0.9 mvit_b_16x4_stts_t0.5_s0.7
    python benchmarks/onnx_speed.py --quick                                      # smoke run: small clips

Groups (a dense model first, then its STTS variants on the same weights):
- `mvit`: mvit_b_16x4 (16x224x224) dense and the five published STTS models;
- `swin`: swin3d_b (32x224x224) dense, swin3d_b_stts_t0.5 (9 of 16 frames) faithful (official
  padding to the 8-frame window) and window-aware (`temporal_window="fit"`);
- `vit`: vit_b_16x16 (16x224x224, 1568 tokens) dense, K0_0.5 and K4_0.5 (token-level selection).

Every model is exported once with `stts.onnx.export_onnx` (opset 23, checked against torch with ONNX
Runtime) into --onnx-dir, reused when present. Then, for each thread count, torch (eval,
inference_mode, `torch.set_num_threads`) and ONNX Runtime (CPU provider, `intra_op_num_threads`, one
inter-op thread) run the same clip, round-robin over every (model, runtime) pair
(stts.measure.time_round_robin), so the phases of a shared machine hit all alike. Reported: median
latency; "speed-up" = dense / model within a runtime and "ORT x" = torch / ORT of the same model,
each the median over rounds of that round's ratio (calls of one round run seconds apart, so a
shared machine's slow phases hit both sides of a ratio alike); "/FLOPs" = speed-up / FLOP ratio
(stts.flops, fvcore convention). The JSON also holds every call's time and the ratios of medians.
Batch 1, float32, random weights (perturbed so that selection scores are not tied).
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
from stts.measure import cpu_name, median, time_round_robin
from stts.models import create_model, model_entry
from stts.patch import patch

MVIT_PUBLISHED = ["mvit_b_16x4_stts_t0.9_s0.9", "mvit_b_16x4_stts_t0.8_s0.9", "mvit_b_16x4_stts_t0.6_s0.9",
                  "mvit_b_16x4_stts_t0.5_s0.7", "mvit_b_16x4_stts_t0.4_s0.6"]


def _perturb_(model, std=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def _with_plan(dense, published: str, **mode):
    entry = model_entry(published)
    m = patch(copy.deepcopy(dense), entry.plan)  # the published plan carries its settings
    if mode:
        m.set_window_mode(**mode)
    # Fresh scorers come from patch: perturb them too (same seed: same weights in every run).
    for sel in m.selectors.values():
        _perturb_(sel, seed=1)
    return m.eval()


def build_group(group: str, quick: bool, mvit_variants=MVIT_PUBLISHED) -> tuple[dict, tuple]:
    """{label: eval model} (first = the dense baseline) and the clip shape (C, T, H, W)."""
    torch.manual_seed(0)
    if group == "mvit":
        kw = dict(img_size=112, num_frames=8) if quick else {}
        dense = _perturb_(create_model("mvit_b_16x4", **kw)).eval()
        models = {"mvit_b_16x4 dense": dense}
        for name in mvit_variants:
            models[name] = _with_plan(dense, name)
        return models, dense.input_size
    if group == "swin":
        kw = dict(img_size=112, num_frames=32) if quick else {}
        dense = _perturb_(create_model("swin3d_b", **kw)).eval()
        models = {"swin3d_b dense": dense,
                  "swin3d_b_stts_t0.5 faithful": _with_plan(dense, "swin3d_b_stts_t0.5"),
                  "swin3d_b_stts_t0.5 fit": _with_plan(dense, "swin3d_b_stts_t0.5", temporal_window="fit")}
        return models, dense.input_size
    if group == "vit":
        kw = dict(img_size=112, num_frames=8) if quick else {}
        dense = _perturb_(create_model("vit_b_16x16", **kw)).eval()
        models = {"vit_b_16x16 dense": dense}
        for plan in ("K0_0.5", "K4_0.5"):
            m = patch(copy.deepcopy(dense), plan)
            for sel in m.selectors.values():
                _perturb_(sel, seed=1)
            models[f"vit_b_16x16 {plan}"] = m.eval()
        return models, dense.input_size
    raise ValueError(f"unknown group {group!r}")


def export_all(models: dict, shape: tuple, onnx_dir: Path, quick: bool) -> dict:
    """{label: (path, max |ORT - torch| at batch 1 or None if reused)}."""
    from stts.onnx import export_onnx

    onnx_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for label, m in models.items():
        path = onnx_dir / (label.replace(" ", "_") + ("_quick" if quick else "") + ".onnx")
        if path.is_file():
            out[label] = (path, None)
            continue
        t0 = time.time()
        report = export_onnx(m, path, input_size=shape, check_batch_sizes=(1,))
        out[label] = (path, report.max_abs_diff[1])
        print(f"exported {path.name} in {time.time() - t0:.0f} s, max |ORT - torch| {report.max_abs_diff[1]:.2g}",
              flush=True)
    return out


def time_group(models: dict, files: dict, shape: tuple, threads: int, args) -> dict:
    from stts.onnx import ort_session

    torch.set_num_threads(threads)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    xs = x.numpy()
    sessions = {label: ort_session(path, threads=threads) for label, (path, _) in files.items()}
    fns = {}
    for label, m in models.items():
        fns[(label, "torch")] = lambda m=m: m(x)
        fns[(label, "ort")] = lambda s=sessions[label]: s.run(None, {"video": xs})
    load_before = os.getloadavg()
    t0 = time.time()
    with torch.inference_mode():
        times = time_round_robin(fns, warmup=args.warmup, repeats=args.repeats)
    load_after = os.getloadavg()
    gflops = {label: count_flops(m, (1, *shape)).gflops for label, m in models.items()}
    base = next(iter(models))
    med = {k: median(v) for k, v in times.items()}

    def paired(a, b):  # median over rounds of a[r] / b[r]
        return median([x / y for x, y in zip(times[a], times[b])])

    rows = []
    for label in models:
        flop_ratio = gflops[base] / gflops[label]
        row = dict(model=label, gflops=gflops[label], flop_ratio=flop_ratio, max_abs_diff=files[label][1])
        for rt in ("torch", "ort"):
            speedup = paired((base, rt), (label, rt))
            row[rt] = dict(median_ms=1e3 * med[(label, rt)], min_ms=1e3 * min(times[(label, rt)]),
                           runs_ms=[1e3 * t for t in times[(label, rt)]], speedup=speedup,
                           speedup_over_flop_ratio=speedup / flop_ratio,
                           speedup_of_medians=med[(base, rt)] / med[(label, rt)])
        row["ort_over_torch"] = paired((label, "torch"), (label, "ort"))
        row["ort_over_torch_of_medians"] = med[(label, "torch")] / med[(label, "ort")]
        rows.append(row)
    return dict(threads=threads, input=[1, *shape], repeats=args.repeats, rows=rows, loadavg_before=load_before,
                loadavg_after=load_after, wall_s=time.time() - t0, finished=time.strftime("%Y-%m-%d %H:%M"))


def print_group(group: str, g: dict) -> None:
    la = lambda v: "/".join(f"{a:.1f}" for a in v)  # noqa: E731
    print(f"\n[{group}] {g['threads']} thread(s), {g['repeats']} rounds, input {'x'.join(map(str, g['input']))}, "
          f"load average (1/5/15 min) {la(g['loadavg_before'])} before, {la(g['loadavg_after'])} after, "
          f"{g['wall_s']:.0f} s")
    print(f"{'model':<30} {'GFLOPs':>7} {'FLOPs x':>7} | {'torch ms':>9} {'speed-up':>8} {'/FLOPs':>6} | "
          f"{'ORT ms':>9} {'speed-up':>8} {'/FLOPs':>6} | {'ORT x':>5}")
    for r in g["rows"]:
        t, o = r["torch"], r["ort"]
        print(f"{r['model']:<30} {r['gflops']:>7.2f} {r['flop_ratio']:>7.2f} | {t['median_ms']:>9.1f} "
              f"{t['speedup']:>8.2f} {t['speedup_over_flop_ratio']:>6.2f} | {o['median_ms']:>9.1f} "
              f"{o['speedup']:>8.2f} {o['speedup_over_flop_ratio']:>6.2f} | {r['ort_over_torch']:>5.2f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", nargs="+", default=["mvit", "vit", "swin"], choices=["mvit", "swin", "vit"])
    p.add_argument("--threads", nargs="+", type=int, default=[2, 1], help="thread counts, each timed in turn")
    p.add_argument("--mvit", nargs="+", default=MVIT_PUBLISHED, choices=MVIT_PUBLISHED,
                   help="the published MViT STTS models of the mvit group (default: all five)")
    p.add_argument("--repeats", type=int, default=7, help="timed round-robin rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per (model, runtime) first")
    p.add_argument("--onnx-dir", default="/tmp/stts_onnx_bench", help="where the exported graphs go (reused)")
    p.add_argument("--quick", action="store_true", help="smoke run: small clips, 1 round")
    p.add_argument("--json", default="", help="also write the results to this JSON file (merged into it if present)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 1, 1
    import onnxruntime

    result = dict(meta=dict(torch=torch.__version__, onnxruntime=onnxruntime.__version__, cpu=cpu_name(),
                            cores=os.cpu_count(), python=platform.python_version(), repeats=args.repeats,
                            warmup=args.warmup, mode="batch 1, float32, eval; torch inference_mode; "
                                                    "ORT CPUExecutionProvider, opset 23"),
                  groups={})
    if args.json and Path(args.json).is_file():  # a run of some groups / thread counts updates the others' file
        result["groups"] = json.loads(Path(args.json).read_text()).get("groups", {})
    for group in args.groups:
        models, shape = build_group(group, args.quick, args.mvit)
        files = export_all(models, shape, Path(args.onnx_dir), args.quick)
        for threads in args.threads:
            g = time_group(models, files, shape, threads, args)
            result["groups"][f"{group}_{threads}t"] = g
            print_group(group, g)
        del models
        if args.json:  # after every group: a long run keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
