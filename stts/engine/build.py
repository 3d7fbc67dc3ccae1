"""What a run config builds, for training and evaluation alike: the model with its selection plan, and
the autocast dtype.

    plan = selection_plan(cfg)              # model.selection (or the variant's own) + the config's settings
    model = build_model(cfg, num_classes)   # create_model(cfg.model.name, selection=plan, ...)
    amp = amp_dtype_for(cfg.train.amp, device)

The selector settings travel one way, set once: run config (model.num_samples, sigma, jacobian,
variance_reduction, policy) -> `SelectionPlan` -> `create_model` -> each selector's constructor; the
plan is what checkpoints record.
"""

from __future__ import annotations

import torch
from torch import nn

from stts.errors import ConfigError
from stts.models import create_model, model_entry
from stts.plan import SelectionPlan, parse_plan

__all__ = ["build_model", "selection_plan", "amp_dtype_for"]


def amp_dtype_for(mode: str, device: torch.device) -> torch.dtype | None:
    """train.amp -> autocast dtype (None: full precision). auto: bf16 if the GPU has it, else fp16; off on CPU."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def selection_plan(cfg) -> SelectionPlan | None:
    """The plan cfg.model asks for: model.selection on a dense name, else the registered variant's own
    plan (None: dense), with the config's settings on top ('' / null keep the plan's own)."""
    m = cfg.model
    settings = {"num_samples": m.num_samples, "policy": m.policy,
                **({"sigma": m.sigma} if m.sigma is not None else {}),
                **({"jacobian": m.jacobian} if m.jacobian else {}),
                **({"variance_reduction": m.variance_reduction} if m.variance_reduction else {})}
    own = model_entry(m.name).plan
    if m.selection:  # a published variant's other amounts start from its own settings
        return parse_plan(m.selection, **{**(own.settings if own is not None else {}), **settings})
    return own.with_settings(**settings) if own is not None else None


def build_model(cfg, num_classes: int) -> nn.Module:
    """The registry model of cfg.model, sized for cfg.data's clips, with its selection plan."""
    m = cfg.model
    optional = {"drop_path_rate": m.drop_path_rate, "head_drop": m.head_dropout}  # None: the variant's own
    kwargs = {"num_classes": m.num_classes or num_classes, **{k: v for k, v in optional.items() if v is not None},
              **_input_kwargs(cfg), **m.kwargs}
    try:
        return create_model(m.name, selection=selection_plan(cfg), **kwargs)
    except (TypeError, ValueError) as e:  # a kwarg the builder does not take, a plan that does not fit
        raise ConfigError(f"model {m.name!r} cannot be built with {kwargs} (model.kwargs, model.selection, "
                          f"data.num_frames, data.crop_size): {e}") from None


def _input_kwargs(cfg) -> dict:
    """Clip size the backbone is built for (position embeddings depend on it): the data's."""
    return {"num_frames": cfg.data.num_frames, "img_size": cfg.data.crop_size}
