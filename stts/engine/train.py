"""Training: STTS fine-tuning (or dense training) from a `RunConfig`, nanoGPT-style, DDP-ready.

    from stts.config import load_config
    from stts.engine.train import train
    summary = train(load_config("configs/mvit_b_16x4_stts_t0.5_s0.7_k400.yaml", ["train.epochs=2"]))
    torchrun --nproc_per_node 8 -m stts train configs/...yaml      # the same, 8 processes

The loop (`_train`) reads top to bottom: set lr and sigma; micro-steps under autocast (the last one
syncs the DDP gradients); unscale, clip, step; log; checkpoint; at the end of an epoch validate and
save last.pt / best.pt. Everything else is a helper below it: building the data and the model,
restoring a run (`_restore`), the checkpoint writer (`_save_last`), the checks, the progress bar.
The published STTS schedule lives in two places: `set_backbone_trainable` (during the first
`optim.scorer_warmup_epochs` only the scorers learn) and the param groups' `lr_mult` (backbone at
`optim.backbone_lr_mult` x lr afterwards). Sigma decays linearly to 0 over all steps. A model without
scorers (dense, or scored by a training-free policy: stts.policies) has no scorer warm-up.

Elastic plans (`model.selection: T0_0.25:0.75-S4_0.6:1.0`): each optimizer step runs one budget, drawn by
`stts.budget.sample_plan` from (train.seed, step) alone, for all its micro-batches and on every rank
(`at_plan` around the forward); the schedule, the warm-up and resume are untouched (a resumed step draws
what it drew before). Validation runs the ranges' low end, middle and high end in one pass over the data
(val_top1_lo / _mid / _hi); val_top1 and the `best` rule are the middle's, the point an elastic
checkpoint runs by default.

Resume is exact: last.pt holds model, optimizer, scaler, the step within the epoch and every rank's
RNG states; the data order is a function of (seed, epoch) and each item of (seed, epoch, index), so
the resumed run skips the batches already done and draws what the uninterrupted run would have drawn.
The selectors' noise is a function of (seed, step, index) too (`noise_seeds`): a clip draws the same
noise whichever process and batch it lands in, so one process and several train alike.
last.pt is written at each epoch's end before validation (a crash there loses no training), and
again after it when the best metric improved; validation draws no random numbers the training sees.

Nothing goes wrong silently: the bad-data limit (data.max_skip_fraction) is judged over all ranks at
each epoch's end and at the run's end, whatever the number of steps, and the bad samples are listed in
<output_dir>/bad_samples.txt; clips that ran past the end of a short video are counted and reported; a
non-finite loss stops the run with an error naming the steps (checked where the loss is synced anyway,
at the log points, so no GPU sync per step; with fp16 loss scaling, whose skipped steps are expected,
only a window of nothing but non-finite losses stops it).

Checkpoints (model.finetune, train.resume) are read safely (weights only); `train(cfg,
trust_checkpoint=True)` (CLI: --trust-checkpoint) unpickles one the safe loader refuses, running any
code it carries: only for files you trust.
"""

from __future__ import annotations

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler

from stts.budget import sample_plan
from stts.config import to_dict
from stts.engine import distributed as D
from stts.engine.build import amp_dtype_for, build_model
from stts.engine.checkpoint import (find_resume, load_finetune, load_training_state, rng_state, save_training_state,
                                    set_rng_state)
from stts.engine.distill import build_distiller, teacher_path
from stts.engine.evaluate import evaluate, evaluate_plans
from stts.engine.logging import RunLogger, train_summary
from stts.engine.optim import build_optimizer, get_lr, is_scorer_param, set_backbone_trainable, set_lr
from stts.engine.selection_stats import SelectionStats, format_selections
from stts.errors import BadDataError, ConfigError, DataError, NonFiniteError
from stts.flops import count_flops
from stts.patch import at_plan
from stts.selectors import get_selectors, set_sigma
from stts.topk import linear_sigma_schedule, noise_seed

__all__ = ["train", "seed_everything", "noise_seeds", "elastic_points"]


