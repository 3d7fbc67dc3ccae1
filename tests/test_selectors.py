"""Selectors against naive loop implementations, the official fixtures, and the soft/hard contract."""

import pytest
import torch
import torch.nn.functional as F

from conftest import decode_input, fixture_state_dict, load_fixture
from stts.plan import SelectorSpec
from stts.scorer import Scorer, minmax_normalize
from stts.selectors import AnchorSelector, Selection, TemporalSelector, TokenSelector, set_sigma


def with_cls(x_grid):
    """(B, T*H*W, C) -> (B, 1 + T*H*W, C) with a recognisable class token."""
    B, _, C = x_grid.shape
    return torch.cat([torch.full((B, 1, C), 7.0), x_grid], dim=1)


def on_device(sel, device, x, thw):
    """Eval selection run on `device` from CPU inputs; outputs back on the CPU, the selector too."""
    out, new_thw, kept = sel.to(device)(x.to(device), thw, return_selection=True)
    sel.cpu()
    boxes = None if kept.boxes is None else kept.boxes.cpu()
    return out.cpu(), new_thw, Selection(kept.kind, kept.thw_in, kept.indices.cpu(), kept.scores.cpu(), boxes)


def naive_onehot_indicator(scores, k, sigma, S, seed):
    """Same noise stream as perturbed_topk with the default generator after manual_seed(seed)."""
    torch.manual_seed(seed)
    noise = torch.randn(scores.shape[0], S, scores.shape[1])
    idx = (scores[:, None, :] + sigma * noise).topk(k, dim=-1).indices.sort(-1).values
    return F.one_hot(idx, scores.shape[1]).float().mean(1)  # (B, K, N)


# ---------------------------------------------------------------------------------------------------
# Temporal
# ---------------------------------------------------------------------------------------------------


def naive_frame_scores(scorer, x, T, HW):
    B, _, C = x.shape
    feats = torch.zeros(B, T, 2 * C)
    for b in range(B):
        for t in range(T):
            frame = x[b, t * HW:(t + 1) * HW]  # (H*W, C)
            feats[b, t] = torch.cat([frame.mean(0), frame.max(0).values])
    raw = scorer(feats)
    return (raw - raw.min(1, keepdim=True).values) / (raw.max(1, keepdim=True).values
                                                       - raw.min(1, keepdim=True).values + 1e-5)


def test_temporal_eval_is_hard_gather_in_order(device):
    torch.manual_seed(0)
    B, T, H, W, C = 3, 8, 3, 4, 16
    sel = TemporalSelector(C, ratio=0.5).eval()
    grid = torch.randn(B, T * H * W, C)
    out, thw, kept = on_device(sel, device, with_cls(grid), (T, H, W))
    assert thw == (4, H, W) and out.shape == (B, 1 + 4 * H * W, C)
    assert torch.all(out[:, 0] == 7.0)  # class token untouched, first
    with torch.no_grad():
        scores = naive_frame_scores(sel.scorer, grid, T, H * W)
    for b in range(B):
        best = sorted(sorted(range(T), key=lambda t: -scores[b, t].item())[:4])
        assert kept.indices[b].tolist() == best
        ref = torch.cat([grid[b, t * H * W:(t + 1) * H * W] for t in best])
        torch.testing.assert_close(out[b, 1:], ref, rtol=0, atol=0)
    torch.testing.assert_close(kept.scores, scores)


def test_temporal_training_is_soft_combination():
    torch.manual_seed(0)
    B, T, H, W, C = 2, 8, 2, 2, 8
    sel = TemporalSelector(C, keep=3, num_samples=40, sigma=0.2).train()
    grid = torch.randn(B, T * H * W, C)
    torch.manual_seed(5)
    out, thw = sel(grid, (T, H, W))
    with torch.no_grad():
        scores = naive_frame_scores(sel.scorer, grid, T, H * W)
    P = naive_onehot_indicator(scores, 3, 0.2, 40, 5)  # (B, K, T)
    ref = torch.einsum("bkt,btc->bkc", P, grid.view(B, T, H * W * C)).reshape(B, 3 * H * W, C)
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=1e-5)
    assert thw == (3, H, W)


