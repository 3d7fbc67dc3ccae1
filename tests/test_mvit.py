"""MViT v1: official fixtures (logits, features, selections), structure, registry, plans, gradients."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import decode_input, fixture_state_dict, load_fixture

import stts
from stts.weights import load_state_dict_checked
from stts.models import list_models, model_entry
from stts.models.mvit import MViT, checkpoint_filter_fn, mvit_block_configs
from stts.models.zoo import ZOO
from stts.plan import parse_plan

FIXTURE_NAMES = ["mvit_small_dense", "mvit_small_t0_0.5_s4_0.7", "mvit_small_t0_0.375_s4_0.2"]
PUBLISHED = ["mvit_b_16x4_stts_t0.9_s0.9", "mvit_b_16x4_stts_t0.8_s0.9", "mvit_b_16x4_stts_t0.6_s0.9",
             "mvit_b_16x4_stts_t0.5_s0.7", "mvit_b_16x4_stts_t0.4_s0.6"]


def fixture_plan(meta) -> str | None:
    sel = meta.get("token_selection") or {}
    if not sel.get("temporal"):
        return None
    t, s = sel["temporal"], sel["spatial"]
    return f"T{t['before_block']}_{t['keep_ratio']}-S{s['before_block']}_{s['keep_ratio']}"


def small_kwargs(meta) -> dict:
    a = meta["architecture"]
    return dict(embed_dim=a["embed_dim"], num_heads=a["num_heads"], depth=a["depth"], num_classes=a["num_classes"],
                img_size=a["crop_size"], num_frames=a["num_frames"], drop_path_rate=a["drop_path_rate"],
                head_drop=a["head_dropout"])


def fixture_model(name: str):
    """(model in eval mode with the official weights, meta, io) for a fixture."""
    meta, io = load_fixture(name)
    model = stts.create_model("mvit_b_16x4", selection=fixture_plan(meta), **small_kwargs(meta)).eval()
    sd = checkpoint_filter_fn(fixture_state_dict("mvit_small"), model)
    if fixture_plan(meta) is None:  # the shared file also holds the scorers; a dense model has none
        sd = {k: v for k, v in sd.items() if "score_predictor" not in k}
    load_state_dict_checked(model, sd, strict=True)
    return model, meta, io


# ---------------------------------------------------------------------------------------------------
# Official fixtures
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_outputs(name, device):
    """Logits, features, every block's token count, and (with a plan) the scores, kept frames, anchors
    and the token tensor after spatial selection, all against the official implementation."""
    model, meta, io = fixture_model(name)
    model.to(device)
    x = decode_input(io["input"]).to(device)
    trace, captured = [], {}
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: trace.append((i, a[0].shape[1], tuple(a[1]))))
             for i, b in enumerate(model.blocks)]
    if "S4" in model.selectors:
        hooks.append(model.blocks[4].register_forward_pre_hook(lambda m, a: captured.__setitem__("tok", a[0].cpu())))
        hooks.append(model.selectors["S4"].scorer.register_forward_hook(
            lambda m, a, out: captured.__setitem__("space_raw", out.cpu())))
        hooks.append(model.selectors["T0"].scorer.register_forward_hook(
            lambda m, a, out: captured.__setitem__("time_raw", out.cpu())))
    with torch.inference_mode():
        tokens, kept = model.forward_features(x, return_selections=True)
        features = model.forward_head(tokens, pre_logits=True).cpu()
        logits = model.forward_head(tokens).cpu()
    for h in hooks:
        h.remove()
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, io["logits"], **tol)
    torch.testing.assert_close(features, io["features"], **tol)
    if "forward_trace" in meta:  # eval selection is a hard gather: later blocks see fewer tokens
        assert trace == [(r["block"], r["tokens_in"], tuple(r["thw_in"])) for r in meta["forward_trace"]]
    if fixture_plan(meta) is None:
        assert kept == {} and len(model.selectors) == 0
        return
    B, Tk = io["space_anchor_indices"].shape
    torch.testing.assert_close(captured["time_raw"], io["time_raw_scores"], **tol)
    torch.testing.assert_close(kept["T0"].scores.cpu(), io["time_normalized_scores"], **tol)
    assert torch.equal(kept["T0"].indices.cpu(), io["time_indices"])
    torch.testing.assert_close(captured["space_raw"].view(B, Tk, -1), io["space_token_raw_scores"], **tol)
    torch.testing.assert_close(kept["S4"].scores.cpu(), io["space_anchor_normalized_scores"], **tol)
    assert torch.equal(kept["S4"].indices.cpu(), io["space_anchor_indices"])
    top_left = kept["S4"].boxes[..., :2].tolist()
    assert top_left == meta["token_selection"]["spatial"]["selected_anchor_top_left"]
    torch.testing.assert_close(captured["tok"], io["tokens_after_space_selection"], **tol)


def test_block_structure_matches_fixture_description():
    """Per-block dims, heads, q/kv pools and residual pools against the fixture's block table."""
    meta, _ = load_fixture("mvit_small_dense")
    a = meta["architecture"]
    model = MViT(**small_kwargs(meta))
    for spec, block in zip(a["blocks"], model.blocks):
        assert (block.dim, block.dim_out, block.attn.num_heads) == (spec["dim_in"], spec["dim_out"], spec["num_heads"])
        for pool_name, pool in (("q_pool", block.attn.pool_q), ("kv_pool", block.attn.pool_k),
                                ("residual_maxpool", block.pool_skip)):
            want = spec[pool_name]
            if want is None:
                assert pool is None, (spec["block"], pool_name)
            else:
                assert (list(pool.kernel), list(pool.stride), list(pool.padding)) == \
                       (want["kernel"], want["stride"], want["padding"]), (spec["block"], pool_name)
        assert (block.proj is not None) == spec["has_dim_proj"]
    kv = [[i, *b.attn.pool_k.stride] for i, b in enumerate(model.blocks)]
    assert kv == a["pool_kv_stride_resolved"]
    eps = a["layernorm_eps"]
    b1 = model.blocks[1]
    assert (b1.norm1.eps, b1.norm2.eps, model.norm.eps) == (eps["blocks.norm1"], eps["blocks.norm2"], eps["norm"])
    assert (b1.attn.norm_q.eps, b1.attn.norm_k.eps, b1.attn.norm_v.eps) == (
        eps["blocks.attn.norm_q"], eps["blocks.attn.norm_k"], eps["blocks.attn.norm_v"])


