"""stts.vis: selections -> per-frame facts (hand-computed oracles), figures read back, `stts visualize`."""

import sys

import numpy as np
import pytest
import torch

from stts.selectors import Selection
from stts.vis import FrameSelection, kept_regions

# A random-weight STTS MViT on 16-frame 32x32 clips: 8 temporal tokens, an 8x8 map before block 1.
TINY_MVIT = dict(img_size=32, num_frames=16, embed_dim=16, depth=2, num_heads=1, num_classes=3,
                 dim_mul=((1, 2.0),), head_mul=((1, 2.0),), pool_q_stride=((1, 1, 2, 2),),
                 pool_kv_stride_adaptive=(1, 2, 2), selection="T0_0.5-S1_0.3")



def T(thw, indices, scores=None):
    """A temporal Selection for batch 1 (or B when indices is nested)."""
    idx = torch.tensor(indices if isinstance(indices[0], list) else [indices])
    sc = torch.tensor(scores if scores is not None else [[0.0] * thw[0]] * idx.shape[0], dtype=torch.float32)
    return Selection("temporal", thw, idx, sc.view(idx.shape[0], thw[0]))


def S(thw, boxes):
    """An anchor Selection for batch 1 from boxes [(top, left, h, w)] * T_in in tokens."""
    b = torch.tensor([boxes])
    return Selection("anchor", thw, torch.zeros(b.shape[:2], dtype=torch.long), torch.zeros(b.shape[:2]), b)


def K(thw, indices):
    idx = torch.tensor([indices])
    return Selection("token", thw, idx, torch.zeros(1, thw[0] * thw[1] * thw[2]))


def facts(regions):
    """(kept, box) per frame; boxes as plain tuples."""
    return [(r.kept, None if r.box is None else tuple(r.box)) for r in regions]


# --- kept_regions: hand-computed cases ---------------------------------------------------------


def test_mvit_b_temporal_then_anchor():
    # MViT-B 16x4 at 224: T0 sees 8 temporal tokens (2 frames each) and keeps 4; S4 runs on the
    # pooled 14x14 map (16 px per token) of the 4 kept tokens with a 12x12 anchor.
    scores = [[0.1, 0.9, 0.0, 0.8, 0.7, 0.2, 1.0, 0.3]]
    sels = {"T0": T((8, 56, 56), [1, 3, 4, 6], scores),
            "S4": S((4, 14, 14), [(0, 0, 12, 12), (2, 1, 12, 12), (1, 2, 12, 12), (2, 2, 12, 12)])}
    got = kept_regions(sels, 0, 16, (224, 224))
    A, B, C, D = (0, 0, 192, 192), (32, 16, 192, 192), (16, 32, 192, 192), (32, 32, 192, 192)
    drop = (False, None)
    assert facts(got) == [drop, drop, (True, A), (True, A), drop, drop, (True, B), (True, B),
                          (True, C), (True, C), drop, drop, (True, D), (True, D), drop, drop]
    assert [r.score for r in got] == pytest.approx([s for s in scores[0] for _ in range(2)])
    assert all(r.token_mask is None for r in got)


def test_demo_geometry_and_sample_choice():
    # Demo MViT on 8-frame 32x32 clips: T=4 tokens of 2 frames, an 8x8 map (4 px per token), 4x4 anchor.
    sels = {"T0": T((4, 8, 8), [[0, 3], [1, 2]]),
            "S1": Selection("anchor", (2, 8, 8), torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2),
                            torch.tensor([[[4, 4, 4, 4], [0, 2, 4, 4]], [[2, 0, 4, 4], [4, 4, 4, 4]]]))}
    drop = (False, None)
    assert facts(kept_regions(sels, 0, 8, (32, 32))) == [
        (True, (16, 16, 16, 16)), (True, (16, 16, 16, 16)), drop, drop, drop, drop,
        (True, (0, 8, 16, 16)), (True, (0, 8, 16, 16))]
    assert facts(kept_regions(sels, 1, 8, (32, 32))) == [
        drop, drop, (True, (8, 0, 16, 16)), (True, (8, 0, 16, 16)),
        (True, (16, 16, 16, 16)), (True, (16, 16, 16, 16)), drop, drop]