def test_temporal_official_fixture(device):
    """Scorer, normalisation and kept frames against the official MViT before block 0."""
    meta, io = load_fixture("mvit_small_t0_0.5_s4_0.7")
    sd = fixture_state_dict("mvit_small")
    x = decode_input(io["input"])
    # Token map entering block 0, written out from the fixture's description (conv stem + pos embed).
    tokens = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 4, 4),
                      padding=(1, 3, 3))  # (B, C, T, H, W)
    B, C, T, H, W = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, T*H*W, C)
    pos = sd["pos_embed_spatial"].repeat(1, T, 1) + sd["pos_embed_temporal"].repeat_interleave(H * W, 1)
    x_in = torch.cat([sd["cls_token"].expand(B, -1, -1), tokens], 1) + torch.cat([sd["pos_embed_class"], pos], 1)

    sel = TemporalSelector(C, ratio=meta["token_selection"]["temporal"]["keep_ratio"]).eval()
    prefix = "time_score_predictor.0.score_network."
    sel.scorer.load_state_dict({k[len(prefix):].replace("in_conv", "embed").replace("out_conv", "head"): v
                                for k, v in sd.items() if k.startswith(prefix)})
    with torch.no_grad():
        out, thw, kept = on_device(sel, device, x_in, (T, H, W))
        raw = sel.scorer(torch.cat([x_in[:, 1:].view(B, T, H * W, C).mean(2),
                                    x_in[:, 1:].view(B, T, H * W, C).amax(2)], -1))
    torch.testing.assert_close(raw, io["time_raw_scores"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept.scores, io["time_normalized_scores"], atol=1e-5, rtol=1e-5)
    assert torch.equal(kept.indices, io["time_indices"])
    assert thw == (4, H, W) and torch.equal(out[:, 0], x_in[:, 0])


# ---------------------------------------------------------------------------------------------------
# Spatial anchor
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw,ratio,expected", [
    (14, 0.7367, (12, 1, 9)),   # PAPER.md: MViT-B block 4
    (14, 0.863, (13, 1, 4)),    # the S4_0.9 published models
    (14, 0.6174, (11, 1, 16)),  # T0.4-S0.6
    (7, 0.7367, (6, 1, 4)),     # fixture mvit_small_t0_0.5_s4_0.7
    (7, 0.2, (3, 2, 9)),        # fixture mvit_small_t0_0.375_s4_0.2 (stride > 1)
])
def test_anchor_geometry_from_ratio(hw, ratio, expected):
    sel = AnchorSelector(8, ratio=ratio)
    a, s = sel.geometry(hw, hw)
    rows = (hw - a) // s + 1
    assert (a, s, rows * rows) == expected


def naive_anchor_pick(token_scores, H, W, a, s):
    """Per frame: mean token score of every a x a window at stride s (row-major), min-max, argmax."""
    means = []
    for r in range(0, H - a + 1, s):
        for c in range(0, W - a + 1, s):
            means.append(token_scores.view(H, W)[r:r + a, c:c + a].mean())
    means = torch.stack(means)
    return minmax_normalize(means[None])[0]


@pytest.mark.parametrize("H,W,ratio,stride", [(7, 7, 0.2, None), (6, 6, 0.7, None), (6, 8, None, 2)])
def test_anchor_eval_matches_naive_windows(H, W, ratio, stride, device):
    torch.manual_seed(0)
    B, T, C = 2, 3, 8
    kwargs = dict(ratio=ratio) if ratio else dict(anchor_size=3, stride=stride)
    sel = AnchorSelector(C, **kwargs).eval()
    a, s = sel.geometry(H, W)
    grid = torch.randn(B, T * H * W, C)
    out, thw, kept = on_device(sel, device, with_cls(grid), (T, H, W))
    assert thw == (T, a, a) and out.shape == (B, 1 + T * a * a, C)
    assert torch.all(out[:, 0] == 7.0)
    cols = (W - a) // s + 1
    frames = grid.view(B, T, H, W, C)
    for b in range(B):
        for t in range(T):
            with torch.no_grad():
                ts = sel.scorer(grid[b, t * H * W:(t + 1) * H * W][None])[0]
            anchor_scores = naive_anchor_pick(ts, H, W, a, s)
            best = int(anchor_scores.argmax())
            assert kept.indices[b, t].item() == best
            # Untrained scorers give anchor means within ~1e-4 of each other; min-max magnifies rounding.
            torch.testing.assert_close(kept.scores[b, t], anchor_scores, atol=2e-3, rtol=0)
            r, c = (best // cols) * s, (best % cols) * s
            assert kept.boxes[b, t].tolist() == [r, c, a, a]
            window = frames[b, t, r:r + a, c:c + a].reshape(a * a, C)  # row-major tokens
            torch.testing.assert_close(out[b, 1 + t * a * a:1 + (t + 1) * a * a], window, rtol=0, atol=0)


def test_anchor_training_is_soft_combination():
    torch.manual_seed(0)
    B, T, H, W, C = 2, 2, 5, 5, 8
    sel = AnchorSelector(C, anchor_size=3, stride=1, num_samples=30, sigma=0.3).train()
    grid = torch.randn(B, T * H * W, C)
    torch.manual_seed(9)
    out, _ = sel(grid, (T, H, W))
    frames = grid.view(B * T, H, W, C)
    with torch.no_grad():
        ts = sel.scorer(grid.view(B * T, H * W, C))
        scores = torch.stack([naive_anchor_pick(ts[i], H, W, 3, 1) for i in range(B * T)])
    P = naive_onehot_indicator(scores, 1, 0.3, 30, 9)[:, 0]  # (B*T, A)
    windows = torch.stack([frames[:, r:r + 3, c:c + 3].reshape(B * T, 9 * C) for r in range(3) for c in range(3)], 1)
    ref = torch.einsum("fa,fac->fc", P, windows).view(B, T * 9, C)
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=1e-5)


