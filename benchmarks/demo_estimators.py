"""Which perturbed top-K estimator fine-tunes best on the demo: its STTS stage with each estimator,
from one dense checkpoint per seed.

    python benchmarks/demo_estimators.py --seed 0 --out /tmp/demo_estimators    # then --seed 1
    python benchmarks/demo_estimators.py --seed 0 --variants diagonal,full+loo --threads 1

Per seed: the demo's dataset and dense stage (`stts demo`'s settings) once, then the demo's STTS stage
(T0_0.5-S1_0.6, 6 scorer-only + 6 joint epochs) once per variant, from the same dense weights, the same
data order and the same per-clip noise seeds: only the estimator differs. A variant is
`<jacobian>[+<variance_reduction>]`: diagonal (the authors'), full, full+loo, full+antithetic, ...
Per variant (one JSON line each, appended to <out>/estimators.jsonl and printed): top-1 and the event
metrics of the last checkpoint on the 300 validation clips, the validation top-1 after every epoch and
its mean (how fast it learns: the tiebreaker when the demo's top-1 saturates), and the wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from stts.checkpoint import load_model
from stts.data import DataConfig, build_dataset
from stts.demo import DemoSettings, _data_settings, _evaluate_with_events, demo_run_config, make_demo_data
from stts.engine.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo-estimators", help="runs and estimators.jsonl (a seed<N>/ folder per seed)")
    p.add_argument("--variants", default="diagonal,full+loo,full+antithetic")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.out) / f"seed{args.seed}"
    base = DemoSettings(out_dir=str(root), seed=args.seed, threads=args.threads, progress=False)
    data = make_demo_data(base)
    meta = json.loads(Path(data["meta"]).read_text())
    dense = root / "runs" / "dense" / "last.pt"
    if not dense.exists():  # reused by every variant (and by a later call for more variants)
        train(demo_run_config("dense", base, data))
    val = build_dataset(DataConfig(**_data_settings(data, base)), "val", seed=args.seed)
    for variant in args.variants.split(","):
        jacobian, _, reduction = variant.partition("+")
        s = DemoSettings(out_dir=str(root / "ft" / variant), seed=args.seed, threads=args.threads, progress=False,
                         jacobian=jacobian, variance_reduction=reduction or "none")
        cfg = demo_run_config("stts", s, data, dense_checkpoint=str(dense))
        t0 = time.time()
        train(cfg)
        elapsed = time.time() - t0
        out = Path(cfg.train.output_dir)
        m = _evaluate_with_events(load_model(out / "last.pt"), val, meta, Path(data["root"]), (s.size, s.size))
        records = [json.loads(line) for line in open(out / "metrics.jsonl")]
        curve = [r["val_top1"] for r in records if r["kind"] == "epoch" and "val_top1" in r]
        row = {"seed": args.seed, "variant": variant, "top1": round(m["top1"], 2),
               "event_frame_kept": round(m["event_frame_kept"], 2), "event_pixels_kept": round(m["event_pixels_kept"], 2),
               "val_curve": [round(v, 2) for v in curve], "mean_val_top1": round(sum(curve) / max(len(curve), 1), 2),
               "time_s": round(elapsed)}
        print(json.dumps(row), flush=True)
        with open(Path(args.out) / "estimators.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
