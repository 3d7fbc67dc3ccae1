"""`stts demo`: STTS end to end on real video files, in minutes on a CPU.

    stts demo                                   # ~7-8 minutes on 2 quiet CPU cores (estimated); report in stts-demo/
    stts demo --seed 1 --out stts-demo-seed1    # another seed
    stts demo --clips-per-class 300 --dense-epochs 40 --budgets 0.2,0.5,0.8   # scale it

What it does, in the published order (PAPER.md: STTS is a fine-tuning method):
1. writes a synthetic action dataset as mp4 files + Kinetics-style CSVs (`stts data synth`): the label
   is a coloured square shown in 2 of 16 frames (one temporal token of 8) in a quarter of the frame;
2. trains a dense `mvit_tiny` on it;
3. fine-tunes one elastic STTS model from the dense weights (T0_k4:8-S1_a6:8: 4 to 8 of 8 temporal
   tokens, a 6x6 to 8x8 anchor of the 8x8 map, a budget drawn per step), scorers alone first, then jointly;
4. fine-tunes a fixed-budget STTS model at 28% of the tokens (T0_0.5-S1_0.6) the same way, and the
   non-learned baselines at that plan with the same epochs: uniform (evenly spaced frames, centre
   anchor) and random (random frames and anchor);
5. evaluates at three budgets (28%, 50%, 75% of the tokens, each the elastic plan's point nearest it):
   the elastic model (`stts.set_plan`), and the training-free policies (change, saliency, uniform,
   random) applied to the dense model with no training (`stts.patch(dense, plan, policy=...)`); top-1,
   how often the selectors kept the event, GFLOPs per view, CPU latency; writes the report:
   results.md / results.json, accuracy_vs_gflops.png (a curve per policy), selection.png (what the
   elastic model keeps at 28%; selection_<policy>.png for contrast).
Every training stage is an ordinary `stts train` run (`<out>/runs/<stage>/config.yaml` replays it).

`stts demo --hard` (HARD below) is the setting where dense stays below 100%: it adds dense fine-tuned
for the same epochs with the same schedule (dense_ft), the fair reference for what selection costs, and
reports the fixed-budget models only (no elastic stage, no budgets).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

__all__ = ["DemoSettings", "HARD", "hard_settings", "make_demo_data", "run_demo", "demo_run_config",
           "budget_plans", "target_gaps"]


@dataclass
class DemoSettings:
    out_dir: str = "stts-demo"
    seed: int = 0
    # data (stts.data.synth)
    num_classes: int = 6
    clips_per_class: int = 100
    val_clips_per_class: int = 50
    size: int = 32
    event_size: int = 16
    event_frames: int = 2  # frames showing the event (one temporal token of 2 frames)
    num_distractors: int = 3  # moving grey blobs per clip
    # training
    model: str = "mvit_tiny"
    plan: str = "T0_0.5-S1_0.6"  # the fixed-budget STTS model and the fine-tuned baselines (28% of the tokens)
    # The elastic model's ranges (a budget drawn per training step): from the fixed plan's 28% to every token.
    elastic_plan: str = "T0_k4:8-S1_a6:8"
    budgets: tuple[float, ...] = (0.28, 0.5, 0.75)  # token fractions reported (the elastic plan's nearest points)
    # Applied to the dense model at every budget with no training (stts.policies).
    free_policies: tuple[str, ...] = ("change", "saliency", "uniform", "random")
    dense_epochs: int = 20
    finetune_epochs: int = 12
    scorer_warmup_epochs: int = 6  # of the fine-tuning epochs, scorers alone (backbone frozen)
    lr: float = 1e-3  # dense training
    finetune_lr: float = 2e-3  # the scorers'; the backbone gets backbone_lr_mult x (a baseline: all of it)
    backbone_lr_mult: float = 0.1  # the published 0.1
    finetune_eval_every: int = 1  # epochs between validations while fine-tuning (the report evaluates last.pt)
    batch_size: int = 8
    sigma: float = 0.1
    # The authors' diagonal estimator, also the library's default: on this task it fine-tunes best, ahead
    # of the unbiased full one with a leave-one-out baseline or antithetic pairs (benchmarks/RESULTS.md,
    # "Which estimator fine-tunes best on the demo").
    jacobian: str = "diagonal"
    variance_reduction: str = "none"  # perturbed_topk's (none | loo | antithetic | loo+antithetic)
    baselines: tuple[str, ...] = ("uniform", "random")  # fine-tuned at `plan`
    # Also fine-tune the dense model itself for the same epochs with the same schedule (lr, backbone lr
    # multiplier, augmentation): the fair reference for what selection costs ("dense_ft").
    equal_epoch_dense: bool = False
    # Distil the dense model's predictions into the selection models while they fine-tune
    # (train.distill_*; stts.engine.distill). 0 = plain cross-entropy (the published recipe).
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # report
    latency_repeats: int = 30  # batch-1 rounds; the throughput batch gets a third as many
    throughput_batch: int = 32
    picture_clips: int = 4
    progress: bool = True
    stages: dict = field(default_factory=dict, repr=False)  # filled by run_demo: stage -> output dir


# `stts demo --hard`: a setting where dense stays below 100% and selection has to find a one-frame event.
# 18 classes = 6 colours x 3 shapes (square, ring, cross: the shape is the hard cue), the event in 1 of
# the 16 frames, 40 training clips per class: dense overfits (58-69% after 30 epochs) and keeps gaining
# from more epochs. Dense fine-tuned for the same epochs with the same schedule (dense_ft) is the
# reference. The selection models use the recipe benchmarks/RESULTS.md ("A fair comparison: the hard
# demo") found: select whole frames (T0_0.25: 2 of 8 temporal tokens, 26% of the FLOPs), so a kept
# frame keeps all of the event's shape; sigma 0.05; and, still after the dense stage, no scorer-only
# epochs: on this setting each one left the temporal scorer worse (event frame kept 80% instead of
# 89% on seed 1) and cost 12-13 points.
HARD = {
    "out_dir": "stts-demo-hard", "num_classes": 18, "clips_per_class": 40, "val_clips_per_class": 50,
    "event_frames": 1, "dense_epochs": 30, "equal_epoch_dense": True, "finetune_eval_every": 4,
    "plan": "T0_0.25", "sigma": 0.05, "scorer_warmup_epochs": 0,
    # The fixed-budget comparison only: the hard demo measures what selection costs at one budget.
    "elastic_plan": "", "free_policies": (),
}


def hard_settings(**overrides) -> DemoSettings:
    """The DemoSettings of `stts demo --hard`, with `overrides` on top."""
    return DemoSettings(**{**HARD, **overrides})


def make_demo_data(s: DemoSettings) -> dict:
    """The demo's synthetic dataset in `<out_dir>/data` (stts.data.synth.make_synthetic_dataset's dict)."""
    from stts.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(Path(s.out_dir) / "data", num_classes=s.num_classes,
                                  clips_per_class=s.clips_per_class, val_clips_per_class=s.val_clips_per_class,
                                  size=s.size, event_size=s.event_size, event_frames=s.event_frames,
                                  num_distractors=s.num_distractors, seed=s.seed, progress=s.progress)


def _data_settings(data: dict, s: DemoSettings) -> dict:
    """The synthetic dataset's suggested DataConfig, plus what makes a CPU demo fast."""
    return {**data["data_config"], "cache_decoded": True, "num_workers": 0}


