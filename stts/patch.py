"""Add token selection to a dense backbone in one line.

    model = stts.create_model("mvit_b_16x4", num_classes=400)
    stts.patch(model, "T0_0.5-S4_0.7")                # adds model.selectors["T0"], ["S4"]
    stts.patch(model, "T0_0.5", sigma=0.1, jacobian="diagonal")

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
from stts.selectors import SELECTORS

__all__ = ["patch", "build_selector", "run_selectors"]


def build_selector(spec: SelectorSpec, dim: int, plan: SelectionPlan) -> nn.Module:
    """The selector module for one spec, on tokens of `dim` channels, with the plan's settings."""
    return SELECTORS[spec.kind](dim, spec=spec, **plan.settings)


def patch(model: nn.Module, plan: "str | SelectionPlan", **settings) -> nn.Module:
    """Insert the selectors of `plan` into `model` (in place) and return it.

    `settings` (num_samples, sigma, jacobian, variance_reduction, policy) override the plan's. Raises
    ValueError naming the part of the plan the model cannot take; the model is left unchanged then.
    """
    if not hasattr(model, "selection_dim") or not isinstance(getattr(model, "selectors", None), nn.ModuleDict):
        raise TypeError(f"{type(model).__name__} does not support token selection "
                        "(needs `selectors` ModuleDict and `selection_dim`)")
    plan = parse_plan(plan, **settings)
    old: SelectionPlan = getattr(model, "plan", None) or SelectionPlan()
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

