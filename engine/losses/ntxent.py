"""Contrastive losses: NT-Xent (SimCLR) and InfoNCE (MoCo).

Both compute their logits in float32 with autocast disabled, so they are safe inside
a bf16 autocast region (cosine similarities divided by a small temperature lose too
much precision in bf16), and return a float32 scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ntxent_logits(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of NT-Xent: the 2B anchors against the 2B candidates.

    z0, z1: [B, d] (two views of the same B images, not necessarily normalised).
    Returns ``logits [2B, 2B]`` float32 (cosine similarity / temperature, self-similarity
    set to -inf) and ``targets [2B]`` (anchor i's positive: i + B for i < B, i - B after).
    """
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"NT-Xent expects two [B, d] tensors of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    B = z0.shape[0]
    with torch.autocast(device_type=z0.device.type, enabled=False):
        z = F.normalize(torch.cat([z0, z1]).float(), dim=1)  # z: [2B, d]
        logits = (z @ z.T) / temperature  # [2B, 2B]
        eye = torch.eye(2 * B, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))  # no self-similarity
    idx = torch.arange(B, device=z0.device)
    targets = torch.cat([idx + B, idx])  # [2B]
    return logits, targets


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Functional NT-Xent; see :class:`NTXentLoss`. z0, z1: [B, d] -> scalar (float32)."""
    logits, targets = ntxent_logits(z0, z1, temperature)
    return F.cross_entropy(logits, targets)


class NTXentLoss(nn.Module):
    """Normalized temperature-scaled cross entropy (NT-Xent), the loss of SimCLR.

    Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020 (eq. 1). For a batch of B images and two views,
    the 2B projections are L2-normalised; for every anchor ``i`` the positive is the other
    view of the same image ``j(i)`` and the negatives are the remaining 2B - 2
    projections (the anchor itself is masked out)::

        l_i = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) ),  s = cosine similarity
        loss = mean over the 2B anchors of l_i

    Temperature ``t``: 0.5 for CIFAR-10 (the paper's best value, Appendix B.9; the
    official repository's CIFAR-10 recipe uses it with batch 512); 0.1 for ImageNet with
    large batches (the SimCLR v2 setting, Chen et al. 2020b).

    forward: ``z0, z1 [B, d]`` -> scalar float32 loss (logits in float32, autocast off).
    ``temperature`` may be overridden per call (a live-changeable setting).
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {temperature})")
        self.temperature = float(temperature)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        return nt_xent(z0, z1, self.temperature if temperature is None else temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.2,
    normalize: bool = True,
) -> torch.Tensor:
    """InfoNCE (Oord et al. 2018) in the MoCo form: one positive key per query.

    q: [B, d] queries; k: [B, d] positive keys (row i is the positive of query i; detach
    it for a momentum encoder, that is the caller's choice).

    * ``negatives`` [K, d] (a queue, MoCo v1/v2, He et al. 2020 / Chen et al. 2020c) or
      [B, K, d] (per-query negatives): logits ``[B, 1 + K]`` = ``[q.k, q.negatives^T] / t``,
      target 0.
    * ``negatives=None``: in-batch negatives (MoCo v3, Chen, Xie & He 2021): logits
      ``[B, B]`` = ``q k^T / t``, target i (the other keys are the negatives).

    With ``normalize`` (default) q, k and the negatives are L2-normalised first (cosine
    similarity). Temperatures in the papers: 0.07 (MoCo v1), 0.2 (MoCo v2; MoCo v3 ViT),
    1.0 (MoCo v3 ResNet, which also multiplies the loss by 2t, left to the method).
    Returns the mean cross-entropy, a float32 scalar (logits in float32, autocast off).
    """
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(f"info_nce expects q and k of one shape [B, d], got {tuple(q.shape)} and {tuple(k.shape)}")
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = q.float(), k.float()
        if normalize:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if negatives is None:
            logits = (q @ k.T) / temperature  # [B, B]
            targets = torch.arange(q.shape[0], device=q.device)
        else:
            n = negatives.float()
            if normalize:
                n = F.normalize(n, dim=-1)
            pos = (q * k).sum(dim=-1, keepdim=True)  # [B, 1]
            if n.dim() == 2:  # n: [K, d]
                neg = q @ n.T  # [B, K]
            elif n.dim() == 3:  # n: [B, K, d]
                neg = torch.einsum("bd,bkd->bk", q, n)
            else:
                raise ValueError(f"negatives must be [K, d] or [B, K, d], got {tuple(negatives.shape)}")
            logits = torch.cat([pos, neg], dim=1) / temperature  # [B, 1 + K]
            targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, targets)


__all__ = ["NTXentLoss", "info_nce", "nt_xent", "ntxent_logits"]
