"""Count the GFLOPs (multiply-adds, fvcore's convention) and parameters of a registered model.

    stts flops mvit_b_16x4_stts_t0.5_s0.7              # one line: GFLOPs, params, scorer share, zoo figures
    stts flops mvit_b_16x4 --selection T0_0.5-S4_0.7 --json
    stts flops mvit_b_16x4 --selection T0_0.5-S4_0.7 --policy change   # training-free: its distances, no scorers
    stts flops mvit_b_16x4 --frames 32 --size 256      # another clip shape
    stts flops mvit_b_16x4_stts_t0.5_s0.7 --selection T0_0.3-S4_0.6   # another budget at its points
    stts flops mvit_b_16x4 --selection T0_0.25:0.75-S4_0.6:1.0         # elastic: low end, middle, high end
    stts flops mvit_b_16x4_stts_t0.5_s0.7 --gflops 20  # the plan of the largest cost <= 20 GFLOPs

The model is built for the clip (--frames, --size) and run on the meta device (shapes only), in eval
mode, so selectors take their hard top-K and the blocks after them are counted at their reduced size.
--frames and --size must be positive multiples of the model's patch stride (its token grid), and
--batch-size at least 1; a plan that does not fit the clip is an error naming it. --selection at a
published model's own selection points gives other amounts; an elastic plan (ranges) is counted at its
middle, with its low and high ends listed. --gflops X picks the plan of the model's selection points (an
elastic plan: within its ranges) whose counted cost is the largest at most X (stts.plan_for). For a
published model the zoo's figures come along: `official_gflops` (fvcore on the authors' code, the
yardstick) and `readme_gflops` (the authors' README; two MViT figures there cannot be reproduced by their code).
The counts charge every token the official code computes; `computed_gflops` is what stts's forward
computes, which skips the tokens nothing reads (MViT: the keys and values its strided pools never read,
the last block's tokens other than the class token).
"""

from __future__ import annotations

import json

from stts.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="NAME", help="a registered name (see `stts list-models`)")
    parser.add_argument("--selection", default=None, metavar="PLAN",
                        help="selection plan added to a dense model, e.g. T0_0.5-S4_0.7")
    parser.add_argument("--policy", default=None, metavar="NAME",
                        help="how the selectors score: learned (the scorers) or a training-free policy, "
                             "uniform | random | change | saliency (default: the plan's)")
    parser.add_argument("--frames", type=int, default=None,
                        help="clip length T, a multiple of the temporal patch stride (default: the model's)")
    parser.add_argument("--size", type=int, default=None,
                        help="crop size H = W, a multiple of the spatial patch stride (default: the model's)")
    parser.add_argument("--gflops", type=float, default=None, metavar="X",
                        help="the plan of the model's selection points with the largest counted cost <= X GFLOPs")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--kwargs", default="{}", help="JSON builder kwargs, e.g. '{\"num_classes\": 174}'")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def build_for_clip(name: str, *, selection: str | None = None, policy: str | None = None, frames: int | None = None,
                   size: int | None = None, **kwargs):
    """`create_model` for a clip of `frames` x `size` (None: the model's default), its selectors scoring
    by `policy` (None: the plan's); UsageError naming the option when a value is not positive, does not
    tile into the model's patches, or the model or its plan cannot be built for it."""
    from stts.models import create_model

    for option, value in (("--frames", frames), ("--size", size)):
        if value is not None and value < 1:
            raise UsageError(f"{option} {value}: must be >= 1")
    clip = {**({"num_frames": frames} if frames is not None else {}), **({"img_size": size} if size is not None else {})}
    what = f"{name}{f' with selection {selection}' if selection else ''}{f' and policy {policy}' if policy else ''}"
    try:
        plan = _with_policy(name, selection, policy)
        model = create_model(name, selection=plan, **clip, **kwargs)
    except (TypeError, ValueError) as e:  # unknown name, plan, policy or kwarg; a plan that does not fit the clip
        raise UsageError(f"{what}: {e}") from None
    stride = _patch_stride(model)
    if stride is not None:
        for option, value, s in (("--frames", frames, stride[0]), ("--size", size, stride[1])):
            if value is not None and value % s:
                raise UsageError(f"{option} {value}: {name} cuts clips into {stride[0]}x{stride[1]}x{stride[2]} "
                                 f"(T x H x W) patches, so it must be a multiple of {s}")
    return model


def _with_policy(name: str, selection: str | None, policy: str | None):
    """The plan to build `name` with: `selection` (or the variant's own plan) scored by `policy`."""
    from stts.models import model_entry
    from stts.plan import parse_plan

    if policy is None:
        return selection
    plan = parse_plan(selection) if selection else model_entry(name).plan
    if plan is None or not len(plan):
        raise ValueError(f"a policy scores the selectors of a plan, and {name} has none: give a selection plan")
    return plan.with_settings(policy=policy)


