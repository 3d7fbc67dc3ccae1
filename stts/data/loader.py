"""DataLoader wiring: samplers for one process and DDP, seeded workers, and bad-sample accounting.

    loader = build_loader(ds, cfg, batch_size=16, train=True, distributed=True, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)               # reshuffles (and reseeds the clips); optional, see below
        for batch in loader: ...              # batch["video"] (B, C, T, H, W), batch["label"] (B,), ...
    loader.skips                              # SkipStats(seen=..., bad=..., last=[...], reasons={...}) here
    loader.check_skips()                      # BadDataError if bad / seen > max_skip_fraction (any count)

Batches are `collate`d dicts: the default-collated item keys ("video", "label", "index", and "view"
for evaluation) plus two of bookkeeping:
- "bad": list of "path: reason" for the bad samples met while building the batch (in training the
  ones that were replaced, in evaluation the ones left out: a batch may be smaller than batch_size);
- "num_bad": len(batch["bad"]).
Because the batch carries them, the counts reach the main process whatever the number of workers.
`VideoLoader.__iter__` adds them up in `skips` and raises `BadDataError` when bad / seen exceeds
`max_skip_fraction` (judged once `skip_check_after` samples were seen, and at the end of every
pass); "seen" counts good items plus bad samples. An evaluation batch whose items were all bad is
counted and not yielded. A training loop that stops before a pass ends (a fixed number of steps)
calls `check_skips()` itself at each epoch's end, so the limit holds in short runs too.

Samplers: training uses `DistributedSampler(shuffle=True, seed)` with the real rank and world size
(1 and 0 without DDP), so one code path serves both; evaluation shards `range(rank, N, world)`
without padding, so no view is counted twice (ranks may get one item more or fewer; gather the
per-rank predictions with their "index"/"view" and average per index). `set_epoch(e)` passes e to
the sampler and the dataset; without a call each pass advances the epoch by one.

Determinism: each item's randomness comes from (seed, epoch, index), and the worker seeds from a
generator seeded with `seed`, so two loaders with one seed give identical batches, with any number
of workers. Workers are not persistent: they are forked each pass and see the current epoch.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler, SequentialSampler, default_collate

from stts.data.config import DataConfig
from stts.errors import BadDataError

__all__ = ["build_loader", "VideoLoader", "SkipStats", "collate", "worker_init_fn", "DistributedEvalSampler"]



def collate(items: list[dict]) -> dict:
    """Default-collate the good items; gather every item's "bad" list into batch["bad"]."""
    bad = [reason for item in items for reason in item.get("bad", ())]
    good = [{k: v for k, v in item.items() if k != "bad"} for item in items if "video" in item]
    batch = default_collate(good) if good else {}
    batch["bad"] = bad
    batch["num_bad"] = len(bad)
    return batch


def worker_init_fn(worker_id: int) -> None:
    """Seed Python's and NumPy's RNGs from torch's per-worker seed (torch seeds itself; the others
    would otherwise repeat the parent's state in every forked worker)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class DistributedEvalSampler(Sampler[int]):
    """Indices rank, rank + world, ... : every item exactly once over all ranks, no padding."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.n, self.num_replicas, self.rank = len(dataset), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


@dataclass
class SkipStats:
    """Samples seen and bad ones, in this process, since the loader was built.

    last: the latest reasons; reasons: every distinct "path: reason" with how often it was met."""

    seen: int = 0
    bad: int = 0
    last: deque = field(default_factory=lambda: deque(maxlen=5))
    reasons: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def add(self, seen: int, bad: list[str]) -> None:
        self.seen += seen
        self.bad += len(bad)
        self.last.extend(bad)
        for reason in bad:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def error(self, max_fraction: float) -> "BadDataError | None":
        """The BadDataError to raise when bad / seen is above `max_fraction`, else None."""
        if not (self.bad and self.fraction > max_fraction):
            return None
        return BadDataError(f"{self.bad} of {self.seen} samples seen ({self.fraction:.1%}) were bad, above "
                            f"max_skip_fraction={max_fraction}; last reasons: {list(self.last)}")


class VideoLoader(DataLoader):
    """A DataLoader that counts the bad samples its batches report and fails past a fraction."""

    def __init__(self, dataset, *, max_skip_fraction: float = 0.1, skip_check_after: int = 100, **kwargs):
        super().__init__(dataset, **kwargs)
        self.max_skip_fraction = max_skip_fraction
        self.skip_check_after = skip_check_after
        self.skips = SkipStats()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def check_skips(self) -> None:
        """Raise BadDataError if more than max_skip_fraction of the samples seen so far were bad,
        however few were seen (the end of an epoch, of a run)."""
        err = self.skips.error(self.max_skip_fraction)
        if err is not None:
            raise err

    def __iter__(self):
        self.set_epoch(self.epoch)
        self.epoch += 1  # the next pass reshuffles unless set_epoch says otherwise
        for batch in super().__iter__():
            good = len(batch["index"]) if "index" in batch else 0
            self.skips.add(good + batch["num_bad"], batch["bad"])
            if self.skips.seen >= self.skip_check_after:
                self.check_skips()
            if good:
                yield batch
        self.check_skips()


def _rank_world(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("build_loader(distributed=True) needs torch.distributed initialised (torchrun)")
    return dist.get_rank(), dist.get_world_size()


def build_loader(
    dataset,
    cfg: DataConfig,
    *,
    batch_size: int,
    train: bool,
    distributed: bool = False,
    seed: int = 0,
) -> VideoLoader:
    """A `VideoLoader` over `dataset` (batch_size per process). Sets `dataset.seed = seed`."""
    rank, world = _rank_world(distributed)
    if hasattr(dataset, "seed"):
        dataset.seed = seed
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    elif world > 1:
        sampler = DistributedEvalSampler(dataset, world, rank)
    else:
        sampler = SequentialSampler(dataset)
    return VideoLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        drop_last=train,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        max_skip_fraction=cfg.max_skip_fraction,
        skip_check_after=cfg.skip_check_after,
    )
