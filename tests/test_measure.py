"""Timing helpers: round-robin order and what they return."""

import time

from stts.measure import median, time_round_robin


def test_round_robin_warms_up_then_interleaves():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = time_round_robin(fns, warmup=2, repeats=3)
    assert calls == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_round_robin_times_each_function_alone():
    times = time_round_robin({"fast": lambda: None, "slow": lambda: time.sleep(0.02)}, warmup=0, repeats=3)
    assert min(times["slow"]) >= 0.02 > median(times["fast"])
