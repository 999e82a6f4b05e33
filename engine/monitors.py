"""Training monitors: kNN accuracy, collapse indicators, feature extraction, 2-D PCA.

All computations run on the device of their inputs in float32 and read results back
to the host once (a single ``.tolist()`` / ``.item()`` / ``.cpu()`` per call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# query rows per kNN chunk: chunk x bank similarities are at most this many elements
_KNN_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32


# ------------------------------------------------------------------------ kNN
@torch.no_grad()
def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    t: float = 0.1,
    n_classes: int | None = None,
    chunk_size: int | None = None,
) -> float:
    """Weighted k-nearest-neighbour top-1 accuracy (in [0, 1]).

    The protocol of Wu et al. 2018 (InstDisc: k=200, t=0.07) as implemented in DINO's
    ``eval_knn`` (Caron et al. 2021: k=20, t=0.07): features are L2-normalised; each
    query's k most cosine-similar bank entries vote for their class with weight
    ``exp(sim / t)``; the class with the largest summed weight is the prediction.
    The project's defaults (``EvalConfig``) are k=200, t=0.1.

    Args:
        train_feats: [N, D] memory bank features; train_labels: [N] int class ids >= 0.
        test_feats: [M, D] query features; test_labels: [M] int class ids >= 0.
        k: neighbours; capped by the bank size N.
        t: temperature of the vote weights.
        n_classes: number of classes (default: 1 + the largest label seen).
        chunk_size: queries per chunk (default: as many as keep a chunk's similarity
            matrix under 2**24 elements).

    Weights are computed as ``exp((sim - max_sim) / t)`` per query: the same vote up to
    a per-query factor, without overflow for small t. Non-finite features (a NaN row would be
    every query's nearest neighbour) give NaN, not a misleading score.
    """
    if train_feats.dim() != 2 or test_feats.dim() != 2:
        raise ValueError("knn_top1 expects [N, D] features")
    n_bank, n_query = train_feats.shape[0], test_feats.shape[0]
    if n_bank == 0 or n_query == 0:
        raise ValueError(f"knn_top1 needs a non-empty bank and queries (got {n_bank} and {n_query})")
    if train_labels.shape[0] != n_bank or test_labels.shape[0] != n_query:
        raise ValueError("knn_top1: one label per feature row is needed")
    device = train_feats.device
    with torch.autocast(device_type=device.type, enabled=False):
        bank = F.normalize(train_feats.float(), dim=1)  # bank: [N, D]
        queries = F.normalize(test_feats.to(device).float(), dim=1)  # queries: [M, D]
        bank_labels = train_labels.to(device=device, dtype=torch.long)  # [N]
        query_labels = test_labels.to(device=device, dtype=torch.long)  # [M]
        finite = torch.isfinite(bank).all() & torch.isfinite(queries).all()
        lo_b, lo_q, hi_b, hi_q, ok = torch.stack(
            [bank_labels.min(), query_labels.min(), bank_labels.max(), query_labels.max(), finite.long()]
        ).tolist()
        if not ok:  # a NaN / inf feature would be every query's nearest neighbour: no score
            return float("nan")
        if min(lo_b, lo_q) < 0:
            raise ValueError("knn_top1: labels must be >= 0 (unlabelled data cannot be scored)")
        if n_classes is None:
            n_classes = int(max(hi_b, hi_q)) + 1
        elif max(hi_b, hi_q) >= n_classes:
            raise ValueError(f"knn_top1: a label is >= n_classes={n_classes}")
        k = max(1, min(int(k), n_bank))
        if chunk_size is None:
            chunk_size = max(1, _KNN_CHUNK_ELEMENTS // n_bank)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for s in range(0, n_query, chunk_size):
            q = queries[s : s + chunk_size]  # q: [C, D]
            sim = q @ bank.T  # [C, N]
            top_sim, top_idx = sim.topk(k, dim=1)  # [C, k], sorted, largest first
            weights = ((top_sim - top_sim[:, :1]) / t).exp()  # [C, k], in (0, 1]
            votes = torch.zeros(q.shape[0], n_classes, device=device)  # [C, n_classes]
            votes.scatter_add_(1, bank_labels[top_idx], weights)
            pred = votes.argmax(dim=1)  # [C]
            correct += (pred == query_labels[s : s + chunk_size]).sum()
    return correct.item() / n_query


# --------------------------------------------------------------- collapse
@torch.no_grad()
def collapse_indicators(z1: torch.Tensor, z2: torch.Tensor | None = None) -> dict[str, float]:
    """Indicators of representation collapse from a batch of outputs (plain floats).

    z1: [B, d] outputs for one view; z2: [B, d] outputs for a second view of the same
    images (optional). Keys:

    * ``std``: mean over the d dimensions of the std over the batch of the L2-normalised
      z1 (SimSiam, Chen & He 2021): about ``1/sqrt(d)`` when the outputs spread
      uniformly on the sphere, 0 when they have collapsed to a point.
    * ``std_ref``: ``1/sqrt(d)``, the healthy reference for ``std``.
    * ``rank_me``: RankMe (Garrido et al. 2023), the effective rank of z1:
      ``exp(-sum p_k log p_k)``, ``p_k = s_k / sum(s) + 1e-7`` over the singular values s.
      At most min(B, d) (``dim``); d for isotropic outputs (B >> d), 1 for rank-one outputs.
    * ``alignment`` (only with z2): Wang & Isola 2020, ``E ||f(x) - f(y)||^2`` over the
      positive pairs (rows of z1, z2 normalised), alpha = 2: 0 when views agree, at most 4.
    * ``uniformity`` (only with B >= 2): Wang & Isola 2020,
      ``log E exp(-2 ||f(x) - f(y)||^2)`` over all pairs of normalised rows of z1 (t = 2):
      0 when collapsed, more negative when spread (>= -4).

    Computed in float32 on the inputs' device (autocast off), then one host transfer.
    """
    if z1.dim() != 2:
        raise ValueError(f"collapse_indicators expects [B, d] outputs, got {tuple(z1.shape)}")
    B, d = z1.shape
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = z1.detach().float()  # z: [B, d]
        zn = F.normalize(z, dim=1)  # [B, d]
        names = ["std", "std_ref", "rank_me"]
        values = [
            zn.std(dim=0).mean() if B > 1 else zn.new_zeros(()),
            zn.new_tensor(1.0 / math.sqrt(d)),
            _rank_me(z),
        ]
        if z2 is not None:
            if z2.shape != z1.shape:
                raise ValueError(f"z2 {tuple(z2.shape)} must have the shape of z1 {tuple(z1.shape)}")
            z2n = F.normalize(z2.detach().float(), dim=1)
            names.append("alignment")
            values.append((zn - z2n).pow(2).sum(dim=1).mean())
        if B >= 2:
            names.append("uniformity")
            values.append(torch.pdist(zn, p=2).pow(2).mul(-2.0).exp().mean().log())
        out = torch.stack(values).cpu().tolist()  # the one host transfer
    res = dict(zip(names, out))
    res["dim"] = float(min(B, d))  # the largest rank_me possible: a batch of 2 has rank <= 2
    return res


def _rank_me(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe (Garrido et al. 2023) of z [B, d] (float32): a 0-dim tensor."""
    s = torch.linalg.svdvals(z)  # [min(B, d)]
    p = s / s.sum().clamp_min(1e-12) + eps
    return torch.exp(-(p * p.log()).sum())


# ------------------------------------------------------------ extraction
@torch.no_grad()
def extract_features(
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    images_uint8: torch.Tensor,
    batch_size: int,
    device: torch.device | str,
    mean: Sequence[float],
    std: Sequence[float],
    size: int | tuple[int, int] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Features of every image: ``[N, 3, H, W]`` uint8 -> ``[N, D]`` float32 on ``device``.

    Each batch is moved to ``device``, scaled to [0, 1], optionally resized to ``size``
    (bilinear, antialiased; an int is a square side), normalised ``(x - mean) / std``
    and passed to ``embed_fn`` under ``torch.no_grad()``. Putting the model in eval mode
    (and any autocast) is the caller's job.
    """
    device = torch.device(device)
    n = images_uint8.shape[0]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    hw = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
    out: torch.Tensor | None = None
    for i in range(0, n, batch_size):
        if should_stop is not None and should_stop():
            from .errors import Cancelled

            raise Cancelled("feature extraction cancelled")
        x = images_uint8[i : i + batch_size].to(device, non_blocking=True).float().div(255.0)  # [b, 3, H, W]
        if hw is not None and tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
        x = (x - m) / s
        f = embed_fn(x)  # f: [b, D]
        if out is None:
            out = torch.empty(n, f.shape[1], dtype=torch.float32, device=device)
        out[i : i + f.shape[0]] = f.float()
    if out is None:  # no images: the width is unknown
        return torch.empty(0, 0, dtype=torch.float32, device=device)
    return out


# -------------------------------------------------------------------- PCA
@torch.no_grad()
def pca_2d(feats: torch.Tensor) -> np.ndarray:
    """Projection of feats [N, D] on its first two principal components: [N, 2] float32.

    Exact PCA from the eigen-decomposition of the centred covariance (D x D) or Gram
    (N x N) matrix, whichever is smaller, on the features' device (no random state is
    used). Signs are fixed (on each axis, the point farthest from the centre lies on
    the positive side) so that successive calls on similar features do not flip the
    picture.
    Missing components (N < 3 or D < 2) are zero columns.
    """
    if feats.dim() != 2:
        raise ValueError(f"pca_2d expects [N, D] features, got {tuple(feats.shape)}")
    n, d = feats.shape
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    with torch.autocast(device_type=feats.device.type, enabled=False):
        x = feats.float()
        x = x - x.mean(dim=0, keepdim=True)  # x: [N, D]
        if d <= n:
            _, vecs = torch.linalg.eigh(x.T @ x)  # ascending; vecs: [D, D]
            comps = vecs[:, -2:].flip(1)  # [D, c] principal axes
            proj = x @ comps  # [N, c]
        else:
            evals, vecs = torch.linalg.eigh(x @ x.T)  # vecs: [N, N]
            u = vecs[:, -2:].flip(1)  # [N, c]
            proj = u * evals[-2:].flip(0).clamp_min(0).sqrt()  # = x @ axes
        proj = proj[:, : min(2, d, n)]
        # deterministic signs: on each axis the farthest point is on the positive side
        pick = proj.abs().argmax(dim=0)  # [c]
        signs = torch.sign(proj[pick, torch.arange(proj.shape[1], device=proj.device)])
        proj = proj * torch.where(signs == 0, torch.ones_like(signs), signs)
        out = proj.cpu().numpy().astype(np.float32)
    if out.shape[1] < 2:
        out = np.concatenate([out, np.zeros((n, 2 - out.shape[1]), dtype=np.float32)], axis=1)
    return out


__all__ = ["collapse_indicators", "extract_features", "knn_top1", "pca_2d"]
