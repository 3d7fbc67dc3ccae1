"""AdamW parameter groups, the lr schedule, and the STTS phases (scorer-only warm-up, then all).

    groups = param_groups(model, weight_decay=0.05, backbone_lr_mult=0.1)
    opt = torch.optim.AdamW(groups, lr=1e-4)
    lr = get_lr(step, total_steps=..., warmup_steps=..., lr=1e-4, min_lr=1e-6)
    set_lr(opt, lr, backbone_frozen=epoch < 3)

Groups are (scorer | backbone) x (decay | no decay). No weight decay on 1-D parameters (norms,
biases) and on the names in `model.no_weight_decay()` (position embeddings, class token).
"Scorer" = every parameter under `model.selectors`; the rest (head included) is "backbone".
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "get_lr", "set_lr", "set_backbone_trainable", "is_scorer_param"]


def is_scorer_param(name: str) -> bool:
    return name.startswith("selectors.")


def param_groups(model: nn.Module, *, weight_decay: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups with `lr_mult` (scorers 1, backbone `backbone_lr_mult`) and their weight decay."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        scorer = is_scorer_param(name)
        decay = p.ndim > 1 and name not in skip
        g = groups.setdefault((scorer, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_mult": 1.0 if scorer else backbone_lr_mult, "scorer": scorer,
            "name": f"{'scorer' if scorer else 'backbone'}_{'decay' if decay else 'no_decay'}",
        })
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over `param_groups(model)`; cfg is an OptimConfig. The lr is set each step by `set_lr`."""
    groups = param_groups(model, weight_decay=cfg.weight_decay, backbone_lr_mult=cfg.backbone_lr_mult)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def get_lr(step: int, *, total_steps: int, warmup_steps: int, lr: float, min_lr: float,
           warmup_start_lr: float = 0.0) -> float:
    """Linear warm-up from `warmup_start_lr` to `lr` over `warmup_steps`, then cosine to `min_lr` at
    `total_steps` (held after). `step` counts optimizer steps from 0."""
    if step < warmup_steps:
        return warmup_start_lr + (lr - warmup_start_lr) * step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, *, backbone_frozen: bool = False) -> None:
    for g in optimizer.param_groups:
        g["lr"] = 0.0 if (backbone_frozen and not g["scorer"]) else lr * g["lr_mult"]


def set_backbone_trainable(model: nn.Module, trainable: bool, keep: "set[str]" = frozenset()) -> None:
    """Freeze or unfreeze every non-scorer parameter (names in `keep` stay trainable).

    Freezing by requires_grad (not by lr 0) is the cheap and correct way: the gradients still flow
    through the frozen blocks' activations to the scorers, but no weight gradient is computed for the
    backbone, and AdamW keeps no moments for it (with lr 0 they would fill up during the warm-up and
    bias the first backbone steps).
    """
    for name, p in model.named_parameters():
        if not is_scorer_param(name) and name not in keep:
            p.requires_grad_(trainable)
