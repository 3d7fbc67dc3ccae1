"""`stts list-models` and `stts demo`: each command-line argument reaches what it names.

list-models is checked against PAPER.md's zoo table; the demo's flags against the DemoSettings fields
they name, captured where the command hands them to `run_demo` (the demo itself does not run).
"""

import dataclasses

import pytest

from stts.cli import build_parser, main

# PAPER.md: published plans (the official configs' exact ratios), top-1, README and official-code GFLOPs.
PAPER_MVIT = {
    "mvit_b_16x4": (None, 78.4, 70.5, 70.80),
    "mvit_b_16x4_stts_t0.9_s0.9": ("T0_0.875-S4_0.863", 78.1, 56.4, 56.39),
    "mvit_b_16x4_stts_t0.8_s0.9": ("T0_0.75-S4_0.863", 77.9, 47.2, 47.21),
    "mvit_b_16x4_stts_t0.6_s0.9": ("T0_0.625-S4_0.863", 77.5, 38.1, 38.46),
    "mvit_b_16x4_stts_t0.5_s0.7": ("T0_0.5-S4_0.7367", 76.6, 23.3, 26.95),
    "mvit_b_16x4_stts_t0.4_s0.6": ("T0_0.375-S4_0.6174", 75.6, 12.1, 18.46),
}


