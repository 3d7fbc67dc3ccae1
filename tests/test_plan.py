"""Plan strings, patch() and run_selectors on a toy backbone that implements the protocol."""

import pytest
import torch
from torch import nn

import stts
from stts.patch import run_selectors
from stts.plan import SelectionPlan, SelectorSpec, parse_plan
from stts.selectors import SELECTORS, AnchorSelector, TemporalSelector


@pytest.mark.parametrize("text,specs", [
    ("T0_0.5-S4_0.7", [SelectorSpec("T", 0, ratio=0.5), SelectorSpec("S", 4, ratio=0.7)]),
    ("t0_0.5_s4_0.7", [SelectorSpec("T", 0, ratio=0.5), SelectorSpec("S", 4, ratio=0.7)]),
    ("S4_0.7367-T0_0.5", [SelectorSpec("T", 0, ratio=0.5), SelectorSpec("S", 4, ratio=0.7367)]),
    ("T0_k4-S4_a12s1", [SelectorSpec("T", 0, keep=4), SelectorSpec("S", 4, anchor_size=12, anchor_stride=1)]),
    ("K2_0.25", [SelectorSpec("K", 2, ratio=0.25)]),
    ("T0_1", [SelectorSpec("T", 0, ratio=1.0)]),
])
def test_parse_and_round_trip(text, specs):
    plan = parse_plan(text)
    assert list(plan) == specs
    assert parse_plan(str(plan)) == plan


@pytest.mark.parametrize("text,message", [
    ("T0_1.5", "ratio 1.5 of T0 must be in"),
    ("T0_0", "ratio 0 of T0 must be in"),
    ("X0_0.5", "cannot read 'X0_0.5'"),
    ("T0_0.5+S4_0.7", "expected '-' between parts"),
    ("T0_0.5-T0_0.4", "two temporal selectors before 0"),
    ("S4_k3", "spatial anchor takes a ratio"),
    ("T0_a3", "for spatial anchors"),
    ("K0_0.5-T2_0.5", "token-level selection"),
    ("T0_0.5-", "trailing separator"),
])
def test_bad_plans_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_plan(text)
    assert repr(text) in str(info.value)  # the error quotes the plan


def test_plan_settings_and_dict_round_trip():
    plan = parse_plan("T0_0.5", sigma=0.1, jacobian="full")  # not the default (diagonal)
    assert plan.sigma == 0.1 and plan.jacobian == "full"
    assert SelectionPlan.from_dict(plan.to_dict()) == plan
    assert len(parse_plan(None)) == 0 and len(parse_plan("dense")) == 0


class ToyBackbone(nn.Module):
    """Four token-wise blocks on a (T, H, W) grid with a class token; dims change after block 1."""

    selection_kinds = "TS"

    def __init__(self, dims=(8, 8, 16, 16)):
        super().__init__()
        self.dims = dims
        self.blocks = nn.ModuleList(nn.Linear(dims[i], dims[min(i + 1, 3)]) for i in range(4))
        self.selectors = nn.ModuleDict()

    def selection_dim(self, index):
        if not 0 <= index < 4:
            raise ValueError(f"block index {index} out of range 0..3")
        return self.dims[index]

    def check_selection(self, spec):
        if spec.kind == "S" and spec.before == 0:
            raise ValueError("no anchors before block 0")

    def forward(self, x, thw, record=None):
        for i, blk in enumerate(self.blocks):
            x, thw = run_selectors(self.selectors, i, x, thw, record)
            x = blk(x)
        return x, thw


def test_patch_places_selectors_and_they_run_in_order():
    torch.manual_seed(0)
    model = stts.patch(ToyBackbone(), "S2_a2s1-T1_0.5")
    assert list(model.selectors) == ["T1", "S2"]
    assert isinstance(model.selectors["T1"], TemporalSelector) and model.selectors["T1"].scorer.dim == 16
    assert isinstance(model.selectors["S2"], AnchorSelector) and model.selectors["S2"].scorer.dim == 16
    assert str(model.plan) == "T1_0.5-S2_a2s1"
    model.eval()
    record = {}
    x = torch.randn(2, 1 + 4 * 3 * 3, 8)
    out, thw = model(x, (4, 3, 3), record)
    assert thw == (2, 2, 2) and out.shape == (2, 1 + 2 * 2 * 2, 16)
    assert set(record) == {"T1", "S2"} and record["S2"].thw_in == (2, 3, 3)
    # State dict keys are stable and predictable.
    assert "selectors.T1.scorer.embed.1.weight" in model.state_dict()


