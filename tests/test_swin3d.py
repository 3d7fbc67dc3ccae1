"""Video Swin with STTS: official fixtures, official FLOPs, window geometry, selection, checkpoints."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import stts
from stts.weights import CheckpointError, load_state_dict_checked
from stts.flops import count_flops
from stts.models import model_entry
from stts.models.swin3d import (
    SwinTransformer3d,
    attention_mask,
    checkpoint_filter_fn,
    relative_position_index,
    stage_window,
    window_order,
)
from conftest import FIXTURES, decode_input, fixture_state_dict, load_fixture

SMALL = dict(num_classes=7, embed_dim=24, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8))
FIXTURE_PLANS = {"swin_small_dense": None, "swin_small_t0_0.5": "T0_0.5", "swin_small_32f_t0_0.5625": "T0_0.5625"}


def fixture_model(name: str, **kwargs) -> SwinTransformer3d:
    model = SwinTransformer3d(**SMALL, **kwargs)
    if FIXTURE_PLANS[name]:
        stts.patch(model, FIXTURE_PLANS[name])
    sd = checkpoint_filter_fn(fixture_state_dict("swin_small"), model)
    if not FIXTURE_PLANS[name]:
        sd = {k: v for k, v in sd.items() if not k.startswith("selectors.")}
    load_state_dict_checked(model, sd, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# The official model, reproduced (faithful mode)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FIXTURE_PLANS))
def test_official_fixture(name, device):
    meta, io = load_fixture(name)
    model = fixture_model(name).to(device)
    x = decode_input(io["input"]).to(device)
    with torch.inference_mode():
        feats, kept = model.forward_features(x, return_selections=True)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.permute(0, 4, 1, 2, 3).cpu(), io["backbone_features"], **tol)  # (B, C, T, H, W)
    torch.testing.assert_close(pooled.cpu(), io["features"], **tol)
    torch.testing.assert_close(logits.cpu(), io["logits"], **tol)
    if FIXTURE_PLANS[name]:
        assert torch.equal(kept["T0"].indices.cpu(), io["time_indices"])
        torch.testing.assert_close(kept["T0"].scores.cpu(), io["time_normalized_scores"], **tol)
        sel = model.selectors["T0"]
        tokens, (T, H, W) = model.patch_embed(x)  # (B, T*H*W, C)
        frames = tokens.view(x.shape[0], T, H * W, -1)  # (B, T, H*W, C)
        with torch.no_grad():
            raw = sel.scorer(torch.cat([frames.mean(2), frames.amax(2)], -1))
        torch.testing.assert_close(raw.cpu(), io["time_raw_scores"], **tol)
    else:
        assert kept == {}


def test_batch_of_one_matches_batch(device):
    """B == 1 takes another attention layout for masked windows than B > 1."""
    _, io = load_fixture("swin_small_32f_t0_0.5625")
    model = fixture_model("swin_small_32f_t0_0.5625").to(device)
    x = decode_input(io["input"]).to(device)
    with torch.inference_mode():
        one = torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(one.cpu(), io["logits"], atol=1e-5, rtol=1e-5)


def test_true_index_differs_where_the_quirk_applies(device):
    """The official `index[:N, :N]` is only wrong for spatially shrunk windows (README: ~4e-2 here)."""
    _, io = load_fixture("swin_small_dense")
    model = fixture_model("swin_small_dense", faithful=False).to(device)
    with torch.inference_mode():
        diff = (model(decode_input(io["input"]).to(device)).cpu() - io["logits"]).abs().max()
    assert 1e-3 < diff < 1.0
    # Shrunk in time only (T is the outer axis): both indices coincide; shrunk in space they do not.
    full = (8, 7, 7)
    assert torch.equal(relative_position_index((4, 7, 7), full, True), relative_position_index((4, 7, 7), full))
    assert not torch.equal(relative_position_index((8, 4, 4), full, True), relative_position_index((8, 4, 4), full))


def test_relative_position_index_formula():
    """The fixture README's definition, written out with loops."""
    win = (2, 3, 3)
    coords = [(d, h, w) for d in range(2) for h in range(3) for w in range(3)]
    expected = torch.tensor([[(a[0] - b[0] + 1) * 25 + (a[1] - b[1] + 2) * 5 + (a[2] - b[2] + 2)
                              for b in coords] for a in coords])
    assert torch.equal(relative_position_index(win, win), expected)