def demo_run_config(stage: str, s: DemoSettings, data: dict, dense_checkpoint: str | None = None):
    """The RunConfig of one demo stage: "dense", "dense_ft" (dense fine-tuned like the others), "elastic"
    (STTS over the elastic plan's ranges), "stts" (STTS at the fixed plan), or a baseline policy
    ("uniform", "random") at the fixed plan."""
    from stts.config import load_config

    run = {
        "model": {"name": s.model},
        "data": {k: list(v) if isinstance(v, tuple) else v for k, v in _data_settings(data, s).items()},
        "optim": {"clip_grad": 1.0, "weight_decay": 0.05},
        "train": {"output_dir": str(Path(s.out_dir) / "runs" / stage), "seed": s.seed, "batch_size": s.batch_size,
                  "threads": s.threads, "progress": s.progress, "log_every": 25},
    }
    if stage == "dense":
        run["train"].update(epochs=s.dense_epochs, eval_every=5)
        run["optim"].update(lr=s.lr, warmup_epochs=1, scorer_warmup_epochs=0)
    else:
        if dense_checkpoint is None:
            raise ValueError(f"the {stage} stage fine-tunes the dense model: give dense_checkpoint")
        # Every fine-tuning stage: the same start, epochs, lr schedule and backbone lr multiplier.
        run["model"].update(finetune=dense_checkpoint)
        run["train"].update(epochs=s.finetune_epochs, eval_every=s.finetune_eval_every)
        run["optim"].update(lr=s.finetune_lr, warmup_epochs=0, scorer_warmup_epochs=0,
                            backbone_lr_mult=s.backbone_lr_mult)
        if stage != "dense_ft":  # dense_ft: no selection, so no scorers; the whole model at the multiplier
            run["model"].update(selection=s.elastic_plan if stage == "elastic" else s.plan,
                                policy="learned" if stage in ("elastic", "stts") else stage,
                                sigma=s.sigma, jacobian=s.jacobian, variance_reduction=s.variance_reduction)
            # The published order: scorers alone first (backbone frozen), then the backbone at the
            # multiplier. A baseline has no scorers: its backbone trains from the first epoch.
            run["optim"].update(scorer_warmup_epochs=s.scorer_warmup_epochs)
            if s.distill_weight > 0:  # the dense start is the teacher
                run["train"].update(distill_from="finetune", distill_weight=s.distill_weight,
                                    distill_temperature=s.distill_temperature)
    return load_config(base=run, base_source=f"stts demo ({stage} stage)", check_paths=False)


