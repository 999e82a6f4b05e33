"""Real image datasets: folders and tar archives, decoded once into uint8 tensors.

Layouts understood (``source`` is a folder or a ``.tar``/``.tar.gz``/``.tgz`` of one):

* class sub-folders: ``<root>/<class>/*.jpg`` (labelled);
* a flat folder: ``<root>/*.jpg`` (unlabelled: ``labels`` is None);
* either of them under split folders: ``<root>/train/...`` and ``<root>/test/...``
  (also ``val``, ``valid``, ``validation``). Wrapper folders that hold everything
  (e.g. ``cifar10/`` at the top of ``cifar10.tar.gz``) are looked through.

Without a split, ``cfg.test_fraction`` of the images is held out with a seeded
permutation. Class names come from the train split; test images of classes that
train lacks are ignored (counted in ``info['ignored']``).

Decoding: files are read in order (a tar member by member in ONE streaming pass,
never extracted to disk) and decoded in parallel in ``cfg.workers`` processes
(0: one per available core), one task per chunk of files, with a bounded number
of chunks in flight; small sources (<= SERIAL_MAX_FILES) are decoded in-process.
Every image becomes RGB (grayscale, RGBA/LA/transparent palette (composited on
white), palette, CMYK and 16/32-bit images are converted and counted in
``info['converted']``), is resized on its short side to S and centre cropped to
S x S. S is ``cfg.image_size``; when empty, the native size if all
images share it, else the most common short side (at most ``AUTO_MAX_SIZE``).
Unreadable images are skipped and counted in ``info['skipped']`` with a line in
``info['warnings']``.

Depth and segmentation maps (MultiMAE): a folder holding ``rgb/`` (any layout above)
with parallel ``depth/`` and / or ``seg/`` trees of files of the same names gives each image
set those extras (:mod:`engine.data.modalities`).

Cache: with ``cfg.cache_dir`` the decoded arrays go to
``<cache_dir>/<key>-train.npy`` / ``<key>-test.npy`` plus ``<key>.json`` (labels,
classes, info), written atomically. The key hashes the absolute source path, its
size and modification time (every file's, for a folder), the image size and the
split settings. A later load maps the files (no decoding, no copy).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
import tarfile
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import Cancelled, DataError
from ..fileio import atomic_open
from .modalities import IMAGE_DIR, centre_box, decode_modalities, modality_dirs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..config import DataConfig
    from . import DataSplits, ImageSet

__all__ = ["load_folder", "IMAGE_EXTENSIONS", "TRAIN_NAMES", "TEST_NAMES", "AUTO_MAX_SIZE"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
TRAIN_NAMES = ("train", "training")
TEST_NAMES = ("test", "val", "valid", "validation")  # in order of preference
AUTO_MAX_SIZE = 512  # largest side chosen automatically when cfg.image_size is empty
CACHE_VERSION = 1

SERIAL_MAX_FILES = 256  # at most this many files: decode in this process (no pool start-up)
TASK_FILES = 256  # files per decoding task
TAR_CHUNK_BYTES = 8 << 20  # ... or fewer, when they hold more bytes than this
PROBE_FILES = 64  # headers read to guess the output size when image_size is empty


# ==================================================================== decoding
# These functions run in the worker processes: they must not import torch.
def _to_rgb(im: Image.Image) -> tuple[Image.Image, bool]:
    """Any PIL image -> 8-bit RGB; returns (image, whether it had to be converted)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im, False
    if mode.startswith("I") or mode == "F":  # 16-bit ('I;16*') or 32-bit ('I', 'F') gray
        a = np.asarray(im).astype(np.float64)
        hi = float(a.max()) if a.size else 0.0
        if mode == "F" and hi <= 1.0:
            a = a * 255.0
        elif mode.startswith("I;16") or 255.0 < hi <= 65535.0:
            a = a / 257.0  # 16-bit range -> 8-bit
        elif hi > 65535.0:
            lo = float(a.min())
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB"), True
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB"), True
    return im.convert("RGB"), True  # L, 1, P, CMYK, YCbCr, LAB, HSV, ...


