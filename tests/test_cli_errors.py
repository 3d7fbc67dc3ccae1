"""A user's mistake ends in one `error:` line naming the file, key or value, exit status 2, never a
traceback (issue 11). Each case runs through `stts.cli.main` (an exception escaping it fails the test:
that would be a traceback); one runs as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stts
from test_engine_helpers import NUM_CLASSES, TINY_MVIT, TINY_PLAN, run_config, synth, write_config  # noqa: F401

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def files(synth, tmp_path_factory) -> dict:
    """Every file a case needs, by name (used as {name} in the argv templates)."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("cli")

    def tiny(num_classes=NUM_CLASSES):
        return stts.create_model("mvit_b_16x4", selection=TINY_PLAN, num_classes=num_classes, num_frames=8,
                                 img_size=32, **TINY_MVIT)

    stts.save_model(tiny(), d / "model.pt")
    stts.save_model(tiny(), d / "model.safetensors")
    stts.save_model(tiny(num_classes=5), d / "five.pt")
    blob = (d / "model.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    save_file({"w": torch.zeros(2)}, str(d / "badmeta.safetensors"), metadata={"stts": "{not json"})
    (d / "dup_classes.txt").write_text("red\ngreen\nred\n")
    (d / "empty.csv").write_text("# nothing here\n\n")
    (d / "mixed.csv").write_text("train/a.mp4 red\ntrain/b.mp4 2\n")
    return {"cfg": str(write_config(d / "run.yaml", run_config(synth, d / "run"))), "d": str(d),
            **{p.stem.replace(".", "_") + "_" + p.suffix[1:]: str(p) for p in d.iterdir()}}


CASES = [
    # (id, argv template, substrings the error must contain)
    ("train missing classes file", ["train", "{cfg}", "data.classes_file=/nope/classes.txt"], ["/nope/classes.txt"]),
    ("train missing annotations", ["train", "{cfg}", "data.train_annotations=/nope/train.csv"], ["/nope/train.csv"]),
    ("train duplicate classes", ["train", "{cfg}", "data.classes_file={dup_classes_txt}"],
     ["dup_classes.txt", "duplicate class names", "'red' (entries 1 and 3)"]),
    ("train empty train_annotations", ["train", "{cfg}", "data.train_annotations="], ["data.train_annotations"]),
    ("train ssv2 without labels_file", ["train", "{cfg}", "data.format=ssv2"], ["data.labels_file"]),
    ("train mixed labels", ["train", "{cfg}", "data.train_annotations={mixed_csv}", "data.classes_file="],
     ["mixed.csv", "line 1: 'red'", "line 2: '2'"]),
    ("train unknown key", ["train", "{cfg}", "optim.lrr=1"], ["optim.lrr"]),
    ("eval save_model file without data", ["eval", "--checkpoint", "{model_pt}"], ["model.pt", "data.val_annotations"]),
    ("eval class-count mismatch", ["eval", "{cfg}", "--checkpoint", "{five_pt}"],
     ["five.pt", "predicts 5 classes", "has 3"]),
    ("eval truncated safetensors", ["eval", "--checkpoint", "{truncated_safetensors}"], ["truncated.safetensors"]),
    ("eval bad stts metadata", ["eval", "--checkpoint", "{badmeta_safetensors}"], ["badmeta.safetensors", "metadata"]),
    ("eval missing checkpoint", ["eval", "--checkpoint", "/nope/best.pt"], ["/nope/best.pt"]),
    ("eval nothing to evaluate", ["eval"], ["CONFIG.yaml or --checkpoint"]),
    ("export truncated", ["export", "{truncated_safetensors}", "{d}/o.safetensors"], ["truncated.safetensors"]),
    ("export output suffix", ["export", "{model_pt}", "{d}/o.pt"], ["o.pt", ".safetensors"]),
    ("visualize missing --classes", ["visualize", "--checkpoint", "{model_safetensors}", "{d}/v.mp4", "--classes",
                                     "/nope/names.txt"], ["/nope/names.txt"]),
    ("visualize --device bogus", ["visualize", "--checkpoint", "{model_safetensors}", "{d}/v.mp4", "--device",
                                  "bogus"], ["--device 'bogus'"]),
    ("visualize --frames 0", ["visualize", "--checkpoint", "{model_safetensors}", "{d}/v.mp4", "--frames", "0"],
     ["--frames 0"]),
    ("bench --device bogus", ["bench", "mvit_b_16x4", "--device", "bogus"], ["--device 'bogus'"]),
    ("bench unknown model", ["bench", "mvit_b_16x5"], ["mvit_b_16x5"]),
    ("flops --batch-size 0", ["flops", "mvit_b_16x4", "--batch-size", "0"], ["--batch-size 0"]),
    ("flops --frames 0", ["flops", "mvit_b_16x4", "--frames", "0"], ["--frames 0"]),
    ("flops --size 3", ["flops", "mvit_b_16x4", "--size", "3"], ["--size 3", "multiple of 4"]),
    ("flops plan does not fit", ["flops", "mvit_b_16x4_stts_t0.5_s0.7", "--size", "16"], ["S4_0.7367"]),
    ("flops --kwargs not JSON", ["flops", "mvit_b_16x4", "--kwargs", "depth=2"], ["--kwargs 'depth=2'"]),
    # Elastic plans and budgets (issue 13): a bad range, a plan of other selection points, no plan under a cost.
    ("train bad range", ["train", "{cfg}", "model.selection=T0_0.8:0.2-S1_0.6"],
     ["model.selection", "'T0_0.8:0.2-S1_0.6'", "lo:hi needs lo <= hi"]),
    ("flops bad range", ["flops", "mvit_b_16x4", "--selection", "T0_0.5-S4_0.9:0.6"], ["S4_0.9:0.6", "lo <= hi"]),
    ("flops other points of a published model", ["flops", "mvit_b_16x4_stts_t0.5_s0.7", "--selection", "T0_0.5"],
     ["selection T0_0.5", "already selects tokens at T0-S4"]),
    ("flops --gflops under every plan", ["flops", "mvit_b_16x4_stts_t0.5_s0.7", "--gflops", "1"],
     ["--gflops 1", "no plan of T0-S4", "the cheapest, T0_k1-S4_a1, costs"]),
    ("flops --gflops of a dense model", ["flops", "mvit_b_16x4", "--gflops", "5"], ["--gflops 5", "no selection points"]),
    ("eval --plans other points", ["eval", "{cfg}", "--checkpoint", "{model_pt}", "--plans", "T0_0.5-S1_0.6,T0_0.5"],
     ["--plans", "'T0_0.5'", "selection points T0-S1"]),
    ("eval --plans range", ["eval", "{cfg}", "--checkpoint", "{model_pt}", "--plans", "T0_0.25:0.75-S1_0.6"],
     ["--plans", "a range", "T0_0.25-S1_0.6,T0_0.5-S1_0.6,T0_0.75-S1_0.6"]),
    ("eval --plans bad range", ["eval", "{cfg}", "--checkpoint", "{model_pt}", "--plans", "T0_0.8:0.2-S1_0.6"],
     ["--plans", "lo <= hi"]),
    ("eval model.selection bad range", ["eval", "{cfg}", "--checkpoint", "{model_pt}", "model.selection=T0_k3:1-S1_0.6"],
     ["model.selection", "k3:1"]),
    ("eval --gflops under every plan", ["eval", "{cfg}", "--checkpoint", "{model_pt}", "--gflops", "0.000001"],
     ["--gflops 1e-06", "the cheapest, T0_k1-S1_a1"]),
    ("visualize --selection other points", ["visualize", "--checkpoint", "{model_safetensors}", "{d}/v.mp4",
                                            "--selection", "T0_0.5"], ["--selection T0_0.5", "selection points T0-S1"]),
    ("synth --size 33", ["data", "synth", "{d}/s", "--size", "33"], ["size=33", "multiple of 4"]),
    ("synth --classes 19", ["data", "synth", "{d}/s", "--classes", "19"], ["19"]),
    ("synth --codec nope", ["data", "synth", "{d}/s", "--codec", "nope"], ["'nope'"]),
    ("data check empty annotations", ["data", "check", "{d}", "{empty_csv}"], ["empty.csv", "no entries"]),
    ("data check missing annotations", ["data", "check", "{d}", "/nope/val.csv"], ["/nope/val.csv"]),
    ("data check --num-frames 0", ["data", "check", "{d}", "{mixed_csv}", "--num-frames", "0"], ["--num-frames 0"]),
]
CUDA_CASES = [
    ("train train.device=cuda", ["train", "{cfg}", "train.device=cuda"], ["train.device='cuda'", "CUDA"]),
    ("visualize --device cuda", ["visualize", "--checkpoint", "{model_safetensors}", "{d}/v.mp4", "--device", "cuda"],
     ["--device cuda", "CUDA"]),
    ("bench --device cuda", ["bench", "mvit_b_16x4", "--device", "cuda"], ["--device cuda", "CUDA"]),
]


def _check(files, argv, expected, capsys):
    from stts.cli import main

    rc = main([a.format(**files) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    for text in expected:
        assert text.format(**files) in err, (text, err)
    assert "Traceback" not in out + err


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_user_mistakes_are_one_error_line(files, case, argv, expected, capsys):
    _check(files, argv, expected, capsys)


@NO_CUDA
@pytest.mark.parametrize("case, argv, expected", CUDA_CASES, ids=[c[0] for c in CUDA_CASES])
def test_cuda_without_cuda_is_one_error_line(files, case, argv, expected, capsys):
    _check(files, argv, expected, capsys)


def test_the_real_command_line_prints_no_traceback():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "stts", "flops", "mvit_b_16x4", "--frames", "0"], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr == "error: --frames 0: must be >= 1\n", proc.stderr


def test_bad_metadata_keeps_the_library_error_types(files):
    """Library callers still get the built-in bases they caught before (ValueError, RuntimeError)."""
    from stts.errors import CheckpointError, ConfigError, DataError, UserError

    with pytest.raises(RuntimeError):
        stts.load_model(files["badmeta_safetensors"])
    assert issubclass(CheckpointError, UserError) and issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        from stts.data import read_classes

        read_classes(files["dup_classes_txt"])
    assert issubclass(DataError, UserError)
