"""Selection plans in the paper's notation, and the rules of what each selector keeps.

    plan = parse_plan("T0_0.5-S4_0.7")     # temporal before block 0 (ratio 0.5), anchor before block 4
    plan = parse_plan("T0_k4-S4_a12s1")    # the same with explicit counts: 4 frames, 12x12 anchor, stride 1
    plan = parse_plan("K2_0.5")            # token-level selection before block 2 (beyond the paper)
    plan = parse_plan("T0_0.5", sigma=0.1, jacobian="diagonal")   # with the perturbed top-K settings
    str(plan)                               # canonical string, round-trips through parse_plan
    spec = plan.specs[0]
    spec.kept(8), spec.out_grid((8, 56, 56))   # 4, (4, 56, 56): the rules every backbone and selector use

Parts are `<kind><index>_<amount>` joined by '-' (or '_', as in the official config names
`t0_0.5_s4_0.7`), case-insensitive:
- kind: T temporal (frames), S spatial anchor (one window per frame), K token-level;
- index: the block (MViT, ViT) or stage (Swin) the selector runs before;
- amount: a keep ratio in (0, 1]; or `k<int>` frames/tokens to keep (T, K); or `a<int>[s<int>]` anchor
  size and optional stride (S).

This module is plain data and arithmetic (no torch): `SelectorSpec` holds the one copy of the kept-count,
anchor and output-grid rules; `SelectionPlan` holds the specs plus the settings of their perturbed
top-K (`SETTINGS`), which travel in it from a run config to the selectors.
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

_PART = re.compile(
    r"(?P<kind>[TSK])(?P<index>\d+)_(?:(?P<ratio>\d*\.\d+|\d+(?:\.\d*)?)(?![0-9a-z])|k(?P<keep>\d+)"
    r"|a(?P<anchor>\d+)(?:s(?P<stride>\d+))?)",
    re.IGNORECASE,
)
_GRAMMAR = ("expected parts like 'T0_0.5' (temporal), 'S4_0.7' (spatial anchor) or 'K2_0.5' (token-level), "
            "joined by '-'; amounts are a ratio in (0, 1], 'k<count>' or, for S, 'a<size>[s<stride>]'")


def kept_count(n: int, ratio: float | None, keep: int | None) -> int:
    """How many of n candidates a selector keeps: `keep`, else int(n * ratio) (the official code's int();
    the epsilon only rescues products like 0.29 * 100 = 28.999...). Not range-checked."""
    return keep if keep is not None else int(n * ratio + 1e-6)


@dataclass(frozen=True)
class SelectorSpec:
    """One selector: kind ("T", "S" or "K"), the block/stage it runs before, and what it keeps.

    Exactly one amount: `ratio`, or `keep` (T, K), or `anchor_size` (S, with an optional
    `anchor_stride`; a ratio-sized anchor may also be given a stride). `before` is None for a selector
    that is not placed in a model.
    """

    kind: str
    before: int | None
    ratio: float | None = None
    keep: int | None = None
    anchor_size: int | None = None
    anchor_stride: int | None = None

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

    @property
    def name(self) -> str:
        """Key of the selector in `model.selectors`, e.g. "T0"."""
        return f"{self.kind}{self.before}"

    @property
    def order(self) -> tuple[int, int]:
        """Execution order: by place, then T before S before K (`patch`, `run_selectors`, plan strings)."""
        return (self.before if self.before is not None else -1), list(KINDS).index(self.kind)

    # -- the rules: what this selector keeps of the grid it is given ---------------------------------

    def kept(self, n: int) -> int:
        """Frames (T), tokens per frame for a ratio-sized anchor (S) or tokens (K) kept of n."""
        return kept_count(n, self.ratio, self.keep)

    def anchor(self, h: int, w: int) -> tuple[int, int]:
        """(anchor size a, stride s) on an h x w map (S): a = anchor_size, else floor(sqrt(int(h*w*ratio)));
        s = anchor_stride, else max((min(h, w) - a) // 2, 1) (paper, official code). Not range-checked."""
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
        if self.ratio is not None:
            amount = repr(float(self.ratio))  # shortest string that round-trips
        elif self.keep is not None:
            amount = f"k{self.keep}"
        else:
            amount = f"a{self.anchor_size}" + (f"s{self.anchor_stride}" if self.anchor_stride else "")
        return f"{self.name}_{amount}"


@dataclass(frozen=True)
class SelectionPlan:
    """An ordered set of selectors plus the settings of their perturbed top-K and scoring policy.

    num_samples, sigma, jacobian ("full" | "diagonal"), variance_reduction (perturbed_topk's: none | loo |
    antithetic | loo+antithetic): the estimator; policy: "learned" (the STTS scorers) or a training-free
    policy at the same budget ("uniform", "random", "change", "saliency": stts.policies).
    """

    specs: tuple[SelectorSpec, ...] = ()
    num_samples: int = 500
    sigma: float = 0.05
    jacobian: str = "full"
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
            raise _bad(plan, f"cannot read {text[pos:]!r}; {_GRAMMAR}")
        kind, before = m["kind"].upper(), int(m["index"])
        if m["ratio"] is not None:
            ratio = float(m["ratio"])
            if not 0.0 < ratio <= 1.0:
                raise _bad(plan, f"keep ratio {m['ratio']} of {kind}{before} must be in (0, 1]")
            amount = dict(ratio=ratio)
        elif m["keep"] is not None:
            if kind == "S":
                raise _bad(plan, f"{kind}{before}: a spatial anchor takes a ratio or 'a<size>[s<stride>]', not k")
            amount = dict(keep=int(m["keep"]))
        else:
            if kind != "S":
                raise _bad(plan, f"{kind}{before}: 'a<size>' is for spatial anchors (S) only")
            amount = dict(anchor_size=int(m["anchor"]), anchor_stride=int(m["stride"]) if m["stride"] else None)
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