def budget_plans(model, budgets, input_shape: tuple) -> list:
    """For each token fraction in `budgets`, the fixed point of the model's (elastic) plan whose kept
    fraction of the token map is nearest to it (ties: the one that keeps fewer tokens).

    Candidates: every combination of the amounts each selector's range allows where it selects
    (`stts.budget.point_choices`, given the earlier selectors' amounts). -> [(plan, fraction)] per budget.
    """
    from stts.budget import point_choices
    from stts.patch import at_plan

    plan = model.plan

    def combos(prefix):
        i = len(prefix)
        if i == len(plan.specs):
            yield prefix
            return
        for choice in point_choices(model, plan.specs[i], prefix):
            yield from combos(prefix + [choice])

    candidates = []
    for specs in combos([]):
        point = replace(plan, specs=tuple(specs))
        with at_plan(model, point):
            candidates.append((_token_fraction(model, input_shape), point))
    chosen = []
    for budget in budgets:
        fraction, point = min(candidates, key=lambda c: (abs(c[0] - budget), c[0]))
        chosen.append((point, fraction))
    return chosen


def _banner(msg: str) -> None:
    print(f"\n=== {msg} ===", flush=True)


@torch.inference_mode()
def _evaluate_with_events(model, dataset, meta: dict, root: Path, frame_size: tuple[int, int], batch: int = 30):
    """Top-1 on the validation clips, and how much of the event the selectors kept (from meta.json).

    event_frame_kept: % of clips whose event frame survived temporal selection; event_pixels_kept: mean
    % of the event square's pixels inside what was kept (0 when its frame was dropped).
    """
    from stts.vis import kept_regions

    model.eval()
    correct = frame_hits = 0
    pixel_share = 0.0
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        x = torch.stack([it["video"] for it in items])  # (B, C, T, H, W)
        logits, selections = model(x, return_selections=True)
        for b, it in enumerate(items):
            correct += int(logits[b].argmax()) == it["label"]
            clip = meta["clips"][str(Path(dataset.samples[it["index"]][0]).relative_to(root))]
            region = kept_regions(selections, b, num_frames=x.shape[2], frame_size=frame_size)[clip["event_frames"][0]]
            if not region.kept:
                continue
            frame_hits += 1
            top, left, h, w = clip["event_box"]
            if region.box is None:  # no spatial selection: the whole frame is kept
                pixel_share += 1.0
            else:
                bt, bl, bh, bw = region.box
                overlap_h = max(0, min(top + h, bt + bh) - max(top, bt))
                overlap_w = max(0, min(left + w, bl + bw) - max(left, bl))
                pixel_share += overlap_h * overlap_w / (h * w)
    n = len(dataset)
    return {"top1": 100.0 * correct / n, "event_frame_kept": 100.0 * frame_hits / n,
            "event_pixels_kept": 100.0 * pixel_share / n, "clips": n}


