"""Training-free policies (stts.policies): naive references written with loops, clips whose changing
frames and salient tokens are known by construction, every selector kind, every backbone end to end
(what each selector keeps is the reference's pick on the tokens it was given), and the plumbing
(patch, set_policy, run configs, checkpoints, eval / bench / flops / visualize)."""

import json
import math

import pytest
import torch

import stts
from stts.patch import set_policy
from stts.policies import POLICIES, saliency, temporal_change
from stts.selectors import AnchorSelector, TemporalSelector, TokenSelector
from test_engine_helpers import TINY_MVIT, one_thread, synth  # noqa: F401 (fixtures)

TOKEN_POLICIES = ("change", "saliency")


# --- naive references -------------------------------------------------------------------------------

def naive_token_scores(policy: str, x: torch.Tensor) -> torch.Tensor:
    """The definitions of stts.policies, frame by frame in float64: x (B, T, L, C) -> (B, T, L)."""
    B, T, L, C = x.shape
    x = x.double()
    out = torch.zeros(B, T, L, dtype=torch.float64)
    for b in range(B):
        frames = [x[b, t] - x[b, t].sum(0) / L for t in range(T)]  # each token minus its frame's mean
        for t in range(T):
            if policy == "saliency":
                out[b, t] = (frames[t] ** 2).sum(-1).sqrt()
                continue
            nearest = sorted((n for n in range(T) if n != t), key=lambda n: (abs(n - t), n))[:2]
            out[b, t] = sum(((frames[t] - frames[n]) ** 2).sum(-1).sqrt() for n in nearest) / len(nearest)
    return out


def minmax(s: torch.Tensor) -> torch.Tensor:
    lo, hi = s.min(-1, keepdim=True).values, s.max(-1, keepdim=True).values
    return (s - lo) / (hi - lo + 1e-5)


def naive_candidates(kind: str, token_scores: torch.Tensor, thw, a: int = 0, s: int = 0) -> torch.Tensor:
    """Token scores (B, T, H*W) -> candidate scores: frames (B, T) by their tokens' mean; anchors
    (B, T, A) by the mean of each a x a window (row-major positions, stride s); tokens (B, T*H*W)."""
    B = token_scores.shape[0]
    T, H, W = thw
    if kind == "T":
        return minmax(torch.stack([torch.stack([token_scores[b, t].mean() for t in range(T)]) for b in range(B)]))
    if kind == "K":
        return minmax(token_scores.reshape(B, T * H * W))
    grid = token_scores.reshape(B, T, H, W)
    starts = [(r, c) for r in range(0, H - a + 1, s) for c in range(0, W - a + 1, s)]
    means = torch.tensor([[[float(grid[b, t, r:r + a, c:c + a].mean()) for r, c in starts] for t in range(T)]
                          for b in range(B)], dtype=token_scores.dtype)
    return minmax(means)


def top(scores: torch.Tensor, k: int) -> list:
    """The k best of each row, ascending (a plain sort: the reference's choice)."""
    return [sorted(sorted(range(row.numel()), key=lambda i: -float(row[i]))[:k]) for row in scores]


# --- clips known by construction ----------------------------------------------------------------------

def changing_clip(B=2, T=6, H=3, W=3, C=5, *, event_frames=(2, 3), event_token=(0, 0), seed=0):
    """A static scene plus a per-frame shift (what a temporal position embedding adds; not change) and
    faint noise; in clip b, frame event_frames[b] has a large change at token `event_token`.
    -> x (B, T, H*W, C), a copy without the per-frame shift."""
    g = torch.Generator().manual_seed(seed)
    scene = torch.randn(B, 1, H * W, C, generator=g).expand(B, T, H * W, C)
    noise = 0.05 * torch.randn(B, T, H * W, C, generator=g)
    shift = 3.0 * torch.randn(B, T, 1, C, generator=g)
    plain = scene + noise
    p = event_token[0] * W + event_token[1]
    for b, t in enumerate(event_frames):
        plain[b, t, p] += 8.0 * torch.randn(C, generator=g).sign()
    return plain + shift, plain