def test_full_size_mvit_b_structure():
    """MViT-B 16x4: 36.6M parameters (MViT paper), 8x56x56 tokens, maps 56/28/14/7 along the depth."""
    with torch.device("meta"):
        model = stts.create_model("mvit_b_16x4")
    assert sum(p.numel() for p in model.parameters()) == 36_610_672
    assert model.patch_grid == (8, 56, 56) and model.num_features == 768
    sizes = [model.grid_before(i)[1] for i in range(16)]
    assert sizes == [56, 56, 28, 28] + [14] * 11 + [7]
    cfg = mvit_block_configs(16, 96, 1, [(1, 2.0), (3, 2.0), (14, 2.0)], [(1, 2.0), (3, 2.0), (14, 2.0)],
                             [(1, 1, 2, 2), (3, 1, 2, 2), (14, 1, 2, 2)], (1, 8, 8), None, (3, 3, 3))
    assert [c["dim"] for c in cfg] == [96, 192, 192] + [384] * 11 + [768, 768]
    assert [c["num_heads"] for c in cfg] == [1, 2, 2] + [4] * 11 + [8, 8]


# ---------------------------------------------------------------------------------------------------
# Registry, plans, selection rules
# ---------------------------------------------------------------------------------------------------


# PAPER.md's zoo table: plan with the official configs' exact ratios, top-1, README and official-code GFLOPs.
PAPER_ZOO = {
    "mvit_b_16x4_stts_t0.9_s0.9": ("T0_0.875-S4_0.863", 78.1, 56.4, 56.39),
    "mvit_b_16x4_stts_t0.8_s0.9": ("T0_0.75-S4_0.863", 77.9, 47.2, 47.21),
    "mvit_b_16x4_stts_t0.6_s0.9": ("T0_0.625-S4_0.863", 77.5, 38.1, 38.46),
    "mvit_b_16x4_stts_t0.5_s0.7": ("T0_0.5-S4_0.7367", 76.6, 23.3, 26.95),
    "mvit_b_16x4_stts_t0.4_s0.6": ("T0_0.375-S4_0.6174", 75.6, 12.1, 18.46),
}


def test_registry_lists_the_published_models():
    names = list_models("mvit*")
    assert {"mvit_b_16x4", "mvit_b_32x3", *PUBLISHED} <= set(names) and set(PAPER_ZOO) == set(PUBLISHED)
    for name, (plan, top1, readme, official) in PAPER_ZOO.items():
        entry = model_entry(name)
        assert str(entry.plan) == plan
        assert entry.plan.settings == dict(num_samples=500, sigma=0.1, jacobian="diagonal", variance_reduction="none",
                                           policy="learned")  # sigma 0.1, authors' estimator
        assert entry.meta["top1"] == top1 and entry.meta["readme_gflops"] == readme
        assert entry.meta["official_gflops"] == pytest.approx(official, abs=0.005)
    assert model_entry("mvit_b_16x4").meta["top1"] == 78.4


