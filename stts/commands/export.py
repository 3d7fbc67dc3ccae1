"""Export a checkpoint's weights to safetensors, with the build config in the file's metadata.

    stts export runs/t05/best.pt mvit_b_16x4_stts_t0.5_s0.7.safetensors
    python -c "import stts; m = stts.load_model('mvit_b_16x4_stts_t0.5_s0.7.safetensors')"

Any checkpoint `stts.load_model` reads works (stts training checkpoints, official ones that carry their
config). The metadata key "stts" holds the registry name, kwargs and selection plan as JSON.
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="checkpoint to read (.pt, .pyth, .safetensors)")
    parser.add_argument("output", help="file to write (.safetensors)")


def run(args) -> int:
    from stts.checkpoint import CheckpointError
    from stts.engine.checkpoint import export_safetensors

    if not args.output.endswith(".safetensors"):
        print(f"error: output {args.output!r} must end in .safetensors", file=sys.stderr)
        return 2
    try:
        cfg = export_safetensors(args.checkpoint, args.output)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = (cfg.get("selection") or {}).get("plan") or "dense"
    print(f"wrote {args.output}: {cfg['model']} (plan {plan}, kwargs {cfg['kwargs']})")
    return 0
