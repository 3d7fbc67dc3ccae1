"""CPU latency of dense MViT-B 16x4 against the five published STTS models, next to their FLOP ratios.

    python benchmarks/mvit_speed.py                          # batch 1, 16x224x224, 2 threads, 9 rounds
    python benchmarks/mvit_speed.py --quick                  # smoke run: 8x112x112, 2 rounds
    python benchmarks/mvit_speed.py --json benchmarks/results/mvit_speed.json
    python benchmarks/mvit_speed.py --retain-memory          # glibc keeps freed memory (fewer page faults)

Eval mode, torch.inference_mode, float32, random weights (the cost does not depend on them; selection
is a hard top-K + gather in eval). Models are timed in turn, one call each per round (round-robin),
after warm-up calls, so that the drifts of a shared machine hit all of them alike; the median of the
rounds is reported, and speed-ups are ratios of medians measured side by side in this one run.
GFLOPs come from stts.flops (fvcore's convention) on the meta device. The official implementation's
latencies on this kind of machine (tests/fixtures/official_latency_cpu.json) are printed for reference.

`--baseline` also times, in the same rounds, a PySlowFast-style forward of the same modules and weights
(`pyslowfast_forward` below, written from the fixtures' description of the official MViT: fused qkv
reshaped to heads, channels-first pooling copies, attention as matmul + softmax + matmul, pos embeds
by repeat / repeat_interleave): a baseline measured side by side, immune to how busy the machine was
when the official figures were taken. Its logits are checked against stts's first.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from stts.flops import count_flops
from stts.measure import cpu_name, median
from stts.models import create_model, model_entry
from stts.patch import patch

MODELS = [
    "mvit_b_16x4",
    "mvit_b_16x4_stts_t0.9_s0.9",
    "mvit_b_16x4_stts_t0.8_s0.9",
    "mvit_b_16x4_stts_t0.6_s0.9",
    "mvit_b_16x4_stts_t0.5_s0.7",
    "mvit_b_16x4_stts_t0.4_s0.6",
]
OFFICIAL = {  # official_latency_cpu.json rows -> our names
    "MViT-B 16x4 dense": "mvit_b_16x4",
    "MViT-B t0_0.9_s4_0.9": "mvit_b_16x4_stts_t0.9_s0.9",
    "MViT-B t0_0.5_s4_0.7": "mvit_b_16x4_stts_t0.5_s0.7",
}
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official_latency_cpu.json"
# glibc malloc settings that keep freed memory in the process instead of returning it to the OS:
# a forward allocates and frees tens of MB per block, and each fresh page costs a page fault (about
# 40-50 thousand faults per dense MViT-B forward with the defaults). Read at process start only.
RETAIN_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**34),
                     "MALLOC_TOP_PAD_": str(2**30)}


def official_latency() -> dict:
    if not FIXTURE.is_file():
        return {}
    rows = json.loads(FIXTURE.read_text())["rows"]
    return {OFFICIAL[r["model"]]: r["median_s"] for r in rows if r["model"] in OFFICIAL}


# ---------------------------------------------------------------------------------------------------
# PySlowFast-style forward of an stts MViT (same modules, same weights), the way the official code
# computes it. Only for timing; stts.models.mvit is the implementation.
# ---------------------------------------------------------------------------------------------------


def _pyslowfast_pool(t, pool, thw, norm):
    """(B, nh, 1 + T*H*W, hd) -> pooled (B, nh, 1 + T'*H'*W', hd): channels-first copy, conv, back."""
    import torch.nn.functional as F

    cls, t = t[:, :, :1], t[:, :, 1:]
    B, nh, L, hd = t.shape
    t = t.reshape(B * nh, *thw, hd).permute(0, 4, 1, 2, 3).contiguous()  # (B*nh, hd, T, H, W)
    if pool.mode == "conv":
        t = F.conv3d(t, pool.weight, None, pool.stride, pool.padding, 1, hd)
    else:
        t = F.max_pool3d(t, pool.kernel, pool.stride, pool.padding)
    thw = tuple(t.shape[2:])
    t = torch.cat([cls, t.reshape(B, nh, hd, -1).transpose(2, 3)], dim=2)
    return (norm(t) if norm is not None else t), thw


def _pyslowfast_block(blk, x, thw):
    attn = blk.attn
    B, N, C = x.shape
    nh, hd = attn.num_heads, attn.head_dim
    qkv = attn.qkv(blk.norm1(x)).reshape(B, N, 3, nh, hd).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, N, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]
    new_thw = thw
    if attn.pool_q is not None:
        q, new_thw = _pyslowfast_pool(q, attn.pool_q, thw, attn.norm_q)
    if attn.pool_k is not None:
        k, _ = _pyslowfast_pool(k, attn.pool_k, thw, attn.norm_k)
        v, _ = _pyslowfast_pool(v, attn.pool_v, thw, attn.norm_v)
    a = (q @ k.transpose(-2, -1)) * hd ** -0.5
    a = a.softmax(dim=-1)
    y = attn.proj((a @ v).transpose(1, 2).reshape(B, -1, C))
    if blk.pool_skip is not None:
        x, _ = _pyslowfast_pool(x.unsqueeze(1), blk.pool_skip, thw, None)
        x = x.squeeze(1)
    x = x + y
    xn = blk.norm2(x)
    m = blk.mlp(xn)
    if blk.proj is not None:
        x = blk.proj(xn)
    return x + m, new_thw