# ---------------------------------------------------------------------------------------------------
# Window geometry and the window-aware mode
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thw,mode,window,shift", [
    ((16, 56, 56), "pad", (8, 7, 7), (4, 3, 3)),
    ((9, 14, 14), "pad", (8, 7, 7), (4, 3, 3)),  # padded to 16 by the caller
    ((6, 56, 56), "pad", (6, 7, 7), (0, 3, 3)),  # T <= 8: window = T, no temporal shift
    ((9, 7, 7), "pad", (8, 7, 7), (4, 0, 0)),
    ((8, 4, 4), "pad", (8, 4, 4), (0, 0, 0)),
    ((14, 56, 56), "fit", (7, 7, 7), (3, 3, 3)),
    ((12, 56, 56), "fit", (6, 7, 7), (3, 3, 3)),
    ((10, 56, 56), "fit", (5, 7, 7), (2, 3, 3)),
    ((9, 56, 56), "fit", (5, 7, 7), (2, 3, 3)),  # 2 windows of 5, one pad frame
    ((16, 56, 56), "fit", (8, 7, 7), (4, 3, 3)),  # a multiple of 8: the official windows
    ((6, 56, 56), "fit", (6, 7, 7), (0, 3, 3)),
])
def test_stage_window(thw, mode, window, shift):
    assert stage_window(thw, (8, 7, 7), mode) == (window, shift)


def naive_window_attention(x, attn, window, valid_t):
    """Unshifted windows along T only (H, W = one window), pad frames excluded: loops and softmax."""
    B, T, H, W, C = x.shape
    nh, hd = attn.num_heads, C // attn.num_heads
    out = torch.zeros_like(x)
    index = relative_position_index(window, attn.window)
    for t0 in range(0, valid_t, window[0]):
        t1 = min(t0 + window[0], valid_t)
        n = (t1 - t0) * H * W
        tokens = x[:, t0:t1].reshape(B, n, C)
        q, k, v = attn.qkv(tokens).view(B, n, 3, nh, hd).permute(2, 0, 3, 1, 4)
        bias = attn.relative_position_bias_table[index[:n, :n].reshape(-1)].view(n, n, nh).permute(2, 0, 1)
        a = (q @ k.transpose(-2, -1) / math.sqrt(hd) + bias).softmax(-1)
        y = (a @ v).transpose(1, 2).reshape(B, n, C)
        out[:, t0:t1] = attn.proj(y).view(B, t1 - t0, H, W, C)
    return out


def test_masked_pad_tokens_equal_attention_over_real_frames():
    """faithful=False: attention over a padded T equals attention that never sees the pad frames."""
    torch.manual_seed(0)
    model = SwinTransformer3d(num_classes=0, embed_dim=8, depths=(1,), num_heads=(2,), window_size=(4, 3, 3),
                              faithful=False)
    attn = model.layers[0].blocks[0].attn
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2, 6, 3, 3, 8)  # T = 6 -> padded to 8 with window 4
    plain, _ = model.layers[0].geometry((6, 3, 3), x.device)
    assert plain.pad == (2, 0, 0) and plain.mask is not None
    with torch.no_grad():
        ours = attn(x, plain)
        ref = naive_window_attention(x, attn, (4, 3, 3), 6)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_window_order_is_roll_and_partition():
    """The gather order equals torch.roll + reshape/permute window partition on a padded map."""
    thw, padded, window, shift = (5, 6, 4), (8, 6, 6), (4, 3, 3), (2, 1, 1)
    x = torch.randn(1, *thw, 2)
    xp = F.pad(x, (0, 0, 0, 2, 0, 0, 0, 3))
    rolled = torch.roll(xp, shifts=(-2, -1, -1), dims=(1, 2, 3))
    ref = rolled.view(1, 2, 4, 2, 3, 2, 3, 2).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(1, -1, 2)
    order, restore = window_order(thw, padded, window, shift)
    assert torch.equal(xp.reshape(1, -1, 2)[:, order], ref)
    assert torch.equal(ref[:, restore].view(1, *thw, 2), x)


def test_shift_mask_regions():
    """Tokens that the cyclic shift wrapped around never attend to the others (2 windows in T)."""
    mask = attention_mask((8, 1, 1), (4, 1, 1), (2, 0, 0))  # (nW=2, N=4, N=4)
    assert torch.equal(mask[0], torch.zeros(4, 4))
    # Second window holds original frames 6, 7 (not wrapped) and 0, 1 (wrapped): two blocks of 2.
    blocks = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]) * -100.0
    assert torch.equal(mask[1], blocks)


# ---------------------------------------------------------------------------------------------------
# FLOPs: the official fvcore numbers, and the window-aware mode
# ---------------------------------------------------------------------------------------------------

