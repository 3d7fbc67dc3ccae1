"""The demo: its event metrics against pixel masks, its configs in configs/, and a quick end-to-end run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("matplotlib")

from stts.config import load_config, to_dict  # noqa: E402
from stts.data import DataConfig, build_dataset  # noqa: E402
from stts.data.synth import make_synthetic_dataset, synthetic_data_config  # noqa: E402
from stts.demo import DemoSettings, _evaluate_with_events, demo_run_config, run_demo  # noqa: E402
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


@pytest.mark.parametrize("stage", ["dense", "stts"])
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


def test_quick_demo_writes_the_report(tmp_path):
    """`stts demo --quick` end to end: every stage trains, and the report holds what the issue asks for."""
    s = DemoSettings(out_dir=str(tmp_path / "demo"), num_classes=3, clips_per_class=4, val_clips_per_class=2,
                     dense_epochs=1, finetune_epochs=2, scorer_warmup_epochs=1, latency_repeats=2,
                     throughput_batch=4, picture_clips=2, progress=False, threads=1)
    result = run_demo(s)
    out = Path(s.out_dir)
    for name in ("results.md", "results.json", "accuracy_vs_gflops.png", "selection.png", "selection_uniform.png"):
        assert (out / name).stat().st_size > 0, name
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["dense", "stts", "uniform", "random"]
    assert rows["dense"]["token_fraction"] == 1.0
    for name in ("stts", "uniform", "random"):
        assert rows[name]["token_fraction"] == pytest.approx(4 / 8 * 36 / 64)  # 4 of 8 frames, 6x6 of 8x8
        assert rows[name]["gflops"] < 0.5 * rows["dense"]["gflops"]
        assert rows[name]["latency_ms"] > 0 and rows[name]["clips_per_s"] > 0
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[1:]] == ["dense", "stts", "uniform", "random"]
    # Each stage is a plain `stts train` run, replayable from its saved config.
    for stage in rows:
        cfg = load_config(out / "runs" / stage / "config.yaml", check_paths=False)
        assert cfg.model.policy == ("learned" if stage in ("dense", "stts") else stage)