def pyslowfast_forward(model, x):
    """Logits of an stts MViT (sep pos embed + class token) computed the PySlowFast way."""
    from stts.patch import run_selectors

    x = model.patch_embed.proj(x)  # channels-first conv
    thw = tuple(x.shape[2:])
    x = x.flatten(2).transpose(1, 2)
    B, N, C = x.shape
    if thw != model.patch_grid:  # the official code has no resampling: borrow stts's for other sizes
        x = model._pos_embed(x.contiguous(), thw)
    else:
        x = torch.cat([model.cls_token.expand(B, -1, -1), x], dim=1)
        T, H, W = thw
        pos = model.pos_embed_spatial.repeat(1, T, 1) + torch.repeat_interleave(model.pos_embed_temporal, H * W, 1)
        x = x + torch.cat([model.pos_embed_class, pos], dim=1)
    for i, blk in enumerate(model.blocks):
        x, thw = run_selectors(model.selectors, i, x, thw)
        x, thw = _pyslowfast_block(blk, x, thw)
    return model.head(model.norm(x)[:, 0])


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    shape = (1, 3, args.frames, args.size, args.size)
    models, gflops = {}, {}
    torch.manual_seed(0)
    dense = create_model(args.models[0]).eval()
    for name in args.models:
        # Every published model is the dense one plus its plan: build it once and patch copies, so all
        # models share the backbone weights (and the slow full-size init runs once).
        entry = model_entry(name)
        base = model_entry(args.models[0])
        if name == args.models[0]:
            models[name] = dense
        elif entry.plan is not None and base.plan is None and name.startswith(args.models[0]):
            models[name] = patch(copy.deepcopy(dense), entry.plan).eval()
        else:
            models[name] = create_model(name).eval()
        gflops[name] = count_flops(models[name], shape).gflops
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    calls = {name: m for name, m in models.items()}
    if args.baseline:
        with torch.inference_mode():
            for name, m in models.items():
                err = (pyslowfast_forward(m, x) - m(x)).abs().max().item()
                if err > 1e-4:
                    raise RuntimeError(f"PySlowFast-style forward of {name} differs from stts by {err}")
                calls[f"{name} [pyslowfast-style]"] = (lambda m: (lambda inp: pyslowfast_forward(m, inp)))(m)
    load_before = os.getloadavg()
    times = {name: [] for name in calls}
    cpu = {name: [] for name in calls}  # process CPU time (all threads): less sensitive to other jobs
    with torch.inference_mode():
        for name, fn in calls.items():  # warm-up: oneDNN primitives, allocator, caches
            for _ in range(args.warmup):
                fn(x)
        for _ in range(args.repeats):
            for name, fn in calls.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    load_after = os.getloadavg()
    base = args.models[0]
    official = official_latency() if shape == (1, 3, 16, 224, 224) and args.threads == 2 else {}
    rows = []
    for name in calls:
        model_name = name.split(" [")[0]
        med = median(times[name])
        speedup = median(times[base]) / med
        flop_ratio = gflops[base] / gflops[model_name]
        plan = getattr(models[model_name], "plan", None)
        rows.append(dict(model=name, plan=str(plan) if plan else None,
                         gflops=gflops[model_name], flop_ratio=flop_ratio, median_s=med, min_s=min(times[name]),
                         runs_s=times[name], cpu_median_s=median(cpu[name]), speedup=speedup,
                         speedup_over_flop_ratio=speedup / flop_ratio,
                         official_median_s=official.get(name),
                         stts_over_this=(median(times[name]) / median(times[model_name]) if name != model_name
                                         else None)))
    return dict(
        meta=dict(input=list(shape), threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                  torch=torch.__version__, cpu=cpu_name(), cores=os.cpu_count(), python=platform.python_version(),
                  mode="eval + torch.inference_mode, float32, random weights, round-robin timing",
                  loadavg_before=load_before, loadavg_after=load_after,
                  retain_memory=all(os.environ.get(k) == v for k, v in RETAIN_MEMORY_ENV.items())),
        rows=rows,
    )


