"""Training: STTS fine-tuning (or dense training) from a `RunConfig`, nanoGPT-style, DDP-ready.

    from stts.config import load_config
    from stts.engine.train import train
    summary = train(load_config("configs/mvit_b_16x4_stts_t0.5_s0.7_k400.yaml", ["train.epochs=2"]))
    torchrun --nproc_per_node 8 -m stts train configs/...yaml      # the same, 8 processes

The loop reads top to bottom: set lr and sigma; micro-steps under autocast (the last one syncs the
DDP gradients); unscale, clip, step; log; checkpoint; at the end of an epoch validate and save
last.pt / best.pt. The published STTS schedule lives in two places: `set_backbone_trainable` (during
the first `optim.scorer_warmup_epochs` only the scorers learn) and the param groups' `lr_mult`
(backbone at `optim.backbone_lr_mult` x lr afterwards). Sigma decays linearly to 0 over all steps.

Resume is exact: last.pt holds model, optimizer, scaler, the step within the epoch and every rank's
RNG states; the data order is a function of (seed, epoch) and each item of (seed, epoch, index), so
the resumed run skips the batches already done and draws what the uninterrupted run would have drawn.
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
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from stts.engine import distributed as D
from stts.engine.checkpoint import (find_resume, load_finetune, load_training_state, rng_state, save_training_state,
                                    set_rng_state)
from stts.engine.evaluate import SelectionStats, evaluate, format_selections
from stts.engine.logging import RunLogger, train_summary
from stts.engine.optim import build_optimizer, get_lr, is_scorer_param, set_backbone_trainable, set_lr
from stts.errors import BadDataError, ConfigError, DataError, NonFiniteError

__all__ = ["train", "build_model", "amp_dtype_for", "seed_everything"]


def amp_dtype_for(mode: str, device: torch.device) -> torch.dtype | None:
    """train.amp -> autocast dtype (None: full precision). auto: bf16 if the GPU has it, else fp16; off on CPU."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg, num_classes: int) -> nn.Module:
    """The registry model of cfg.model, sized for cfg.data's clips, with the selector settings applied."""
    from stts.models import create_model
    from stts.plan import parse_plan
    from stts.selectors import get_selectors

    m = cfg.model
    optional = {"drop_path_rate": m.drop_path_rate, "head_drop": m.head_dropout}  # None: the variant's own
    kwargs = {"num_classes": m.num_classes or num_classes, **{k: v for k, v in optional.items() if v is not None},
              **_input_kwargs(cfg), **m.kwargs}
    try:
        # The policy decides whether selectors get scorers at all, so it goes in with the plan.
        selection = parse_plan(m.selection, policy=m.policy) if m.selection else None
        model = create_model(m.name, selection=selection, **kwargs)
    except (TypeError, ValueError) as e:  # a kwarg the builder does not take, a plan that does not fit
        raise ConfigError(f"model {m.name!r} cannot be built with {kwargs} (model.kwargs, model.selection, "
                          f"data.num_frames, data.crop_size): {e}") from None
    settings = {"num_samples": m.num_samples, **({"sigma": m.sigma} if m.sigma is not None else {}),
                **({"jacobian": m.jacobian} if m.jacobian else {}),
                **({"variance_reduction": m.variance_reduction} if m.variance_reduction else {})}
    for sel in get_selectors(model):
        for k, v in settings.items():
            setattr(sel, k, v)
    if getattr(model, "plan", None) is not None and len(model.plan):
        model.plan = model.plan.with_options(**settings)  # what the checkpoint records
    return model


def _input_kwargs(cfg) -> dict:
    """Clip size the backbone is built for (position embeddings depend on it): the data's."""
    return {"num_frames": cfg.data.num_frames, "img_size": cfg.data.crop_size}


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