def _speed(models: dict, input_shape: tuple, repeats: int, batch: int) -> dict:
    """Median CPU latency (ms) at batch 1 and throughput (clips/s) at `batch`, models timed in turn."""
    from stts.measure import median, time_round_robin

    speed = {name: {} for name in models}
    with torch.inference_mode():
        for m in models.values():
            m.eval()
        for b, rounds in ((1, repeats), (batch, max(3, repeats // 3))):
            x = torch.randn(b, *input_shape[1:])
            times = time_round_robin({name: (lambda m=m: m(x)) for name, m in models.items()}, warmup=2,
                                     repeats=rounds)
            for name, t in times.items():
                if b == 1:
                    speed[name]["latency_ms"] = 1e3 * median(t)
                else:
                    speed[name]["clips_per_s"] = b / median(t)
    return speed


def _pictures(s: DemoSettings, models: dict, dataset, meta: dict, root: Path, out: Path) -> list[str]:
    """One picture per model of {file name: (model, title)} for the same validation clips."""
    from stts.data.decode import decode_all
    from stts.vis import kept_regions, plot_selection

    # One clip per class, as far as there are clips.
    chosen, seen = [], set()
    for i, (_, label) in enumerate(dataset.samples):
        if label not in seen:
            chosen.append(i)
            seen.add(label)
        if len(chosen) == s.picture_clips:
            break
    x = torch.stack([dataset[i]["video"] for i in chosen])
    pixels = [decode_all(dataset.samples[i][0])[0][: x.shape[2]].numpy() for i in chosen]  # (T, H, W, 3) uint8
    written = []
    for filename, (model, title) in models.items():
        with torch.inference_mode():
            logits, selections = model.eval()(x, return_selections=True)
        clips = []
        for b, (i, frames) in enumerate(zip(chosen, pixels)):
            clip = meta["clips"][str(Path(dataset.samples[i][0]).relative_to(root))]
            regions = kept_regions(selections, b, num_frames=x.shape[2], frame_size=tuple(frames.shape[1:3]))
            pred = dataset.classes[int(logits[b].argmax())]
            ev = clip["event_frames"]
            clips.append((frames, regions, f"{clip['class']} (event: frames {ev[0]}-{ev[-1]})\npredicted {pred}"))
        path = out / filename
        plot_selection(clips, path, title=title)
        written.append(str(path))
    return written


def target_gaps(rows: list[dict]) -> dict:
    """The issue's comparisons from the report rows (top-1 points; None where a row is missing):

    elastic_vs_fixed: the elastic model at the budget nearest the fixed STTS model's token fraction,
        minus that fixed model; elastic_vs_dense: the elastic model at its largest budget minus dense;
    elastic_vs_uniform: the elastic model at the fixed model's budget minus uniform fine-tuned there;
    free_vs_uniform: the best token policy (not uniform/random) applied to dense with no training at the
        smallest budget, minus uniform applied the same way; with its name (free_policy) and the gap to
        uniform fine-tuned (free_vs_uniform_finetuned).
    """
    def one(kind, name=None, budget=None):
        found = [r for r in rows if r["kind"] == kind and (name is None or r["name"] == name)
                 and (budget is None or r["budget"] == budget)]
        return found[0] if found else None

    dense, fixed = one("dense"), one("stts")
    elastic = sorted((r for r in rows if r["kind"] == "elastic"), key=lambda r: r["budget"])
    free = [r for r in rows if r["kind"] == "training-free" and r["name"] not in ("uniform", "random")]
    gaps = dict.fromkeys(("elastic_vs_fixed", "elastic_vs_dense", "elastic_vs_uniform", "free_policy",
                          "free_vs_uniform", "free_vs_uniform_finetuned"))
    if elastic and fixed is not None:
        at_fixed = min(elastic, key=lambda r: abs(r["token_fraction"] - fixed["token_fraction"]))
        gaps["elastic_vs_fixed"] = at_fixed["top1"] - fixed["top1"]
        uniform_ft = one("fine-tuned", "uniform")
        if uniform_ft is not None:
            gaps["elastic_vs_uniform"] = at_fixed["top1"] - uniform_ft["top1"]
    if elastic and dense is not None:
        gaps["elastic_vs_dense"] = elastic[-1]["top1"] - dense["top1"]
    if free:
        low = min(r["budget"] for r in free)
        best = max((r for r in free if r["budget"] == low), key=lambda r: r["top1"])
        gaps["free_policy"] = best["name"]
        uniform_free = one("training-free", "uniform", low)
        if uniform_free is not None:
            gaps["free_vs_uniform"] = best["top1"] - uniform_free["top1"]
        uniform_ft = one("fine-tuned", "uniform")
        if uniform_ft is not None:
            gaps["free_vs_uniform_finetuned"] = best["top1"] - uniform_ft["top1"]
    return gaps


def _label(r: dict) -> str:
    """A row's model column from its kind (dense | elastic | stts | fine-tuned | training-free)."""
    return {"dense": r["name"], "elastic": "**elastic STTS**", "stts": "STTS (fixed budget)",
            "fine-tuned": f"{r['name']} (fine-tuned)", "training-free": f"{r['name']} (no training)"}[r["kind"]]


def _write_report(s: DemoSettings, rows: list[dict], out: Path, pictures: list[str], elapsed: float) -> dict:
    from stts.data.synth import COLOURS
    from stts.vis import plot_accuracy_vs_gflops

    points = []
    for r in rows:
        p = {"name": r["name"], "gflops": r["gflops"], "top1": r["top1"]}
        if r["kind"] == "elastic":
            p.update(kind="stts", curve="elastic STTS", name=f"{100 * r['token_fraction']:.0f}%")
        elif r["kind"] == "training-free":
            p.update(kind="baseline", curve=f"{r['name']} (no training)", name="")
        elif r["kind"] == "stts":
            p.update(kind="stts", name="STTS fixed")
        elif r["kind"] == "fine-tuned":
            p.update(kind="baseline", name=f"{r['name']} (fine-tuned)")
        else:
            p.update(kind="dense")
        points.append(p)
    plot_accuracy_vs_gflops(points, out / "accuracy_vs_gflops.png",
                            title=f"Top-1 vs GFLOPs per view ({s.model}, seed {s.seed})")
    gaps = target_gaps(rows)
    result = {"settings": {k: v for k, v in asdict(s).items() if k != "stages"}, "rows": rows, "gaps": gaps,
              "elapsed_s": elapsed, "torch": torch.__version__, "threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    dense = next(r for r in rows if r["kind"] == "dense")
    lines = [
        f"# stts demo (seed {s.seed})", "",
        f"Synthetic clips: {s.num_classes} classes, {s.num_classes * s.clips_per_class} training and "
        f"{s.num_classes * s.val_clips_per_class} validation mp4 files of 16 x {s.size} x {s.size} pixels; the label "
        f"is a coloured {s.event_size}-pixel {'square' if s.num_classes <= len(COLOURS) else 'shape'} shown in "
        f"{s.event_frames} of the 16 frames, among {s.num_distractors} moving distractors. Model `{s.model}`. "
        + (f"The elastic STTS model was fine-tuned once over `{s.elastic_plan}` and runs each budget by "
           "`stts.set_plan`; the training-free policies run on the dense weights with no training. "
           if s.elastic_plan else "")
        + f"The fixed-budget STTS model and the fine-tuned baselines run `{s.plan}`. CPU "
        f"({torch.get_num_threads()} threads): latency at batch 1 (median of {s.latency_repeats}) and throughput at "
        f"batch {s.throughput_batch}; a model this small is bound by per-operator overhead at batch 1, so "
        "throughput shows the saving better.", "",
        "| model | plan | tokens kept | top-1 (%) | event frame kept (%) | event pixels kept (%) | GFLOPs/view | "
        f"latency (ms) | clips/s (batch {s.throughput_batch}) | speed-up (latency / throughput) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {_label(r)} | {r['plan']} | {100 * r['token_fraction']:.0f}% | {r['top1']:.1f} | "
                     f"{r['event_frame_kept']:.1f} | {r['event_pixels_kept']:.1f} | {r['gflops']:.4f} | "
                     f"{r['latency_ms']:.2f} | {r['clips_per_s']:.0f} | {dense['latency_ms'] / r['latency_ms']:.2f}x / "
                     f"{r['clips_per_s'] / dense['clips_per_s']:.2f}x |")
    stts_row = next((r for r in rows if r["kind"] == "stts"), None)
    # The fair reference: dense fine-tuned for the same epochs as STTS, when the demo trained one.
    ref = next((r for r in rows if r["name"] == "dense_ft"), dense)
    if ref is not dense:
        lines += ["", f"dense_ft: the dense model fine-tuned for the same {s.finetune_epochs} epochs as the selection "
                  "models, with the same schedule (lr, backbone lr multiplier, data)."]
    if s.distill_weight > 0:
        lines += ["", f"The selection models learn from the labels and from the dense start's predictions "
                  f"(distillation: weight {s.distill_weight:g}, temperature {s.distill_temperature:g})."]
    if stts_row is not None:
        lines += ["", f"STTS keeps {100 * stts_row['token_fraction']:.0f}% of the tokens: "
                  f"{stts_row['top1'] - ref['top1']:+.1f} points of top-1 against {ref['name']} at "
                  f"{ref['gflops'] / stts_row['gflops']:.1f}x fewer FLOPs"]
        for r in rows:
            if r["kind"] == "fine-tuned":
                lines[-1] += f"; {stts_row['top1'] - r['top1']:+.1f} points against {r['name']}"
        lines[-1] += "."
    said = []
    if gaps["elastic_vs_fixed"] is not None:
        said.append(f"the elastic model is {gaps['elastic_vs_fixed']:+.1f} points against the fixed-budget STTS "
                    "model at its budget")
    if gaps["elastic_vs_dense"] is not None:
        said.append(f"{gaps['elastic_vs_dense']:+.1f} against dense at {100 * max(s.budgets):.0f}% of the tokens")
    if gaps["elastic_vs_uniform"] is not None:
        said.append(f"{gaps['elastic_vs_uniform']:+.1f} against uniform (fine-tuned) at the fixed budget")
    if gaps["free_vs_uniform"] is not None:
        said.append(f"with no training, the {gaps['free_policy']} policy is {gaps['free_vs_uniform']:+.1f} points "
                    f"against uniform at {100 * min(s.budgets):.0f}% ({gaps['free_vs_uniform_finetuned']:+.1f} "
                    "against uniform fine-tuned)" if gaps["free_vs_uniform_finetuned"] is not None else
                    f"with no training, the {gaps['free_policy']} policy is {gaps['free_vs_uniform']:+.1f} points "
                    f"against uniform at {100 * min(s.budgets):.0f}%")
    if said:
        lines += ["", "Top-1: " + "; ".join(said) + "."]
    lines += ["", "![accuracy vs GFLOPs](accuracy_vs_gflops.png)", "", (f"What the elastic model keeps at {100 * min(s.budgets):.0f}%"
              if s.elastic_plan else "What STTS keeps") + " (kept frames in colour, dropped ones grey, the chosen anchor boxed):", "",
              "![selection](selection.png)", "",
              f"Total time {elapsed / 60:.1f} min. Each training stage is an `stts train` run: "
              "`runs/<stage>/config.yaml`."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return result


def run_demo(s: DemoSettings) -> dict:
    """Run every stage; returns the results dict (also written to `<out>/results.json`)."""
    from stts.checkpoint import load_model
    from stts.data import DataConfig, build_dataset
    from stts.engine.train import train
    from stts.flops import count_flops
    from stts.patch import patch, set_plan

    t0 = time.time()
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if s.threads:
        torch.set_num_threads(s.threads)
    finetunes = (*(("dense_ft",) if s.equal_epoch_dense else ()), *(("elastic",) if s.elastic_plan else ()),
                 "stts", *s.baselines)
    n_steps = 3 + len(finetunes)

    _banner(f"[1/{n_steps}] synthetic dataset -> {out / 'data'}")
    data = make_demo_data(s)
    meta = json.loads(Path(data["meta"]).read_text())

    _banner(f"[2/{n_steps}] dense {s.model}, {s.dense_epochs} epochs")
    train(demo_run_config("dense", s, data))
    dense_ckpt = str(out / "runs" / "dense" / "last.pt")
    s.stages["dense"] = str(out / "runs" / "dense")
    joint = s.finetune_epochs - s.scorer_warmup_epochs
    for i, stage in enumerate(finetunes):
        what = {"elastic": f"elastic STTS {s.elastic_plan} (a budget per step): {s.scorer_warmup_epochs} scorer-only "
                           f"+ {joint} joint epochs",
                "stts": f"STTS {s.plan} (fixed budget): {s.scorer_warmup_epochs} scorer-only + {joint} joint epochs",
                "dense_ft": f"dense fine-tuned {s.finetune_epochs} more epochs, the same schedule"}
        _banner(f"[{i + 3}/{n_steps}] " + what.get(stage, f"{stage} baseline at {s.plan}, {s.finetune_epochs} epochs"))
        train(demo_run_config(stage, s, data, dense_checkpoint=dense_ckpt))
        s.stages[stage] = str(out / "runs" / stage)

    budget_count = len(s.budgets) if s.elastic_plan else 1
    _banner(f"[{n_steps}/{n_steps}] evaluation at {budget_count} budget{'s' * (budget_count > 1)}, latency, report")
    cfg = DataConfig(**_data_settings(data, s))
    val = build_dataset(cfg, "val", seed=s.seed)
    root = Path(data["root"])
    input_shape = (1, *val.video_shape)
    trained = {name: load_model(Path(d) / "last.pt") for name, d in s.stages.items()}
    budgets = budget_plans(trained["elastic"], s.budgets, input_shape) if "elastic" in trained else []

    # (name, kind, budget, model): every row of the table, in its order.
    entries = [(name, "dense", 1.0, trained[name]) for name in ("dense", "dense_ft") if name in trained]
    for budget, (point, _) in zip(s.budgets, budgets):
        entries.append(("elastic", "elastic", budget, set_plan(copy.deepcopy(trained["elastic"]), point)))
        if budget == _nearest(s.budgets, _token_fraction(trained["stts"], input_shape)):
            entries.append(("stts", "stts", budget, trained["stts"]))
            entries += [(b, "fine-tuned", budget, trained[b]) for b in s.baselines]
        for policy in s.free_policies:
            entries.append((policy, "training-free", budget,
                            patch(copy.deepcopy(trained["dense"]), str(point), policy=policy)))
    if "stts" not in [e[0] for e in entries]:  # no elastic model, or a fixed plan far from every budget: after them
        entries.append(("stts", "stts", _token_fraction(trained["stts"], input_shape), trained["stts"]))
        entries += [(b, "fine-tuned", entries[-1][2], trained[b]) for b in s.baselines]

    keys = [f"{kind}:{name}@{budget}" for name, kind, budget, _ in entries]  # unique: uniform runs twice at 28%
    speed = _speed({k: e[3] for k, e in zip(keys, entries)}, input_shape, s.latency_repeats, s.throughput_batch)
    rows = []
    for key, (name, kind, budget, model) in zip(keys, entries):
        torch.manual_seed(s.seed)  # the random policy's draws: the same whatever ran before
        metrics = _evaluate_with_events(model, val, meta, root, (s.size, s.size))
        plan = str(model.plan) if len(getattr(model, "plan", ()) or ()) else "dense"
        rows.append({"name": name, "kind": kind, "budget": budget, "plan": plan,
                     "token_fraction": _token_fraction(model, input_shape),
                     "gflops": count_flops(model, input_shape).gflops, **speed[key], **metrics})
    # What the elastic model keeps at the smallest budget (or STTS without one), and for contrast uniform
    # and the change policy.
    shown = {}
    for name, kind, budget, model in entries:
        if kind == "stts" and "elastic" not in trained:
            shown["selection.png"] = (model, f"STTS at {model.plan}")
        elif kind == "fine-tuned" and name == "uniform" and "elastic" not in trained:
            shown["selection_uniform.png"] = (model, f"uniform (fine-tuned) at {model.plan}")
        if budget != min(s.budgets):
            continue
        if kind == "elastic":
            shown["selection.png"] = (model, f"elastic STTS at {model.plan} (trained over {s.elastic_plan})")
        elif (kind, name) in (("fine-tuned", "uniform"), ("training-free", "change")):
            shown[f"selection_{name}.png"] = (model, f"{name} ({kind}) at {model.plan}")
    pictures = _pictures(s, shown, val, meta, root, out)
    result = _write_report(s, rows, out, pictures, time.time() - t0)
    print("\n" + (out / "results.md").read_text().split("\n\n![")[0])
    print(f"\nreport: {out.resolve()}/results.md (results.json, accuracy_vs_gflops.png, selection.png)")
    return result


def _nearest(budgets, fraction: float) -> float:
    return min(budgets, key=lambda b: abs(b - fraction))


def _token_fraction(model, input_shape) -> float:
    """Fraction of the token map that the selectors keep (1.0 for a dense model)."""
    with torch.inference_mode():
        _, kept = model.eval()(torch.zeros(input_shape), return_selections=True)
    return math.prod(math.prod(sel.thw_out) / math.prod(sel.thw_in) for sel in kept.values())
