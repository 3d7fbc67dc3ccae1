"""Evaluate a checkpoint: multi-view top-1/top-5, mean per-class accuracy, GFLOPs, what selectors keep.

    stts eval configs/mvit_b_16x4_stts_t0.5_s0.7_k400.yaml             # <output_dir>/best.pt on the test split
    stts eval --checkpoint runs/t05/best.pt data.num_temporal_views=5  # settings saved in the checkpoint
    stts eval --checkpoint mvit.safetensors data.root=... data.val_annotations=val.csv
    torchrun --nproc_per_node 8 -m stts eval CONFIG.yaml               # views sharded, results gathered

Writes a JSON report (eval.report, default <output_dir>/eval_<split>.json) and prints a summary.
Without CONFIG the checkpoint's own run config is the base (training checkpoints carry it).
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                        help="an optional YAML run config, then overrides such as eval.split=val")
    parser.add_argument("--checkpoint", metavar="PATH", help="weights to evaluate (= eval.checkpoint=PATH)")


def run(args) -> int:
    from stts.checkpoint import CheckpointError, read_checkpoint
    from stts.config import ConfigError, load_config

    config = None
    overrides = list(args.items)
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    if config is None and not args.checkpoint:
        print("error: give a CONFIG.yaml or --checkpoint PATH", file=sys.stderr)
        return 2
    base = None
    if args.checkpoint:
        overrides.append(f"eval.checkpoint={args.checkpoint}")
        if config is None:
            try:
                ckpt = read_checkpoint(args.checkpoint)
            except CheckpointError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            base = ckpt.get("config") or ({"model": {"name": ckpt["stts"]["model"]}} if "stts" in ckpt else None)
    try:
        cfg = load_config(config, overrides, base=base, base_source=f"checkpoint {args.checkpoint}",
                          check_paths=False)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from stts.engine.evaluate import run_eval

    from stts.data import BadDataError

    try:
        run_eval(cfg)
    except (CheckpointError, BadDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