@pytest.mark.parametrize("policy", TOKEN_POLICIES)
def test_token_scores_match_the_naive_definition(policy):
    x, _ = changing_clip()
    fn = {"change": temporal_change, "saliency": saliency}[policy]
    torch.testing.assert_close(fn(x).double(), naive_token_scores(policy, x), atol=1e-4, rtol=1e-5)
    # Few frames: two (each the other's only neighbour) and three (the ends share the middle one).
    for few in (x[:, :2], x[:, 1:4]):
        torch.testing.assert_close(fn(few).double(), naive_token_scores(policy, few), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("policy", TOKEN_POLICIES)
def test_a_shift_of_the_whole_frame_is_not_content(policy):
    """The centring: a per-frame offset (MViT's temporal position embedding) leaves every score alone."""
    shifted, plain = changing_clip()
    fn = {"change": temporal_change, "saliency": saliency}[policy]
    torch.testing.assert_close(fn(shifted), fn(plain), atol=1e-4, rtol=1e-5)


def test_change_knows_the_changing_frame_and_token():
    x, _ = changing_clip(event_frames=(2, 4), event_token=(1, 2))
    s = temporal_change(x)  # (B, T, L)
    assert s.mean(-1).argmax(-1).tolist() == [2, 4]  # the changed frame of each clip
    assert s.flatten(1).argmax(-1).tolist() == [2 * 9 + 5, 4 * 9 + 5]  # its changed token (row 1, col 2)
    for b, t in enumerate((2, 4)):  # its neighbours differ from one side only: half the score
        assert 0.4 < float(s[b, t - 1, 5] / s[b, t, 5]) < 0.6 and 0.4 < float(s[b, t + 1, 5] / s[b, t, 5]) < 0.6
    static = x[:1, :, :, :].clone()
    static[:] = x[0, 0]  # nothing changes: no token scores
    assert temporal_change(static).abs().max() < 1e-5
    with pytest.raises(ValueError, match="1 frame"):
        temporal_change(x[:, :1])


def test_saliency_knows_the_salient_token():
    x, _ = changing_clip(event_frames=(1, 5), event_token=(2, 0))
    s = saliency(x)
    assert s.flatten(1).argmax(-1).tolist() == [1 * 9 + 6, 5 * 9 + 6]
    assert s.mean(-1).argmax(-1).tolist() == [1, 5]  # the frame with an outlier spreads most


# --- each selector kind, on the hand-made clip ----------------------------------------------------------

@pytest.mark.parametrize("policy", TOKEN_POLICIES)
def test_temporal_selector_keeps_the_reference_frames(policy):
    x, _ = changing_clip(event_frames=(1, 4))
    B, T, L, C = x.shape
    sel = TemporalSelector(C, keep=3, policy=policy)  # training mode: a policy selects hard anyway
    assert sum(p.numel() for p in sel.parameters()) == 0
    prefix = torch.randn(B, 1, C)
    out, thw, kept = sel(torch.cat([prefix, x.reshape(B, T * L, C)], 1), (T, 3, 3), return_selection=True)
    ref = naive_candidates("T", naive_token_scores(policy, x), (T, 3, 3))
    torch.testing.assert_close(kept.scores.double(), ref, atol=1e-4, rtol=0)
    assert kept.indices.tolist() == top(ref, 3)
    assert all(t in row for t, row in zip((1, 4), kept.indices.tolist()))  # the changed frames, by construction
    expected = torch.stack([x[b, kept.indices[b]] for b in range(B)]).reshape(B, 3 * L, C)
    assert thw == (3, 3, 3) and torch.equal(out, torch.cat([prefix, expected], 1))
    # keep=1: the changed frame itself
    _, _, one = TemporalSelector(C, keep=1, policy=policy)(x.reshape(B, T * L, C), (T, 3, 3), return_selection=True)
    assert one.indices.tolist() == [[1], [4]]


@pytest.mark.parametrize("policy", TOKEN_POLICIES)
def test_anchor_selector_keeps_the_reference_window(policy):
    x, _ = changing_clip(event_frames=(2, 3), event_token=(3, 3), H=4, W=4)
    B, T, L, C = x.shape
    sel = AnchorSelector(C, anchor_size=2, stride=1, policy=policy).eval()
    out, thw, kept = sel(x.reshape(B, T * L, C), (T, 4, 4), return_selection=True)
    ref = naive_candidates("S", naive_token_scores(policy, x), (T, 4, 4), a=2, s=1)  # (B, T, 9)
    torch.testing.assert_close(kept.scores.double(), ref, atol=1e-4, rtol=0)
    assert kept.indices.tolist() == [[int(r.argmax()) for r in clip] for clip in ref]
    # In the changed frame, the one window covering the changed corner token (3, 3): position (2, 2) of 3x3.
    assert int(kept.indices[0, 2]) == 8 and int(kept.indices[1, 3]) == 8
    grid = x.reshape(B, T, 4, 4, C)
    r, c = divmod(int(kept.indices[0, 2]), 3)
    assert thw == (T, 2, 2)
    assert torch.equal(out.reshape(B, T, 2, 2, C)[0, 2], grid[0, 2, r:r + 2, c:c + 2])


@pytest.mark.parametrize("policy", TOKEN_POLICIES)
def test_token_selector_keeps_the_reference_tokens(policy):
    x, _ = changing_clip(event_frames=(0, 5), event_token=(1, 1))
    B, T, L, C = x.shape
    sel = TokenSelector(C, keep=5, policy=policy).eval()
    prefix = torch.randn(B, 1, C)
    out, thw, kept = sel(torch.cat([prefix, x.reshape(B, T * L, C)], 1), (T, 3, 3), return_selection=True)
    ref = naive_candidates("K", naive_token_scores(policy, x), (T, 3, 3))
    torch.testing.assert_close(kept.scores.double(), ref, atol=1e-4, rtol=0)
    assert kept.indices.tolist() == top(ref, 5)
    assert [0 * 9 + 4 in kept.indices[0].tolist(), 5 * 9 + 4 in kept.indices[1].tolist()] == [True, True]
    flat = x.reshape(B, T * L, C)
    assert thw == (1, 1, 5) and torch.equal(out[:, 1:], torch.stack([flat[b, kept.indices[b]] for b in range(B)]))


def test_policy_names():
    assert POLICIES == ("learned", "uniform", "random", "change", "saliency")
    with pytest.raises(ValueError, match="policy must be one of"):
        TokenSelector(8, keep=2, policy="motion")


# --- every backbone end to end ----------------------------------------------------------------------------

def _videomae(plan):
    transformers = pytest.importorskip("transformers")
    from stts.models.hf import vit_from_videomae

    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=8, tubelet_size=2, hidden_size=32,
                                         num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                         num_labels=3, use_mean_pooling=True)
    return stts.patch(vit_from_videomae(transformers.VideoMAEForVideoClassification(config).eval()), plan[0],
                      policy=plan[1]), (3, 8, 32, 32)


