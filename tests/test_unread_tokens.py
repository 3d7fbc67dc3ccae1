"""MViT's forward skips the tokens nothing reads: the keys and values its strided pools never read, and
the last block's tokens other than the class token. The logits and the gradients stay those of the
full computation, and stts.flops still counts the published (full) computation unless asked."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import stts
from stts.flops import count_flops
from stts.models.mvit import TokenPool, _read_positions


def _set_skip(model, on: bool) -> None:
    for m in model.modules():
        if hasattr(type(m), "skip_unread_tokens"):
            m.skip_unread_tokens = on


def _small_mvit(**kw):
    # kv stride (1, 8, 8) on a 16x16 grid: block 0's pools read 5 of 16 rows and columns.
    return stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=5, **kw)


@pytest.mark.parametrize("size,kernel,stride,padding", [
    (n, k, s, p) for n, k, s, p in itertools.product((1, 2, 5, 7, 14, 16, 28, 56), (1, 2, 3, 4), (1, 2, 3, 4, 8), (0, 1, 2))
    if p <= k // 2 and n + 2 * p >= k])
def test_read_positions_are_the_positions_the_pool_reads(size, kernel, stride, padding):
    """Reference: the inputs whose value changes the output (the gradient of a positive-kernel conv), and
    whether a stride-`kernel` conv of those alone gives the full conv's output (then they must be named)."""
    x = torch.zeros(1, 1, size, requires_grad=True)
    F.conv1d(x, torch.ones(1, 1, kernel), stride=stride, padding=padding).sum().backward()
    read = [i for i in range(size) if x.grad[0, 0, i] != 0]
    torch.manual_seed(size * 100 + kernel * 10 + stride)
    v, w = torch.randn(1, 1, size), torch.randn(1, 1, kernel)
    full = F.conv1d(v, w, stride=stride, padding=padding)
    compact_is_exact = False
    if len(read) < size:
        part = F.conv1d(v[..., read], w, stride=kernel, padding=padding)
        compact_is_exact = part.shape == full.shape and torch.allclose(part, full, atol=1e-6)
    got = _read_positions(size, kernel, stride, padding)
    assert (got is not None) == compact_is_exact
    if got is not None:
        assert got == read


def test_mvit_b_kv_pools_read_a_fraction_of_the_grid():
    """Kernel 3, padding 1: output o reads rows s*o-1, s*o, s*o+1 (row -1 is padding): stride 8 reads
    2 + 6 * 3 = 20 of 56 rows, stride 4 reads 2 + 13 * 3 = 41 of 56 and 2 + 6 * 3 = 20 of 28."""
    assert _read_positions(56, 3, 8, 1) == sorted({8 * o + t for o in range(7) for t in (-1, 0, 1)} - {-1})
    assert len(_read_positions(56, 3, 8, 1)) == 20 and len(_read_positions(56, 3, 4, 1)) == 41
    assert len(_read_positions(28, 3, 4, 1)) == 20
    assert _read_positions(28, 3, 2, 1) is None  # kernel > stride: every row is read
    assert _read_positions(8, 3, 1, 1) is None


