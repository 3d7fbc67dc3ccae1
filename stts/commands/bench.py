"""Latency and throughput of registered models (eval mode), with the speed-up and FLOP ratio vs the first.

    stts bench mvit_b_16x4 mvit_b_16x4_stts_t0.5_s0.7 --batch-size 1 --threads 2
    stts bench mvit_b_16x4 mvit_b_16x4_stts_t0.9_s0.9 --device cuda --batch-size 32 --dtype bfloat16
    stts bench mvit_b_16x4 mvit_b_16x4:T0_0.5-S4_0.7 --frames 8 --size 112 --json   # NAME:PLAN adds a plan
    stts bench mvit_b_16x4 mvit_b_16x4:T0_0.5-S4_0.7@change mvit_b_16x4_stts_t0.5_s0.7@uniform  # @POLICY scores
    stts bench mvit_b_16x4 mvit_b_16x4_stts_t0.5_s0.7:T0_0.3-S4_0.6   # a published model at another budget
    stts bench mvit_b_16x4 mvit_b_16x4_stts_t0.5_s0.7 --gflops 20     # ... at the budget that fits 20 GFLOPs
    stts bench mvit_tiny mvit_tiny:T0_0.5-S1_0.6 --compile      # torch.compile every model first

Models run round-robin (one call of each in turn, `--repeats` rounds, after `--warmup` calls each), so
drifts of the machine (clock, thermals, other jobs) hit every model alike; latency is the median.
GFLOPs are multiply-adds per clip (stts.flops, the papers' convention). --gflops X runs every model that
has selection points at the plan of the largest counted cost at most X (stts.plan_for; models without
run as they are: the dense baseline). With --compile each model is torch.compile'd (inductor, static
shapes: a selector's K is a Python int of the token grid) and called once before the warm-up; that
first call's time is reported as compile_s.
"""

from __future__ import annotations

import json

from stts.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="registered names, or NAME:PLAN for a dense name plus a plan, each optionally "
                             "@POLICY (learned, uniform, random, change, saliency); the first is the baseline")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--frames", type=int, default=None, help="clip length (default: the model's)")
    parser.add_argument("--size", type=int, default=None, help="crop size (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="autocast dtype (float32: none)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per model first")
    parser.add_argument("--kwargs", default="{}", help="JSON builder kwargs for every model")
    parser.add_argument("--gflops", type=float, default=None, metavar="X",
                        help="run each model with selection points at the plan of the largest counted cost <= X")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model (inductor) first")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    import torch

    from stts.commands.flops import build_for_clip, parse_kwargs
    from stts.engine.build import set_plan_for_gflops
    from stts.engine.distributed import parse_device
    from stts.flops import count_flops
    from stts.measure import median, time_fn, time_round_robin
    from stts.patch import running_plan

    for option in ("batch_size", "repeats", "warmup", "threads"):
        minimum = 1 if option in ("batch_size", "repeats") else 0
        if getattr(args, option) < minimum:
            raise UsageError(f"--{option.replace('_', '-')} {getattr(args, option)}: must be >= {minimum}")
    device = parse_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = parse_kwargs(args.kwargs)
    models = []
    for spec in args.models:
        spec, _, policy = spec.partition("@")
        name, _, plan = spec.partition(":")
        model = build_for_clip(name, selection=plan or None, policy=policy or None, frames=args.frames,
                               size=args.size, **kwargs).eval()
        if args.gflops is not None and len(getattr(model, "selectors", ())):
            set_plan_for_gflops(model, args.gflops)
        models.append(model)
    models = [m.to(device) for m in models]
    C, T, H, W = models[0].input_size
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, C, T, H, W).to(device)  # built on CPU: the same clip on every device
    gflops = [count_flops(m, (1, C, T, H, W)).gflops for m in models]
    amp = torch.autocast(device.type, dtype=getattr(torch, args.dtype)) if args.dtype != "float32" else None
    runners, compile_s = models, [None] * len(models)
    if args.compile:
        import torch._dynamo

        # Each model is a new `self` for the same forward code, so one compiled entry of it each: past
        # dynamo's recompile limit (8) the rest would silently run eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(models))
        runners = [torch.compile(m, dynamic=False) for m in models]
        with torch.inference_mode(), (amp if amp is not None else _null()):
            for i, m in enumerate(runners):  # the first call compiles
                compile_s[i] = time_fn(lambda m=m: m(x), warmup=0, repeats=1, device=device)[0]
    with torch.inference_mode(), (amp if amp is not None else _null()):
        timed = time_round_robin({i: (lambda m=m: m(x)) for i, m in enumerate(runners)}, warmup=args.warmup,
                                 repeats=args.repeats, device=device)
    times = [timed[i] for i in range(len(models))]
    rows = []
    for name, m, g, ts, cs in zip(args.models, models, gflops, times, compile_s):
        lat = median(ts)
        plan = running_plan(m)  # what it runs (an elastic plan: its middle)
        rows.append({"model": name, "plan": str(plan) if plan is not None else None,
                     "policy": plan.policy if plan is not None else None,
                     "gflops": g, "latency_ms": 1e3 * lat, "clips_per_s": args.batch_size / lat,
                     **({"compile_s": cs} if cs is not None else {})})
    for r in rows:
        r["speedup"] = rows[0]["latency_ms"] / r["latency_ms"]
        r["flop_ratio"] = r["gflops"] / rows[0]["gflops"]
    setup = {"batch_size": args.batch_size, "input": [C, T, H, W], "device": str(device), "dtype": args.dtype,
             "threads": torch.get_num_threads(), "repeats": args.repeats, "compile": args.compile}
    if args.json:
        print(json.dumps({"setup": setup, "results": rows}, indent=1))
        return 0
    print(f"batch {args.batch_size} x {C}x{T}x{H}x{W}, {device}, {args.dtype}, {setup['threads']} threads, "
          f"{'torch.compile, ' if args.compile else ''}median of {args.repeats} round-robin rounds")
    print(f"{'model':<32} {'plan':<20} {'policy':<9} {'GFLOPs':>8} {'FLOPs x':>8} {'ms':>9} {'clips/s':>9} "
          f"{'speed-up':>8}")
    for r in rows:
        print(f"{r['model']:<32} {r['plan'] or 'dense':<20} {r['policy'] or '-':<9} {r['gflops']:>8.4g} "
              f"{r['flop_ratio']:>8.3f} {r['latency_ms']:>9.2f} {r['clips_per_s']:>9.2f} {r['speedup']:>7.2f}x")
    return 0


def _null():
    from contextlib import nullcontext

    return nullcontext()
