"""FLOPs in the papers' convention, counted without running the model on real data.

    fc = count_flops(model, (1, 3, 16, 224, 224))
    fc.gflops                      # multiply-adds / 1e9 (fvcore's "FLOPs", as PySlowFast reports them)
    fc.scorer_gflops               # the selectors' share: their scorers, or a training-free policy's distances
    fc.by_operator                 # {"linear": ..., "matmul": ..., "conv": ..., "layer_norm": ..., "norm": ...}

The model runs once on the meta device (shapes only, no arithmetic), in eval mode, so a selector takes
its hard top-K and the blocks after it are counted at their reduced size. Each ATen op is counted
as fvcore counts it: one multiply-add is one FLOP; mm/addmm/bmm/matmul/einsum/linear by their
multiply-adds, convolution as batch * prod(weight) * prod(output spatial) (bias ignored), LayerNorm
as 5 per element with affine (4 without), fused attention as its two matmuls, a vector norm as one
multiply-add per element it reduces (the training-free policies' distances, stts.policies: their whole
cost, charged to their selectors); element-wise ops, softmax, GELU, pooling, top-k, gather and copies are free. fvcore traces the official code, whose
attention is written as two matmuls, so counting SDPA as two matmuls keeps the totals comparable.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["FlopCount", "count_flops", "count_params"]

aten = torch.ops.aten


def _prod(shape) -> int:
    return math.prod(int(s) for s in shape)


def _mm(args, out):  # (n, m) @ (m, p)
    return _prod(args[0].shape) * args[1].shape[-1]


def _addmm(args, out):  # bias + (n, m) @ (m, p)
    return _prod(args[1].shape) * args[2].shape[-1]


def _bmm(args, out):  # (b, n, m) @ (b, m, p)
    return _prod(args[0].shape) * args[1].shape[-1]


def _baddbmm(args, out):
    return _prod(args[1].shape) * args[2].shape[-1]


def _conv(args, out):
    x, w, transposed = args[0], args[1], args[6]
    spatial = (x.shape if transposed else out.shape)[2:]
    return x.shape[0] * _prod(w.shape) * _prod(spatial)


def _layer_norm(args, out):
    has_affine = len(args) > 2 and args[2] is not None
    return _prod(args[0].shape) * (5 if has_affine else 4)


def _vector_norm(args, out):  # ||v|| over the reduced dims: one multiply-add (v_i * v_i) per element
    return _prod(args[0].shape)


def _sdpa(args, out):
    q, k, v = args[0], args[1], args[2]  # (B, nh, Lq, hd), (B, nh, Lk, hd), (B, nh, Lk, hdv)
    batch = _prod(q.shape[:-2])
    return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


_RULES = {
    aten.mm.default: ("linear", _mm),
    aten.addmm.default: ("linear", _addmm),
    aten.addmm_.default: ("linear", _addmm),  # in place: MViT's inference MLP accumulates into its residual
    aten.bmm.default: ("matmul", _bmm),
    aten.baddbmm.default: ("matmul", _baddbmm),
    aten.convolution.default: ("conv", _conv),
    aten.native_layer_norm.default: ("layer_norm", _layer_norm),
    aten.linalg_vector_norm.default: ("norm", _vector_norm),
}
for _name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
    if hasattr(aten, _name):
        _RULES[getattr(aten, _name).default] = ("matmul", _sdpa)


@dataclass
class FlopCount:
    """Multiply-adds of one forward pass, in total, by operator kind and by top-level module."""

    total: int = 0
    by_operator: dict = field(default_factory=dict)
    by_module: dict = field(default_factory=dict)  # first-level children; "selectors.T0" for selectors

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    @property
    def scorer_gflops(self) -> float:
        return sum(v for k, v in self.by_module.items() if k.startswith("selectors")) / 1e9


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_operator: Counter = Counter()
        self.by_module: defaultdict = defaultdict(int)
        self.scope: list[str] = []

    def enter(self, path: str):
        def hook(module, args):
            self.scope.append(path)
        return hook

    def leave(self, module, args, output):
        self.scope.pop()  # returns None: a forward hook's return value would replace the output

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = _RULES.get(func)
        if rule is not None:
            kind, fn = rule
            result = out[0] if isinstance(out, (tuple, list)) else out
            n = int(fn(args, result))
            self.by_operator[kind] += n
            self.by_module[_scope_name(self.scope[-1]) if self.scope else ""] += n
        return out


def _scope_name(path: str) -> str:
    """Module path -> the bucket it is reported under (first level; selectors by name)."""
    parts = path.split(".")
    if parts[0] == "selectors" and len(parts) > 1:
        return f"selectors.{parts[1]}"
    return parts[0]


def count_flops(model: nn.Module, input_shape: tuple | None = None, *, inputs: tuple | None = None,
                as_published: bool = True) -> FlopCount:
    """Count one forward pass of `model` on an input of `input_shape` (default: `model.input_size`
    with batch 1), without computing anything: parameters and input are replaced by meta tensors.

    as_published: count every token the official code computes (the published tables' convention);
    False: what stts's eval forward computes, which skips the tokens nothing reads (fewer).
    """
    if inputs is None:
        if input_shape is None:
            size = getattr(model, "input_size", None)
            if size is None:
                raise ValueError(f"give input_shape: {type(model).__name__} has no `input_size`")
            input_shape = (1, *size)
        inputs = (torch.empty(input_shape, device="meta"),)
    else:
        inputs = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs)
    meta_state = {k: torch.empty_like(v, device="meta") for k, v in
                  [*model.named_parameters(), *model.named_buffers()]}
    counter = _Counter()
    handles = []
    for path, module in model.named_modules():
        if path:  # ops are charged to the innermost running module's bucket
            handles.append(module.register_forward_pre_hook(counter.enter(path)))
            handles.append(module.register_forward_hook(counter.leave))
    was_training = model.training
    model.eval()
    # The published counts charge every token the official code computes; stts's forward skips the
    # tokens nothing reads (`skip_unread_tokens` on a model or module: MViT's last-block class token,
    # the keys its strided pools never read), which are counted the published way here.
    skipping = [m for m in model.modules() if getattr(m, "skip_unread_tokens", False)] if as_published else []
    for m in skipping:
        m.skip_unread_tokens = False
    try:
        with torch.no_grad(), counter:
            torch.func.functional_call(model, meta_state, inputs, strict=False)
    finally:
        model.train(was_training)
        for m in skipping:
            m.skip_unread_tokens = True
        for h in handles:
            h.remove()
    total = sum(counter.by_operator.values())
    return FlopCount(total, dict(counter.by_operator), {k: v for k, v in counter.by_module.items() if v})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