def test_patch_adds_to_an_existing_plan_and_settings_apply():
    model = stts.patch(ToyBackbone(), "S2_a2", sigma=0.2)
    stts.patch(model, "T1_0.5", jacobian="full")
    assert list(model.selectors) == ["T1", "S2"]
    assert model.selectors["T1"].jacobian == "full" and model.selectors["S2"].sigma == 0.2
    assert model.selectors["S2"].jacobian == "diagonal"  # the default


@pytest.mark.parametrize("plan,message", [
    ("S2_a2-T7_0.5", "cannot place T7_0.5 in ToyBackbone: block index 7 out of range"),
    ("S2_a2-S0_0.5", "no anchors before block 0"),
    ("S2_a2-K3_0.5", "does not support 'K' selection"),
    ("T1_0.25", "two temporal selectors before 1"),  # the merged plan is validated as a whole
])
def test_patch_errors_leave_model_unchanged(plan, message):
    model = stts.patch(ToyBackbone(), "T1_0.5")
    with pytest.raises(ValueError, match=message):
        stts.patch(model, plan)
    assert list(model.selectors) == ["T1"] and str(model.plan) == "T1_0.5"


def test_patch_rejects_models_without_the_protocol():
    with pytest.raises(TypeError, match="does not support token selection"):
        stts.patch(nn.Linear(2, 2), "T0_0.5")


def test_patch_keeps_the_models_mode():
    model = ToyBackbone().eval()
    stts.patch(model, "T1_0.5")
    assert not model.selectors["T1"].training  # an eval model keeps selecting hard


class GridToy(ToyBackbone):
    """Checks each spec against the grid the selectors already in the model leave (like MViT/ViT)."""

    def check_selection(self, spec):
        frames = 4
        for sel in self.selectors.values():
            frames = sel.keep or int(frames * sel.ratio)
        if spec.kind == "T" and spec.keep and spec.keep > frames:
            raise ValueError(f"only {frames} frames reach block {spec.before}")


def test_check_selection_sees_earlier_selectors_of_the_same_plan():
    with pytest.raises(ValueError, match="only 2 frames reach block 2"):
        stts.patch(GridToy(), "T1_0.5-T2_k3")
    model = GridToy()
    with pytest.raises(ValueError):
        stts.patch(model, "T1_0.5-T2_k3")
    assert len(model.selectors) == 0  # rolled back


