"""ONNX export: ONNX Runtime reproduces torch and the official fixtures, and the graph keeps the plan's K.

Every exported graph is checked twice: its logits (ONNX Runtime vs torch at batch sizes it was not
traced with, and vs the official code's logits where a fixture exists), and its shapes: ONNX's own
shape inference (the exporter's shape annotations are removed first) must give every block after a
selector the token count that the plan's published rules give, computed here by hand.
"""

import ast
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from conftest import decode_input, load_fixture  # noqa: E402
from test_mvit import fixture_model as mvit_fixture_model  # noqa: E402
from test_swin3d import fixture_model as swin_fixture_model  # noqa: E402

import stts  # noqa: E402
from stts.cli import main  # noqa: E402
from stts.onnx import OnnxMismatchError, export_onnx  # noqa: E402

TOL = 1e-4  # the bound on |ONNX Runtime - torch| per logit


# ---------------------------------------------------------------------------------------------------
# Helpers: ONNX Runtime and ONNX shape inference used directly (not through stts.onnx)
# ---------------------------------------------------------------------------------------------------


def ort_logits(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def assert_parity(path, model, input_size, batch_sizes=(1, 3), seed=0):
    """ORT vs torch on random clips; the graph was traced at batch 2, so 1 and 3 test the dynamic axis."""
    gen = torch.Generator().manual_seed(seed)
    for b in batch_sizes:
        x = torch.randn(b, *input_size, generator=gen)
        with torch.no_grad():
            expected = model(x)
        got = ort_logits(path, x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= TOL, f"batch {b}: {(got - expected).abs().max():.3g}"


def inferred_shapes(path) -> dict:
    """{module path: input shape} of every LayerNormalization and Attention node, from onnx.shape_inference
    run on the graph without the exporter's annotations (so ONNX itself derives every shape)."""
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.value_info, *model.graph.input]}
    out = {}
    for node in model.graph.node:
        if node.op_type not in ("LayerNormalization", "Attention"):
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])  # ['', 'blocks.0', 'blocks.0.norm1', op]
        out.setdefault(scopes[-2], dims[node.input[0]])
    return out


def dynamic_batch_only(path, input_size) -> bool:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return bool(dims[0].dim_param) and [d.dim_value for d in dims[1:]] == list(input_size)