def _loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None, smoothing: float) -> torch.Tensor:
    logits = logits.float()  # the loss in fp32 whatever autocast did
    if target is not None:  # mixup / cutmix: soft targets (already smoothed)
        return torch.sum(-target * logits.log_softmax(dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


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


def _train(cfg, env: D.DistEnv, trust_checkpoint: bool = False) -> dict:
    from stts.config import to_dict
    from stts.data import MixupCutmix, build_dataset, build_loader
    from stts.flops import count_flops
    from stts.selectors import get_selectors, set_sigma
    from stts.topk import linear_sigma_schedule

    t, o, device = cfg.train, cfg.optim, env.device
    out = Path(t.output_dir)
    log = RunLogger(out, enabled=env.main, tensorboard=t.tensorboard)
    if t.threads:
        torch.set_num_threads(t.threads)
    seed_everything(t.seed)  # the same initial weights on every rank

    # ---- data ------------------------------------------------------------------------------------
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
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = round(o.warmup_epochs * steps_per_epoch)

    # ---- model, optimizer ------------------------------------------------------------------------
    model = build_model(cfg, train_ds.num_classes).to(device)
    resume = find_resume(t.resume, out)
    keep_trainable: set[str] = set()
    if cfg.model.finetune and resume is None:
        rep = load_finetune(model, cfg.model.finetune, trust_checkpoint=trust_checkpoint)
        keep_trainable = set(rep["head_reset"])  # a fresh head learns during the scorer warm-up too
        others = [k for k in rep["missing"] if k not in rep["fresh_scorers"] and k not in rep["head_reset"]]
        log.info(f"fine-tuning from {cfg.model.finetune}: {len(rep['fresh_scorers'])} scorer tensors start fresh"
                 + (f"; new head ({', '.join(rep['head_reset'])})" if rep["head_reset"] else "")
                 + (f"; WARNING {len(others)} other tensors missing: {others[:8]}" if others else "")
                 + (f"; {len(rep['unexpected'])} checkpoint tensors unused: {rep['unexpected'][:8]}"
                    if rep["unexpected"] else ""))
    has_scorers = any(is_scorer_param(n) for n, _ in model.named_parameters())
    scorer_warmup = o.scorer_warmup_epochs if has_scorers else 0
    optimizer = build_optimizer(model, o)
    amp_dtype = amp_dtype_for(t.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # bf16 needs no scaling
    mixing = cfg.data.mixup_alpha > 0 or cfg.data.cutmix_alpha > 0
    mix = MixupCutmix(train_ds.num_classes, mixup_alpha=cfg.data.mixup_alpha, cutmix_alpha=cfg.data.cutmix_alpha,
                      prob=cfg.data.mixup_prob, switch_prob=cfg.data.mixup_switch_prob,
                      label_smoothing=cfg.data.label_smoothing) if mixing else None
    selectors = get_selectors(model)
    # A dense model has no noise to schedule: sigma is then neither set nor logged.
    sigma0 = (cfg.model.sigma if cfg.model.sigma is not None else selectors[0].sigma) if selectors else 0.0
    input_shape = (1, *train_ds.video_shape)
    gflops = count_flops(model, input_shape).gflops

    # ---- resume ----------------------------------------------------------------------------------
    # Per-rank randomness (drop path, selector noise, mixup) must differ between ranks.
    seed_everything(t.seed + 1000 * env.rank)
    mix_gen = torch.Generator().manual_seed(t.seed + 1000 * env.rank)
    step = epoch = epoch_step = 0
    best, best_epoch, carry = None, None, None
    if resume is not None:
        ckpt = load_training_state(resume, model, optimizer, scaler, trust_checkpoint=trust_checkpoint)
        step, epoch, epoch_step = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]
        best, best_epoch = ckpt.get("best"), ckpt.get("best_epoch")
        states = ckpt["rng"]
        if len(states) == env.world_size:
            set_rng_state(states[env.rank], mix_gen)
            carry = states[env.rank]  # this rank's running epoch loss, selection counts, skip counts
        else:
            log.info(f"WARNING resuming {len(states)}-process RNG states in {env.world_size} processes: "
                     "the run continues, but not bit-for-bit")
        log.info(f"resumed from {resume} at step {step} (epoch {epoch}, step {epoch_step} of {steps_per_epoch})")
        changed = _changed_settings(ckpt.get("config") or {}, to_dict(cfg))
        if changed:
            log.info(f"WARNING settings differ from the checkpoint's run: {', '.join(changed)}")
    elif t.resume == "auto":
        log.info(f"train.resume=auto: no {out / 'last.pt'} yet, starting fresh")
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    log.info(f"{cfg.model.name} plan {getattr(model, 'plan', None) or 'dense'}: {gflops:.4g} GFLOPs/view at "
             f"{input_shape}; {len(train_ds)} clips, {steps_per_epoch} steps/epoch x {t.epochs} epochs, "
             f"global batch {t.batch_size * t.accum_steps * env.world_size}, {env.world_size} process(es) on "
             f"{device}, amp {amp_dtype or 'off'}; scorer-only warm-up {scorer_warmup} epoch(s)")

    def save(path: Path, **extra) -> None:
        # Every rank contributes its RNG state and running counts (a collective), rank 0 writes.
        # All plain data and tensors: the file loads with torch.load(weights_only=True).
        states = D.all_gather_objects({**rng_state(mix_gen), "skips": (loader.skips.seen, loader.skips.bad),
                                       "bad_reasons": dict(loader.skips.reasons),
                                       "padded": (epoch_padded, run_padded),
                                       "epoch_loss": (epoch_loss.item(), epoch_n), "selections": stats.state()})
        if env.main:
            save_training_state(path, model, optimizer=optimizer, scaler=scaler, config=to_dict(cfg), step=step,
                                epoch=epoch, epoch_step=epoch_step, best=best, best_epoch=best_epoch, rng=states,
                                sigma=sigma, **extra)
        saved[0] = step

    def check_skips() -> int:
        """The bad-data limit over all ranks (every rank decides alike); writes the list. -> bad count."""
        seen, bad, reasons = _skip_totals(loader)
        if env.main and reasons:
            _write_bad_list(bad_list, reasons)
        frac = bad / seen if seen else 0.0
        if bad and frac > cfg.data.max_skip_fraction:
            raise BadDataError(f"{bad} of {seen} training samples seen ({frac:.1%}) were bad, above "
                               f"data.max_skip_fraction={cfg.data.max_skip_fraction} (at step {step}); "
                               f"the list: {bad_list}; fix or remove those entries")
        return bad

    def check_finite(win_bad: torch.Tensor, win_n: int, win_first: int, *, warn: bool) -> int:
        """Non-finite micro-batch losses of the window, over ranks (syncs: call where the loss is synced
        anyway). Raises NonFiniteError unless fp16 loss scaling explains them (it skips such steps)."""
        nonfinite = int(D.all_reduce(win_bad.clone()).item())
        micro = win_n * t.accum_steps * env.world_size
        if nonfinite:
            where = f"steps {win_first}-{step}" if win_first < step else f"step {step}"
            if not scaler.is_enabled() or nonfinite >= micro:
                kept_ckpt = (f"{out / 'last.pt'} holds step {saved[0]}" if saved[0] is not None
                             else "no checkpoint was written yet")
                raise NonFiniteError(
                    f"the training loss was not finite in {nonfinite} of {micro} micro-batches of {where} "
                    f"(epoch {epoch + 1}): the weights or the selectors' scores diverged; {kept_ckpt}. "
                    "Lower optim.lr, check the data, or set train.amp=off")
            if warn:
                log.info(f"WARNING {nonfinite} of {micro} micro-batches of {where} had a non-finite loss "
                         "(fp16 overflow: the loss scaler skipped those steps)")
        return nonfinite

    # ---- the loop --------------------------------------------------------------------------------
    raw, ddp_model, ddp_frozen = model, None, None
    t_start, last_loss, sigma, lr, stopped = time.time(), float("nan"), sigma0, 0.0, False
    stats, epoch_loss, epoch_n = SelectionStats(), torch.zeros((), device=device), 0
    # saved[0]: the step the last.pt on disk holds (None: none yet)
    epoch_padded, run_padded, tail_padded, skipped, saved = 0, 0, 0, 0, [step if resume is not None else None]
    bad_list = out / "bad_samples.txt"
    while epoch < t.epochs and not stopped:
        frozen = epoch < scorer_warmup
        set_backbone_trainable(raw, not frozen, keep_trainable)
        if env.ddp and frozen != ddp_frozen:
            # DDP reduces the parameters that require grad when it is built: rebuild it when the phase changes.
            from torch.nn.parallel import DistributedDataParallel as DDP

            ddp_model, ddp_frozen = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None), frozen
        model = ddp_model if env.ddp else raw
        model.train()
        skipper.skip = epoch_step * t.accum_steps * t.batch_size  # resuming: the batches already done
        loader.set_epoch(epoch)
        batches = iter(loader)
        stats, epoch_loss, epoch_n, epoch_padded = SelectionStats(), torch.zeros((), device=device), 0, 0
        if carry is not None:
            loader.skips.seen, loader.skips.bad = carry["skips"]
            loader.skips.reasons = dict(carry.get("bad_reasons", {}))
            run_padded = carry.get("padded", (0, 0))[1]
            if epoch_step:  # resumed mid-epoch: the epoch's statistics so far
                epoch_loss, epoch_n = carry["epoch_loss"][0] + epoch_loss, carry["epoch_loss"][1]
                stats = SelectionStats(carry["selections"])
                epoch_padded = carry.get("padded", (0, 0))[0]
            carry = None
        win_loss, win_n, win_t = torch.zeros((), device=device), 0, time.perf_counter()
        win_bad, win_first = torch.zeros((), dtype=torch.long, device=device), step + 1
        bar = None
        if env.main and t.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}/{t.epochs}", unit="step",
                       dynamic_ncols=True, leave=False)
        while epoch_step < steps_per_epoch:
            lr = get_lr(step, total_steps=total_steps, warmup_steps=warmup_steps, lr=o.lr, min_lr=o.min_lr,
                        warmup_start_lr=o.warmup_start_lr)
            set_lr(optimizer, lr, backbone_frozen=frozen)
            sigma = linear_sigma_schedule(step, total_steps, sigma0) if t.sigma_decay else sigma0
            set_sigma(raw, sigma)
            for micro in range(t.accum_steps):
                batch = next(batches)
                x = batch["video"].to(device, non_blocking=True)  # (B, C, T, H, W)
                y = batch["label"].to(device, non_blocking=True)
                target = None
                if mix is not None:
                    x, target = mix(x, y, generator=mix_gen)
                if env.ddp:
                    # Only the last micro-step all-reduces the gradients (the others accumulate locally).
                    model.require_backward_grad_sync = micro == t.accum_steps - 1
                with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                    logits, selections = model(x, return_selections=True)
                loss = _loss(logits, y, target, cfg.data.label_smoothing) / t.accum_steps
                scaler.scale(loss).backward()
                # Non-finite losses are counted on the device (no sync) and kept out of the averages.
                finite = torch.isfinite(loss.detach())
                finite_loss = torch.where(finite, loss.detach(), torch.zeros_like(loss.detach()))
                win_loss += finite_loss
                epoch_loss += finite_loss
                win_bad += (~finite).long()
                stats.update(selections)
                epoch_padded += int(batch["padded"].sum())  # a CPU tensor: no device sync
            if o.clip_grad > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(raw.parameters(), o.clip_grad)
            scaler.step(optimizer)  # skipped by the scaler if fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step, epoch_step, win_n, epoch_n = step + 1, epoch_step + 1, win_n + 1, epoch_n + 1

            stopping = bool(t.max_steps and step >= t.max_steps)
            if step % t.log_every == 0 or epoch_step == steps_per_epoch or stopping:
                # .item() syncs the GPU, so only here; the loss is averaged over ranks.
                nonfinite = check_finite(win_bad, win_n, win_first, warn=True)
                if nonfinite:
                    finite_n = (win_n * t.accum_steps - int(win_bad.item())) / t.accum_steps
                    last_loss = D.all_reduce_mean(win_loss.item() / max(finite_n, 1e-9), device)
                else:
                    last_loss = D.all_reduce_mean(win_loss.item() / win_n, device)
                clips_s = win_n * t.accum_steps * t.batch_size * env.world_size / (time.perf_counter() - win_t)
                log.metrics("train", {"loss": last_loss, "lr": lr, **({"sigma": sigma} if selectors else {}),
                                      "clips_per_s": clips_s, "epoch": epoch + epoch_step / steps_per_epoch}, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{clips_s:.1f}")
                win_loss, win_n, win_t = torch.zeros((), device=device), 0, time.perf_counter()
                win_bad, win_first = torch.zeros((), dtype=torch.long, device=device), step + 1
            if bar is not None:
                bar.update(1)
            if stopping:
                stopped = True
                break
            if t.save_every_steps and step % t.save_every_steps == 0 and epoch_step < steps_per_epoch:
                check_finite(win_bad, win_n, win_first, warn=False)  # never checkpoint diverged weights
                save(out / "last.pt")  # a crash loses at most save_every_steps steps
        if bar is not None:
            bar.close()
        if epoch_step < steps_per_epoch:  # stopped mid-epoch by train.max_steps
            skipped = check_skips()
            tail_padded = round(D.all_reduce_mean(epoch_padded, device) * env.world_size)
            save(out / "last.pt")
            break

        # ---- end of epoch: bad-data limit, checkpoint, validate, report what the selectors keep ---------
        epoch, epoch_step = epoch + 1, 0
        train_loss = D.all_reduce_mean(epoch_loss.item() / max(epoch_n, 1), device)
        train_sel = stats.reduce().summary()
        padded = round(D.all_reduce_mean(epoch_padded, device) * env.world_size)  # summed over ranks
        run_padded += padded
        skipped = check_skips()
        save(out / "last.pt")  # before validation: a crash there loses no training
        val_sel = {}
        record = {"epoch": epoch, "train_loss": train_loss, "lr": lr, **({"sigma": sigma} if selectors else {}),
                  "backbone_frozen": frozen, "skipped_samples": skipped, "padded_clips": padded}
        msg = f"epoch {epoch}/{t.epochs}: train loss {train_loss:.4f}, lr {lr:.2e}" + \
            (f", sigma {sigma:.4f}" if selectors else "")
        if padded:
            msg += f", {padded} clips padded (videos shorter than the clip repeat frames)"
        if val_loader is not None and (epoch % t.eval_every == 0 or epoch == t.epochs):
            # Validation draws no random numbers the training sees (a random-policy selector would):
            # the last.pt just written holds the state training continues from.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                res = evaluate(raw, val_loader, num_videos=val_loader.dataset.num_videos,
                               num_classes=val_loader.dataset.num_classes, device=device, amp_dtype=amp_dtype)
            record.update({f"val_{k}": res[k] for k in ("top1", "top5", "mean_class_acc", "skipped_videos",
                                                        "padded_views", "nonfinite_views")})
            if best is None or res["top1"] > best:
                best, best_epoch = res["top1"], epoch
                if env.main:  # weights + build config only: what evaluation and export need
                    save_training_state(out / "best.pt", raw, config=to_dict(cfg), epoch=epoch, best=best,
                                        best_epoch=epoch, selections=res["selections"])
                save(out / "last.pt")  # again, so that a resumed run knows the new best
            msg += f", val top-1 {res['top1']:.2f} top-5 {res['top5']:.2f} (best {best:.2f} @ {best_epoch})"
            for key, what in (("padded_views", "padded"), ("nonfinite_views", "with non-finite logits (wrong)")):
                if res[key]:
                    msg += f", {res[key]} val views {what}"
            val_sel = res["selections"]
        log.metrics("epoch", {**record, "train_selections": train_sel, "val_selections": val_sel}, step)
        # What the selectors keep: on validation clips if there were any (the inference choice), else training's.
        sel = val_sel or train_sel
        log.info(msg + ("\n" + format_selections(sel) if sel else ""))
        stopped = stopped or bool(t.max_steps and step >= t.max_steps)

    summary = {
        "model": cfg.model.name, "plan": str(raw.plan) if getattr(raw, "plan", None) else None,
        "params_m": sum(p.numel() for p in raw.parameters()) / 1e6, "step": step, "total_steps": total_steps,
        "epochs_done": step / steps_per_epoch, "time_s": time.time() - t_start, "world_size": env.world_size,
        "device": str(device), "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "best_top1": best, "best_epoch": best_epoch, "last_loss": last_loss, "gflops": gflops,
        "input_shape": list(input_shape), "stopped_early": step < total_steps, "out_dir": str(out),
        "skipped_samples": skipped, "bad_list": str(bad_list) if skipped else None,
        "padded_clips": run_padded + tail_padded,
        "clip": f"{cfg.data.num_frames}x{cfg.data.sampling_rate}",
    }
    log.info("\n" + train_summary(summary))
    log.close()
    return summary
