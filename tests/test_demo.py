"""The demo: its event metrics against pixel masks, its configs in configs/, and a quick end-to-end run."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("matplotlib")

from stts.config import load_config, to_dict  # noqa: E402
from stts.data import DataConfig, build_dataset  # noqa: E402
from stts.data.synth import make_synthetic_dataset, synthetic_data_config  # noqa: E402
from stts.demo import (DemoSettings, _evaluate_with_events, budget_plans, demo_run_config, run_demo,  # noqa: E402
                       target_gaps)
from stts.models import create_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(out, num_classes=3, clips_per_class=2, val_clips_per_class=3, size=32,
                                  event_size=16, seed=3)


def test_event_metrics_match_pixel_masks(tiny_synth):
    """event_frame_kept / event_pixels_kept against masks built from the raw selections (4 px tokens,
    2 frames per temporal token in mvit_tiny)."""
    torch.manual_seed(0)
    model = create_model("mvit_tiny", num_classes=3, selection="T0_0.5-S1_0.6").eval()
    val = build_dataset(DataConfig(**tiny_synth["data_config"]), "val")
    meta = json.loads(Path(tiny_synth["meta"]).read_text())
    got = _evaluate_with_events(model, val, meta, Path(tiny_synth["root"]), (32, 32), batch=4)

    frame_hits, pixels, correct = 0, 0.0, 0
    with torch.inference_mode():
        for i in range(len(val)):
            item = val[i]
            logits, sel = model(item["video"][None], return_selections=True)
            correct += int(logits[0].argmax()) == item["label"]
            clip = meta["clips"][str(Path(val.samples[i][0]).relative_to(tiny_synth["root"]))]
            token = clip["event_frames"][0] // 2
            kept_tokens = sel["T0"].indices[0].tolist()
            if token not in kept_tokens:
                continue
            frame_hits += 1
            top, left, h, w = sel["S1"].boxes[0, kept_tokens.index(token)].tolist()  # tokens of 4 px
            kept = np.zeros((32, 32), bool)
            kept[4 * top: 4 * (top + h), 4 * left: 4 * (left + w)] = True
            event = np.zeros((32, 32), bool)
            et, el, eh, ew = clip["event_box"]
            event[et: et + eh, el: el + ew] = True
            pixels += (kept & event).sum() / event.sum()
    n = len(val)
    assert got["clips"] == n
    assert got["top1"] == pytest.approx(100 * correct / n)
    assert got["event_frame_kept"] == pytest.approx(100 * frame_hits / n)
    assert got["event_pixels_kept"] == pytest.approx(100 * pixels / n)


@pytest.mark.parametrize("stage", ["dense", "elastic", "stts"])
def test_configs_dir_holds_the_demo_stages(stage):
    """configs/demo_<stage>.yaml is exactly the run config `stts demo` trains with (default settings)."""
    s = DemoSettings()
    data = {"data_config": synthetic_data_config(Path(s.out_dir) / "data", size=s.size)}
    dense = str(Path(s.out_dir) / "runs" / "dense" / "last.pt")
    expected = to_dict(demo_run_config(stage, s, data, dense_checkpoint=dense))
    got = to_dict(load_config(REPO / "configs" / f"demo_{stage}.yaml", check_paths=False))
    assert got == expected


@pytest.mark.parametrize("jacobian,reduction", [("full", "loo"), ("diagonal", "antithetic"), ("full", "none")])
def test_estimator_settings_reach_the_selectors(jacobian, reduction):
    """DemoSettings.jacobian / variance_reduction are what the STTS stage's selectors run with (and the
    dense stage has no selectors to give them to)."""
    from stts.engine.build import build_model

    s = DemoSettings(jacobian=jacobian, variance_reduction=reduction)
    data = {"data_config": synthetic_data_config(Path(s.out_dir) / "data", size=s.size)}
    model = build_model(demo_run_config("stts", s, data, dense_checkpoint="dense.pt"), num_classes=6)
    assert [(sel.jacobian, sel.variance_reduction) for sel in model.selectors.values()] == [(jacobian, reduction)] * 2
    assert (model.plan.jacobian, model.plan.variance_reduction) == (jacobian, reduction)
    assert len(build_model(demo_run_config("dense", s, data), num_classes=6).selectors) == 0


def test_the_library_default_estimator_is_the_demos():
    """The estimator a new plan gets when nothing is said (create_model, a run config with
    model.jacobian '' / model.variance_reduction '') is the one the demo fine-tunes with: the winner of
    the demo runs in benchmarks/RESULTS.md."""
    from stts.config import load_config
    from stts.engine.build import build_model

    s = DemoSettings()
    want = (s.jacobian, s.variance_reduction)
    model = create_model("mvit_tiny", num_classes=3, selection="T0_0.5-S1_0.6")
    assert [(sel.jacobian, sel.variance_reduction) for sel in model.selectors.values()] == [want] * 2
    cfg = load_config(base={"model": {"name": "mvit_tiny", "selection": "T0_0.5", "num_classes": 3}},
                      check_paths=False)
    assert (cfg.model.jacobian, cfg.model.variance_reduction) == ("", "")  # "the model's default"
    assert [(sel.jacobian, sel.variance_reduction) for sel in build_model(cfg, 3).selectors.values()] == [want]


def test_budget_plans_pick_the_nearest_token_fraction():
    """Against the fractions written out by hand: T0_k<t> keeps t of 8 frames, S1_a<a> an a x a of the 8x8
    map, so a point keeps t/8 * a^2/64 of the tokens; the nearest wins, a tie goes to fewer tokens."""
    model = create_model("mvit_tiny", num_classes=3, selection="T0_k4:8-S1_a6:8")
    fractions = {f"T0_k{t}-S1_a{a}": t / 8 * a * a / 64 for t in range(4, 9) for a in range(6, 9)}
    budgets = [0.28, 0.5, 0.75, 0.6, 0.1, 1.0, 0.53125]  # 0.53125: halfway between T0_k4-S1_a8 and T0_k8-S1_a6
    expected = [min(fractions, key=lambda p: (abs(fractions[p] - b), fractions[p])) for b in budgets]
    assert expected[:4] == ["T0_k4-S1_a6", "T0_k4-S1_a8", "T0_k6-S1_a8", "T0_k5-S1_a8"]  # the oracle itself
    assert expected[4:] == ["T0_k4-S1_a6", "T0_k8-S1_a8", "T0_k4-S1_a8"]
    got = budget_plans(model, budgets, (1, 3, 16, 32, 32))
    assert [str(plan) for plan, _ in got] == expected
    assert [f for _, f in got] == pytest.approx([fractions[p] for p in expected])
    assert str(model.plan) == "T0_k4:8-S1_a6:8"  # the model is left at its own plan


def _row(name, kind, budget, fraction, top1):
    return {"name": name, "kind": kind, "budget": budget, "token_fraction": fraction, "top1": top1}


def test_target_gaps_from_rows():
    """The issue's comparisons, worked out by hand from made-up rows."""
    rows = [_row("dense", "dense", 1.0, 1.0, 99.0),
            _row("elastic", "elastic", 0.28, 0.281, 97.5), _row("stts", "stts", 0.28, 0.281, 98.0),
            _row("uniform", "fine-tuned", 0.28, 0.281, 60.0), _row("random", "fine-tuned", 0.28, 0.281, 58.0),
            _row("change", "training-free", 0.28, 0.281, 45.0), _row("saliency", "training-free", 0.28, 0.281, 52.0),
            _row("uniform", "training-free", 0.28, 0.281, 40.0), _row("random", "training-free", 0.28, 0.281, 41.0),
            _row("elastic", "elastic", 0.5, 0.5, 98.5), _row("change", "training-free", 0.5, 0.5, 90.0),
            _row("uniform", "training-free", 0.5, 0.5, 70.0),
            _row("elastic", "elastic", 0.75, 0.75, 98.7), _row("saliency", "training-free", 0.75, 0.75, 99.0)]
    gaps = target_gaps(rows)
    assert gaps["elastic_vs_fixed"] == pytest.approx(97.5 - 98.0)
    assert gaps["elastic_vs_dense"] == pytest.approx(98.7 - 99.0)  # the largest budget's elastic row
    assert gaps["elastic_vs_uniform"] == pytest.approx(97.5 - 60.0)  # uniform fine-tuned at the fixed budget
    assert gaps["free_policy"] == "saliency"  # the best token policy at the smallest budget, not at 0.75
    assert gaps["free_vs_uniform"] == pytest.approx(52.0 - 40.0)
    assert gaps["free_vs_uniform_finetuned"] == pytest.approx(52.0 - 60.0)
    # Without the fixed model or the fine-tuned baselines, those comparisons are absent, not made up.
    partial = target_gaps([r for r in rows if r["kind"] not in ("stts", "fine-tuned")])
    assert partial["elastic_vs_fixed"] is None and partial["elastic_vs_uniform"] is None
    assert partial["free_vs_uniform_finetuned"] is None and partial["free_vs_uniform"] == pytest.approx(12.0)


