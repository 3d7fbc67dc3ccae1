"""stts.data.synth and the `stts data` CLI: files decode back, the event is where meta.json says,
colours and shapes survive compression, blind selection misses the event; check lists bad entries."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from _data_helpers import index_frames, truncate, write_video

from stts.cli import main
from stts.data import DataConfig, build_dataset
from stts.data.decode import decode_all
from stts.data.synth import COLOURS, class_names, make_synthetic_dataset, render_clip


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = make_synthetic_dataset(tmp_path_factory.mktemp("synth"), clips_per_class=2, val_clips_per_class=1, seed=0)
    return out, json.loads(Path(out["meta"]).read_text())


def saturation(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(-1) - rgb.min(-1)


def event_patch(frames, top, left):
    """(T, H, W, 3) -> (T, 4, 3, 3): a patch that every shape covers (left of the box centre)."""
    return frames[:, top + 6 : top + 10, left + 1 : left + 4]


def test_layout_csvs_and_meta_agree(synth):
    out, meta = synth
    assert Path(out["classes_file"]).read_text().split() == class_names(6) == meta["classes"]
    train = [l.split() for l in Path(out["train_annotations"]).read_text().splitlines()]
    val = [l.split() for l in Path(out["val_annotations"]).read_text().splitlines()]
    assert len(train) == 12 and len(val) == 6
    for rel, label in train + val:
        clip = meta["clips"][rel]
        assert clip["label"] == int(label) and rel.split("/")[1] == clip["class"]
        f = clip["event_frames"]
        assert f == [f[0], f[0] + 1] and f[0] % 2 == 0 and clip["event_token"] == f[0] // 2
        top, left, h, w = clip["event_box"]
        assert (h, w) == (16, 16) and 0 <= top <= 48 and 0 <= left <= 48


def test_event_visible_only_in_its_frames_and_colour_survives(synth):
    out, meta = synth
    for rel, clip in meta["clips"].items():
        frames, info = decode_all(Path(out["root"]) / rel)
        assert frames.shape == (16, 64, 64, 3) and info.fps == pytest.approx(30)
        top, left, h, w = clip["event_box"]
        inner = event_patch(frames.float(), top, left).mean((1, 2)).numpy()  # (T, 3)
        sat = saturation(inner)
        event = clip["event_frames"]
        assert sat[event].min() > 120, (rel, sat)
        assert np.delete(sat, event).max() < 70, (rel, sat)
        colour = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - inner[event[0]]).sum())
        assert colour == clip["class"].split("_")[0]


def test_shape_survives_compression(tmp_path):
    # Classes 0-5 differ by colour (all squares); 6-11 are the same colours as rings.
    out = make_synthetic_dataset(tmp_path, num_classes=12, clips_per_class=1, val_clips_per_class=0, seed=1)
    meta = json.loads(Path(out["meta"]).read_text())
    centre = {"square": [], "ring": []}
    for rel, clip in meta["clips"].items():
        frames, _ = decode_all(Path(out["root"]) / rel)
        top, left, _, _ = clip["event_box"]
        f = frames[clip["event_frames"][0]].float().numpy()
        # a square fills its box; a ring leaves the centre (8 px across) to the background
        centre[clip["class"].split("_")[1]].append(saturation(f[top + 6 : top + 10, left + 6 : left + 10]).mean())
    assert min(centre["square"]) > 120 and max(centre["ring"]) < 70


def test_dataset_from_suggested_config_shows_the_event_at_meta_frames(synth):
    out, meta = synth
    ds = build_dataset(DataConfig(**out["data_config"]), "val")
    assert ds.num_classes == 6 and len(ds) == 6
    mean, std = torch.tensor(ds.transform.mean), torch.tensor(ds.transform.std)
    for i in range(len(ds)):
        item = ds[i]
        video = item["video"] * std.view(3, 1, 1, 1) + mean.view(3, 1, 1, 1)  # (C, T, H, W) in [0, 1]
        clip = meta["clips"][str(Path(ds.samples[i][0]).relative_to(out["root"]))]
        top, left, _, _ = clip["event_box"]
        patch = event_patch(video.permute(1, 2, 3, 0), top, left).mean((1, 2)).numpy()  # (T, 3)
        assert int(np.argmax(saturation(patch))) in clip["event_frames"]


def test_deterministic_for_a_seed(tmp_path, synth):
    out, meta = synth
    again = make_synthetic_dataset(tmp_path / "a", num_classes=2, clips_per_class=1, val_clips_per_class=0, seed=0)
    other = make_synthetic_dataset(tmp_path / "b", num_classes=2, clips_per_class=1, val_clips_per_class=0, seed=1)
    rel = "train/red_square/0000.mp4"
    meta_again = json.loads(Path(again["meta"]).read_text())
    assert meta_again["clips"][rel] == meta["clips"][rel]  # fewer classes/clips: same clip 0
    a, _ = decode_all(Path(again["root"]) / rel)
    b, _ = decode_all(Path(out["root"]) / rel)
    c, _ = decode_all(Path(other["root"]) / rel)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_blind_selection_usually_misses_the_event():
    # Uniform temporal selection (4 of 8 tokens, evenly spaced) and the centre anchor of about half the
    # area (11 x 11 of 16 x 16 tokens of 4 px: pixels 8..52) see the whole event in few clips.
    hits, n = 0, 300
    for i in range(n):
        _, m = render_clip(np.random.default_rng([0, 2, i]), i % 6)
        top, left, h, w = m["event_box"]
        in_time = m["event_frames"][0] // 2 in (0, 2, 4, 6)
        in_space = 8 <= top and top + h <= 52 and 8 <= left and left + w <= 52
        hits += in_time and in_space
    assert hits / n < 0.3


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_synth_then_check(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["data", "synth", str(out), "--classes", "2", "--clips-per-class", "1", "--val-clips-per-class", "1"]) == 0
    assert (out / "train.csv").is_file() and (out / "meta.json").is_file()
    assert len(list(out.rglob("*.mp4"))) == 4
    assert main(["data", "check", str(out), str(out / "train.csv"), "--no-progress"]) == 0
    capsys.readouterr()

    # break it: a garbage file, a missing file, a malformed line, an unknown label, a truncated mkv
    (out / "train" / "red_square" / "0000.mp4").write_bytes(b"\x00" * 1000)
    write_video(out / "cut.mkv", index_frames(60), codec="ffv1")
    truncate(out / "cut.mkv", 0.5)
    with open(out / "train.csv", "a") as f:
        f.write("gone.mp4 0\njustonefield\nx.mp4 5\ncut.mkv 1\n")
    code = main(["data", "check", str(out), str(out / "train.csv"), "--classes-file", str(out / "classes.txt"), "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 1
    bad = [l.split("\t") for l in stdout.splitlines() if l.startswith("BAD")]
    assert {b[1] for b in bad} == {
        str(out / "train" / "red_square" / "0000.mp4"), str(out / "gone.mp4"),
        f"{out / 'train.csv'}:4", f"{out / 'train.csv'}:5",
    }
    reasons = {b[1]: b[2] for b in bad}
    assert "missing file" in reasons[str(out / "gone.mp4")] and "out of range" in reasons[f"{out / 'train.csv'}:5"]
    assert any(l.startswith("WARN") and "cut.mkv" in l for l in stdout.splitlines())
