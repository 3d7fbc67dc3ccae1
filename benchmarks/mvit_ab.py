"""MViT-B CPU latency of another git revision of stts against the working tree, side by side in one run.

    python benchmarks/mvit_ab.py --rev f04a31d --baseline     # the six published models, 2 threads, 9 rounds
    python benchmarks/mvit_ab.py --rev HEAD~1 --models mvit_b_16x4_stts_t0.4_s0.6 --threads 1 --clock cpu
    python benchmarks/mvit_ab.py --rev f04a31d --train --threads 1 --clock cpu --repeats 5   # training steps

What a speed change bought, measured the way the issue asks (round-robin in one process, medians): the
revision's `stts/models/mvit.py` and `stts/selectors.py` are read with `git show` and imported as
standalone modules; its MViT is built with the working tree's weights (same state dict, the
selectors' scorers included) and its selectors take the revision's classes. Everything else (patch,
top-K, scorer, layers) is the working tree's, so only changes to those two files are compared. `--baseline`
also times the PySlowFast-style forward of benchmarks/mvit_speed.py (the official computation, the proxy
for the official code) in the same rounds: each row then gives the proxy ratio of both revisions.
Every model of a round runs once in turn (old, new, proxy), after warm-up calls; logits of old and new
are compared first. `--clock cpu` times this process's CPU seconds instead of wall-clock (at 1 thread,
less sensitive to other jobs on a shared machine; meaningless with more threads, which may spin).
`--train` times training steps instead (train mode, soft selection; cross-entropy, backward, AdamW over
stts.engine.optim.param_groups, as benchmarks/train_speed.py), old and new in turn; no proxy then.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stts.engine.optim import param_groups
from stts.measure import cpu_name, median
from stts.models import create_model, model_entry
from stts.patch import patch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mvit_speed import MODELS, pyslowfast_forward  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load_revision(rev: str, out_dir: Path):
    """(mvit module, selectors module) of `rev`, imported under private names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mods = {}
    for name, path in (("selectors", "stts/selectors.py"), ("mvit", "stts/models/mvit.py")):
        src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout
        if name == "mvit":  # the revision's model builders must not register names a second time
            src = "\n".join("" if line.startswith("@register_model") else line for line in src.splitlines())
        file = out_dir / f"rev_{name}.py"
        file.write_text(src)
        spec = importlib.util.spec_from_file_location(f"_rev_{name}", file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods["mvit"], mods["selectors"]


def train_step(model):
    """One training step of `model` on the clip it is given (random label), AdamW over param_groups."""
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=1e-4)

    def step(x):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
        opt.step()

    return step


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    rev_mvit, rev_selectors = load_revision(args.rev, Path(args.tmp))
    torch.manual_seed(0)
    dense = create_model("mvit_b_16x4").eval()
    dense_rev = rev_mvit.MViT(**rev_mvit._MVIT_B, num_frames=16).eval()
    dense_rev.load_state_dict(dense.state_dict())
    x = torch.randn(1, 3, args.frames, args.size, args.size, generator=torch.Generator().manual_seed(0))
    calls, diffs = {}, {}
    for name in args.models:
        entry = model_entry(name)
        new = dense if entry.plan is None else patch(copy.deepcopy(dense), entry.plan).eval()
        old = dense_rev if entry.plan is None else patch(copy.deepcopy(dense_rev), entry.plan).eval()
        old.load_state_dict(new.state_dict())  # the same scorer weights
        for sel in old.selectors.values():
            sel.__class__ = getattr(rev_selectors, type(sel).__name__)
        with torch.inference_mode():
            diffs[name] = (old(x) - new(x)).abs().max().item()
        if args.train:
            calls[(name, "old")], calls[(name, "new")] = train_step(old.train()), train_step(new.train())
            continue
        calls[(name, "old")], calls[(name, "new")] = old, new
        if args.baseline:
            calls[(name, "proxy")] = (lambda m: (lambda inp: pyslowfast_forward(m, inp)))(new)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = {key: [] for key in calls}
    load_before = os.getloadavg()
    with torch.inference_mode(not args.train):
        for fn in calls.values():
            for _ in range(args.warmup):
                fn(x)
        for _ in range(args.repeats):
            for key, fn in calls.items():
                t0 = clock()
                fn(x)
                times[key].append(clock() - t0)
    load_after = os.getloadavg()
    rows = []
    for name in args.models:
        old, new = median(times[(name, "old")]), median(times[(name, "new")])
        row = dict(model=name, old_ms=old * 1e3, new_ms=new * 1e3, new_over_old=new / old, max_logit_diff=diffs[name],
                   old_runs_s=times[(name, "old")], new_runs_s=times[(name, "new")])
        if args.baseline:
            proxy = median(times[(name, "proxy")])
            row.update(proxy_ms=proxy * 1e3, proxy_ratio_old=proxy / old, proxy_ratio_new=proxy / new,
                       proxy_runs_s=times[(name, "proxy")])
        rows.append(row)
    return dict(meta=dict(rev=args.rev, mode="train" if args.train else "eval", input=list(x.shape),
                          threads=args.threads, repeats=args.repeats,
                          warmup=args.warmup, clock=args.clock, torch=torch.__version__, cpu=cpu_name(),
                          cores=os.cpu_count(), loadavg_before=load_before, loadavg_after=load_after), rows=rows)


def print_table(result: dict) -> None:
    m = result["meta"]
    print(f"rev {m['rev']} vs working tree, {m['mode']}; input {'x'.join(map(str, m['input']))}, "
          f"{m['threads']} threads, {m['repeats']} rounds, {m['clock']} clock, {m['cpu']}; load average before "
          f"{tuple(round(v, 2) for v in m['loadavg_before'])}, after {tuple(round(v, 2) for v in m['loadavg_after'])}")
    print(f"{'model':<30} {'old ms':>8} {'new ms':>8} {'new/old':>8} {'proxy ms':>9} {'proxy/old':>10} "
          f"{'proxy/new':>10} {'logit diff':>11}")
    for r in result["rows"]:
        proxy = (f"{r['proxy_ms']:>9.1f} {r['proxy_ratio_old']:>10.3f} {r['proxy_ratio_new']:>10.3f}"
                 if "proxy_ms" in r else f"{'-':>9} {'-':>10} {'-':>10}")
        print(f"{r['model']:<30} {r['old_ms']:>8.1f} {r['new_ms']:>8.1f} {r['new_over_old']:>8.3f} {proxy} "
              f"{r['max_logit_diff']:>11.1e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="git revision to compare the working tree with")
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--baseline", action="store_true", help="also time the PySlowFast-style proxy (eval)")
    p.add_argument("--train", action="store_true", help="time training steps instead of eval forwards")
    p.add_argument("--tmp", default="/tmp/stts_mvit_ab", help="where the revision's sources are written")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
