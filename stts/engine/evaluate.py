"""Evaluation: multi-view aggregation per video, top-1 / top-5 / mean per-class accuracy, what the
selectors keep, throughput; and `run_eval(cfg)`, the engine call behind `stts eval`.

    result = evaluate(model, loader, num_videos=ds.num_videos, num_classes=ds.num_classes, device=dev)
    result["top1"], result["top5"], result["mean_class_acc"]    # percent, over the videos evaluated
    result["selections"]["T0"]["kept_fraction_per_frame"]        # how often each frame was kept

Each loader item is one (video, view); its logits (or softmax) are summed into row `index` of a
(num_videos, num_classes) table, all-reduced over ranks, and divided by the number of views seen.
Videos without a single decodable view are "skipped": left out of the accuracies and listed.
Nothing is hidden: views whose clip ran past the end of a short video ("padded_views") and views with
non-finite logits ("nonfinite_views"; their video counts as wrong, never as a lucky NaN top-1) are
counted and reported.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from stts.checkpoint import load_model
from stts.engine import distributed as D
from stts.engine.build import amp_dtype_for, build_model, selection_plan, set_plan_for_gflops
from stts.engine.logging import eval_plans_summary, eval_summary
from stts.engine.selection_stats import SelectionStats
from stts.errors import CheckpointError, ConfigError, UsageError
from stts.flops import count_flops
from stts.models import model_entry
from stts.patch import at_plan, running_plan, set_plan
from stts.plan import parse_plan
from stts.weights import load_state_dict_checked, read_checkpoint

__all__ = ["aggregate_views", "accuracy_metrics", "evaluate", "evaluate_plans", "eval_model", "run_eval"]


def aggregate_views(index: Tensor, scores: Tensor, num_videos: int, average: str = "logits") -> tuple[Tensor, Tensor]:
    """Sum per-view scores into their videos: index (V,), scores (V, C) -> sums (num_videos, C), counts (num_videos,).

    average="softmax" sums probabilities instead of logits. Divide sums by counts after reducing over ranks.
    """
    scores = scores.float()
    if average == "softmax":
        scores = scores.softmax(dim=-1)
    sums = torch.zeros(num_videos, scores.shape[1], dtype=torch.float32, device=scores.device)
    sums.index_add_(0, index.to(scores.device), scores)  # (V, C) -> (num_videos, C)
    counts = torch.bincount(index.to(scores.device), minlength=num_videos).float()
    return sums, counts


def accuracy_metrics(scores: Tensor, labels: Tensor, *, topk: int = 5) -> dict:
    """scores (N, C) averaged per video, labels (N,) -> top-1, top-k, mean per-class accuracy (percent).

    Mean per-class accuracy averages the top-1 accuracy of each class present in `labels`. A row with a
    non-finite score counts as wrong (topk would rank a NaN first and might hit the label by chance).
    """
    n, c = scores.shape
    if n == 0:
        return {"top1": 0.0, f"top{topk}": 0.0, "mean_class_acc": 0.0, "videos": 0}
    k = min(topk, c)
    top = scores.topk(k, dim=1).indices  # (N, k)
    valid = torch.isfinite(scores).all(dim=1)  # (N,)
    correct1 = (top[:, 0] == labels) & valid
    correctk = (top == labels[:, None]).any(dim=1) & valid
    per_class = [correct1[labels == cls].float().mean().item() for cls in labels.unique().tolist()]
    return {"top1": 100.0 * correct1.float().mean().item(), f"top{topk}": 100.0 * correctk.float().mean().item(),
            "mean_class_acc": 100.0 * float(np.mean(per_class)), "videos": n}


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, num_videos: int, num_classes: int, device: torch.device,
             amp_dtype: torch.dtype | None = None, average: str = "logits", progress: bool = False) -> dict:
    """Multi-view evaluation over `loader` (this rank's share); metrics are over all ranks."""
    return evaluate_plans(model, loader, [None], num_videos=num_videos, num_classes=num_classes, device=device,
                          amp_dtype=amp_dtype, average=average, progress=progress)[0]


class _Tally:
    """One plan's running sums of an evaluation pass (on the device: no sync per batch)."""

    def __init__(self, num_videos: int, num_classes: int, device: torch.device):
        self.sums = torch.zeros(num_videos, num_classes, device=device)
        self.nonfinite = torch.zeros((), dtype=torch.long, device=device)
        self.stats, self.model_time = SelectionStats(), 0.0


@torch.no_grad()
def evaluate_plans(model: nn.Module, loader, plans, *, num_videos: int, num_classes: int, device: torch.device,
                   amp_dtype: torch.dtype | None = None, average: str = "logits", progress: bool = False) -> list[dict]:
    """`evaluate` at several fixed plans of the model's selection points in one pass over `loader`: each
    batch is decoded once and run under every plan in turn (`stts.patch.at_plan`; None: as the model
    stands). Returns one metrics dict per plan, in order; "clips_per_s" is each plan's own model time,
    measured interleaved batch by batch, so drifts of the machine hit every plan alike."""
    raw = getattr(model, "module", model)
    was_training = raw.training
    raw.eval()
    tallies = [_Tally(num_videos, num_classes, device) for _ in plans]
    counts = torch.zeros(num_videos, device=device)
    labels = torch.full((num_videos,), -1, dtype=torch.long, device=device)
    bad, clips, padded, t0 = [], 0, 0, time.perf_counter()
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", unit="batch", leave=False)
    for batch in batches:
        bad += batch["bad"]
        x = batch["video"].to(device, non_blocking=True)
        index = batch["index"].to(device)
        for plan, tally in zip(plans, tallies):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tm = time.perf_counter()
            with at_plan(raw, plan) if plan is not None else nullcontext(), autocast(device, amp_dtype):
                logits, selections = raw(x, return_selections=True)  # no DDP wrapper needed without grads
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tally.model_time += time.perf_counter() - tm
            tally.nonfinite += (~torch.isfinite(logits.detach().float()).all(dim=-1)).sum()
            tally.sums += aggregate_views(index, logits, num_videos, average)[0]
            tally.stats.update(selections)
        counts += torch.bincount(index, minlength=num_videos).float()
        clips += x.shape[0]
        padded += int(batch["padded"].sum()) if "padded" in batch else 0  # a CPU tensor: no device sync
        labels[index] = batch["label"].to(device)
    raw.train(was_training)
    # Views of one video may sit on several ranks: sum the tables, then average.
    D.all_reduce(counts)
    D.all_reduce(labels, op="max")  # -1 where this rank saw no view of the video
    seen = counts > 0
    bad = sorted({b for part in D.all_gather_objects(bad) for b in part})
    shared = dict(num_videos=num_videos, skipped_videos=int((~seen).sum()), bad=bad, views=int(counts.sum().item()))
    results = []
    for tally in tallies:
        D.all_reduce(tally.sums)
        D.all_reduce(tally.nonfinite)
        metrics = accuracy_metrics((tally.sums[seen] / counts[seen, None]).cpu(), labels[seen].cpu())
        ranks = D.all_gather_objects((clips, tally.model_time, padded))
        metrics.update(
            **shared,
            padded_views=sum(p for _, _, p in ranks),
            nonfinite_views=int(tally.nonfinite.item()),
            clips_per_s=sum(c for c, _, _ in ranks) / max(max(t for _, t, _ in ranks), 1e-9),
            wall_s=time.perf_counter() - t0,
            selections=tally.stats.reduce().summary(),
        )
        results.append(metrics)
    return results


def _plan_key(plan) -> tuple[str, str]:
    """(canonical plan string, policy) of a SelectionPlan, a plan string or None; ("", "learned") = dense."""
    plan = parse_plan(plan)
    return (str(plan), plan.policy) if len(plan) else ("", "learned")


def _config_plan_key(cfg) -> tuple[str, str]:
    """The plan `cfg.model` asks for: model.selection (with model.policy), else the name's own plan."""
    m = cfg.model
    if m.selection:
        return str(parse_plan(m.selection)), m.policy
    own = model_entry(m.name).plan  # a published variant's plan, scored by model.policy
    return (str(own), m.policy) if own is not None and len(own) else ("", "learned")


def eval_model(cfg, ckpt: dict, path, num_classes: int) -> tuple[nn.Module, str | None]:
    """The model `stts eval` runs: the checkpoint's own; at other amounts of the same selection points
    (cfg.model.selection), the checkpoint's own model with its trained scorers (`stts.set_plan`); for
    other points or another policy, cfg's model with the checkpoint's weights. -> (model, note or None).

    Never ignores the request: the scorers a dense checkpoint lacks start untrained (the note says so);
    a checkpoint missing any other weight, or trained for another number of classes, is refused.
    """
    own = load_model(ckpt, name=path)
    have = _plan_key(getattr(own, "plan", None))
    wanted = _config_plan_key(cfg)
    if getattr(own, "num_classes", num_classes) != num_classes:
        raise CheckpointError(f"{path} predicts {own.num_classes} classes but the {cfg.eval.split} data has "
                              f"{num_classes} (data.classes_file / data.labels_file / data.num_classes)")
    if wanted == have:
        return own, None
    plan = selection_plan(cfg)
    mine = getattr(own, "plan", None)
    if (plan is not None and mine is not None and len(mine) and plan.points == mine.points
            and plan.policy == mine.policy and cfg.model.name == getattr(own, "model_name", None)):
        # Same points, other amounts: the checkpoint's own model, its trained scorers kept (set_plan).
        try:
            set_plan(own, plan.with_settings(**mine.settings))
        except ValueError as e:
            raise ConfigError(f"model.selection={cfg.model.selection!r}: {e}") from None
        return own, (f"note: evaluating {_describe_plan(wanted)} (from the config) with the trained scorers of the "
                     f"{_describe_plan(have)} checkpoint {path} (same selection points: stts.set_plan)")
    model = build_model(cfg, num_classes)
    sd = own.state_dict()  # the checkpoint's weights under stts names (official keys already translated)
    try:
        rep = load_state_dict_checked(model, sd, strict=False, source=str(path))
    except CheckpointError as e:
        raise CheckpointError(f"model.selection / model.name ask for {_describe_plan(wanted)}, which does not fit "
                              f"the {_describe_plan(have)} checkpoint {path}: {e}") from None
    fresh = [k for k in rep["missing"] if k.startswith("selectors.")]
    others = [k for k in rep["missing"] if k not in fresh]
    if others:
        raise CheckpointError(f"model.selection / model.name ask for {_describe_plan(wanted)}, but the "
                              f"{_describe_plan(have)} checkpoint {path} lacks {len(others)} of its weights "
                              f"(e.g. {others[:3]}): not the same backbone")
    note = f"note: evaluating {_describe_plan(wanted)} (from the config) with the weights of the " \
           f"{_describe_plan(have)} checkpoint {path}"
    if fresh:
        note += f"; its scorers are not in the checkpoint and start UNTRAINED ({len(fresh)} tensors)"
    if rep["unexpected"]:
        note += f"; {len(rep['unexpected'])} checkpoint tensors are unused (e.g. {rep['unexpected'][:2]})"
    return model, note


def _describe_plan(key: tuple[str, str]) -> str:
    plan, policy = key
    if not plan:
        return "dense"
    return f"plan {plan}" + (f" ({policy} policy)" if policy != "learned" else "")


def run_eval(cfg, *, checkpoint: str | None = None, trust_checkpoint: bool = False, ckpt: dict | None = None,
             plans: "list[str] | None" = None, gflops: float | None = None) -> dict:
    """`stts eval`: load the checkpoint, evaluate `cfg.eval.split`, write the JSON report (rank 0).

    cfg.model decides the selection plan: a checkpoint of another plan is evaluated under cfg's plan
    (see `eval_model`). ckpt: the checkpoint dict, if the caller has read it already (a file is read
    once per command). trust_checkpoint: unpickle a checkpoint the safe (weights-only) loader refuses;
    that runs any code the file carries: only for files you trust.
    gflops: run the plan of the model's points with the largest counted cost at most this
        (`stts.plan_for`; an elastic model searches its ranges).
    plans: several fixed plans of the model's points, evaluated in one pass over the data (each clip
        decoded once, every batch run under each plan): one report with a row per plan and an
        accuracy-vs-GFLOPs PNG beside it (eval.report, default <output_dir>/eval_<split>_plans.json).
    """
    from stts.data import build_dataset, build_loader

    env = D.setup(cfg.train.device)
    try:
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        out_dir = Path(cfg.train.output_dir)
        ckpt_path = Path(checkpoint or cfg.eval.checkpoint or out_dir / "best.pt")
        if ckpt is None:
            ckpt = read_checkpoint(ckpt_path, trust_checkpoint=trust_checkpoint)
        ds = build_dataset(cfg.data, cfg.eval.split, seed=cfg.train.seed)
        model, note = eval_model(cfg, ckpt, ckpt_path, ds.num_classes)
        del ckpt
        if gflops is not None:
            picked = set_plan_for_gflops(model, gflops, input_size=ds.video_shape)
            note = (note + "; " if note else "note: ") + f"--gflops {gflops:g} picked {picked}"
        points = [_fixed_plan(model, p) for p in plans] if plans else [None]
        model = model.to(env.device)
        if note and env.main:
            print(note)
        loader = build_loader(ds, cfg.data, batch_size=cfg.eval.batch_size or cfg.train.batch_size, train=False,
                              distributed=env.ddp, seed=cfg.train.seed)
        amp = amp_dtype_for(cfg.train.amp, env.device)
        results = evaluate_plans(model, loader, points, num_videos=ds.num_videos, num_classes=ds.num_classes,
                                 device=env.device, amp_dtype=amp, average=cfg.eval.average,
                                 progress=cfg.train.progress and env.main)
        rows = []
        for point, result in zip(points, results):
            with at_plan(model, point) if point is not None else nullcontext():
                cost = count_flops(model, (1, *ds.video_shape)).gflops
                running = running_plan(model)
            rows.append({"plan": str(running) if running is not None else None, "gflops_per_view": cost,
                         "gflops_per_video": cost * ds.num_views, **result})
        declared = getattr(model, "plan", None)  # the plan it was built with (elastic: its ranges)
        selects = declared is not None and len(declared) > 0
        report = {
            "checkpoint": str(ckpt_path), "model": model.model_name,
            "policy": declared.policy if selects else None,  # how the selectors score (stts.policies)
            **({"elastic": str(declared)} if selects and declared.elastic else {}),
            "note": note, "split": cfg.eval.split, "sampling": ds.sampling, "views_per_video": ds.num_views,
            "average": cfg.eval.average, **({"target_gflops": gflops} if gflops is not None else {}),
        }
        device = {"world_size": env.world_size, "device": str(env.device),
                  "amp": str(amp).replace("torch.", "") if amp else "off"}
        if plans:
            report.update(plans=rows, **device)
            default = out_dir / f"eval_{cfg.eval.split}_plans.json"
        else:
            report.update(**rows[0], **device)
            default = out_dir / f"eval_{cfg.eval.split}.json"
        path = Path(cfg.eval.report or default)
        if env.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            if plans:
                report["figure"] = _plot_plans(rows, path.with_suffix(".png"), report)
            path.write_text(json.dumps(report, indent=1))
            print(eval_plans_summary(report, path) if plans else eval_summary(report, path))
        report["report_path"] = str(path)
        return report
    finally:
        D.cleanup()


def _fixed_plan(model: nn.Module, text: str):
    """One --plans entry as a fixed plan of the model's points (UsageError naming it otherwise)."""
    try:
        plan = parse_plan(text, **model.plan.settings) if getattr(model, "plan", None) is not None else parse_plan(text)
        if plan.elastic:
            raise ValueError("a range; give its points, e.g. " + ",".join(str(plan.at(u)) for u in (0.0, 0.5, 1.0)))
        with at_plan(model, plan):  # fits the model's points and maps
            pass
    except ValueError as e:
        raise UsageError(f"--plans: {text!r}: {e}") from None
    return plan


def _plot_plans(rows: list[dict], path: Path, report: dict) -> str | None:
    """Top-1 against GFLOPs per view, one point per plan (None when matplotlib is not installed)."""
    try:
        from stts.vis import plot_accuracy_vs_gflops

        plot_accuracy_vs_gflops([{"name": r["plan"], "gflops": r["gflops_per_view"], "top1": r["top1"], "kind": "stts"}
                                 for r in rows], path,
                                title=f"{report['model']} ({Path(report['checkpoint']).name}), {report['split']}")
    except ImportError:
        return None
    return str(path)
