"""Count the GFLOPs (multiply-adds, fvcore's convention) and parameters of a registered model.

    stts flops mvit_b_16x4_stts_t0.5_s0.7              # one line: GFLOPs, params, scorer share, zoo figures
    stts flops mvit_b_16x4 --selection T0_0.5-S4_0.7 --json
    stts flops mvit_b_16x4 --frames 32 --size 256      # another clip shape

The model is built and run on the meta device (shapes only), in eval mode, so selectors take their
hard top-K and the blocks after them are counted at their reduced size. For a published model the
zoo's figures come along: `official_gflops` (fvcore on the authors' code, the yardstick) and
`readme_gflops` (the authors' README; two MViT figures there cannot be reproduced by their code).
"""

from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="NAME", help="a registered name (see `stts list-models`)")
    parser.add_argument("--selection", default=None, metavar="PLAN",
                        help="selection plan added to a dense model, e.g. T0_0.5-S4_0.7")
    parser.add_argument("--frames", type=int, default=0, help="clip length T (default: the model's)")
    parser.add_argument("--size", type=int, default=0, help="crop size H = W (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--kwargs", default="{}", help="JSON builder kwargs, e.g. '{\"num_classes\": 174}'")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def flops_report(name: str, *, selection: str | None = None, frames: int = 0, size: int = 0, batch_size: int = 1,
                 **kwargs) -> dict:
    """GFLOPs, parameters and zoo figures of a registered model, as plain data."""
    import torch

    from stts.flops import count_flops
    from stts.models import create_model
    from stts.models.zoo import ZOO

    with torch.device("meta"):  # no weights are allocated or initialised
        model = create_model(name, selection=selection, **kwargs)
    default = getattr(model, "input_size", None)  # (C, T, H, W) of the default clip
    if default is None:
        if not (frames and size):
            raise ValueError(f"{name} has no default input size: give --frames and --size")
        default = (3, frames, size, size)
    C, T, H, W = default
    shape = (batch_size, C, frames or T, size or H, size or W)
    fc = count_flops(model, shape)
    plan = getattr(model, "plan", None)
    selectors = sum(p.numel() for n, p in model.named_parameters() if n.startswith("selectors."))
    report = {
        "model": name,
        "selection": str(plan) if plan is not None and len(plan) else None,
        "input_shape": list(shape),
        "gflops": fc.gflops,
        "scorer_gflops": fc.scorer_gflops,
        "params": sum(p.numel() for p in model.parameters()),
        "scorer_params": selectors,
        "gflops_by_operator": {k: v / 1e9 for k, v in sorted(fc.by_operator.items())},
    }
    zoo = ZOO.get(name)
    # The zoo's figures describe the published configuration only: same plan, default clip, batch 1.
    if zoo is not None and selection is None and not kwargs and shape == (1, C, T, H, W):
        report["zoo"] = {
            "official_gflops": zoo.official_gflops,
            "readme_gflops": zoo.readme_gflops,
            "official_gflops_hooks": zoo.official_gflops_hooks,
            "top1": zoo.top1,
            "diff_vs_official_pct": 100.0 * (fc.gflops / zoo.official_gflops - 1.0),
            "official_config": zoo.official_config,
        }
    return report


def run(args) -> int:
    try:
        kwargs = json.loads(args.kwargs)
        report = flops_report(args.model, selection=args.selection, frames=args.frames, size=args.size,
                              batch_size=args.batch_size, **kwargs)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    shape = "x".join(str(s) for s in report["input_shape"])
    line = (f"{report['model']}  {report['selection'] or 'dense'}  input {shape}: {report['gflops']:.2f} GFLOPs "
            f"(scorers {report['scorer_gflops']:.3f}), {report['params'] / 1e6:.2f} M params")
    print(line)
    zoo = report.get("zoo")
    if zoo:
        readme = f"{zoo['readme_gflops']:.1f}" if zoo["readme_gflops"] is not None else "-"
        print(f"  official code (fvcore) {zoo['official_gflops']:.2f} GFLOPs ({zoo['diff_vs_official_pct']:+.2f}%), "
              f"README {readme}, top-1 {zoo['top1'] if zoo['top1'] is not None else '-'}")
    return 0
