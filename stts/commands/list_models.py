"""List registered models (with the published top-1 and GFLOPs of the zoo models).

    stts list-models                # every registered name
    stts list-models 'mvit*'        # shell-style pattern
    stts list-models --zoo          # the published models with their numbers
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style pattern (default: all)")
    parser.add_argument("--zoo", action="store_true", help="only published models, with their numbers")


def run(args) -> int:
    from stts.models import list_models, model_entry
    from stts.models.zoo import ZOO

    names = list_models(args.pattern)
    if args.zoo:
        names = [n for n in names if n in ZOO]
        print(f"{'model':<30} {'plan':<20} {'frames':>6} {'top-1':>6} {'README GFLOPs':>13} {'official GFLOPs':>15}")
        for n in names:
            z = ZOO[n]
            top1 = f"{z.top1:.1f}" if z.top1 is not None else "-"
            readme = f"{z.readme_gflops:.1f}" if z.readme_gflops is not None else "-"
            print(f"{n:<30} {z.plan or 'dense':<20} {z.frames_kept:>6} {top1:>6} {readme:>13} "
                  f"{z.official_gflops:>15.2f}")
        return 0
    for n in names:
        plan = model_entry(n).plan
        print(n if plan is None else f"{n}  ({plan})")
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    return 0
