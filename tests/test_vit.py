"""Video ViT with STTS: transformers' VideoMAE as the oracle, naive references, FLOPs by hand, selection."""

import math

import numpy as np
import pytest
import torch

import stts
from stts.flops import count_flops
from stts.models.vit import Attention, VisionTransformer3d, checkpoint_filter_fn, sincos_table

TINY = dict(num_classes=5, num_frames=8, img_size=32, patch_size=8, tubelet_size=2, embed_dim=32, depth=3,
            num_heads=2)  # 4x4x4 = 64 tokens


def perturb_(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> None:
    """Move every parameter away from its init (zero biases, unit norms) so that a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


# ---------------------------------------------------------------------------------------------------
# Hugging Face VideoMAE interop (transformers is the oracle)
# ---------------------------------------------------------------------------------------------------


def hf_videomae(patch_size=8, use_mean_pooling=True, qv_bias=True):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(image_size=32, patch_size=patch_size, num_frames=8, tubelet_size=2,
                                         hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=128, num_labels=5, use_mean_pooling=use_mean_pooling,
                                         qv_bias=qv_bias)
    model = transformers.VideoMAEForVideoClassification(config)
    perturb_(model)
    return model.eval()


@pytest.mark.parametrize("patch_size,use_mean_pooling,qv_bias", [(8, True, True), (16, True, True),
                                                                   (8, False, True), (8, True, False)])
def test_videomae_logits_match_transformers(patch_size, use_mean_pooling, qv_bias, device):
    from stts.models.hf import vit_from_videomae

    hf = hf_videomae(patch_size, use_mean_pooling, qv_bias)
    model = vit_from_videomae(hf).eval().to(device)
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(pixel_values=x.transpose(1, 2)).logits  # transformers takes (B, T, C, H, W), on the CPU
        torch.testing.assert_close(model(x.to(device)).cpu(), expected, atol=1e-4, rtol=1e-4)
    assert model.blocks[0].norm1.eps == hf.config.layer_norm_eps
    assert (model.blocks[0].attn.qkv.bias is not None) == qv_bias


def test_videomae_folder_and_pretrained_file(tmp_path):
    """A save_pretrained folder (no transformers needed to read it), and `pretrained=` through
    checkpoint_filter_fn; the converted model saves and reloads as an stts checkpoint."""
    from stts.models.hf import videomae_kwargs, vit_from_videomae

    hf = hf_videomae()
    hf.save_pretrained(tmp_path / "videomae")
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=x.transpose(1, 2)).logits
        model = vit_from_videomae(tmp_path / "videomae").eval()
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)
        kwargs = videomae_kwargs(hf.config)
        direct = stts.create_model("vit_b_16x16", pretrained=str(tmp_path / "videomae" / "model.safetensors"),
                                   **kwargs).eval()
        torch.testing.assert_close(direct(x), expected, atol=1e-4, rtol=1e-4)
        stts.save_model(model, tmp_path / "stts.pt")
        torch.testing.assert_close(stts.load_model(tmp_path / "stts.pt").eval()(x), expected, atol=1e-4, rtol=1e-4)
        # With a plan: the backbone converts, the scorers start fresh; a new head drops the old one.
        sel = vit_from_videomae(tmp_path / "videomae", selection="T0_0.5", num_classes=3)
        assert "T0" in sel.selectors and sel.head.out_features == 3


def videomae_sincos(n: int, d: int) -> torch.Tensor:
    """VideoMAE's numpy definition, written out: angle = pos / 10000^(2*(j//2)/d), sin even, cos odd."""
    angles = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)  # (n, d)


def test_sincos_table_matches_videomae_formula():
    torch.testing.assert_close(sincos_table(10, 12), videomae_sincos(10, 12)[None])


def test_official_videomae_q_v_bias_keys():
    """Official VideoMAE files keep q_bias/v_bias (no k bias): they merge into qkv.bias exactly."""
    torch.manual_seed(0)
    model = VisionTransformer3d(**TINY).eval()
    perturb_(model)
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        ref = model(x)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("attn.qkv.bias"):
            q, _, vb = v.chunk(3)  # the k bias is dropped: softmax cannot see it
            sd[k.replace("qkv.bias", "q_bias")], sd[k.replace("qkv.bias", "v_bias")] = q, vb
        else:
            sd[k] = v
    fresh = VisionTransformer3d(**TINY).eval()
    fresh.load_state_dict(checkpoint_filter_fn(sd, fresh))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="blocks.0.attn.v_bias"):
        checkpoint_filter_fn({k: v for k, v in sd.items() if k != "blocks.0.attn.v_bias"}, fresh)


