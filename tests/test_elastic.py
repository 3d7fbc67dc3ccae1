"""Elastic plans and budgets at inference (issue 13 items 1-2): ranges in plans, a training budget drawn
per step from (seed, step) alone, `stts.set_plan`, `stts.plan_for`, `stts eval --plans`.

The references are written here: the distinct counts a range allows by sweeping its ratios, the costs of
every plan by building a model with it and counting it with `stts.flops`, a single-plan `stts eval` per
plan, the training run's own records.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import stts
from stts.budget import sample_plan
from stts.flops import count_flops
from stts.plan import SelectionPlan, SelectorSpec, parse_plan
from test_engine_helpers import (TINY_MVIT, load, max_diff, one_thread, records, run_config, synth,  # noqa: F401
                                 weights)

# The tiny MViT of the engine tests on 8 x 32 x 32 clips: T0 sees 4 frames, S1 an 8 x 8 map.
CLIP = (3, 8, 32, 32)
ELASTIC = "T0_0.25:0.75-S1_0.4:0.9"  # T0 keeps 1..3 of 4 frames, S1 anchors of 5..7 (isqrt(int(64 r)))


def tiny(selection, seed=0, **kw):
    torch.manual_seed(seed)
    return stts.create_model("mvit_b_16x4", num_classes=3, num_frames=8, img_size=32, selection=selection,
                             **TINY_MVIT, **kw)


# ---- the grammar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,spec,canonical", [
    ("T0_0.25:0.75", SelectorSpec("T", 0, ratio=0.25, high=0.75), "T0_0.25:0.75"),
    ("t0_.25:.75", SelectorSpec("T", 0, ratio=0.25, high=0.75), "T0_0.25:0.75"),
    ("S4_0.6:1", SelectorSpec("S", 4, ratio=0.6, high=1.0), "S4_0.6:1.0"),
    ("T0_k2:6", SelectorSpec("T", 0, keep=2, high=6), "T0_k2:6"),
    ("S4_a8:14s1", SelectorSpec("S", 4, anchor_size=8, anchor_stride=1, high=14), "S4_a8:14s1"),
    ("K2_0.1:0.9", SelectorSpec("K", 2, ratio=0.1, high=0.9), "K2_0.1:0.9"),
    ("T0_0.5:0.5", SelectorSpec("T", 0, ratio=0.5), "T0_0.5"),  # an empty range is the fixed amount
])
def test_plan_ranges_parse_and_round_trip(text, spec, canonical):
    plan = parse_plan(text, sigma=0.1, jacobian="diagonal")
    assert plan.specs == (spec,) and str(plan) == canonical and plan.elastic == (spec.high is not None)
    assert parse_plan(str(plan), **plan.settings) == plan
    assert SelectionPlan.from_dict(plan.to_dict()) == plan  # what checkpoints record keeps the range


def test_a_plan_mixes_ranges_and_fixed_amounts_and_today_plans_stay_as_they_were():
    plan = parse_plan("S4_0.6:1.0-T0_0.25:0.75")
    assert str(plan) == "T0_0.25:0.75-S4_0.6:1.0" and plan.points == ("T0", "S4")
    # The points of the ranges: low end, middle, high end (ratios lo + u (hi - lo)).
    assert [str(plan.at(u)) for u in (0.0, 0.5, 1.0)] == ["T0_0.25-S4_0.6", "T0_0.5-S4_0.8", "T0_0.75-S4_1.0"]
    assert str(parse_plan("T0_k2:7").at(0.5)) == "T0_k5"  # 4.5, rounded half up
    fixed = parse_plan("T0_0.5-S4_0.7367")
    assert not fixed.elastic and fixed.at(0.3) == fixed and str(fixed) == "T0_0.5-S4_0.7367"
    mixed = parse_plan("T0_0.5-S4_a6:9")
    assert mixed.elastic and str(mixed.at(1.0)) == "T0_0.5-S4_a9"


@pytest.mark.parametrize("spec,thw", [
    ("T0_0.25:0.75", (8, 56, 56)), ("T0_0.3:0.9", (16, 8, 8)), ("S4_0.6:1.0", (4, 14, 14)),
    ("S4_0.3:0.7", (4, 7, 9)), ("K2_0.1:0.3", (2, 4, 5)), ("T0_k2:6", (4, 8, 8)), ("S1_a3:12", (4, 8, 8)),
])
def test_a_range_allows_the_distinct_counts_its_ratios_give(spec, thw):
    """choices(): every count some amount in [lo, hi] gives by the kept-count / anchor rule (a sweep of
    the ratios here), within the map (counts above it clipped)."""
    s = parse_plan(spec).specs[0]
    T, H, W = thw
    n = {"T": T, "S": H * W, "K": T * H * W}[s.kind]
    if s.ratio is not None:
        ratios = [s.ratio + (s.high - s.ratio) * i / 20000 for i in range(20001)]
        counts = {int(n * r + 1e-6) for r in ratios}
        if s.kind == "S":
            counts = {math.isqrt(c) for c in counts}
    else:
        counts = set(range(s.low, int(s.high) + 1))
    counts = sorted(c for c in counts if 1 <= c <= (min(H, W) if s.kind == "S" else n))
    got = s.choices(thw)
    assert [c.low for c in got] == counts
    assert all(not c.elastic and c.name == s.name for c in got)
    assert len({c.out_grid(thw) for c in got}) == len(got)  # distinct: each keeps another number of tokens


@pytest.mark.parametrize("text,message", [
    ("T0_0.8:0.2", "range 0.8:0.2 of T0: lo:hi needs lo <= hi"),
    ("T0_0.2:1.5", "ratio 1.5 of T0 must be in"),
    ("T0_0:0.5", "ratio 0 of T0 must be in"),
    ("S4_a9:6", "range a9:6 of S4"),
    ("T0_0.2:", "cannot read the range in 'T0_0.2:'"),
    ("T0_k2:0.5", "cannot read"),
    ("T0_k0:3", "keep must be >= 1"),
])
def test_bad_ranges_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_plan(text)
    assert repr(text) in str(info.value)


# ---- the budget of a training step ---------------------------------------------------------------------


def test_a_step_budget_is_a_function_of_seed_and_step_uniform_over_the_distinct_counts():
    model = tiny("T0_0.25:1.0-S1_0.3:1.0")  # T0: 1..4 frames; S1: anchors isqrt(int(64 * .3)) = 4 .. 8
    draws = [sample_plan(model, seed=3, step=s) for s in range(2000)]
    torch.manual_seed(123)  # the global RNG plays no part
    assert [sample_plan(model, seed=3, step=s) for s in (0, 7, 1999)] == [draws[0], draws[7], draws[1999]]
    assert sample_plan(model, seed=4, step=7) != draws[7] or sample_plan(model, seed=4, step=8) != draws[8]
    for i, options in enumerate([[1, 2, 3, 4], [4, 5, 6, 7, 8]]):
        freq = Counter(p.specs[i].low for p in draws)
        assert sorted(freq) == options
        for count in options:  # uniform (a ratio drawn uniformly and truncated would give 4 frames ~never)
            assert abs(freq[count] / len(draws) - 1 / len(options)) < 0.04, (i, freq)
    assert all(not p.elastic and p.settings == model.plan.settings for p in draws)
    # The model is left as it was: its selectors run the middle of the ranges.
    assert [str(s.spec) for s in model.selectors.values()] == ["T0_0.625", "S1_0.65"]


_WORKER = """
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from test_elastic import tiny
from stts.budget import sample_plan
from stts.engine.train import seed_everything
dist.init_process_group("gloo")
rank = dist.get_rank()
seed_everything(1000 * rank)  # the engine seeds every rank differently (drop path, mixup)
model = tiny(sys.argv[3], seed=rank)
draws = [str(sample_plan(model, seed=5, step=s)) for s in range(40)]
out = [None, None]
dist.all_gather_object(out, draws)
if rank == 0:
    open(sys.argv[2], "w").write(json.dumps(out))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_step_budget_is_the_same_on_two_gloo_ranks(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "draws.json"
    script.write_text(_WORKER)
    tests = str(Path(__file__).resolve().parent)
    root = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), tests, str(out), "T0_0.25:1.0-S1_0.3:1.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, tests])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = json.loads(out.read_text())
    assert rank0 == rank1
    here = tiny("T0_0.25:1.0-S1_0.3:1.0")  # and what one process draws
    assert rank0 == [str(sample_plan(here, seed=5, step=s)) for s in range(40)]
    assert len(set(rank0)) > 5  # budgets do change from step to step


