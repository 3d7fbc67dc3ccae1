"""Selection plans in the paper's notation, and the rules of what each selector keeps.

    plan = parse_plan("T0_0.5-S4_0.7")     # temporal before block 0 (ratio 0.5), anchor before block 4
    plan = parse_plan("T0_k4-S4_a12s1")    # the same with explicit counts: 4 frames, 12x12 anchor, stride 1
    plan = parse_plan("K2_0.5")            # token-level selection before block 2 (beyond the paper)
    plan = parse_plan("T0_0.5", sigma=0.1, jacobian="diagonal")   # with the perturbed top-K settings
    str(plan)                               # canonical string, round-trips through parse_plan
    spec = plan.specs[0]
    spec.kept(8), spec.out_grid((8, 56, 56))   # 4, (4, 56, 56): the rules every backbone and selector use
    elastic = parse_plan("T0_0.25:0.75-S4_0.6:1.0")   # ranges: one model for every budget in them
    elastic.at(0.0), elastic.at(0.5)        # T0_0.25-S4_0.6, T0_0.5-S4_0.8: fixed plans inside the ranges
    elastic.specs[0].choices((8, 56, 56))   # T0_k2 ... T0_k6: the distinct amounts the range allows there

Parts are `<kind><index>_<amount>` joined by '-' (or '_', as in the official config names
`t0_0.5_s4_0.7`), case-insensitive:
- kind: T temporal (frames), S spatial anchor (one window per frame), K token-level;
- index: the block (MViT, ViT) or stage (Swin) the selector runs before;
- amount: a keep ratio in (0, 1]; or `k<int>` frames/tokens to keep (T, K); or `a<int>[s<int>]` anchor
  size and optional stride (S);
- or a range `lo:hi` of either form (`0.25:0.75`, `k2:6`, `a8:14[s<int>]`; lo <= hi, an empty range
  lo == hi is the fixed amount): the plan is then "elastic", trained at a budget drawn per step inside
  the ranges (stts.budget) and run at any point of them (`SelectionPlan.at`, `stts.set_plan`).

This module is plain data and arithmetic (no torch): `SelectorSpec` holds the one copy of the kept-count,
anchor and output-grid rules (and, for a range, which fixed amounts it allows on a map: `choices`);
`SelectionPlan` holds the specs plus the settings of their perturbed top-K (`SETTINGS`), which travel in
it from a run config to the selectors. A selector always runs a fixed spec; a range is what a plan
declares (and checkpoints record), its points are what runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

__all__ = ["KINDS", "SETTINGS", "SelectorSpec", "SelectionPlan", "parse_plan"]

# Plan letter -> the kind name a selector reports (`Selection.kind`, selection statistics, reports).
# The order is the execution order of selectors placed before the same block: T, then S, then K.
KINDS = {"T": "temporal", "S": "anchor", "K": "token"}
# What a plan carries besides its specs: the perturbed top-K's settings and the scoring policy.
SETTINGS = ("num_samples", "sigma", "jacobian", "variance_reduction", "policy")

Thw = tuple[int, int, int]

_RATIO = r"\d*\.\d+|\d+(?:\.\d*)?"
_PART = re.compile(
    rf"(?P<kind>[TSK])(?P<index>\d+)_(?:(?P<ratio>{_RATIO})(?::(?P<ratio_hi>{_RATIO}))?(?![0-9a-z:.])"
    r"|k(?P<keep>\d+)(?::(?P<keep_hi>\d+))?(?![0-9a-z:.])"
    r"|a(?P<anchor>\d+)(?::(?P<anchor_hi>\d+))?(?:s(?P<stride>\d+))?(?![0-9a-z:.]))",
    re.IGNORECASE,
)
_GRAMMAR = ("expected parts like 'T0_0.5' (temporal), 'S4_0.7' (spatial anchor) or 'K2_0.5' (token-level), "
            "joined by '-'; amounts are a ratio in (0, 1], 'k<count>' or, for S, 'a<size>[s<stride>]', or a "
            "range lo:hi of one of them ('T0_0.25:0.75', 'T0_k2:6', 'S4_a8:14')")
_AMOUNT = {"T": "keep", "S": "anchor_size", "K": "keep"}  # the count a fixed point of a range is given in


def kept_count(n: int, ratio: float | None, keep: int | None) -> int:
    """How many of n candidates a selector keeps: `keep`, else int(n * ratio) (the official code's int();
    the epsilon only rescues products like 0.29 * 100 = 28.999...). Not range-checked."""
    return keep if keep is not None else int(n * ratio + 1e-6)


@dataclass(frozen=True)
class SelectorSpec:
    """One selector: kind ("T", "S" or "K"), the block/stage it runs before, and what it keeps.

    Exactly one amount: `ratio`, or `keep` (T, K), or `anchor_size` (S, with an optional
    `anchor_stride`; a ratio-sized anchor may also be given a stride). `before` is None for a selector
    that is not placed in a model. `high`: the upper end of a range whose lower end is the amount
    (a ratio, or a count of the same kind as the amount); such a spec is elastic: it is not run itself
    (`kept`, `anchor`, `out_grid` refuse it), its fixed points are (`at`, `choices`).
    """

    kind: str
    before: int | None
    ratio: float | None = None
    keep: int | None = None
    anchor_size: int | None = None
    anchor_stride: int | None = None
    high: float | int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"selector kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        amounts = [a for a in ("ratio", "keep", "anchor_size") if getattr(self, a) is not None]
        allowed = ("ratio", "anchor_size") if self.kind == "S" else ("ratio", "keep")
        if len(amounts) != 1 or amounts[0] not in allowed:
            raise ValueError(f"{KINDS[self.kind]} selection takes exactly one of {' and '.join(allowed)}, "
                             f"got {', '.join(amounts) or 'none'}")
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"keep ratio {self.ratio} must be in (0, 1]")
        for count in ("keep", "anchor_size", "anchor_stride"):
            if getattr(self, count) is not None and getattr(self, count) < 1:
                raise ValueError(f"{count} must be >= 1, got {getattr(self, count)}")
        if self.high is not None:
            low = self.low
            if self.ratio is None and self.high != int(self.high):
                raise ValueError(f"a range of counts ends at a count, got {self.high}")
            if self.ratio is not None and not self.high <= 1.0:
                raise ValueError(f"keep ratio {self.high} must be in (0, 1]")
            if not low < self.high:
                raise ValueError(f"a range lo:hi needs lo < hi (lo == hi is the fixed amount), got {low}:{self.high}")

    @property
    def name(self) -> str:
        """Key of the selector in `model.selectors`, e.g. "T0"."""
        return f"{self.kind}{self.before}"

    @property
    def order(self) -> tuple[int, int]:
        """Execution order: by place, then T before S before K (`patch`, `run_selectors`, plan strings)."""
        return (self.before if self.before is not None else -1), list(KINDS).index(self.kind)

    # -- ranges (elastic specs) and their fixed points -------------------------------------------------

    @property
    def elastic(self) -> bool:
        """True for a range (lo:hi), which selectors do not run; its points (`at`, `choices`) they do."""
        return self.high is not None

    @property
    def low(self) -> float | int:
        """The amount (a range's lower end): ratio, keep or anchor_size, whichever is given."""
        return next(getattr(self, a) for a in ("ratio", "keep", "anchor_size") if getattr(self, a) is not None)

    def at(self, u: float) -> "SelectorSpec":
        """The fixed spec at position u in [0, 1] of the range (0: low end, 1: high end): a ratio
        lo + u (hi - lo) (rounded to 6 decimals, so 0.5 of 0.25:0.75 is 0.5), a count rounded half up.
        A fixed spec is its own point."""
        if not 0.0 <= u <= 1.0:
            raise ValueError(f"a point of a range is at u in [0, 1], got {u}")
        if not self.elastic:
            return self
        value = self.low + u * (self.high - self.low)
        field = "ratio" if self.ratio is not None else _AMOUNT[self.kind]
        value = round(value, 6) if field == "ratio" else int(math.floor(value + 0.5))
        return replace(self, high=None, **{field: value})

    def choices(self, thw: Thw) -> list["SelectorSpec"]:
        """The distinct fixed specs this range allows on a map (T, H, W), fewest tokens first, as counts
        (`T0_k3`, `S4_a10`, `K2_k300`): every count from the low end's to the high end's by the kept-count
        and anchor rules, clipped to 1..n (n: frames T, tokens T*H*W, anchor sides min(H, W)). Backbone
        rules (e.g. Swin's window sizes) are not applied here. A fixed spec gives [itself]."""
        if not self.elastic:
            return [self]
        T, H, W = thw
        if self.kind == "S":
            n = min(H, W)
            lo, hi = ((math.isqrt(kept_count(H * W, self.ratio, None)), math.isqrt(kept_count(H * W, self.high, None)))
                      if self.ratio is not None else (self.anchor_size, int(self.high)))
        else:
            n = T if self.kind == "T" else T * H * W
            lo, hi = ((kept_count(n, self.ratio, None), kept_count(n, self.high, None)) if self.ratio is not None
                      else (self.keep, int(self.high)))
        stride = {"anchor_stride": self.anchor_stride} if self.kind == "S" else {}
        return [SelectorSpec(self.kind, self.before, **{_AMOUNT[self.kind]: c}, **stride)
                for c in range(max(lo, 1), min(hi, n) + 1)]

    # -- the rules: what this selector keeps of the grid it is given ---------------------------------

    def _fixed(self) -> None:
        if self.elastic:
            raise ValueError(f"{self} is a range: a selector runs one of its points (SelectionPlan.at, "
                             "stts.set_plan, stts.budget.sample_plan)")

    def kept(self, n: int) -> int:
        """Frames (T), tokens per frame for a ratio-sized anchor (S) or tokens (K) kept of n."""
        self._fixed()
        return kept_count(n, self.ratio, self.keep)

    def anchor(self, h: int, w: int) -> tuple[int, int]:
        """(anchor size a, stride s) on an h x w map (S): a = anchor_size, else floor(sqrt(int(h*w*ratio)));
        s = anchor_stride, else max((min(h, w) - a) // 2, 1) (paper, official code). Not range-checked."""
        self._fixed()
        a = self.anchor_size if self.anchor_size is not None else math.isqrt(self.kept(h * w))
        s = self.anchor_stride if self.anchor_stride is not None else max((min(h, w) - a) // 2, 1)
        return a, s

    def out_grid(self, thw: Thw) -> Thw:
        """The grid this selector outputs for an input grid (T, H, W): T keeps frames, S one a x a window
        per frame, K a flat sequence (1, 1, K) (no grid after it). Not range-checked."""
        T, H, W = thw
        if self.kind == "T":
            return self.kept(T), H, W
        if self.kind == "S":
            a = self.anchor(H, W)[0]
            return T, a, a
        return 1, 1, self.kept(T * H * W)

    def __str__(self) -> str:
        hi = "" if not self.elastic else f":{float(self.high)!r}" if self.ratio is not None else f":{int(self.high)}"
        if self.ratio is not None:
            amount = repr(float(self.ratio)) + hi  # shortest string that round-trips
        elif self.keep is not None:
            amount = f"k{self.keep}{hi}"
        else:
            amount = f"a{self.anchor_size}{hi}" + (f"s{self.anchor_stride}" if self.anchor_stride else "")
        return f"{self.name}_{amount}"


@dataclass(frozen=True)
class SelectionPlan:
    """An ordered set of selectors plus the settings of their perturbed top-K and scoring policy.

    num_samples, sigma, jacobian ("full" | "diagonal"), variance_reduction (perturbed_topk's: none | loo |
    antithetic | loo+antithetic): the estimator, by default the authors' diagonal one without reduction,
    which fine-tuned best on the demo (benchmarks/RESULTS.md, "Which estimator fine-tunes best"); policy: "learned" (the STTS scorers) or a training-free
    policy at the same budget ("uniform", "random", "change", "saliency": stts.policies).
    """

    specs: tuple[SelectorSpec, ...] = ()
    num_samples: int = 500
    sigma: float = 0.05
    jacobian: str = "diagonal"
    variance_reduction: str = "none"
    policy: str = "learned"

    def __str__(self) -> str:
        return "-".join(str(s) for s in self.specs)

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def settings(self) -> dict:
        """{num_samples, sigma, jacobian, variance_reduction, policy}: what each selector is built with."""
        return {k: getattr(self, k) for k in SETTINGS}

    @property
    def elastic(self) -> bool:
        """True if any selector gives a range (lo:hi) instead of one amount."""
        return any(spec.elastic for spec in self.specs)

    @property
    def points(self) -> tuple[str, ...]:
        """The selection points, e.g. ("T0", "S4"): where it selects and of which kind, not how much.
        Plans with the same points fit one model's selectors (`stts.set_plan`)."""
        return tuple(spec.name for spec in self.specs)

    def at(self, u: float) -> "SelectionPlan":
        """The fixed plan at position u in [0, 1] of every range (`SelectorSpec.at`), same settings:
        at(0) the low ends, at(0.5) the middles (what an elastic model runs unless told), at(1) the high."""
        return replace(self, specs=tuple(spec.at(u) for spec in self.specs))

    def with_settings(self, **settings) -> "SelectionPlan":
        """The same specs with some settings replaced."""
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown selection settings {unknown}; a plan's settings are {', '.join(SETTINGS)}")
        return replace(self, **settings)

    def to_dict(self) -> dict:
        """Plain data for checkpoints; `SelectionPlan.from_dict` inverts it."""
        return dict(plan=str(self), **self.settings)

    @classmethod
    def from_dict(cls, d: dict) -> "SelectionPlan":
        d = dict(d)
        return parse_plan(d.pop("plan"), **d)


def _bad(plan: str, why: str) -> ValueError:
    return ValueError(f"bad selection plan {plan!r}: {why}")


def parse_plan(plan: "str | SelectionPlan | None", **settings) -> SelectionPlan:
    """Parse a plan string (see module docstring); `settings` set num_samples, sigma, jacobian,
    variance_reduction, policy (a SelectionPlan passes through with them replaced)."""
    if isinstance(plan, SelectionPlan):
        return plan.with_settings(**settings) if settings else plan
    if plan is None or str(plan).strip() in ("", "none", "dense"):
        return SelectionPlan().with_settings(**settings)
    if not isinstance(plan, str):
        raise TypeError(f"a selection plan is a string like 'T0_0.5-S4_0.7', got {type(plan).__name__}")
    text = plan.strip()
    specs: list[SelectorSpec] = []
    pos = 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            part = re.split(r"[-_](?=[TSK]\d)", text[pos:], flags=re.IGNORECASE)[0]
            if ":" in part:  # a range that is not lo:hi of one form
                raise _bad(plan, f"cannot read the range in {part!r}: a range is lo:hi of one form, e.g. "
                                 "'T0_0.25:0.75', 'T0_k2:6', 'S4_a8:14' (lo <= hi)")
            raise _bad(plan, f"cannot read {text[pos:]!r}; {_GRAMMAR}")
        kind, before = m["kind"].upper(), int(m["index"])
        if m["ratio"] is not None:
            for end in ("ratio", "ratio_hi"):
                if m[end] is not None and not 0.0 < float(m[end]) <= 1.0:
                    raise _bad(plan, f"keep ratio {m[end]} of {kind}{before} must be in (0, 1]")
            amount = dict(ratio=float(m["ratio"]), high=float(m["ratio_hi"]) if m["ratio_hi"] else None)
        elif m["keep"] is not None:
            if kind == "S":
                raise _bad(plan, f"{kind}{before}: a spatial anchor takes a ratio or 'a<size>[s<stride>]', not k")
            amount = dict(keep=int(m["keep"]), high=int(m["keep_hi"]) if m["keep_hi"] else None)
        else:
            if kind != "S":
                raise _bad(plan, f"{kind}{before}: 'a<size>' is for spatial anchors (S) only")
            amount = dict(anchor_size=int(m["anchor"]), anchor_stride=int(m["stride"]) if m["stride"] else None,
                          high=int(m["anchor_hi"]) if m["anchor_hi"] else None)
        if amount["high"] is not None:
            low = next(v for k, v in amount.items() if k in ("ratio", "keep", "anchor_size"))
            if amount["high"] < low:
                raise _bad(plan, f"range {m.group(0).partition('_')[2]} of {kind}{before}: lo:hi needs lo <= hi")
            if amount["high"] == low:  # an empty range is the fixed amount (one canonical string)
                amount["high"] = None
        try:
            spec = SelectorSpec(kind, before, **amount)
        except ValueError as e:  # a count of 0
            raise _bad(plan, f"{kind}{before}: {e}") from None
        if any(s.name == spec.name for s in specs):
            raise _bad(plan, f"two {KINDS[kind]} selectors before {before}")
        specs.append(spec)
        pos = m.end()
        if pos < len(text):
            if text[pos] not in "-_":
                raise _bad(plan, f"expected '-' between parts at {text[pos:]!r}; {_GRAMMAR}")
            pos += 1
            if pos == len(text):
                raise _bad(plan, "trailing separator")
    order = sorted(specs, key=lambda s: s.order)
    flat_at = [s.before for s in order if s.kind == "K"]
    if flat_at and any(s.kind != "K" and s.before >= flat_at[0] for s in order):
        raise _bad(plan, "token-level selection (K) flattens the grid; T or S cannot come at or after it")
    return SelectionPlan(specs=tuple(order)).with_settings(**settings)
