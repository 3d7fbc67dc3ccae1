"""Shared helpers of the engine tests (no tests here): a tiny MViT, a tiny synthetic dataset, run configs.

The tiny MViT is the real `mvit_b_16x4` builder at depth 3, width 16, on 8 x 32 x 32 clips
(4 x 8 x 8 tokens): a temporal selector before block 0 (2 of 4 frames) and a 6 x 6 anchor before
block 1 (9 positions on the 8 x 8 map). One optimizer step takes about 10 ms on a CPU core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

TINY_MVIT = {"depth": 3, "embed_dim": 16, "num_heads": 1, "dim_mul": [[1, 2.0]], "head_mul": [[1, 2.0]],
             "pool_q_stride": [[1, 1, 2, 2]], "pool_kv_stride_adaptive": [1, 4, 4]}
TINY_PLAN = "T0_0.5-S1_0.6"
NUM_CLASSES = 3
TRAIN_CLIPS = 12  # 3 classes x 4


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the CI machine has 2 cores shared with other jobs, and two spinning OpenMP
    threads on an oversubscribed machine make a 10 ms step take a second."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> dict:
    """3 classes, 4 training + 2 validation clips each, 8 frames of 32 x 32 (about 1 s to write)."""
    from stts.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_classes=NUM_CLASSES, clips_per_class=4,
                                  val_clips_per_class=2, num_frames=8, size=32, event_size=8)


def run_config(synth: dict, out_dir, **sections) -> dict:
    """A tiny run config as a dict: 2 epochs of 6 steps (batch 2), validation each epoch.

    `sections` update the defaults per section, e.g. train={"epochs": 3}, model={"sigma": 0.0}.
    """
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in synth["data_config"].items()}
    cfg = {
        "model": {"name": "mvit_b_16x4", "selection": TINY_PLAN, "num_samples": 20, "kwargs": dict(TINY_MVIT)},
        "data": {**data, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_epochs": 1, "scorer_warmup_epochs": 1},
        "train": {"epochs": 2, "batch_size": 2, "output_dir": str(out_dir), "progress": False, "tensorboard": False,
                  "log_every": 1, "threads": 1},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(path, cfg: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load(cfg: dict, overrides=(), tmp_path=None):
    """dict -> validated RunConfig (through a YAML file, as the CLI does)."""
    from stts.config import load_config

    path = write_config(Path(tmp_path or cfg["train"]["output_dir"]).with_suffix(".yaml"), cfg)
    return load_config(path, list(overrides))


def records(out_dir, kind: str) -> list[dict]:
    """The metrics.jsonl records of one kind ("train" per step, "epoch" per epoch)."""
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def checkpoint(path) -> dict:
    """A training checkpoint written by `train` (last.pt / best.pt), as a dict."""
    from stts.checkpoint import read_checkpoint

    return read_checkpoint(path)


def weights(path) -> dict:
    from stts.checkpoint import extract_state_dict

    return extract_state_dict(checkpoint(path))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
