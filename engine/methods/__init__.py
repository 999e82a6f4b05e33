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
