"""The training loop's settings, each against an independent oracle on the tiny real MViT of
test_engine_helpers: gradient accumulation (a batch of 4 in one go), gradient clipping (a hand-written
AdamW loop with hand-clipped gradients), the AMP dtype and autocast, the resumed GradScaler, and the
TensorBoard event file read back with TensorBoard's own reader.

The runs compared with an oracle are dense (no selector noise) and switch off the rest of what is drawn
at random during a step, which the oracle could not repeat: drop path, head dropout, mixup / cutmix.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import stts
import stts.engine.train as engine
from stts.engine.build import amp_dtype_for
from test_engine_helpers import (NUM_CLASSES, TINY_MVIT, checkpoint, load, max_diff, one_thread, records,  # noqa: F401
                                 run_config, synth, weights)

def _dense_cfg(synth, out, optim=None, train=None) -> dict:
    """A dense tiny-MViT run without randomness in its steps (one epoch of 6 steps of batch 2)."""
    return run_config(synth, out, model={"selection": "", "drop_path_rate": 0.0, "head_dropout": 0.0},
                      data={"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.1},
                      optim={"scorer_warmup_epochs": 0, **(optim or {})},
                      train={"epochs": 1, "eval_every": 0, "amp": "off", **(train or {})})


# ---- gradient accumulation and clipping ----------------------------------------------------------------


def test_two_micro_batches_of_two_equal_a_batch_of_four(synth, tmp_path):
    """train.accum_steps=2 with batch 2 sees the clips of batch 4 (same sampler order) and must take the
    same optimizer steps: same weights, same logged losses (clipping on, as in the recipe)."""
    optim = {"warmup_epochs": 0}  # lr 1e-3 from the first step, so that the weights move
    four = tmp_path / "four"
    engine.train(load(_dense_cfg(synth, four, optim, train={"batch_size": 4})))
    two_by_two = tmp_path / "two_by_two"
    engine.train(load(_dense_cfg(synth, two_by_two, optim, train={"batch_size": 2, "accum_steps": 2})))
    a, b = records(four, "train"), records(two_by_two, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]  # 12 clips, 4 per step
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
    diff = max_diff(weights(four / "last.pt"), weights(two_by_two / "last.pt"))
    assert diff < 1e-5, diff
    # ... and one micro-batch per step is not the same (the comparison can tell).
    one = tmp_path / "one"
    engine.train(load(_dense_cfg(synth, one, optim, train={"batch_size": 2, "max_steps": 3})))
    diff = max_diff(weights(four / "last.pt"), weights(one / "last.pt"))
    assert diff > 1e-4, diff


def _hand_adamw_run(model, batches, *, lr, clip):
    """AdamW (no weight decay) on the cross-entropy of `batches`, gradients clipped by hand to a total
    L2 norm of `clip` (0: off); returns the norms before clipping."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    norms = []
    for batch in batches:
        loss = F.cross_entropy(model(batch["video"]), batch["label"], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        norms.append(norm)
        if clip and norm > clip:
            for g in grads:
                g.mul_(clip / (norm + 1e-6))  # torch's rule: max_norm / (norm + 1e-6)
        opt.step()
    return norms


def test_clip_grad_applies_the_update_of_hand_clipped_gradients(synth, tmp_path):
    """Three steps from a known dense checkpoint at constant lr: the weights equal a hand-written loop
    that clips the gradients itself. (Adam is nearly scale-free per step, so it takes several steps with
    different clip factors for clipping to show; the unclipped loop is checked to end elsewhere.)"""
    from stts.data import DataConfig, build_dataset, build_loader

    torch.manual_seed(0)
    dense = stts.create_model("mvit_b_16x4", num_classes=NUM_CLASSES, num_frames=8, img_size=32,
                              drop_path_rate=0.0, head_drop=0.0, **TINY_MVIT)
    stts.save_model(dense, tmp_path / "dense.pt")
    clip, lr = 0.05, 1e-3
    cfg = _dense_cfg(synth, tmp_path / "run", optim={"lr": lr, "min_lr": lr, "warmup_epochs": 0, "weight_decay": 0.0,
                                                     "backbone_lr_mult": 1.0, "clip_grad": clip},
                     train={"max_steps": 3})
    cfg["model"]["finetune"] = str(tmp_path / "dense.pt")
    engine.train(load(cfg))

    data = DataConfig(**cfg["data"])
    loader = build_loader(build_dataset(data, "train", seed=0), data, batch_size=2, train=True, seed=0)
    loader.set_epoch(0)
    batches = [b for _, b in zip(range(3), loader)]
    clipped = stts.load_model(tmp_path / "dense.pt").train()
    norms = _hand_adamw_run(clipped, batches, lr=lr, clip=clip)
    assert min(norms) > clip and max(norms) / min(norms) > 1.05  # every step clipped, by different factors
    got = weights(tmp_path / "run" / "last.pt")
    diff = max_diff(got, clipped.state_dict())
    assert diff < 1e-6, diff
    unclipped = stts.load_model(tmp_path / "dense.pt").train()
    _hand_adamw_run(unclipped, batches, lr=lr, clip=0)
    diff = max_diff(got, unclipped.state_dict())
    assert diff > 1e-5, diff


# ---- mixed precision ---------------------------------------------------------------------------------


def test_amp_dtype_choice(monkeypatch):
    """train.amp: auto is bf16 on a GPU that has it, else fp16, and off on the CPU; off is off."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype_for("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype_for("auto", cuda) == torch.float16
    assert amp_dtype_for("auto", cpu) is None
    for dev in (cpu, cuda):
        assert amp_dtype_for("off", dev) is None
        assert amp_dtype_for("bf16", dev) == torch.bfloat16
        assert amp_dtype_for("fp16", dev) == torch.float16


@pytest.fixture
def linear_output_dtypes():
    """The dtypes every nn.Linear in the process returns while the test runs (a global forward hook)."""
    seen = set()

    def hook(module, args, out):
        if isinstance(module, torch.nn.Linear):
            seen.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("off", None)])
def test_training_steps_run_under_autocast(synth, tmp_path, linear_output_dtypes, amp, dtype):
    """With train.amp the model's linear layers compute in the AMP dtype during the steps; off, none does."""
    engine.train(load(_dense_cfg(synth, tmp_path / "run", train={"amp": amp, "max_steps": 1})))
    if dtype is None:
        assert linear_output_dtypes == {torch.float32}
    else:
        assert dtype in linear_output_dtypes


def test_evaluation_runs_under_autocast(linear_output_dtypes):
    from stts.engine.evaluate import evaluate

    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", num_classes=NUM_CLASSES, num_frames=8, img_size=32, **TINY_MVIT)
    batch = {"video": torch.randn(2, 3, 8, 32, 32), "index": torch.tensor([0, 1]), "label": torch.tensor([0, 1]),
             "bad": []}
    evaluate(model, [batch], num_videos=2, num_classes=NUM_CLASSES, device=torch.device("cpu"),
             amp_dtype=torch.bfloat16)
    assert torch.bfloat16 in linear_output_dtypes
    linear_output_dtypes.clear()
    evaluate(model, [batch], num_videos=2, num_classes=NUM_CLASSES, device=torch.device("cpu"))
    assert linear_output_dtypes == {torch.float32}


def test_resumed_scaler_keeps_its_scale(synth, tmp_path, monkeypatch):
    """fp16: a run whose GradScaler starts at scale 8 saves 8; the resumed run continues from 8 (and its
    growth count), not from a fresh scaler's 65536."""
    real_init = torch.amp.GradScaler.__init__

    def init_at_8(self, *args, **kwargs):
        real_init(self, *args, **{**kwargs, "init_scale": 8.0})

    monkeypatch.setattr(torch.amp.GradScaler, "__init__", init_at_8)
    cfg = _dense_cfg(synth, tmp_path / "run", train={"amp": "fp16"})
    engine.train(load(cfg, ["train.max_steps=2"]))
    saved = checkpoint(tmp_path / "run" / "last.pt")["scaler"]
    assert saved["scale"] == 8.0 and saved["_growth_tracker"] == 2  # two finite steps at a scale of 8
    monkeypatch.undo()
    engine.train(load(cfg, ["train.resume=auto", "train.max_steps=3"]))
    resumed = checkpoint(tmp_path / "run" / "last.pt")
    assert resumed["step"] == 3
    assert resumed["scaler"]["scale"] == 8.0 and resumed["scaler"]["_growth_tracker"] == 3


# ---- TensorBoard -------------------------------------------------------------------------------------


def test_tensorboard_events_read_back(synth, tmp_path):
    """The event file, read with TensorBoard's EventAccumulator: per-step loss (the JSONL's), lr (the
    warm-up rule by hand: 1e-6 -> 1e-3 over the epoch's 6 steps), sigma, and the epoch's validation."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    engine.train(load(run_config(synth, out, model={"sigma": 0.1}, optim={"scorer_warmup_epochs": 0},
                                 train={"epochs": 1, "tensorboard": True})))
    acc = event_accumulator.EventAccumulator(str(out / "tb"))
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    loss = {r["step"]: r["loss"] for r in records(out, "train")}
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 7)) == sorted(loss)
    for step, value in scalars["train/loss"]:
        assert value == pytest.approx(loss[step], rel=1e-6)
    for step, value in scalars["train/lr"]:
        assert value == pytest.approx(1e-6 + (1e-3 - 1e-6) * (step - 1) / 6, rel=1e-6)
    for step, value in scalars["train/sigma"]:
        assert value == pytest.approx(0.1 * (1 - (step - 1) / 6), rel=1e-6)
    (epoch,) = records(out, "epoch")
    assert scalars["epoch/val_top1"] == [(6, pytest.approx(epoch["val_top1"]))]
    fractions = [scalars[f"epoch/val_selections/T0/kept_fraction_per_frame/{i}"][0][1] for i in range(4)]
    assert fractions == pytest.approx(epoch["val_selections"]["T0"]["kept_fraction_per_frame"])
