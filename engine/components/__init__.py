"""Shared building blocks of the methods: backbones and heads.

Losses live in :mod:`engine.losses`; evaluation monitors in :mod:`engine.monitors`.
"""

from .backbones import (
    ResNetBackbone,
    ViTBackbone,
    ViTBackboneMixin,
    build_backbone,
    param_count,
    resolve_cifar_stem,
)
from .heads import MLPHead, mlp

__all__ = [
    "MLPHead",
    "ResNetBackbone",
    "ViTBackbone",
    "ViTBackboneMixin",
    "build_backbone",
    "mlp",
    "param_count",
    "resolve_cifar_stem",
]
