"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint holds the model (method) state, the optimiser state, the step,
the random-generator states and the resolved config. It is written to a
temporary file in the same folder and renamed over ``last.pt``, so a crash or a
failed step never leaves a half-written or corrupted last good checkpoint.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .fileio import atomic_open

# keys of the config that may differ between a run and its resumption
RESUME_MUTABLE = ("train.steps", "train.epochs", "train.time_limit_s", "train.device", "train.log_every",
                  "train.eval_every", "train.ckpt_every", "train.probe_every_s", "train.compile",
                  "train.compile_mode", "eval", "data.cache_dir", "data.workers", "data.on_device")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (the run has no saved step to resume from)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain values, which are not loaded "
                "(weights_only=True): it was not written by SSL Studio, or by a newer version") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (UnpicklingError); "
                              "delete it to start over or restore a copy") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a torn file
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); "
            "delete it to start over or restore a copy"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not an SSL Studio checkpoint")
    return state


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "params":
            out.update(_flatten(v, key + "."))
        elif isinstance(v, dict):
            out.update({f"{key}.{kk}": vv for kk, vv in v.items()})
        else:
            out[key] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Config keys whose change makes a checkpoint unusable (shapes, method, data, schedule shape)."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if any(k == m or k.startswith(m + ".") for m in RESUME_MUTABLE):
            continue
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs
