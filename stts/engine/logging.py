"""What people see: a text log, JSONL + TensorBoard metrics, and the one-screen summaries.

    log = RunLogger(out_dir, enabled=env.main, tensorboard=True)
    log.info("epoch 3: ...")                     # stderr + <out>/train.log
    log.metrics("train", {"loss": 1.2, "lr": 1e-4}, step=120)   # <out>/metrics.jsonl + TensorBoard
    log.close()

Only rank 0 writes (`enabled=False` elsewhere turns every call into a no-op).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from stts.engine.selection_stats import format_selections

__all__ = ["RunLogger", "train_summary", "eval_summary"]


class RunLogger:
    def __init__(self, out_dir: "str | Path", *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.tb = None
        self.logger = logging.getLogger("stts.train")
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        for h in list(self.logger.handlers):  # one run per process at a time: drop a previous run's files
            self.logger.removeHandler(h)
            h.close()
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for h in (logging.StreamHandler(sys.stderr), logging.FileHandler(self.out_dir / "train.log")):
            h.setFormatter(fmt)
            self.logger.addHandler(h)
        self.jsonl = open(self.out_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:  # tensorboard is an optional extra (stts-video[train])
                self.logger.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def info(self, msg: str) -> None:
        if self.enabled:
            self.logger.info(msg)

    def metrics(self, kind: str, values: dict, step: int) -> None:
        """One JSONL record {"kind", "step", "time", **values}; the scalars also go to TensorBoard."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for tag, v in _scalars(values, kind):
                self.tb.add_scalar(tag, v, step)
            self.tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)
            h.close()


def _scalars(value, tag: str):
    """(tag, number) pairs of a nested dict/list, e.g. epoch/val_selections/T0/kept_fraction_per_frame/3."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _scalars(v, f"{tag}/{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _scalars(v, f"{tag}/{i}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield tag, value


def _fmt_time(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


def train_summary(s: dict) -> str:
    """The end-of-training screen."""
    best = f"{s['best_top1']:.2f}% (epoch {s['best_epoch']})" if s.get("best_top1") is not None else "not evaluated"
    lines = [
        "=" * 72,
        f"stts train: {s['model']}  plan {s['plan'] or 'dense'}  ({s['params_m']:.2f} M params)",
        f"  steps {s['step']}/{s['total_steps']}  epochs {s['epochs_done']:.2f}  time {_fmt_time(s['time_s'])}"
        f"  ({s['world_size']} process{'es' if s['world_size'] > 1 else ''}, {s['device']}, amp {s['amp']})",
        f"  best val top-1 {best}   last train loss {s['last_loss']:.4f}",
        f"  GFLOPs per view {s['gflops']:.4g}  (input {s['input_shape']})",
    ]
    if s.get("points"):  # an elastic plan: its middle is what the model runs unless told otherwise
        lines.append("  elastic      " + ", ".join(f"{tag} {p['plan']} {p['gflops']:.4g} GFLOPs"
                                                    for tag, p in s["points"].items()))
    if s.get("stopped_early"):
        lines.append(f"  stopped at train.max_steps={s['step']}; continue with train.resume=auto")
    if "skipped_samples" in s:
        skipped = (f"skipped {s['skipped_samples']} bad training samples (list: {s['bad_list']})"
                   if s["skipped_samples"] else "no bad training samples")
        padded = (f"; {s['padded_clips']} clips padded (videos shorter than a {s['clip']} clip repeat frames)"
                  if s.get("padded_clips") else "")
        lines.append(f"  data         {skipped}{padded}")
    lines += [
        f"  checkpoints  {s['out_dir']}/last.pt"
        + (f", {s['out_dir']}/best.pt" if s.get("best_top1") is not None else ""),
        f"  logs         {s['out_dir']}/train.log, metrics.jsonl, tb/ (tensorboard --logdir {s['out_dir']}/tb)",
        "=" * 72,
    ]
    return "\n".join(lines)


def eval_plans_summary(r: dict, path) -> str:
    """The end-of-evaluation screen of `stts eval --plans`: one row per plan."""
    first = r["plans"][0]
    lines = [
        "=" * 72,
        f"stts eval --plans: {r['model']}  ({r['checkpoint']})" + (f", elastic {r['elastic']}" if r.get("elastic") else "")
        + (f", {r['policy']} policy" if r.get("policy") else ""),
        f"  {r['split']}: {first['videos']} of {first['num_videos']} videos, {r['views_per_video']} views each"
        f" ({r.get('sampling', 'clip')} sampling, {r['average']} averaged), decoded once for "
        f"{len(r['plans'])} plans; skipped {first['skipped_videos']}",
        f"  {'plan':<28} {'top-1':>7} {'top-5':>7} {'GFLOPs/view':>12} {'clips/s':>9}",
    ]
    for p in r["plans"]:
        lines.append(f"  {p['plan'] or 'dense':<28} {p['top1']:>7.2f} {p['top5']:>7.2f} {p['gflops_per_view']:>12.4g} "
                     f"{p['clips_per_s']:>9.1f}" + (f"  ({p['nonfinite_views']} views non-finite)"
                                                    if p.get("nonfinite_views") else ""))
    lines.append(f"  throughput: model time only, plans interleaved batch by batch ({r['world_size']} process(es), "
                 f"{r['device']}, amp {r['amp']})")
    if r.get("note"):
        lines.append(f"  {r['note']}")
    lines += [f"  report       {path}" + (f", {r['figure']}" if r.get("figure") else " (no figure: matplotlib missing)"),
              "=" * 72]
    return "\n".join(lines)


def eval_summary(r: dict, path) -> str:
    """The end-of-evaluation screen."""

    policy = f"  policy {r['policy']}" if r.get("policy") else ""
    lines = [
        "=" * 72,
        f"stts eval: {r['model']}  plan {r['plan'] or 'dense'}{policy}"
        + (f" (the middle of elastic {r['elastic']}; --plans runs others)" if r.get("elastic") else "")
        + f"  ({r['checkpoint']})",
        f"  {r['split']}: {r['videos']} of {r['num_videos']} videos, {r['views_per_video']} views each"
        f" ({r.get('sampling', 'clip')} sampling, {r['average']} averaged); skipped {r['skipped_videos']}",
        f"  top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  mean per-class {r['mean_class_acc']:.2f}%",
        f"  GFLOPs per view {r['gflops_per_view']:.4g}  x {r['views_per_video']} views = {r['gflops_per_video']:.4g}",
        f"  throughput {r['clips_per_s']:.1f} clips/s (model only; {r['world_size']} process(es), {r['device']}, "
        f"amp {r['amp']})  wall {_fmt_time(r['wall_s'])}",
    ]
    if r.get("note"):
        lines.append(f"  {r['note']}")
    if r.get("padded_views"):
        lines.append(f"  {r['padded_views']} views padded (videos shorter than the clip repeat frames)")
    if r.get("nonfinite_views"):
        lines.append(f"  WARNING {r['nonfinite_views']} views had non-finite logits; their videos count as wrong")
    sel = format_selections(r["selections"])
    if sel:
        lines += ["  selectors:"] + [f"    {line}" for line in sel.splitlines()]
    lines += [f"  report       {path}", "=" * 72]
    return "\n".join(lines)
