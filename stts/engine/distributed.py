"""DDP without a framework (nanoGPT's way): torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, we read them.

    env = setup("auto")            # one process: rank 0 of 1; under torchrun: init_process_group
    if env.main: print(...)        # rank 0 alone logs and writes checkpoints
    loss = all_reduce_mean(loss)   # metrics averaged over ranks; all_reduce(t) sums a tensor
    cleanup()

NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK), gloo on CPU. Multi-node works the same way:
torchrun's --nnodes / --rdzv-endpoint set the variables, nothing here changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "setup", "cleanup", "all_reduce", "all_reduce_mean", "all_gather_objects", "parse_device"]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def parse_device(name: str, option: str = "--device") -> torch.device:
    """"cpu" | "cuda" | "cuda:N" -> torch.device; UsageError naming `option` for anything else, or for
    CUDA where there is none (a CPU-only torch build, no GPU, no such index)."""
    from stts.errors import UsageError

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{option} {name!r}: expected cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"{option} {name!r}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {name}: CUDA is not available here (no GPU, or a CPU-only torch build); "
                             "use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {name}: there are {torch.cuda.device_count()} CUDA devices (0-based)")
    return dev


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from stts.errors import ConfigError

        raise ConfigError(f"train.device={pref!r} but CUDA is not available here (no GPU, or a CPU-only torch "
                          "build); use train.device=cpu or auto")
    if pref.startswith("cuda:") and "RANK" not in os.environ:
        return torch.device(pref)
    return torch.device("cuda", local_rank)


def setup(device: str = "auto") -> DistEnv:
    """Read torchrun's environment; initialise the process group if there is more than one process."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL collectives and all_gather_object use the current device
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistEnv(rank, local_rank, world, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) over ranks, in place; the identity in one process."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """A Python number averaged over ranks."""
    if not _active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable, small), in rank order, on every rank."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