def perturb_(model, std=0.05, seed=0):
    """Random weights far enough from the init that scores are well separated (no near-tie in a top-K)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


# Token counts from the published rules, by hand: K = int(T * ratio) frames; anchor a = floor(sqrt(int(H*W * ratio)));
# an MViT q-pool (kernel 3, padding 1, stride 2 in space) maps H to (H + 2 - 3) // 2 + 1.


def mvit_tokens_per_block(depth, grid, q_stride_blocks, temporal=None, spatial=None):
    """[(tokens entering block i incl. the class token)] for an MViT with selectors T{i}_{r} / S{i}_{r}."""
    T, H, W = grid
    tokens = []
    for i in range(depth):
        if temporal and temporal[0] == i:
            T = int(T * temporal[1] + 1e-6)
        if spatial and spatial[0] == i:
            H = W = math.isqrt(int(H * W * spatial[1] + 1e-6))
        tokens.append(1 + T * H * W)
        if i in q_stride_blocks:
            H, W = (H + 2 - 3) // 2 + 1, (W + 2 - 3) // 2 + 1
    return tokens


def mvit_graph_tokens(shapes, depth):
    return [shapes[f"blocks.{i}.norm1"][1] for i in range(depth)]  # norm1 input: (B, N, C)


# ---------------------------------------------------------------------------------------------------
# MViT: the published STTS plan on the official fixture (MViT-B structure), the demo model
# ---------------------------------------------------------------------------------------------------


# MViT-B's structure cut to 5 blocks (q-pooling in blocks 1 and 3, so 7x7 before block 4 at 112^2), with
# the published t0.5_s0.7 plan and its settings: the code path of every published MViT STTS model.
MVIT_B5 = dict(depth=5, embed_dim=32, dim_mul=((1, 2.0), (3, 2.0)), head_mul=((1, 2.0), (3, 2.0)),
               pool_q_stride=((1, 1, 2, 2), (3, 1, 2, 2)), img_size=112, num_classes=7)


def test_mvit_published_plan(tmp_path):
    model = perturb_(stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", **MVIT_B5)).eval()
    assert str(model.plan) == "T0_0.5-S4_0.7367"
    path = tmp_path / "mvit.onnx"
    export_onnx(model, path, check=False)  # the test checks, independently
    assert_parity(path, model, model.input_size)
    assert dynamic_batch_only(path, model.input_size)
    # 16 frames / 2 = 8, 112 / 4 = 28: 4 of 8 frames from block 0; blocks 1 and 3 halve the map, so it is
    # 7x7 before block 4: int(49 * 0.7367) = 36 -> a 6x6 anchor
    expected = mvit_tokens_per_block(5, (8, 28, 28), {1, 3}, temporal=(0, 0.5), spatial=(4, 0.7367))
    assert expected == [1 + 4 * 28 * 28, 1 + 4 * 28 * 28, 1 + 4 * 14 * 14, 1 + 4 * 14 * 14, 1 + 4 * 6 * 6]
    assert mvit_graph_tokens(inferred_shapes(path), 5) == expected


@pytest.mark.slow
def test_mvit_official_fixture(tmp_path):
    """The official fixture (MViT-B's 16 blocks, embed 16): ORT reproduces the official code's logits."""
    model, meta, io = mvit_fixture_model("mvit_small_t0_0.5_s4_0.7")
    path = tmp_path / "mvit_small_t0_0.5_s4_0.7.onnx"
    export_onnx(model, path, check=False)
    torch.testing.assert_close(ort_logits(path, decode_input(io["input"])), io["logits"], atol=TOL, rtol=0)
    assert_parity(path, model, model.input_size)
    expected = mvit_tokens_per_block(16, (8, 28, 28), {1, 3, 14}, temporal=(0, 0.5), spatial=(4, 0.7367))
    assert expected == [r["tokens_in"] for r in meta["forward_trace"]]  # the official code's own trace
    assert mvit_graph_tokens(inferred_shapes(path), 16) == expected


def test_demo_model_via_cli(tmp_path, capsys):
    """`stts export CKPT OUT.onnx` on the demo's model (mvit_tiny, T0_0.5-S1_0.6)."""
    model = perturb_(stts.create_model("mvit_tiny", selection="T0_0.5-S1_0.6", num_classes=5)).eval()
    ckpt, out = tmp_path / "demo.safetensors", tmp_path / "demo.onnx"
    stts.save_model(model, ckpt)
    assert main(["export", str(ckpt), str(out)]) == 0
    assert "max |logit difference|" in capsys.readouterr().out
    assert_parity(out, stts.load_model(ckpt).eval(), model.input_size)
    # 16 frames / 2 = 8, 32 / 4 = 8; T0: 4 of 8 frames; S1: a = isqrt(int(64 * 0.6)) = 6; q-pool at 1, 3
    expected = mvit_tokens_per_block(4, (8, 8, 8), {1, 3}, temporal=(0, 0.5), spatial=(1, 0.6))
    assert expected == [257, 145, 37, 37]
    assert mvit_graph_tokens(inferred_shapes(out), 4) == expected


# ---------------------------------------------------------------------------------------------------
# Swin: the published regime (9 of 16 temporal tokens) on the official fixture, faithful and fit windows
# ---------------------------------------------------------------------------------------------------


SWIN_CLIP = (3, 32, 56, 56)  # 16 temporal tokens, 14x14 before stage 0: the published regime, small


@pytest.fixture(scope="module", params=["pad", "fit"])
def swin_export(request, tmp_path_factory):
    """pad: the official fixture (faithful, official weights, 4 stages); fit: two stages of the same
    width with random weights (the window rule is per stage, so two stages cover it, at a third of the cost)."""
    if request.param == "pad":
        model = swin_fixture_model("swin_small_32f_t0_0.5625")
    else:
        model = perturb_(stts.create_model("swin3d_t", selection="T0_0.5625", temporal_window="fit", num_classes=7,
                                           embed_dim=24, depths=(2, 2), num_heads=(1, 2), num_frames=32,
                                           img_size=56)).eval()
    path = tmp_path_factory.mktemp("onnx") / f"swin_{request.param}.onnx"
    export_onnx(model, path, input_size=SWIN_CLIP, check=False)
    return request.param, path, model


def test_swin_matches_torch(swin_export):
    mode, path, model = swin_export
    assert_parity(path, model, SWIN_CLIP)
    assert dynamic_batch_only(path, SWIN_CLIP)
    if mode == "pad":  # the official model: its logits too
        _, io = load_fixture("swin_small_32f_t0_0.5625")
        torch.testing.assert_close(ort_logits(path, decode_input(io["input"])), io["logits"], atol=TOL, rtol=0)


def test_swin_graph_keeps_9_of_16_frames_and_its_windows(swin_export):
    mode, path, model = swin_export
    shapes = inferred_shapes(path)
    K = int(16 * 0.5625)  # 32 frames / patch 2 = 16 temporal tokens
    # Temporal window: "pad" pads 9 frames to 16 and attends in windows of 8; "fit" splits 9 into
    # n = ceil(9 / 8) = 2 windows of ceil(9 / 2) = 5 frames (one pad frame).
    wt = 8 if mode == "pad" else 5
    side = 56 // 4  # 14x14 before stage 0, then patch merging halves it (ceil)
    depths = [len(stage.blocks) for stage in model.layers]
    assert depths == ([2, 2, 6, 2] if mode == "pad" else [2, 2])
    for stage, depth in enumerate(depths):
        for b in range(depth):
            assert shapes[f"layers.{stage}.blocks.{b}.norm1"][1:4] == [K, side, side]  # (B, T, H, W, C)
            q = shapes[f"layers.{stage}.blocks.{b}.attn"]  # (B', heads, N, hd): N tokens per window
            assert q[2] == wt * min(side, 7) ** 2
        side = math.ceil(side / 2)


# ---------------------------------------------------------------------------------------------------
# ViT with token-level selection
# ---------------------------------------------------------------------------------------------------


def test_vit_token_selection(tmp_path):
    """Also what export_onnx reports: its own ORT check, the op counts; the caller's model keeps its mode."""
    model = perturb_(stts.create_model("vit_s_16x16", selection="K2_0.5", depth=4, img_size=64, num_frames=8,
                                       num_classes=5))
    assert model.training
    path = tmp_path / "vit.onnx"
    report = export_onnx(model, path)  # exports the eval model (hard top-K) from a copy
    assert model.training
    model.eval()
    assert_parity(path, model, model.input_size)
    assert set(report.max_abs_diff) == {1, 3} and report.worst <= TOL
    assert report.onnx_ops["TopK"] >= 1 and report.onnx_ops["Attention"] == 4
    tokens = [inferred_shapes(path)[f"blocks.{i}.norm1"][1] for i in range(4)]
    n = (8 // 2) * (64 // 16) ** 2  # 4x4x4 tubelets
    assert tokens == [n, n, int(n * 0.5), int(n * 0.5)]


def test_export_check_fails_loudly(tmp_path):
    model = stts.create_model("vit_s_16x16", selection="K0_0.5", depth=1, img_size=32, num_frames=4, num_classes=3)
    with pytest.raises(OnnxMismatchError, match="ONNX Runtime logits differ from torch"):
        export_onnx(model, tmp_path / "tiny.onnx", atol=0.0)  # float32 kernels differ by ~1e-7: above 0


# ---------------------------------------------------------------------------------------------------
# The command line, import weight
# ---------------------------------------------------------------------------------------------------


def test_cli_rejects_other_suffixes(tmp_path, capsys):
    assert main(["export", str(tmp_path / "x.pt"), str(tmp_path / "x.pb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and ".onnx" in err[0] and ".safetensors" in err[0]


def test_cli_names_the_extra_when_onnx_is_missing(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    ckpt = tmp_path / "m.safetensors"
    stts.save_model(stts.create_model("mvit_tiny"), ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "onnxscript" in err and "stts-video[onnx]" in err
    assert not (tmp_path / "m.onnx").exists()


def test_import_stts_does_not_import_onnx():
    code = ("import sys, stts, stts.onnx, stts.cli; stts.cli.build_parser(); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------
# Full size (slow): the published models, random weights
# ---------------------------------------------------------------------------------------------------

MVIT_PUBLISHED = {"mvit_b_16x4_stts_t0.9_s0.9": (0.875, 0.863), "mvit_b_16x4_stts_t0.8_s0.9": (0.75, 0.863),
                  "mvit_b_16x4_stts_t0.6_s0.9": (0.625, 0.863), "mvit_b_16x4_stts_t0.5_s0.7": (0.5, 0.7367),
                  "mvit_b_16x4_stts_t0.4_s0.6": (0.375, 0.6174)}
SWIN_PUBLISHED = {"swin3d_b_stts_t0.9": 0.875, "swin3d_b_stts_t0.8": 0.75, "swin3d_b_stts_t0.6": 0.625,
                  "swin3d_b_stts_t0.5": 0.5625, "swin3d_b_stts_t0.4": 0.375}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MVIT_PUBLISHED))
def test_published_mvit_full_size(name, tmp_path):
    torch.manual_seed(0)
    model = perturb_(stts.create_model(name), std=0.02).eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, check=False)
    assert_parity(path, model, model.input_size, batch_sizes=(1, 2))
    t, s = MVIT_PUBLISHED[name]
    expected = mvit_tokens_per_block(16, (8, 56, 56), {1, 3, 14}, temporal=(0, t), spatial=(4, s))
    assert mvit_graph_tokens(inferred_shapes(path), 16) == expected


@pytest.mark.slow
@pytest.mark.parametrize("window", ["pad", "fit"])
@pytest.mark.parametrize("name", list(SWIN_PUBLISHED))
def test_published_swin_full_size(name, window, tmp_path):
    torch.manual_seed(0)
    model = perturb_(stts.create_model(name, temporal_window=window), std=0.02).eval()
    path = tmp_path / f"{name}_{window}.onnx"
    export_onnx(model, path, check=False)
    assert_parity(path, model, model.input_size, batch_sizes=(1, 2))
    K = int(16 * SWIN_PUBLISHED[name] + 1e-6)
    n = math.ceil(K / 8)
    wt = min(K, 8) if window == "pad" else math.ceil(K / n)
    shapes = inferred_shapes(path)
    side = 224 // 4
    for stage, depth in enumerate((2, 2, 18, 2)):
        for b in range(depth):
            assert shapes[f"layers.{stage}.blocks.{b}.norm1"][1:4] == [K, side, side]
            assert shapes[f"layers.{stage}.blocks.{b}.attn"][2] == wt * 49
        side //= 2
