"""Models to and from files: stts's own format, official ones, and safetensors weights.

    stts.save_model(model, "run/model.pt")              # weights + what rebuilds the model
    model = stts.load_model("run/model.pt")              # rebuilt from the checkpoint alone
    model = stts.load_model(ckpt)                        # ... or from a checkpoint dict already read
    model = stts.create_model("mvit_b_16x4", pretrained="MVIT_B_16x4.pyth")   # official weights

An stts checkpoint is a `torch.save`d dict with at least
    {"stts": {"format": 1, "model": NAME, "kwargs": {...}, "selection": plan.to_dict() | None},
     "model": state_dict}
and, written by the training engine, optimizer / scheduler / step / config entries beside them.
Official files keep their own layout: PySlowFast `.pyth` (`model_state`, YAML text under `cfg`),
mmaction (`state_dict` with `backbone.` / `cls_head.` prefixes). Each backbone family registers how
its official keys translate (`stts.models.register_family`); reading files safely is `stts.weights`.
Every file is read weights-only unless `trust_checkpoint=True` (see `stts.weights`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from stts.errors import CheckpointError
from stts.models import create_model, load_pretrained, official_readers
from stts.plan import SelectionPlan
from stts.weights import atomic_save, extract_state_dict, load_state_dict_checked, read_checkpoint, remove_orphan_temps

__all__ = [
    "save_model",
    "load_model",
    "load_pretrained",
    "read_checkpoint",
    "extract_state_dict",
    "model_config",
    "atomic_save",
    "remove_orphan_temps",
    "CheckpointError",
]

FORMAT_VERSION = 1


def model_config(model: nn.Module) -> dict:
    """What `load_model` needs to rebuild `model`: registry name, kwargs, selection plan."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise CheckpointError(f"{type(model).__name__} was not built by stts.create_model, so a checkpoint "
                              "cannot say how to rebuild it")
    plan = getattr(model, "plan", None)
    return {"format": FORMAT_VERSION, "model": name, "kwargs": dict(getattr(model, "model_kwargs", {})),
            "selection": plan.to_dict() if plan is not None and len(plan) else None}


def save_model(model: nn.Module, path: "str | os.PathLike", **extra: Any) -> None:
    """Save weights and build config atomically, so that `load_model(path)` rebuilds the model.

    `*.safetensors`: the weights, with the build config as JSON under the metadata key "stts" (no
    `extra`); any other name: a torch file {"stts": config, "model": state dict, **extra}.
    """
    raw = getattr(model, "module", model)  # unwrap DDP
    if Path(path).suffix != ".safetensors":
        atomic_save({"stts": model_config(raw), "model": raw.state_dict(), **extra}, path)
        return
    if extra:
        raise ValueError(f"{path}: a safetensors file holds weights and the build config only, not {sorted(extra)}")
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path)
    # clone: safetensors refuses tensors that share storage (tied or sliced weights)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in raw.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"stts": json.dumps(model_config(raw))})
    os.replace(tmp, path)  # never a half-written file under the final name


def load_model(source: "str | os.PathLike | dict", *, strict: bool = True, trust_checkpoint: bool = False,
               name: "str | os.PathLike | None" = None, **overrides: Any) -> nn.Module:
    """Rebuild a model from a checkpoint alone and load its weights.

    source: a checkpoint file, or a checkpoint dict already read (`read_checkpoint`), so that a command
        reads its file once; `name` (default: the path) is what errors call it.
    Works for stts checkpoints (they carry name, kwargs and plan) and for official checkpoints that
    carry their config (PySlowFast `.pyth` with `cfg`), through the registered official readers.
    `overrides` replace build kwargs (e.g. num_classes for a new head, with strict=False).
    trust_checkpoint: unpickle a file the safe loader refuses (runs its code: trusted files only).
    """
    if isinstance(source, dict):
        ckpt, path = source, name or "checkpoint"
    else:
        ckpt, path = read_checkpoint(source, trust_checkpoint=trust_checkpoint), name or source
    cfg = ckpt.get("stts")
    if cfg is None:
        model = _model_from_official(ckpt, path, overrides)
        load_pretrained(model, ckpt, strict=strict, name=str(path))
        return model
    kwargs = {**cfg.get("kwargs", {}), **overrides}
    selection = cfg.get("selection")
    try:
        # The saved plan carries the settings it ran with; a published variant takes it if its specs
        # are the variant's own (create_model checks).
        model = create_model(cfg["model"], selection=SelectionPlan.from_dict(selection) if selection else None,
                             **kwargs)
    except (TypeError, ValueError) as e:  # a name or kwarg this version does not know
        raise CheckpointError(f"{path}: cannot build the model its config describes ({cfg['model']!r}, kwargs "
                              f"{kwargs}, selection {selection}): {e}") from None
    load_state_dict_checked(model, extract_state_dict(ckpt), strict=strict, source=str(path))
    return model


def _model_from_official(ckpt: dict, path, overrides: dict) -> nn.Module:
    for build in official_readers():
        try:
            model = build(ckpt, **overrides)
        except (TypeError, ValueError) as e:  # an official config this version cannot build
            raise CheckpointError(f"{path}: {e}") from None
        if model is not None:
            return model
    raise CheckpointError(f"{path} carries no stts config and no official config this version can read; "
                          "build the model with stts.create_model(NAME, pretrained=PATH) instead")