# ---------------------------------------------------------------------------------------------------
# The rules every selector and backbone use (SelectorSpec), by hand from the published rule:
# k = keep or int(n * ratio); a = floor(sqrt(int(H*W * ratio))), s = max((min(H, W) - a) // 2, 1).
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("part,thw,kept,anchor,out", [
    ("T0_0.5", (8, 56, 56), 4, None, (4, 56, 56)),          # MViT-B: 4 of 8 temporal tokens
    ("T0_0.875", (8, 56, 56), 7, None, (7, 56, 56)),        # 8 * 0.875 = 7 exactly
    ("T0_0.5625", (16, 56, 56), 9, None, (9, 56, 56)),      # Swin-B t0.5: 9 of 16
    ("T0_0.29", (100, 1, 1), 29, None, (29, 1, 1)),         # 0.29 * 100 = 28.999...: the epsilon rescues it
    ("T0_k3", (8, 7, 9), 3, None, (3, 7, 9)),
    ("S4_0.7367", (4, 14, 14), 144, (12, 1), (4, 12, 12)),  # int(196 * 0.7367) = 144 -> 12x12, stride 1
    ("S4_0.863", (7, 14, 14), 169, (13, 1), (7, 13, 13)),   # int(169.15) = 169 -> 13x13
    ("S4_0.2", (4, 7, 7), 9, (3, 2), (4, 3, 3)),            # int(9.8) = 9 -> 3x3, stride (7 - 3) // 2 = 2
    ("S1_0.6", (4, 8, 8), 38, (6, 1), (4, 6, 6)),           # the demo: int(38.4) = 38 -> 6x6
    ("S1_a5s2", (8, 7, 9), None, (5, 2), (8, 5, 5)),
    ("S1_a5", (8, 7, 9), None, (5, 1), (8, 5, 5)),          # stride max((7 - 5) // 2, 1) = 1
    ("S1_a3", (2, 9, 7), None, (3, 2), (2, 3, 3)),          # the shorter side sets the stride: (7 - 3) // 2
    ("K2_0.25", (8, 14, 14), 392, None, (1, 1, 392)),       # a flat sequence of 1568 / 4 tokens
    ("K2_k10", (1, 1, 40), 10, None, (1, 1, 10)),
])
def test_selector_spec_rules(part, thw, kept, anchor, out):
    spec = parse_plan(part).specs[0]
    T, H, W = thw
    if kept is not None:
        assert spec.kept({"T": T, "S": H * W, "K": T * H * W}[spec.kind]) == kept
    if anchor is not None:
        assert spec.anchor(H, W) == anchor
    assert spec.out_grid(thw) == out


def test_selectors_run_their_specs_rule():
    """A selector's output grid is its spec's (the rule lives once)."""
    torch.manual_seed(0)
    for part, thw in (("T0_0.5", (8, 3, 3)), ("S0_0.6", (2, 8, 8)), ("S0_a3s2", (2, 7, 9)), ("K0_0.25", (2, 4, 4))):
        spec = parse_plan(part).specs[0]
        sel = SELECTORS[spec.kind](16, spec=spec).eval()
        T, H, W = thw
        with torch.no_grad():
            _, new_thw = sel(torch.randn(2, T * H * W, 16), thw)
        assert new_thw == spec.out_grid(thw) == sel.out_grid(thw), part


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="X", before=0, ratio=0.5), "kind must be one of T, S, K"),
    (dict(kind="T", before=0), "exactly one of ratio and keep, got none"),
    (dict(kind="T", before=0, ratio=0.5, keep=2), "exactly one of ratio and keep, got ratio, keep"),
    (dict(kind="S", before=0, keep=2), "exactly one of ratio and anchor_size, got keep"),
    (dict(kind="K", before=0, anchor_size=2), "exactly one of ratio and keep, got anchor_size"),
    (dict(kind="T", before=0, ratio=1.5), "must be in"),
    (dict(kind="S", before=0, anchor_size=0), "anchor_size must be >= 1"),
])
def test_selector_spec_refuses_what_no_selector_can_run(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelectorSpec(**kwargs)


def test_plan_settings_are_one_set():
    plan = parse_plan("T0_0.5-S4_0.7", sigma=0.1, jacobian="full", policy="uniform")
    assert plan.settings == dict(num_samples=500, sigma=0.1, jacobian="full", variance_reduction="none",
                                 policy="uniform")
    again = plan.with_settings(sigma=0.2)
    assert again.specs == plan.specs and again.sigma == 0.2 and again.jacobian == "full"
    assert parse_plan(plan, num_samples=30).settings == {**plan.settings, "num_samples": 30}
    with pytest.raises(TypeError, match="unknown selection settings"):
        plan.with_settings(specs=())
    # patch builds every selector with the plan's settings, in its constructor.
    model = stts.patch(ToyBackbone(), parse_plan("T1_0.5-S2_a2", sigma=0.3, jacobian="diagonal", num_samples=7,
                                                 variance_reduction="loo", policy="uniform"))
    for sel in model.selectors.values():
        assert (sel.sigma, sel.jacobian, sel.num_samples, sel.variance_reduction, sel.policy) == \
            (0.3, "diagonal", 7, "loo", "uniform")
        assert sel.scorer is None  # a baseline policy has no scorer
