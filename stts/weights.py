"""Reading and writing weight files safely: the low level under `stts.checkpoint` and the registry.

    ckpt = read_checkpoint("MVIT_B_16x4.pyth")         # a dict of tensors and plain data, on the CPU
    sd = extract_state_dict(ckpt)                       # the weights, whichever library wrote the file
    load_state_dict_checked(model, sd, strict=False)    # errors list missing / unexpected / mis-shaped keys
    atomic_save(obj, "run/last.pt")                     # never a half-written file

Safety: a `.pt` / `.pth` / `.pyth` file is a pickle, and unpickling can run any code the file carries.
`read_checkpoint` reads with `torch.load(weights_only=True)`, which accepts tensors and plain data
(dicts, lists, numbers, strings) only; stts's own checkpoints, PySlowFast's and mmaction2's load that
way. A file that needs more is refused with a `CheckpointError` naming the file and what it needed.
`trust_checkpoint=True` (CLI: `--trust-checkpoint`) unpickles it in full: only for a file whose origin
you trust, since a crafted one runs code on your machine as it loads. `.safetensors` files hold
tensors and JSON metadata only and are always safe.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stts.errors import CheckpointError

__all__ = ["read_checkpoint", "extract_state_dict", "load_state_dict_checked", "atomic_save", "remove_orphan_temps",
           "CheckpointError", "TRUST_HINT"]

# How a refusal tells the user to opt in (one name everywhere: keyword and flag).
TRUST_HINT = ("if you trust where the file comes from, load it in full with --trust-checkpoint (Python: "
              "trust_checkpoint=True); unpickling runs any code a crafted file carries, as your user")


def remove_orphan_temps(path: "str | os.PathLike") -> list[Path]:
    """Delete the temporary files a killed `atomic_save` / `save_model` of `path` left behind
    (`.<name>.*tmp` beside it); returns them. One writer per file is assumed (rank 0 writes)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    orphans = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*tmp") if p.is_file()]
    for p in orphans:
        try:
            p.unlink()
        except FileNotFoundError:  # removed meanwhile
            pass
    return orphans


def atomic_save(obj: Any, path: "str | os.PathLike") -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: never a half-written file.
    Temporary files of an earlier save that was killed are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(path: "str | os.PathLike", *, trust_checkpoint: bool = False) -> dict:
    """Load a checkpoint file into a dict of tensors/metadata on the CPU (.pt/.pth/.pyth/.safetensors).

    Pickled files are read with `torch.load(weights_only=True)`; one that needs arbitrary Python objects
    is refused (CheckpointError naming the file and the object) unless `trust_checkpoint=True`, which
    unpickles it in full and so runs whatever code it carries: only for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        if trust_checkpoint:
            raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
        raise CheckpointError(f"{path}: refused to load: {_refusal(str(e))}; {TRUST_HINT}") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: re-raised with the file name
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(ckpt).__name__}")
    return ckpt


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _refusal(message: str) -> str:
    """What torch's weights-only unpickler could not accept, from its error message."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    if m:
        why = f"it needs the Python object {m[1]}, which the safe (weights-only) unpickler does not create"
        if m[1].startswith("numpy"):  # e.g. a training checkpoint of an earlier stts (numpy RNG state)
            why += (" (checkpoints of earlier stts versions held numpy arrays; convert one you trust once "
                    "with `stts export --trust-checkpoint OLD.pt NEW.safetensors`, or resume it with the flag)")
        return why
    m = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    why = m[1].strip().splitlines()[0] if m else _first_line(Exception(message))
    return f"the safe (weights-only) unpickler cannot read it ({why}): not a plain torch checkpoint"


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        tensors, meta = {}, {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read safetensors file {path} (truncated or not safetensors?): "
                              f"{_first_line(e)}") from None
    ckpt: dict = {"model": tensors}
    if "stts" in meta:  # build config written by save_model / `stts export` (JSON): load_model rebuilds the model
        try:
            cfg = json.loads(meta["stts"])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: the 'stts' metadata is not valid JSON: {e}") from None
        if not (isinstance(cfg, dict) and isinstance(cfg.get("model"), str)
                and isinstance(cfg.get("kwargs", {}), dict)
                and isinstance(cfg.get("selection") or {}, dict)):
            raise CheckpointError(f"{path}: the 'stts' metadata must be a JSON object with 'model' (a registry "
                                  f"name), 'kwargs' (an object) and 'selection'; got {meta['stts'][:200]!r}")
        ckpt["stts"] = cfg
    return ckpt


def extract_state_dict(ckpt: dict) -> dict:
    """The weights inside a checkpoint dict, whichever library wrote it."""
    for key in ("model", "model_state", "state_dict", "module"):
        if key in ckpt and isinstance(ckpt[key], dict):
            sd = ckpt[key]
            break
    else:
        sd = ckpt
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"no tensors found in checkpoint (top-level keys: {sorted(ckpt)[:10]})")
    # DDP-saved weights carry a `module.` prefix.
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _describe(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_checked(model: nn.Module, state_dict: dict, *, strict: bool = True, source: str = "") -> dict:
    """load_state_dict with errors that list missing, unexpected and mis-shaped keys.

    With strict=False missing/unexpected keys are allowed (reported in the returned dict), but a key
    present on both sides with another shape is always an error.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    where = f" from {source}" if source else ""
    if shapes:
        raise CheckpointError(f"shape mismatch loading{where}: {_describe(shapes)}")
    if strict and (missing or unexpected):
        msg = [f"checkpoint{where} does not match {type(model).__name__}"]
        if missing:
            msg.append(f"missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            msg.append(f"unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        msg.append("pass strict=False to load what fits (e.g. a dense checkpoint into an STTS model)")
        raise CheckpointError("; ".join(msg))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}