def _patch_stride(model) -> tuple[int, int, int] | None:
    """(t, h, w) stride of the model's patch embedding, if it has the usual `patch_embed.proj` conv."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    stride = getattr(proj, "stride", None)
    return tuple(stride) if stride is not None and len(stride) == 3 else None


def flops_report(name: str, *, selection: str | None = None, policy: str | None = None, frames: int | None = None,
                 size: int | None = None, batch_size: int = 1, gflops: float | None = None, **kwargs) -> dict:
    """GFLOPs, parameters and zoo figures of a registered model, as plain data."""
    import torch

    from stts.engine.build import set_plan_for_gflops
    from stts.flops import count_flops
    from stts.models.zoo import ZOO
    from stts.patch import at_plan, running_plan

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be >= 1")
    with torch.device("meta"):  # no weights are allocated or initialised
        model = build_for_clip(name, selection=selection, policy=policy, frames=frames, size=size, **kwargs)
    default = getattr(model, "input_size", None)  # (C, T, H, W) of the clip it was built for
    if default is None:
        if not (frames and size):
            raise UsageError(f"{name} has no default input size: give --frames and --size")
        default = (3, frames, size, size)
    C, T, H, W = default
    shape = (batch_size, C, T, H, W)
    if gflops is not None:
        set_plan_for_gflops(model, gflops, input_size=default)
    fc = count_flops(model, shape)
    plan, running = getattr(model, "plan", None), running_plan(model)
    selectors = sum(p.numel() for n, p in model.named_parameters() if n.startswith("selectors."))
    report = {
        "model": name,
        "selection": str(running) if running is not None else None,
        "policy": running.policy if running is not None else None,
        **({"target_gflops": gflops} if gflops is not None else {}),
        "input_shape": list(shape),
        "gflops": fc.gflops,
        "computed_gflops": count_flops(model, shape, as_published=False).gflops,
        "scorer_gflops": fc.scorer_gflops,
        "params": sum(p.numel() for p in model.parameters()),
        "scorer_params": selectors,
        "gflops_by_operator": {k: v / 1e9 for k, v in sorted(fc.by_operator.items())},
    }
    if plan is not None and plan.elastic:  # the ranges' ends and middle (the model runs the middle)
        report["elastic"] = str(plan)
        report["points"] = {}
        for tag, u in (("lo", 0.0), ("mid", 0.5), ("hi", 1.0)):
            with at_plan(model, plan.at(u)):
                report["points"][tag] = {"plan": str(plan.at(u)), "gflops": count_flops(model, shape).gflops}
    zoo = ZOO.get(name)
    # The zoo's figures describe the published configuration only: same plan, default clip, batch 1.
    published = selection is None and policy in (None, "learned") and gflops is None and not kwargs
    if zoo is not None and published and frames is None and size is None and batch_size == 1:
        report["zoo"] = {
            "official_gflops": zoo.official_gflops,
            "readme_gflops": zoo.readme_gflops,
            "official_gflops_hooks": zoo.official_gflops_hooks,
            "top1": zoo.top1,
            "diff_vs_official_pct": 100.0 * (fc.gflops / zoo.official_gflops - 1.0),
            "official_config": zoo.official_config,
        }
    return report


def parse_kwargs(text: str) -> dict:
    """--kwargs JSON -> dict; UsageError naming it."""
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--kwargs {text!r}: not JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise UsageError(f"--kwargs {text!r}: expected a JSON object such as '{{\"num_classes\": 174}}'")
    return kwargs


def run(args) -> int:
    report = flops_report(args.model, selection=args.selection, policy=args.policy, frames=args.frames, size=args.size,
                          batch_size=args.batch_size, gflops=args.gflops, **parse_kwargs(args.kwargs))
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    shape = "x".join(str(s) for s in report["input_shape"])
    policy = f" ({report['policy']} policy)" if report["policy"] else ""
    # The selectors' own cost: the scorers', or a training-free policy's (its distances; 0 for uniform, random).
    scoring = "scorers" if report["policy"] in (None, "learned") else f"{report['policy']} scoring"
    line = (f"{report['model']}  {report['selection'] or 'dense'}{policy}  input {shape}: "
            f"{report['gflops']:.2f} GFLOPs ({scoring} {report['scorer_gflops']:.3f}), "
            f"{report['params'] / 1e6:.2f} M params")
    print(line)
    if report["computed_gflops"] < report["gflops"]:
        print(f"  computed by stts's forward: {report['computed_gflops']:.2f} GFLOPs (it skips the tokens nothing reads; "
              f"the counts here are the published convention)")
    if "target_gflops" in report:
        print(f"  --gflops {report['target_gflops']:g}: the largest counted cost at most the target")
    for tag, p in report.get("points", {}).items():
        print(f"  elastic {report['elastic']}, {tag}: {p['plan']} {p['gflops']:.2f} GFLOPs")
    zoo = report.get("zoo")
    if zoo:
        readme = f"{zoo['readme_gflops']:.1f}" if zoo["readme_gflops"] is not None else "-"
        print(f"  official code (fvcore) {zoo['official_gflops']:.2f} GFLOPs ({zoo['diff_vs_official_pct']:+.2f}%), "
              f"README {readme}, top-1 {zoo['top1'] if zoo['top1'] is not None else '-'}")
    return 0