BACKBONES = {
    # MViT: S1 after block 0; S2 after block 1's q-pooling (a deeper, coarser map of 2x2 tokens).
    "mvit": lambda plan: (stts.patch(stts.create_model("mvit_b_16x4", num_classes=3, num_frames=8, img_size=32,
                                                       **TINY_MVIT), plan[0], policy=plan[1]), (3, 8, 32, 32)),
    "swin": lambda plan: (stts.patch(stts.create_model("swin3d_t", num_classes=3, embed_dim=24, depths=(2, 2, 2, 2),
                                                       num_heads=(1, 2, 4, 8), num_frames=8, img_size=112),
                                     plan[0], policy=plan[1]), (3, 8, 112, 112)),
    "vit": lambda plan: (stts.patch(stts.create_model("vit_s_16x16", num_classes=3, depth=4, embed_dim=32,
                                                      num_heads=2, img_size=32, num_frames=8, patch_size=8,
                                                      class_token=True, pos_embed="learned"),
                                    plan[0], policy=plan[1]), (3, 8, 32, 32)),
    "videomae": _videomae,
}
PLANS = {"mvit": "T0_0.5-S1_0.6-S2_a1", "swin": "T0_0.5-S1_a7-S2_a3", "vit": "T0_0.75-S1_0.75-K2_0.5",
         "videomae": "T0_0.75-K1_0.5"}