def test_anchor_before_temporal_applies_to_all_frames_in_plan_order():
    # S0 (all 4 temporal tokens, 8x8 map of 32 px frames) then T2 on the 4x4 anchor maps.
    s0 = S((4, 8, 8), [(0, 0, 4, 4), (4, 4, 4, 4), (2, 4, 4, 4), (4, 0, 4, 4)])
    t2 = T((4, 4, 4), [0, 3])
    expected = [(True, (0, 0, 16, 16)), (True, (0, 0, 16, 16)),
                (False, (16, 16, 16, 16)), (False, (16, 16, 16, 16)),  # dropped after their anchor was chosen
                (False, (8, 16, 16, 16)), (False, (8, 16, 16, 16)),
                (True, (16, 0, 16, 16)), (True, (16, 0, 16, 16))]
    assert facts(kept_regions({"S0": s0, "T2": t2}, 0, 8, (32, 32))) == expected
    # The dict's order does not matter: names give the plan order (S0 before T2).
    assert facts(kept_regions({"T2": t2, "S0": s0}, 0, 8, (32, 32))) == expected


def test_anchor_alone_non_square_frames():
    # 4 frames, temporal stride 1, a 4x6 token map of 32x48 px frames (8 px per token).
    sels = {"S2": S((4, 4, 6), [(0, 0, 2, 2), (2, 4, 2, 2), (1, 1, 2, 2), (0, 3, 2, 2)])}
    got = kept_regions(sels, 0, 4, (32, 48))
    assert facts(got) == [(True, (0, 0, 16, 16)), (True, (16, 32, 16, 16)), (True, (8, 8, 16, 16)),
                          (True, (0, 24, 16, 16))]
    assert all(r.score is None for r in got)


def test_nested_anchors_compose_through_pooling():
    # S1 keeps a 6x6 window of an 8x8 map (32 px: 4 px/token); pooling halves it to 3x3, whose tokens
    # are then 8 px; S3 keeps 2x2 of that.
    sels = {"S1": S((2, 8, 8), [(2, 2, 6, 6), (0, 0, 6, 6)]), "S3": S((2, 3, 3), [(1, 0, 2, 2), (1, 1, 2, 2)])}
    assert facts(kept_regions(sels, 0, 2, (32, 32))) == [(True, (16, 8, 16, 16)), (True, (8, 8, 16, 16))]


def test_no_selections_keeps_everything():
    assert kept_regions({}, 0, 5, (10, 10)) == [FrameSelection(True, None, None, None)] * 5


def test_token_selection_masks():
    # ViT-like: 4 frames, tubelet 2 -> 2 temporal tokens; 2x2 tokens of 4 px on 8x8 frames.
    # Flat index = t*4 + r*2 + c: 0 -> (0,0,0), 3 -> (0,1,1), 5 -> (1,0,1).
    got = kept_regions({"K0": K((2, 2, 2), [0, 3, 5])}, 0, 4, (8, 8))
    a, b = [[True, False], [False, True]], [[False, True], [False, False]]
    assert [r.token_mask.tolist() for r in got] == [a, a, b, b]
    assert [r.kept for r in got] == [True] * 4 and all(r.box is None for r in got)
    # A second K indexes the 3 tokens the first kept: keep (0,1,1) and (1,0,1).
    got = kept_regions({"K0": K((2, 2, 2), [0, 3, 5]), "K4": K((1, 1, 3), [1, 2])}, 0, 4, (8, 8))
    assert [r.token_mask.tolist() for r in got] == [[[False, False], [False, True]]] * 2 + [b] * 2
    # ... or keep only tokens of the first frame group: frames 2, 3 lose every token -> dropped.
    got = kept_regions({"K0": K((2, 2, 2), [0, 3, 5]), "K4": K((1, 1, 3), [0, 1])}, 0, 4, (8, 8))
    assert [r.kept for r in got] == [True, True, False, False]
    assert got[2].token_mask.tolist() == [[False, False], [False, False]]


def test_temporal_then_token_selection():
    # 8 frames, T0 keeps tokens 1, 2 of 4; K1 on the kept 2x2x2 grid keeps flat index 4 = (1, 0, 0),
    # i.e. kept token 1 = original token 2 = frames 4, 5. Frames 2, 3 survive T0 but keep no token.
    got = kept_regions({"T0": T((4, 2, 2), [1, 2]), "K1": K((2, 2, 2), [4])}, 0, 8, (8, 8))
    assert [r.kept for r in got] == [False, False, False, False, True, True, False, False]
    assert got[4].token_mask.tolist() == [[True, False], [False, False]]
    assert got[0].token_mask is None  # dropped by T0: no grid left for it