def train(cfg, *, trust_checkpoint: bool = False) -> dict:
    """Run (or resume) the training `cfg` describes; returns the summary dict (rank 0's view).

    trust_checkpoint: unpickle a model.finetune / train.resume file that the safe (weights-only) loader
    refuses. Unpickling runs any code the file carries: only for files whose origin you trust.
    """
    env = D.setup(cfg.train.device)
    try:
        return _train(cfg, env, trust_checkpoint)
    finally:
        D.cleanup()


def _train(cfg, env: D.DistEnv, trust_checkpoint: bool = False) -> dict:
    t, o, device = cfg.train, cfg.optim, env.device
    out = Path(t.output_dir)
    log = RunLogger(out, enabled=env.main, tensorboard=t.tensorboard)
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_everything(t.seed)  # the same initial weights on every rank
    train_ds, loader, skipper, val_loader, steps_per_epoch = _data(cfg, env)
    total_steps, warmup_steps = t.epochs * steps_per_epoch, round(o.warmup_epochs * steps_per_epoch)
    resume = find_resume(t.resume, out)
    model, keep_trainable = _model(cfg, train_ds.num_classes, device, None if resume else cfg.model.finetune, log,
                                   trust_checkpoint)
    has_scorers = any(is_scorer_param(n) for n, _ in model.named_parameters())
    scorer_warmup = o.scorer_warmup_epochs if has_scorers else 0
    optimizer = build_optimizer(model, o)
    amp_dtype = amp_dtype_for(t.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # bf16 needs no scaling
    mix = _mixup(cfg, train_ds.num_classes)
    distiller = build_distiller(cfg, train_ds.num_classes, device, amp_dtype, trust_checkpoint=trust_checkpoint)
    if distiller is not None:
        log.info(f"distilling from {teacher_path(cfg)}: loss = {1 - t.distill_weight:g} x CE + "
                 f"{t.distill_weight:g} x T^2 KL, T = {t.distill_temperature:g}")
    selectors = get_selectors(model)
    # A dense model has no noise to schedule: sigma is then neither set nor logged.
    sigma0 = (cfg.model.sigma if cfg.model.sigma is not None else selectors[0].sigma) if selectors else 0.0
    input_shape = (1, *train_ds.video_shape)
    gflops = count_flops(model, input_shape).gflops  # an elastic plan's: its middle (what it runs by default)
    points = elastic_points(model)  # {"lo": plan, "mid": ..., "hi": ...} of an elastic plan, else {}
    point_gflops = {}
    for tag, point in points.items():
        with at_plan(model, point):
            point_gflops[tag] = count_flops(model, input_shape).gflops

    # Per-rank randomness (drop path, mixup) must differ between ranks; selector noise is per clip.
    seed_everything(t.seed + 1000 * env.rank)
    mix_gen = torch.Generator().manual_seed(t.seed + 1000 * env.rank)
    setup = _Setup(cfg, env, out, log, model, optimizer, scaler, mix_gen, loader, val_loader, amp_dtype,
                   steps_per_epoch, bool(selectors), points)
    run = _RunState(sigma=sigma0)
    run.new_epoch(device)
    if resume is not None:
        _restore(setup, run, resume, trust_checkpoint)
    elif t.resume == "auto":
        log.info(f"train.resume=auto: no {out / 'last.pt'} yet, starting fresh")
    if env.main:
        _write_run_config(out, cfg)
    elastic = (" (elastic: a budget drawn per step; " + ", ".join(
        f"{tag} {p} {point_gflops[tag]:.4g}" for tag, p in points.items()) + " GFLOPs)") if points else ""
    log.info(f"{cfg.model.name} plan {getattr(model, 'plan', None) or 'dense'}{elastic}: {gflops:.4g} GFLOPs/view at "
             f"{input_shape}; {len(train_ds)} clips, {steps_per_epoch} steps/epoch x {t.epochs} epochs, "
             f"global batch {t.batch_size * t.accum_steps * env.world_size}, {env.world_size} process(es) on "
             f"{device}, amp {amp_dtype or 'off'}; scorer-only warm-up {scorer_warmup} epoch(s)")

    raw, wrap, stopped = model, _DDPWrapper(env), False
    while run.epoch < t.epochs and not stopped:
        frozen = run.epoch < scorer_warmup
        set_backbone_trainable(raw, not frozen, keep_trainable)
        model = wrap(raw, frozen)
        model.train()
        # train.compile: a new wrapper per epoch is cheap, dynamo's compiled code is kept (and redone only
        # when a guard fails, e.g. the backbone's requires_grad changing after the scorer warm-up).
        # dynamic=False: a new batch size (the last, short batch) compiles its own static graph; the
        # automatic dynamic-shape recompile fails in inductor on MViT's pooled grids (torch 2.13).
        forward = torch.compile(model, dynamic=False) if t.compile else model
        skipper.skip = run.epoch_step * t.accum_steps * t.batch_size  # resuming: the batches already done
        loader.set_epoch(run.epoch)
        batches, window = iter(loader), _Window(device, run.step)
        bar = _progress_bar(env.main and t.progress, steps_per_epoch, run, t.epochs)
        while run.epoch_step < steps_per_epoch:
            run.lr = get_lr(run.step, total_steps=total_steps, warmup_steps=warmup_steps, lr=o.lr, min_lr=o.min_lr,
                            warmup_start_lr=o.warmup_start_lr)
            set_lr(optimizer, run.lr, backbone_frozen=frozen)
            run.sigma = linear_sigma_schedule(run.step, total_steps, sigma0) if t.sigma_decay else sigma0
            set_sigma(raw, run.sigma)
            # Elastic: this step's budget, a function of (seed, step) only: the same on every rank, on resume.
            run.plan = sample_plan(raw, seed=t.seed, step=run.step) if points else None
            for micro in range(t.accum_steps):
                batch = next(batches)
                x = batch["video"].to(device, non_blocking=True)  # (B, C, T, H, W)
                y = batch["label"].to(device, non_blocking=True)
                seeds = noise_seeds(t.seed, run.step, batch["index"])  # (B,): a clip's noise, in any process
                target = None
                if mix is not None:
                    x, target = mix(x, y, generator=mix_gen)
                if env.ddp:  # only the last micro-step all-reduces the gradients (the others accumulate)
                    model.require_backward_grad_sync = micro == t.accum_steps - 1
                with (at_plan(raw, run.plan) if run.plan is not None else nullcontext(),
                      torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()):
                    logits, selections = forward(x, return_selections=True, noise_seeds=seeds)
                loss = _loss(logits, y, target, cfg.data.label_smoothing)
                if distiller is not None:  # the teacher sees the same (mixed) clips
                    loss = distiller.loss(loss, logits, x)
                loss = loss / t.accum_steps
                scaler.scale(loss).backward()
                finite = window.add(loss.detach())  # non-finite losses counted on the device, not averaged
                run.add(finite, selections, batch)
            if o.clip_grad > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(raw.parameters(), o.clip_grad)
            scaler.step(optimizer)  # skipped by the scaler if fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            run.step, run.epoch_step, run.epoch_n = run.step + 1, run.epoch_step + 1, run.epoch_n + 1
            window.n += 1

            stopping = bool(t.max_steps and run.step >= t.max_steps)
            if run.step % t.log_every == 0 or run.epoch_step == steps_per_epoch or stopping:
                _log_window(setup, run, window, bar)
                window = _Window(device, run.step)
            bar.update(1)
            if stopping:
                stopped = True
                break
            if t.save_every_steps and run.step % t.save_every_steps == 0 and run.epoch_step < steps_per_epoch:
                _check_finite(setup, run, window, warn=False)  # never checkpoint diverged weights
                _save_last(setup, run)  # a crash loses at most save_every_steps steps
        bar.close()
        if run.epoch_step < steps_per_epoch:  # stopped mid-epoch by train.max_steps
            _end_mid_epoch(setup, run)
            break
        _end_epoch(setup, run, frozen)  # bad-data limit, last.pt, validation, best.pt, the epoch's report
        stopped = bool(t.max_steps and run.step >= t.max_steps)

    summary = _summary(setup, run, total_steps=total_steps, gflops=gflops, input_shape=input_shape)
    if points:
        summary["points"] = {tag: {"plan": str(p), "gflops": point_gflops[tag]} for tag, p in points.items()}
    log.info("\n" + train_summary(summary))
    log.close()
    return summary


# ---------------------------------------------------------------------------------------------------
# The run's state and fixed parts
# ---------------------------------------------------------------------------------------------------

_BAD_LIST = "bad_samples.txt"


@dataclass
class _RunState:
    """Where the run is (what last.pt records) and this rank's running counts (restored on resume)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    epoch_step: int = 0  # steps done within `epoch`
    best: float | None = None
    best_epoch: int | None = None
    sigma: float = 0.0
    lr: float = 0.0
    plan: object = None  # the fixed plan of the current step (elastic runs), else None
    last_loss: float = float("nan")
    t_start: float = field(default_factory=time.time)
    saved: int | None = None  # the step the last.pt on disk holds (None: none yet)
    skipped: int = 0  # bad training samples over all ranks, as of the last check
    run_padded: int = 0  # clips padded in the finished epochs (all ranks)
    tail_padded: int = 0  # ... in an epoch cut short by train.max_steps
    # this rank's counts of the current epoch
    epoch_loss: Tensor | None = None
    epoch_n: int = 0
    epoch_padded: int = 0
    stats: SelectionStats = field(default_factory=SelectionStats)

    def new_epoch(self, device: torch.device) -> None:
        self.epoch_loss, self.epoch_n, self.epoch_padded = torch.zeros((), device=device), 0, 0
        self.stats = SelectionStats()

    def add(self, finite_loss: Tensor, selections: dict, batch: dict) -> None:
        """One micro-batch's loss (0 if not finite), selections and padded clips; no device sync."""
        self.epoch_loss += finite_loss
        self.stats.update(selections)
        self.epoch_padded += int(batch["padded"].sum())  # a CPU tensor: no device sync


class _Window:
    """The micro-batch losses since the last log line, on the device (no sync until it is logged)."""

    def __init__(self, device: torch.device, step: int):
        self.loss, self.bad = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
        self.n, self.first, self.t0 = 0, step + 1, time.perf_counter()  # n: optimizer steps

    def add(self, loss: Tensor) -> Tensor:
        """Count one micro-batch's loss; returns it, or 0 if it is not finite."""
        finite = torch.isfinite(loss)
        finite_loss = torch.where(finite, loss, torch.zeros_like(loss))
        self.loss += finite_loss
        self.bad += (~finite).long()
        return finite_loss


@dataclass(frozen=True)
class _Setup:
    """What stays fixed during a run: config, processes, outputs, the model and its optimizer, the data."""

    cfg: object
    env: D.DistEnv
    out: Path
    log: RunLogger
    model: nn.Module  # unwrapped (no DDP)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    mix_gen: torch.Generator
    loader: object
    val_loader: object
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    has_selectors: bool
    points: dict  # an elastic plan's {"lo", "mid", "hi"} fixed plans, validated at each epoch's end; else {}


def elastic_points(model: nn.Module) -> dict:
    """{"lo": plan.at(0), "mid": plan.at(0.5), "hi": plan.at(1)} of the model's elastic plan; {} if fixed.
    Validation runs all three and `best` follows "mid" (what an elastic checkpoint runs by default)."""
    plan = getattr(model, "plan", None)
    if plan is None or not plan.elastic:
        return {}
    return {"lo": plan.at(0.0), "mid": plan.at(0.5), "hi": plan.at(1.0)}


def noise_seeds(seed: int, step: int, index: Tensor) -> Tensor:
    """(B,) int64 noise seeds of a batch's clips: a function of (run seed, optimizer step, dataset index)
    only, so a clip draws the same selector noise in one process with batch 4 as in two with batch 2."""
    return torch.tensor([noise_seed(seed, step, i) for i in index.tolist()], dtype=torch.int64)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# Building the run: data, model, resume
# ---------------------------------------------------------------------------------------------------


def _data(cfg, env: D.DistEnv):
    """(train dataset, its loader, the loader's skip sampler, val loader or None, optimizer steps per epoch)."""
    from stts.data import build_dataset, build_loader

    t = cfg.train
    train_ds = build_dataset(cfg.data, "train", seed=t.seed)
    loader, skipper = _resumable(build_loader(train_ds, cfg.data, batch_size=t.batch_size, train=True,
                                              distributed=env.ddp, seed=t.seed))
    val_loader = None
    if t.eval_every and cfg.data.val_annotations:
        val_ds = build_dataset(cfg.data, "val", seed=t.seed)
        if val_ds.num_classes != train_ds.num_classes:  # found now, not after the first epoch
            raise DataError(f"data.val_annotations={cfg.data.val_annotations!r} has {val_ds.num_classes} classes "
                            f"but data.train_annotations={cfg.data.train_annotations!r} has "
                            f"{train_ds.num_classes}: give data.classes_file (or data.num_classes)")
        val_loader = build_loader(val_ds, cfg.data, batch_size=cfg.eval.batch_size or t.batch_size, train=False,
                                  distributed=env.ddp, seed=t.seed)
    steps_per_epoch = len(loader) // t.accum_steps  # optimizer steps; leftover micro-batches are dropped
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_ds)} training clips make no full step of train.batch_size={t.batch_size} x "
                          f"train.accum_steps={t.accum_steps} x {env.world_size} process(es)")
    return train_ds, loader, skipper, val_loader, steps_per_epoch


