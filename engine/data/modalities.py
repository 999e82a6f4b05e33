"""Depth and segmentation maps beside a folder of images (MultiMAE's other modalities).

Layout: the source folder holds ``rgb/`` (any layout :mod:`engine.data.folder` reads: class
sub-folders, flat, train/test splits) and, as parallel trees, ``depth/`` and / or ``seg/``
with one file per RGB image at the same relative path and the same name (any image
extension)::

    mydata/rgb/train/cat/0001.jpg
    mydata/depth/train/cat/0001.png     8- or 16-bit gray, brighter = nearer
    mydata/seg/train/cat/0001.png       one channel of class ids, 0 = background

Each map gets the RGB image's geometry (short side resized to S, centre square): depth
bilinear, then stored as uint8 [N, 1, S, S] (16/32-bit and float maps brought to 8 bit as
images are: 16-bit by 1/257);
segmentation nearest-neighbour, uint8 [N, S, S] (ids above 255 are refused). The shapes
dataset provides the same two extras. Folders only (not archives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import Cancelled, DataError

MODALITY_DIRS = ("depth", "seg")
IMAGE_DIR = "rgb"


def modality_dirs(source: Path) -> dict[str, Path]:
    """{'depth': folder, 'seg': folder} present beside ``source/rgb`` (empty: a plain folder)."""
    if not source.is_dir() or not (source / IMAGE_DIR).is_dir():
        return {}
    return {m: source / m for m in MODALITY_DIRS if (source / m).is_dir()}


def available_modalities(source: str) -> set[str]:
    """The extras a source provides, known without decoding: 'shapes' has depth and seg; a
    folder has what :func:`modality_dirs` finds; an archive has none."""
    if source.strip().lower() == "shapes":
        return set(MODALITY_DIRS)
    return set(modality_dirs(Path(source).expanduser()))


def _index(folder: Path) -> dict[tuple[str, ...], Path]:
    """Relative path without the extension -> file, for every file below ``folder``."""
    out: dict[tuple[str, ...], Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            rel = p.relative_to(folder).parts
            out.setdefault(rel[:-1] + (Path(rel[-1]).stem,), p)
    return out


def centre_box(w: int, h: int) -> tuple[float, float, float, float]:
    """The centre square of a w x h image, as PIL's resize box (images and their maps alike)."""
    s = min(w, h)
    return ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)


def _square(im: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    if im.size == (size, size):
        return im
    return im.resize((size, size), resample, box=centre_box(*im.size))


def _depth(path: Path, size: int) -> np.ndarray:
    from .folder import _to_rgb  # (folder imports this module) 16/32-bit and float maps to 8 bit, as images

    with Image.open(path) as im:
        im.load()
        gray = _to_rgb(im)[0].convert("L")
        return np.asarray(_square(gray, size, Image.Resampling.BILINEAR), dtype=np.uint8)[None]  # [1, S, S]


def _seg(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        if im.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"segmentation map {path} is {im.mode}; save class ids in one channel (L, P or 16-bit)")
        a = np.asarray(im)
        if a.max(initial=0) > 255:
            raise DataError(f"segmentation map {path} holds class id {int(a.max())}; ids must be at most 255")
        im = Image.fromarray(a.astype(np.uint8), "L")
        return np.asarray(_square(im, size, Image.Resampling.NEAREST), dtype=np.uint8)  # [S, S]


def decode_modalities(files: list[tuple[str, ...]], dirs: dict[str, Path], size: int,
                      should_stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
    """The maps of the RGB ``files`` (their parts relative to ``rgb/``), in that order:
    {'depth': uint8 [N, 1, S, S], 'seg': uint8 [N, S, S]}. Raises DataError for a missing or
    unreadable map (every image needs one), ``Cancelled`` when ``should_stop`` answers True."""
    out: dict[str, np.ndarray] = {}
    for name, folder in dirs.items():
        index = _index(folder)
        read = _depth if name == "depth" else _seg
        arr = np.empty((len(files), 1, size, size) if name == "depth" else (len(files), size, size), np.uint8)
        for i, parts in enumerate(files):
            if should_stop is not None and i % 256 == 0 and should_stop():
                raise Cancelled("stopped while loading the data")
            key = parts[:-1] + (Path(parts[-1]).stem,)
            path = index.get(key)
            if path is None:
                raise DataError(f"no {name} map for rgb/{'/'.join(parts)} (looked for "
                                f"{name}/{'/'.join(key)}.*); every image needs one, or remove the {name} folder")
            try:
                arr[i] = read(path, size)
            except DataError:
                raise
            except Exception as e:  # corrupt or not an image
                raise DataError(f"cannot read the {name} map {path} ({type(e).__name__}: {e})") from None
        out[name] = arr
    return out