def _lines(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_list_models_pattern(capsys):
    """The pattern selects names shell-style; a model with its own plan shows it in parentheses."""
    assert main(["list-models", "mvit_b_16x4_stts*"]) == 0
    listed = {}
    for line in _lines(capsys):
        name, _, rest = line.partition(" ")
        listed[name] = rest.strip().strip("()")
    assert listed == {n: plan for n, (plan, *_) in PAPER_MVIT.items() if plan}
    assert main(["list-models", "swin3d_?"]) == 0
    assert [line.split()[0] for line in _lines(capsys)] == ["swin3d_b", "swin3d_s", "swin3d_t"]
    assert main(["list-models", "no_such_model*"]) == 1  # nothing matches: says so, status 1
    capsys.readouterr()
    assert main(["list-models"]) == 0  # default: every name, the published ones among them
    everything = {line.split()[0] for line in _lines(capsys)}
    assert set(PAPER_MVIT) | {"mvit_tiny", "swin3d_t", "vit_b_16x16"} <= everything


def test_list_models_zoo_table(capsys):
    """--zoo: only the published models, with PAPER.md's top-1, README and official-code GFLOPs."""
    assert main(["list-models", "mvit*", "--zoo"]) == 0
    rows = {}
    for line in _lines(capsys)[1:]:  # after the header
        name, plan, frames, top1, readme, official = line.split()
        rows[name] = (None if plan == "dense" else plan, float(top1), float(readme), float(official))
    assert set(rows) == set(PAPER_MVIT)  # mvit_b_32x3 and mvit_tiny have no zoo row
    for name, (plan, top1, readme, official) in PAPER_MVIT.items():
        assert rows[name][:3] == (plan, top1, readme), name
        assert rows[name][3] == pytest.approx(official, abs=0.005), name


# ---- stts demo -------------------------------------------------------------------------------------

# flag -> (DemoSettings field, command-line value, the value the field must get); none is the default.
DEMO_FLAGS = {
    "--out": ("out_dir", "elsewhere", "elsewhere"),
    "--seed": ("seed", "7", 7),
    "--classes": ("num_classes", "4", 4),
    "--clips-per-class": ("clips_per_class", "9", 9),
    "--val-clips-per-class": ("val_clips_per_class", "5", 5),
    "--size": ("size", "48", 48),
    "--event-size": ("event_size", "12", 12),
    "--event-frames": ("event_frames", "4", 4),
    "--distractors": ("num_distractors", "1", 1),
    "--plan": ("plan", "T0_0.375-S1_0.5", "T0_0.375-S1_0.5"),
    "--elastic-plan": ("elastic_plan", "T0_k3:8-S1_a5:8", "T0_k3:8-S1_a5:8"),
    "--budgets": ("budgets", "0.2,0.9", (0.2, 0.9)),
    "--policies": ("free_policies", "change", ("change",)),
    "--dense-epochs": ("dense_epochs", "3", 3),
    "--finetune-epochs": ("finetune_epochs", "14", 14),
    "--scorer-warmup-epochs": ("scorer_warmup_epochs", "2", 2),
    "--baselines": ("baselines", "random", ("random",)),
    "--equal-epoch-dense": ("equal_epoch_dense", None, True),
    "--lr": ("lr", "0.005", 0.005),
    "--finetune-lr": ("finetune_lr", "0.004", 0.004),
    "--backbone-lr-mult": ("backbone_lr_mult", "0.3", 0.3),
    "--distill-weight": ("distill_weight", "0.25", 0.25),
    "--distill-temperature": ("distill_temperature", "2.0", 2.0),
    "--sigma": ("sigma", "0.05", 0.05),
    "--jacobian": ("jacobian", "full", "full"),
    "--variance-reduction": ("variance_reduction", "antithetic", "antithetic"),
    "--batch-size": ("batch_size", "6", 6),
    "--threads": ("threads", "2", 2),
    "--no-progress": ("progress", None, False),
}


@pytest.fixture
def demo_settings(monkeypatch):
    """Runs `stts demo ARGS` up to the call of run_demo; returns the DemoSettings it was given (or None)."""
    import stts.demo

    def run(args):
        got = []
        monkeypatch.setattr(stts.demo, "run_demo", lambda s: got.append(s))
        try:
            code = main(["demo", *args])
        except SystemExit as e:  # a bad combination of flags
            code = e.code
        return code, (got[0] if got else None)

    return run


def _fields(settings) -> dict:
    return {k: v for k, v in dataclasses.asdict(settings).items() if k != "stages"}


def test_demo_flags_cover_the_parser():
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    flags = {s for action in sub.choices["demo"]._actions for s in action.option_strings if s.startswith("--")}
    # --hard picks another set of defaults (tests/test_demo_hard.py); --no-equal-epoch-dense is the off switch
    assert flags - {"--help", "--quick", "--hard", "--no-equal-epoch-dense"} == set(DEMO_FLAGS)


def test_demo_defaults_are_the_settings_defaults(demo_settings):
    from stts.demo import DemoSettings

    code, s = demo_settings([])
    assert code == 0 and _fields(s) == _fields(DemoSettings())


def test_demo_each_flag_reaches_its_setting(demo_settings):
    """All flags at once, each with a value no other field has by default: every field gets its own."""
    from stts.demo import DemoSettings

    defaults = _fields(DemoSettings())
    args, expected = [], dict(defaults)
    for flag, (field, value, want) in DEMO_FLAGS.items():
        assert defaults[field] != want, flag  # otherwise the check could not tell
        args += [flag] if value is None else [flag, value]
        expected[field] = want
    code, s = demo_settings(args)
    assert code == 0
    assert _fields(s) == expected
    for flag, (field, value, want) in DEMO_FLAGS.items():  # and one at a time: nothing else moves
        code, s = demo_settings([flag] if value is None else [flag, value])
        assert code == 0 and _fields(s) == {**defaults, field: want}, flag


def test_demo_quick_and_bad_warmup(demo_settings):
    code, s = demo_settings(["--quick", "--seed", "3"])
    assert code == 0 and s.seed == 3
    assert (s.clips_per_class, s.dense_epochs) == (4, 1)  # --help: "4 clips per class, 1 epoch each"
    assert 0 < s.scorer_warmup_epochs < s.finetune_epochs  # a scorer-only epoch, then a joint one
    assert demo_settings(["--baselines", ""])[1].baselines == ()
    assert demo_settings(["--policies", ""])[1].free_policies == ()
    code, s = demo_settings(["--finetune-epochs", "2", "--scorer-warmup-epochs", "3"])
    assert code not in (0, None) and s is None  # refused before anything runs