OFFICIAL_ROWS = {
    "swin3d_b": "Video Swin-B 32x224 dense",
    "swin3d_t": "Video Swin-T 32x224 dense",
    "swin3d_b_stts_t0.9": "Video Swin-B t0_0.875",
    "swin3d_b_stts_t0.8": "Video Swin-B t0_0.75",
    "swin3d_b_stts_t0.6": "Video Swin-B t0_0.625",
    "swin3d_b_stts_t0.5": "Video Swin-B t0_0.5625",
    "swin3d_b_stts_t0.4": "Video Swin-B t0_0.375",
}


def meta_model(name, **kwargs):
    with torch.device("meta"):  # full size, no memory, no init cost
        return stts.create_model(name, **kwargs)


FRAMES_KEPT = {"swin3d_b": 16, "swin3d_t": 16, "swin3d_b_stts_t0.9": 14, "swin3d_b_stts_t0.8": 12,
               "swin3d_b_stts_t0.6": 10, "swin3d_b_stts_t0.5": 9, "swin3d_b_stts_t0.4": 6}


@pytest.mark.parametrize("name", list(OFFICIAL_ROWS))
def test_flops_match_official_fvcore(name):
    """Faithful mode = fvcore on the official code (within 1%; in fact exact), operator by operator.
    The window-aware mode costs at most the kept fraction of the dense model."""
    rows = {r["model"]: r for r in json.loads((FIXTURES / "official_flops.json").read_text())["rows"]}
    row = rows[OFFICIAL_ROWS[name]]
    model = meta_model(name)
    fc = count_flops(model, (1, 3, 32, 224, 224))
    assert fc.gflops == pytest.approx(row["gflops"], rel=0.01)
    assert fc.scorer_gflops == pytest.approx(row["scorer_gflops"], rel=0.01, abs=1e-9)
    for op, gflops in row["by_operator_gflops"].items():
        assert fc.by_operator[op] / 1e9 == pytest.approx(gflops, rel=0.01), op
    assert model_entry(name).meta["official_gflops"] == pytest.approx(row["gflops"], rel=1e-4)
    model.set_window_mode(temporal_window="fit")
    fit = count_flops(model, (1, 3, 32, 224, 224)).gflops
    dense = rows["Video Swin-T 32x224 dense" if name == "swin3d_t" else "Video Swin-B 32x224 dense"]["gflops"]
    assert fit <= dense * FRAMES_KEPT[name] / 16 * 1.001 and fit <= fc.gflops * 1.0001


def test_stts_flops_command_reports_the_official_figure():
    """`stts flops swin3d_b_stts_t0.5` (the command's report function) against fvcore on the official code."""
    flops_cmd = pytest.importorskip("stts.commands.flops")
    report = flops_cmd.flops_report("swin3d_b_stts_t0.5")
    assert abs(report["zoo"]["diff_vs_official_pct"]) < 1.0
    fit = flops_cmd.flops_report("swin3d_b_stts_t0.5", temporal_window="fit")
    assert fit["gflops"] < 0.75 * report["gflops"]


# ---------------------------------------------------------------------------------------------------
# Selection protocol, anchors, gradients
# ---------------------------------------------------------------------------------------------------


def test_selection_protocol_and_anchor_rules():
    model = meta_model("swin3d_t")
    assert model.selection_kinds == "TS"
    assert [model.selection_dim(i) for i in range(4)] == [96, 192, 384, 768]
    with pytest.raises(ValueError, match="stage index 4"):
        model.selection_dim(4)
    assert model.valid_anchor_sizes(1) == [1, 2, 3, 4, 5, 6, 7, 14, 28]
    assert model.valid_anchor_sizes(2) == [1, 2, 3, 4, 5, 6, 7, 14]
    stts.patch(model, "S1_a14")
    assert model.grid_before(2) == (16, 7, 7)
    with pytest.raises(ValueError, match=r"S2_a9.*valid anchor sizes"):
        stts.patch(meta_model("swin3d_t"), "S2_a9")
    with pytest.raises(ValueError, match="does not support 'K'"):
        stts.patch(meta_model("swin3d_t"), "K0_0.5")
    with pytest.raises(ValueError, match="keeps 0 frames"):
        stts.patch(meta_model("swin3d_t"), "T0_0.01")


