"""Losses shared by the methods (each computes its logits in float32)."""

from .ntxent import NTXentLoss, info_nce, nt_xent, ntxent_logits

__all__ = ["NTXentLoss", "info_nce", "nt_xent", "ntxent_logits"]