def test_token_selection_inside_anchor():
    # S0 keeps a 2x2 window of a 4x4 map (16 px frames, 4 px/token); K1's 2x2 grid covers that window.
    sels = {"S0": S((1, 4, 4), [(2, 0, 2, 2)]), "K1": K((1, 2, 2), [1])}
    (r,) = kept_regions(sels, 0, 1, (16, 16))
    assert r.box == (8, 0, 8, 8) and r.token_mask.tolist() == [[False, True], [False, False]]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="temporal tokens"):  # more tokens than frames
        kept_regions({"T0": T((8, 4, 4), [0, 1])}, 0, 4, (16, 16))
    with pytest.raises(ValueError, match="no boxes"):
        kept_regions({"S0": Selection("anchor", (2, 4, 4), torch.zeros(1, 2), torch.zeros(1, 2))}, 0, 2, (8, 8))
    with pytest.raises(ValueError, match="out of range"):
        kept_regions({"T0": T((4, 4, 4), [1, 5])}, 0, 4, (16, 16))


def test_kept_regions_on_a_real_model():
    import stts

    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", **TINY_MVIT).eval()
    with torch.no_grad():
        _, sels = model(torch.randn(2, 3, 16, 32, 32), return_selections=True)
    for b in range(2):
        got = kept_regions(sels, b, 16, (32, 32))
        kept = [f for f, r in enumerate(got) if r.kept]
        # T0 keeps 4 of 8 tokens = 8 frames in pairs; S1 keeps a 4x4 (int(sqrt(64*0.3))) anchor of the
        # 8x8 map: 16 px boxes.
        assert kept == sorted(2 * t + i for t in sels["T0"].indices[b].tolist() for i in range(2))
        assert all(got[f].box[2:] == (16.0, 16.0) for f in kept)


# --- figures -----------------------------------------------------------------------------------


def _saturation(rgb):
    rgb = rgb[..., :3].astype(np.float64)
    mx, mn = rgb.max(-1), rgb.min(-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)


