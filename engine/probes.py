"""Visual probes shared by methods: run on a few fixed images every N seconds, never per step.

Each probe returns ``{'images': {name: array}, 'meta': {...}}``; the trainer turns it into a
``VisualProbe`` event. Arrays are numpy: images uint8 [N, H, W, 3], maps float32 [N, heads, H, W].
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import events as ev
from .augment import denormalize, resize_normalize
from .fileio import atomic_open
from .masking import mask_to_pixels

PROBES_DIR = "probes"  # RUNDIR/probes/probe-<name>-<step>.npz (format: studio/dashboard/snapshots.py)


def probe_filename(name: str, step: int) -> str:
    return f"probe-{name}-{int(step)}.npz"


def save_probe(run_dir: str | os.PathLike, probe: ev.VisualProbe) -> Path:
    """Write one probe snapshot atomically (temporary file, then rename); returns its path."""
    d = Path(run_dir) / PROBES_DIR
    d.mkdir(parents=True, exist_ok=True)
    target = d / probe_filename(probe.probe, probe.step)
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in probe.images.items()}
    arrays["__meta__"] = np.array(json.dumps(probe.meta, default=str))
    arrays["__time__"] = np.array(float(probe.time))
    with atomic_open(target, "wb") as f:
        np.savez_compressed(f, **arrays)
    return target


def to_hwc_uint8(x: torch.Tensor) -> np.ndarray:
    """uint8 [N, 3, H, W] (any device) -> numpy uint8 [N, H, W, 3]."""
    return x.detach().to("cpu", torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@torch.no_grad()
def attention_probe(backbone: torch.nn.Module, images: torch.Tensor, size: int,
                    mean, std) -> dict[str, Any]:
    """CLS-to-patch attention of the last ViT block, per head, upsampled to the image.

    images: uint8 [N, 3, H, W]. Returns images {'image': uint8 [N, size, size, 3],
    'attention': float32 [N, heads, size, size]} (each head's map sums to 1 over the patches),
    as in DINO's visualize_attention (Caron et al. 2021, fig. 1 and 3).
    """
    x = resize_normalize(images, size, mean, std)  # x: [N, 3, s, s]
    attn = backbone.last_attention(x.float())  # attn: [N, heads, L]
    gh, gw = backbone.grid(size, size)
    n, h, _ = attn.shape
    maps = attn.reshape(n, h, gh, gw)
    maps = F.interpolate(maps.float(), size=(size, size), mode="nearest") / ((size // gh) * (size // gw))
    shown = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return {
        "images": {"image": to_hwc_uint8(shown.round().clamp(0, 255)), "attention": maps.cpu().numpy().astype(np.float32)},
        "meta": {"heads": int(h), "grid": [int(gh), int(gw)], "patch_size": int(backbone.patch_size)},
    }


# ----------------------------------------------------- masked image modelling: pixel space
# Shared by the MIM methods (MAE, SimMIM, ...): patches are flattened as MAE's ``patchify``
# does, ``[N, L, p * p * C]`` with the channel last ('nchpwq -> nhwpqc'), patches row-major.

MASK_GREY = 128  # fill of masked patches in the "masked" panel and the data page's preview


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Images [N, C, H, W] -> patches [N, L, p * p * C] (MAE's layout; H, W multiples of p)."""
    n, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    x = x.reshape(n, c, gh, patch, gw, patch)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, patch * patch * c)


def unpatchify(x: torch.Tensor, patch: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Patches [N, L, p * p * C] -> images [N, C, gh * p, gw * p] (inverse of :func:`patchify`)."""
    n = x.shape[0]
    gh, gw = grid
    x = x.reshape(n, gh, gw, patch, patch, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * patch, gw * patch)


def norm_pix_stats(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std used by MAE's ``norm_pix_loss``: patches [N, L, P] ->
    (mean [N, L, 1], sqrt(var + eps) [N, L, 1]); var is torch's default (unbiased), as in MAE."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + eps).sqrt()


def norm_pix_target(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's normalised-pixel target: each patch minus its mean, over sqrt(var + eps)."""
    mean, std = norm_pix_stats(patches, eps)
    return (patches - mean) / std


def unnormalize_norm_pix(pred: torch.Tensor, target_patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Predictions in norm-pix space back to pixel values with each target patch's own mean and
    std: pred [N, L, P], target_patches [N, L, P] -> [N, L, P]."""
    mean, std = norm_pix_stats(target_patches.float(), eps)
    return pred.float() * std + mean


def mask_images(images: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], patch: int,
                fill: int = MASK_GREY) -> torch.Tensor:
    """uint8 images [N, 3, H, W] with the masked patches (mask [N, L] True = masked) set to grey."""
    px = mask_to_pixels(mask.bool(), grid, patch).to(images.device)  # [N, 1, H, W]
    return torch.where(px, torch.full_like(images, fill), images)


@torch.no_grad()
def reconstruction_panels(x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch: int,
                          mean, std, norm_pix: bool = False, eps: float = 1e-6) -> dict[str, np.ndarray]:
    """The four reconstruction panels of a masked-image-modelling probe, in pixel space.

    x:     normalised input images [N, 3, H, W] (what the model was given, before masking);
    pred:  predictions in the loss's target space, as patches [N, L, p * p * 3] or as an
           image [N, 3, H, W] (SimMIM's pixel-shuffle head); normalised pixels, or MAE's
           per-patch normalised pixels when ``norm_pix`` (un-normalised here with each
           target patch's own mean and std);
    mask:  bool [N, L], True = masked; L = (H / p) (W / p).

    Returns uint8 [N, H, W, 3] arrays: ``original`` | ``masked`` (masked patches grey) |
    ``reconstruction`` (the prediction everywhere) | ``pasted`` (the prediction on the masked
    patches, the original pixels on the visible ones).
    """
    x = x.float()
    n, c, h, w = x.shape
    grid = (h // patch, w // patch)
    if pred.dim() == 4:  # [N, C, H, W] -> [N, L, p * p * C]
        pred = patchify(pred.float(), patch)
    pred = pred.float()
    if norm_pix:
        pred = unnormalize_norm_pix(pred, patchify(x, patch), eps)
    rec = unpatchify(pred, patch, grid, c)  # [N, C, H, W], normalised image space

    def u8(t: torch.Tensor) -> torch.Tensor:
        return (denormalize(t, mean, std) * 255.0).round().to(torch.uint8)  # [N, C, H, W]

    orig, rec8 = u8(x), u8(rec)
    px = mask_to_pixels(mask.bool(), grid, patch).to(x.device)  # [N, 1, H, W]
    return {
        "original": to_hwc_uint8(orig),
        "masked": to_hwc_uint8(torch.where(px, torch.full_like(orig, MASK_GREY), orig)),
        "reconstruction": to_hwc_uint8(rec8),
        "pasted": to_hwc_uint8(torch.where(px, rec8, orig)),
    }
