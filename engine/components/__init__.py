"""Shared building blocks of the methods: backbones, heads, momentum encoder, queue,
Sinkhorn-Knopp, DINO head, centering. Each lives in one file and is reused by every method.

Losses live in :mod:`engine.losses`; augmentation (incl. multi-crop) in :mod:`engine.augment`;
masking in :mod:`engine.masking`; evaluation monitors in :mod:`engine.monitors`.
"""

from .backbones import (
    ResNetBackbone,
    ViTBackbone,
    ViTBackboneMixin,
    build_backbone,
    param_count,
    resolve_cifar_stem,
    xavier_init_split_qkv,
)
from .centering import Centering, teacher_temp_at, teacher_temp_schedule
from .dino_head import DINOHead
from .heads import MLPHead, mlp
from .momentum import ema_update, make_teacher, momentum_at
from .queue import FeatureQueue
from .sinkhorn import sinkhorn

__all__ = [
    "Centering", "DINOHead", "FeatureQueue", "MLPHead", "ResNetBackbone", "ViTBackbone",
    "ViTBackboneMixin", "build_backbone", "ema_update", "make_teacher", "mlp", "momentum_at",
    "param_count", "resolve_cifar_stem", "sinkhorn", "teacher_temp_at", "teacher_temp_schedule",
    "xavier_init_split_qkv",
]