def _model(cfg, num_classes: int, device, finetune: str, log: RunLogger, trust_checkpoint: bool):
    """(model on `device`, names that stay trainable in the scorer warm-up: a fresh head), fine-tuned
    from `finetune` if given (not when resuming: last.pt has the weights)."""
    model = build_model(cfg, num_classes).to(device)
    if not finetune:
        return model, set()
    rep = load_finetune(model, finetune, trust_checkpoint=trust_checkpoint)
    others = [k for k in rep["missing"] if k not in rep["fresh_scorers"] and k not in rep["head_reset"]]
    log.info(f"fine-tuning from {finetune}: {len(rep['fresh_scorers'])} scorer tensors start fresh"
             + (f"; new head ({', '.join(rep['head_reset'])})" if rep["head_reset"] else "")
             + (f"; WARNING {len(others)} other tensors missing: {others[:8]}" if others else "")
             + (f"; {len(rep['unexpected'])} checkpoint tensors unused: {rep['unexpected'][:8]}"
                if rep["unexpected"] else ""))
    return model, set(rep["head_reset"])  # a fresh head learns during the scorer warm-up too


def _mixup(cfg, num_classes: int):
    from stts.data import MixupCutmix

    d = cfg.data
    if not (d.mixup_alpha > 0 or d.cutmix_alpha > 0):
        return None
    return MixupCutmix(num_classes, mixup_alpha=d.mixup_alpha, cutmix_alpha=d.cutmix_alpha, prob=d.mixup_prob,
                       switch_prob=d.mixup_switch_prob, label_smoothing=d.label_smoothing)


