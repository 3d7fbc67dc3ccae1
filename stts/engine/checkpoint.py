"""Training checkpoints (resume), fine-tuning starts, and safetensors export.

    save_training_state(out / "last.pt", model, optimizer=opt, scaler=scaler, step=..., ...)
    state = load_training_state(path, model, optimizer, scaler)   # weights + optimizer + RNG restored
    report = load_finetune(model, "MVIT_B_16x4.pyth")             # dense -> STTS: scorers start fresh
    export_safetensors("runs/x/best.pt", "mvit_stts.safetensors")  # stts.load_model reads it back

A training checkpoint is an stts checkpoint (`stts.checkpoint`: {"stts": build config, "model": weights})
plus "optimizer", "scaler", "config" (resolved run config), "step" (optimizer steps done), "epoch",
"epoch_step" (steps done within that epoch), "best" (metric), "rng" (one entry per rank: python, numpy,
torch, cuda states and the mixup generator). `stts.load_model(path)` rebuilds the model from any of them.

Everything in them is tensors or plain data (numpy's RNG state as a list, selection counts as lists), so
they load with `torch.load(weights_only=True)`: resuming never unpickles code. The loaders here take
`trust_checkpoint=True` for a file the safe loader refuses (an old stts file, a foreign one); that
unpickles it in full and runs any code it carries: only for files you trust.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stts.checkpoint import load_model, model_config, save_model
from stts.models import checkpoint_filter_for
from stts.weights import (CheckpointError, atomic_save, extract_state_dict, load_state_dict_checked, read_checkpoint,
                          remove_orphan_temps)

__all__ = ["rng_state", "set_rng_state", "save_training_state", "load_training_state", "find_resume",
           "load_finetune", "export_safetensors"]


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG a training step draws from: python, numpy, torch (CPU, CUDA) and an extra generator,
    as tensors and plain data (what `torch.load(weights_only=True)` reads back)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only (`_all` would touch every GPU)
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]  # a list (or numpy's own tuple, older checkpoints)
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def save_training_state(path: "str | Path", model: nn.Module, **state) -> None:
    """Weights + build config + `state` (optimizer/scaler objects are turned into state dicts), atomically."""
    raw = getattr(model, "module", model)
    for key in ("optimizer", "scaler"):
        if key in state and hasattr(state[key], "state_dict"):
            state[key] = state[key].state_dict()
    atomic_save({"stts": model_config(raw), "model": raw.state_dict(), **state}, path)


def load_training_state(path: "str | Path", model: nn.Module, optimizer=None, scaler=None, *,
                        trust_checkpoint: bool = False) -> dict:
    """Restore weights (strict), optimizer and scaler in place; return the checkpoint dict (step, rng, ...).

    Temporary files left by a save that was killed are removed. trust_checkpoint: unpickle a file the
    safe loader refuses (runs its code: trusted files only)."""
    remove_orphan_temps(path)
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    if "optimizer" not in ckpt or "step" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no optimizer/step); "
                              "use model.finetune to start from its weights instead")
    load_state_dict_checked(model, extract_state_dict(ckpt), strict=True, source=str(path))
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return ckpt


def find_resume(resume: str, output_dir: "str | Path") -> Path | None:
    """train.resume -> the checkpoint to resume from: "auto" takes <output_dir>/last.pt if it exists."""
    if not resume:
        return None
    if resume == "auto":
        last = Path(output_dir) / "last.pt"
        remove_orphan_temps(last)  # a save killed before its rename left only a temporary file
        return last if last.is_file() else None
    return Path(resume)


def _classifier_prefix(model: nn.Module) -> str | None:
    """Name of the classifier module ("head", "head.proj", ...), found from get_classifier() or by name."""
    clf = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "head", None)
    if clf is None:
        return None
    for name, module in model.named_modules():
        if module is clf:
            return name
    return None


def load_finetune(model: nn.Module, path: "str | Path", *, trust_checkpoint: bool = False) -> dict:
    """Load a dense, official or stts checkpoint to fine-tune from; returns what happened.

    Non-strict about keys (a dense checkpoint has no scorer weights: they start fresh), strict about
    shapes, except the classifier: a checkpoint with another number of classes leaves the model's
    freshly initialised head in place. Returns {"missing", "unexpected", "head_reset", "fresh_scorers"}.
    trust_checkpoint: unpickle a file the safe loader refuses (runs its code: trusted files only).
    """
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    sd = extract_state_dict(ckpt)
    raw = getattr(model, "module", model)
    filter_fn = checkpoint_filter_for(raw)
    if filter_fn is not None and "stts" not in ckpt:
        sd = filter_fn(sd, raw)  # official keys -> ours
    own = raw.state_dict()
    head = _classifier_prefix(raw)
    head_reset = sorted(k for k, v in sd.items() if head and k.startswith(head + ".") and k in own
                        and v.shape != own[k].shape)
    sd = {k: v for k, v in sd.items() if k not in head_reset}
    result = load_state_dict_checked(raw, sd, strict=False, source=str(path))
    result["head_reset"] = head_reset
    result["fresh_scorers"] = [k for k in result["missing"] if k.startswith("selectors.")]
    return result


def export_safetensors(checkpoint: "str | Path", out: "str | Path", *, trust_checkpoint: bool = False) -> dict:
    """Write a checkpoint's weights to safetensors with the build config in the metadata (key "stts",
    JSON), so `stts.load_model(out)` rebuilds the model. Returns the build config.
    trust_checkpoint: unpickle a file the safe loader refuses (runs its code: trusted files only)."""
    model = load_model(checkpoint, trust_checkpoint=trust_checkpoint)  # validates: the weights fit the model they claim to be
    save_model(model, out)
    return model_config(model)
