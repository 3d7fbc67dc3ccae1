"""Add token selection to a dense backbone in one line, and change how much it keeps.

    model = stts.create_model("mvit_b_16x4", num_classes=400)
    stts.patch(model, "T0_0.5-S4_0.7")                # adds model.selectors["T0"], ["S4"]
    stts.patch(model, "T0_0.5", sigma=0.1, jacobian="diagonal")
    stts.patch(model, "T0_0.5-S4_0.7", policy="change")   # training-free: no scorers (stts.policies)
    stts.set_plan(model, "T0_0.3-S4_0.6")             # same points, new amounts: the trained scorers stay
    with at_plan(model, "T0_k2-S4_a10"): model(x)     # run one fixed point for a while (engine, eval)
    running_plan(model)                               # the fixed plan the selectors run now

A backbone supports selection when it has (every stts backbone through `stts.models.base.VideoClassifier`)
- `selectors`: an `nn.ModuleDict` its forward runs through `run_selectors` before each block/stage;
- `selection_dim(index) -> int`: channels of the tokens entering block/stage `index` (ValueError if
  there is no such place);
- `selection_kinds`: the kinds it accepts, a string such as "TS" or "TSK";
- optionally `check_selection(spec)`: backbone rules (e.g. anchor sizes that keep Swin windows valid).
Each selector is built in one call from (spec, dim, the plan's settings) and holds its spec; selectors
are plain submodules, so state dicts read `selectors.T0.scorer.embed.1.weight`.

`model.plan` is the plan the model was patched (or `set_plan`) with, what checkpoints record; it may be
elastic (ranges, `T0_0.25:0.75`). The selectors always run a fixed point of it: the plan itself, or an
elastic plan's middle (`plan.at(0.5)`) unless `at_plan` (training draws, evaluation at several budgets)
runs another one for a while. The amount is a spec, not a module: changing it keeps every scorer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

from torch import Tensor, nn

from stts.plan import KINDS, SelectionPlan, SelectorSpec, parse_plan
from stts.policies import MIN_FRAMES
from stts.selectors import SELECTORS

__all__ = ["patch", "set_policy", "set_plan", "at_plan", "running_plan", "swap_specs", "build_selector",
           "run_selectors"]


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
        for spec in plan.at(0.5):  # an elastic plan's selectors start at its middle
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
        if plan.elastic:  # both ends must run too: they are trained and evaluated
            _check_ends(model, plan)
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
def set_plan(model: nn.Module, plan: "str | SelectionPlan") -> nn.Module:
    """Run `model` at another plan of the same selection points (same names T0, S4, ..., so the same
    kinds), keeping its selectors and their trained scorers (the same modules and weights); returns it.

    plan: a string takes the model's settings; a SelectionPlan's settings (sigma, num_samples, jacobian,
        variance_reduction) are applied to the selectors, its policy must be the model's. An elastic plan
        runs at its middle (`plan.at(0.5)`) until a point is picked (`at_plan`, training's draws).
    Raises ValueError naming the problem (other points, another policy, an amount that does not fit the
    map it would see); the model is left unchanged then. `model.plan` becomes `plan`: what checkpoints
    record and `stts.load_model` rebuilds.
    """
    current: SelectionPlan | None = getattr(model, "plan", None)
    if current is None or not len(current):
        raise ValueError(f"{type(model).__name__} has no selection points to set amounts for; add them with "
                         "stts.patch(model, plan) (or create_model(name, selection=plan))")
    plan = plan if isinstance(plan, SelectionPlan) else parse_plan(plan, **current.settings)
    if plan.points != current.points:
        raise ValueError(f"set_plan keeps the model's selection points {'-'.join(current.points)} (plan {current}) "
                         f"and changes only how much they keep; {plan} has the points "
                         f"{'-'.join(plan.points) or 'none'}. For other points build the model with that plan "
                         "and load the weights (the scorers of new points then start untrained)")
    if plan.policy != current.policy:
        raise ValueError(f"set_plan keeps the selectors' {current.policy!r} policy; {plan} asks for "
                         f"{plan.policy!r}: switch policies with stts.set_policy(model, {plan.policy!r})")
    if plan.elastic:
        _check_ends(model, plan)
    swap_specs(model, plan.at(0.5).specs, where=str(plan))
    changed = {k: v for k, v in plan.settings.items() if k != "policy" and v != current.settings[k]}
    for sel in model.selectors.values():
        for key, value in changed.items():
            setattr(sel, key, value)
    model.plan = plan
    return model


@contextmanager
def at_plan(model: nn.Module, plan: "str | SelectionPlan", *, where: str | None = None):
    """Run the model's selectors at the fixed `plan` (same points) inside the block, then put back the
    amounts they had; `model.plan` is not changed. What training (a drawn budget per step) and
    evaluation at several budgets use; the scorers are untouched. ValueError if it does not fit."""
    plan = plan if isinstance(plan, SelectionPlan) else parse_plan(plan)
    if plan.elastic:
        raise ValueError(f"at_plan runs one fixed point; {plan} is a range (take plan.at(u))")
    points = tuple(model.selectors)
    if plan.points != points:
        raise ValueError(f"{plan} does not have the model's selection points {'-'.join(points) or 'none'}")
    old = swap_specs(model, plan.specs, where=where or str(plan))
    try:
        yield model
    finally:
        for name, spec in old.items():
            model.selectors[name].spec = spec


def running_plan(model: nn.Module) -> SelectionPlan | None:
    """The fixed plan the selectors run now, with the model's settings (None: no selectors)."""
    if not len(getattr(model, "selectors", ())):
        return None
    settings = model.plan.settings if getattr(model, "plan", None) is not None else {}
    return SelectionPlan(specs=tuple(sel.spec for sel in model.selectors.values()), **settings)


def _check_ends(model: nn.Module, plan: SelectionPlan) -> None:
    """ValueError unless the low and high ends of an elastic plan of the model's points both fit."""
    for u, end in ((0.0, "low end"), (1.0, "high end")):
        point = plan.at(u)
        old = swap_specs(model, [spec for spec in point.specs if spec.name in model.selectors],
                          where=f"{point}, the {end} of {plan}")
        for name, spec in old.items():
            model.selectors[name].spec = spec


def swap_specs(model: nn.Module, specs, *, where: str | None = None) -> dict[str, SelectorSpec]:
    """Low level (`set_plan`, `at_plan`, `stts.budget`): give the selectors named by these fixed specs
    those specs (others keep theirs), each checked against the map the earlier ones leave
    (`check_selection`); returns every selector's previous spec, to put back. On a ValueError (naming
    `where`, default the specs) the old specs are back in place."""
    old = {name: sel.spec for name, sel in model.selectors.items()}
    specs = sorted(specs, key=lambda spec: spec.order)
    where = where or "-".join(map(str, specs))
    try:
        for spec in specs:
            if spec.name not in model.selectors:
                raise ValueError(f"it has no selector {spec.name} (its points: {'-'.join(model.selectors) or 'none'})")
            sel = model.selectors[spec.name]
            if spec.kind != sel.letter:
                raise ValueError(f"{spec} is {KINDS[spec.kind]} selection; the model's {spec.name} is {sel.kind}")
            sel.spec = spec
            if hasattr(model, "check_selection"):
                model.check_selection(spec)
            _check_policy(model, spec, sel.policy)  # e.g. "change" needs 2 frames: not after T0_k1
    except ValueError as e:
        for name, spec in old.items():
            model.selectors[name].spec = spec
        raise ValueError(f"cannot run {where} in {type(model).__name__}: {e}") from None
    return old


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

