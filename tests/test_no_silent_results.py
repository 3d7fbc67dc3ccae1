"""No silent wrong result (issue 11): the bad-data limit in a short run, a diverged scorer stops training,
the checkpoint precedes validation, padded clips are counted, eval honours model.selection, NaN sigma,
`data check --num-frames`, the published recipes' test views, and the small things (overrides after
options, `key=` for an empty string, Ctrl-C says how to resume)."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch

import stts
import stts.engine.train as engine
from stts.errors import NonFiniteError
from test_engine_helpers import (NUM_CLASSES, TINY_MVIT, TINY_PLAN, TRAIN_CLIPS, load, records, run_config,  # noqa: F401
                                 synth, write_config)

ROOT = Path(__file__).resolve().parents[1]


def _with_missing_files(synth, tmp_path, n_bad: int) -> str:
    """The synthetic training CSV plus `n_bad` lines naming files that do not exist."""
    lines = Path(synth["train_annotations"]).read_text().splitlines()
    lines += [f"train/missing_{i}.mp4 {i % NUM_CLASSES}" for i in range(n_bad)]
    path = tmp_path / "train17.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_five_of_seventeen_bad_files_fail_a_two_epoch_run(synth, tmp_path, capsys):
    from stts.cli import main

    csv = _with_missing_files(synth, tmp_path, 5)
    assert len(Path(csv).read_text().splitlines()) == 17 == TRAIN_CLIPS + 5
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "run.yaml", run_config(synth, out, data={"train_annotations": csv}))
    # 8 steps of 2 per epoch: far fewer than data.skip_check_after (100) samples, so only the
    # end-of-epoch judgement can catch it.
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "training samples seen" in err and "above data.max_skip_fraction=0.1 (at step 8)" in err, err
    assert str(out / "bad_samples.txt") in err and "Traceback" not in err
    listed = (out / "bad_samples.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in listed) == \
        sorted(f"{synth['root']}/train/missing_{i}.mp4: missing file" for i in range(5))
    assert not (out / "last.pt").exists()  # a run on bad data is not checkpointed as if it were fine

    # Allowed a larger fraction, the run finishes and its summary counts the skipped samples.
    summary = engine.train(load(run_config(synth, tmp_path / "ok", data={"train_annotations": csv,
                                                                          "max_skip_fraction": 0.6},
                                           train={"eval_every": 0})))
    counts = [int(line.split("\t")[0]) for line in (tmp_path / "ok" / "bad_samples.txt").read_text().splitlines()]
    assert summary["skipped_samples"] == sum(counts) > 0 and len(counts) == 5
    log = (tmp_path / "ok" / "train.log").read_text()
    assert f"skipped {sum(counts)} bad training samples (list: {tmp_path / 'ok' / 'bad_samples.txt'})" in log
    assert records(tmp_path / "ok", "epoch")[-1]["skipped_samples"] == sum(counts)


def test_a_diverged_scorer_stops_training_naming_the_steps(synth, tmp_path, monkeypatch):
    real = engine.build_model

    def nan_scorer(cfg, num_classes):
        model = real(cfg, num_classes)
        for p in model.selectors["T0"].scorer.parameters():
            p.data.fill_(float("nan"))
        return model

    monkeypatch.setattr(engine, "build_model", nan_scorer)
    # No gradient clipping: nothing else spreads the NaN. Without the selectors passing it on, the NaN
    # scores would pick frames silently and the loss would stay finite (the backbone is frozen).
    cfg = run_config(synth, tmp_path / "run", optim={"clip_grad": 0.0}, train={"log_every": 3, "save_every_steps": 2})
    with pytest.raises(NonFiniteError, match=r"not finite in 2 of 2 micro-batches of steps 1-2 \(epoch 1\).*"
                                             r"no checkpoint was written yet"):
        engine.train(load(cfg))  # caught at the step-2 checkpoint, before it is written
    assert not (tmp_path / "run" / "last.pt").exists()  # the diverged weights were not saved
    with pytest.raises(NonFiniteError, match=r"not finite in 3 of 3 micro-batches of steps 1-3"):
        engine.train(load(cfg, ["train.save_every_steps=0"]))  # caught at the step-3 log point


def test_fp16_overflow_steps_are_tolerated_other_non_finite_losses_are_not(synth, tmp_path, monkeypatch):
    real, calls = engine._loss, []

    def overflow_once(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("inf") if len(calls) == 2 else loss  # micro-batch 2 overflows

    monkeypatch.setattr(engine, "_loss", overflow_once)
    cfg = run_config(synth, tmp_path / "fp16", train={"amp": "fp16", "max_steps": 3, "log_every": 3})
    summary = engine.train(load(cfg))  # the fp16 loss scaler skips such a step: the run goes on
    assert summary["step"] == 3 and math.isfinite(summary["last_loss"])
    assert "1 of 3 micro-batches of steps 1-3 had a non-finite loss" in (tmp_path / "fp16" / "train.log").read_text()
    calls.clear()
    # Without loss scaling the step is taken: its NaN gradients poison the weights, step 3 is NaN too.
    with pytest.raises(NonFiniteError, match="not finite in 2 of 3 micro-batches of steps 1-3"):
        engine.train(load(run_config(synth, tmp_path / "fp32", train={"max_steps": 3, "log_every": 3})))


def test_nan_scores_poison_the_selector_output_of_that_clip_only():
    from stts.selectors import AnchorSelector, TemporalSelector, TokenSelector

    torch.manual_seed(0)
    x = torch.randn(2, 1 + 4 * 6 * 6, 8)  # (B, 1 + T*H*W, C)
    for sel in (TemporalSelector(8, 0.5), AnchorSelector(8, 0.5), TokenSelector(8, 0.5)):
        for training in (False, True):
            sel.train(training)
            torch.manual_seed(1)
            clean, _ = sel(x, (4, 6, 6))
            with torch.no_grad():
                bias = next(p for n, p in sel.scorer.named_parameters() if n.endswith("bias"))
                saved = bias.clone()
                bias.fill_(float("nan"))
            torch.manual_seed(1)
            nan_out, _ = sel(x, (4, 6, 6))
            with torch.no_grad():
                bias.copy_(saved)
            assert torch.isnan(nan_out).all(), (type(sel).__name__, training)
            # finite scores: the output is exactly what it was
            torch.manual_seed(1)
            again, _ = sel(x, (4, 6, 6))
            assert torch.equal(again, clean)


def test_nan_sigma_is_an_error():
    from stts.topk import perturbed_topk

    for sigma in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
            perturbed_topk(torch.randn(2, 6), 2, sigma=sigma)


def test_eval_counts_nonfinite_logits_as_wrong():
    from stts.engine.evaluate import accuracy_metrics

    scores = torch.tensor([[float("nan"), 0.0], [1.0, 0.0], [0.0, 1.0]])  # a NaN "top-1" is class 0 = label
    m = accuracy_metrics(scores, torch.tensor([0, 0, 0]))
    assert m["top1"] == pytest.approx(100 / 3)  # only row 1 is right


def test_checkpoint_is_written_before_validation(synth, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("validation crashed")

    monkeypatch.setattr(engine, "evaluate", crash)
    cfg = run_config(synth, tmp_path / "run")
    with pytest.raises(RuntimeError, match="validation crashed"):
        engine.train(load(cfg))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]) == (6, 1, 0)  # epoch 1's training is kept
    monkeypatch.undo()
    summary = engine.train(load(cfg, ["train.resume=auto"]))
    assert summary["step"] == 12 and "at step 6 (epoch 1" in (tmp_path / "run" / "train.log").read_text()
    assert summary["padded_clips"] == 0  # 8-frame clips of 8-frame videos: nothing repeated


def test_padded_clips_are_counted_in_training_and_validation(synth, tmp_path):
    # The synthetic videos have 8 frames; 8 frames 2 apart span 15: every clip runs past the end.
    summary = engine.train(load(run_config(synth, tmp_path / "run", data={"sampling_rate": 2})))
    epochs = records(tmp_path / "run", "epoch")
    assert [e["padded_clips"] for e in epochs] == [12, 12]  # 6 steps x batch 2
    assert [e["val_padded_views"] for e in epochs] == [6, 6]  # 6 validation videos x 1 view
    assert summary["padded_clips"] == 24
    assert "12 clips padded" in (tmp_path / "run" / "train.log").read_text()


def test_eval_honours_model_selection_for_a_checkpoint_of_another_plan(synth, tmp_path, capsys):
    from stts.cli import main
    from stts.flops import count_flops

    dense = stts.create_model("mvit_b_16x4", num_classes=NUM_CLASSES, num_frames=8, img_size=32, **TINY_MVIT)
    stts.save_model(dense, tmp_path / "dense.pt")
    cfg = write_config(tmp_path / "run.yaml", run_config(synth, tmp_path / "run", model={"selection": ""}))
    base = ["eval", str(cfg), "--checkpoint", str(tmp_path / "dense.pt"), "eval.split=val"]

    assert main(base + [f"eval.report={tmp_path / 'dense.json'}"]) == 0
    rep = json.loads((tmp_path / "dense.json").read_text())
    assert rep["plan"] is None and rep["policy"] is None

    assert main(base + [f"model.selection={TINY_PLAN}", f"eval.report={tmp_path / 'sel.json'}"]) == 0
    rep = json.loads((tmp_path / "sel.json").read_text())
    selected = stts.create_model("mvit_b_16x4", selection=TINY_PLAN, num_classes=NUM_CLASSES, num_frames=8,
                                 img_size=32, **TINY_MVIT)
    assert rep["plan"] == TINY_PLAN and "start UNTRAINED" in rep["note"] and "dense checkpoint" in rep["note"]
    assert rep["gflops_per_view"] == pytest.approx(count_flops(selected, (1, 3, 8, 32, 32)).gflops)
    assert rep["selections"]["T0"]["kept"] == 2
    assert "start UNTRAINED" in capsys.readouterr().out

    assert main(base + [f"model.selection={TINY_PLAN}", "model.policy=uniform",
                        f"eval.report={tmp_path / 'uni.json'}"]) == 0
    rep = json.loads((tmp_path / "uni.json").read_text())
    assert rep["plan"] == TINY_PLAN and "uniform policy" in rep["note"] and "UNTRAINED" not in rep["note"]
    assert rep["policy"] == "uniform"

    # A training-free policy on the dense weights: named in the report and on the screen.
    capsys.readouterr()
    assert main(base + [f"model.selection={TINY_PLAN}", "model.policy=change",
                        f"eval.report={tmp_path / 'change.json'}"]) == 0
    rep = json.loads((tmp_path / "change.json").read_text())
    assert (rep["plan"], rep["policy"]) == (TINY_PLAN, "change") and "(change policy)" in rep["note"]
    assert f"plan {TINY_PLAN}  policy change" in capsys.readouterr().out


def test_data_check_warns_about_videos_shorter_than_one_clip(tmp_path, capsys):
    pytest.importorskip("av")
    from _data_helpers import index_frames, write_video
    from stts.cli import main

    for name, n in (("short", 30), ("fits", 31)):
        write_video(tmp_path / f"{name}.mp4", index_frames(n))
    (tmp_path / "a.csv").write_text("short.mp4 0\nfits.mp4 0\n")
    argv = ["data", "check", str(tmp_path), str(tmp_path / "a.csv"), "--no-progress", "--num-frames", "16",
            "--sampling-rate", "2"]
    # stts's rule: 16 frames 2 apart span (16 - 1) x 2 + 1 = 31 frames.
    assert main(argv) == 0
    warned = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines() if line.startswith("WARN")]
    assert warned == [str(tmp_path / "short.mp4")]
    # PySlowFast's rule takes linspace(0, 31, 16): it needs 32 frames, so both are short.
    assert main(argv + ["--sampling", "pyslowfast"]) == 0
    out = capsys.readouterr().out
    assert out.count("WARN") == 2 and "30 frames at 30 fps: shorter than one 16x2 clip (pyslowfast" in out
    assert main(argv[:-4]) == 0 and "WARN" not in capsys.readouterr().out  # no --num-frames: no such warning


@pytest.mark.parametrize("path, sampling, views, crops, mean", [
    *[(f"configs/{p.name}", "pyslowfast", 5, 1, (0.45, 0.45, 0.45))
      for p in sorted((ROOT / "configs").glob("mvit_b_16x4_*_k400.yaml"))],
    ("configs/swin3d_b_stts_t0.5_k400.yaml", "mmaction", 4, 3, (0.485, 0.456, 0.406)),
])
def test_published_recipes_test_as_their_models_were_tested(path, sampling, views, crops, mean):
    from stts.config import load_config

    d = load_config(ROOT / path, check_paths=False).data
    assert (d.sampling, d.num_temporal_views, d.num_spatial_crops, d.test_short_side, d.crop_size) == \
        (sampling, views, crops, 224, 224)
    assert d.mean == pytest.approx(mean)


def test_overrides_after_options_and_ctrl_c_prints_the_resume_command(synth, tmp_path, monkeypatch, capsys):
    from stts.cli import main

    cfg = write_config(tmp_path / "run.yaml", run_config(synth, tmp_path / "run"))

    def interrupted(cfg, **kwargs):
        assert cfg.optim.lr == 2e-3 and cfg.train.output_dir == str(tmp_path / "out")  # both reached the config
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", interrupted)
    assert main(["train", str(cfg), "--output-dir", str(tmp_path / "out"), "optim.lr=2e-3"]) == 130
    err = capsys.readouterr().err
    expected = shlex.join(["stts", "train", str(cfg), "optim.lr=2e-3", f"train.output_dir={tmp_path / 'out'}",
                           "train.resume=auto"])
    assert expected in err and "no " + str(tmp_path / "out" / "last.pt") in err
    with pytest.raises(SystemExit):  # anything else after the options is still an argparse error
        main(["train", str(cfg), "--output-dir", str(tmp_path / "out"), "stray"])


def test_an_empty_override_is_the_empty_string(synth, tmp_path):
    cfg = load(run_config(synth, tmp_path / "run"), ["data.classes_file=", "train.resume="])
    assert cfg.data.classes_file == "" and cfg.train.resume == ""
    assert load(run_config(synth, tmp_path / "run")).data.classes_file == synth["classes_file"]


def test_synth_help_states_the_size_rule(capsys):
    from stts.cli import main

    with pytest.raises(SystemExit) as info:
        main(["data", "synth", "--help"])
    assert info.value.code == 0 and "a multiple of 4" in capsys.readouterr().out
