"""Regression losses of the non-contrastive Siamese methods: BYOL and SimSiam.

* BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, eq. 2): the normalised
  mean squared error between the online prediction ``p`` and the target projection
  ``z``::

      l(p, z) = || p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z)

  averaged over the batch; the method symmetrises it (sum over the two view orders).
* SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021,
  eq. 1): the negative cosine similarity ``D(p, z) = -cos(p, z)`` averaged over the
  batch; the method symmetrises it as ``D(p1, z2)/2 + D(p2, z1)/2``.

Both are ``2 - 2 cos`` and ``-cos``: the same gradient direction up to a factor 2. Neither
detaches anything: the stop-gradient on the target is the method's choice. Computed in
float32 with autocast off (a float32 scalar is returned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _cos(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float32: p, z [B, d] -> [B]."""
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(f"expected two [B, d] tensors of one shape, got {tuple(p.shape)} and {tuple(z.shape)}")
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = F.normalize(p.float(), dim=-1)  # [B, d], unit rows
        z = F.normalize(z.float(), dim=-1)
        return (p * z).sum(dim=-1)  # [B]


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss: mean over the batch of ``||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``; in [0, 4]."""
    return (2.0 - 2.0 * _cos(p, z)).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z): mean over the batch of ``-cos(p, z)``; in [-1, 1]."""
    return -_cos(p, z).mean()


__all__ = ["negative_cosine", "normalized_mse"]
