"""The DINO loss: cross-entropy between the teacher's and the student's distributions.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
(arXiv:2104.14294), eq. (3) and algorithm 1; ``DINOLoss`` in the official ``main_dino.py``.

With ``P_t^i`` the (centred, sharpened) teacher distribution of global view ``i`` and
``P_s^v = softmax(s_v / tau_s)`` the student distribution of view ``v``::

    loss = 1/P * sum_{i < G} sum_{v != i} mean_b [ - sum_k P_t^i[b, k] log P_s^v[b, k] ]

over the ``P = G * (V - 1)`` pairs (teacher global view ``i``, any other student view
``v``), ``G`` global views first among the ``V`` views. Computed in float32 with autocast
off (logits over 65536 outputs lose too much in bf16). Returns a float32 scalar.

Because every teacher view appears in the same number of pairs, the loss splits as
``mean entropy of P_t + mean KL(P_t || P_s)`` (section 5.3, fig. 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def dino_loss(student_logits: Sequence[torch.Tensor] | torch.Tensor,
              teacher_probs: Sequence[torch.Tensor] | torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """student_logits: V tensors [B, K] or one [V, B, K] (global views first); teacher_probs: G
    tensors [B, K] or one [G, B, K] (rows sum to 1, for global views 0..G-1, no gradient).
    -> scalar float32.

    All pairs at once, not one kernel chain per pair: with ``Q = sum_i P_t^i`` the sum over
    pairs is ``sum_v <Q, log P_s^v> - sum_{i < G} <P_t^i, log P_s^i>`` (every teacher view
    against every student view, minus the same-view pairs), a few kernels whatever V and G
    (the paper's 2 + 8 crops: 18 pairs)."""
    s = student_logits if torch.is_tensor(student_logits) else torch.stack(list(student_logits))  # [V, B, K]
    q = teacher_probs if torch.is_tensor(teacher_probs) else torch.stack(list(teacher_probs))  # [G, B, K]
    V, G, B = s.shape[0], q.shape[0], s.shape[1]
    if G < 1 or V < 2 or G > V:
        raise ValueError(f"DINO needs >= 1 teacher view and >= 2 views in all (got {G} and {V})")
    with torch.autocast(device_type=s.device.type, enabled=False):
        log_p = F.log_softmax(s.float() / student_temp, dim=-1)  # [V, B, K]
        q = q.detach().float()  # [G, B, K]
        every = (q.sum(0) * log_p.sum(0)).sum()  # sum over all (i, v) pairs and rows b
        same = (q * log_p[:G]).sum()  # the pairs v == i, skipped
        return (same - every) / (B * G * (V - 1))  # mean over the G (V - 1) pairs and the B rows


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the distributions in the rows of p [N, K] -> 0-dim tensor."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = p.float()
        return -(p * p.clamp_min(1e-30).log()).sum(dim=-1).mean()


__all__ = ["dino_loss", "entropy"]
