"""stts.data.transforms / randaugment / mixup against independent oracles: slicing, PIL, hand arithmetic."""

import math

import numpy as np
import pytest
import torch

from stts.data import randaugment as ra
from stts.data.mixup import MixupCutmix, cutmix_box, smooth_one_hot
from stts.data.transforms import (
    EvalTransform,
    TrainTransform,
    erase,
    hflip,
    normalize,
    random_erasing_params,
    random_resized_crop_params,
    resized_crop,
    short_side_resize,
    to_float,
    uniform_crop,
)


def coord_clip(T=3, H=40, W=60):
    """(T, 3, H, W) whose value says where it is: t * 1e6 + c * 1e5 + h * 100 + w."""
    t, c, h, w = torch.meshgrid(torch.arange(T), torch.arange(3), torch.arange(H), torch.arange(W), indexing="ij")
    return (t * 1e6 + c * 1e5 + h * 100 + w).double()


def same_frames(T=4, H=48, W=64, seed=0):
    """uint8 (T, H, W, 3) clip of T copies of one random frame."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (1, H, W, 3), generator=g, dtype=torch.uint8)
    return frame.expand(T, H, W, 3).contiguous()


# --- crops, flips, resizes ---------------------------------------------------------------------


def test_resized_crop_at_box_size_is_slicing():
    x = coord_clip()
    for box in [(0, 0, 40, 60), (3, 7, 20, 31), (39, 59, 1, 1)]:
        top, left, h, w = box
        assert torch.equal(resized_crop(x, box, (h, w)), x[..., top : top + h, left : left + w])


def test_random_resized_crop_params_respect_scale_ratio_and_bounds():
    g = torch.Generator().manual_seed(0)
    H, W = 240, 320
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = random_resized_crop_params(H, W, generator=g)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        areas.append(h * w / (H * W))
        ratios.append(w / h)
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= 0.08 * 0.95 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 * 0.93 and ratios.max() <= 4 / 3 * 1.07
    assert areas.min() < 0.12 and areas.max() > 0.9  # the whole range is used
    # fallback: a frame too narrow for any draw gets the centred box with the aspect clamped
    assert random_resized_crop_params(10, 100, scale=(0.99, 1.0), generator=g) == (0, 43, 10, 13)


def test_short_side_resize_shapes():
    x = torch.rand(2, 3, 240, 320)
    assert short_side_resize(x, 224).shape == (2, 3, 224, 299)
    assert short_side_resize(x.transpose(-1, -2), 224).shape == (2, 3, 299, 224)


@pytest.mark.parametrize("size", [80, 200])  # shrink (antialiased) and enlarge
def test_short_side_resize_matches_pil_bilinear(size):
    Image = pytest.importorskip("PIL.Image")
    clip = torch.randint(0, 256, (2, 120, 160, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = short_side_resize(to_float(clip), size)  # (T, 3, H', W') in [0, 1]
    H, W = out.shape[-2:]
    assert min(H, W) == size and W == round(160 * size / 120)
    for t in range(2):
        ref = np.asarray(Image.fromarray(clip[t].numpy()).resize((W, H), Image.BILINEAR), dtype=np.float64)
        diff = float(np.abs(out[t].permute(1, 2, 0).numpy() * 255 - ref).max())
        assert diff <= 1.0, (t, diff)  # grey levels; PIL rounds to uint8


def test_hflip_matches_numpy():
    x = coord_clip()
    assert np.array_equal(hflip(x).numpy(), x.numpy()[..., ::-1])


def test_uniform_crop_positions_by_slicing():
    x = coord_clip(H=40, W=100)
    assert torch.equal(uniform_crop(x, 40, 0, 3), x[..., :, 0:40])
    assert torch.equal(uniform_crop(x, 40, 1, 3), x[..., :, 30:70])
    assert torch.equal(uniform_crop(x, 40, 2, 3), x[..., :, 60:100])
    y = coord_clip(H=100, W=40)
    assert torch.equal(uniform_crop(y, 40, 2, 3), y[..., 60:100, :])
    assert torch.equal(uniform_crop(coord_clip(H=50, W=100), 30, 0, 1), coord_clip(H=50, W=100)[..., 10:40, 35:65])


def test_normalize_by_hand():
    x = torch.rand(2, 3, 4, 5)
    out = normalize(x, (0.45, 0.4, 0.5), (0.225, 0.2, 0.25))
    assert out[1, 1, 2, 3].item() == pytest.approx((x[1, 1, 2, 3].item() - 0.4) / 0.2, rel=1e-5)


def test_erase_same_rectangle_in_every_frame():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(5, 3, 32, 32)
    for _ in range(50):
        box = random_erasing_params(32, 32, generator=g)
        if box is None:
            continue
        top, left, h, w = box
        assert 0.02 * 0.5 <= h * w / 1024 <= 1 / 3 * 1.2
        patch = torch.randn(3, h, w, generator=g)
        out = erase(x, box, patch)
        for t in range(5):
            assert torch.equal(out[t, :, top : top + h, left : left + w], patch)
        assert (out != 0).sum() == 5 * (patch != 0).sum()  # nothing outside the box


def test_train_transform_applies_one_set_of_params_to_every_frame():
    # T identical frames stay identical through crop, flip, RandAugment and erasing.
    t = TrainTransform(32, erase_prob=1.0)
    for seed in range(20):
        out = t(same_frames(seed=seed), generator=torch.Generator().manual_seed(seed))
        assert out.shape == (3, 4, 32, 32)
        assert all(torch.equal(out[:, 0], out[:, i]) for i in range(1, 4))


def test_train_transform_is_a_function_of_its_generator():
    t = TrainTransform(32)
    clip = torch.randint(0, 256, (4, 48, 64, 3), dtype=torch.uint8)
    a = t(clip, generator=torch.Generator().manual_seed(5))
    b = t(clip, generator=torch.Generator().manual_seed(5))
    c = t(clip, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_transform_without_augmentation_is_crop_of_input():
    # RRC with scale (1, 1) and aspect of the frame -> whole frame, resized to the same size: identity.
    t = TrainTransform(48, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), flip=False, randaug_num_ops=0,
                       erase_prob=0, mean=(0, 0, 0), std=(1, 1, 1))
    clip = torch.randint(0, 256, (4, 48, 48, 3), dtype=torch.uint8)
    out = t(clip, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, to_float(clip).permute(1, 0, 2, 3))


def test_eval_transform_views():
    """Frames already at the short side (no resize): the three crops and the centre crop are slices of
    the raw pixels, (T, H, W, 3) -> (3, T, S, S), normalised."""
    clip = torch.randint(0, 256, (4, 80, 107, 3), dtype=torch.uint8)
    raw = clip.permute(3, 0, 1, 2).double() / 255  # (3, T, H, W)
    views = EvalTransform(64, 80, num_crops=3, mean=(0, 0, 0), std=(1, 1, 1))(clip)
    assert len(views) == 3
    for view, left in zip(views, (0, 22, 43)):  # round((107 - 64) * i / 2)
        torch.testing.assert_close(view.double(), raw[:, :, 8:72, left:left + 64])
    (centre,) = EvalTransform(64, 80, mean=(0.5, 0.25, 0), std=(0.5, 0.25, 1))(clip)
    mean, std = torch.tensor([0.5, 0.25, 0]).view(3, 1, 1, 1), torch.tensor([0.5, 0.25, 1]).view(3, 1, 1, 1)
    torch.testing.assert_close(centre.double(), ((raw - mean) / std)[:, :, 8:72, 22:86], atol=1e-6, rtol=1e-6)


# --- RandAugment -------------------------------------------------------------------------------

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402


def _img(seed=0, H=32, W=40):
    rng = np.random.default_rng(seed)
    img = (rng.random((H, W, 3)) * 200 + 20).astype(np.uint8)
    img[5:15, 5:20] = 250
    return img


def _apply(fn, img):
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255  # (H, W, 3) -> (1, 3, H, W)
    return (fn(x)[0].permute(1, 2, 0) * 255).round().numpy()


PIL_CASES = {
    "auto_contrast": (ra.auto_contrast, ImageOps.autocontrast, 1),
    "equalize": (ra.equalize, ImageOps.equalize, 0),
    "invert": (ra.invert, ImageOps.invert, 0),
    "posterize": (lambda x: ra.posterize(x, 2), lambda p: ImageOps.posterize(p, 2), 0),
    "solarize": (lambda x: ra.solarize(x, 77), lambda p: ImageOps.solarize(p, 77), 0),
    "color": (lambda x: ra.adjust_color(x, 0.4), lambda p: ImageEnhance.Color(p).enhance(0.4), 1),
    "contrast": (lambda x: ra.adjust_contrast(x, 1.6), lambda p: ImageEnhance.Contrast(p).enhance(1.6), 1),
    "brightness": (lambda x: ra.adjust_brightness(x, 1.6), lambda p: ImageEnhance.Brightness(p).enhance(1.6), 1),
    "sharpness": (lambda x: ra.adjust_sharpness(x, 1.8), lambda p: ImageEnhance.Sharpness(p).enhance(1.8), 1),
    "translate": (lambda x: ra.translate_x(x, 5), lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 5, 0, 1, 0), fillcolor=(128,) * 3), 0),
}


@pytest.mark.parametrize("name", list(PIL_CASES))
def test_colour_ops_match_pil(name):
    ours, pil, tol = PIL_CASES[name]
    img = _img()
    diff = np.abs(_apply(ours, img) - np.asarray(pil(Image.fromarray(img)), dtype=float))
    assert diff.max() <= tol


@pytest.mark.parametrize(
    "ours,matrix",
    [
        (lambda x: ra.rotate(x, 30), None),
        (lambda x: ra.shear_x(x, 0.2), (1, 0.2, 0, 0, 1, 0)),
        (lambda x: ra.shear_y(x, -0.2), (1, 0, 0, -0.2, 1, 0)),
    ],
    ids=["rotate", "shear_x", "shear_y"],
)
def test_geometric_ops_match_pil(ours, matrix):
    img = _img()
    p = Image.fromarray(img)
    ref = (p.rotate(30, resample=Image.BILINEAR, fillcolor=(128,) * 3) if matrix is None
           else p.transform(p.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=(128,) * 3))
    diff = np.abs(_apply(ours, img) - np.asarray(ref, dtype=float)).max(-1)
    # PIL and grid_sample treat the one-pixel seam at the image border differently; inside they agree.
    assert np.median(diff) <= 1 and (diff <= 2).mean() > 0.93


def test_rotate_90_is_rot90():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ra.rotate(x, 90), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)


@pytest.mark.parametrize("op", list(ra.OPS))
def test_every_op_same_params_for_every_frame(op):
    # geometric/pointwise ops on a clip equal the op on each frame; clip-statistics ops map
    # identical frames identically.
    aug = ra.RandAugment(7, 2, ops=(op,), prob=1.0)
    x = torch.rand(3, 3, 24, 24)
    same = x[:1].expand(3, 3, 24, 24)
    out = aug(same, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    if op not in ("AutoContrast", "Equalize", "ContrastIncreasing"):
        g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
        whole = aug(x, generator=g())
        per_frame = torch.cat([aug(x[t : t + 1], generator=g()) for t in range(3)])
        assert torch.allclose(whole, per_frame, atol=1e-6)


def test_randaugment_policy_draws():
    aug = ra.RandAugment(7, 4, magnitude_std=0.5)
    g = torch.Generator().manual_seed(0)
    counts, mags = [], []
    for _ in range(500):
        draws = aug.sample(g)
        counts.append(len(draws))
        mags += [m for _, m, _ in draws]
    assert np.mean(counts) == pytest.approx(2.0, abs=0.2)  # 4 ops at p = 0.5
    assert np.mean(mags) == pytest.approx(7.0, abs=0.1) and np.std(mags) == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        ra.RandAugment(ops=("Blur",))


# --- Mixup / CutMix ------------------------------------------------------------------------------


def test_smooth_one_hot_by_hand():
    y = smooth_one_hot(torch.tensor([2, 0]), 4, 0.1)
    assert torch.allclose(y[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(y.sum(1), torch.ones(2))


def test_mixup_by_hand():
    mix = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    x = torch.rand(2, 3, 2, 8, 8)
    video, target = mix(x, torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0))
    lam = mix.last["lam"]
    assert mix.last["mode"] == "mixup" and 0 < lam < 1
    assert torch.allclose(video[0], lam * x[0] + (1 - lam) * x[1])
    a, b = [0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]
    expect0 = [lam * p + (1 - lam) * q for p, q in zip(a, b)]
    assert torch.allclose(target[0], torch.tensor(expect0))


def test_cutmix_box_from_partner_in_every_frame_and_lam_is_area():
    mix = MixupCutmix(3, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    x = torch.stack([torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)])  # clip 0 all 0, clip 1 all 1
    for seed in range(20):
        video, target = mix(x, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(seed))
        top, bottom, left, right = mix.last["box"]
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        for t in range(4):
            assert torch.equal(video[0, :, t], inside.float().expand(3, 16, 16))
        lam = 1 - inside.float().mean().item()
        assert mix.last["lam"] == pytest.approx(lam)
        assert torch.allclose(target[0], torch.tensor([lam, 1 - lam, 0.0]))


def test_cutmix_box_area_close_to_one_minus_lam():
    g = torch.Generator().manual_seed(0)
    top, bottom, left, right = cutmix_box(100, 100, 0.75, g)
    assert (bottom - top) * (right - left) <= 2500
    areas = [(b - t) * (r - l) for t, b, l, r in (cutmix_box(100, 100, 0.75, g) for _ in range(300))]
    assert max(areas) == 2500  # unclipped boxes have exactly (1 - lam) of the area


def test_switch_prob_and_lam_distribution():
    mix = MixupCutmix(10)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 1, 8, 8), torch.arange(4)
    modes, lams = [], []
    for _ in range(400):
        mix(x, y, generator=g)
        modes.append(mix.last["mode"])
        if mix.last["mode"] == "mixup":
            lams.append(mix.last["lam"])
    assert 0.4 < modes.count("cutmix") / 400 < 0.6
    assert np.mean(lams) == pytest.approx(0.5, abs=0.05)  # Beta(0.8, 0.8) is symmetric
    assert np.std(lams) == pytest.approx(math.sqrt(0.25 / 2.6), abs=0.03)  # var = 1 / (4 (2a + 1))
