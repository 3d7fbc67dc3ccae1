"""Evaluate a checkpoint: multi-view top-1/top-5, mean per-class accuracy, GFLOPs, what selectors keep.

    stts eval configs/mvit_b_16x4_stts_t0.5_s0.7_k400.yaml             # <output_dir>/best.pt on the test split
    stts eval --checkpoint runs/t05/best.pt data.num_temporal_views=5  # settings saved in the checkpoint
    stts eval --checkpoint mvit.safetensors data.root=... data.val_annotations=val.csv
    stts eval --checkpoint dense.pt model.selection=T0_0.5-S4_0.7 model.policy=uniform   # a baseline
    stts eval --checkpoint elastic.pt model.selection=T0_0.3-S4_0.6    # same points, another budget
    stts eval --checkpoint elastic.pt --plans T0_0.25,T0_0.5,T0_0.75    # several budgets, one pass
    stts eval --checkpoint elastic.pt --gflops 20                       # the budget that fits 20 GFLOPs
    torchrun --nproc_per_node 8 -m stts eval CONFIG.yaml               # views sharded, results gathered

Writes a JSON report (eval.report, default <output_dir>/eval_<split>.json) and prints a summary.
Without CONFIG the checkpoint's own run config is the base (training checkpoints carry it; a
save_model / exported file carries only its model, so give the data with data.* overrides).
model.selection / model.policy are honoured: at other amounts of the checkpoint's selection points the
checkpoint's model runs them with its trained scorers (stts.set_plan); a plan of other points is built
from the config and given the checkpoint's weights, and the summary says which scorers start untrained
(a dense checkpoint has none). An elastic checkpoint runs the middle of its ranges unless told.
--plans P1,P2,... evaluates several fixed plans of the model's points in one pass over the data (each
clip decoded once) and writes one JSON (default <output_dir>/eval_<split>_plans.json) with top-1/top-5,
GFLOPs and measured throughput per plan, and an accuracy-vs-GFLOPs PNG beside it. --gflops X runs the
plan of the largest counted cost at most X GFLOPs per view (stts.plan_for).

Checkpoints are read safely (tensors and plain data only); --trust-checkpoint unpickles one the safe
loader refuses, which runs any code a crafted file carries: only for files you trust.
"""

from __future__ import annotations

OVERRIDES = "items"  # key=value arguments may also follow the options (stts.cli)


def add_arguments(parser) -> None:
    parser.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                        help="an optional YAML run config, then overrides such as eval.split=val")
    parser.add_argument("--checkpoint", metavar="PATH", help="weights to evaluate (= eval.checkpoint=PATH)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--plans", metavar="P1,P2,...",
                        help="several fixed plans of the model's selection points, evaluated in one pass over the "
                             "data (e.g. T0_0.25,T0_0.5,T0_0.75)")
    budget.add_argument("--gflops", type=float, metavar="X",
                        help="run the plan of the model's points with the largest counted cost <= X GFLOPs/view")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle a checkpoint that the safe (weights-only) loader refuses. RISK: a "
                             "crafted file runs code as it loads; only for files you trust")


def base_config(ckpt: dict) -> dict | None:
    """The run config a checkpoint stands for: its training config, else what its build config says
    (model name, plan, kwargs; the clip size its kwargs fix)."""
    if ckpt.get("config"):
        return ckpt["config"]
    build = ckpt.get("stts")
    if not build:
        return None
    from stts.models import model_entry
    from stts.plan import SelectionPlan

    kwargs = dict(build.get("kwargs") or {})
    model: dict = {"name": build["model"]}
    selection = build.get("selection")
    try:
        own_plan = model_entry(build["model"]).plan
    except ValueError:  # an unknown name: validation names it
        own_plan = None
    plan = SelectionPlan.from_dict(selection) if selection else None
    # A dense name with a plan added (create_model(selection=...)), or a published variant saved at other
    # amounts of its points (stts.set_plan): the plan it was saved with is the one to evaluate.
    if plan is not None and (own_plan is None or plan.specs != own_plan.specs):
        model.update(selection=str(plan), policy=plan.policy)
    data = {}
    if isinstance(kwargs.get("num_frames"), int):
        data["num_frames"] = kwargs.pop("num_frames")
    if isinstance(kwargs.get("img_size"), int):
        size = kwargs.pop("img_size")
        data.update(crop_size=size, test_short_side=size)
    kwargs.pop("num_classes", None)  # the head: checked against the data's classes
    model["kwargs"] = kwargs
    return {"model": model, "data": data}


def run(args) -> int:
    from stts.checkpoint import read_checkpoint
    from stts.config import load_config
    from stts.engine.evaluate import run_eval
    from stts.errors import DataError, UsageError

    config = None
    overrides = list(args.items)
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    if config is None and not args.checkpoint:
        raise UsageError("give a CONFIG.yaml or --checkpoint PATH")
    base, described, ckpt = None, "no run config", None
    if args.checkpoint:
        overrides.append(f"eval.checkpoint={args.checkpoint}")
        if config is None:  # the checkpoint's own run config is the base: read it here, once
            ckpt = read_checkpoint(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
            base = base_config(ckpt)
            described = "a run config" if ckpt.get("config") else "no run config (weights and model only)"
            for unused in ("optimizer", "scaler", "rng"):  # training state: not needed to evaluate
                ckpt.pop(unused, None)
    cfg = load_config(config, overrides, base=base, base_source=f"checkpoint {args.checkpoint}", check_paths=False)
    d, split = cfg.data, cfg.eval.split
    annotations = (d.test_annotations or d.val_annotations) if split == "test" else d.val_annotations
    if not annotations:
        source = config or f"{args.checkpoint} ({described})"
        raise DataError(f"no data to evaluate: {source} names no {split} annotations; give "
                        f"data.val_annotations=FILE (and data.root=DIR, data.classes_file=FILE) or a CONFIG.yaml")
    plans = None
    if args.plans is not None:
        plans = [p.strip() for p in args.plans.split(",") if p.strip()]
        if not plans:
            raise UsageError(f"--plans {args.plans!r}: give plans separated by commas, e.g. T0_0.25,T0_0.5")
    run_eval(cfg, trust_checkpoint=args.trust_checkpoint, ckpt=ckpt, plans=plans, gflops=args.gflops)
    return 0
