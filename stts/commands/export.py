"""Export a checkpoint: weights to safetensors (with the build config), or the eval model to ONNX.

    stts export runs/t05/best.pt mvit_b_16x4_stts_t0.5_s0.7.safetensors
    python -c "import stts; m = stts.load_model('mvit_b_16x4_stts_t0.5_s0.7.safetensors')"
    stts export runs/t05/best.pt mvit_b_16x4_stts_t0.5_s0.7.onnx     # needs pip install 'stts-video[onnx]'

The format follows the output's suffix. Any checkpoint `stts.load_model` reads works (stts training
checkpoints, official ones that carry their config).
- .safetensors: the weights; the metadata key "stts" holds the registry name, kwargs and plan as JSON.
- .onnx: the model in eval mode (hard top-K, the plan's static K: the later blocks run on the kept
  tokens), input "video" (B, C, T, H, W) with a dynamic batch B, output "logits"; checked against
  torch with ONNX Runtime unless --no-check (see stts.onnx).
The checkpoint is read safely (tensors and plain data only); --trust-checkpoint unpickles one the safe
loader refuses, which runs any code a crafted file carries: only for files you trust.
"""

from __future__ import annotations

import sys
from pathlib import Path

FORMATS = (".safetensors", ".onnx")


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="checkpoint to read (.pt, .pyth, .safetensors)")
    parser.add_argument("output", help="file to write: .safetensors (weights) or .onnx (the eval model)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: stts.onnx.OPSET)")
    parser.add_argument("--no-check", action="store_true", help="ONNX: skip the ONNX Runtime vs torch check")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle a checkpoint that the safe (weights-only) loader refuses. RISK: a "
                             "crafted file runs code as it loads; only for files you trust")


def run(args) -> int:
    from stts.errors import UsageError

    suffix = Path(args.output).suffix
    if suffix not in FORMATS:
        raise UsageError(f"output {args.output!r} must end in {' or '.join(FORMATS)}")
    if suffix == ".onnx":
        return _export_onnx(args)
    from stts.engine.checkpoint import export_safetensors

    cfg = export_safetensors(args.checkpoint, args.output, trust_checkpoint=args.trust_checkpoint)
    plan = (cfg.get("selection") or {}).get("plan") or "dense"
    print(f"wrote {args.output}: {cfg['model']} (plan {plan}, kwargs {cfg['kwargs']})")
    return 0


def _export_onnx(args) -> int:
    from stts.checkpoint import load_model
    from stts.onnx import OPSET, OnnxMismatchError, export_onnx, require_onnx

    require_onnx()  # a missing extra is an `error:` line before the checkpoint is even read
    model = load_model(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
    try:
        report = export_onnx(model, args.output, opset=args.opset or OPSET, check=not args.no_check)
    except OnnxMismatchError as e:  # not the user's mistake: the file is written, but say so (exit 1)
        print(f"error: {e}", file=sys.stderr)
        return 1
    plan = getattr(model, "plan", None)
    C, T, H, W = report.input_shape
    check = ("not checked" if args.no_check else "ONNX Runtime vs torch: max |logit difference| "
             + ", ".join(f"{d:.2g} (batch {b})" for b, d in report.max_abs_diff.items()))
    print(f"wrote {args.output}: {model.model_name} (plan {plan if plan is not None and len(plan) else 'dense'}), "
          f"opset {report.opset}, input video (B, {C}, {T}, {H}, {W}) with dynamic B; {check}")
    return 0