# What each selector leaves (T, H, W), by hand from the plan rules (kept = int(n * ratio); anchor side =
# isqrt(kept(H*W))) on the maps each backbone makes of an 8 x 32^2 (Swin 112^2) clip:
# MViT: 4x8x8 -> T0 keeps 2 frames; S1 isqrt(int(64 * 0.6) = 38) = 6; block 1 pools 6x6 to 3x3, S2 a1 -> 1x1.
# Swin: 4x28x28 -> T0 2; stage 1 merges to 14x14, S1 a7 -> 7x7; stage 2 merges to 4x4, S2 a3 -> 3x3.
# ViT: 4x4x4 -> T0 int(3.0) = 3; S1 isqrt(12) = 3; K2 int(27 * 0.5) = 13 of 3x3x3. VideoMAE: T0 3, K1 24 of 48.
KEPT = {"mvit": {"T0": (2, 8, 8), "S1": (2, 6, 6), "S2": (2, 1, 1)},
        "swin": {"T0": (2, 28, 28), "S1": (2, 7, 7), "S2": (2, 3, 3)},
        "vit": {"T0": (3, 4, 4), "S1": (3, 3, 3), "K2": (1, 1, 13)},
        "videomae": {"T0": (3, 4, 4), "K1": (1, 1, 24)}}


