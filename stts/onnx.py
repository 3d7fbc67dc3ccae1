"""ONNX export of an eval-mode stts model, checked against torch with ONNX Runtime.

    from stts.onnx import export_onnx
    report = export_onnx(model, "mvit_stts.onnx")      # input "video" (B, C, T, H, W) -> "logits" (B, classes)
    report.max_abs_diff                                  # ONNX Runtime vs torch, largest |difference|

    stts export runs/t05/best.pt mvit_stts.onnx         # the same from the command line

In eval mode every selector takes a hard top-K of a plan-fixed size K, so the exported graph has
static token counts after each selector: the later blocks really run on the kept tokens in ONNX
Runtime too (TopK + Gather nodes, then smaller MatMuls). Only the batch axis is dynamic.

Exporter: `torch.onnx.export(..., dynamo=True)` on a `torch.export` program (non-strict), opset 23:
the first opset with ONNX's `Attention` operator, which `F.scaled_dot_product_attention` maps to
(ONNX Runtime >= 1.23 runs it), and with `Gelu` (opset 20). Needs the optional extra
`pip install 'stts-video[onnx]'` (onnx, onnxruntime, onnxscript); `import stts` does not import them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from stts.errors import MissingExtraError

__all__ = ["OPSET", "OnnxReport", "OnnxMismatchError", "export_onnx", "check_onnx", "ort_session", "require_onnx"]

OPSET = 23
INPUT_NAME, OUTPUT_NAME = "video", "logits"


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime's logits differ from torch's by more than the tolerance (the file is written)."""


def require_onnx() -> None:
    """Raise MissingExtraError (an ImportError) naming the packages if onnx, onnxruntime or onnxscript
    is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"ONNX export needs {', '.join(missing)}: pip install 'stts-video[onnx]'")


@dataclass
class OnnxReport:
    """What `export_onnx` wrote and how closely ONNX Runtime reproduces torch."""

    path: str
    opset: int
    input_shape: tuple  # (C, T, H, W); the batch axis is dynamic
    max_abs_diff: dict = field(default_factory=dict)  # batch size -> max |ORT - torch| over the logits
    onnx_ops: dict = field(default_factory=dict)  # op type -> count in the graph

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values()) if self.max_abs_diff else float("nan")


@contextlib.contextmanager
def _quiet():
    """The exporter's chatter (no torchvision to register, the optimizer's skipped folds, a torch-internal
    FutureWarning) is not the user's business; errors still show."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model: nn.Module, path: "str | os.PathLike", *, input_size: tuple | None = None,
                opset: int = OPSET, check: bool = True, atol: float = 1e-4, check_batch_sizes=(1, 3),
                seed: int = 0) -> OnnxReport:
    """Export `model` in eval mode to `path` (.onnx, weights inside) with a dynamic batch axis.

    input_size: (C, T, H, W) of the clips (default: the model's `input_size`); T, H, W are fixed in
    the graph, as the selectors' K follows from them. check: run ONNX Runtime on random clips of each
    of `check_batch_sizes` and raise OnnxMismatchError if a logit differs from torch's by more than `atol`.
    The model itself is not changed (a copy is put in eval mode).
    """
    require_onnx()
    model = copy.deepcopy(model).eval()  # a copy: the caller's train/eval state and weights stay as they were
    C, T, H, W = input_size or model.input_size
    gen = torch.Generator().manual_seed(seed)
    # Batch 2 to trace: a batch of 1 would be specialised (1 is special-cased by torch.export).
    x = torch.randn(2, C, T, H, W, generator=gen)
    with torch.no_grad(), _quiet():
        # One eager call first fills the geometry caches (Swin's window masks and gathers, see
        # stts.models.layers.constant_cache): the trace then takes them as constants (initializers
        # in ONNX) instead of tracing their builders into the graph for the optimizer to fold.
        model(x)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
        onnx_program = torch.onnx.export(program, (x,), dynamo=True, opset_version=opset, verbose=False,
                                         input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx_program.save(str(tmp), external_data=False)
    os.replace(tmp, path)  # never a half-written file under the final name
    report = OnnxReport(str(path), opset, (C, T, H, W), onnx_ops=_op_counts(path))
    if check:
        report.max_abs_diff = check_onnx(path, model, input_size=(C, T, H, W), batch_sizes=check_batch_sizes,
                                         seed=seed + 1)
        if report.worst > atol:
            raise OnnxMismatchError(f"{path}: ONNX Runtime logits differ from torch by {report.worst:.3g} > {atol:g} "
                                 f"(per batch size: {report.max_abs_diff})")
    return report


def _op_counts(path) -> dict:
    import onnx

    counts: dict = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def check_onnx(path: "str | os.PathLike", model: nn.Module, *, input_size: tuple | None = None,
               batch_sizes=(1, 3), seed: int = 1, threads: int = 0) -> dict:
    """Max |ONNX Runtime - torch| over the logits of random clips, per batch size ({B: float})."""
    if model.training:
        model = copy.deepcopy(model).eval()
    C, T, H, W = input_size or model.input_size
    session = ort_session(path, threads=threads)
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for b in batch_sizes:
        x = torch.randn(b, C, T, H, W, generator=gen)
        with torch.no_grad():
            ref = model(x)
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        diffs[b] = float((torch.from_numpy(out) - ref).abs().max())
    return diffs


def ort_session(path: "str | os.PathLike", *, threads: int = 0):
    """A CPU ONNX Runtime session; threads > 0 fixes the intra-op thread count (0: ORT's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
