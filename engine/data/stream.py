"""Deterministic, resumable batches of uint8 images on the training device.

:class:`BatchStream` keeps a dataset's uint8 images where the training happens:
on the GPU when they fit (one gather per batch, no host work at all), else on the
CPU, gathered into a pinned staging buffer and copied with ``non_blocking``.

Batch ``index`` of ``epoch`` is always the same images: the order of an epoch is
a permutation drawn from a ``torch.Generator`` seeded with
``seed * 1_000_003 + epoch`` (on the CPU, so it does not depend on the device),
and the last incomplete batch is dropped. Resuming at (epoch, index) therefore
reproduces the interrupted run's batches exactly.
"""

from __future__ import annotations

import torch

from ..errors import DataError
from . import ImageSet

__all__ = ["BatchStream"]


class BatchStream:
    """Batches of an ImageSet for training, by (epoch, index).

    data: the set (images uint8 [N, 3, H, W] on the CPU, extras [N, ...]).
    batch_size: images per batch; ``steps_per_epoch = N // batch_size`` (drop_last).
    device: training device.
    seed: seed of the per-epoch order.
    on_device: keep the images on ``device`` when they fit in ``max_fraction`` of
        its free memory; False keeps them on the CPU.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        on_device: bool = True,
        max_fraction: float = 0.5,
    ) -> None:
        n = len(data)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if n < batch_size:
            raise DataError(
                f"the training set has {n} images, fewer than one batch of {batch_size}; "
                "lower train.batch_size or add images"
            )
        self.data = data
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.n = n
        self.steps_per_epoch = n // self.batch_size

        extras_bytes = sum(t.numel() * t.element_size() for t in data.extras.values())
        nbytes = data.images.numel() * data.images.element_size() + extras_bytes
        self.on_device = self.device.type == "cpu" or (on_device and self._fits(nbytes, max_fraction))
        store = self.device if self.on_device else torch.device("cpu")
        self.store_device = store
        # images: [N, 3, H, W] uint8 on ``store`` (a CPU memmap is read in place)
        self.images = data.images.to(store) if store.type != "cpu" else data.images
        self._extras = {k: (v.to(store) if store.type != "cpu" else v) for k, v in data.extras.items()}
        self.labels = data.labels
        self._pin = (not self.on_device) and self.device.type == "cuda"
        self._perms: dict[int, torch.Tensor] = {}  # epoch -> permutation on ``store`` (last two kept)

    # ------------------------------------------------------------------ order
    def _fits(self, nbytes: int, max_fraction: float) -> bool:
        if self.device.type != "cuda":
            return True  # mps / other: trust the caller's on_device
        try:
            free, _ = torch.cuda.mem_get_info(self.device)
        except Exception:  # pragma: no cover - no driver info
            return False
        return nbytes <= max_fraction * free

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of ``epoch``: int64 [N] on the storage device (cached)."""
        perm = self._perms.get(epoch)
        if perm is None:
            g = torch.Generator(device="cpu")
            g.manual_seed(self.seed * 1_000_003 + int(epoch))
            perm = torch.randperm(self.n, generator=g, dtype=torch.int64)
            if self.store_device.type != "cpu":
                perm = perm.to(self.store_device)
            if len(self._perms) >= 2:  # keep the current and the previous epoch only
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def indices(self, epoch: int, index: int) -> torch.Tensor:
        """Dataset indices of batch ``index`` of ``epoch``: int64 [B] on the storage device."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch index {index} out of range [0, {self.steps_per_epoch})")
        start = index * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]

    # ---------------------------------------------------------------- batches
    def _gather(self, src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """src[idx] on the training device."""
        if self.on_device:
            return src.index_select(0, idx)
        if self._pin:  # gather into pinned memory, then an asynchronous copy
            buf = torch.empty((len(idx),) + tuple(src.shape[1:]), dtype=src.dtype, pin_memory=True)
            torch.index_select(src, 0, idx, out=buf)
            return buf.to(self.device, non_blocking=True)
        return src.index_select(0, idx).to(self.device)

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 [B, 3, H, W] on the device, their dataset indices int64 [B] on the device)."""
        idx = self.indices(epoch, index)
        images = self._gather(self.images, idx)
        on_device = idx.to(self.device, non_blocking=True)
        self._last = (on_device, idx)  # extras() of this batch reuse the storage-side indices
        return images, on_device

    def extras(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The extras (e.g. 'depth' [B, 1, H, W], 'seg' [B, H, W]) of dataset indices ``idx``."""
        if not self._extras:
            return {}
        last = getattr(self, "_last", None)
        # the indices batch() returned: no copy back from the GPU (a host sync every step)
        idx = last[1] if last is not None and idx is last[0] else idx.to(self.store_device)
        return {k: self._gather(v, idx) for k, v in self._extras.items()}

    def labels_of(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Labels int64 [B] of dataset indices ``idx`` on the device, or None when unlabelled."""
        if self.labels is None:
            return None
        return self.labels.index_select(0, idx.cpu()).to(self.device)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __repr__(self) -> str:
        where = "device" if self.on_device else ("pinned CPU" if self._pin else "CPU")
        return (
            f"BatchStream(n={self.n}, batch_size={self.batch_size}, steps_per_epoch={self.steps_per_epoch}, "
            f"device={self.device}, storage={where})"
        )
