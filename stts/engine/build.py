"""What a run config builds, for training and evaluation alike: the model with its selection plan, the
autocast dtype, and the plan a cost target picks (`--gflops`).

    plan = selection_plan(cfg)              # model.selection (or the variant's own) + the config's settings
    model = build_model(cfg, num_classes)   # create_model(cfg.model.name, selection=plan, ...)
    amp = amp_dtype_for(cfg.train.amp, device)
    plan = set_plan_for_gflops(model, 20.0)  # `--gflops 20` of eval / bench / flops / visualize

The selector settings travel one way, set once: run config (model.num_samples, sigma, jacobian,
variance_reduction, policy) -> `SelectionPlan` -> `create_model` -> each selector's constructor; the
plan is what checkpoints record.
"""

from __future__ import annotations

import torch
from torch import nn

from stts.budget import plan_for
from stts.errors import ConfigError, UsageError
from stts.models import create_model, model_entry
from stts.patch import set_plan
from stts.plan import SelectionPlan, parse_plan

__all__ = ["build_model", "selection_plan", "amp_dtype_for", "set_plan_for_gflops"]


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


def set_plan_for_gflops(model: nn.Module, gflops: float, input_size: tuple | None = None) -> SelectionPlan:
    """`--gflops X` (eval, bench, flops, visualize): `stts.set_plan(model, stts.plan_for(model, X))` at
    `input_size` (C, T, H, W; default the model's). UsageError naming the option when X is not positive,
    the model has no selection points, or no plan of them costs at most X. -> the plan."""
    if not gflops > 0:
        raise UsageError(f"--gflops {gflops:g}: must be > 0")
    if not len(getattr(model, "selectors", ())):
        raise UsageError(f"--gflops {gflops:g}: {getattr(model, 'model_name', type(model).__name__)} has no selection "
                         "points to set amounts for; give it a plan (e.g. a range T0_0.25:1.0) or use an STTS model")
    try:
        plan = plan_for(model, gflops, input_size=input_size)
    except ValueError as e:
        raise UsageError(f"--gflops {gflops:g}: {e}") from None
    set_plan(model, plan)
    return plan