def _restore(s: _Setup, run: _RunState, path: Path, trust_checkpoint: bool) -> None:
    """Resume from last.pt: weights, optimizer, scaler, progress, and (same number of processes) this
    rank's RNG states and running counts, so the run continues as if it had never stopped."""
    env, loader, log = s.env, s.loader, s.log
    ckpt = load_training_state(path, s.model, s.optimizer, s.scaler, trust_checkpoint=trust_checkpoint)
    run.step, run.epoch, run.epoch_step = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]
    run.best, run.best_epoch, run.saved = ckpt.get("best"), ckpt.get("best_epoch"), ckpt["step"]
    states = ckpt["rng"]
    if len(states) == env.world_size:
        carry = states[env.rank]
        set_rng_state(carry, s.mix_gen)
        loader.skips.seen, loader.skips.bad = carry["skips"]
        loader.skips.reasons = dict(carry.get("bad_reasons", {}))
        epoch_padded, run.run_padded = carry.get("padded", (0, 0))
        if run.epoch_step:  # resumed mid-epoch: the epoch's statistics so far
            run.epoch_loss, run.epoch_n = carry["epoch_loss"][0] + run.epoch_loss, carry["epoch_loss"][1]
            run.stats, run.epoch_padded = SelectionStats(carry["selections"]), epoch_padded
    else:
        log.info(f"WARNING resuming {len(states)}-process RNG states in {env.world_size} processes: "
                 "the run continues, but not bit-for-bit")
    log.info(f"resumed from {path} at step {run.step} (epoch {run.epoch}, step {run.epoch_step} of "
             f"{s.steps_per_epoch})")
    changed = _changed_settings(ckpt.get("config") or {}, to_dict(s.cfg))
    if changed:
        log.info(f"WARNING settings differ from the checkpoint's run: {', '.join(changed)}")


