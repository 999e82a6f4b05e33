"""DINO's centring and sharpening of the teacher output, and its temperature warm-up.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
(arXiv:2104.14294), section 3.1 ("Avoiding collapse"), eq. (4), and ``DINOLoss`` /
``teacher_temp_schedule`` in the official ``main_dino.py``.

* Centring: a running mean ``c`` of the teacher logits is subtracted before the softmax;
  after each step ``c <- m * c + (1 - m) * mean_b t_b`` (``m = 0.9``). Centring alone
  pushes towards the uniform distribution; sharpening counteracts it.
* Sharpening: a low teacher temperature, ``P_t = softmax((t - c) / tau_t)``.
* Warm-up: ``tau_t`` rises linearly from 0.04 to 0.07 over the first 30 epochs, then
  stays: per epoch ``e``, ``np.linspace(warmup_temp, temp, warmup_epochs)[e]`` for
  ``e < warmup_epochs``, else ``temp`` (the official per-epoch array).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """The official per-epoch array: linear warm-up (endpoints included), then constant."""
    warm = np.linspace(warmup_temp, temp, warmup_epochs)
    return np.concatenate([warm, np.full(max(0, epochs - warmup_epochs), temp)])[:max(epochs, 0)]


def teacher_temp_at(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """``teacher_temp_schedule(...)[epoch]`` without building the array (any epoch >= 0)."""
    if epoch >= warmup_epochs:
        return float(temp)
    if warmup_epochs == 1:
        return float(warmup_temp)  # linspace(a, b, 1) == [a]
    return float(warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1))


class Centering(nn.Module):
    """Teacher centring (EMA of the batch mean of the logits) and sharpening.

    ``forward(t, temperature)``: teacher logits ``t [N, K]`` -> probabilities
    ``softmax((t - c) / temperature)`` ``[N, K]`` float32 (no gradient).
    ``update(t, momentum)``: ``c <- m c + (1 - m) mean_n t_n`` (call after using ``c``).
    The centre ``c [1, K]`` is a buffer (saved in checkpoints).
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("center", torch.zeros(1, dim))  # c: [1, K]

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        with torch.autocast(device_type=teacher_logits.device.type, enabled=False):
            return torch.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor, momentum: float | None = None) -> None:
        m = self.momentum if momentum is None else float(momentum)
        batch_center = teacher_logits.detach().float().mean(dim=0, keepdim=True)  # [1, K]
        self.center.mul_(m).add_(batch_center, alpha=1.0 - m)


__all__ = ["Centering", "teacher_temp_at", "teacher_temp_schedule"]
