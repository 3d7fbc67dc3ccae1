"""The selection surface every backbone shares (stts.models.base.VideoClassifier), against the forward.

`grid_before` (what `stts.patch` and `check_selection` reason with) is computed from the specs' grid
rule and each backbone's own pooling / merging hook; the forward runs the real modules. For MViT, ViT
and Swin, at the default clip and another, each selector must meet exactly the grid `grid_before`
predicts, hand on its spec's `out_grid`, and see `selection_dim` channels. Also: a published variant
takes a plan with its own specs and other settings, and refuses other specs.
"""

import pytest
import torch

import stts
from stts.plan import parse_plan
from test_engine_helpers import TINY_MVIT

CASES = {
    # MViT: q-pooling at block 1 (stride 2) between S1 and S2.
    "mvit": (lambda: stts.create_model("mvit_b_16x4", selection="T0_0.5-S1_0.6-S2_a2", num_classes=3, num_frames=8,
                                       img_size=32, **TINY_MVIT), (3, 12, 48, 48)),
    # ViT: no pooling; token-level selection flattens the grid to (1, 1, K).
    "vit": (lambda: stts.create_model("vit_s_16x16", selection="T0_0.5-S1_0.5-K2_0.5-K3_k3", num_classes=3,
                                      depth=4, embed_dim=32, num_heads=2, img_size=32, num_frames=8, patch_size=8),
            (3, 12, 48, 40)),
    # Swin: patch merging after every stage but the last; anchors that keep the 7x7 windows whole.
    "swin": (lambda: stts.create_model("swin3d_t", selection="T0_0.5-S1_a7-S2_a3", num_classes=3, embed_dim=24,
                                       depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), num_frames=16, img_size=112),
             (3, 16, 56, 56)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("other_clip", [False, True])
def test_grid_before_is_what_the_forward_meets(name, other_clip):
    torch.manual_seed(0)
    make, other = CASES[name]
    model = make().eval()
    size = other if other_clip else model.input_size
    channels = {}
    for sel_name, sel in model.selectors.items():
        sel.register_forward_pre_hook(lambda m, args, n=sel_name: channels.__setitem__(n, args[0].shape[-1]))
    with torch.no_grad():
        _, record = model(torch.randn(2, *size), return_selections=True)
    assert list(record) == list(model.selectors)
    for sel_name, kept in record.items():
        spec = model.selectors[sel_name].spec
        assert kept.thw_in == model.grid_before(spec.before, size), sel_name
        assert kept.thw_out == spec.out_grid(kept.thw_in), sel_name
        assert channels[sel_name] == model.selection_dim(spec.before), sel_name


def test_place_errors_name_the_place():
    mvit, vit, swin = (make() for make, _ in CASES.values())
    with pytest.raises(ValueError, match="block index 3 does not exist; MViT has blocks 0..2"):
        mvit.selection_dim(3)
    with pytest.raises(ValueError, match="block index -1 does not exist"):
        vit.selection_dim(-1)
    with pytest.raises(ValueError, match="stage index 4 does not exist; SwinTransformer3d has stages 0..3"):
        swin.selection_dim(4)


def test_a_published_variant_takes_its_own_points_with_other_amounts_and_settings():
    small = dict(embed_dim=16, img_size=112, num_classes=3)
    with torch.device("meta"):
        own = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", **small)
        assert {(s.sigma, s.jacobian) for s in own.selectors.values()} == {(0.1, "diagonal")}
        plan = own.plan.with_settings(sigma=0.3, jacobian="full", num_samples=9)
        again = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", selection=plan, **small)
        assert {(s.sigma, s.jacobian, s.num_samples) for s in again.selectors.values()} == {(0.3, "full", 9)}
        assert again.plan == plan  # what its checkpoints record
        # A plan string restates the specs and keeps the variant's settings.
        text = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", selection="T0_0.5-S4_0.7367", **small)
        assert text.plan == own.plan
        # Other amounts at its points (what stts.set_plan gives, and its checkpoints record) keep its settings.
        other = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", selection="T0_0.25-S4_0.5", **small)
        assert str(other.plan) == "T0_0.25-S4_0.5" and other.plan.settings == own.plan.settings
        with pytest.raises(ValueError, match=r"already selects tokens at T0-S4 \(T0_0.5-S4_0.7367\).*got T0_0.5\)"):
            stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", selection=parse_plan("T0_0.5"), **small)