def perturb_(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> None:
    """Move every parameter away from its init (zero biases, unit norms) so that a wrong gather shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("plan,anchors,out_thw", [
    ("T0_0.5-S1_a4", {"S1": (4, 2)}, (4, 4, 4)),  # 8 -> 4 frames; a 4x4 anchor of the 8x8 map, stride 2
    ("S0_a4-T1_0.5", {"S0": (4, 6)}, (4, 2, 2)),  # a 4x4 anchor of 16x16 (stride 6), merged to 2x2; 8 -> 4
])
def test_selection_eval_matches_naive_gathers(plan, anchors, out_thw, device):
    """Eval selection in the real model equals scoring and gathering by hand (tests/_selection_oracle.py)
    the token map that enters each selector: the patch embedding, then the stages before it."""
    from _selection_oracle import naive_anchor, naive_temporal

    torch.manual_seed(0)
    model = SwinTransformer3d(num_classes=5, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=(4, 4, 4),
                              num_frames=16, img_size=64)
    stts.patch(model, plan)
    perturb_(model)
    model.eval()
    x = torch.randn(2, 3, 16, 64, 64)
    with torch.inference_mode():
        feats, kept = model.to(device).forward_features(x.to(device), return_selections=True)
        logits = model.forward_head(feats)
    model.cpu()
    with torch.no_grad():
        tokens, thw = model.patch_embed(x)  # (B, T*H*W, C)
        z = tokens.view(x.shape[0], *thw, -1)  # (B, T, H, W, C)
        for i, stage in enumerate(model.layers):
            for name, sel in model.selectors.items():
                if sel.before == i and sel.kind == "temporal":
                    z = naive_temporal(z, sel, kept[name], kept[name].indices.shape[1])
                elif sel.before == i:
                    z = naive_anchor(z, sel, kept[name], *anchors[name])
            z = stage(z)
        ref_feats = model.norm(z)
        ref_logits = model.head(ref_feats.mean(dim=(1, 2, 3)))
    assert feats.shape == (2, *out_thw, 32)
    torch.testing.assert_close(feats.cpu(), ref_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.cpu(), ref_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temporal_window", ["pad", "fit"])
def test_backward_every_parameter_finite(temporal_window):
    torch.manual_seed(0)
    model = SwinTransformer3d(num_classes=5, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=(4, 4, 4),
                              num_frames=12, img_size=32, drop_path_rate=0.1, temporal_window=temporal_window,
                              faithful=temporal_window == "pad")
    stts.patch(model, "T0_0.84-S1_a2", num_samples=16)  # 6 -> 5 frames (padded or fitted), 4x4 -> 2x2 anchor
    model.train()
    model(torch.randn(2, 3, 12, 32, 32)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The scorers learn (their last bias cancels in the min-max normalisation, so it may get zero).
    for sel in ("T0", "S1"):
        assert model.selectors[sel].scorer.embed[1].weight.grad.abs().sum() > 0, sel
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Registry and checkpoints
# ---------------------------------------------------------------------------------------------------


def test_registry_entries():
    names = stts.list_models("swin3d*")
    for n in ["swin3d_t", "swin3d_s", "swin3d_b", "swin3d_b_stts_t0.9", "swin3d_b_stts_t0.8", "swin3d_b_stts_t0.6",
              "swin3d_b_stts_t0.5", "swin3d_b_stts_t0.4"]:
        assert n in names
    entry = model_entry("swin3d_b_stts_t0.5")
    assert str(entry.plan) == "T0_0.5625" and entry.meta["top1"] == 81.1 and entry.meta["frames_kept"] == "9/16"
    model = meta_model("swin3d_b_stts_t0.5")
    assert model.faithful and model.temporal_window == "pad"
    assert model.selectors["T0"].jacobian == "diagonal"
    assert model.grid_before(1) == (9, 28, 28)
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in model.no_weight_decay()
    model.set_window_mode(temporal_window="fit")  # recorded, so a saved checkpoint rebuilds the mode
    assert model.model_kwargs["temporal_window"] == "fit" and model.layers[3].temporal_window == "fit"
    with pytest.raises(ValueError, match="temporal_window"):
        model.set_window_mode(temporal_window="crop")


def test_mmaction_checkpoint_loads(tmp_path, device):
    """An mmaction file: `state_dict`, backbone./cls_head. prefixes, relative_position_index buffers."""
    _, io = load_fixture("swin_small_32f_t0_0.5625")
    sd = dict(fixture_state_dict("swin_small"))
    for i, depth in enumerate(SMALL["depths"]):
        for j in range(depth):
            sd[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = relative_position_index((8, 7, 7),
                                                                                                      (8, 7, 7))
    path = tmp_path / "swin_mmaction.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": sd}, path)
    model = stts.create_model("swin3d_t", selection="T0_0.5625", pretrained=str(path), **SMALL).eval().to(device)
    with torch.inference_mode():
        torch.testing.assert_close(model(decode_input(io["input"]).to(device)).cpu(), io["logits"], atol=1e-5,
                                   rtol=1e-5)
    # A wrong index (another window size) is refused with the key named.
    sd["backbone.layers.0.blocks.0.attn.relative_position_index"] = relative_position_index((2, 7, 7), (2, 7, 7))
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ValueError, match="layers.0.blocks.0.attn.relative_position_index"):
        stts.create_model("swin3d_t", selection="T0_0.5625", pretrained=str(path), **SMALL)
    # A dense checkpoint into an STTS model needs strict=False (the scorer starts fresh).
    dense = {k: v for k, v in fixture_state_dict("swin_small").items() if "time_score" not in k}
    torch.save({"state_dict": dense}, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        stts.create_model("swin3d_t", selection="T0_0.5625", pretrained=str(path), **SMALL)
    stts.create_model("swin3d_t", selection="T0_0.5625", pretrained=str(path), strict=False, **SMALL)


def naive_shifted_window_attention(x, attn, window, shift):
    """Window attention written out: torch.roll by -shift, loop over windows, bias looked up from each
    token pair's relative offset, tokens the roll wrapped around kept apart (-100), roll back.
    x: (B, T, H, W, C) whose sizes are multiples of `window`."""
    B, T, H, W, C = x.shape
    nh = attn.num_heads
    hd = C // nh
    Wd, Wh, Ww = attn.window  # the bias table's window
    size = (T, H, W)
    rolled = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    out = torch.zeros_like(x)
    for t0 in range(0, T, window[0]):
        for h0 in range(0, H, window[1]):
            for w0 in range(0, W, window[2]):
                coords = [(t, h, w) for t in range(t0, t0 + window[0]) for h in range(h0, h0 + window[1])
                          for w in range(w0, w0 + window[2])]
                n = len(coords)
                tokens = torch.stack([rolled[:, t, h, w] for t, h, w in coords], 1)  # (B, n, C)
                q, k, v = attn.qkv(tokens).view(B, n, 3, nh, hd).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, n, hd)
                bias = torch.empty(nh, n, n)
                mask = torch.zeros(n, n)
                for i, a in enumerate(coords):
                    for j, b in enumerate(coords):
                        row = (a[0] - b[0] + Wd - 1) * (2 * Wh - 1) * (2 * Ww - 1) + (a[1] - b[1] + Wh - 1) * (2 * Ww - 1) \
                            + (a[2] - b[2] + Ww - 1)
                        bias[:, i, j] = attn.relative_position_bias_table[row]
                        wrapped = [c >= p - s if s else False for c, p, s in zip(a, size, shift)]
                        if wrapped != [c >= p - s if s else False for c, p, s in zip(b, size, shift)]:
                            mask[i, j] = -100.0
                weights = (q @ k.transpose(-2, -1) / math.sqrt(hd) + bias + mask).softmax(-1)
                y = attn.proj((weights @ v).transpose(1, 2).reshape(B, n, C))
                for i, (t, h, w) in enumerate(coords):
                    out[:, t, h, w] = y[:, i]
    return torch.roll(out, shifts=tuple(shift), dims=(1, 2, 3))


def test_stage_matches_naive_shifted_windows(device):
    """A stage of an unshifted and a shifted block (4x6x6 map, 2x3x3 windows, shift 1x1x1) against the
    blocks written out with naive_shifted_window_attention (not the functional op the module calls)."""
    torch.manual_seed(0)
    model = SwinTransformer3d(num_classes=0, embed_dim=8, depths=(2,), num_heads=(2,), window_size=(2, 3, 3))
    perturb_(model, std=0.5)
    model.eval()
    stage = model.layers[0]
    assert [b.shifted for b in stage.blocks] == [False, True]
    x = torch.randn(2, 4, 6, 6, 8)
    with torch.no_grad():
        got = stage.to(device)(x.to(device)).cpu()
        stage.cpu()
        ref = x
        for blk in stage.blocks:
            ref = ref + naive_shifted_window_attention(blk.norm1(ref), blk.attn, (2, 3, 3),
                                                       (1, 1, 1) if blk.shifted else (0, 0, 0))
            ref = ref + blk.mlp(blk.norm2(ref))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("temporal_window", ["pad", "fit"])
def test_full_size_swin_b_stts_forward(temporal_window):
    model = stts.create_model("swin3d_b_stts_t0.5", temporal_window=temporal_window).eval()
    with torch.inference_mode():
        logits, kept = model(torch.randn(1, 3, 32, 224, 224), return_selections=True)
    assert logits.shape == (1, 400) and torch.isfinite(logits).all()
    assert kept["T0"].indices.shape == (1, 9)