@pytest.mark.parametrize("name,frames,anchor", [(n, f, a) for n, f, a in zip(PUBLISHED, [7, 6, 5, 4, 3],
                                                                               [13, 13, 13, 12, 11])])
def test_published_models_keep_what_the_paper_says(name, frames, anchor):
    with torch.device("meta"):
        model = stts.create_model(name)
    assert list(model.selectors) == ["T0", "S4"]
    assert all(s.sigma == 0.1 and s.jacobian == "diagonal" for s in model.selectors.values())
    assert model.grid_before(4) == (frames, 14, 14)  # the temporal selector applied, block 4 not yet
    assert model.grid_before(5) == (frames, anchor, anchor)
    assert f"{frames}/8" == ZOO[name].frames_kept and anchor == ZOO[name].anchor


def test_k_comes_from_the_input_not_the_config():
    """The official code keeps int(NUM_FRAMES // 2 * ratio) frames whatever the clip, and sizes a spatial
    anchor from the map after the block's q-stride; stts uses the clip's T and the map the selector meets."""
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=3,
                              selection="T0_0.5-S3_0.6").eval()  # block 3 halves the map (q-stride 2)
    with torch.inference_mode():
        for frames, size, side in ((8, 64, 8), (16, 64, 8), (8, 96, 12)):
            _, kept = model(torch.randn(1, 3, frames, size, size), return_selections=True)
            assert kept["T0"].indices.shape[1] == frames // 4  # half of the T = frames / 2 tokens
            assert kept["S3"].thw_in[1:] == (side, side)
            assert kept["S3"].boxes[0, 0, 2].item() == math.isqrt(int(side * side * 0.6))  # not side / 2


@pytest.mark.parametrize("plan,match", [
    ("T16_0.5", "block index 16 does not exist"),
    ("S4_a15", "15x15 anchor"),
    ("T0_k9", "keeps 9 frames"),
    ("K2_0.5", "does not support 'K'"),
    ("S15_a8", "15x15 anchor|8x8 anchor"),
])
def test_bad_plans_say_what_is_wrong(plan, match):
    with torch.device("meta"):
        model = stts.create_model("mvit_b_16x4")
    with pytest.raises(ValueError, match=match):
        stts.patch(model, plan)
    assert len(model.selectors) == 0  # left unchanged


def test_patch_places_selectors_anywhere():
    with torch.device("meta"):
        model = stts.create_model("mvit_b_16x4")
    stts.patch(model, "T2_k3-S3_0.5-S10_a5s1")
    assert list(model.selectors) == ["T2", "S3", "S10"]
    assert model.selectors["S3"].scorer.dim == 384 and model.selectors["T2"].scorer.dim == 2 * 192
    assert model.grid_before(11) == (3, 5, 5)
    with pytest.raises(ValueError, match="already selects tokens at T0-S4"):
        stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", selection="T0_0.5")


def test_small_model_any_plan_runs_and_records():
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=5,
                              selection="T1_k2-S1_a8-S3_0.5").eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        logits, kept = model(x, return_selections=True)
        assert torch.equal(logits, model(x))
    assert logits.shape == (2, 5) and set(kept) == {"T1", "S1", "S3"}
    assert kept["S1"].thw_in == (2, 16, 16) and kept["S3"].thw_in == (2, 4, 4)


def test_class_token_passes_through_selection_unchanged(device):
    model, meta, io = fixture_model("mvit_small_t0_0.5_s4_0.7")
    model.to(device)
    x = decode_input(io["input"]).to(device)
    seen = {}
    model.selectors["S4"].register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0]))
    model.blocks[4].register_forward_pre_hook(lambda m, a: seen.__setitem__("out", a[0]))
    with torch.inference_mode():
        model(x)
    assert torch.equal(seen["in"][:, 0], seen["out"][:, 0])


# ---------------------------------------------------------------------------------------------------
# Other input sizes, training, surface
# ---------------------------------------------------------------------------------------------------


def _tokens_entering_block0(model, x):
    """What block 0 receives: (B, P + N, C). The caller zeroes the patch embedding, so the grid tokens are
    the position embedding alone."""
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.inference_mode():
        model(x)
    hook.remove()
    return seen["x"]


