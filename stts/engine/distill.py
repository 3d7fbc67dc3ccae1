"""Knowledge distillation during fine-tuning: a frozen teacher's softened predictions join the loss.

    distiller = build_distiller(cfg, num_classes, device)       # None unless train.distill_from is set
    loss = distiller.loss(ce, student_logits, x)                # x: the student's (mixed) input

STTS fine-tunes from a dense model, and that model is a free teacher: it saw every token, so its
predictions say what the selecting student should conclude from the fewer tokens it keeps. The loss
is the usual convex mix (Hinton et al. 2015; DeiT's "soft" distillation):

    loss = (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))

with w = `train.distill_weight` and T = `train.distill_temperature` (the T^2 keeps the gradient scale
of the soft term independent of T). The teacher runs in eval mode (no drop path, hard top-K if it
selects), without gradients, on exactly the batch the student sees (after mixup / cutmix), under the
same autocast. `train.distill_from=finetune` takes the teacher from `model.finetune`.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from stts.errors import ConfigError

__all__ = ["Distiller", "distill_kl", "build_distiller", "teacher_path"]


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) with p = softmax(logits / T), averaged over the batch; (B, C) -> ()."""
    s = (student_logits.float() / temperature).log_softmax(dim=-1)  # (B, C)
    t = (teacher_logits.float() / temperature).log_softmax(dim=-1)  # (B, C)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


class Distiller:
    """A frozen teacher and the weight / temperature of its term in the loss."""

    def __init__(self, teacher: nn.Module, *, weight: float, temperature: float, amp_dtype=None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight, self.temperature, self.amp_dtype = weight, temperature, amp_dtype
        self.last_kl = torch.zeros(())  # the last batch's soft term (detached), for logging

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, num_classes). eval() again each time: nothing may switch it to training."""
        self.teacher.eval()
        with torch.autocast(x.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
            return self.teacher(x)

    def loss(self, ce: torch.Tensor, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The mixed loss from the usual loss `ce`, the student's logits and the input they came from."""
        kl = distill_kl(student_logits, self.teacher_logits(x), self.temperature)
        self.last_kl = kl.detach()
        return (1.0 - self.weight) * ce + self.weight * kl


def teacher_path(cfg) -> str:
    """train.distill_from resolved: "finetune" names model.finetune's file."""
    return cfg.model.finetune if cfg.train.distill_from == "finetune" else cfg.train.distill_from


def build_distiller(cfg, num_classes: int, device: torch.device, amp_dtype=None, *,
                    trust_checkpoint: bool = False) -> Distiller | None:
    """The teacher of cfg.train.distill_from, rebuilt from its checkpoint (stts.load_model, weights-only
    unless trust_checkpoint), or None.

    Building it draws no random numbers from the global generators (a model's initialisation would),
    so a run with distill_weight=0 is the plain run, step for step."""
    t = cfg.train
    if not t.distill_from:
        return None
    from stts.checkpoint import load_model

    path = teacher_path(cfg)
    with torch.random.fork_rng(devices=[]):
        teacher = load_model(path, trust_checkpoint=trust_checkpoint)
    classes = _num_outputs(teacher)
    if classes is not None and classes != num_classes:
        raise ConfigError(f"train.distill_from={t.distill_from!r}: the teacher {path} predicts {classes} classes, "
                          f"the model being trained {num_classes}")
    return Distiller(teacher.to(device), weight=t.distill_weight, temperature=t.distill_temperature,
                     amp_dtype=amp_dtype)


def _num_outputs(model: nn.Module) -> int | None:
    return getattr(getattr(model, "head", None), "out_features", None)  # every stts backbone's nn.Linear head
