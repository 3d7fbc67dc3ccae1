"""Interrupt and resume: a run stopped mid-epoch (train.max_steps) and a run that crashes mid-epoch,
each resumed with train.resume=auto, end exactly where an uninterrupted run ends.

Everything random is on: selector noise (sigma 0.1), drop path, head dropout, mixup/cutmix, label
smoothing, shuffled data with random clips. The oracle is the uninterrupted run itself."""

import pytest
import torch

import stts.engine.train as engine
from test_engine_helpers import load, max_diff, one_thread, records, run_config, synth, weights  # noqa: F401


def _cfg(synth, out):
    return run_config(synth, out, model={"sigma": 0.1, "drop_path_rate": 0.1, "head_dropout": 0.2},
                      data={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1},
                      train={"save_every_steps": 2})


def _crash_at(monkeypatch, bad_step: int):
    """Make the step that computes its lr at `bad_step` raise, as a crash mid-epoch would."""
    real = engine.get_lr

    def get_lr(step, **kw):
        if step == bad_step:
            raise RuntimeError("simulated crash")
        return real(step, **kw)

    monkeypatch.setattr(engine, "get_lr", get_lr)


def test_interrupted_and_crashed_runs_resume_exactly(synth, tmp_path, monkeypatch):
    full = tmp_path / "full"
    engine.train(load(_cfg(synth, full)))

    part = tmp_path / "part"
    cfg = _cfg(synth, part)
    # 1) stop after 3 of 6 steps of epoch 1: last.pt is written at the stop.
    summary = engine.train(load(cfg, ["train.max_steps=3"]))
    assert summary["stopped_early"] and summary["step"] == 3
    # 2) resume, then crash while computing step 10 (epoch 2, 4th step): mid-epoch saves every 2 steps,
    #    so last.pt holds step 8 and the crash lost one step only.
    _crash_at(monkeypatch, 9)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(load(cfg, ["train.resume=auto"]))
    ckpt = torch.load(part / "last.pt", weights_only=True)  # stts checkpoints need no unpickling of code
    assert (ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]) == (8, 1, 2)
    monkeypatch.undo()
    # 3) resume after the crash, to the end.
    engine.train(load(cfg, ["train.resume=auto"]))

    assert max_diff(weights(full / "last.pt"), weights(part / "last.pt")) < 1e-6
    a, b = records(full, "epoch"), records(part, "epoch")
    assert len(a) == len(b) == 2
    for ea, eb in zip(a, b):
        assert ea["train_loss"] == pytest.approx(eb["train_loss"], rel=1e-6)
        assert ea["val_top1"] == eb["val_top1"] and ea["val_selections"] == eb["val_selections"]
        assert ea["train_selections"] == eb["train_selections"]
    # Per-step losses after each resume match the uninterrupted run's.
    full_steps = {r["step"]: r["loss"] for r in records(full, "train")}
    part_steps = {r["step"]: r["loss"] for r in records(part, "train")}  # later records win (re-done step 9)
    assert full_steps.keys() == part_steps.keys()
    for s in full_steps:
        assert part_steps[s] == pytest.approx(full_steps[s], rel=1e-5), s
    for key in ("optimizer", "rng", "scaler", "config", "stts"):
        assert key in ckpt, key