@pytest.mark.parametrize("stride", [(1, 8, 8), (1, 4, 4), (2, 4, 1)])
def test_pool_of_the_read_positions_equals_the_full_pool(stride):
    torch.manual_seed(0)
    pool = TokenPool(4, (3, 3, 3), stride)
    thw, C = (4, 16, 16), 8
    x = torch.randn(2, 1 + 4 * 16 * 16, C)
    full, full_thw = pool(x, thw, 1)
    axes = pool.read_positions(thw)
    assert axes is not None
    grid = x[:, 1:].reshape(2, *thw, C)
    for dim, positions in enumerate(axes, start=1):
        if positions is not None:
            grid = grid[(slice(None),) * dim + (torch.tensor(positions),)]
    assert grid[0].numel() < x[0, 1:].numel()  # fewer positions than the grid
    part, part_thw = pool.forward_read(grid, thw, axes, x[:, :1])
    assert part_thw == full_thw
    torch.testing.assert_close(part, full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("selection", [None, "T0_0.5-S4_0.6"])
def test_skipping_unread_tokens_keeps_the_logits(selection):
    torch.manual_seed(0)
    model = _small_mvit(selection=selection).eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode():
        fast, kept = model(x, return_selections=True)
        _set_skip(model, False)
        full, kept_full = model(x, return_selections=True)
    torch.testing.assert_close(fast, full, rtol=0, atol=2e-6)
    assert fast.abs().max() > 0.05  # not a vacuous comparison
    for name in kept:
        assert torch.equal(kept[name].indices, kept_full[name].indices)


def test_last_block_at_the_class_token_keeps_the_gradients():
    """In training the last block computes its class token alone: the loss and every gradient stay."""
    torch.manual_seed(0)
    model = _small_mvit(selection="T0_0.5", drop_path_rate=0.0, head_drop=0.0).train()
    x, y = torch.randn(2, 3, 8, 64, 64), torch.tensor([1, 3])
    seeds = torch.tensor([5, 6])
    grads = []
    for on in (True, False):
        _set_skip(model, on)
        model.zero_grad()
        loss = F.cross_entropy(model(x, noise_seeds=seeds), y)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l_on, g_on), (l_off, g_off) = grads
    torch.testing.assert_close(l_on, l_off, rtol=1e-6, atol=0)
    assert g_on.keys() == g_off.keys() and len(g_on) > 50
    for name in g_on:
        scale = float(g_off[name].abs().max())
        if scale < 1e-6:  # zero by construction, up to rounding (k's LayerNorm bias, the scorer's last bias)
            assert float(g_on[name].abs().max()) < 1e-6, name
            continue
        # float32 rounding of sums in another order, relative to the largest entry of the gradient
        torch.testing.assert_close(g_on[name], g_off[name], rtol=1e-4, atol=1e-4 * scale)


def test_forward_features_still_returns_every_token():
    torch.manual_seed(0)
    model = _small_mvit().eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.inference_mode():
        feats = model.forward_features(x)
    assert feats.shape[1] == 1 + 4 * 2 * 2  # class token + the 4x2x2 map after three q-poolings


def test_computed_flops_drop_by_the_unread_tokens():
    """Dense MViT-B 16x224, by hand from its architecture (PySlowFast MVIT_B_16x4_CONV), 8 frames:
    the kv pools of blocks 0-2 (kernel 3, padding 1) read 20 of 56 (stride 8, block 0, C=96), 41 of 56
    (stride 4, block 1, C=192) and 20 of 28 (stride 4, block 2, C=192) rows and columns; the last block
    (393 tokens, C=768, 8 heads of 96, MLP 3072) computes q, attention, proj and MLP for 1 token, not 393."""
    with torch.device("meta"):
        model = stts.create_model("mvit_b_16x4")
    published, computed = count_flops(model), count_flops(model, as_published=False)
    products = lambda fc: fc.by_operator["linear"] + fc.by_operator["matmul"]  # noqa: E731
    kv = 2 * 8 * ((56 * 56 - 20 * 20) * 96 * 96 + (56 * 56 - 41 * 41) * 192 * 192 + (28 * 28 - 20 * 20) * 192 * 192)
    last = 392 * (768 * 768 * 2 + 768 * 3072 * 2)  # q, proj, fc1, fc2
    attention = 8 * 392 * 393 * (96 + 96)  # q k^T and attn v of the 392 other queries
    assert products(published) - products(computed) == kv + last + attention
    assert published.total == pytest.approx(70.8e9, rel=1e-3)  # the published count is unchanged


def test_flops_command_reports_the_computed_count():
    from stts.commands.flops import flops_report

    report = flops_report("mvit_b_16x4_stts_t0.5_s0.7")
    with torch.device("meta"):
        model = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7")
    assert report["gflops"] == pytest.approx(26.95, abs=0.01)  # the official code's count
    assert report["computed_gflops"] == pytest.approx(count_flops(model, as_published=False).gflops)
    assert report["computed_gflops"] < report["gflops"] - 1.0