@pytest.mark.parametrize("sep", [True, False])
def test_pos_embed_resampled_to_another_clip(sep, device):
    """Random (non-constant) embeddings of a 4x8x12 grid meet a 6x12x10 clip: separate embeddings are
    resampled bicubic in space and linear in time, a joint one trilinear, as the interpolation formulas
    of tests/_interpolation.py give them; the class token keeps its own."""
    from _interpolation import bicubic, linear, trilinear

    torch.manual_seed(0)
    C = 8
    model = stts.create_model("mvit_b_16x4", embed_dim=C, depth=2, num_heads=1, dim_mul=[[1, 2.0]],
                              head_mul=[[1, 2.0]], pool_q_stride=[[1, 1, 2, 2]], pool_kv_stride_adaptive=[1, 4, 4],
                              img_size=(32, 48), num_frames=8, num_classes=3, sep_pos_embed=sep).eval()
    assert model.patch_grid == (4, 8, 12)
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        for name, p in model.named_parameters():
            if name == "cls_token" or name.startswith("pos_embed"):
                p.normal_()
    x = torch.randn(1, 3, 12, 48, 40)  # -> a 6 x 12 x 10 token grid
    tokens = _tokens_entering_block0(model.to(device), x.to(device)).cpu().double()
    if sep:
        spatial = bicubic(model.pos_embed_spatial.detach().cpu().view(8, 12, C), (12, 10))  # (H, W, C)
        temporal = linear(model.pos_embed_temporal.detach().cpu().view(4, C), 6)  # (T, C)
        expected = (temporal[:, None, None] + spatial[None]).reshape(6 * 12 * 10, C)  # (t, h, w) raster order
        cls = model.cls_token + model.pos_embed_class
    else:
        pos = model.pos_embed.detach().cpu()[0]  # (1 + 4*8*12, C)
        expected = trilinear(pos[1:].view(4, 8, 12, C), (6, 12, 10)).reshape(-1, C)
        cls = model.cls_token + pos[:1]
    assert tokens.shape == (1, 1 + 6 * 12 * 10, C)
    torch.testing.assert_close(tokens[0, 1:], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[0, 0], cls.detach().cpu().double().view(C), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sep", [True, False])
def test_other_input_sizes_run(sep):
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=4,
                              sep_pos_embed=sep).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 12, 96, 80)).shape == (1, 4)


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=5,
                              selection=parse_plan("T0_0.5-S4_0.6", sigma=0.1)).train()
    x = torch.randn(2, 3, 8, 64, 64)
    F.cross_entropy(model(x), torch.tensor([1, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    scorer_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith("selectors.")]
    assert len(scorer_grads) == 20 and sum(scorer_grads) > 0


def test_timm_surface():
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=5)
    assert model.num_classes == 5 and model.num_features == 64
    assert model.no_weight_decay() == {"cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}
    model.reset_classifier(11)
    assert model.head.out_features == 11 and model.num_classes == 11
    model.reset_classifier(0)
    with torch.inference_mode():
        assert model.eval()(torch.randn(1, 3, 8, 64, 64)).shape == (1, 64)
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        model(torch.randn(3, 8, 64, 64))


def test_mean_pooled_variant_without_class_token():
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=3,
                              class_token=False, selection="T0_0.5-S4_0.6").eval()
    assert model.cls_token is None and model.num_prefix_tokens == 0
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 8, 64, 64)).shape == (2, 3)


def test_inference_fast_path_matches_the_autograd_path():
    """Under inference_mode the blocks add residuals and run GELU in place, fc2 accumulates into the
    residual and keys and values are computed only where their pools read; with autograd none of it
    (the same sums, in another order)."""
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=5,
                              selection="T0_0.5-S4_0.6").eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        fast = model(x)
    slow = model(x)
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=2e-6)


@pytest.mark.slow
def test_speed_benchmark_smoke(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "mvit_speed.py"
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(script), "--quick", "--json", str(out)], check=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows][0] == "mvit_b_16x4" and len(rows) == 6
    assert all(r["median_s"] > 0 and r["flop_ratio"] >= 1 for r in rows)


def test_non_square_clip_with_anchor():
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=(64, 96), num_frames=8, num_classes=3,
                              selection="S4_0.5").eval()
    with torch.inference_mode():
        _, kept = model(torch.randn(1, 3, 8, 64, 96), return_selections=True)
    assert kept["S4"].thw_in == (4, 4, 6) and kept["S4"].boxes[0, 0, 2].item() == 3  # isqrt(int(24 * 0.5))