def _decode_one(src: str | bytes, size: int) -> tuple[np.ndarray, tuple[int, int], bool, bool]:
    """Decode one image file (a path or its bytes) to uint8 [3, size, size].

    Returns (array, native (w, h), converted, resized). Raises on unreadable data.
    """
    fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
    with Image.open(fp) as im:
        native = im.size
        if im.format == "JPEG" and min(native) >= 2 * size:
            im.draft(im.mode, (size, size))  # DCT-domain downscale of big JPEGs (stays >= size)
        if "exif" in im.info:
            im = ImageOps.exif_transpose(im)
        im.load()
        im, converted = _to_rgb(im)
        w, h = im.size
        resized = (w, h) != (size, size)
        if resized:
            im = im.resize((size, size), Image.Resampling.BICUBIC, box=centre_box(w, h), reducing_gap=3.0)
        arr = np.asarray(im, dtype=np.uint8)  # [S, S, 3]
    if arr.shape != (size, size, 3):
        raise ValueError(f"decoded to an unexpected shape {arr.shape}")
    return arr.transpose(2, 0, 1), native, converted, resized


@dataclass
class _Chunk:
    """What a worker returns for a chunk of files."""

    index: np.ndarray  # int64 [k]: global file indices decoded successfully
    images: np.ndarray  # uint8 [k, 3, S, S]
    sizes: list[tuple[int, int]]  # native (w, h) of each decoded image
    converted: int
    resized: int
    errors: list[tuple[int, str]]  # (global file index, error) of skipped files


def _decode_chunk(items: list[tuple[int, str | bytes]], size: int) -> _Chunk:
    """Worker task: decode a chunk of (global index, path or bytes)."""
    out = np.empty((len(items), 3, size, size), dtype=np.uint8)
    ok: list[int] = []
    sizes: list[tuple[int, int]] = []
    errors: list[tuple[int, str]] = []
    converted = resized = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's DecompressionBomb / palette / EXIF warnings
        for gi, src in items:
            try:
                arr, native, conv, res = _decode_one(src, size)
            except Exception as e:  # corrupt, truncated, unsupported: skip and report
                errors.append((gi, (f"{type(e).__name__}: {e}".splitlines() or ["?"])[0][:200]))
                continue
            out[len(ok)] = arr
            ok.append(gi)
            sizes.append(native)
            converted += conv
            resized += res
    return _Chunk(np.asarray(ok, dtype=np.int64), out[: len(ok)], sizes, converted, resized, errors)


def _probe_size(src: str | bytes) -> tuple[int, int] | None:
    """Native (w, h) from the header only, or None when unreadable."""
    try:
        fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fp) as im:
                return im.size
    except Exception:
        return None


# ===================================================================== listing
@dataclass
class _Entry:
    """One image file: its path relative to the source root (as parts)."""

    parts: tuple[str, ...]
    key: str | int  # folder: absolute path; tar: member position in the archive


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _list_folder(root: Path) -> tuple[list[_Entry], int, Any]:
    """Image files under ``root`` (sorted), the count of all files, and a fingerprint."""
    entries: list[_Entry] = []
    n_files = 0
    fp = hashlib.sha1()
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        rel = Path(dirpath).relative_to(root).parts
        for fn in sorted(filenames):
            n_files += 1
            if not _is_image(fn):
                continue
            full = os.path.join(dirpath, fn)
            try:
                st = os.stat(full)
            except OSError:
                continue
            entries.append(_Entry(rel + (fn,), full))
            fp.update(f"{'/'.join(rel + (fn,))}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return entries, n_files, fp


def _iter_tar(path: Path) -> Iterator[tuple[int, tarfile.TarInfo, tarfile.TarFile]]:
    """Members of a tar, in archive order (streaming: no seeking, no extraction)."""
    try:
        tf = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"cannot open archive '{path}' ({e}); give a complete .tar, .tar.gz or .tgz file"
        ) from None
    with tf:
        try:
            for pos, m in enumerate(tf):
                yield pos, m, tf
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(
                f"archive '{path}' is truncated or corrupt ({e}); download or pack it again"
            ) from None


def _tar_parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


# ====================================================================== layout
@dataclass
class _Layout:
    """Which files go where: per selected file, split (0 train, 1 test) and class name."""

    files: list[_Entry]  # train files first, then test files
    split_of: np.ndarray  # int8 [F]
    class_of: list[str | None]  # None: unlabelled
    classes: list[str]  # from the train split; [] when unlabelled
    split_desc: str  # e.g. 'detected train/test'
    has_split: bool
    ignored: int  # image files outside the splits / of unknown classes