def _naive_top1(model, dataset) -> float:
    with torch.inference_mode():
        model.eval()
        hits = [int(model(dataset[i]["video"][None]).argmax()) == dataset[i]["label"] for i in range(len(dataset))]
    return 100.0 * sum(hits) / len(hits)


def test_quick_demo_writes_the_report(tmp_path):
    """A tiny demo end to end: every stage trains, and each row of the report is the model it names, at
    its budget's plan: checked against models rebuilt here from the checkpoints and evaluated naively."""
    import stts
    from stts.checkpoint import load_model

    s = DemoSettings(out_dir=str(tmp_path / "demo"), num_classes=3, clips_per_class=4, val_clips_per_class=3,
                     dense_epochs=1, finetune_epochs=2, scorer_warmup_epochs=1, latency_repeats=2,
                     throughput_batch=4, picture_clips=2, progress=False, threads=1)
    result = run_demo(s)
    out = Path(s.out_dir)
    for name in ("results.md", "results.json", "accuracy_vs_gflops.png", "selection.png", "selection_uniform.png",
                 "selection_change.png"):
        assert (out / name).stat().st_size > 0, name
    rows = result["rows"]
    plans = {0.28: "T0_k4-S1_a6", 0.5: "T0_k4-S1_a8", 0.75: "T0_k6-S1_a8"}  # budget_plans' test, by hand
    free = ["change", "saliency", "uniform", "random"]
    expected = [("dense", "dense", 1.0)]
    for b in (0.28, 0.5, 0.75):
        expected += [("elastic", "elastic", b)]
        if b == 0.28:  # the fixed plan T0_0.5-S1_0.6 keeps 4 of 8 frames and a 6x6 anchor: 28%
            expected += [("stts", "stts", b), ("uniform", "fine-tuned", b), ("random", "fine-tuned", b)]
        expected += [(p, "training-free", b) for p in free]
    assert [(r["name"], r["kind"], r["budget"]) for r in rows] == expected
    val = build_dataset(DataConfig(**{**synthetic_data_config(out / "data", size=32), "cache_decoded": True}), "val")
    dense = load_model(out / "runs" / "dense" / "last.pt")
    elastic_sd = load_model(out / "runs" / "elastic" / "last.pt").state_dict()
    for r in rows:
        if r["kind"] == "dense":
            plan, t, a = "dense", 8, 8
        elif r["kind"] in ("stts", "fine-tuned"):
            plan, t, a = "T0_0.5-S1_0.6", 4, 6  # 4 of 8 frames, an isqrt(int(0.6 * 64)) = 6 anchor
        else:
            plan = plans[r["budget"]]
            t, a = map(int, re.fullmatch(r"T0_k(\d+)-S1_a(\d+)", plan).groups())
        assert r["plan"] == plan, r
        assert r["token_fraction"] == pytest.approx(t / 8 * a * a / 64), r
        if r["kind"] == "elastic":  # a model built at that plan, given the elastic checkpoint's weights
            model = create_model("mvit_tiny", num_classes=3, selection=plans[r["budget"]])
            model.load_state_dict(elastic_sd)
        elif r["kind"] == "training-free":
            model = stts.patch(load_model(out / "runs" / "dense" / "last.pt"), plans[r["budget"]], policy=r["name"])
        elif r["kind"] == "dense":
            model = dense
        else:
            model = load_model(out / "runs" / r["name"] / "last.pt")
        if r["name"] != "random":  # the random policy's draws differ from the report's
            assert r["top1"] == pytest.approx(_naive_top1(model, val)), r
        assert r["gflops"] < dense_gflops(rows) or r["kind"] == "dense"
        assert r["latency_ms"] > 0 and r["clips_per_s"] > 0
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)
    assert set(result["gaps"]) >= {"elastic_vs_fixed", "elastic_vs_dense", "elastic_vs_uniform", "free_vs_uniform"}
    # Each training stage is a plain `stts train` run, replayable from its saved config.
    for stage in ("dense", "elastic", "stts", "uniform", "random"):
        cfg = load_config(out / "runs" / stage / "config.yaml", check_paths=False)
        assert cfg.model.policy == ("learned" if stage in ("dense", "elastic", "stts") else stage)
    assert load_config(out / "runs" / "elastic" / "config.yaml", check_paths=False).model.selection == s.elastic_plan


def dense_gflops(rows) -> float:
    return next(r["gflops"] for r in rows if r["kind"] == "dense")
