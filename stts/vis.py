"""Pictures of what the selectors keep: per-frame facts, a grid figure, an animation, a trade-off plot.

    logits, sels = model(x, return_selections=True)                 # x: (B, 3, T, H, W)
    regions = kept_regions(sels, sample=0, num_frames=16, frame_size=(224, 224))
    regions[3]           # FrameSelection(kept=True, box=(32.0, 16.0, 192.0, 192.0), score=0.81)
    fig = plot_selection([(frames, regions, "true: abseiling | pred: abseiling")], "sel.png")
    save_selection_animation(frames, regions, "sel.gif")            # or .mp4 (PyAV)
    plot_accuracy_vs_gflops([{"name": "dense", "gflops": 70.5, "top1": 78.4, "kind": "dense"}, ...], "acc.png")

`kept_regions` is pure logic (tensors in, dataclasses out); the plotting functions import matplotlib
inside, so `import stts` never loads it. `frames` are the uint8 (T, H, W, 3) pixels the model saw
(after resize and crop), so a box in their pixels is where the model looked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from stts.plan import KINDS
from stts.selectors import Selection

__all__ = ["FrameSelection", "kept_regions", "plot_selection", "save_selection_animation",
           "plot_accuracy_vs_gflops"]

Box = tuple[float, float, float, float]  # (top, left, height, width)

KEPT_COLOR = "#2ca02c"  # border of kept frames
BOX_COLOR = "#ffdd00"  # anchor box: yellow reads on most footage, and differs from the border
TOKEN_COLOR = (1.0, 0.85, 0.0)  # kept token cells


@dataclass
class FrameSelection:
    """What the model kept of one input frame, in that frame's pixels.

    kept: the frame reaches the last block (survived every temporal selection and, after token-level
        selection, still has at least one token).
    box: (top, left, height, width) px of the region the last anchor kept; None = the whole frame.
    score: the first temporal selector's (normalised) score of the temporal token holding the frame;
        None without temporal selection. The first one saw every frame, so scores compare across the row.
    token_mask: token-level selection only, bool (h, w) over `box` (or the whole frame): kept cells.
    """

    kept: bool = True
    box: Box | None = None
    score: float | None = None
    token_mask: np.ndarray | None = None


_NAME = re.compile(r"([TSK])(\d+)")


def _plan_order(selections: Mapping[str, Selection]) -> list[tuple[str, Selection]]:
    """(name, Selection) in execution order: by place, then T before S before K (as `stts.patch` runs
    them). Names that are not plan names ("T0") keep the mapping's order, which `run_selectors` fills
    in execution order."""
    items = list(selections.items())
    parsed = [_NAME.fullmatch(name) for name, _ in items]
    if not all(parsed):
        return items
    order = sorted(range(len(items)), key=lambda i: (int(parsed[i][2]), list(KINDS).index(parsed[i][1]), i))
    return [items[i] for i in order]


def _regroup(groups: list[list[int]], t_in: int, name: str) -> list[list[int]]:
    """Match the frame groups to a selector's T_in temporal tokens.

    The patch embedding's temporal stride (and any temporal pooling between selectors) makes one token
    of several frames: token t covers the groups [t*n/T_in, (t+1)*n/T_in)."""
    n = len(groups)
    if t_in == n:
        return groups
    if t_in < 1 or t_in > n:
        raise ValueError(f"selection {name} sees {t_in} temporal tokens, but only {n} frame groups remain; "
                         "is num_frames the clip length the model was given?")
    return [[f for g in groups[t * n // t_in:(t + 1) * n // t_in] for f in g] for t in range(t_in)]


def kept_regions(selections: Mapping[str, Selection], sample: int, num_frames: int,
                 frame_size: tuple[int, int]) -> list[FrameSelection]:
    """A model's selections for one sample -> one `FrameSelection` per input frame, in pixels.

    selections: {name: Selection} from `model(x, return_selections=True)` (indices (B, ...)).
    sample: which batch element. num_frames: frames in the clip. frame_size: (H, W) px of the input.
    Selectors compose in plan order: a temporal selection indexes the temporal tokens still present
    (each covering num_frames / T_in frames at first), an anchor selection indexes the frames the
    earlier temporal selections kept, and every grid covers the region its predecessors kept, so a
    token is region / thw_in[1:] px (MViT-B: 224 px / 14 = 16 px before block 4).
    """
    H, W = frame_size
    groups = [[f] for f in range(num_frames)]  # temporal tokens still in the map -> their input frames
    region: list[Box] = [(0.0, 0.0, float(H), float(W))] * num_frames  # px covered by the current grid
    boxed = [False] * num_frames  # an anchor has narrowed the region
    kept = [True] * num_frames
    scores: list[float | None] = [None] * num_frames
    tokens: list[tuple[int, int, int]] | None = None  # after token-level selection: kept (group, row, col)
    token_grid = (0, 0)
    for name, sel in _plan_order(selections):
        T_in, H_in, W_in = sel.thw_in
        if tokens is None:  # after a token-level selection the grid is (1, 1, K): no frames to regroup
            groups = _regroup(groups, T_in, name)
        if sel.kind == "temporal":
            idx = sel.indices[sample].tolist()
            if any(not 0 <= i < T_in for i in idx):
                raise ValueError(f"selection {name}: indices {idx} out of range for {T_in} temporal tokens")
            for t, group in enumerate(groups):
                for f in group:
                    if scores[f] is None:
                        scores[f] = float(sel.scores[sample, t])
                    if t not in idx:
                        kept[f] = False
            groups = [groups[t] for t in sorted(set(idx))]
        elif sel.kind == "anchor":
            if sel.boxes is None:
                raise ValueError(f"anchor selection {name} carries no boxes")
            boxes = sel.boxes[sample].tolist()  # (T_in, 4) in tokens of thw_in
            for t, group in enumerate(groups):
                top, left, h, w = boxes[t]
                for f in group:
                    rt, rl, rh, rw = region[f]
                    sy, sx = rh / H_in, rw / W_in  # px per token of this grid
                    region[f] = (rt + top * sy, rl + left * sx, h * sy, w * sx)
                    boxed[f] = True
        elif sel.kind == "token":
            if tokens is None:  # indices into the flattened T_in*H_in*W_in grid
                cells = [(t, r, c) for t in range(T_in) for r in range(H_in) for c in range(W_in)]
                token_grid = (H_in, W_in)
            else:  # a later token selection indexes the tokens the previous one kept
                cells = tokens
            if T_in * H_in * W_in != len(cells):
                raise ValueError(f"selection {name} sees a {T_in}x{H_in}x{W_in} grid, but {len(cells)} tokens remain")
            tokens = [cells[i] for i in sel.indices[sample].tolist()]
        else:
            raise ValueError(f"selection {name}: unknown kind {sel.kind!r}")

    masks: list[np.ndarray | None] = [None] * num_frames
    if tokens is not None:
        for group in groups:
            for f in group:
                masks[f] = np.zeros(token_grid, dtype=bool)
        for t, r, c in tokens:
            for f in groups[t]:
                masks[f][r, c] = True
        kept = [k and masks[f] is not None and bool(masks[f].any()) for f, k in enumerate(kept)]
    return [FrameSelection(kept=kept[f], box=region[f] if boxed[f] else None, score=scores[f],
                           token_mask=masks[f]) for f in range(num_frames)]


# ---------------------------------------------------------------------------------------------------
# Figures. matplotlib is imported inside each function.
# ---------------------------------------------------------------------------------------------------


def _greyed(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> desaturated, dimmed and flattened toward mid-grey: plainly "not used"."""
    lum = frame[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    g = 0.35 * lum + 0.25 * 255  # contrast squeezed into [64, 153]: still legible, never mistaken for kept
    return np.repeat(g[..., None], 3, axis=-1).round().astype(np.uint8)


def _draw_frame(ax, frame: np.ndarray, sel: FrameSelection, *, border: float = 3.0) -> None:
    """One panel: the frame (greyed if dropped), its border, anchor box and kept-token overlay."""
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    H, W = frame.shape[:2]
    ax.imshow(frame if sel.kept else _greyed(frame), interpolation="nearest", extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(KEPT_COLOR if sel.kept else "#b0b0b0")
        spine.set_linewidth(border if sel.kept else 0.8)
    if not sel.kept:
        return
    top, left, h, w = sel.box if sel.box is not None else (0.0, 0.0, float(H), float(W))
    if sel.token_mask is not None:
        # Kept cells tinted, dropped cells darkened: a translucent grid over the region.
        m = sel.token_mask
        rgba = np.zeros((*m.shape, 4), np.float32)
        rgba[m] = (*TOKEN_COLOR, 0.30)
        rgba[~m] = (0.0, 0.0, 0.0, 0.55)
        ax.imshow(rgba, interpolation="nearest", extent=(left - 0.5, left + w - 0.5, top + h - 0.5, top - 0.5))
    if sel.box is not None:
        # Shade what lies outside the anchor (the model never sees it past this point), then outline
        # the anchor with a dark halo so the yellow line reads on bright footage too.
        x0, y0, x1, y1 = left - 0.5, top - 0.5, left + w - 0.5, top + h - 0.5
        for bx, by, bw, bh in ((-0.5, -0.5, W, y0 + 0.5), (-0.5, y1, W, H - 0.5 - y1),
                               (-0.5, y0, x0 + 0.5, y1 - y0), (x1, y0, W - 0.5 - x1, y1 - y0)):
            if bw > 0 and bh > 0:
                ax.add_patch(Rectangle((bx, by), bw, bh, facecolor="black", alpha=0.45, linewidth=0))
        lw = max(1.0, border * 0.6)
        ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor=BOX_COLOR, linewidth=lw,
                               path_effects=[patheffects.withStroke(linewidth=lw + 1.5, foreground="black")]))
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)


