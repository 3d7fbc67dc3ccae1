"""Measuring: time and memory. Functions return numbers and print nothing (ToMe's `benchmark`).

    times = time_fn(lambda: model(x), warmup=2, repeats=5)      # seconds per call, warm-up dropped
    times = time_round_robin({"a": fa, "b": fb}, repeats=9)    # {"a": [...], "b": [...]}, timed in turn
    result, peak = peak_memory(lambda: loss_fn().backward())    # bytes, CPU or CUDA
"""

from __future__ import annotations

import statistics
import time
import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["time_fn", "time_round_robin", "median", "cpu_name", "peak_memory", "TensorMemoryTracker"]


def _sync(device: "torch.device | str | None") -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5,
            device: "torch.device | str | None" = None) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def time_round_robin(fns: "dict[str, Callable[[], Any]]", *, warmup: int = 2, repeats: int = 5,
                     device: "torch.device | str | None" = None) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in turn (one call of each per round, `repeats` rounds,
    after `warmup` calls each), so that drifts of a shared machine hit every function alike."""
    for fn in fns.values():
        time_fn(fn, warmup=warmup, repeats=0, device=device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += time_fn(fn, warmup=0, repeats=1, device=device)
    return times


def cpu_name() -> str:
    """The CPU's model name (for benchmark reports)."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of tensor storage created by ATen ops inside the `with` block (CPU or any device).

    Every op's output storage is counted once while it lives (views share it); a finalizer on the
    storage takes it off when freed. Tensors created before the block are not counted. The CPU
    allocator keeps no statistics, so this is how stts measures CPU memory of an operator exactly.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen.add(key)
                    self.live += nbytes
                    weakref.finalize(storage, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def peak_memory(fn: Callable[[], Any], device: "torch.device | str" = "cpu") -> tuple[Any, int]:
    """Run `fn` once; return (its result, peak bytes it allocated above what was live before)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - base
    with TensorMemoryTracker() as tracker:
        result = fn()
    return result, tracker.peak