def _colour_frames(n, h=32, w=32):
    """Saturated frames: left half red, right half blue (nearly 1.0 saturation everywhere)."""
    f = np.zeros((n, h, w, 3), np.uint8)
    f[:, :, : w // 2, 0] = 230
    f[:, :, w // 2:, 2] = 230
    f[:, :, :, 1] = 20
    return f


def test_import_stts_does_not_load_matplotlib():
    import subprocess

    code = "import sys, stts, stts.vis; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("size", [32, 224])
def test_plot_selection_greys_dropped_frames(tmp_path, size):
    import matplotlib.image as mpimg

    from stts.vis import plot_selection

    frames = _colour_frames(4, size, size)
    regions = [FrameSelection(True, (0, 0, size / 2, size / 2), 0.9), FrameSelection(False, None, 0.1),
               FrameSelection(True, None, 0.7), FrameSelection(False, None, 0.0)]
    path = tmp_path / "sel.png"
    fig = plot_selection([(frames, regions, "true: a | pred: b")], path)
    img = mpimg.imread(path)  # (H, W, 3|4) floats
    assert img.shape[0] > 60 and img.shape[1] > 4 * 60  # big enough to read a 32 px frame
    panels = [ax for ax in fig.axes if ax.images]  # the frame panels, in order
    assert len(panels) == 4
    sat = []
    for ax in panels:
        x0, y0, x1, y1 = ax.get_window_extent().extents  # display px, origin bottom-left
        rows = slice(int(img.shape[0] - y1) + 6, int(img.shape[0] - y0) - 6)
        cols = slice(int(x0) + 6, int(x1) - 6)
        sat.append(_saturation(img[rows, cols]).mean())
    assert sat[0] > 0.7 and sat[2] > 0.7, sat  # kept: colour (the shaded outside of the box too)
    assert sat[1] < 0.05 and sat[3] < 0.05, sat  # dropped: grey


def test_plot_selection_token_overlay_and_rows(tmp_path):
    from stts.vis import plot_selection

    frames = _colour_frames(2, 16, 16)
    mask = np.array([[True, False], [False, True]])
    regions = [FrameSelection(True, None, None, mask), FrameSelection(False, None, None, None)]
    fig = plot_selection([(frames, regions, None), (frames, regions[::-1], "second")], tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
    assert len([ax for ax in fig.axes if ax.images]) == 4  # two rows of two, no score bars (no scores)
    assert len(fig.axes) == 4


def test_selection_animation_gif(tmp_path):
    from PIL import Image

    from stts.vis import save_selection_animation

    regions = [FrameSelection(True, (8, 8, 16, 16)), FrameSelection(False), FrameSelection(True)]
    path = save_selection_animation(_colour_frames(3), regions, tmp_path / "a.gif", label="pred: x")
    with Image.open(path) as im:
        assert im.n_frames == 3
        sat = []
        for i in range(3):
            im.seek(i)
            a = np.asarray(im.convert("RGB"))
            h, w = a.shape[:2]
            sat.append(_saturation(a[int(h * 0.4):int(h * 0.6), int(w * 0.3):int(w * 0.7)]).mean())
    assert sat[0] > 0.7 and sat[2] > 0.7 and sat[1] < 0.05, sat


def test_accuracy_vs_gflops(tmp_path):
    from stts.vis import plot_accuracy_vs_gflops

    rows = [dict(name="dense", gflops=70.5, top1=78.4, kind="dense"),
            dict(name="T0.5-S0.7", gflops=23.5, top1=77.1, kind="stts"),
            dict(name="T0.8-S0.9", gflops=50.1, top1=78.1, kind="stts"),
            dict(name="uniform", gflops=23.5, top1=70.0, kind="baseline")]
    fig = plot_accuracy_vs_gflops(rows, tmp_path / "accuracy_vs_gflops.png")
    assert (tmp_path / "accuracy_vs_gflops.png").stat().st_size > 0
    ax = fig.axes[0]
    assert {t.get_text() for t in ax.texts} == {r["name"] for r in rows}
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 78.4 for line in ax.lines)


def test_accuracy_plot_draws_a_curve_per_policy(tmp_path):
    """Rows with a "curve": one line per curve through its points in cost order, named in the legend;
    unnamed points carry no label; rows without one are drawn as before."""
    from stts.vis import plot_accuracy_vs_gflops

    rows = [dict(name="dense", gflops=0.067, top1=100.0, kind="dense"),
            dict(name="STTS fixed", gflops=0.025, top1=99.0, kind="stts"),
            dict(name="75%", gflops=0.051, top1=100.0, kind="stts", curve="elastic"),
            dict(name="28%", gflops=0.025, top1=98.0, kind="stts", curve="elastic"),
            dict(name="50%", gflops=0.034, top1=99.5, kind="stts", curve="elastic"),
            dict(name="", gflops=0.048, top1=90.0, kind="baseline", curve="change"),
            dict(name="", gflops=0.023, top1=60.0, kind="baseline", curve="change")]
    fig = plot_accuracy_vs_gflops(rows, tmp_path / "plot.png")
    ax = fig.axes[0]
    lines = {tuple(line.get_xdata()): tuple(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "-"}
    assert lines == {(0.025, 0.034, 0.051): (98.0, 99.5, 100.0), (0.023, 0.048): (60.0, 90.0)}
    assert {t.get_text() for t in ax.texts} == {"dense", "STTS fixed", "28%", "50%", "75%"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["stts", "dense", "elastic", "change"]


# --- stts visualize ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    pytest.importorskip("av")
    from _data_helpers import garbage, write_video

    d = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)  # 48x64: resize + centre crop happen
    return {"good": write_video(d / "clip.mp4", frames), "corrupt": garbage(d / "broken.mp4"),
            "missing": str(d / "gone.mp4")}


def test_visualize_cli(tmp_path, videos, capsys, monkeypatch):
    import stts
    from stts.cli import main

    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    stts.save_model(stts.create_model("mvit_b_16x4", **TINY_MVIT), ckpt)
    out = tmp_path / "vis"
    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: loads.append(str(f)) or real_load(f, *a, **kw))
    code = main(["visualize", "--checkpoint", str(ckpt), videos["good"], videos["corrupt"], videos["missing"],
                 "--out", str(out)])
    monkeypatch.undo()
    assert loads == [str(ckpt)]  # the checkpoint is read once (model, config, class names)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "clip.png").stat().st_size > 0 and (out / "clip.gif").stat().st_size > 0
    assert "predicted class " in captured.out and "8/16 frames kept" in captured.out
    assert "model input size" in captured.out  # no run config in a save_model checkpoint
    assert "broken.mp4" in captured.err and "gone.mp4" in captured.err and "missing file" in captured.err
    assert not (out / "broken.png").exists()

    # Nothing readable: exit 1.
    assert main(["visualize", "--checkpoint", str(ckpt), videos["corrupt"], "--out", str(out)]) == 1


def test_visualize_cli_run_config_classes_and_dense(tmp_path, videos, capsys):
    import stts
    from stts.cli import main

    torch.manual_seed(0)
    (tmp_path / "classes.txt").write_text("abseiling\nbowling\ncycling\n")
    data = dict(num_frames=8, sampling_rate=2, crop_size=32, test_short_side=40,
                classes_file=str(tmp_path / "classes.txt"))
    ckpt = tmp_path / "best.pt"
    stts.save_model(stts.create_model("mvit_b_16x4", **TINY_MVIT), ckpt, config={"data": data}, step=1)
    code = main(["visualize", "--checkpoint", str(ckpt), videos["good"], "--out", str(tmp_path / "v"), "--no-gif"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "8 frames (clip, rate 2), short side 40, crop 32 (checkpoint config)" in stdout
    assert any(f"predicted {c}" in stdout for c in ("abseiling", "bowling", "cycling"))
    assert "4/8 frames kept" in stdout  # T0_0.5 on 4 temporal tokens of 2 frames
    assert (tmp_path / "v" / "clip.png").is_file() and not (tmp_path / "v" / "clip.gif").exists()
    # Other amounts at its selection points (stts.set_plan), or the plan that fits a cost on these clips.
    code = main(["visualize", "--checkpoint", str(ckpt), videos["good"], "--out", str(tmp_path / "s"), "--no-gif",
                 "--selection", "T0_0.25-S1_0.3"])
    assert code == 0 and "2/8 frames kept" in capsys.readouterr().out
    from stts.flops import count_flops

    target = count_flops(stts.create_model("mvit_b_16x4", **{**TINY_MVIT, "selection": "T0_k3-S1_a2"}),
                         (1, 3, 8, 32, 32)).gflops
    code = main(["visualize", "--checkpoint", str(ckpt), videos["good"], "--out", str(tmp_path / "g"), "--no-gif",
                 "--gflops", repr(target)])
    stdout = capsys.readouterr().out
    picked = stts.plan_for(stts.load_model(ckpt), gflops=target, input_size=(3, 8, 32, 32))
    assert code == 0 and f"running {picked}\n" in stdout and f"{2 * picked.specs[0].keep}/8 frames kept" in stdout

    dense = {k: v for k, v in TINY_MVIT.items() if k != "selection"}
    stts.save_model(stts.create_model("mvit_b_16x4", **dense), tmp_path / "dense.pt")
    code = main(["visualize", "--checkpoint", str(tmp_path / "dense.pt"), videos["good"], "--out",
                 str(tmp_path / "d"), "--no-gif", "--frames", "4", "--size", "32"])
    stdout = capsys.readouterr().out
    assert code == 0 and "no selectors" in stdout and "4/4 frames kept" in stdout


def test_visualize_cli_policies(tmp_path, videos, capsys):
    """--policy scores a checkpoint's selectors training-free; --selection adds a plan to a dense one."""
    import stts
    from stts.cli import main

    torch.manual_seed(0)
    stts.save_model(stts.create_model("mvit_b_16x4", **TINY_MVIT), tmp_path / "stts.pt")
    dense = {k: v for k, v in TINY_MVIT.items() if k != "selection"}
    stts.save_model(stts.create_model("mvit_b_16x4", **dense), tmp_path / "dense.pt")
    base = [videos["good"], "--out", str(tmp_path / "v"), "--no-gif", "--frames", "8", "--size", "32"]
    assert main(["visualize", "--checkpoint", str(tmp_path / "stts.pt"), *base]) == 0
    assert f"selection: {TINY_MVIT['selection']}, learned policy" in capsys.readouterr().out
    assert main(["visualize", "--checkpoint", str(tmp_path / "stts.pt"), *base, "--policy", "change"]) == 0
    stdout = capsys.readouterr().out
    assert f"selection: {TINY_MVIT['selection']}, change policy" in stdout and "4/8 frames kept" in stdout
    assert main(["visualize", "--checkpoint", str(tmp_path / "dense.pt"), *base, "--selection", "T0_0.5",
                 "--policy", "saliency"]) == 0
    stdout = capsys.readouterr().out
    assert "selection: T0_0.5, saliency policy" in stdout and "4/8 frames kept" in stdout
    for extra, message in ((["--selection", "T0_0.5"], "no trained scorers: give a training-free --policy"),
                           (["--policy", "motion"], "--policy motion: policy must be one of")):
        assert main(["visualize", "--checkpoint", str(tmp_path / "dense.pt" if "--selection" in extra
                                                            else tmp_path / "stts.pt"), *base, *extra]) == 2
        assert message in capsys.readouterr().err
