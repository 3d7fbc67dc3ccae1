"""Model registry: one short builder function per variant (timm style), and per backbone family its
checkpoint reading (official keys -> ours, official configs -> a model).

    @register_model
    def mvit_b_16x4(**kwargs): return _create_mvit(dict(depth=16, embed_dim=96), kwargs)

    @register_model("mvit_b_16x4_stts_t0.5_s0.7", plan=parse_plan("T0_0.5-S4_0.7367", sigma=0.1), meta=...)
    def _mvit_b_16x4_stts_t05_s07(**kwargs): ...

    register_family(MViT, checkpoint_filter=checkpoint_filter_fn, official_reader=model_from_official)

    model = create_model("mvit_b_16x4", num_classes=400, selection="T0_0.5-S4_0.7")

A published STTS variant carries its plan with the settings it was trained with (`entry.plan`);
`create_model(name, selection=plan)` accepts a plan for it with the variant's selection points (other
amounts, as `stts.set_plan` gives, or other settings: a checkpoint records both) and refuses any other. Importing `stts.models` registers every
backbone module, so every name and family is known once this package is imported.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from stts.patch import patch
from stts.plan import SelectionPlan, parse_plan
from stts.weights import extract_state_dict, load_state_dict_checked, read_checkpoint

__all__ = ["register_model", "create_model", "list_models", "model_entry", "ModelEntry", "register_family",
           "checkpoint_filter_for", "official_readers", "load_pretrained"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its builder, its default selection plan (with settings), published facts."""

    name: str
    builder: Callable[..., nn.Module]
    plan: SelectionPlan | None = None  # the published STTS variants': specs + sigma, jacobian, ...
    meta: dict = field(default_factory=dict)  # published numbers: gflops, top1, frames, ...


@dataclass(frozen=True)
class ModelFamily:
    """How checkpoints of one backbone class are read.

    checkpoint_filter(state_dict, model) -> state_dict: official keys -> ours (stts keys pass through).
    official_reader(ckpt) -> model | None: the model an official checkpoint's own config describes.
    """

    model_class: type
    checkpoint_filter: Callable[[dict, nn.Module], dict] | None = None
    official_reader: Callable[[dict], "nn.Module | None"] | None = None


_REGISTRY: dict[str, ModelEntry] = {}
_FAMILIES: list[ModelFamily] = []


def register_model(name_or_fn=None, *, plan: "str | SelectionPlan | None" = None, meta: dict | None = None):
    """Register a builder under its function name, or under `name` with a default plan."""

    def wrap(fn, name=None):
        name = name or fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, parse_plan(plan) if plan is not None else None, dict(meta or {}))
        return fn

    if callable(name_or_fn):
        return wrap(name_or_fn)
    return lambda fn: wrap(fn, name_or_fn)


def register_family(model_class: type, *, checkpoint_filter=None, official_reader=None) -> None:
    """Say how checkpoints of `model_class` (and its subclasses) are read (see `ModelFamily`)."""
    _FAMILIES.append(ModelFamily(model_class, checkpoint_filter, official_reader))


def checkpoint_filter_for(model: nn.Module) -> Callable[[dict, nn.Module], dict] | None:
    """The checkpoint filter of the family `model` belongs to (None: stts keys only)."""
    for family in _FAMILIES:
        if isinstance(model, family.model_class) and family.checkpoint_filter is not None:
            return family.checkpoint_filter
    return None


def official_readers() -> list[Callable[[dict], "nn.Module | None"]]:
    """Every family's official-config reader, in registration order."""
    return [f.official_reader for f in _FAMILIES if f.official_reader is not None]


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; an unknown name raises an error listing the close matches."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _plan(entry: ModelEntry, selection: Any) -> SelectionPlan | None:
    """The plan `create_model` adds: `selection` for a dense name; for a published variant its own plan,
    or `selection` if it has the same selection points (a plan string then takes the variant's settings)."""
    if selection is None:
        return entry.plan
    if entry.plan is None:
        return parse_plan(selection)
    plan = selection if isinstance(selection, SelectionPlan) else parse_plan(selection, **entry.plan.settings)
    if plan.points != entry.plan.points:
        raise ValueError(f"{entry.name!r} already selects tokens at {'-'.join(entry.plan.points)} ({entry.plan}); "
                         f"selection= may change how much they keep and the settings (sigma, jacobian, ...) but "
                         f"not where it selects (got {plan}): pass another plan with a dense model such as the "
                         "one it was built from")
    return plan


def create_model(name: str, *, pretrained: str | None = None, selection: Any = None, strict: bool = True,
                 trust_checkpoint: bool = False, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from `list_models()`.
        pretrained: local path of a checkpoint (stts, PySlowFast `.pyth`, mmaction, safetensors).
        selection: a plan ("T0_0.5-S4_0.7" or a SelectionPlan with its settings) added with `stts.patch`.
            A published STTS variant carries its own plan: selection= may then only give other amounts
            or settings for its selection points (e.g. what a checkpoint saved after `stts.set_plan`).
        strict: fail on missing or unexpected checkpoint keys; False to fine-tune a dense checkpoint
            into an STTS model (the scorers then start fresh).
        trust_checkpoint: unpickle a `pretrained` file that the safe (weights-only) loader refuses.
            Unpickling runs any code the file carries: only for files whose origin you trust.
        **kwargs: the backbone's keyword arguments (num_classes, drop_path_rate, num_frames, ...).
    """
    entry = model_entry(name)
    plan = _plan(entry, selection)
    model = entry.builder(**kwargs)
    if plan is not None:
        patch(model, plan)
    # What rebuilds this model from a checkpoint: stts.checkpoint saves it, stts.load_model reads it.
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained, strict=strict, trust_checkpoint=trust_checkpoint)
    return model


def load_pretrained(model: nn.Module, source: "str | os.PathLike | dict", *, strict: bool = True,
                    trust_checkpoint: bool = False, name: str | None = None) -> dict:
    """Load weights from any supported checkpoint (a path, or a checkpoint dict already read) into
    `model`, official keys translated by its family's filter; returns {"missing", "unexpected"}.

    trust_checkpoint: unpickle a file the safe loader refuses (runs its code: trusted files only).
    name: what errors call a checkpoint dict (default: the path).
    """
    ckpt = source if isinstance(source, dict) else read_checkpoint(source, trust_checkpoint=trust_checkpoint)
    sd = extract_state_dict(ckpt)
    filter_fn = checkpoint_filter_for(model)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    where = name or ("checkpoint" if isinstance(source, dict) else str(source))
    return load_state_dict_checked(model, sd, strict=strict, source=where)
