"""DDP: two CPU processes (gloo, launched by torchrun) agree with one process on the same global batch.

One process with batch 4 and two processes with batch 2 see the same 4 clips per step: the training
sampler hands rank r the indices r, r + 2, ... of the same seeded permutation, and each clip's
randomness depends on (seed, epoch, index) only. DDP averages the two half-batch gradients, which is
the full-batch mean. The selectors' perturbed top-K runs at sigma > 0 (0.1, decaying): its noise is
keyed to (seed, step, index), so a clip draws the same noise in either run, and the scorers get a real
gradient, which DDP must average like any other (at sigma 0 it would be exactly zero, and a broken
scorer sync would go unseen). What must be switched off is the randomness drawn per process: drop
path and head dropout (per-sample masks from each rank's generator), and mixup/cutmix (a clip is
mixed with its mirror in the *local* batch). The run crosses the scorer-only warm-up, so DDP is rebuilt
when the backbone unfreezes, and validates every epoch, so predictions are gathered over ranks.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import stts
from stts.engine.train import train
from test_engine_helpers import (load, max_diff, one_thread, records, run_config, synth,  # noqa: F401  (fixtures)
                                 weights, write_config)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, timeout: int = 240) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "stts", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _cfg(synth, out, batch_size):
    # Adam's eps at 1e-4: a parameter whose gradient is roundoff-sized gets a step of that size, not lr
    # (Adam would turn the different roundoff of a batch of 4 and two of 2 into lr-sized differences).
    return run_config(synth, out, model={"sigma": 0.1, "drop_path_rate": 0.0, "head_dropout": 0.0},
                      data={"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.1,
                            "num_temporal_views": 2},
                      optim={"eps": 1e-4}, train={"batch_size": batch_size})


def _shift_invariant(key: str) -> bool:
    """Parameters whose gradient is zero in exact arithmetic, so only roundoff moves them (differently in
    each run) and nothing depends on them: the scorers' last bias (scores are min-max normalised) and
    the LayerNorm bias of the pooled keys (it adds the same q.b to every logit of a softmax row)."""
    return key.endswith("scorer.head.4.bias") or key.endswith("attn.norm_k.bias")


def _part(w: dict, scorers: bool) -> dict:
    return {k: v for k, v in w.items() if k.startswith("selectors.") == scorers and not _shift_invariant(k)}


def test_two_processes_match_one(synth, tmp_path):
    one, two, first = tmp_path / "one", tmp_path / "two", tmp_path / "first"
    train(load(_cfg(synth, one, batch_size=4)))
    path = write_config(tmp_path / "two.yaml", _cfg(synth, two, batch_size=2))
    _torchrun("train", str(path))

    w1, w2 = weights(one / "last.pt"), weights(two / "last.pt")
    for scorers in (True, False):
        assert max_diff(_part(w1, scorers), _part(w2, scorers)) < 1e-5, "scorers" if scorers else "backbone"
    # Against the same run stopped after its first step (a scorer-only step: the backbone is still the
    # initial one): the scorers learned, by far more than weight decay alone moves them (< 1e-4 here),
    # so their gradients were real and DDP averaged them; the backbone trained in epoch 2.
    train(load(_cfg(synth, first, batch_size=4), ["train.max_steps=1"]))
    w0 = weights(first / "last.pt")
    assert max_diff(_part(w1, True), _part(w0, True)) > 1e-3
    assert max_diff(_part(w1, False), _part(w0, False)) > 1e-4
    # The parameters left out above change nothing: both models compute the same logits.
    x = torch.randn(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        l1, l2 = (stts.load_model(d / "last.pt").eval()(x) for d in (one, two))
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=0)
    a, b = records(one, "epoch"), records(two, "epoch")
    assert len(a) == len(b) == 2 and [e["backbone_frozen"] for e in b] == [True, False]
    for ea, eb in zip(a, b):
        assert ea["train_loss"] == pytest.approx(eb["train_loss"], rel=1e-5)
        assert ea["val_top1"] == eb["val_top1"] and ea["val_mean_class_acc"] == eb["val_mean_class_acc"]
        # Selection statistics are counted over both ranks' clips.
        assert ea["val_selections"] == eb["val_selections"] and ea["train_selections"] == eb["train_selections"]
    assert (two / "train.log").is_file() and not list(two.glob("*rank*"))  # rank 0 alone writes

    # Multi-view evaluation sharded over two processes gives the single-process report.
    ckpt = str(one / "last.pt")
    train_out = f"train.output_dir={tmp_path / 'eval'}"
    _torchrun("eval", "--checkpoint", ckpt, train_out, f"eval.report={tmp_path / 'two.json'}")
    from stts.cli import main

    assert main(["eval", "--checkpoint", ckpt, train_out, f"eval.report={tmp_path / 'one.json'}"]) == 0
    r1, r2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert r2["world_size"] == 2 and r2["views"] == r1["views"] == 2 * r1["num_videos"]
    for key in ("top1", "top5", "mean_class_acc", "videos", "skipped_videos"):
        assert r1[key] == pytest.approx(r2[key]), key
    assert r1["selections"] == r2["selections"]
