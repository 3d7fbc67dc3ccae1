"""What the selectors keep, counted over batches and ranks: the statistics training logs and eval reports.

    stats = SelectionStats()
    stats.update(selections)                 # {name: Selection} of one batch (hard choices)
    summary = stats.reduce().summary()       # over all ranks: {"T0": {"kind": "temporal", ...}, ...}
    print(format_selections(summary))        # one line per selector

temporal: how often each input frame is kept; anchor: how often each anchor position wins and the mean
anchor centre (fraction of the map height/width); token: kept tokens per input frame. Each kind's
counting, summary and line live together in one small class (`_KIND_STATS`, keyed by `Selection.kind`).
Counts stay on the selections' device (no GPU sync per step) until `state()` / `reduce()`; `state()` is
plain data, stored in training checkpoints. Each (selector, geometry) is counted apart, so the budgets
of elastic training (another number of frames kept, another anchor size) each get their own line.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from stts.engine import distributed as D

__all__ = ["SelectionStats", "format_selections"]


class _FrameStats:
    """Temporal selection: indices (B, K) kept frames, counted per clip."""

    @staticmethod
    def count(sel) -> tuple[Tensor, int, int, Tensor, Tensor]:
        """-> (histogram, clips or frames counted, kept per count, centre sum (2,) or (1,), size sum)."""
        idx = sel.indices.detach()
        zero = torch.zeros(1, device=idx.device)
        return torch.bincount(idx.flatten(), minlength=sel.thw_in[0]), idx.shape[0], idx.shape[1], zero, zero

    @staticmethod
    def summary(d: dict, n: int) -> dict:
        return {"kind": "temporal", "frames_in": d["thw_in"][0], "kept": d["kept"], "clips": d["n"],
                "kept_fraction_per_frame": [round(float(v) / n, 4) for v in d["hist"]]}

    @staticmethod
    def line(name: str, s: dict) -> str:
        return (f"{name} keeps {s['kept']}/{s['frames_in']} frames; kept fraction per frame: "
                + " ".join(f"{v:.2f}" for v in s["kept_fraction_per_frame"]))


class _AnchorStats:
    """Anchor selection: indices (B, T) the winning anchor per frame, boxes (B, T, 4); counted per frame."""

    @staticmethod
    def count(sel):
        T, H, W = sel.thw_in
        idx = sel.indices.detach()
        hist = torch.bincount(idx.flatten(), minlength=sel.scores.shape[-1])
        top, left, h, w = sel.boxes.detach().float().reshape(-1, 4).unbind(-1)  # (B*T,) each
        centre = torch.stack([((top + h / 2) / H).sum(), ((left + w / 2) / W).sum()])
        return hist, idx.numel(), 1, centre, h.sum()[None]

    @staticmethod
    def summary(d: dict, n: int) -> dict:
        _, H, W = d["thw_in"]
        y, x = (np.asarray(d["centre"], dtype=np.float64) / n).tolist()
        return {"kind": "anchor", "map": [H, W], "anchor_size": round(float(d["size"][0]) / n), "frames": d["n"],
                "anchor_win_fraction": [round(float(v) / n, 4) for v in d["hist"]],
                "mean_centre_yx": [round(y, 4), round(x, 4)]}

    @staticmethod
    def line(name: str, s: dict) -> str:
        y, x = s["mean_centre_yx"]
        return (f"{name} anchor {s['anchor_size']}x{s['anchor_size']} of {s['map'][0]}x{s['map'][1]}; "
                f"mean centre (y, x) = ({y:.2f}, {x:.2f}); wins: "
                + " ".join(f"{v:.2f}" for v in s["anchor_win_fraction"]))


class _TokenStats:
    """Token-level selection: indices (B, K) positions in T*H*W, counted as kept tokens per input frame."""

    @staticmethod
    def count(sel):
        T, H, W = sel.thw_in
        idx = sel.indices.detach()
        frames = torch.div(idx, H * W, rounding_mode="floor")
        zero = torch.zeros(1, device=idx.device)
        return torch.bincount(frames.flatten(), minlength=T), idx.shape[0], idx.shape[1], zero, zero

    @staticmethod
    def summary(d: dict, n: int) -> dict:
        return {"kind": "token", "frames_in": d["thw_in"][0], "kept": d["kept"], "clips": d["n"],
                "kept_tokens_per_frame": [round(float(v) / n, 2) for v in d["hist"]]}

    @staticmethod
    def line(name: str, s: dict) -> str:
        return f"{name} keeps {s['kept']} tokens; per frame: " + " ".join(f"{v:.1f}" for v in s["kept_tokens_per_frame"])


_KIND_STATS = {"temporal": _FrameStats, "anchor": _AnchorStats, "token": _TokenStats}  # Selection.kind -> stats


class SelectionStats:
    """Accumulates what each selector keeps (hard choices) over batches; summary() after reducing ranks."""

    _SUMS = ("hist", "centre", "size")

    def __init__(self, data: dict | None = None):
        self.data: dict[str, dict] = data or {}

    def update(self, selections: dict) -> None:
        for name, sel in selections.items():
            hist, n, kept, centre, size = _KIND_STATS[sel.kind].count(sel)
            # One entry per selector and geometry: an elastic run's budgets change what a selector is given
            # and keeps (histograms of another length), so each amount is counted on its own.
            thw_out = tuple(sel.thw_out) if sel.thw_out is not None else ()
            key = f"{name}|{_grid(sel.thw_in)}>{_grid(thw_out)}|{sel.scores.shape[-1]}"
            d = self.data.setdefault(key, {"name": name, "kind": sel.kind, "thw_in": tuple(sel.thw_in),
                                           "thw_out": thw_out, "kept": kept, "n": 0, "hist": 0, "centre": 0,
                                           "size": 0})
            for k, value in zip(self._SUMS, (hist, centre, size)):
                d[k] = torch.as_tensor(d[k], device=value.device) + value
            d["n"] += n

    def state(self) -> dict:
        """The counts as plain Python lists and numbers (checkpoints load them with weights_only=True;
        all_gather_object sends them)."""
        return {name: {k: (v.detach().cpu().tolist() if isinstance(v, Tensor) else v) for k, v in d.items()}
                for name, d in self.data.items()}

    def reduce(self) -> "SelectionStats":
        """Merge every rank's counts (small: all_gather_object), so each rank holds the totals."""
        merged: dict[str, dict] = {}
        for part in D.all_gather_objects(self.state()):
            for name, d in part.items():
                m = merged.setdefault(name, {**d, "n": 0, **{k: 0 for k in self._SUMS}})
                m["n"] += d["n"]
                for key in self._SUMS:  # element-wise (lists would concatenate)
                    m[key] = (np.asarray(m[key]) + np.asarray(d[key])).tolist()
        return SelectionStats(merged)

    def summary(self) -> dict:
        """{selector name: its statistics}; a selector seen with several geometries (an elastic run's
        budgets) gets one entry per geometry, "T0 4x8x8->2x8x8", fewest kept first."""
        state = self.state()
        by_name: dict[str, list] = {}
        for key, d in state.items():
            by_name.setdefault(d.get("name", key), []).append(d)
        out = {}
        for name, entries in by_name.items():
            if len(entries) == 1:
                out[name] = _KIND_STATS[entries[0]["kind"]].summary(entries[0], max(entries[0]["n"], 1))
                continue
            for d in sorted(entries, key=lambda d: (math.prod(d.get("thw_out") or (0,)), d["thw_in"], len(d["hist"]))):
                label = f"{name} {_grid(d['thw_in'])}->{_grid(d.get('thw_out') or ())}"
                if label in out:  # the same grids, another anchor stride
                    label += f" ({len(d['hist'])} positions)"
                out[label] = _KIND_STATS[d["kind"]].summary(d, max(d["n"], 1))
        return out


def _grid(thw) -> str:
    return "x".join(str(int(v)) for v in thw)


def format_selections(summary: dict) -> str:
    """One line per selector: 'T0 keeps 4/8 frames; ...', 'S4 anchor 12x12 of 14x14; mean centre ...'."""
    return "\n".join(_KIND_STATS[s["kind"]].line(name, s) for name, s in summary.items())