def test_anchor_too_large_is_an_error():
    with pytest.raises(ValueError, match="does not fit the 4x4"):
        AnchorSelector(8, anchor_size=5).geometry(4, 4)


# ---------------------------------------------------------------------------------------------------
# Token level
# ---------------------------------------------------------------------------------------------------


def test_token_eval_and_training(device):
    torch.manual_seed(0)
    B, T, H, W, C = 2, 2, 3, 3, 8
    sel = TokenSelector(C, ratio=0.5, num_samples=25, sigma=0.2)
    grid = torch.randn(B, T * H * W, C)
    with torch.no_grad():
        scores = minmax_normalize(sel.scorer(grid))
    sel.eval()
    out, thw, kept = on_device(sel, device, with_cls(grid), (T, H, W))
    k = int(18 * 0.5)
    assert thw == (1, 1, k) and out.shape == (B, 1 + k, C)
    for b in range(B):
        best = sorted(sorted(range(18), key=lambda i: -scores[b, i].item())[:k])
        assert kept.indices[b].tolist() == best
        torch.testing.assert_close(out[b, 1:], grid[b, best], rtol=0, atol=0)
    sel.train()
    torch.manual_seed(3)
    out, _ = sel(grid, (T, H, W))
    P = naive_onehot_indicator(scores, k, 0.2, 25, 3)
    torch.testing.assert_close(out.detach(), P @ grid, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Shared contract
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,thw", [
    (lambda C: TemporalSelector(C, ratio=0.5, sigma=0.3, num_samples=50), (4, 3, 3)),
    (lambda C: AnchorSelector(C, anchor_size=2, stride=1, sigma=0.3, num_samples=50), (2, 4, 4)),
    (lambda C: TokenSelector(C, ratio=0.5, sigma=0.3, num_samples=50), (2, 3, 3)),
])
@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
def test_gradients_reach_every_scorer_parameter(make, thw, jacobian):
    torch.manual_seed(0)
    C = 16
    sel = make(C).train()
    sel.jacobian = jacobian
    T, H, W = thw
    x = torch.randn(2, 1 + T * H * W, C, requires_grad=True)
    target = torch.randn(2, 1 + T * H * W, C)
    out, _ = sel(x, thw)
    (out * target[:, :out.shape[1]]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in sel.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name == "scorer.head.4.bias":
            # Min-max normalisation is shift-invariant: the last bias cancels exactly (its gradient is
            # rounding noise). It stays for checkpoint compatibility with the official scorer.
            assert p.grad.abs().max() < 1e-4 * sel.scorer.head[4].weight.grad.abs().max() + 1e-7, name
            continue
        assert p.grad.abs().sum() > 0, name


def test_uniform_and_random_policies():
    x = torch.randn(2, 8 * 4 * 4, 8)
    sel = TemporalSelector(8, ratio=0.5, policy="uniform").eval()
    _, _, kept = sel(x, (8, 4, 4), return_selection=True)
    assert kept.indices.tolist() == [[0, 2, 4, 6]] * 2
    assert sum(p.numel() for p in sel.parameters()) == 0
    anchor = AnchorSelector(8, anchor_size=2, stride=1, policy="uniform").eval()
    _, _, kept = anchor(x, (8, 4, 4), return_selection=True)
    assert torch.all(kept.indices == 4)  # the centre of the 3x3 anchor positions
    anchor = AnchorSelector(8, anchor_size=1, stride=1, policy="uniform").eval()
    _, _, kept = anchor(x, (8, 4, 4), return_selection=True)
    assert kept.boxes[0, 0].tolist() == [2, 2, 1, 1]  # 4x4 positions: a central one, not the flat middle
    rnd = TemporalSelector(8, ratio=0.5, policy="random")
    picks = {tuple(rnd(x, (8, 4, 4), return_selection=True)[2].indices[0].tolist()) for _ in range(20)}
    assert len(picks) > 1
    with pytest.raises(ValueError, match="policy"):
        TemporalSelector(8, ratio=0.5, policy="best")


def test_set_sigma_and_bad_counts():
    model = torch.nn.ModuleList([TemporalSelector(8, ratio=0.5), AnchorSelector(8, ratio=0.5)])
    set_sigma(model, 0.02)
    assert all(m.sigma == 0.02 for m in model)
    with pytest.raises(ValueError, match="exactly one"):
        TemporalSelector(8, ratio=0.5, keep=2)
    with pytest.raises(ValueError, match="cannot keep 9 of 8 frames"):
        TemporalSelector(8, keep=9)(torch.randn(1, 8 * 4, 8), (8, 2, 2))
    with pytest.raises(ValueError, match="cannot hold"):
        TemporalSelector(8, keep=2)(torch.randn(1, 10, 8), (8, 2, 2))


def test_scorer_structure():
    """Local half per token, global half averaged: permuting tokens permutes the scores."""
    torch.manual_seed(0)
    scorer = Scorer(16)
    x = torch.randn(2, 6, 16)
    perm = torch.randperm(6)
    torch.testing.assert_close(scorer(x)[:, perm], scorer(x[:, perm]))
    # The global half makes a token's score depend on the others.
    y = x.clone()
    y[:, 1:] += torch.randn(2, 5, 16)  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(scorer(x)[:, 0], scorer(y)[:, 0])
    with pytest.raises(ValueError, match="multiple of 4"):
        Scorer(6)


# ---------------------------------------------------------------------------------------------------
# Noise per clip (`seeds`): a clip's training output does not depend on the batch it is in
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,thw", [
    (lambda C, name: TemporalSelector(C, spec=SelectorSpec("T", name, ratio=0.5), sigma=0.3, num_samples=40), (4, 3, 3)),
    (lambda C, name: AnchorSelector(C, spec=SelectorSpec("S", name, anchor_size=2, anchor_stride=1), sigma=0.3,
                                    num_samples=40), (3, 4, 4)),
    (lambda C, name: TokenSelector(C, spec=SelectorSpec("K", name, ratio=0.5), sigma=0.3, num_samples=40), (2, 3, 3)),
])
def test_seeded_noise_follows_the_clip_not_the_batch(make, thw):
    """Clips 2 and 0 of a batch of 4, run as a batch of 2 with their seeds: the same soft outputs and the
    same scorer gradient (the sum of the two clips' shares); another seed, or the same seeds in a
    selector placed elsewhere (it mixes in its name), draws other noise."""
    torch.manual_seed(0)
    C = 8
    T, H, W = thw
    sel = make(C, 1).train()
    x = torch.randn(4, 1 + T * H * W, C)
    seeds = torch.tensor([101, 202, 303, 404])
    w = torch.randn(4, 1 + T * H * W, C)

    def run(rows, seeds, selector=sel):
        selector.zero_grad()
        out, _ = selector(x[rows], thw, seeds=seeds)
        (out * w[rows, :out.shape[1]]).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in selector.named_parameters()}

    out4, _ = run([0, 1, 2, 3], seeds)
    out2, grad2 = run([2, 0], seeds[[2, 0]])
    torch.testing.assert_close(out2, out4[[2, 0]], rtol=0, atol=1e-6)
    _, grad_a = run([2], seeds[[2]])
    _, grad_b = run([0], seeds[[0]])
    for n in grad2:
        if n != "scorer.head.4.bias":  # min-max cancels it: its gradient is rounding noise (see above)
            torch.testing.assert_close(grad2[n], grad_a[n] + grad_b[n], rtol=1e-4, atol=1e-5)
    other, _ = run([2, 0], seeds[[2, 0]] + 1)
    assert not torch.equal(other, out2)
    moved = make(C, 5)
    moved.load_state_dict(sel.state_dict())
    elsewhere, _ = run([2, 0], seeds[[2, 0]], moved)
    assert not torch.equal(elsewhere, out2)
    # In eval the choice is hard: no noise, seeds or not.
    sel.eval()
    with torch.no_grad():
        assert torch.equal(sel(x, thw, seeds=seeds)[0], sel(x, thw)[0])


def test_frames_of_a_clip_draw_independent_anchor_noise():
    """An anchor selector scores every frame of a clip: with the clip's seed its T rows still draw their
    own noise (one generator for the clip, T draws), so identical frames get different soft windows."""
    torch.manual_seed(0)
    T, H, W, C = 3, 4, 4, 8
    sel = AnchorSelector(C, anchor_size=2, stride=1, sigma=0.5, num_samples=6).train()
    frame = torch.randn(1, 1, H * W, C)
    x = with_cls(frame.expand(2, T, H * W, C).reshape(2, T * H * W, C))  # every frame the same
    with torch.no_grad():
        out, _ = sel(x, (T, H, W), seeds=torch.tensor([5, 6]))
    windows = out[:, 1:].reshape(2, T, 4 * C)
    assert not torch.equal(windows[:, 0], windows[:, 1]) and not torch.equal(windows[:, 1], windows[:, 2])
