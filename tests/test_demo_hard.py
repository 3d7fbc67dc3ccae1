"""`stts demo --hard`: the option plumbing, the equal-epoch dense stage's schedule, and a tiny run."""

import json
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("matplotlib")

from stts.cli import build_parser  # noqa: E402
from stts.commands.demo import settings_from_args  # noqa: E402
from stts.config import to_dict  # noqa: E402
from stts.data.synth import synthetic_data_config  # noqa: E402
from stts.demo import HARD, DemoSettings, demo_run_config, hard_settings, run_demo  # noqa: E402


def _args(*argv):
    return build_parser().parse_args(["demo", *argv])


def test_options_default_hard_and_given():
    assert settings_from_args(_args()) == DemoSettings()  # the default demo is unchanged
    hard = settings_from_args(_args("--hard"))
    assert hard == hard_settings()
    for name, value in HARD.items():
        assert getattr(hard, name) == value, name
    assert hard.num_classes == 18 and hard.event_frames == 1 and hard.equal_epoch_dense
    given = settings_from_args(_args("--hard", "--classes", "12", "--distractors", "5", "--baselines", "uniform",
                                     "--no-equal-epoch-dense", "--distill-weight", "0.25", "--out", "x"))
    assert (given.num_classes, given.num_distractors, given.baselines, given.equal_epoch_dense, given.distill_weight,
            given.out_dir) == (12, 5, ("uniform",), False, 0.25, "x")
    assert given.event_frames == HARD["event_frames"]  # what was not given stays the hard setting's


def test_hard_rejects_a_warmup_that_leaves_no_joint_epoch(capsys):
    from stts.commands.demo import run

    assert run(_args("--hard", "--finetune-epochs", "4", "--scorer-warmup-epochs", "4")) == 2
    assert capsys.readouterr().err.startswith("error: --scorer-warmup-epochs 4")


@pytest.mark.parametrize("settings", [DemoSettings(), hard_settings(distill_weight=0.5, backbone_lr_mult=1.0)])
def test_equal_epoch_dense_is_the_stts_stage_without_selection(settings):
    """dense_ft differs from the STTS stage only in what selection needs: the plan, its scorers'
    warm-up and noise, and distillation from the start it shares; the schedule, start and data are equal."""
    data = {"data_config": synthetic_data_config(Path("d"), size=settings.size)}
    stts_cfg = to_dict(demo_run_config("stts", settings, data, dense_checkpoint="dense.pt"))
    dense_cfg = to_dict(demo_run_config("dense_ft", settings, data, dense_checkpoint="dense.pt"))
    differ = {f"{sec}.{k}" for sec in stts_cfg for k in stts_cfg[sec] if stts_cfg[sec][k] != dense_cfg[sec][k]}
    expected = {"model.selection", "model.jacobian", "optim.scorer_warmup_epochs", "train.output_dir"}
    if settings.distill_weight:
        expected.add("train.distill_from")  # (weight 0.5 and temperature 1 are also the keys' defaults)
    assert differ == expected
    assert dense_cfg["model"]["selection"] == "" and dense_cfg["model"]["finetune"] == "dense.pt"
    assert dense_cfg["optim"]["backbone_lr_mult"] == settings.backbone_lr_mult
    assert dense_cfg["train"]["distill_from"] == ""
    if settings.distill_weight:
        assert stts_cfg["train"]["distill_from"] == "finetune"  # the dense start teaches
        assert stts_cfg["train"]["distill_weight"] == 0.5


def test_tiny_hard_demo_reports_the_equal_epoch_dense(tmp_path):
    s = hard_settings(out_dir=str(tmp_path / "hard"), clips_per_class=2, val_clips_per_class=1, dense_epochs=1,
                      finetune_epochs=2, scorer_warmup_epochs=1, baselines=("uniform",), latency_repeats=2,
                      throughput_batch=4, picture_clips=2, progress=False, threads=1, distill_weight=0.5)
    result = run_demo(s)
    out = Path(s.out_dir)
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["dense", "dense_ft", "stts", "uniform"]
    assert rows["dense_ft"]["kind"] == "dense" and rows["dense_ft"]["token_fraction"] == 1.0
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["num_classes"] == 18 and {len(c["event_frames"]) for c in meta["clips"].values()} == {1}
    report = (out / "results.md").read_text()
    gap = rows["stts"]["top1"] - rows["dense_ft"]["top1"]
    assert f"{gap:+.1f} points of top-1 against dense_ft" in report
    assert "distillation: weight 0.5" in report
    for stage in ("stts", "uniform"):
        assert (out / "runs" / stage / "config.yaml").read_text().count("distill_from: finetune") == 1
    assert "distill_from: ''" in (out / "runs" / "dense_ft" / "config.yaml").read_text()
