"""DDP: two CPU processes (gloo, launched by torchrun) agree with one process on the same global batch.

One process with batch 4 and two processes with batch 2 see the same 4 clips per step: the training
sampler hands rank r the indices r, r + 2, ... of the same seeded permutation, and each clip's
randomness depends on (seed, epoch, index) only. DDP averages the two half-batch gradients, which is
the full-batch mean. What must be switched off is the randomness drawn per process: selector noise
(sigma 0, so the perturbed top-K is a hard top-K), drop path and head dropout (per-sample masks from
each rank's generator), and mixup/cutmix (a clip is mixed with its mirror in the *local* batch).
The run crosses the scorer-only warm-up, so DDP is rebuilt when the backbone unfreezes, and
validates every epoch, so predictions are gathered over ranks.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

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
    return run_config(synth, out, model={"sigma": 0.0, "drop_path_rate": 0.0, "head_dropout": 0.0},
                      data={"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.1,
                            "num_temporal_views": 2},
                      train={"batch_size": batch_size})


def test_two_processes_match_one(synth, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(load(_cfg(synth, one, batch_size=4)))
    path = write_config(tmp_path / "two.yaml", _cfg(synth, two, batch_size=2))
    _torchrun("train", str(path))

    assert max_diff(weights(one / "last.pt"), weights(two / "last.pt")) < 1e-5
    assert max_diff(weights(one / "best.pt"), weights(one / "last.pt")) > 1e-4  # the weights did move (epoch 1 -> 2)
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
