"""Train or fine-tune a model from a YAML run config (DDP under torchrun).

    stts train configs/mvit_b_16x4_stts_t0.5_s0.7_k400.yaml data.root=/data/k400 train.output_dir=runs/t05
    stts train CONFIG.yaml --finetune MVIT_B_16x4.pyth            # dense/official weights -> STTS model
    stts train CONFIG.yaml train.resume=auto                      # continue from <output_dir>/last.pt
    torchrun --nproc_per_node 8 -m stts train CONFIG.yaml         # 8 processes (nccl on GPU, gloo on CPU)

`key=value` overrides the YAML, which overrides the defaults (the paper's recipe); see stts/config.py.
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.lr=2e-4 train.epochs=5")
    parser.add_argument("--finetune", metavar="PATH", help="start from these weights (= model.finetune=PATH)")
    parser.add_argument("--resume", metavar="PATH|auto", help="continue a run (= train.resume=...)")
    parser.add_argument("--output-dir", metavar="DIR", help="= train.output_dir=DIR")


def run(args) -> int:
    from stts.config import ConfigError, load_config

    overrides = list(args.overrides)
    for flag, key in (("finetune", "model.finetune"), ("resume", "train.resume"), ("output_dir", "train.output_dir")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from stts.checkpoint import CheckpointError
    from stts.data import BadDataError
    from stts.engine.train import train

    try:
        train(cfg)
    except (ConfigError, CheckpointError, BadDataError) as e:  # say what, not where in stts
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
