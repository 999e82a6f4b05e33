"""A FIFO feature queue (memory bank of negatives), as in MoCo (He et al. 2020; K = 65536).

Keys are enqueued after the optimiser step (``after_optimizer_step``); the oldest are
dropped. The size can change between steps (live-tunable): growing keeps every stored key
and fills the rest over the next steps; shrinking keeps the newest keys.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureQueue(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("feats", torch.zeros(size, dim))  # [K, d], row 0 is the oldest when full
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # rows filled so far

    @property
    def size(self) -> int:
        return self.feats.shape[0]

    def filled(self) -> torch.Tensor:
        """Stored keys, oldest first: [min(count, K), d]. (One host read of ``count``.)"""
        n = int(self.count)
        if n < self.size:
            return self.feats[:n]
        return torch.roll(self.feats, -int(self.ptr), dims=0)

    def negatives(self) -> torch.Tensor:
        """Keys to use as negatives (order irrelevant): [min(count, K), d]."""
        n = int(self.count)
        return self.feats if n >= self.size else self.feats[:n]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """keys: [B, d] -> written at the pointer, wrapping around (no host sync)."""
        keys = keys.detach().to(self.feats.dtype)
        b, k = keys.shape[0], self.size
        if b >= k:
            self.feats.copy_(keys[-k:])
            self.ptr.zero_()
            self.count.fill_(k)
            return
        idx = (self.ptr + torch.arange(b, device=keys.device)) % k
        self.feats.index_copy_(0, idx, keys)
        self.ptr.copy_((self.ptr + b) % k)
        self.count.copy_(torch.clamp(self.count + b, max=k))

    @torch.no_grad()
    def resize(self, size: int) -> None:
        """Change K between steps, keeping the newest keys."""
        if size < 1:
            raise ValueError(f"queue size must be >= 1 (got {size})")
        kept = self.filled()[-size:]
        n = kept.shape[0]
        feats = torch.zeros(size, self.feats.shape[1], device=self.feats.device, dtype=self.feats.dtype)
        feats[:n] = kept
        self.feats = feats
        self.count.fill_(n)
        self.ptr.fill_(n % size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint may hold a queue of another (live-changed) size
        # (checkpoints are loaded on the CPU: keep the buffer on this module's device and dtype)
        key = prefix + "feats"
        if key in state_dict and state_dict[key].shape != self.feats.shape:
            self.feats = torch.zeros(state_dict[key].shape, dtype=self.feats.dtype, device=self.feats.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