def plot_selection(clips: Sequence[tuple], path: "str | Path | None" = None, *, scores: bool = True,
                   title: str | None = None, panel_inches: float = 1.1, dpi: int | None = None):
    """Grid figure: one row per clip, every frame in order; kept frames in colour with a green border
    and the anchor box (yellow), dropped frames greyed; optionally a bar of temporal scores below.

    clips: [(frames uint8 (T, H, W, 3), [FrameSelection] * T, label str | None)].
    path: also save there (PNG). dpi: default enough for about one screen pixel per frame pixel
    (frames of 224 px) and nearest-neighbour blocks for tiny ones (32 px).
    Returns the matplotlib Figure.
    """
    from matplotlib.figure import Figure  # not pyplot: no global figure state, works without a display

    if not clips:
        raise ValueError("plot_selection: no clips")
    clips = [(np.asarray(f), list(r), lab) for f, r, lab in clips]
    for frames, regions, _ in clips:
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(regions) != len(frames):
            raise ValueError(f"expected frames (T, H, W, 3) with T FrameSelections, got {frames.shape} and "
                             f"{len(regions)}")
    cols = max(len(f) for f, _, _ in clips)
    H, W = clips[0][0].shape[1:3]
    has_scores = scores and any(r.score is not None for _, regs, _ in clips for r in regs)
    pw, ph = panel_inches, panel_inches * H / W
    lines = max((lab.count("\n") + 1 if lab else 0) for _, _, lab in clips)
    label_h = 0.1 + 0.14 * lines  # inches of room above each row for its label (8 pt lines)
    bar_h = 0.32 if has_scores else 0.0
    row_h = label_h + ph + bar_h
    top_h = 0.35 if title else 0.05
    fig_w, fig_h = cols * pw + 0.2, len(clips) * row_h + top_h + 0.1
    if dpi is None:
        dpi = int(min(220, max(100, W / pw)))
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / fig_h)
    gap = 0.04  # inches between panels
    for row, (frames, regions, label) in enumerate(clips):
        y0 = fig_h - top_h - row * row_h - label_h - ph  # bottom of the frame panels, inches
        for t, (frame, sel) in enumerate(zip(frames, regions)):
            ax = fig.add_axes(((0.1 + t * pw + gap / 2) / fig_w, y0 / fig_h, (pw - gap) / fig_w, ph / fig_h))
            _draw_frame(ax, frame, sel, border=2.5)
        if label:
            fig.text(0.1 / fig_w, (y0 + ph + 0.06) / fig_h, label, fontsize=8, ha="left", va="bottom")
        if has_scores:
            n = len(frames)
            bx = fig.add_axes((0.1 / fig_w, (y0 - bar_h + 0.02) / fig_h, n * pw / fig_w, (bar_h - 0.06) / fig_h))
            vals = [r.score if r.score is not None else 0.0 for r in regions]
            bx.bar(range(n), vals, width=0.9, color=[KEPT_COLOR if r.kept else "#b0b0b0" for r in regions])
            bx.axhline(0, color="#808080", linewidth=0.6)  # baseline, so a score of 0 still shows a bar slot
            bx.set_xlim(-0.5, n - 0.5)
            bx.set_ylim(0, max(1.0, max(vals)))
            bx.set_axis_off()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, facecolor="white")
    return fig