def _strip_wrappers(entries: list[_Entry]) -> int:
    """How many leading folders every file shares (not counting split names)."""
    depth = 0
    while True:
        heads = {e.parts[depth] if len(e.parts) > depth + 1 else None for e in entries}
        if len(heads) != 1 or None in heads:
            return depth
        head = next(iter(heads))
        if head.lower() in TRAIN_NAMES + TEST_NAMES:
            return depth
        depth += 1


def _classes_of(entries: list[_Entry], depth: int) -> tuple[list[str | None], int]:
    """Class of each file below ``depth`` (first folder), or all None for a flat set.

    Files directly at ``depth`` next to class folders are ignored (class ''),
    returned count: how many.
    """
    nested = [len(e.parts) > depth + 1 for e in entries]
    if not any(nested):
        return [None] * len(entries), 0
    out: list[str | None] = [e.parts[depth] if n else "" for e, n in zip(entries, nested)]
    return out, sum(1 for n in nested if not n)


def _layout(entries: list[_Entry]) -> _Layout:
    depth = _strip_wrappers(entries)
    top: dict[str, list[_Entry]] = {}
    for e in entries:
        if len(e.parts) > depth + 1:
            top.setdefault(e.parts[depth].lower(), []).append(e)
    train_key = next((n for n in TRAIN_NAMES if n in top), None)
    test_key = next((n for n in TEST_NAMES if n in top), None)

    if train_key is not None:
        train = top[train_key]
        test = top[test_key] if test_key is not None else []
        ignored = len(entries) - len(train) - len(test)
        tr_cls, ign_tr = _classes_of(train, depth + 1)
        te_cls, ign_te = _classes_of(test, depth + 1) if test else ([], 0)
        ignored += ign_tr + ign_te
        labelled = bool(tr_cls) and tr_cls[0] is not None
        classes = sorted({c for c in tr_cls if c}) if labelled else []
        files, split, cls_of = [], [], []
        for e, c in zip(train, tr_cls):
            if c != "":
                files.append(e), split.append(0), cls_of.append(c)
        known = set(classes)
        for e, c in zip(test, te_cls):
            if c == "":
                continue
            if labelled and c not in known:  # test class unknown to train / unlabelled test
                ignored += 1
                continue
            files.append(e), split.append(1), cls_of.append(c if labelled else None)
        orig_train = train[0].parts[depth] if train else train_key
        orig_test = test[0].parts[depth] if test else None
        kept_test = sum(split)
        if test and not kept_test:  # e.g. test/A beside train/a: evaluate on a held-out part of train
            desc = (f"detected {orig_train}/{orig_test}, but no {orig_test} image is in a {orig_train} class: "
                    "a seeded part of train is held out instead")
        else:
            desc = f"detected {orig_train}/{orig_test}" if test else f"detected {orig_train} only"
        return _Layout(files, np.asarray(split, np.int8), cls_of, classes, desc, bool(kept_test), ignored)

    cls_of, ignored = _classes_of(entries, depth)
    keep = [i for i, c in enumerate(cls_of) if c != ""]
    files = [entries[i] for i in keep]
    cls_of = [cls_of[i] for i in keep]
    classes = sorted({c for c in cls_of if c}) if cls_of and cls_of[0] is not None else []
    return _Layout(files, np.zeros(len(files), np.int8), cls_of, classes, "", False, ignored)


# ================================================================ decode driver
Items = Iterable[tuple[int, "str | bytes"]]


def _n_workers(cfg_workers: int) -> int:
    if cfg_workers > 0:
        return cfg_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _mp_context() -> mp.context.BaseContext:
    """'fork' on Linux (like torch's DataLoader): workers start at once and import
    nothing; they run only PIL/numpy code, never torch, Qt or OpenMP, so the threads
    of the host process do not matter. 'spawn' elsewhere (workers then import this
    module, which does not import torch, plus the host's main module)."""
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _chunks(items: Items, max_files: int, max_bytes: int) -> Iterator[list[tuple[int, str | bytes]]]:
    chunk: list[tuple[int, str | bytes]] = []
    nbytes = 0
    for it in items:
        chunk.append(it)
        nbytes += len(it[1]) if isinstance(it[1], (bytes, bytearray)) else 0
        if len(chunk) >= max_files or nbytes >= max_bytes:
            yield chunk
            chunk, nbytes = [], 0
    if chunk:
        yield chunk


