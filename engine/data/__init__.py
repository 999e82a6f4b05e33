"""Data layer: datasets as decoded uint8 tensors, and a deterministic batch stream.

Every source ends up as a :class:`DataSplits` of two :class:`ImageSet` (train and
test), each holding ALL its images decoded once into one uint8 tensor
[N, 3, S, S] (possibly a memory-mapped cache file). Augmentation happens later,
on the training device, batch by batch (see :class:`BatchStream`).

Sources (``DataConfig.source``):

* ``'shapes'``: the embedded procedural dataset (:mod:`engine.data.shapes`), with
  depth and segmentation extras;
* a folder of images, with class sub-folders (labelled) or flat (unlabelled), with
  or without ``train``/``test`` (``val``, ``valid``, ``validation``) sub-folders;
* a ``.tar``, ``.tar.gz`` or ``.tgz`` archive of such a folder (read in place).

Public API::

    load_dataset(cfg: DataConfig, should_stop=None) -> DataSplits
    make_shapes(n, size=64, seed=0, n_classes=10) -> ImageSet
    load_folder(cfg: DataConfig, should_stop=None) -> DataSplits
    BatchStream(data, batch_size, device='cpu', seed=0, on_device=True)

This package imports neither torch nor PIL at import time (the names above are
loaded lazily), so that decoding workers started with 'spawn' (non-Linux), which
import ``engine.data.folder``, start quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ..config import DataConfig
    from .folder import load_folder
    from .shapes import SHAPE_CLASSES, make_shapes
    from .stream import BatchStream

__all__ = [
    "ImageSet",
    "DataSplits",
    "load_dataset",
    "load_folder",
    "make_shapes",
    "SHAPE_CLASSES",
    "BatchStream",
]


@dataclass
class ImageSet:
    """A decoded set of images, with optional labels and per-pixel extras.

    images: uint8 [N, 3, H, W] on the CPU (may wrap a numpy memmap: treat as read-only)
    labels: int64 [N], or None for unlabelled folders
    classes: class names; ``labels`` index into it (empty when unlabelled)
    extras: per-image modalities, first dimension N (shapes: 'depth' uint8
        [N, 1, H, W], brighter = nearer; 'seg' uint8 [N, H, W], 0 = background,
        c + 1 = class c)
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        """Side S of the (square) images."""
        return int(self.images.shape[-1])

    def subset(self, index: torch.Tensor) -> ImageSet:
        """A new ImageSet of the rows ``index`` (int64 [M]); copies the selected rows."""
        return ImageSet(
            images=self.images[index],
            labels=None if self.labels is None else self.labels[index],
            classes=list(self.classes),
            extras={k: v[index] for k, v in self.extras.items()},
        )


@dataclass
class DataSplits:
    """The train and evaluation sets of one source.

    test is None only when nothing could be held out (e.g. ``test_fraction`` 0).
    info holds what happened while loading, e.g. ``{'split': 'detected train/test',
    'skipped': 3, 'converted': 12, 'warnings': [...], 'cached': True}``; callers
    should print ``info['warnings']`` (one line each) when present.
    """

    train: ImageSet
    test: ImageSet | None
    name: str
    source: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """Side S of the square images (train and test share it)."""
        return self.train.image_size

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def labelled(self) -> bool:
        return self.train.labels is not None


def load_dataset(cfg: DataConfig, should_stop: Callable[[], bool] | None = None) -> DataSplits:
    """Load the source named by ``cfg.source``; raises ``engine.errors.DataError``.

    ``should_stop`` (e.g. a run's Stop, a closing window) is asked between chunks of decoding or
    generation; when it answers True the load ends with ``engine.errors.Cancelled`` and writes
    no cache."""
    if cfg.source.strip().lower() == "shapes":
        from .shapes import derive_seed, make_shapes

        train = make_shapes(cfg.shapes_train, size=cfg.shapes_size, seed=cfg.seed, should_stop=should_stop)
        test = make_shapes(cfg.shapes_test, size=cfg.shapes_size, seed=derive_seed(cfg.seed, "test"),
                           should_stop=should_stop)
        return DataSplits(
            train=train,
            test=test,
            name="shapes",
            source="shapes",
            info={
                "split": f"generated ({cfg.shapes_train} train / {cfg.shapes_test} test, seed {cfg.seed})",
                "skipped": 0,
                "converted": 0,
                "warnings": [],
            },
        )
    from .folder import load_folder

    return load_folder(cfg, should_stop)


_LAZY = {
    "make_shapes": "shapes",
    "SHAPE_CLASSES": "shapes",
    "load_folder": "folder",
    "BatchStream": "stream",
}


def __getattr__(name: str) -> Any:  # PEP 562: lazy re-exports
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