def _animation_frames(frames: np.ndarray, regions: Sequence[FrameSelection], label: str | None,
                      size_inches: float) -> list[np.ndarray]:
    """Render one RGB image per input frame: the frame panel plus a strip of every frame's state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    T, H, W = frames.shape[:3]
    dpi = int(min(200, max(100, W / size_inches)))
    strip_h = 0.25
    fig = Figure(figsize=(size_inches, size_inches * H / W + strip_h + 0.3), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    fh = fig.get_figheight()
    out = []
    for t in range(T):
        fig.clear()
        ax = fig.add_axes((0.04, (strip_h + 0.05) / fh, 0.92, (size_inches * H / W) / fh * 0.92))
        _draw_frame(ax, frames[t], regions[t], border=3.0)
        state = "kept" if regions[t].kept else "dropped"
        head = f"frame {t + 1}/{T}: {state}"
        fig.text(0.5, 1 - 0.04 / fh, f"{label}\n{head}" if label else head, ha="center", va="top", fontsize=7)
        # The strip: one cell per frame, green kept / grey dropped, the current one outlined.
        sx = fig.add_axes((0.04, 0.03 / fh, 0.92, (strip_h - 0.06) / fh))
        for i, r in enumerate(regions):
            sx.add_patch(Rectangle((i, 0), 0.9, 1, color=KEPT_COLOR if r.kept else "#c8c8c8"))
        sx.add_patch(Rectangle((t - 0.05, -0.1), 1.0, 1.2, fill=False, edgecolor="black", linewidth=1.2))
        sx.set_xlim(-0.1, T)
        sx.set_ylim(-0.15, 1.15)
        sx.set_axis_off()
        canvas.draw()
        out.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return out


def save_selection_animation(frames, regions: Sequence[FrameSelection], path: "str | Path", *,
                             fps: float = 4.0, label: str | None = None, size_inches: float = 2.6) -> Path:
    """Write the clip frame by frame with its kept/dropped state and box: `.gif` (Pillow, which ships
    with matplotlib) or `.mp4` (PyAV, H.264). frames: uint8 (T, H, W, 3). Returns the path."""
    frames = np.asarray(frames)
    if len(regions) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(regions)} FrameSelections")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = _animation_frames(frames, regions, label, size_inches)
    if path.suffix.lower() == ".mp4":
        import av

        h, w = (s - s % 2 for s in images[0].shape[:2])  # yuv420p needs even sides
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=max(1, round(fps)))
            stream.height, stream.width = h, w
            stream.pix_fmt = "yuv420p"
            for img in images:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:h, :w]), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    else:
        from PIL import Image

        pil = [Image.fromarray(img) for img in images]
        pil[0].save(path, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
    return path


def plot_accuracy_vs_gflops(rows: Sequence[Mapping], path: "str | Path | None" = None, *,
                            title: str = "Top-1 vs GFLOPs per view"):
    """Top-1 against GFLOPs per view, every named point labelled; dense models also drawn as dashed
    reference lines (their top-1), STTS points joined by cost, baselines in grey; rows with a "curve"
    are drawn per curve instead, joined by cost, each in its own colour and named in the legend.

    rows: [{"name", "gflops", "top1", "kind": "dense" | "stts" | "baseline", optional "curve": str}];
    an empty name draws the point without a label. Returns the Figure.
    """
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("plot_accuracy_vs_gflops: no rows")
    style = {"dense": dict(marker="*", s=140, color="black", zorder=3),
             "stts": dict(marker="o", s=45, color="#1f77b4", zorder=3),
             "baseline": dict(marker="s", s=40, color="#999999", zorder=2)}
    fig = Figure(figsize=(6.4, 4.4), dpi=150)
    ax = fig.add_subplot()
    groups = [(kind, kind, style[kind], [r for r in rows if r.get("curve") is None and r.get("kind", "stts") == kind])
              for kind in ("baseline", "stts", "dense")]
    curves = list(dict.fromkeys(r["curve"] for r in rows if r.get("curve") is not None))
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    markers = ["o", "v", "^", "D", "P", "X", "<", ">"]
    for i, curve in enumerate(curves):
        groups.append((curve, "curve", dict(marker=markers[i % len(markers)], s=36, zorder=3,
                                            color=colours[i % len(colours)]),
                       [r for r in rows if r.get("curve") == curve]))
    for label, kind, st, members in groups:
        pts = sorted((float(r["gflops"]), float(r["top1"]), str(r["name"] or "")) for r in members)
        if not pts:
            continue
        xs, ys, names = zip(*pts)
        ax.scatter(xs, ys, label=label, **st)
        if kind in ("stts", "curve") and len(pts) > 1:
            ax.plot(xs, ys, color=st["color"], linewidth=1, alpha=0.6)
        if kind == "dense":
            for y in ys:
                ax.axhline(y, color="black", linestyle="--", linewidth=0.8, alpha=0.6, zorder=1)
        for x, y, name in pts:
            if name:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("GFLOPs per view")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7 if curves else 8, loc="best" if curves else "lower right")  # curves fill the corners
    ax.margins(x=0.15, y=0.12)  # room for the labels of the outermost points
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, facecolor="white")
    return fig