def _decode_items(
    make_items: Callable[[], Items], size: int | None, workers: int, info: dict[str, Any],
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[_Chunk], int]:
    """Decode every item of ``make_items()`` in order; returns (chunks, output size).

    ``size`` None: guessed from the first headers. Up to SERIAL_MAX_FILES items (or
    one worker) are decoded in this process; more go to a process pool, streamed in
    chunks with a bounded number in flight. ``make_items`` is called again only if
    the pool cannot be used. ``should_stop`` is asked between chunks (Cancelled when True).
    """

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("loading the dataset was cancelled")

    def serial(chunks: Iterable[list[tuple[int, str | bytes]]]) -> list[_Chunk]:
        out = []
        for c in chunks:
            check()
            out.append(_decode_chunk(c, size))
        return out

    check()
    it = iter(make_items())
    head = list(itertools.islice(it, SERIAL_MAX_FILES + 1))
    if size is None:
        size = _guess_size([src for _, src in head[:PROBE_FILES]])
    if len(head) <= SERIAL_MAX_FILES or workers <= 1:
        return serial(_chunks(itertools.chain(head, it), 1024, TAR_CHUNK_BYTES)), size
    results: list[_Chunk] = []
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(), initializer=_ignore_sigint) as ex:
            pending: deque = deque()
            try:
                for chunk in _chunks(itertools.chain(head, it), TASK_FILES, TAR_CHUNK_BYTES):
                    check()
                    pending.append(ex.submit(_decode_chunk, chunk, size))
                    while len(pending) >= workers * 4:  # bound the bytes in flight
                        results.append(pending.popleft().result())
                while pending:
                    check()
                    results.append(pending.popleft().result())
            except BaseException:
                ex.shutdown(wait=False, cancel_futures=True)
                raise
        return results, size
    except (BrokenProcessPool, OSError, AssertionError) as e:
        # no child processes here (daemonic process, sandbox, a killed worker): one process
        info["warnings"].append(f"parallel decoding failed ({type(e).__name__}: {e}); decoded in one process")
        return serial(_chunks(make_items(), 1024, TAR_CHUNK_BYTES)), size


