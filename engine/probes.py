"""Visual probes shared by methods: run on a few fixed images every N seconds, never per step.

Each probe returns ``{'images': {name: array}, 'meta': {...}}``; the trainer turns it into a
``VisualProbe`` event. Arrays are numpy: images uint8 [N, H, W, 3], maps float32 [N, heads, H, W].
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import events as ev
from .augment import resize_normalize

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
    fd, tmp = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