@pytest.mark.parametrize("policy", TOKEN_POLICIES)
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_each_backbone_keeps_what_the_reference_picks(backbone, policy):
    torch.manual_seed(1)
    model, size = BACKBONES[backbone]((PLANS[backbone], policy))
    model.eval()
    assert not [n for n, _ in model.named_parameters() if n.startswith("selectors.")]  # no scorers
    seen = {}
    for name, sel in model.selectors.items():
        sel.register_forward_hook(lambda m, args, out, n=name: seen.__setitem__(n, (args[0], args[1], out[0], out[1])))
    C, T, H, W = size
    x = torch.randn(2, C, 1, H, W).expand(2, C, T, H, W) + 0.05 * torch.randn(2, C, T, H, W)  # a static scene
    x[:, :, 2:4, :8, :8] += 4.0  # and an event in video frames 2-3 (temporal token 1 of each backbone)
    with torch.no_grad():
        _, record = model(x, return_selections=True)
    assert list(record) == list(model.selectors)
    assert {n: v[3] for n, v in seen.items()} == KEPT[backbone]
    for name, kept in record.items():
        tokens, thw, out, _ = seen[name]
        T, H, W = thw
        P = tokens.shape[1] - T * H * W
        assert out.shape[:2] == (2, P + math.prod(KEPT[backbone][name])), name  # the kept tokens, nothing else
        grid = tokens[:, P:].reshape(2, T, H * W, -1)
        ref_tokens = naive_token_scores(policy, grid)
        spec = model.selectors[name].spec
        if spec.kind == "S":
            a, s = spec.anchor(H, W)
            ref = naive_candidates("S", ref_tokens, thw, a, s)
            # Window means of nearby tokens are close: min-max magnifies their float32 rounding.
            torch.testing.assert_close(kept.scores.double(), ref, atol=2e-3, rtol=0)
            assert kept.indices.tolist() == [[int(r.argmax()) for r in clip] for clip in kept.scores], name
            cols = (W - a) // s + 1
            frames = grid.reshape(2, T, H, W, -1)
            windows = [[frames[b, t, (i // cols) * s:(i // cols) * s + a, (i % cols) * s:(i % cols) * s + a]
                        for t, i in enumerate(kept.indices[b].tolist())] for b in range(2)]
            want = torch.stack([torch.stack(w) for w in windows]).reshape(2, T * a * a, -1)
        else:
            ref = naive_candidates(spec.kind, ref_tokens, thw)
            # A static scene's frames score alike: min-max over them magnifies float32 rounding.
            torch.testing.assert_close(kept.scores.double(), ref, atol=2e-3, rtol=0)
            k = kept.indices.shape[1]
            assert kept.indices.tolist() == top(kept.scores, k), name
            assert (ref.gather(1, kept.indices) >= ref.topk(k).values[:, -1:] - 2e-3).all(), name
            if spec.kind == "T":
                want = torch.stack([grid[b, kept.indices[b]] for b in range(2)]).reshape(2, -1, grid.shape[-1])
            else:
                want = torch.stack([grid.reshape(2, T * H * W, -1)[b, kept.indices[b]] for b in range(2)])
        assert torch.equal(out[:, P:], want), name  # what the next block gets: the picked tokens
        assert torch.equal(out[:, :P], tokens[:, :P]), name
    assert all(1 in row for row in record["T0"].indices.tolist())  # the event's temporal token, by construction


def test_change_refuses_a_map_without_frames():
    vit = stts.create_model("vit_s_16x16", num_classes=3, depth=4, embed_dim=32, num_heads=2, img_size=32,
                            num_frames=8, patch_size=8)
    with pytest.raises(ValueError, match=r"change policy needs 2 frames.*before K3 has 1 \(1x1x32"):
        stts.patch(vit, "K1_0.5-K3_0.5", policy="change")
    assert len(vit.selectors) == 0  # left unchanged
    with pytest.raises(ValueError, match="before S1 has 1"):
        stts.patch(vit, "T1_k1-S1_0.5", policy="change")
    stts.patch(vit, "K1_0.5-K3_0.5", policy="saliency")  # saliency needs one frame only
    with torch.no_grad():
        assert torch.isfinite(vit.eval()(torch.randn(1, 3, 8, 32, 32))).all()


# --- plumbing --------------------------------------------------------------------------------------------

def _dense():
    torch.manual_seed(0)
    return stts.create_model("mvit_b_16x4", num_classes=3, num_frames=8, img_size=32, **TINY_MVIT).eval()


def test_policy_models_save_load_and_switch(tmp_path):
    x = torch.randn(2, 3, 8, 32, 32)
    model = stts.patch(_dense(), "T0_0.5-S1_0.6", policy="change")
    assert model.plan.policy == "change" and {s.policy for s in model.selectors.values()} == {"change"}
    stts.save_model(model, tmp_path / "change.pt")
    again = stts.load_model(tmp_path / "change.pt").eval()
    assert again.plan == model.plan and all(s.scorer is None for s in again.selectors.values())
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=0, rtol=0)
    # set_policy: the same specs, another policy; learned scorers are dropped, and not conjured back.
    learned = stts.create_model("mvit_b_16x4", selection="T0_0.5-S1_0.6", num_classes=3, num_frames=8, img_size=32,
                                **TINY_MVIT).eval()
    learned.load_state_dict(_dense().state_dict(), strict=False)
    set_policy(learned, "saliency")
    assert str(learned.plan) == "T0_0.5-S1_0.6" and learned.plan.policy == "saliency"
    assert not [n for n in learned.state_dict() if n.startswith("selectors.")]
    with torch.no_grad():
        want = stts.patch(_dense(), "T0_0.5-S1_0.6", policy="saliency")(x)
        torch.testing.assert_close(learned(x), want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="no trained scorers"):
        set_policy(learned, "learned")
    with pytest.raises(ValueError, match="no selectors"):
        set_policy(_dense(), "change")
    # One policy per model: a plan added to selectors of another policy is refused (the plan records one).
    with pytest.raises(ValueError, match="score by the saliency policy, and S2_a1 asks for learned"):
        stts.patch(learned, "S2_a1")
    assert list(learned.selectors) == ["T0", "S1"]
    stts.patch(learned, "S2_a1", policy="saliency")
    assert str(learned.plan) == "T0_0.5-S1_0.6-S2_a1" and learned.selectors["S2"].policy == "saliency"


def test_run_config_policy(tmp_path):
    from stts.config import load_config
    from stts.engine.build import build_model
    from stts.errors import ConfigError

    over = ["model.name=mvit_b_16x4", "model.selection=T0_0.5-S1_0.6", "model.policy=saliency",
            "data.num_frames=8", "data.crop_size=32", f"model.kwargs={json.dumps(TINY_MVIT)}"]
    model = build_model(load_config(None, over, check_paths=False), 3)
    assert model.plan.policy == "saliency" and {s.policy for s in model.selectors.values()} == {"saliency"}
    with pytest.raises(ConfigError, match="model.policy='motion': expected one of .*change, saliency"):
        load_config(None, over[:2] + ["model.policy=motion"], check_paths=False)


def test_flops_and_bench_name_the_policy(capsys):
    from stts.cli import main
    from stts.commands.flops import flops_report

    kw = dict(num_classes=3, **TINY_MVIT)
    rep = flops_report("mvit_b_16x4", selection="T0_0.5-S1_0.6", policy="change", frames=8, size=32, **kw)
    learned = flops_report("mvit_b_16x4", selection="T0_0.5-S1_0.6", frames=8, size=32, **kw)
    assert rep["policy"] == "change" and learned["policy"] == "learned"
    assert rep["scorer_params"] == 0 and learned["scorer_gflops"] > 0
    # The policies' cost is counted: one multiply-add per channel of each distance, on the maps the
    # selectors meet (read here from a real forward): change T+1 distinct frame pairs per position (T-1
    # adjacent, 0-2 and T-1 to T-3; 1 pair when T = 2), saliency one distance per token; uniform nothing.
    maps = {}
    model = stts.patch(_dense(), "T0_0.5-S1_0.6", policy="uniform")
    for name, sel in model.selectors.items():
        sel.register_forward_hook(lambda m, args, out, n=name: maps.__setitem__(n, (args[1], args[0].shape[-1])))
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 32, 32))
    pairs = {"change": lambda t: 1 if t == 2 else t + 1, "saliency": lambda t: t, "uniform": lambda t: 0}
    for policy, n in pairs.items():
        cost = sum(n(t) * h * w * c for (t, h, w), c in maps.values()) / 1e9
        got = rep if policy == "change" else flops_report("mvit_b_16x4", selection="T0_0.5-S1_0.6", policy=policy,
                                                          frames=8, size=32, **kw)
        assert got["scorer_gflops"] == pytest.approx(cost, rel=1e-9, abs=1e-15), policy
        assert got["gflops"] == pytest.approx(learned["gflops"] - learned["scorer_gflops"] + cost, rel=1e-9), policy
    kwargs = json.dumps(kw)
    assert main(["flops", "mvit_b_16x4", "--selection", "T0_0.5-S1_0.6", "--policy", "saliency", "--frames", "8",
                 "--size", "32", "--kwargs", kwargs]) == 0
    assert "T0_0.5-S1_0.6 (saliency policy)" in capsys.readouterr().out
    assert main(["bench", "mvit_b_16x4", "mvit_b_16x4:T0_0.5-S1_0.6@change", "mvit_b_16x4:T0_0.5-S1_0.6",
                 "--frames", "8", "--size", "32", "--kwargs", kwargs, "--repeats", "1", "--warmup", "0",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [(r["plan"], r["policy"]) for r in rows] == [(None, None), ("T0_0.5-S1_0.6", "change"),
                                                        ("T0_0.5-S1_0.6", "learned")]
    assert main(["flops", "mvit_b_16x4", "--policy", "change", "--kwargs", kwargs]) == 2
    assert "has none: give a selection plan" in capsys.readouterr().err


def test_a_bad_policy_name_is_one_error_line_naming_it(tmp_path, capsys):
    """Every entry point: `error: ...` naming the key (or option) and the value, exit status 2."""
    from stts.cli import main

    stts.save_model(_dense(), tmp_path / "dense.pt")
    stts.save_model(stts.patch(_dense(), "T0_0.5", policy="change"), tmp_path / "change.pt")
    kwargs = json.dumps(dict(num_classes=3, **TINY_MVIT))
    video = tmp_path / "missing.mp4"  # never opened: the policy is refused first
    for argv, names in (
        (["eval", "--checkpoint", str(tmp_path / "dense.pt"), "model.selection=T0_0.5", "model.policy=motion"],
         ("model.policy='motion'", "expected one of learned, uniform, random, change, saliency")),
        (["eval", "--checkpoint", str(tmp_path / "dense.pt"), "model.policy=change"],
         ("model.policy='change'", "give model.selection")),
        (["flops", "mvit_b_16x4", "--selection", "T0_0.5", "--policy", "motion", "--kwargs", kwargs],
         ("policy motion", "got 'motion'")),
        (["bench", "mvit_b_16x4:T0_0.5@motion", "--kwargs", kwargs], ("policy motion", "got 'motion'")),
        (["visualize", "--checkpoint", str(tmp_path / "change.pt"), str(video), "--policy", "motion"],
         ("--policy motion", "policy must be one of")),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], (argv, err)
        assert all(n in err[0] for n in names), (argv, err)


# --- training under a policy: well defined, the backbone fine-tunes on what the policy keeps -----------------

@pytest.mark.parametrize("kind", ["T", "S", "K"])
def test_in_training_a_policy_selects_as_in_eval_and_passes_gradient_to_the_kept_tokens(kind):
    """No soft top-K and no gradient through the scores: the training forward is the eval forward, and the
    gradient of the input is the output's gradient put back at the kept positions (zero elsewhere)."""
    x, _ = changing_clip(event_frames=(1, 4), H=4, W=4)
    B, T, L, C = x.shape
    make = {"T": lambda: TemporalSelector(C, keep=3, policy="change"),
            "S": lambda: AnchorSelector(C, anchor_size=2, stride=1, policy="change"),
            "K": lambda: TokenSelector(C, keep=7, policy="change")}[kind]
    flat = x.reshape(B, T * L, C)
    with torch.no_grad():
        want, thw, kept = make().eval()(flat, (T, 4, 4), return_selection=True)
    inp = flat.clone().requires_grad_(True)
    out, thw_train, _ = make().train()(inp, (T, 4, 4), return_selection=True)
    assert thw_train == thw and torch.equal(out, want)
    g = torch.randn_like(out)
    out.backward(g)
    ref = torch.zeros(B, T, 4, 4, C)  # the naive scatter of g to the positions the eval forward kept
    for b in range(B):
        if kind == "T":
            for j, t in enumerate(kept.indices[b].tolist()):
                ref[b, t] = g[b, j * L:(j + 1) * L].reshape(4, 4, C)
        elif kind == "S":
            for t, i in enumerate(kept.indices[b].tolist()):
                r, c = divmod(i, 3)
                ref[b, t, r:r + 2, c:c + 2] = g[b, t * 4:(t + 1) * 4].reshape(2, 2, C)
        else:
            for j, i in enumerate(kept.indices[b].tolist()):
                ref.view(B, T * L, C)[b, i] = g[b, j]
    torch.testing.assert_close(inp.grad, ref.reshape(B, T * L, C), atol=0, rtol=0)


def test_training_under_a_policy_has_no_scorer_warmup(synth, tmp_path):
    """`stts train` with model.policy=change: no scorers, so no scorer-only warm-up (the backbone trains
    from the first step, though optim.scorer_warmup_epochs=1), and the checkpoint keeps the policy."""
    import stts.engine.train as engine
    from test_engine_helpers import load, run_config, weights

    torch.manual_seed(0)
    start = stts.create_model("mvit_b_16x4", num_classes=3, num_frames=8, img_size=32, **TINY_MVIT)
    stts.save_model(start, tmp_path / "dense.pt")
    out = tmp_path / "run"
    cfg = run_config(synth, out, model={"policy": "change", "finetune": str(tmp_path / "dense.pt")},
                     optim={"warmup_epochs": 0, "scorer_warmup_epochs": 1},
                     train={"max_steps": 2, "eval_every": 0, "amp": "off"})
    engine.train(load(cfg))
    assert "scorer-only warm-up 0 epoch(s)" in (out / "train.log").read_text()
    trained = stts.load_model(out / "last.pt")
    assert trained.plan.policy == "change" and str(trained.plan) == cfg["model"]["selection"]
    after, before = weights(out / "last.pt"), start.state_dict()
    assert not [k for k in after if k.startswith("selectors.")] and after.keys() == before.keys()
    moved = [k for k in before if not torch.equal(after[k], before[k])]
    assert "patch_embed.proj.weight" in moved and "blocks.0.attn.qkv.weight" in moved, moved[:5]


def test_eval_scores_a_published_variant_by_model_policy(synth, tmp_path, capsys):
    """model.policy on a published STTS variant (no model.selection: its own plan) is honoured, not
    ignored: the report names the policy and its figures are those of the policy model."""
    from stts.cli import main
    from test_engine_helpers import run_config, write_config

    tiny_swin = {"embed_dim": 24, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8]}
    torch.manual_seed(0)
    trained = stts.create_model("swin3d_b_stts_t0.5", num_classes=3, num_frames=8, img_size=32, **tiny_swin)
    stts.save_model(trained, tmp_path / "variant.pt")
    cfg = write_config(tmp_path / "run.yaml", run_config(synth, tmp_path / "run", model={
        "name": "swin3d_b_stts_t0.5", "selection": "", "kwargs": tiny_swin}))
    base = ["eval", str(cfg), "--checkpoint", str(tmp_path / "variant.pt"), "eval.split=val"]
    assert main(base + ["model.policy=change", f"eval.report={tmp_path / 'change.json'}"]) == 0
    rep = json.loads((tmp_path / "change.json").read_text())
    assert (rep["plan"], rep["policy"]) == ("T0_0.5625", "change") and "(change policy)" in rep["note"]
    assert main(base + [f"eval.report={tmp_path / 'learned.json'}"]) == 0
    learned = json.loads((tmp_path / "learned.json").read_text())
    assert (learned["plan"], learned["policy"]) == ("T0_0.5625", "learned")
    assert learned["gflops_per_view"] > rep["gflops_per_view"]  # the scorers' cost is gone
