"""Evaluation shared by the trainer and ``ssl-eval``: weighted kNN and a linear probe on backbone features."""

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
    sd = (bank.var(dim=0, keepdim=True) + eps).sqrt()  # [1, D]; BatchNorm's sqrt(var + eps): a dead
    # dimension is divided by 1e-3, not 1e-6 (a query's stray value there would swamp the rest)
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
    fb, fq, bank_idx, q_idx = eval_features(method, data, cfg, device, autocast_dtype)
    if standardize_features(method, cfg):
        fb, fq = standardize(fb, fq)
    acc = knn_top1(fb, data.train.labels[bank_idx].to(device), fq,
                   test.labels[q_idx].to(device), k=cfg.eval.knn_k, t=cfg.eval.knn_t,
                   n_classes=len(data.train.classes))
    return float(acc), pca_2d(fq), test.labels[q_idx].numpy()


@torch.no_grad()
def eval_features(method: Method, data: DataSplits, cfg: RunConfig, device: torch.device, autocast_dtype=None,
                  should_stop=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``method.embed`` features (float32) of the fixed evaluation subsets, in eval mode (restored
    after): up to ``eval.max_bank`` training images and ``eval.max_queries`` test images, the same
    every call (seeded), so successive evaluations compare. -> (bank, queries, bank_idx, q_idx)."""
    was_training = method.training
    method.eval()
    try:
        size = cfg.aug.global_crops.size or data.image_size
        g = torch.Generator().manual_seed(12345)
        bank_idx = _subsample(len(data.train), cfg.eval.max_bank, g)
        q_idx = _subsample(len(data.test), cfg.eval.max_queries, g)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            fb = extract_features(method.embed, data.train.images[bank_idx], 256, device,
                                  cfg.aug.mean, cfg.aug.std, size=size, should_stop=should_stop)
            fq = extract_features(method.embed, data.test.images[q_idx], 256, device,
                                  cfg.aug.mean, cfg.aug.std, size=size, should_stop=should_stop)
        return fb.float(), fq.float(), bank_idx, q_idx
    finally:
        method.train(was_training)


def fit_linear_probe(
    train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
    n_classes: int, epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 256,
    seed: int = 0, should_stop=None,
) -> dict[str, float]:
    """A linear classifier on frozen features: train_f [N, D], test_f [M, D], labels long.

    As MAE's linear probe (He et al. 2022, A.2): a BatchNorm without affine (the training
    features' mean and std) before one linear layer; here trained with AdamW and a cosine
    LR over ``epochs`` passes of shuffled minibatches of the cached features (no
    augmentation: the fast variant of the protocol, minutes on a CPU instead of the
    papers' 90-100 augmented epochs). Returns train and test top-1."""
    dev = train_f.device
    g = torch.Generator().manual_seed(seed)
    train_f, test_f = standardize(train_f.float(), test_f.float())
    head = torch.nn.Linear(train_f.shape[1], n_classes).to(dev)
    with torch.no_grad():  # MAE's init: small weights, zero bias
        head.weight.normal_(0.0, 0.01, generator=torch.Generator(dev).manual_seed(seed))
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = train_f.shape[0]
    steps = epochs * max(1, -(-n // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(epochs):
        if should_stop is not None and should_stop():
            from .errors import Cancelled

            raise Cancelled("linear probe cancelled")
        order = torch.randperm(n, generator=g).to(dev)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = torch.nn.functional.cross_entropy(head(train_f[idx]), train_y[idx])  # [b, C] vs [b]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        train_acc = (head(train_f).argmax(1) == train_y).float().mean()
        test_acc = (head(test_f).argmax(1) == test_y).float().mean()
    return {"linear_top1": float(test_acc), "train_top1": float(train_acc)}


def linear_probe_evaluate(
    method: Method, data: DataSplits, cfg: RunConfig, device: torch.device, epochs: int = 100,
    lr: float = 1e-2, autocast_dtype=None, should_stop=None,
) -> dict[str, float] | None:
    """Linear probe of ``method.embed`` (the kNN's feature): up to ``eval.max_bank`` training
    images fit the classifier, up to ``eval.max_queries`` test images score it (the kNN's
    subsets). None without labels or a test split."""
    test = data.test
    if data.train.labels is None or test is None or test.labels is None:
        return None
    ft, fq, bank_idx, q_idx = eval_features(method, data, cfg, device, autocast_dtype, should_stop)
    with torch.enable_grad():
        res = fit_linear_probe(ft.float(), data.train.labels[bank_idx].to(device), fq.float(),
                               test.labels[q_idx].to(device), len(data.train.classes), epochs=epochs, lr=lr,
                               seed=cfg.train.seed, should_stop=should_stop)
    return {**res, "n_train": int(len(bank_idx)), "n_test": int(len(q_idx)), "epochs": int(epochs)}


def linear_probe_run(run_dir, device: torch.device | str = "cpu", epochs: int = 100, lr: float = 1e-2,
                     data_source: str | None = None, save: bool = True, should_stop=None) -> dict:
    """Linear probe of a run folder's last checkpoint (``ssl-eval linear``, the studio's runs
    panel). With ``save`` (and the run's own data) the result is written to the run folder's
    ``linear_probe.json`` (atomic). Raises UserError without labels or a test split."""
    import time
    from pathlib import Path

    from .data import load_dataset
    from .errors import UserError
    from .export import load_run_method
    from .rundir import RunDir

    device = torch.device(device)
    cfg, method, state = load_run_method(run_dir, device)
    if data_source:
        cfg.data.source = data_source
    data = load_dataset(cfg.data)
    res = linear_probe_evaluate(method, data, cfg, device, epochs=epochs, lr=lr, should_stop=should_stop)
    if res is None:
        raise UserError("the data has no labels (or no test split): a linear probe needs both")
    out = {"linear_top1": res["linear_top1"], "train_top1": res["train_top1"], "step": int(state["step"]),
           "n_train": res["n_train"], "n_test": res["n_test"], "epochs": res["epochs"], "lr": lr,
           "data": cfg.data.source, "time": time.time()}
    if save and not data_source:
        try:
            RunDir(Path(run_dir)).write_linear_probe(out)
        except UserError as e:  # a read-only run folder: the result is still returned (and printed)
            out["not_saved"] = str(e)
    return out
