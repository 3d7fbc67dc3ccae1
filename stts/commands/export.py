"""Export a checkpoint's weights to safetensors, with the build config in the file's metadata.

    stts export runs/t05/best.pt mvit_b_16x4_stts_t0.5_s0.7.safetensors
    python -c "import stts; m = stts.load_model('mvit_b_16x4_stts_t0.5_s0.7.safetensors')"

Any checkpoint `stts.load_model` reads works (stts training checkpoints, official ones that carry their
config). The metadata key "stts" holds the registry name, kwargs and selection plan as JSON.
The checkpoint is read safely (tensors and plain data only); --trust-checkpoint unpickles one the safe
loader refuses, which runs any code a crafted file carries: only for files you trust.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="checkpoint to read (.pt, .pyth, .safetensors)")
    parser.add_argument("output", help="file to write (.safetensors)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle a checkpoint that the safe (weights-only) loader refuses. RISK: a "
                             "crafted file runs code as it loads; only for files you trust")


def run(args) -> int:
    from stts.engine.checkpoint import export_safetensors
    from stts.errors import UsageError

    if not args.output.endswith(".safetensors"):
        raise UsageError(f"output {args.output!r} must end in .safetensors")
    cfg = export_safetensors(args.checkpoint, args.output, trust_checkpoint=args.trust_checkpoint)
    plan = (cfg.get("selection") or {}).get("plan") or "dense"
    print(f"wrote {args.output}: {cfg['model']} (plan {plan}, kwargs {cfg['kwargs']})")
    return 0
