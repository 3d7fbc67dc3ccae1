"""Add token selection to a dense backbone in one line.

    model = stts.create_model("mvit_b_16x4", num_classes=400)
    stts.patch(model, "T0_0.5-S4_0.7")                # adds model.selectors["T0"], ["S4"]
    stts.patch(model, "T0_0.5", sigma=0.1, jacobian="diagonal")
    stts.patch(model, "T0_0.5-S4_0.7", policy="change")   # training-free: no scorers (stts.policies)

A backbone supports selection when it has (every stts backbone through `stts.models.base.VideoClassifier`)
- `selectors`: an `nn.ModuleDict` its forward runs through `run_selectors` before each block/stage;
- `selection_dim(index) -> int`: channels of the tokens entering block/stage `index` (ValueError if
  there is no such place);
- `selection_kinds`: the kinds it accepts, a string such as "TS" or "TSK";
- optionally `check_selection(spec)`: backbone rules (e.g. anchor sizes that keep Swin windows valid).
Each selector is built in one call from (spec, dim, the plan's settings) and holds its spec; selectors
are plain submodules, so state dicts read `selectors.T0.scorer.embed.1.weight`.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from stts.plan import KINDS, SelectionPlan, SelectorSpec, parse_plan
from stts.policies import MIN_FRAMES
from stts.selectors import SELECTORS

__all__ = ["patch", "set_policy", "build_selector", "run_selectors"]


def build_selector(spec: SelectorSpec, dim: int, plan: SelectionPlan) -> nn.Module:
    """The selector module for one spec, on tokens of `dim` channels, with the plan's settings."""
    return SELECTORS[spec.kind](dim, spec=spec, **plan.settings)


def patch(model: nn.Module, plan: "str | SelectionPlan", **settings) -> nn.Module:
    """Insert the selectors of `plan` into `model` (in place) and return it.

    `settings` (num_samples, sigma, jacobian, variance_reduction, policy) override the plan's. Raises
    ValueError naming the part of the plan the model cannot take; the model is left unchanged then.

    `policy` (stts.policies.POLICIES) is how the selectors score: "learned" builds a fresh scorer per
    selector (to be trained); "uniform", "random", "change", "saliency" need no parameters and no
    training, so any dense model runs under them at once. All selectors of a model share one policy
    (`set_policy` switches them all).
    """
    if not hasattr(model, "selection_dim") or not isinstance(getattr(model, "selectors", None), nn.ModuleDict):
        raise TypeError(f"{type(model).__name__} does not support token selection "
                        "(needs `selectors` ModuleDict and `selection_dim`)")
    plan = parse_plan(plan, **settings)
    old: SelectionPlan = getattr(model, "plan", None) or SelectionPlan()
    if len(old) and plan.policy != old.policy:  # one policy per model: the plan records one
        raise ValueError(f"the selectors of {old} score by the {old.policy} policy, and {plan} asks for "
                         f"{plan.policy}: give policy={old.policy!r}, or set_policy(model, ...) for all of them")
    merged = replace(plan, specs=tuple(sorted(old.specs + plan.specs, key=lambda spec: spec.order)))
    parse_plan(str(merged))  # the combination must be a valid plan too (e.g. nothing grid-based after K)
    kinds = getattr(model, "selection_kinds", "".join(KINDS))
    before = list(model.selectors.items())
    try:
        for spec in plan:
            if spec.kind not in kinds:
                raise ValueError(f"{type(model).__name__} does not support {spec.kind!r} selection ({spec}); "
                                 f"it takes {', '.join(kinds)}")
            try:
                dim = model.selection_dim(spec.before)
                if hasattr(model, "check_selection"):
                    # Selectors of this plan placed so far are already in the model, so the backbone
                    # checks each spec against the token map the earlier ones leave.
                    model.check_selection(spec)
                _check_policy(model, spec, plan.policy)
            except ValueError as e:
                raise ValueError(f"cannot place {spec} in {type(model).__name__}: {e}") from None
            sel = build_selector(spec, dim, plan)
            sel.train(model.training)  # a model in eval mode must keep selecting hard
            _insert_in_order(model.selectors, spec.name, sel)
    except BaseException:
        model.selectors.clear()
        model.selectors.update(before)
        raise
    model.plan = merged
    return model


def set_policy(model: nn.Module, policy: str) -> nn.Module:
    """Score every selector of `model` by `policy` (in place; same specs and other settings) and return it.

    The selectors are rebuilt: a training-free policy has no scorer, so trained scorers are dropped;
    going back to "learned" is refused unless the selectors already have scorers (new ones would be
    untrained). ValueError naming the problem; the model is left unchanged then.
    """
    plan: SelectionPlan | None = getattr(model, "plan", None)
    if plan is None or not len(plan):
        raise ValueError(f"{type(model).__name__} has no selectors to score: add a plan with stts.patch first")
    if policy == plan.policy:
        return model
    if policy == "learned":
        raise ValueError(f"the selectors of {plan} score by the {plan.policy} policy and have no trained scorers; "
                         "load a checkpoint trained with selection for the learned policy")
    before = list(model.selectors.items())
    model.selectors.clear()
    model.plan = None
    try:
        patch(model, plan.with_settings(policy=policy))
    except BaseException:
        model.selectors.clear()
        model.selectors.update(before)
        model.plan = plan
        raise
    return model


def _check_policy(model: nn.Module, spec: SelectorSpec, policy: str) -> None:
    """ValueError if `policy` needs more frames than the map `spec` meets at the default input (the change
    policy compares neighbouring frames: none after K, or after a T selector that keeps one frame)."""
    need = MIN_FRAMES.get(policy, 1)
    if need == 1 or not hasattr(model, "grid_before"):
        return
    thw = model.grid_before(spec.before)
    for sel in model.selectors.values():  # this plan's selectors placed so far, earlier at the same place
        if sel.before == spec.before and sel.spec.order < spec.order:
            thw = sel.out_grid(thw)
    if thw[0] < need:
        raise ValueError(f"the {policy} policy needs {need} frames, and the map before {spec.name} has "
                         f"{thw[0]} ({'x'.join(map(str, thw))}, T x H x W)")


def _insert_in_order(selectors: nn.ModuleDict, name: str, sel: nn.Module) -> None:
    """Keep the ModuleDict in execution order (by place, then T before S before K): run_selectors
    walks it in order, and state dicts list selectors the same way whatever order they were added."""
    items = sorted([*selectors.items(), (name, sel)], key=lambda kv: kv[1].spec.order)
    selectors.clear()
    selectors.update(items)


def run_selectors(selectors: nn.ModuleDict, index: int, x: Tensor, thw, record: dict | None = None,
                  seeds: Tensor | None = None):
    """Apply the selectors placed before block/stage `index`: (x, thw) -> (x, thw).

    record: if a dict, each selector's `Selection` is stored in it under the selector's name.
    seeds: (B,) int64, one noise seed per clip for the perturbed top-K in training (see stts.selectors).
    """
    for name, sel in selectors.items():
        if sel.before != index:
            continue
        if record is None:
            x, thw = sel(x, thw, seeds=seeds)
        else:
            x, thw, kept = sel(x, thw, return_selection=True, seeds=seeds)
            record[name] = kept
    return x, thw

