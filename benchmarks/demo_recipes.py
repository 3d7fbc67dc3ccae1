"""Fine-tuning recipes compared on one demo's data and dense model (benchmarks/RESULTS.md, "A fair
comparison: the hard demo"). Each call trains one fine-tuning stage from the demo's dense checkpoint
with DemoSettings overrides and prints (and appends to <demo>/recipes.jsonl) its top-1 and how much
of the event its selectors kept:

    stts demo --hard --seed 1 --threads 1 --out stts-demo-hard-s1          # data, dense, the demo's stages
    python benchmarks/demo_recipes.py stts-demo-hard-s1 dense_ft dense_ft_m0.3 backbone_lr_mult=0.3
    python benchmarks/demo_recipes.py stts-demo-hard-s1 stts readme scorer_warmup_epochs=6 sigma=0.1
    python benchmarks/demo_recipes.py stts-demo-hard-s1 stts after_dense_ft6 finetune_epochs=6 --start dense_ft6

key=value are DemoSettings fields (values read as YAML); the base is `stts demo --hard`'s settings for
the demo's seed. --start NAME fine-tunes from an earlier recipe's last.pt instead of the dense model.
A stage's run config is the one `stts demo` builds (stts.demo.demo_run_config): the same data, start,
schedule and evaluation as the demo's own stages. One thread (the figures were measured that way).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from stts.checkpoint import load_model
from stts.data import DataConfig, build_dataset
from stts.data.synth import synthetic_data_config
from stts.demo import _data_settings, _evaluate_with_events, demo_run_config, hard_settings
from stts.engine.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", type=Path, help="a folder `stts demo --hard` wrote (data/, runs/dense/last.pt)")
    p.add_argument("stage", choices=("dense_ft", "stts", "uniform", "random"))
    p.add_argument("name", help="the recipe's name: <demo>/recipes/<name>/")
    p.add_argument("settings", nargs="*", help="DemoSettings overrides, key=value")
    p.add_argument("--start", help="fine-tune from <demo>/recipes/<START>/runs/*/last.pt instead of the dense model")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle checkpoints of older stts versions")
    args = p.parse_args()

    meta = json.loads((args.demo / "data" / "meta.json").read_text())
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.settings)}
    start = (next((args.demo / "recipes" / args.start / "runs").glob("*/last.pt")) if args.start
             else args.demo / "runs" / "dense" / "last.pt")
    s = hard_settings(seed=meta["seed"], size=meta["size"], out_dir=str(args.demo / "recipes" / args.name),
                      threads=1, progress=False, finetune_eval_every=10**6, **overrides)  # validate once, at the end
    torch.set_num_threads(1)
    data = {"data_config": synthetic_data_config(args.demo / "data", num_frames=meta["num_frames"], size=meta["size"])}
    cfg = demo_run_config(args.stage, s, data, dense_checkpoint=str(start))
    t0 = time.time()
    train(cfg, trust_checkpoint=args.trust_checkpoint)
    val = build_dataset(DataConfig(**_data_settings(data, s)), "val", seed=s.seed)
    m = _evaluate_with_events(load_model(Path(cfg.train.output_dir) / "last.pt"), val, meta, args.demo / "data",
                              (s.size, s.size))
    row = {"seed": s.seed, "stage": args.stage, "name": args.name, "settings": overrides, "start": args.start,
           "top1": round(m["top1"], 2), "event_frame_kept": round(m["event_frame_kept"], 1),
           "event_pixels_kept": round(m["event_pixels_kept"], 1), "time_s": round(time.time() - t0)}
    print(json.dumps(row))
    with open(args.demo / "recipes.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