def _write_run_config(out: Path, cfg) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _changed_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (bookkeeping keys left out)."""
    ignore = {"train.resume", "train.max_steps", "train.progress", "train.log_every", "train.threads", "eval"}
    out = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        if key in ignore:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_settings(a, b, key + ".")
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


class _SkipSampler(Sampler):
    """The wrapped sampler's indices minus the first `skip`: resuming mid-epoch costs no decoding."""

    def __init__(self, sampler):
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def _resumable(loader):
    """The same VideoLoader with a `_SkipSampler` around its sampler (a DataLoader's sampler cannot be
    swapped after construction, so it is rebuilt from the built one's settings)."""
    from stts.data import VideoLoader

    sampler = _SkipSampler(loader.sampler)
    new = VideoLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator, persistent_workers=False,
                      max_skip_fraction=loader.max_skip_fraction, skip_check_after=loader.skip_check_after)
    return new, sampler


class _DDPWrapper:
    """DDP reduces the parameters that require grad when it is built: rebuilt when the phase (scorer
    warm-up -> joint) changes. One process: the model itself."""

    def __init__(self, env: D.DistEnv):
        self.env, self.ddp, self.frozen = env, None, None

    def __call__(self, model: nn.Module, frozen: bool) -> nn.Module:
        if not self.env.ddp:
            return model
        if frozen != self.frozen:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device = self.env.device
            self.ddp, self.frozen = DDP(model, device_ids=[device.index] if device.type == "cuda" else None), frozen
        return self.ddp


