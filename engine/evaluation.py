"""Evaluation shared by the trainer and ``ssl-eval``: weighted kNN on backbone features."""

from __future__ import annotations

import numpy as np
import torch

from .config import RunConfig
from .data import DataSplits
from .methods.base import Method
from .monitors import extract_features, knn_top1, pca_2d


def _subsample(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    if n <= k:
        return torch.arange(n)
    return torch.randperm(n, generator=g)[:k].sort().values


def standardize_features(method: Method, cfg: RunConfig) -> bool:
    """Whether the kNN standardises features: ``eval.standardize``, or the method's default."""
    return cfg.eval.standardize if cfg.eval.standardize is not None else method.standardize_features


def standardize(bank: torch.Tensor, queries: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension z-scores with the memory bank's mean and std: bank [N, D], queries [M, D].

    A BatchNorm without affine, fitted on the bank (MAE's linear probe, He et al. 2022, A.2):
    without it a few dimensions of very large variance decide the cosine similarity."""
    mu = bank.mean(dim=0, keepdim=True)  # [1, D]
    sd = bank.std(dim=0, keepdim=True).clamp_min(eps)  # [1, D]
    return (bank - mu) / sd, (queries - mu) / sd


@torch.no_grad()
def knn_evaluate(
    method: Method, data: DataSplits, cfg: RunConfig, device: torch.device, autocast_dtype=None
) -> tuple[float | None, np.ndarray | None, np.ndarray | None]:
    """(kNN top-1, 2-D PCA of the query features, query labels); (None, None, None) without labels.

    Memory bank: up to ``eval.max_bank`` training images; queries: up to ``eval.max_queries``
    test images (fixed subsets, so successive evaluations are comparable). Features are
    standardised with the bank's statistics first where :func:`standardize_features` says so.
    """
    test = data.test
    if data.train.labels is None or test is None or test.labels is None:
        return None, None, None
    was_training = method.training
    method.eval()
    try:
        size = cfg.aug.global_crops.size or data.image_size
        g = torch.Generator().manual_seed(12345)
        bank_idx = _subsample(len(data.train), cfg.eval.max_bank, g)
        q_idx = _subsample(len(test), cfg.eval.max_queries, g)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            fb = extract_features(method.embed, data.train.images[bank_idx], 256, device,
                                  cfg.aug.mean, cfg.aug.std, size=size)
            fq = extract_features(method.embed, test.images[q_idx], 256, device,
                                  cfg.aug.mean, cfg.aug.std, size=size)
        fb, fq = fb.float(), fq.float()
        if standardize_features(method, cfg):
            fb, fq = standardize(fb, fq)
        acc = knn_top1(fb, data.train.labels[bank_idx].to(device), fq,
                       test.labels[q_idx].to(device), k=cfg.eval.knn_k, t=cfg.eval.knn_t,
                       n_classes=len(data.train.classes))
        return float(acc), pca_2d(fq), test.labels[q_idx].numpy()
    finally:
        method.train(was_training)
