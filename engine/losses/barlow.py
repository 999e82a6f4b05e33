"""Barlow Twins' redundancy-reduction loss.

Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021 (eq. 1 and 2; algorithm 1).

Each branch's embeddings ``z [B, D]`` are standardised along the batch (the paper's
``BatchNorm1d(D, affine=False)`` in training mode: zero mean, unit biased variance,
eps 1e-5). Their cross-correlation matrix

    C_ij = sum_b zn1_bi zn2_bj / B                     (C: [D, D], entries in [-1, 1])

is pushed towards the identity::

    loss = sum_i (1 - C_ii)^2  +  lambda * sum_{i != j} C_ij^2
           (invariance)           (redundancy reduction)

lambda = 0.0051 in the paper (about 1/D for D = 8192). Computed in float32 with autocast
off: the off-diagonal sum has D^2 small terms.
"""

from __future__ import annotations

import torch
from torch import nn


def batch_standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(z - mean_batch) / sqrt(var_batch + eps), biased variance: BatchNorm1d(affine=False) in training mode."""
    mean = z.mean(dim=0, keepdim=True)  # [1, D]
    var = z.var(dim=0, unbiased=False, keepdim=True)  # [1, D]
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Empirical cross-correlation of two views' embeddings: z1, z2 [B, D] -> C [D, D] (float32)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two [B, D] tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    B = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        a = batch_standardize(z1.float())  # [B, D]
        b = batch_standardize(z2.float())
        return a.T @ b / B  # [D, D]


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Barlow Twins loss of z1, z2 [B, D].

    Returns ``(loss, on_diag, off_diag)``: ``on_diag = sum_i (1 - C_ii)^2``,
    ``off_diag = sum_{i != j} C_ij^2`` (unweighted) and ``loss = on_diag + lambd * off_diag``,
    float32 scalars.
    """
    c = cross_correlation(z1, z2)  # [D, D]
    diag = torch.diagonal(c)  # [D]
    on_diag = (1.0 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()  # sum over i != j of C_ij^2
    return on_diag + lambd * off_diag, on_diag, off_diag


class BarlowTwinsLoss(nn.Module):
    """Module form of :func:`barlow_twins_loss`; ``lambd`` may be overridden per call (live setting)."""

    def __init__(self, lambd: float = 0.0051) -> None:
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, lambd: float | None = None):
        return barlow_twins_loss(z1, z2, self.lambd if lambd is None else lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


__all__ = ["BarlowTwinsLoss", "barlow_twins_loss", "batch_standardize", "cross_correlation"]
