"""Budgets: the fixed plans a model's selection points allow, the budget of an elastic training step, and
the plan that fits a cost target.

    point_choices(model, spec)                   # T0_k2 ... T0_k6: what a range allows where it selects
    plan = sample_plan(model, seed=0, step=12)   # an elastic model's budget for training step 12
    with stts.patch.at_plan(model, plan):        # (the engine does this for every step)
        loss = criterion(model(x), y)
    plan = stts.plan_for(model, gflops=20.0)     # the largest counted cost <= 20 GFLOPs
    stts.set_plan(model, plan)

Amounts are counted where a selector sees its map: a range `T0_0.25:0.75` before a 16-frame map allows
the distinct counts 4..12 (`SelectorSpec.choices`), less what the backbone refuses (`check_selection`,
e.g. Swin's window sizes); a point after another selector sees the map that one's amount leaves. The
plans made here are fixed counts (`T0_k3-S4_a10`): exact at the model's input size.

Elastic training draws, per step, one amount per selector in execution order, uniformly over the
distinct counts it allows (a ratio drawn uniformly and truncated would favour some counts), from a
generator seeded by (run seed, step) alone: the same for the whole batch, on every DDP rank, and again
after a resume.

`plan_for` counts costs with `stts.flops` on the meta device (shapes only, no arithmetic; 0.3 to 0.5 s
for MViT-B on a CPU core). Cost never falls when a selector keeps more, so for each choice of the
earlier selectors the last one is found by bisection, below the amount found for the previous (smaller)
choice, and the search stops at the first earlier amount whose cheapest plan is over the target: a few
dozen counts for MViT-B's T0 x S4 (about 20 s on a loaded CPU core), not the full product. The counts
stay with the model (a weak reference), so later calls for other targets reuse them.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import replace

import torch
from torch import nn

from stts.flops import count_flops
from stts.patch import at_plan, swap_specs
from stts.plan import SelectionPlan, SelectorSpec, parse_plan
from stts.topk import noise_seed

__all__ = ["point_choices", "sample_plan", "plan_for", "plan_cost"]

_BUDGET = 0xB0D6E7  # mixed into the seed of a step's budget draw (its noise seeds mix other parts)
_COSTS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()  # plan_for's counted costs


def point_choices(model: nn.Module, spec: SelectorSpec, earlier=()) -> list[SelectorSpec]:
    """The fixed specs `spec` allows where it selects in `model` (fewest tokens first): its distinct
    kept counts at the map it sees there (`SelectorSpec.choices`) that the backbone accepts
    (`check_selection`) and the selectors' policy can score (e.g. "change" needs 2 frames).
    earlier: the fixed specs the selectors before it run (default: theirs now).
    A fixed spec gives [spec] if it fits, else []."""
    old = swap_specs(model, earlier)
    try:
        thw = model.grid_at(spec)
    finally:
        _put_back(model, old)
    fits = []
    for choice in spec.choices(thw):
        try:
            old = swap_specs(model, [*earlier, choice])  # every rule patch and set_plan apply
        except ValueError:
            continue
        _put_back(model, old)
        fits.append(choice)
    return fits


def sample_plan(model: nn.Module, plan: "SelectionPlan | str | None" = None, *, seed: int, step: int) -> SelectionPlan:
    """The fixed plan of training step `step` of an elastic plan (default `model.plan`): per selector, in
    execution order, a count drawn uniformly from those its range allows at the map the earlier draws
    leave (`point_choices`), from a generator seeded by (seed, step). A fixed spec stays as it is."""
    plan = _own_points(model, plan)
    gen = torch.Generator().manual_seed(noise_seed(_BUDGET, seed, step))
    chosen: list[SelectorSpec] = []
    for spec in plan.specs:
        options = point_choices(model, spec, chosen)
        if not options:
            raise ValueError(f"{spec} allows no amount that fits {type(model).__name__} after {_describe(chosen)}")
        chosen.append(options[int(torch.randint(len(options), (), generator=gen))])
    return replace(plan, specs=tuple(chosen))


def plan_cost(model: nn.Module, plan: "SelectionPlan | str", input_size: tuple | None = None) -> int:
    """Multiply-adds of one clip (batch 1, `input_size` (C, T, H, W), default the model's) with the
    model's selectors at the fixed `plan`, counted on the meta device."""
    with at_plan(model, plan):
        return count_flops(model, (1, *(input_size or model.input_size))).total


def plan_for(model: nn.Module, gflops: float, *, within: "SelectionPlan | str | None" = None,
             input_size: tuple | None = None) -> SelectionPlan:
    """The fixed plan of the model's selection points with the largest counted cost at most `gflops`
    (multiply-adds / 1e9 per clip, `stts.flops`), ties to the plan that keeps more tokens.

    within: the amounts to search, a plan of the model's points whose ranges (or fixed amounts) bound
        each selector; "any": every amount of every point; default: the model's plan if it is elastic
        (what it was trained for), else "any".
    input_size: (C, T, H, W) the cost is counted at (default the model's `input_size`).
    Returns a plan of counts with the model's settings (`stts.set_plan(model, plan)` runs it).
    Raises ValueError when even the cheapest plan searched costs more than `gflops`.
    """
    current = getattr(model, "plan", None)
    if current is None or not len(current):
        raise ValueError(f"{type(model).__name__} has no selection points to choose amounts for")
    if within is None:
        within = current if current.elastic else "any"
    # Per point, the amounts searched: a spec (a range or one amount), or None for every amount.
    bounds = [None] * len(current) if within == "any" else list(_own_points(model, within).specs)
    target = float(gflops) * 1e9
    size = tuple(input_size or model.input_size)
    # Counted costs stay with the model (its architecture fixes them) for later calls: keyed by the clip
    # size, the policy (a learned scorer costs what a training-free one does not) and the fixed plan.
    costs = _COSTS.setdefault(model, {})

    def cost(specs: list[SelectorSpec]) -> tuple[int, int]:
        """(multiply-adds, tokens the selectors hand on) of a full choice, counted once."""
        key = (size, current.policy, _describe(specs))
        if key not in costs:
            with at_plan(model, replace(current, specs=tuple(specs))):
                flops = count_flops(model, (1, *size)).total
                kept = sum(math.prod(s.out_grid(model.grid_at(s))) for s in specs)
            costs[key] = (flops, kept)
        return costs[key]

    best: tuple | None = None  # (flops, kept, specs) of the best plan under the target
    cheapest: tuple | None = None  # ... of the cheapest plan seen (for the error message)

    def search(prefix: list[SelectorSpec], ceiling=None) -> tuple[bool, object]:
        """Search the plans that start with `prefix` -> (fits, amount): fits is False if even the cheapest of
        them costs more than the target (so do those with a larger amount anywhere in the prefix); amount
        is the last selector's largest amount under the target. ceiling: an upper bound on that amount
        (the one found for a smaller amount of the selector before: cost grows with it too)."""
        nonlocal best, cheapest
        i = len(prefix)
        bound = bounds[i] if bounds[i] is not None else _every(model, current.points[i], prefix)
        options = point_choices(model, bound, prefix)
        if i + 1 < len(bounds):
            fits, ceiling = True, None
            for k, option in enumerate(options):  # fewest tokens first: stop at the first that cannot fit
                ok, amount = search(prefix + [option], ceiling)
                fits, ceiling = (ok if k == 0 else fits), (amount if amount is not None else ceiling)
                if not ok:
                    break
            return fits, None
        if ceiling is not None:
            options = [o for o in options if o.low <= ceiling] or options[:1]
        if not options:
            return True, None
        low = (*cost(prefix + [options[0]]), prefix + [options[0]])
        if cheapest is None or low[0] < cheapest[0]:
            cheapest = low
        if low[0] > target:
            return False, None
        lo, hi = 0, len(options) - 1  # bisect for the last option whose cost is <= target
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost(prefix + [options[mid]])[0] <= target:
                lo = mid
            else:
                hi = mid - 1
        found = (*cost(prefix + [options[lo]]), prefix + [options[lo]])
        if best is None or found[:2] > best[:2]:
            best = found
        return True, options[lo].low

    search([])
    if best is None:
        where = f"within {within}" if within != "any" else "at any amount"
        smallest = (f"; the cheapest, {_describe(cheapest[2])}, costs {cheapest[0] / 1e9:.4g}"
                    if cheapest is not None else "")
        raise ValueError(f"no plan of {'-'.join(current.points)} {where} costs at most {gflops:g} GFLOPs per "
                         f"{'x'.join(map(str, size))} clip{smallest}")
    return replace(current, specs=tuple(best[2]))


# ---------------------------------------------------------------------------------------------------


def _own_points(model: nn.Module, plan: "SelectionPlan | str | None") -> SelectionPlan:
    """`plan` (default model.plan; a string takes the model's settings), checked to have its points."""
    current = getattr(model, "plan", None)
    if current is None or not len(current):
        raise ValueError(f"{type(model).__name__} has no selection points")
    plan = current if plan is None else plan if isinstance(plan, SelectionPlan) else parse_plan(plan, **current.settings)
    if plan.points != current.points:
        raise ValueError(f"{plan} does not have the model's selection points {'-'.join(current.points)}")
    return plan


def _every(model: nn.Module, name: str, earlier) -> SelectorSpec:
    """A range of every count at the point `name`, given the earlier selectors' specs: 1 up to its map's
    frames (T), anchor side (S, the current stride rule) or tokens (K)."""
    spec = model.selectors[name].spec
    old = swap_specs(model, earlier)
    try:
        T, H, W = model.grid_at(spec)
    finally:
        _put_back(model, old)
    n = {"T": T, "S": min(H, W), "K": T * H * W}[spec.kind]
    amount = {"anchor_size": 1, "anchor_stride": spec.anchor_stride} if spec.kind == "S" else {"keep": 1}
    return SelectorSpec(spec.kind, spec.before, **amount, high=n if n > 1 else None)


def _put_back(model: nn.Module, old: dict) -> None:
    """Give the selectors back the specs `swap_specs` returned."""
    for name, spec in old.items():
        model.selectors[name].spec = spec


def _describe(specs) -> str:
    return "-".join(map(str, specs)) or "nothing"
