"""Method registry (like timm's ``create_model``): one line per method."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Method

# name -> "module:Class"; a new method adds one line here.
_REGISTRY: dict[str, str] = {
    "simclr": "engine.methods.simclr:SimCLR",
    # MoCo family
    "moco_v1": "engine.methods.moco:MoCoV1",
    "moco_v2": "engine.methods.moco:MoCoV2",
    "moco_v3": "engine.methods.moco_v3:MoCoV3",
    # BYOL / SimSiam / Barlow Twins
    "byol": "engine.methods.byol:BYOL",
    "simsiam": "engine.methods.simsiam:SimSiam",
    "barlow_twins": "engine.methods.barlow_twins:BarlowTwins",
    # SwAV / DINO
    "swav": "engine.methods.swav:SwAV",
    "dino": "engine.methods.dino:DINO",
    # masked image modelling
    "mae": "engine.methods.mae:MAE",
    "simmim": "engine.methods.simmim:SimMIM",
    "beit": "engine.methods.beit:BEiT",
    "multimae": "engine.methods.multimae:MultiMAE",
}


def list_methods() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> "type[Method]":
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method '{name}'; choose one of: {', '.join(_REGISTRY)}"
        ) from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def create_method(cfg, image_size: int) -> "Method":
    return get_method(cfg.method)(cfg, image_size)
