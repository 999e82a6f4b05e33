"""Optimisers and per-iteration schedules.

Schedules are arrays with one value per step, as in DINO's ``main_dino.py``:
``lr[it]``, ``wd[it]``. The learning-rate array holds a *shape* in [0, 1]
(linear warmup then cosine); the peak LR multiplies it, so a live change of
the learning rate rescales the rest of the run without re-planning it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .config import OptimConfig


def cosine_schedule(base: float, final: float, total: int, warmup: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Linear warmup from ``warmup_start`` to ``base`` over ``warmup`` steps, then cosine to ``final``.

    Returns an array of ``total`` values (one per optimiser step).
    """
    warmup = min(max(0, warmup), total)
    warm = np.linspace(warmup_start, base, warmup, endpoint=False) if warmup > 0 else np.array([])
    n = total - warmup
    it = np.arange(n)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * it / max(1, n)))
    out = np.concatenate([warm, cos])
    assert len(out) == total
    return out


def peak_lr(cfg: OptimConfig, batch_size: int) -> float:
    """The schedule's peak LR: ``lr`` scaled with the batch size as ``scale_lr`` / ``lr_scaling`` say."""
    if not cfg.scale_lr:
        return cfg.lr
    return cfg.lr * math.sqrt(batch_size) if cfg.lr_scaling == "sqrt" else cfg.lr * batch_size / 256


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR / BYOL / Barlow Twins.

    SGD with momentum where each parameter's update is scaled by the trust ratio
    ``eta * ||w|| / ||g + wd * w||``. Parameter groups with ``lars=False``
    (biases, norm layers) get plain SGD with momentum and no adaptation.

    ``clip=True`` is solo-learn's ``clip_lr`` (from PyTorch Lightning Bolts): the ratio becomes
    ``min(trust / lr, 1)``, so the step is ``min(trust, lr) * g``: plain SGD's step at the
    scheduled lr, or ``eta`` of the layer's norm, whichever is smaller. Unclipped, every layer
    moves ``lr * eta`` of its norm a step whatever the gradient. Neither is uniformly smaller:
    clipping shrinks the step when lr > 1 (BYOL's lr 1.0 x B/256 at batch 512: 4 % -> at most
    2 %) and can enlarge it when lr < 1 (up to 1 / lr times). Use it with the recipes tuned for
    it (solo-learn's CIFAR BYOL and DINO, eta 0.02).
    The whole step is done with foreach ops (one kernel per op across tensors).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001,
                 clip: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip,
                                      lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            grads = [p.grad for p in ps]
            if g["weight_decay"] != 0:
                grads = torch._foreach_add(grads, ps, alpha=g["weight_decay"])
            if g.get("lars", True):
                w_norm = torch.stack(torch._foreach_norm(ps))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where(
                    (w_norm > 0) & (g_norm > 0), g["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                )
                if g.get("clip", False) and g["lr"] > 0:
                    trust = torch.clamp(trust / g["lr"], max=1.0)
                grads = torch._foreach_mul(grads, list(trust.unbind(0)))
            bufs = []
            for p, d in zip(ps, grads):
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = d.detach().clone()
                else:
                    st["momentum_buffer"].mul_(g["momentum"]).add_(d)
                bufs.append(st["momentum_buffer"])
            torch._foreach_add_(ps, bufs, alpha=-g["lr"])
        return loss


def _is_no_decay(name: str, p: torch.Tensor) -> bool:
    # biases, norm layers and other 1-D tensors, and (the timm / MAE convention) the ViT's
    # position embedding and CLS token; DINO's get_params_groups decays those two
    return p.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "cls_token" in name


def param_groups(model: nn.Module, groups: list[dict], exclude_bias_norm: bool) -> list[dict]:
    """Split each of the method's groups into decayed / not decayed parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for g in groups:
        params = list(g["params"])
        extra = {k: v for k, v in g.items() if k != "params"}
        if not exclude_bias_norm:
            out.append({"params": params, "wd_scale": 1.0, "lars": True, **extra})
            continue
        dec = [p for p in params if not _is_no_decay(names.get(id(p), ""), p)]
        nodec = [p for p in params if _is_no_decay(names.get(id(p), ""), p)]
        if dec:
            out.append({"params": dec, "wd_scale": 1.0, "lars": True, **extra})
        if nodec:
            out.append({"params": nodec, "wd_scale": 0.0, "lars": False, **extra})
    return out


def build_optimizer(model: nn.Module, groups: list[dict], cfg: OptimConfig, lr: float, device: torch.device):
    """AdamW / SGD (fused) or LARS. Each group keeps ``wd_scale`` and an optional ``lr_scale``.

    The fused kernels exist for CUDA and the CPU; on the CPU they are what makes a small run's
    optimiser step cheap (ResNet-18, one thread: AdamW 76 -> 18 ms a step, SGD 30 -> 12 ms,
    parameters equal to the single-tensor path within 6e-8 after five steps)."""
    groups = param_groups(model, groups, cfg.exclude_bias_norm)
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["weight_decay"] = cfg.weight_decay * g["wd_scale"]
        g["lr"] = lr * g["lr_scale"]
    fused = device.type in ("cuda", "cpu")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta, clip=cfg.lars_clip)


def set_lr_wd(opt: torch.optim.Optimizer, lr: float, wd: float, peak_lr: float | None = None) -> None:
    """Apply this step's LR and weight decay to every group (group scales kept).

    Groups may carry ``fixed_lr=True`` (SimSiam's predictor): their LR stays at ``peak_lr``.
    """
    for g in opt.param_groups:
        base = peak_lr if (g.get("fixed_lr") and peak_lr is not None) else lr
        g["lr"] = base * g.get("lr_scale", 1.0)
        g["weight_decay"] = wd * g.get("wd_scale", 1.0)


def warmup_steps(cfg: OptimConfig, steps_per_epoch: int, total: int) -> int:
    return min(total, int(math.ceil(cfg.warmup_epochs * steps_per_epoch)))
