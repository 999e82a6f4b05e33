"""The SwAV loss: swapped prediction of cluster codes.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020 (arXiv:2006.09882), eqs. (1)-(2) and section 3.2 (multi-crop);
the training loop of the official ``main_swav.py``.

The codes ``q_i`` of the views used for assignment (the global crops ``i``, from the
Sinkhorn-Knopp step) are predicted from every OTHER view ``v`` through the softmax of
its prototype scores ``s_v = z_v C^T``::

    l(i, v) = mean_b [ - sum_k q_i[b, k] log softmax(s_v[b] / tau)_k ]
    loss    = 1/|A| * sum_{i in A} 1/(V - 1) * sum_{v != i} l(i, v)

(``A`` = the assignment views, ``V`` = all views; ``tau`` = 0.1). Computed in float32 with
autocast off; returns a float32 scalar.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def swav_loss(scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
              assign_ids: Sequence[int], temperature: float = 0.1) -> torch.Tensor:
    """scores: V tensors [B, K] (prototype scores of every view); codes: one [B, K] per
    assignment view (rows sum to 1, no gradient); assign_ids: which view each code came from.
    -> scalar float32."""
    V = len(scores)
    if V < 2 or len(codes) != len(assign_ids) or not codes:
        raise ValueError(f"SwAV needs >= 2 views and one code per assignment view (got {V}, "
                         f"{len(codes)} codes for views {list(assign_ids)})")
    device = scores[0].device
    with torch.autocast(device_type=device.type, enabled=False):
        log_p = [F.log_softmax(s.float() / temperature, dim=-1) for s in scores]  # V x [B, K]
        loss = torch.zeros((), device=device)
        for q, i in zip(codes, assign_ids):
            q = q.detach().float()  # q: [B, K]
            sub = sum((-(q * log_p[v]).sum(dim=-1)).mean() for v in range(V) if v != i)
            loss = loss + sub / (V - 1)
        return loss / len(codes)


__all__ = ["swav_loss"]