def print_table(result: dict) -> None:
    m = result["meta"]
    print(f"input {'x'.join(map(str, m['input']))}, {m['threads']} threads, {m['repeats']} rounds, "
          f"torch {m['torch']}, {m['cpu']} ({m['cores']} cores)")
    if m.get("retain_memory"):
        print("glibc malloc keeps freed memory (--retain-memory)")
    print(f"load average before {tuple(round(v, 2) for v in m['loadavg_before'])}, "
          f"after {tuple(round(v, 2) for v in m['loadavg_after'])}")
    print(f"{'model':<50} {'GFLOPs':>7} {'FLOP x':>7} {'median ms':>10} {'min ms':>8} {'speed-up':>9} "
          f"{'/FLOP x':>8} {'CPU ms':>8} {'official ms':>12}")
    for r in result["rows"]:
        off = f"{r['official_median_s'] * 1e3:.0f}" if r["official_median_s"] else "-"
        print(f"{r['model']:<50} {r['gflops']:>7.2f} {r['flop_ratio']:>7.2f} {r['median_s'] * 1e3:>10.1f} "
              f"{r['min_s'] * 1e3:>8.1f} {r['speedup']:>9.2f} {r['speedup_over_flop_ratio']:>8.2f} "
              f"{r['cpu_median_s'] * 1e3:>8.0f} {off:>12}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=9, help="timed rounds (each model once per round)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model first")
    p.add_argument("--models", nargs="+", default=MODELS, help="registered names; the first is the baseline")
    p.add_argument("--quick", action="store_true", help="smoke run: 8x112x112 clips, 2 rounds, 1 warm-up")
    p.add_argument("--baseline", action="store_true",
                   help="also time a PySlowFast-style forward of every model (same weights), side by side")
    p.add_argument("--json", default="", help="also write the result to this JSON file")
    p.add_argument("--retain-memory", action="store_true",
                   help="re-run this script with glibc told to keep freed memory (MALLOC_* variables)")
    args = p.parse_args(argv)
    if args.retain_memory and any(os.environ.get(k) != v for k, v in RETAIN_MEMORY_ENV.items()):
        os.environ.update(RETAIN_MEMORY_ENV)  # malloc reads them at start-up: restart the interpreter
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.quick:
        args.frames, args.size, args.repeats, args.warmup = 8, 112, 2, 1
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
