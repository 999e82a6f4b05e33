"""Checks a run makes before its first step, without data, weights or a device.

The config schema checks each value on its own (types, ranges); a method's constructor checks
the combination (MAE needs a ViT encoder, SimCLR two views, a ViT's heads divide its width, a
Swin's image size is a multiple of 32, a BEiT tokenizer file matches its vocabulary). Those
constructor checks run here by building the method on PyTorch's ``meta`` device: every module
is created with shapes only, no memory and no initialisation (20-300 ms for the presets, the
most for MAE ViT-B at 224 px). So

* the trainer refuses a bad combination before it loads the data (which can take minutes);
* the studio disables Start with the same reason as the user edits, as for a value out of range.

Both raise :class:`engine.errors.UserError` subclasses with the one-line message the run itself
would give.
"""

from __future__ import annotations

import warnings

import torch

from .config import DataConfig, RunConfig
from .errors import ConfigError

# A saved BEiT tokenizer loaded into a model on 'meta' copies its weights into meta tensors, a
# no-op torch warns about once per tensor. Only this module builds on 'meta'; the filter is set
# once (catch_warnings around each check would not be thread-safe: the studio checks in a thread).
warnings.filterwarnings("ignore", message=r".*copying from a non-meta parameter in the checkpoint to a meta")


def known_image_size(data: DataConfig) -> int | None:
    """Side of the dataset's images when known without loading it: the generated shapes' size,
    or ``data.image_size`` (folders and archives are resized to it); None for a folder or an
    archive at its native size (known once loaded)."""
    if data.source.strip().lower() == "shapes":
        return int(data.shapes_size)
    return None if data.image_size is None else int(data.image_size)


def crop_size(cfg: RunConfig, image_size: int) -> int:
    """Side of the global crops, the size the model is built for."""
    return int(cfg.aug.global_crops.size or image_size)


def check_crops(cfg: RunConfig, image_size: int) -> None:
    """Crops are cut from the images: neither kind (local ones where the method uses them) may
    be larger than the images."""
    from .methods import get_method  # late: methods import config

    g = crop_size(cfg, image_size)
    uses_local = cfg.aug.local_crops.count and get_method(cfg.method).uses_local_crops  # others make none
    local = (cfg.aug.local_crops.size or image_size) if uses_local else 0
    if g > image_size or local > image_size:
        raise ConfigError(
            f"images are {image_size} px but the crops are {g} px (global)"
            + (f" / {local} px (local)" if local else "")
            + "; lower aug.global_crops.size / aug.local_crops.size or raise "
            + ("data.shapes_size" if cfg.data.source.strip().lower() == "shapes" else "data.image_size")
        )


def check_method(cfg: RunConfig, image_size: int) -> None:
    """Build ``cfg``'s method for crops of ``image_size`` px on the meta device (nothing is
    allocated) so that every check of its constructor runs; raises its UserError."""
    from .methods import create_method  # late: methods import config

    with torch.device("meta"):
        create_method(cfg, crop_size(cfg, image_size))


def preflight(cfg: RunConfig, image_size: int | None) -> None:
    """Every check of a run's setup that needs no data beyond the images' side ``image_size``
    (None when unknown: only a fixed ``aug.global_crops.size`` lets the method be checked)."""
    if image_size is not None:
        check_crops(cfg, image_size)
    size = image_size or cfg.aug.global_crops.size
    if size is not None:
        check_method(cfg, int(size))
