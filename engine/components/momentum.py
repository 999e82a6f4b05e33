"""Momentum (EMA) encoders: a teacher/key network that trails the student.

Used by MoCo (He et al. 2020; key encoder, m = 0.999), BYOL (Grill et al. 2020;
target network, m from 0.996 to 1 by cosine), MoCo v3 (0.99 -> 1), DINO (teacher,
0.996 -> 1) and iBOT. The teacher never receives gradients.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(step: int, total: int, base: float, schedule: str = "cosine", final: float = 1.0) -> float:
    """EMA momentum at ``step``: constant ``base``, or ``final - (final - base) * (cos(pi k / K) + 1) / 2``
    (BYOL eq. in section 3.2; DINO's ``cosine_scheduler(base, 1, ...)``)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown momentum schedule '{schedule}' (constant or cosine)")
    if schedule == "constant" or total <= 1:
        return base
    return final - (final - base) * (math.cos(math.pi * step / total) + 1) / 2


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` (no gradients), without stochastic depth or dropout:
    DINO builds its teacher ViT without ``drop_path_rate`` (the student keeps it), so the
    targets are not randomly thinned."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for mod in teacher.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
        elif hasattr(mod, "drop_prob"):  # timm's DropPath
            mod.drop_prob = 0.0
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, on parameters; buffers (BN stats) are copied."""
    tp = [p for p in teacher.parameters()]
    sp = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(tp, sp, 1.0 - m)
    tb, sb = list(teacher.buffers()), list(student.buffers())
    if tb:
        torch._foreach_copy_(tb, sb)  # one multi-tensor kernel on CUDA, not one copy per BN buffer
