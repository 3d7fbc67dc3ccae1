"""Model registry: one short builder function per variant (timm style).

    @register_model
    def mvit_b_16x4(**kwargs): return _create_mvit(dict(depth=16, embed_dim=96), kwargs)

    @register_model("mvit_b_16x4_stts_t0.5_s0.7", plan="T0_0.5-S4_0.7367", zoo=...)
    def _mvit_b_16x4_stts_t05_s07(**kwargs): ...

    model = create_model("mvit_b_16x4", num_classes=400, selection="T0_0.5-S4_0.7")
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "model_entry", "ModelEntry"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its builder, its default selection plan, and published facts (zoo)."""

    name: str
    builder: Callable[..., nn.Module]
    plan: str | None = None  # default selection plan (the published STTS variants)
    plan_settings: dict = field(default_factory=dict)  # default sigma/jacobian/... for that plan
    meta: dict = field(default_factory=dict)  # published numbers: gflops, top1, frames, ...


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name_or_fn=None, *, plan: str | None = None, plan_settings: dict | None = None,
                   meta: dict | None = None):
    """Register a builder under its function name, or under `name` with a default plan."""

    def wrap(fn, name=None):
        name = name or fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, plan, dict(plan_settings or {}), dict(meta or {}))
        return fn

    if callable(name_or_fn):
        return wrap(name_or_fn)
    return lambda fn: wrap(fn, name_or_fn)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    _import_backbones()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; an unknown name raises an error listing the close matches."""
    _import_backbones()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, *, pretrained: str | None = None, selection: Any = None, strict: bool = True,
                 trust_checkpoint: bool = False, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from `list_models()`.
        pretrained: local path of a checkpoint (stts, PySlowFast `.pyth`, mmaction, safetensors).
        selection: a plan ("T0_0.5-S4_0.7" or a SelectionPlan) added with `stts.patch`; the published
            STTS variants carry their own plan, so this is for dense names.
        strict: fail on missing or unexpected checkpoint keys; False to fine-tune a dense checkpoint
            into an STTS model (the scorers then start fresh).
        trust_checkpoint: unpickle a `pretrained` file that the safe (weights-only) loader refuses.
            Unpickling runs any code the file carries: only for files whose origin you trust.
        **kwargs: the backbone's keyword arguments (num_classes, drop_path_rate, num_frames, ...).
    """
    from stts.patch import patch  # local: patch imports selectors, which are not needed to list models

    entry = model_entry(name)
    if selection is not None and entry.plan is not None:
        raise ValueError(f"{name!r} already selects tokens ({entry.plan}); "
                         f"pass selection= with a dense model such as the one it was built from")
    model = entry.builder(**kwargs)
    plan = selection if selection is not None else entry.plan
    if plan is not None:
        patch(model, plan, **(entry.plan_settings if selection is None else {}))
    # What rebuilds this model from a checkpoint: stts.checkpoint saves it, stts.load_model reads it.
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    if pretrained is not None:
        from stts.checkpoint import load_pretrained

        load_pretrained(model, pretrained, strict=strict, trust_checkpoint=trust_checkpoint)
    return model


def _import_backbones() -> None:
    import stts.models  # noqa: F401  (registers every backbone module)
