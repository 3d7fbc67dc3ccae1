"""No code runs from a checkpoint (issue 11): a pickle whose unpickling would create a marker file is
driven through every entry point that reads checkpoints; each refuses it with an error naming the file
and the opt-in, and the marker never appears. The opt-in itself is shown to run the payload, so the
test file really is malicious. Also: stts's own checkpoints load weights-only, the PySlowFast config
is read by a safe YAML loader, and orphan temporary files of a killed save are cleaned up."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import pytest
import torch

import stts
from stts.checkpoint import CheckpointError, load_pretrained, read_checkpoint, save_model
from stts.engine.checkpoint import export_safetensors, find_resume, load_finetune, load_training_state
from test_engine_helpers import NUM_CLASSES, TINY_MVIT, TINY_PLAN, run_config, synth, write_config  # noqa: F401


class _Payload:
    """Unpickling this object runs `exec`, which creates the marker file: code from a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def _tiny(num_classes=NUM_CLASSES):
    return stts.create_model("mvit_b_16x4", selection=TINY_PLAN, num_classes=num_classes, num_frames=8,
                             img_size=32, **TINY_MVIT)


@pytest.fixture
def planted(tmp_path):
    """(malicious .pt that is otherwise a valid stts training checkpoint, marker path)."""
    marker = tmp_path / "MARKER"
    model = _tiny()
    from stts.checkpoint import model_config

    ckpt = {"stts": model_config(model), "model": model.state_dict(), "optimizer": {}, "step": 0, "epoch": 0,
            "epoch_step": 0, "rng": [], "extra": _Payload(marker)}
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    return path, marker


def _refused(err: str, path: Path) -> None:
    assert str(path) in err and "--trust-checkpoint" in err and "exec" in err, err


def test_the_payload_is_live_when_trusted(planted):
    path, marker = planted
    read_checkpoint(path, trust_checkpoint=True)  # the explicit opt-in unpickles in full
    assert marker.exists()


def test_library_entry_points_refuse_the_pickle(planted, tmp_path):
    path, marker = planted
    calls = {
        "read_checkpoint": lambda: read_checkpoint(path),
        "load_model": lambda: stts.load_model(path),
        "create_model(pretrained=)": lambda: stts.create_model("mvit_b_16x4", pretrained=str(path), num_frames=8,
                                                               img_size=32, num_classes=NUM_CLASSES, **TINY_MVIT),
        "load_pretrained": lambda: load_pretrained(_tiny(), path),
        "load_finetune": lambda: load_finetune(_tiny(), path),
        "load_training_state": lambda: load_training_state(path, _tiny()),
        "export_safetensors": lambda: export_safetensors(path, tmp_path / "out.safetensors"),
    }
    for name, call in calls.items():
        with pytest.raises(CheckpointError) as info:
            call()
        _refused(str(info.value), path)
        assert not marker.exists(), name
    # A plain pickle (not torch.save's zip layout) is refused too.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": {}, "x": _Payload(marker)}, protocol=2))
    with pytest.raises(CheckpointError) as info:
        stts.load_model(raw)
    _refused(str(info.value), raw)
    assert not marker.exists()


def test_every_command_refuses_the_pickle(planted, synth, tmp_path, capsys):
    from stts.cli import main

    path, marker = planted
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "run.yaml", run_config(synth, out))
    planted_last = tmp_path / "planted_run"
    planted_last.mkdir()
    (planted_last / "last.pt").write_bytes(path.read_bytes())  # train.resume=auto finds this
    commands = {
        "eval --checkpoint": ["eval", "--checkpoint", str(path)],
        "eval CONFIG --checkpoint": ["eval", str(cfg), "--checkpoint", str(path)],
        "export": ["export", str(path), str(tmp_path / "o.safetensors")],
        "visualize": ["visualize", "--checkpoint", str(path), str(tmp_path / "clip.mp4"), "--out", str(tmp_path)],
        "train --finetune": ["train", str(cfg), "--finetune", str(path)],
        "train model.finetune=": ["train", str(cfg), f"model.finetune={path}"],
        "train --resume": ["train", str(cfg), "--resume", str(path)],
        "train train.resume=auto": ["train", str(cfg), f"train.output_dir={planted_last}", "train.resume=auto"],
    }
    for name, argv in commands.items():
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        where = planted_last / "last.pt" if name.endswith("auto") else path
        _refused(err, where)
        assert "Traceback" not in err and not marker.exists(), name


def test_stts_checkpoints_load_weights_only(tmp_path):
    from stts.engine.checkpoint import rng_state, save_training_state, set_rng_state
    from stts.engine.selection_stats import SelectionStats

    model = _tiny().train()
    _, sel = model(torch.randn(2, 3, 8, 32, 32), return_selections=True)
    stats = SelectionStats()
    stats.update(sel)
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.AdamW(model.parameters())
    save_training_state(tmp_path / "last.pt", model, optimizer=opt, step=1, rng=[rng_state(g)],
                        selections=stats.state())
    save_model(model, tmp_path / "model.pt")
    for name in ("last.pt", "model.pt"):
        torch.load(tmp_path / name, weights_only=True)  # raises if anything needs unpickling of code
    # The RNG state round-trips: numpy's as a plain list.
    import numpy as np

    state = torch.load(tmp_path / "last.pt", weights_only=True)["rng"][0]
    expected = np.random.random(3)
    set_rng_state(state, g)
    assert isinstance(state["numpy"], list) and np.array_equal(np.random.random(3), expected)
    assert SelectionStats(torch.load(tmp_path / "last.pt", weights_only=True)["selections"]).summary() == \
        stats.summary()


def test_pyslowfast_config_is_read_by_a_safe_yaml_loader(tmp_path):
    from stts.models.pyslowfast import official_cfg

    # yacs writes tuples with the python/tuple tag: accepted, as a tuple
    assert official_cfg({"cfg": "MVIT:\n  PATCH_KERNEL: !!python/tuple [3, 7, 7]\nN: 1\n"}) == \
        {"MVIT": {"PATCH_KERNEL": (3, 7, 7)}, "N": 1}
    # any other Python tag is refused (yaml's FullLoader would resolve this one to the function os.system)
    bad = "MODEL:\n  ARCH: mvit\n  NAME: !!python/name:os.system\n"
    with pytest.raises(ValueError, match="not YAML a safe loader reads"):
        official_cfg({"cfg": bad})
    path = tmp_path / "official.pyth"
    torch.save({"model_state": {"w": torch.zeros(1)}, "cfg": bad}, path)
    with pytest.raises(CheckpointError, match=f"{path}: the PySlowFast config"):
        stts.load_model(path)


def test_orphan_temporary_files_are_removed_at_the_next_save_or_resume(tmp_path):
    from stts.checkpoint import atomic_save

    orphan = tmp_path / ".last.pt.k1ll3d.tmp"
    orphan.write_bytes(b"half a checkpoint")
    other = tmp_path / ".best.pt.x.tmp"
    other.write_bytes(b"another file's")
    assert find_resume("auto", tmp_path) is None and not orphan.exists()  # resume looks, cleans up
    orphan.write_bytes(b"half a checkpoint")
    atomic_save({"a": 1}, tmp_path / "last.pt")
    assert not orphan.exists() and other.exists()  # only the orphans of the file being saved
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"a": 1}
    sft = tmp_path / ".m.safetensors.tmp"
    sft.write_bytes(b"x")
    save_model(_tiny(), tmp_path / "m.safetensors")
    assert not sft.exists()
