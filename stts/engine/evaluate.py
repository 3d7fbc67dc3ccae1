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
from stts.engine.build import amp_dtype_for, build_model
from stts.engine.logging import eval_summary
from stts.engine.selection_stats import SelectionStats
from stts.errors import CheckpointError
from stts.models import model_entry
from stts.plan import parse_plan
from stts.weights import load_state_dict_checked, read_checkpoint

__all__ = ["aggregate_views", "accuracy_metrics", "evaluate", "eval_model", "run_eval"]


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
    raw = getattr(model, "module", model)
    was_training = raw.training
    raw.eval()
    sums = torch.zeros(num_videos, num_classes, device=device)
    counts = torch.zeros(num_videos, device=device)
    labels = torch.full((num_videos,), -1, dtype=torch.long, device=device)
    stats, bad = SelectionStats(), []
    clips, model_time, t0 = 0, 0.0, time.perf_counter()
    padded, nonfinite = 0, torch.zeros((), dtype=torch.long, device=device)  # views; summed on the device
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", unit="batch", leave=False)
    for batch in batches:
        bad += batch["bad"]
        x = batch["video"].to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tm = time.perf_counter()
        with autocast(device, amp_dtype):
            logits, selections = raw(x, return_selections=True)  # no DDP wrapper needed without grads
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_time += time.perf_counter() - tm
        clips += x.shape[0]
        padded += int(batch["padded"].sum()) if "padded" in batch else 0  # a CPU tensor: no device sync
        nonfinite += (~torch.isfinite(logits.detach().float()).all(dim=-1)).sum()
        index = batch["index"].to(device)
        s, c = aggregate_views(index, logits, num_videos, average)
        sums += s
        counts += c
        labels[index] = batch["label"].to(device)
        stats.update(selections)
    raw.train(was_training)
    # Views of one video may sit on several ranks: sum the tables, then average.
    D.all_reduce(sums)
    D.all_reduce(counts)
    D.all_reduce(labels, op="max")  # -1 where this rank saw no view of the video
    seen = counts > 0
    scores = (sums[seen] / counts[seen, None]).cpu()
    metrics = accuracy_metrics(scores, labels[seen].cpu())
    total_clips = D.all_gather_objects((clips, model_time, padded))
    bad = [b for part in D.all_gather_objects(bad) for b in part]
    D.all_reduce(nonfinite)
    metrics.update(
        num_videos=num_videos,
        skipped_videos=int((~seen).sum()),
        bad=sorted(set(bad)),
        views=int(counts.sum().item()),
        padded_views=sum(p for _, _, p in total_clips),
        nonfinite_views=int(nonfinite.item()),
        clips_per_s=sum(c for c, _, _ in total_clips) / max(max(t for _, t, _ in total_clips), 1e-9),
        wall_s=time.perf_counter() - t0,
        selections=stats.reduce().summary(),
    )
    return metrics


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
    """The model `stts eval` runs: the checkpoint's own, or, when cfg.model asks for another selection
    plan or policy, cfg's model with the checkpoint's weights. -> (model, note or None).

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


def run_eval(cfg, *, checkpoint: str | None = None, trust_checkpoint: bool = False, ckpt: dict | None = None) -> dict:
    """`stts eval`: load the checkpoint, evaluate `cfg.eval.split`, write the JSON report (rank 0).

    cfg.model decides the selection plan: a checkpoint of another plan is evaluated under cfg's plan
    (see `eval_model`). ckpt: the checkpoint dict, if the caller has read it already (a file is read
    once per command). trust_checkpoint: unpickle a checkpoint the safe (weights-only) loader refuses;
    that runs any code the file carries: only for files you trust.
    """
    from stts.data import build_dataset, build_loader
    from stts.flops import count_flops

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
        model = model.to(env.device)
        if note and env.main:
            print(note)
        loader = build_loader(ds, cfg.data, batch_size=cfg.eval.batch_size or cfg.train.batch_size, train=False,
                              distributed=env.ddp, seed=cfg.train.seed)
        amp = amp_dtype_for(cfg.train.amp, env.device)
        result = evaluate(model, loader, num_videos=ds.num_videos, num_classes=ds.num_classes, device=env.device,
                          amp_dtype=amp, average=cfg.eval.average, progress=cfg.train.progress and env.main)
        gflops = count_flops(model, (1, *ds.video_shape)).gflops
        plan = getattr(model, "plan", None)
        report = {
            "checkpoint": str(ckpt_path), "model": model.model_name, "plan": str(plan) if plan else None,
            "policy": plan.policy if plan else None,  # how the selectors score (stts.policies)
            "note": note, "split": cfg.eval.split, "sampling": ds.sampling, "views_per_video": ds.num_views,
            "average": cfg.eval.average, "gflops_per_view": gflops, "gflops_per_video": gflops * ds.num_views,
            **result, "world_size": env.world_size, "device": str(env.device),
            "amp": str(amp).replace("torch.", "") if amp else "off",
        }
        path = Path(cfg.eval.report or out_dir / f"eval_{cfg.eval.split}.json")
        if env.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1))
            print(eval_summary(report, path))
        report["report_path"] = str(path)
        return report
    finally:
        D.cleanup()
