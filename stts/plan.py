"""Selection plans in the paper's notation: where selectors go and how much they keep.

    plan = parse_plan("T0_0.5-S4_0.7")     # temporal before block 0 (ratio 0.5), anchor before block 4
    plan = parse_plan("T0_k4-S4_a12s1")    # the same with explicit counts: 4 frames, 12x12 anchor, stride 1
    plan = parse_plan("K2_0.5")            # token-level selection before block 2 (beyond the paper)
    str(plan)                               # canonical string, round-trips through parse_plan

Parts are `<kind><index>_<amount>` joined by '-' (or '_', as in the official config names
`t0_0.5_s4_0.7`), case-insensitive:
- kind: T temporal (frames), S spatial anchor (one window per frame), K token-level;
- index: the block (MViT, ViT) or stage (Swin) the selector runs before;
- amount: a keep ratio in (0, 1]; or `k<int>` frames/tokens to keep (T, K); or `a<int>[s<int>]` anchor
  size and optional stride (S).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

__all__ = ["SelectorSpec", "SelectionPlan", "parse_plan"]

_KINDS = {"T": "temporal", "S": "anchor", "K": "token"}
_PART = re.compile(
    r"(?P<kind>[TSK])(?P<index>\d+)_(?:(?P<ratio>\d*\.\d+|\d+(?:\.\d*)?)(?![0-9a-z])|k(?P<keep>\d+)"
    r"|a(?P<anchor>\d+)(?:s(?P<stride>\d+))?)",
    re.IGNORECASE,
)
_GRAMMAR = ("expected parts like 'T0_0.5' (temporal), 'S4_0.7' (spatial anchor) or 'K2_0.5' (token-level), "
            "joined by '-'; amounts are a ratio in (0, 1], 'k<count>' or, for S, 'a<size>[s<stride>]'")


@dataclass(frozen=True)
class SelectorSpec:
    """One selector: kind ("T", "S" or "K"), the block/stage it runs before, and what it keeps."""

    kind: str
    before: int
    ratio: float | None = None
    keep: int | None = None
    anchor_size: int | None = None
    anchor_stride: int | None = None

    @property
    def name(self) -> str:
        """Key of the selector in `model.selectors`, e.g. "T0"."""
        return f"{self.kind}{self.before}"

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
    """An ordered set of selectors plus the settings of their perturbed top-K."""

    specs: tuple[SelectorSpec, ...] = ()
    num_samples: int = 500
    sigma: float = 0.05
    jacobian: str = "full"
    variance_reduction: str = "none"  # perturbed_topk's: none | loo | antithetic | loo+antithetic
    policy: str = "learned"
    options: dict = field(default_factory=dict, compare=False, hash=False)  # reserved for backbones

    def __str__(self) -> str:
        return "-".join(str(s) for s in self.specs)

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def to_dict(self) -> dict:
        """Plain data for checkpoints; `SelectionPlan.from_dict` inverts it."""
        return dict(plan=str(self), num_samples=self.num_samples, sigma=self.sigma, jacobian=self.jacobian,
                    variance_reduction=self.variance_reduction, policy=self.policy)

    @classmethod
    def from_dict(cls, d: dict) -> "SelectionPlan":
        d = dict(d)
        return parse_plan(d.pop("plan"), **d)

    def with_options(self, **settings) -> "SelectionPlan":
        return replace(self, **settings)


def _bad(plan: str, why: str) -> ValueError:
    return ValueError(f"bad selection plan {plan!r}: {why}")


def parse_plan(plan: "str | SelectionPlan | None", **settings) -> SelectionPlan:
    """Parse a plan string (see module docstring); `settings` set num_samples, sigma, jacobian,
    variance_reduction, policy."""
    if isinstance(plan, SelectionPlan):
        return plan.with_options(**settings) if settings else plan
    if plan is None or str(plan).strip() in ("", "none", "dense"):
        return SelectionPlan(**settings)
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
            spec = SelectorSpec(kind, before, ratio=ratio)
        elif m["keep"] is not None:
            if kind == "S":
                raise _bad(plan, f"{kind}{before}: a spatial anchor takes a ratio or 'a<size>[s<stride>]', not k")
            spec = SelectorSpec(kind, before, keep=int(m["keep"]))
        else:
            if kind != "S":
                raise _bad(plan, f"{kind}{before}: 'a<size>' is for spatial anchors (S) only")
            spec = SelectorSpec(kind, before, anchor_size=int(m["anchor"]),
                                anchor_stride=int(m["stride"]) if m["stride"] else None)
        if (spec.keep == 0) or (spec.anchor_size == 0) or (spec.anchor_stride == 0):
            raise _bad(plan, f"{spec}: counts must be >= 1")
        if any(s.name == spec.name for s in specs):
            raise _bad(plan, f"two {_KINDS[kind]} selectors before {before}")
        specs.append(spec)
        pos = m.end()
        if pos < len(text):
            if text[pos] not in "-_":
                raise _bad(plan, f"expected '-' between parts at {text[pos:]!r}; {_GRAMMAR}")
            pos += 1
            if pos == len(text):
                raise _bad(plan, "trailing separator")
    order = sorted(specs, key=lambda s: (s.before, "TSK".index(s.kind)))
    token_at = [s.before for s in order if s.kind == "K"]
    if token_at and any(s.kind != "K" and s.before >= token_at[0] for s in order):
        raise _bad(plan, "token-level selection (K) flattens the grid; T or S cannot come at or after it")
    return SelectionPlan(specs=tuple(order), **settings)
