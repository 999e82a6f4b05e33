"""Losses shared by the methods: one short file per loss (each computes in float32).

=========================  =================================  ==========================
file                       loss                               used by
=========================  =================================  ==========================
``ntxent.py``              NT-Xent / InfoNCE                  SimCLR, MoCo v1/v2/v3
``byol.py``                normalised MSE, negative cosine    BYOL, SimSiam
``barlow.py``              cross-correlation redundancy       Barlow Twins
``swav.py``                swapped prediction                 SwAV
``dino.py``                teacher-student cross-entropy      DINO
=========================  =================================  ==========================
"""

from .barlow import BarlowTwinsLoss, barlow_twins_loss, batch_standardize, cross_correlation
from .byol import negative_cosine, normalized_mse
from .dino import dino_loss, entropy
from .ntxent import NTXentLoss, info_nce, nt_xent, ntxent_logits
from .swav import swav_loss

__all__ = [
    "BarlowTwinsLoss", "NTXentLoss", "barlow_twins_loss", "batch_standardize", "cross_correlation",
    "dino_loss", "entropy", "info_nce", "negative_cosine", "normalized_mse", "nt_xent",
    "ntxent_logits", "swav_loss",
]