# ---- set_plan ------------------------------------------------------------------------------------------


def _scramble_scorers(model, seed=1):
    """Give the scorers weights no fresh model has (as if trained)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("selectors."):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("name,start,other,kw", [
    ("mvit_b_16x4", "T0_0.5-S1_0.6", "T0_0.75-S1_a5s1", TINY_MVIT),
    ("mvit_b_16x4", ELASTIC, "T0_k1-S1_0.9", TINY_MVIT),
    ("vit_s_16x16", "T0_0.5-K2_0.5", "T0_0.75-K2_k20",
     dict(patch_size=8, tubelet_size=2, embed_dim=32, depth=3, num_heads=2)),
])
def test_set_plan_keeps_the_scorers_and_gives_the_logits_of_a_model_built_with_that_plan(name, start, other, kw):
    torch.manual_seed(0)
    model = stts.create_model(name, num_classes=3, num_frames=8, img_size=32, selection=start, **kw).eval()
    _scramble_scorers(model)
    scorers = {n: sel.scorer for n, sel in model.selectors.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert stts.set_plan(model, other) is model
    assert str(model.plan) == other and model.plan.settings == parse_plan(start).settings
    assert all(model.selectors[n].scorer is s for n, s in scorers.items())  # the same modules ...
    assert max_diff(before, model.state_dict()) == 0  # ... and weights
    built = stts.create_model(name, num_classes=3, num_frames=8, img_size=32, selection=other, **kw).eval()
    built.load_state_dict(before)
    x = torch.randn(2, *CLIP, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, kept = model(x, return_selections=True)
        want, kept_built = built(x, return_selections=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert {n: s.thw_out for n, s in kept.items()} == {n: s.thw_out for n, s in kept_built.items()}
    with torch.no_grad():  # ... and not those of the plan it had
        old = stts.create_model(name, num_classes=3, num_frames=8, img_size=32, selection=start, **kw).eval()
        old.load_state_dict(before)
        assert (old(x) - got).abs().max() > 1e-4


def test_set_plan_is_recorded_by_checkpoints_and_refuses_other_points(tmp_path):
    model = tiny("T0_0.5-S1_0.6").eval()
    _scramble_scorers(model)
    stts.set_plan(model, "T0_0.75-S1_0.4:0.9")  # elastic: runs its middle until told
    assert [str(s.spec) for s in model.selectors.values()] == ["T0_0.75", "S1_0.65"]
    stts.save_model(model, tmp_path / "m.pt")
    back = stts.load_model(tmp_path / "m.pt").eval()
    assert str(back.plan) == "T0_0.75-S1_0.4:0.9"
    x = torch.randn(1, *CLIP)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    for bad, message in [("T0_0.5", "selection points T0-S1"), ("T0_0.5-S2_0.6", "has the points T0-S2"),
                         ("T0_0.5-S1_a9", "cannot run T0_0.5-S1_a9"), ("T0_0.5-S1_a4:9", "the high end of")]:
        with pytest.raises(ValueError, match=message):
            stts.set_plan(model, bad)
        assert str(model.plan) == "T0_0.75-S1_0.4:0.9"  # unchanged
        assert [str(s.spec) for s in model.selectors.values()] == ["T0_0.75", "S1_0.65"]


# ---- plan_for: the largest counted cost under a target --------------------------------------------------


def _tokens(points, counts) -> int:
    """Tokens the selectors hand on, by hand: T keeps k frames of the H x W map, S a x a per frame, K k
    tokens. Both backbones here have a 4 x 4 (ViT, patch 8) or 8 x 8 (MViT) map at place 0 and 1."""
    side = {"vit": 4, "mvit": 8}["vit" if "K2" in points else "mvit"]
    frames, total = 4, 0
    for point, c in zip(points, counts):
        if point[0] == "T":
            frames, n = c, c * side * side
        elif point[0] == "S":
            side, n = c, frames * c * c
        else:
            n = c
        total += n
    return total


def _brute_force(name, points, ranges, kw):
    """{plan: (multiply-adds, tokens kept)} of every combination of counts, each model built with its plan
    and counted with stts.flops (plans the backbone refuses are left out)."""
    costs = {}
    for counts in itertools.product(*ranges):
        text = "-".join(f"{p}_{'a' if p[0] == 'S' else 'k'}{c}" for p, c in zip(points, counts))
        try:
            with torch.device("meta"):
                m = stts.create_model(name, num_classes=3, num_frames=8, img_size=32, selection=text, **kw).eval()
        except ValueError:
            continue
        costs[text] = (count_flops(m, (1, *CLIP)).total, _tokens(points, counts))
    return costs


@pytest.mark.parametrize("name,plan,points,ranges,kw", [
    # a fixed plan: every count of every point
    ("mvit_b_16x4", "T0_0.5-S1_0.6", ("T0", "S1"), (range(1, 5), range(1, 9)), TINY_MVIT),
    # an elastic plan: its ranges (T0 1..3, S1 5..7)
    ("mvit_b_16x4", ELASTIC, ("T0", "S1"), (range(1, 4), range(5, 8)), TINY_MVIT),
    # three points, the last one flattening (ViT: T0 sees 4 frames of 4x4, K2 at least 2*2*2 tokens)
    ("vit_s_16x16", "T0_k2:3-S1_a2:3-K2_k5:8", ("T0", "S1", "K2"), (range(2, 4), range(2, 4), range(5, 9)),
     dict(patch_size=8, tubelet_size=2, embed_dim=32, depth=3, num_heads=2)),
])
def test_plan_for_picks_the_largest_counted_cost_under_the_target(name, plan, points, ranges, kw):
    with torch.device("meta"):
        model = stts.create_model(name, num_classes=3, num_frames=8, img_size=32, selection=plan, **kw).eval()
    costs = _brute_force(name, points, ranges, kw)
    values = sorted({c for c, _ in costs.values()})
    # exactly a plan's cost, just under one, between, above them all
    targets = [values[0], values[len(values) // 3] - 1, values[len(values) // 2], values[-1] - 1, values[-1] * 2]
    for target in targets:
        fits = {p: c for p, c in costs.items() if c[0] <= target}
        want = max(fits, key=lambda p: fits[p])  # the largest cost, then the most tokens kept
        got = stts.plan_for(model, gflops=target / 1e9)
        assert costs[str(got)] == costs[want], (target, str(got), want)
        assert str(got) == want and got.settings == model.plan.settings
    with pytest.raises(ValueError, match=r"costs at most .* the cheapest, .* costs"):
        stts.plan_for(model, gflops=(values[0] - 1) / 1e9)


# ---- elastic training, and stts eval at several budgets -------------------------------------------------


def _elastic_cfg(synth, out):
    return run_config(synth, out, model={"selection": ELASTIC, "sigma": 0.1},
                      data={"num_temporal_views": 2}, train={"save_every_steps": 2})


@pytest.fixture(scope="module")
def elastic_run(synth, tmp_path_factory):
    import stts.engine.train as engine

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("elastic") / "run"
    summary = engine.train(load(_elastic_cfg(synth, out)))
    torch.set_num_threads(before)
    return out, summary


def test_elastic_training_draws_a_budget_per_step_and_validates_the_ends_and_middle(elastic_run):
    out, summary = elastic_run
    model = stts.load_model(out / "last.pt")
    assert str(model.plan) == ELASTIC
    steps = records(out, "train")
    # Step s logs the budget of step s - 1: what (seed, step) draws, whatever else happened.
    assert [r["plan"] for r in steps] == [str(sample_plan(model, seed=0, step=r["step"] - 1)) for r in steps]
    assert len({r["plan"] for r in steps}) > 3
    # ... and ran: the training statistics count each step's 2 clips at the frames its budget keeps.
    for e in records(out, "epoch"):
        drawn = Counter(int(r["plan"].split("_k")[1].split("-")[0]) for r in steps if e["step"] - 6 < r["step"] <= e["step"])
        seen = {v["kept"]: v["clips"] for k, v in e["train_selections"].items() if k.startswith("T0")}
        assert seen == {k: 2 * n for k, n in drawn.items()}, (seen, drawn)
    epochs = records(out, "epoch")
    points = {"lo": "T0_0.25-S1_0.4", "mid": "T0_0.5-S1_0.65", "hi": "T0_0.75-S1_0.9"}
    for e in epochs:
        assert e["val_plans"] == points and e["val_top1"] == e["val_top1_mid"]
        assert {f"val_top1_{t}" for t in points} <= e.keys()
    assert summary["best_top1"] == max(e["val_top1_mid"] for e in epochs)  # `best` follows the middle
    assert {t: p["plan"] for t, p in summary["points"].items()} == points
    log = (out / "train.log").read_text()
    assert "(elastic: a budget drawn per step" in log and "at mid (lo " in log


def test_elastic_training_resumes_exactly(elastic_run, synth, tmp_path):
    import stts.engine.train as engine

    full, _ = elastic_run
    part = tmp_path / "part"
    cfg = _elastic_cfg(synth, part)
    engine.train(load(cfg, ["train.max_steps=5"]))
    engine.train(load(cfg, ["train.resume=auto"]))
    assert max_diff(weights(full / "last.pt"), weights(part / "last.pt")) < 1e-6
    assert {r["step"]: r["plan"] for r in records(part, "train")} == {r["step"]: r["plan"] for r in records(full, "train")}
    assert [e["val_top1_lo"] for e in records(part, "epoch")] == [e["val_top1_lo"] for e in records(full, "epoch")]


def test_eval_plans_in_one_pass_match_separate_single_plan_evals(elastic_run, tmp_path, capsys):
    from stts.cli import main

    out, _ = elastic_run
    ckpt = str(out / "last.pt")
    plans = ["T0_0.25-S1_0.4", "T0_0.5-S1_0.65", "T0_0.75-S1_0.9", "T0_k1-S1_a7"]
    report = tmp_path / "plans.json"
    assert main(["eval", "--checkpoint", ckpt, "--plans", ",".join(plans), f"eval.report={report}"]) == 0
    screen = capsys.readouterr().out
    rep = json.loads(report.read_text())
    assert [r["plan"] for r in rep["plans"]] == plans and rep["elastic"] == ELASTIC
    assert "decoded once for 4 plans" in screen
    last_epoch = records(out, "epoch")[-1]  # validation in training ran the first three on these weights
    assert [r["top1"] for r in rep["plans"][:3]] == [last_epoch[f"val_top1_{t}"] for t in ("lo", "mid", "hi")]
    for plan, row in zip(plans, rep["plans"]):
        single = tmp_path / f"{plan}.json"
        assert main(["eval", "--checkpoint", ckpt, f"model.selection={plan}", f"eval.report={single}"]) == 0
        one = json.loads(single.read_text())
        assert one["plan"] == plan and "stts.set_plan" in one["note"]
        for key in ("top1", "top5", "mean_class_acc", "views", "selections"):
            assert row[key] == one[key], (plan, key)
        built = stts.create_model("mvit_b_16x4", num_classes=3, num_frames=8, img_size=32, selection=plan,
                                  **TINY_MVIT).eval()
        assert row["gflops_per_view"] == pytest.approx(count_flops(built, (1, *CLIP)).gflops, rel=1e-12)
        assert row["clips_per_s"] > 0
    assert len({json.dumps(r["selections"], sort_keys=True) for r in rep["plans"]}) == len(plans)
    assert Path(rep["figure"]).stat().st_size > 0 and rep["figure"].endswith(".png")
    capsys.readouterr()

    # --gflops: the plan of the largest counted cost under the target, within the ranges.
    target = rep["plans"][1]["gflops_per_view"]
    assert main(["eval", "--checkpoint", ckpt, "--gflops", str(target), f"eval.report={tmp_path / 'g.json'}"]) == 0
    g = json.loads((tmp_path / "g.json").read_text())
    model = stts.load_model(ckpt)
    assert g["plan"] == str(stts.plan_for(model, gflops=target)) and g["gflops_per_view"] <= target
    assert g["target_gflops"] == target and "--gflops" in g["note"]


def test_a_published_variant_saved_at_other_amounts_is_evaluated_at_them(tmp_path):
    from stts.checkpoint import read_checkpoint
    from stts.commands.eval import base_config

    small = dict(embed_dim=16, img_size=112, num_classes=3)
    model = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", **small)
    own = model.plan
    stts.set_plan(model, "T0_0.25-S4_0.5")
    stts.save_model(model, tmp_path / "m.safetensors")
    back = stts.load_model(tmp_path / "m.safetensors")
    assert str(back.plan) == "T0_0.25-S4_0.5" and back.plan.settings == own.settings  # sigma 0.1, diagonal
    # `stts eval --checkpoint m.safetensors` builds its run config from the file: the saved amounts.
    cfg = base_config(read_checkpoint(tmp_path / "m.safetensors"))
    assert cfg["model"]["name"] == "mvit_b_16x4_stts_t0.5_s0.7" and cfg["model"]["selection"] == "T0_0.25-S4_0.5"
    stts.set_plan(model, own)  # at its own plan the name says it all
    stts.save_model(model, tmp_path / "own.safetensors")
    assert "selection" not in base_config(read_checkpoint(tmp_path / "own.safetensors"))["model"]


def test_flops_and_bench_run_other_amounts_and_the_plan_for_a_cost(capsys):
    from stts.cli import main
    from stts.commands.flops import flops_report

    clip = dict(frames=8, size=32, num_classes=3, **TINY_MVIT)

    def cost(plan):
        return count_flops(tiny(plan).eval(), (1, *CLIP)).gflops

    rep = flops_report("mvit_b_16x4", selection=ELASTIC, **clip)  # elastic: its ends and middle
    assert rep["selection"] == "T0_0.5-S1_0.65" and rep["gflops"] == pytest.approx(cost("T0_0.5-S1_0.65"), rel=1e-12)
    assert {t: (p["plan"], p["gflops"]) for t, p in rep["points"].items()} == {
        t: (p, pytest.approx(cost(p), rel=1e-12)) for t, p in
        (("lo", "T0_0.25-S1_0.4"), ("mid", "T0_0.5-S1_0.65"), ("hi", "T0_0.75-S1_0.9"))}
    target = cost("T0_k2-S1_a7")
    rep = flops_report("mvit_b_16x4", selection=ELASTIC, gflops=target, **clip)
    picked = stts.plan_for(tiny(ELASTIC), gflops=target)
    assert rep["selection"] == str(picked) and rep["gflops"] == pytest.approx(cost(str(picked)), rel=1e-12)
    assert rep["gflops"] <= target and rep["target_gflops"] == target
    kwargs = json.dumps({**TINY_MVIT, "num_classes": 3})
    assert main(["bench", "mvit_b_16x4", f"mvit_b_16x4:{ELASTIC}", "--frames", "8", "--size", "32", "--kwargs", kwargs,
                 "--repeats", "1", "--warmup", "0", "--gflops", repr(target), "--json"]) == 0
    dense, elastic = json.loads(capsys.readouterr().out)["results"]
    assert dense["plan"] is None and elastic["plan"] == str(picked)
    assert elastic["gflops"] == pytest.approx(cost(str(picked)), rel=1e-12)


def test_budgets_respect_a_training_free_policys_needs():
    """"change" compares neighbouring frames: no budget may leave the selector after T0 one frame."""
    dense = stts.create_model("mvit_b_16x4", num_classes=3, num_frames=8, img_size=32, **TINY_MVIT).eval()
    with pytest.raises(ValueError, match="low end .* the change policy needs 2 frames"):
        stts.patch(dense, "T0_0.25:1.0-S1_0.4:0.9", policy="change")  # T0_0.25 keeps 1 of 4
    model = stts.patch(dense, "T0_0.5-S1_0.6", policy="change")
    with pytest.raises(ValueError, match="the change policy needs 2 frames"):
        stts.set_plan(model, "T0_k1-S1_a4")
    assert str(model.plan) == "T0_0.5-S1_0.6"
    one_frame = count_flops(tiny("T0_k1-S1_a8").eval(), (1, *CLIP)).total / 1e9  # learned: scorers cost more
    picked = stts.plan_for(model, gflops=one_frame)
    assert picked.specs[0].keep >= 2 and picked.policy == "change"
    stts.set_plan(model, picked)
    assert count_flops(model, (1, *CLIP)).total / 1e9 <= one_frame