# ---------------------------------------------------------------------------------------------------
# Blocks against naive references
# ---------------------------------------------------------------------------------------------------


def test_attention_matches_naive():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4).eval()
    x = torch.randn(2, 10, 16)
    q, k, v = attn.qkv(x).view(2, 10, 3, 4, 4).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)  # 1/sqrt(hd), hd = 4
    expected = attn.proj((a @ v).transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(attn(x), expected)


def test_flops_by_hand():
    """count_flops equals the multiply-adds of a ViT written out (fvcore convention)."""
    model = VisionTransformer3d(**TINY)
    N, C, L = 64, 32, TINY["depth"]
    per_block = 12 * N * C * C + 2 * N * N * C + 2 * 5 * N * C  # qkv+proj+mlp, two attention matmuls, 2 LN
    expected = N * C * 3 * 2 * 8 * 8 + L * per_block + 5 * C + C * 5  # conv, blocks, fc_norm, head
    assert count_flops(model, (1, 3, 8, 32, 32)).total == expected


@pytest.mark.parametrize("name,gflops", [("vit_b_16x16", 180.0), ("vit_s_16x16", 57.0)])
def test_registered_vit_flops_match_videomae_paper(name, gflops):
    with torch.device("meta"):
        model = stts.create_model(name)
    assert model.input_size == (3, 16, 224, 224) and model.patch_grid == (8, 14, 14)
    assert count_flops(model).gflops == pytest.approx(gflops, rel=0.01)
    with torch.device("meta"):
        half = stts.create_model(name, selection="T0_0.5")
    # Half the tokens: linear layers halve, attention quarters; the scorer adds a little.
    assert count_flops(half).gflops < 0.46 * gflops


# ---------------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------------


def naive_vit_forward(model, x, kept, anchors):
    """The model's blocks with selection done by hand (tests/_selection_oracle.py) on the tokens entering
    each selector: -> (features after the final norm, logits). anchors: {name: (size, stride)}."""
    from _selection_oracle import naive_anchor, naive_temporal, naive_tokens

    tokens, thw = model.patch_embed(x)  # (B, N, C), grid (T, H, W)
    B, _, C = tokens.shape
    P = model.num_prefix_tokens
    prefix = (model.cls_token + model.pos_embed[:, :P]).expand(B, -1, -1)  # (B, P, C)
    z = torch.cat([prefix, tokens + model.pos_embed[:, P:]], 1)
    for i, blk in enumerate(model.blocks):
        for name, sel in model.selectors.items():
            if sel.before != i:
                continue
            prefix, grid = z[:, :P], z[:, P:]
            if sel.kind == "temporal":
                grid = naive_temporal(grid.view(B, *thw, C), sel, kept[name], kept[name].indices.shape[1])
            elif sel.kind == "anchor":
                grid = naive_anchor(grid.view(B, *thw, C), sel, kept[name], *anchors[name])
            else:
                grid = naive_tokens(grid, sel, kept[name], kept[name].indices.shape[1])[:, None, None]
            thw = grid.shape[1:4]
            z = torch.cat([prefix, grid.reshape(B, -1, C)], 1)
        z = blk(z)
    feats = model.norm(z)
    return feats, model.head(model.fc_norm(feats[:, P:].mean(1)))


@pytest.mark.parametrize("plan,anchors,kept_tokens", [
    ("T0_0.5-S1_0.5", {"S1": (2, 1)}, 2 * 2 * 2),  # 4 -> 2 frames, then a 2x2 of 4x4 (stride 1)
    ("S0_0.5-T2_0.5", {"S0": (2, 1)}, 2 * 2 * 2),
    ("T0_0.5-K2_0.5", {}, 16),  # 2x4x4 = 32 -> 16 tokens
])
def test_selection_eval_matches_naive_gathers(plan, anchors, kept_tokens, device):
    """Eval selection in the real model equals scoring and gathering by hand the tokens that enter each
    selector (patch + position embedding, then the blocks before it); the class token passes through."""
    torch.manual_seed(0)
    model = VisionTransformer3d(**TINY, class_token=True, pos_embed="learned")
    perturb_(model)
    stts.patch(model, plan)
    model.eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        feats, kept = model.to(device).forward_features(x.to(device), return_selections=True)
        logits = model.forward_head(feats)
        ref_feats, ref_logits = naive_vit_forward(model.cpu(), x, kept, anchors)
    assert set(kept) == {s.name for s in stts.parse_plan(plan)} and feats.shape == (2, 1 + kept_tokens, 32)
    torch.testing.assert_close(feats.cpu(), ref_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.cpu(), ref_logits, atol=1e-5, rtol=1e-5)


def test_tokens_carry_position_before_selection():
    """Eval with K0: the blocks see the kept (patch + position) tokens, gathered by the kept indices."""
    torch.manual_seed(0)
    model = VisionTransformer3d(**TINY, class_token=True, pos_embed="learned", global_pool="token")
    perturb_(model)
    stts.patch(model, "K0_0.25")
    model.eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        logits, kept = model(x, return_selections=True)
        tokens, _ = model.patch_embed(x)
        tokens = tokens + model.pos_embed[:, 1:]  # (B, 64, C)
        idx = kept["K0"].indices  # (B, 16)
        cls = (model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1)
        z = torch.cat([cls, tokens[torch.arange(2)[:, None], idx]], 1)
        for blk in model.blocks:
            z = blk(z)
        expected = model.head(model.norm(z)[:, 0])
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("pos", ["sincos", "learned"])
def test_pos_embed_for_another_clip(pos, device):
    """A 6x6x5 clip on a model built for 4x4x4 tokens: VideoMAE's sin-cos table for the new token count,
    or the learned embedding resampled trilinearly (the formulas of tests/_interpolation.py); the class
    token keeps its own. Read at block 0 with the patch embedding zeroed."""
    from _interpolation import trilinear

    torch.manual_seed(0)
    C = TINY["embed_dim"]
    model = VisionTransformer3d(**TINY, pos_embed=pos, class_token=True).eval()
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.cls_token.normal_()
        if pos == "learned":
            model.pos_embed.normal_()
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        model.to(device)(torch.randn(1, 3, 12, 48, 40).to(device))  # tubelets 2x8x8 -> 6 x 6 x 5 tokens
    tokens = seen["x"].cpu()
    assert tokens.shape == (1, 1 + 6 * 6 * 5, C)
    if pos == "sincos":
        torch.testing.assert_close(tokens[0, 1:], videomae_sincos(6 * 6 * 5, C), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tokens[0, 0], model.cls_token.detach().cpu().view(C))
    else:
        table = model.pos_embed.detach().cpu()[0]  # (1 + 4*4*4, C)
        expected = trilinear(table[1:].view(4, 4, 4, C), (6, 6, 5)).reshape(-1, C).float()
        torch.testing.assert_close(tokens[0, 1:], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tokens[0, 0], (model.cls_token + model.pos_embed[:, 0]).detach().cpu().view(C))


def test_selection_protocol_errors():
    with torch.device("meta"):
        model = stts.create_model("vit_b_16x16")
    assert model.selection_kinds == "TSK" and model.selection_dim(11) == 768
    with pytest.raises(ValueError, match="block index 12"):
        stts.patch(model, "T12_0.5")
    with pytest.raises(ValueError, match="15x15 anchor"):
        stts.patch(model, "S0_a15")
    with pytest.raises(ValueError, match="keeps 0 frames"):
        stts.patch(model, "T0_0.1")
    with pytest.raises(ValueError, match="token-level selection"):
        stts.patch(model, "K2_0.5-T4_0.5")


def test_backward_every_parameter_finite():
    torch.manual_seed(0)
    model = VisionTransformer3d(**TINY, drop_path_rate=0.1, class_token=True, pos_embed="learned")
    stts.patch(model, "T0_0.5-S1_0.6-K2_0.5", num_samples=16)
    model.train()
    model(torch.randn(2, 3, 8, 32, 32)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for sel in ("T0", "S1", "K2"):
        assert model.selectors[sel].scorer.embed[1].weight.grad.abs().sum() > 0, sel


def test_registry_and_surface():
    assert {"vit_b_16x16", "vit_s_16x16"} <= set(stts.list_models("vit_*"))
    model = stts.create_model("vit_s_16x16", num_classes=10, depth=1, selection="K0_0.5")
    assert str(model.plan) == "K0_0.5"
    model.reset_classifier(3)
    assert model.head.out_features == 3
    assert model.no_weight_decay() == set()  # sin-cos table is a buffer; no class token
    assert "pos_embed" not in model.state_dict()


@pytest.mark.slow
def test_full_size_vit_b_selection_forward():
    model = stts.create_model("vit_b_16x16", selection="T0_0.5-S0_0.5").eval()
    with torch.inference_mode():
        logits, kept = model(torch.randn(1, 3, 16, 224, 224), return_selections=True)
    assert logits.shape == (1, 400) and kept["S0"].boxes.shape == (1, 4, 4)
    assert math.isfinite(logits.sum().item())
