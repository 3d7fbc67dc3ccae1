"""Train or fine-tune a model from a YAML run config (DDP under torchrun).

    stts train configs/mvit_b_16x4_stts_t0.5_s0.7_k400.yaml data.root=/data/k400 train.output_dir=runs/t05
    stts train CONFIG.yaml --finetune MVIT_B_16x4.pyth            # dense/official weights -> STTS model
    stts train CONFIG.yaml train.resume=auto                      # continue from <output_dir>/last.pt
    torchrun --nproc_per_node 8 -m stts train CONFIG.yaml         # 8 processes (nccl on GPU, gloo on CPU)

`key=value` overrides the YAML, which overrides the defaults (the paper's recipe); see stts/config.py.
Overrides may come before or after the options. Ctrl-C prints the command that continues the run.

Checkpoints (--finetune / model.finetune, --resume / train.resume) are read safely: tensors and plain
data only. --trust-checkpoint unpickles one the safe loader refuses; a crafted file then runs code
on this machine as it loads, so use it only for files whose origin you trust.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

OVERRIDES = "overrides"  # key=value arguments may also follow the options (stts.cli)


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.lr=2e-4 train.epochs=5")
    parser.add_argument("--finetune", metavar="PATH", help="start from these weights (= model.finetune=PATH)")
    parser.add_argument("--resume", metavar="PATH|auto", help="continue a run (= train.resume=...)")
    parser.add_argument("--output-dir", metavar="DIR", help="= train.output_dir=DIR")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle a --finetune/--resume checkpoint that the safe (weights-only) loader "
                             "refuses. RISK: a crafted file runs code as it loads; only for files you trust")


def resume_command(args, overrides: list[str]) -> str:
    """The command line that continues this run from its last checkpoint."""
    kept = [o for o in overrides if not o.startswith("train.resume=")]
    argv = ["stts", "train", args.config, *kept, "train.resume=auto"]
    if args.trust_checkpoint:
        argv.append("--trust-checkpoint")
    return shlex.join(argv)


def run(args) -> int:
    from stts.config import load_config
    from stts.engine.train import train

    overrides = list(args.overrides)
    for flag, key in (("finetune", "model.finetune"), ("resume", "train.resume"), ("output_dir", "train.output_dir")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    cfg = load_config(args.config, overrides)  # a ConfigError names the key: stts.cli prints it
    try:
        train(cfg, trust_checkpoint=args.trust_checkpoint)
    except KeyboardInterrupt:
        last = Path(cfg.train.output_dir) / "last.pt"
        where = (f"from {last} (written every train.save_every_steps steps and at each epoch's end)" if last.is_file()
                 else f"from the start: no {last} was written yet")
        print(f"\ninterrupted; to continue {where}:\n  {resume_command(args, overrides)}\n"
              "(under torchrun: the same torchrun command with these arguments)", file=sys.stderr)
        raise
    return 0
