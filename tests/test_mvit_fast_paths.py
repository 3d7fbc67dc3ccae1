"""MViT's speed paths against references that do not share their code.

- The depthwise pooling conv's hand-written backward (training) against finite differences (float64
  gradcheck) and against ATen's own convolution backward.
- The inference paths (MLP accumulating into the residual, position embedding written behind the class
  token, short-K linears, one-clip frame gather) against the same model with autograd on, where the
  plain ops run (F.linear with bias, add, cat, advanced-index gather).
"""

import pytest
import torch
import torch.nn.functional as F

import stts
from stts.models import mvit

CONV_CASES = [  # (C, T, H, W), kernel, stride, padding: MViT's pools and odd ones
    ((3, 3, 6, 5), (3, 3, 3), (1, 2, 2), (1, 1, 1)),
    ((2, 2, 9, 8), (3, 3, 3), (1, 4, 4), (1, 1, 1)),
    ((2, 3, 4, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((2, 4, 5, 6), (3, 3, 3), (2, 3, 2), (1, 1, 1)),
    ((2, 2, 6, 6), (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ((2, 3, 6, 5), (3, 5, 5), (1, 2, 2), (1, 2, 2)),
]


@pytest.mark.parametrize("shape, kernel, stride, padding", CONV_CASES)
def test_depthwise_conv_backward_matches_finite_differences(shape, kernel, stride, padding):
    torch.manual_seed(0)
    C = shape[0]
    x = torch.randn(2, *shape, dtype=torch.float64)
    x_cl = x.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3).requires_grad_()  # channels-last, as TokenPool
    w = torch.randn(C, 1, *kernel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mvit._DepthwiseConv3d.apply(a, b, stride, padding), (x_cl, w),
                                    fast_mode=True)


def test_depthwise_conv_backward_matches_aten_at_mvit_size():
    """float32, an MViT-B block-1 q pool (192 channels, 56x56, stride 2): both gradients as ATen's."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 20, 20, 192).permute(0, 4, 1, 2, 3).requires_grad_()  # (B, C, T, H, W) channels-last
    w = torch.randn(192, 1, 3, 3, 3, requires_grad=True)
    g = torch.randn(1, 192, 2, 10, 10)
    ref = torch.autograd.grad(F.conv3d(x, w, None, (1, 2, 2), (1, 1, 1), 1, 192), (x, w), g)
    out = mvit._DepthwiseConv3d.apply(x, w, (1, 2, 2), (1, 1, 1))
    torch.testing.assert_close(out, F.conv3d(x, w, None, (1, 2, 2), (1, 1, 1), 1, 192), rtol=0, atol=0)
    got = torch.autograd.grad(out, (x, w), g)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-4)


def test_training_gradients_equal_those_of_the_plain_conv(monkeypatch):
    """A whole training backward (pools with heads sharing one kernel, selection) with the fast
    backward and with ATen's: the same gradients."""
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=5,
                              selection="T0_0.5-S4_0.6", drop_path_rate=0.0, head_drop=0.0).train()
    x = torch.randn(2, 3, 8, 64, 64)

    def grads():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same perturbed top-K noise
        F.cross_entropy(model(x), torch.tensor([1, 3])).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads()

    class PlainConv:
        @staticmethod
        def apply(a, b, stride, padding):
            return F.conv3d(a, b, None, stride, padding, 1, a.shape[1])

    monkeypatch.setattr(mvit, "_DepthwiseConv3d", PlainConv)
    plain = grads()
    assert fast.keys() == plain.keys() and any("pool_q" in n for n in fast)
    scale = max(g.abs().max().item() for g in plain.values())
    for name in plain:  # a gradient that is zero in exact arithmetic (a scorer bias before min-max) is noise
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("class_token", [True, False])
def test_inference_paths_equal_the_autograd_paths(batch, class_token):
    """No grad: the inference paths; with grad (eval mode, hard selection either way): the plain ops.
    embed_dim 8 puts every block-0 linear on the short-K path; batch 1 takes the one-clip gather."""
    torch.manual_seed(0)
    model = stts.create_model("mvit_b_16x4", embed_dim=8, img_size=64, num_frames=8, num_classes=5,
                              class_token=class_token, selection="T0_0.5-S4_0.6").eval()
    with torch.no_grad():  # the init zeroes biases: give every bias and norm a value, so dropping one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(batch, 3, 8, 64, 64)
    with torch.inference_mode():
        fast_tokens, fast_kept = model.forward_features(x, return_selections=True)
        fast = model.forward_head(fast_tokens)
    tokens, kept = model.forward_features(x, return_selections=True)
    slow = model.forward_head(tokens)
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_tokens, tokens.detach(), rtol=1e-5, atol=1e-5)
    for name in ("T0", "S4"):
        assert torch.equal(fast_kept[name].indices, kept[name].indices)


def test_one_clip_frame_gather_keeps_the_chosen_frames_behind_the_prefix():
    """The selector's one-clip path against a gather written out by hand."""
    from stts.selectors import TemporalSelector

    torch.manual_seed(0)
    sel = TemporalSelector(6, ratio=0.5).eval()
    x = torch.randn(1, 2 + 6 * 5, 6)  # two prefix tokens, 6 frames of 5 tokens
    with torch.inference_mode():
        out, thw, kept = sel(x, (6, 5, 1), return_selection=True)
    frames = kept.indices[0].tolist()
    expected = torch.cat([x[0, :2]] + [x[0, 2 + 5 * f: 2 + 5 * (f + 1)] for f in frames])
    assert thw == (3, 5, 1) and frames == sorted(frames) and len(set(frames)) == 3
    assert torch.equal(out[0], expected)