def _ignore_sigint() -> None:
    """Decoding workers leave Ctrl-C to the parent (a forked worker inherited ssl-train's handler
    and printed its 'stopping' line once per worker); the parent stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _guess_size(srcs: list[str | bytes]) -> int:
    """Most common short side among a few readable headers (a guess, checked after decoding)."""
    sizes: Counter = Counter(wh for wh in map(_probe_size, srcs) if wh is not None)
    if not sizes:
        return 32  # nothing readable among the first files: decoding will tell
    w, h = sizes.most_common(1)[0][0]
    return max(1, min(w, h, AUTO_MAX_SIZE))


def _best_size(chunks: list[_Chunk]) -> int | None:
    """The automatic output side: the short side of the most common native size."""
    sizes: Counter = Counter(s for c in chunks for s in c.sizes)
    if not sizes:
        return None
    w, h = sizes.most_common(1)[0][0]
    return max(1, min(w, h, AUTO_MAX_SIZE))


# ====================================================================== cache
def _cache_key(source: Path, fingerprint: str, cfg: DataConfig) -> str:
    h = hashlib.sha1()
    h.update(
        json.dumps(
            [CACHE_VERSION, str(source), fingerprint, cfg.image_size, cfg.test_fraction, cfg.seed],
        ).encode()
    )
    return f"{_dataset_name(source)}-{h.hexdigest()[:16]}"


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _atomic_write_json(path: Path, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f)


def _map_npy(path: Path) -> np.ndarray:
    # 'c' = copy-on-write mapping: no copy, and an accidental in-place write changes
    # this process's pages only (a read-only mapping would crash the process instead).
    return np.load(path, mmap_mode="c", allow_pickle=False)


def _image_set(images: np.ndarray, labels: list[int] | None, classes: list[str],
               extras: dict[str, np.ndarray] | None = None) -> ImageSet:
    import torch

    from . import ImageSet

    return ImageSet(
        images=torch.from_numpy(images),
        labels=None if labels is None else torch.as_tensor(labels, dtype=torch.int64),
        classes=list(classes),
        extras={k: torch.from_numpy(v) for k, v in (extras or {}).items()},
    )


def _load_cache(cache_dir: Path, key: str) -> dict[str, Any] | None:
    meta_path = cache_dir / f"{key}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        train = _map_npy(cache_dir / f"{key}-train.npy")
        test = _map_npy(cache_dir / f"{key}-test.npy") if meta["has_test"] else None
        if len(train) != meta["n_train"] or (test is not None and len(test) != meta["n_test"]):
            return None
        meta["train"], meta["test"] = train, test
        meta["train_extras"] = {m: _map_npy(cache_dir / f"{key}-train-{m}.npy") for m in meta.get("extras", [])}
        meta["test_extras"] = ({m: _map_npy(cache_dir / f"{key}-test-{m}.npy") for m in meta.get("extras", [])}
                               if test is not None else {})
        return meta
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # unreadable or partial cache: decode again


# ======================================================================= main
def _dataset_name(source: Path) -> str:
    name = source.name
    for suf in TAR_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)] or name
    return name


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _check_layout(lay: _Layout, source: Path, where: str, exts: str) -> None:
    if not (lay.split_of == 0).any():
        raise DataError(
            f"no training images found in {where} '{source}' (looked for {exts} in train/ "
            "or in class sub-folders); check the layout"
        )


def _take_rows(src: np.ndarray, r: np.ndarray) -> np.ndarray:
    """src[r] ([len(r), 3, S, S]); consecutive rows are a view, not a copy."""
    if len(r) and np.array_equal(r, np.arange(r[0], r[0] + len(r))):
        return src[r[0] : r[0] + len(r)]
    return src[r]


def load_folder(cfg: DataConfig, should_stop: Callable[[], bool] | None = None) -> DataSplits:
    """Load a folder or tar archive of images (see the module docstring); ``should_stop`` is
    asked between decoded chunks (``Cancelled`` when it answers True; no cache is written).

    Raises ``DataError`` (one line: what is wrong and what to do) for a missing
    path, an empty folder, no images, an unreadable archive or no decodable image.
    """
    from . import DataSplits

    t0 = time.perf_counter()
    source = Path(os.path.expanduser(cfg.source.strip())).absolute()
    if not source.exists():
        raise DataError(
            f"data source '{cfg.source}' does not exist; give 'shapes', a folder of images "
            "or a .tar/.tar.gz of one"
        )
    is_tar = source.is_file() and _is_tar(source)
    if not (source.is_dir() or is_tar):
        raise DataError(
            f"data source '{source}' is not a folder or a .tar/.tar.gz/.tgz archive; "
            "give a folder of images (class sub-folders or flat) or an archive of one"
        )
    exts = ", ".join(IMAGE_EXTENSIONS)
    where = "archive" if is_tar else "folder"
    info: dict[str, Any] = {"skipped": 0, "converted": 0, "resized": 0, "ignored": 0, "warnings": []}
    workers = _n_workers(cfg.workers)

    # ----------------------------------------------- list (folder) / fingerprint
    mods: dict[str, Path] = {}
    if is_tar:
        st = source.stat()
        fingerprint = f"tar:{st.st_size}:{st.st_mtime_ns}"
    else:
        mods = modality_dirs(source)  # rgb/ with depth/ and / or seg/ beside it (MultiMAE)
        entries, n_files, fp = _list_folder(source / IMAGE_DIR if mods else source)
        for d in mods.values():  # the maps belong to the cache key too
            fp.update(_list_folder(d)[2].hexdigest().encode())
        if n_files == 0:
            raise DataError(f"folder '{source}' is empty; put images in it (in class sub-folders or flat)")
        if not entries:
            raise DataError(f"no images found in folder '{source}' (looked for {exts}); add some")
        fingerprint = fp.hexdigest()

    # -------------------------------------------------------------- cache hit?
    cache_dir = Path(os.path.expanduser(cfg.cache_dir)).absolute() if cfg.cache_dir else None
    key = _cache_key(source, fingerprint, cfg)
    if cache_dir is not None:
        meta = _load_cache(cache_dir, key)
        if meta is not None:
            classes = meta["classes"]
            train = _image_set(meta["train"], meta["train_labels"], classes, meta["train_extras"])
            test = None
            if meta["test"] is not None:
                test = _image_set(meta["test"], meta["test_labels"], classes, meta["test_extras"])
            info = dict(meta["info"], cached=True, cache_file=str(cache_dir / f"{key}-train.npy"))
            info["seconds"] = round(time.perf_counter() - t0, 3)
            return DataSplits(train, test, meta["name"], str(source), info)

    # ------------------------------------------------------------------ decode
    # folder: lay out first (listing is cheap), decode the selected files only.
    # tar: one streaming pass lists and decodes every image member; lay out after.
    if is_tar:
        listing: dict[str, Any] = {}

        def make_items() -> Iterator[tuple[int, bytes]]:
            ents: list[_Entry] = []
            n_all = 0
            for _, m, tf in _iter_tar(source):
                if not m.isfile():
                    continue
                n_all += 1
                parts = _tar_parts(m.name)
                if not parts or not _is_image(parts[-1]) or any(_hidden(p) for p in parts[:-1]):
                    continue
                try:
                    f = tf.extractfile(m)
                    data = f.read() if f is not None else b""
                except Exception as e:  # truncated gzip stream, bad member
                    raise DataError(
                        f"archive '{source}' is truncated or corrupt ({type(e).__name__}: {e}); "
                        "download or pack it again"
                    ) from None
                ents.append(_Entry(parts, len(ents)))
                yield len(ents) - 1, data
            listing.update(entries=ents, n_files=n_all)

        chunks, size = _decode_items(make_items, cfg.image_size, workers, info, should_stop)
        if listing["n_files"] == 0:
            raise DataError(f"archive '{source}' holds no files; pack a folder of images into it")
        if not listing["entries"]:
            raise DataError(f"no images found in archive '{source}' (looked for {exts}); pack images into it")
        lay = _layout(listing["entries"])
        _check_layout(lay, source, where, exts)
        item_of_file = np.asarray([int(e.key) for e in lay.files], np.int64)
    else:
        lay = _layout(entries)
        _check_layout(lay, source, where, exts)
        files = lay.files

        def make_items() -> Iterator[tuple[int, str]]:
            return ((i, str(e.key)) for i, e in enumerate(files))

        chunks, size = _decode_items(make_items, cfg.image_size, workers, info, should_stop)
        item_of_file = np.arange(len(files), dtype=np.int64)

    if cfg.image_size is None:
        best = _best_size(chunks)
        if best is not None and best != size:  # the guess missed: decode again at the right size
            info["warnings"].append(f"most images are {best} px; decoded again at that size")
            chunks, size = _decode_items(make_items, best, workers, info, should_stop)
        native = {s for c in chunks for s in c.sizes}
        if len(native) > 1:
            info["warnings"].append(
                f"images have {len(native)} different sizes; resized on the short side and "
                f"centre-cropped to {size}x{size} (set data.image_size to choose)"
            )

    # ---------------------------------------------------------------- assemble
    files = lay.files
    info["ignored"] = lay.ignored
    if lay.ignored:
        info["warnings"].append(f"{lay.ignored} image(s) outside the train/test class folders were ignored")
    n_items = len(listing["entries"]) if is_tar else len(files)
    row_of_item = np.full(n_items, -1, np.int64)  # item -> row of the decoded arrays
    ok_items = np.concatenate([c.index for c in chunks]) if chunks else np.zeros(0, np.int64)
    row_of_item[ok_items] = np.arange(len(ok_items))
    rows_of_file = row_of_item[item_of_file]  # [F], -1 = skipped
    bad = {int(i): msg for c in chunks for i, msg in c.errors}
    skipped = [j for j in range(len(files)) if rows_of_file[j] < 0]
    info["skipped"] = len(skipped)
    info["converted"] = sum(c.converted for c in chunks)
    info["resized"] = sum(c.resized for c in chunks)
    if skipped:
        j = skipped[0]
        example = f"{'/'.join(files[j].parts)}: {bad.get(int(item_of_file[j]), '?')}"
        if len(skipped) == len(files):
            raise DataError(
                f"none of the {len(files)} images in '{source}' could be decoded (e.g. {example}); "
                "check that the files are valid images"
            )
        info["warnings"].append(f"{len(skipped)} unreadable image(s) skipped (e.g. {example})")
        info["skipped_files"] = ["/".join(files[j].parts) for j in skipped[:20]]

    decoded = np.concatenate([c.images for c in chunks]) if len(chunks) != 1 else chunks[0].images
    del chunks  # decoded: [N_ok, 3, S, S] in item order
    keep = np.nonzero(rows_of_file >= 0)[0]  # files (layout order) that decoded
    split = lay.split_of[keep]
    labelled = bool(lay.classes)
    cls_idx = {c: i for i, c in enumerate(lay.classes)}
    labels = np.asarray([cls_idx[lay.class_of[j]] for j in keep], np.int64) if labelled else None
    rows = rows_of_file[keep]  # rows of ``decoded``, in layout order

    train_sel = np.nonzero(split == 0)[0]  # positions in ``keep``
    test_sel = np.nonzero(split == 1)[0]
    if len(train_sel) == 0:
        raise DataError(f"none of the training images in '{source}' could be decoded; check the files")
    if lay.has_split:
        info["split"] = lay.split_desc
    else:
        prefix = f"{lay.split_desc}; " if lay.split_desc else ""
        n_test = int(round(len(train_sel) * cfg.test_fraction))
        if 0 < n_test < len(train_sel):
            perm = np.random.default_rng(cfg.seed).permutation(len(train_sel))
            test_sel = np.sort(train_sel[perm[:n_test]])
            train_sel = np.sort(train_sel[perm[n_test:]])
            info["split"] = prefix + (
                f"held out {n_test} of {len(keep)} ({cfg.test_fraction:g}, seed {cfg.seed})"
            )
        else:
            info["split"] = prefix + "no test split"
            if cfg.test_fraction > 0:
                info["warnings"].append("too few images to hold out a test split; evaluation is off")

    train_imgs = _take_rows(decoded, rows[train_sel])
    test_imgs = _take_rows(decoded, rows[test_sel]) if len(test_sel) else None
    maps = decode_modalities([lay.files[j].parts for j in keep], mods, size, should_stop) if mods else {}
    train_extras = {m: a[train_sel] for m, a in maps.items()}
    test_extras = {m: a[test_sel] for m, a in maps.items()} if test_imgs is not None else {}
    del maps
    if mods:
        info["extras"] = sorted(mods)
    train_labels = labels[train_sel].tolist() if labels is not None else None
    test_labels = labels[test_sel].tolist() if labels is not None and test_imgs is not None else None
    del decoded
    n_decoded = len(keep) + len(skipped)
    info.update(files=len(files), cached=False, workers=workers if n_decoded > SERIAL_MAX_FILES else 1)
    name = _dataset_name(source)

    # ------------------------------------------------------------- write cache
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            _atomic_save_npy(cache_dir / f"{key}-train.npy", train_imgs)
            if test_imgs is not None:
                _atomic_save_npy(cache_dir / f"{key}-test.npy", test_imgs)
            for split, ex in (("train", train_extras), ("test", test_extras)):
                for m, a in ex.items():
                    _atomic_save_npy(cache_dir / f"{key}-{split}-{m}.npy", a)
            meta = {
                "version": CACHE_VERSION,
                "name": name,
                "source": str(source),
                "classes": lay.classes,
                "has_test": test_imgs is not None,
                "n_train": len(train_imgs),
                "n_test": 0 if test_imgs is None else len(test_imgs),
                "train_labels": train_labels,
                "test_labels": test_labels,
                "extras": sorted(train_extras),
                "info": dict(info, cached=False),
            }
            _atomic_write_json(cache_dir / f"{key}.json", meta)  # last: marks the cache complete
            train_imgs = _map_npy(cache_dir / f"{key}-train.npy")  # frees the decoded copy
            test_imgs = _map_npy(cache_dir / f"{key}-test.npy") if test_imgs is not None else None
            train_extras = {m: _map_npy(cache_dir / f"{key}-train-{m}.npy") for m in train_extras}
            test_extras = {m: _map_npy(cache_dir / f"{key}-test-{m}.npy") for m in test_extras}
            info["cache_file"] = str(cache_dir / f"{key}-train.npy")
        except OSError as e:
            info["warnings"].append(
                f"could not write the cache in '{cache_dir}' ({e}); continuing without it"
            )

    info["seconds"] = round(time.perf_counter() - t0, 3)
    train = _image_set(train_imgs, train_labels, lay.classes, train_extras)
    test = _image_set(test_imgs, test_labels, lay.classes, test_extras) if test_imgs is not None else None
    return DataSplits(train, test, name, str(source), info)