# ---------------------------------------------------------------------------------------------------
# During the run: loss, logging, checks, checkpoints, the end of an epoch
# ---------------------------------------------------------------------------------------------------


def _loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None, smoothing: float) -> torch.Tensor:
    logits = logits.float()  # the loss in fp32 whatever autocast did
    if target is not None:  # mixup / cutmix: soft targets (already smoothed)
        return torch.sum(-target * logits.log_softmax(dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def _log_window(s: _Setup, run: _RunState, window: _Window, bar) -> None:
    """One "train" metrics record (and the bar's numbers): the loss averaged over the window and the
    ranks. .item() syncs the GPU, so this runs at log points only; non-finite losses are checked here."""
    t = s.cfg.train
    nonfinite = _check_finite(s, run, window, warn=True)
    if nonfinite:
        finite_n = (window.n * t.accum_steps - int(window.bad.item())) / t.accum_steps
        run.last_loss = D.all_reduce_mean(window.loss.item() / max(finite_n, 1e-9), s.env.device)
    else:
        run.last_loss = D.all_reduce_mean(window.loss.item() / window.n, s.env.device)
    clips_s = window.n * t.accum_steps * t.batch_size * s.env.world_size / (time.perf_counter() - window.t0)
    s.log.metrics("train", {"loss": run.last_loss, "lr": run.lr, **({"sigma": run.sigma} if s.has_selectors else {}),
                            **({"plan": str(run.plan)} if run.plan is not None else {}),
                            "clips_per_s": clips_s, "epoch": run.epoch + run.epoch_step / s.steps_per_epoch}, run.step)
    bar.set_postfix(loss=f"{run.last_loss:.4f}", lr=f"{run.lr:.2e}", clips_s=f"{clips_s:.1f}")


def _check_finite(s: _Setup, run: _RunState, window: _Window, *, warn: bool) -> int:
    """Non-finite micro-batch losses of the window, over ranks (syncs: call where the loss is synced
    anyway). Raises NonFiniteError unless fp16 loss scaling explains them (it skips such steps)."""
    nonfinite = int(D.all_reduce(window.bad.clone()).item())
    micro = window.n * s.cfg.train.accum_steps * s.env.world_size
    if nonfinite:
        where = f"steps {window.first}-{run.step}" if window.first < run.step else f"step {run.step}"
        if not s.scaler.is_enabled() or nonfinite >= micro:
            kept = (f"{s.out / 'last.pt'} holds step {run.saved}" if run.saved is not None
                    else "no checkpoint was written yet")
            raise NonFiniteError(
                f"the training loss was not finite in {nonfinite} of {micro} micro-batches of {where} "
                f"(epoch {run.epoch + 1}): the weights or the selectors' scores diverged; {kept}. "
                "Lower optim.lr, check the data, or set train.amp=off")
        if warn:
            s.log.info(f"WARNING {nonfinite} of {micro} micro-batches of {where} had a non-finite loss "
                       "(fp16 overflow: the loss scaler skipped those steps)")
    return nonfinite


def _check_skips(s: _Setup, run: _RunState) -> int:
    """The bad-data limit over all ranks (every rank decides alike); writes the list. -> bad count."""
    seen, bad, reasons = _skip_totals(s.loader)
    if s.env.main and reasons:
        _write_bad_list(s.out / _BAD_LIST, reasons)
    frac = bad / seen if seen else 0.0
    limit = s.cfg.data.max_skip_fraction
    if bad and frac > limit:
        raise BadDataError(f"{bad} of {seen} training samples seen ({frac:.1%}) were bad, above "
                           f"data.max_skip_fraction={limit} (at step {run.step}); "
                           f"the list: {s.out / _BAD_LIST}; fix or remove those entries")
    return bad


def _skip_totals(loader) -> tuple[int, int, dict]:
    """(seen, bad, {"path: reason": count}) of the training samples over all ranks (a collective)."""
    seen = bad = 0
    reasons: dict = {}
    for s, b, r in D.all_gather_objects((loader.skips.seen, loader.skips.bad, loader.skips.reasons)):
        seen, bad = seen + s, bad + b
        for k, v in r.items():
            reasons[k] = reasons.get(k, 0) + v
    return seen, bad, reasons


def _write_bad_list(path: Path, reasons: dict) -> None:
    """<output_dir>/bad_samples.txt: one "count<TAB>path: reason" line per bad sample, most frequent first."""
    lines = [f"{n}\t{r}" for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
    path.write_text("".join(line + "\n" for line in lines))


def _save_last(s: _Setup, run: _RunState) -> None:
    """Write <out>/last.pt. Every rank contributes its RNG state and running counts (a collective), rank
    0 writes. All plain data and tensors: the file loads with torch.load(weights_only=True)."""
    loader = s.loader
    states = D.all_gather_objects({**rng_state(s.mix_gen), "skips": (loader.skips.seen, loader.skips.bad),
                                   "bad_reasons": dict(loader.skips.reasons),
                                   "padded": (run.epoch_padded, run.run_padded),
                                   "epoch_loss": (run.epoch_loss.item(), run.epoch_n), "selections": run.stats.state()})
    if s.env.main:
        save_training_state(s.out / "last.pt", s.model, optimizer=s.optimizer, scaler=s.scaler,
                            config=to_dict(s.cfg), step=run.step, epoch=run.epoch, epoch_step=run.epoch_step,
                            best=run.best, best_epoch=run.best_epoch, rng=states, sigma=run.sigma)
    run.saved = run.step


def _end_mid_epoch(s: _Setup, run: _RunState) -> None:
    """A run stopped by train.max_steps within an epoch: the bad-data limit, the padded count, last.pt."""
    run.skipped = _check_skips(s, run)
    run.tail_padded = round(D.all_reduce_mean(run.epoch_padded, s.env.device) * s.env.world_size)
    _save_last(s, run)


def _summary(s: _Setup, run: _RunState, *, total_steps: int, gflops: float, input_shape: tuple) -> dict:
    """The run's summary (what `train` returns and the end-of-training screen shows)."""
    cfg, env, model, amp = s.cfg, s.env, s.model, s.amp_dtype
    return {
        "model": cfg.model.name, "plan": str(model.plan) if getattr(model, "plan", None) else None,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "step": run.step, "total_steps": total_steps,
        "epochs_done": run.step / s.steps_per_epoch, "time_s": time.time() - run.t_start,
        "world_size": env.world_size, "device": str(env.device), "amp": str(amp).replace("torch.", "") if amp else "off",
        "best_top1": run.best, "best_epoch": run.best_epoch, "last_loss": run.last_loss, "gflops": gflops,
        "input_shape": list(input_shape), "stopped_early": run.step < total_steps, "out_dir": str(s.out),
        "skipped_samples": run.skipped, "bad_list": str(s.out / _BAD_LIST) if run.skipped else None,
        "padded_clips": run.run_padded + run.tail_padded, "clip": f"{cfg.data.num_frames}x{cfg.data.sampling_rate}",
    }


def _end_epoch(s: _Setup, run: _RunState, frozen: bool) -> None:
    """The end of an epoch: the bad-data limit, last.pt (before validation: a crash there loses no
    training), validation and best.pt, the epoch's record and what the selectors keep; then the next
    epoch's counts start from zero."""
    t, env, device = s.cfg.train, s.env, s.env.device
    run.epoch, run.epoch_step = run.epoch + 1, 0
    train_loss = D.all_reduce_mean(run.epoch_loss.item() / max(run.epoch_n, 1), device)
    train_sel = run.stats.reduce().summary()
    padded = round(D.all_reduce_mean(run.epoch_padded, device) * env.world_size)  # summed over ranks
    run.run_padded += padded
    run.skipped = _check_skips(s, run)
    _save_last(s, run)
    sigma = {"sigma": run.sigma} if s.has_selectors else {}
    record = {"epoch": run.epoch, "train_loss": train_loss, "lr": run.lr, **sigma, "backbone_frozen": frozen,
              "skipped_samples": run.skipped, "padded_clips": padded}
    msg = f"epoch {run.epoch}/{t.epochs}: train loss {train_loss:.4f}, lr {run.lr:.2e}" + \
        (f", sigma {run.sigma:.4f}" if s.has_selectors else "")
    if padded:
        msg += f", {padded} clips padded (videos shorter than the clip repeat frames)"
    val_sel = {}
    if s.val_loader is not None and (run.epoch % t.eval_every == 0 or run.epoch == t.epochs):
        # Validation draws no random numbers the training sees (a random-policy selector would):
        # the last.pt just written holds the state training continues from.
        val = dict(num_videos=s.val_loader.dataset.num_videos, num_classes=s.val_loader.dataset.num_classes,
                   device=device, amp_dtype=s.amp_dtype)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if s.points:  # elastic: the range's low end, middle and high end, in one pass over the data
                at_points = dict(zip(s.points, evaluate_plans(s.model, s.val_loader, list(s.points.values()), **val)))
                res = at_points["mid"]
            else:
                res = evaluate(s.model, s.val_loader, **val)
        record.update({f"val_{k}": res[k] for k in ("top1", "top5", "mean_class_acc", "skipped_videos",
                                                    "padded_views", "nonfinite_views")})
        if s.points:
            record.update({f"val_top1_{tag}": r["top1"] for tag, r in at_points.items()},
                          val_plans={tag: str(p) for tag, p in s.points.items()})
        if run.best is None or res["top1"] > run.best:
            run.best, run.best_epoch = res["top1"], run.epoch
            if env.main:  # weights + build config only: what evaluation and export need
                save_training_state(s.out / "best.pt", s.model, config=to_dict(s.cfg), epoch=run.epoch,
                                    best=run.best, best_epoch=run.epoch, selections=res["selections"])
            _save_last(s, run)  # again, so that a resumed run knows the new best
        ends = (f" at mid (lo {at_points['lo']['top1']:.2f}, hi {at_points['hi']['top1']:.2f})" if s.points else "")
        msg += f", val top-1 {res['top1']:.2f}{ends} top-5 {res['top5']:.2f} (best {run.best:.2f} @ {run.best_epoch})"
        for key, what in (("padded_views", "padded"), ("nonfinite_views", "with non-finite logits (wrong)")):
            if res[key]:
                msg += f", {res[key]} val views {what}"
        val_sel = res["selections"]
    s.log.metrics("epoch", {**record, "train_selections": train_sel, "val_selections": val_sel}, run.step)
    # What the selectors keep: on validation clips if there were any (the inference choice), else training's.
    sel = val_sel or train_sel
    s.log.info(msg + ("\n" + format_selections(sel) if sel else ""))
    run.new_epoch(device)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **kw) -> None: ...

    def close(self) -> None: ...


def _progress_bar(enabled: bool, steps_per_epoch: int, run: _RunState, epochs: int):
    """A tqdm bar over the epoch's steps (rank 0, train.progress), or one that does nothing."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=steps_per_epoch, initial=run.epoch_step, desc=f"epoch {run.epoch + 1}/{epochs}", unit="step",
                dynamic_ncols=True, leave=False)
