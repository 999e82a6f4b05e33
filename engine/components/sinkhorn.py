"""Sinkhorn-Knopp equipartition of a batch over prototypes (SwAV's online codes).

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020 (arXiv:2006.09882),
section 3.1 and appendix A; ``distributed_sinkhorn`` in the official code.

Given the scores ``S = z C^T`` of B samples against K prototypes, SwAV looks for codes
``Q`` that maximise ``Tr(Q^T S) + epsilon * H(Q)`` under the equipartition constraint
(every prototype gets the same share of the batch). The solution is
``Q = diag(u) exp(S / epsilon) diag(v)``, found by a few alternating normalisations.

Convention here (rows are samples, like every other tensor in the engine; the paper
and the official code work with the transpose, K x B):

* ``Q`` is ``[B, K]`` and starts as ``exp(S / epsilon)`` divided by its total (sums to 1);
* each iteration first scales the columns so that each prototype's column sums to
  ``1/K``, then the rows so that each sample's row sums to ``1/B``;
* after the last iteration the rows sum to exactly ``1/B`` (the columns to about ``1/K``;
  exactly only in the limit of many iterations); the final rescale ``Q * B`` makes every
  row sum to 1, so each row is a soft assignment (a distribution over the K prototypes)
  and each prototype receives about ``B/K`` samples.

Numerics: float32 with autocast off; ``exp`` is taken of ``(S - max S) / epsilon``: the
global shift cancels in the first normalisation, so the result is the paper's, but
nothing overflows for any score range (SwAV's scores are cosines in [-1, 1]).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, n_iters: int = 3) -> torch.Tensor:
    """Codes of a batch: scores [B, K] -> Q [B, K] float32, every row summing to 1.

    epsilon: entropic regularisation (0.05 in SwAV; smaller = sharper codes).
    n_iters: Sinkhorn-Knopp iterations (3 in SwAV).
    No gradient flows through the codes (they are targets).
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn expects scores [B, K], got {tuple(scores.shape)}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        s = scores.detach().float()  # s: [B, K]
        B, K = s.shape
        q = torch.exp((s - s.max()) / epsilon)  # [B, K]
        q = q / q.sum().clamp_min(1e-30)  # total mass 1
        for _ in range(n_iters):
            q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-30) / K  # columns (prototypes): 1/K each
            q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-30) / B  # rows (samples): 1/B each
        return q * B  # rows sum to 1: soft assignments


__all__ = ["sinkhorn"]
