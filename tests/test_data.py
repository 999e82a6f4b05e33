"""Data layer: shapes generator, folder / tar loading, cache, BatchStream."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import DataConfig
from engine.data import SHAPE_CLASSES, BatchStream, DataSplits, ImageSet, load_dataset, make_shapes
from engine.data import folder as folder_mod
from engine.errors import DataError


# ------------------------------------------------------------------ helpers
def _save(path: Path, img: Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def _rgb(colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _red(name: str) -> int:
    """The red level that marks class ``name`` in generated folders."""
    return sum(map(ord, name)) % 256


def _class_folder(root: Path, classes=("cat", "dog"), per_class: int = 4, size=(16, 16)) -> Path:
    """<root>/<class>/<i>.png, solid colours: red marks the class, green the file."""
    for name in classes:
        for i in range(per_class):
            _save(root / name / f"{i:03d}.png", _rgb((_red(name), 5 * i, 200), size))
    return root


def _tar(folder: Path, out: Path, arcname: str) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(folder, arcname=arcname)
    return out


def _cfg(source: Path | str, **kw) -> DataConfig:
    kw.setdefault("workers", 1)
    return DataConfig(source=str(source), **kw)


# ------------------------------------------------------------------- shapes
def test_shapes_deterministic_in_seed() -> None:
    a = make_shapes(96, size=32, seed=3)
    b = make_shapes(96, size=32, seed=3)
    c = make_shapes(96, size=32, seed=4)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    for k in ("depth", "seg"):
        assert torch.equal(a.extras[k], b.extras[k])
    assert not torch.equal(a.images, c.images)


def test_shapes_classes_labels_and_extras() -> None:
    n, s = 200, 32
    d = make_shapes(n, size=s, seed=0)
    assert len(SHAPE_CLASSES) >= 10 and d.classes == SHAPE_CLASSES[:10]
    assert d.images.dtype == torch.uint8 and d.images.shape == (n, 3, s, s)
    assert d.labels.dtype == torch.int64 and d.labels.shape == (n,)
    counts = torch.bincount(d.labels, minlength=10)
    assert counts.min() >= n // 10 and counts.max() <= n // 10 + 1  # balanced
    depth, seg = d.extras["depth"], d.extras["seg"]
    assert depth.dtype == torch.uint8 and depth.shape == (n, 1, s, s)
    assert seg.dtype == torch.uint8 and seg.shape == (n, s, s)
    for i in range(n):
        fg = seg[i][seg[i] > 0]
        assert fg.numel() >= 12, "the shape covers a visible part of the image"
        assert set(fg.unique().tolist()) == {int(d.labels[i]) + 1}
        # the shape floats in front of the background (brighter = nearer)
        assert depth[i, 0][seg[i] > 0].float().mean() > depth[i, 0][seg[i] == 0].float().mean()
    # textured, colourful backgrounds: not a constant colour per image
    assert d.images.float().std(dim=(2, 3)).mean() > 20


def test_shapes_sizes_and_more_classes() -> None:
    d = make_shapes(30, size=16, seed=1, n_classes=len(SHAPE_CLASSES))
    assert d.images.shape == (30, 3, 16, 16) and len(d.classes) == len(SHAPE_CLASSES)
    with pytest.raises(ValueError):
        make_shapes(10, size=8)


def test_load_dataset_shapes() -> None:
    cfg = DataConfig(source="shapes", shapes_train=40, shapes_test=20, shapes_size=24, seed=5)
    d = load_dataset(cfg)
    assert isinstance(d, DataSplits) and d.name == "shapes"
    assert len(d.train) == 40 and len(d.test) == 20 and d.image_size == 24
    assert d.test.extras["seg"].shape == (20, 24, 24)
    again = load_dataset(cfg)
    assert torch.equal(d.train.images, again.train.images)
    assert not torch.equal(d.train.images[:20], d.test.images)  # a different seed for the test split


# ------------------------------------------------------------------- folders
def test_class_folder_converts_every_mode(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _save(root / "a" / "rgb.png", _rgb((255, 0, 0)))
    _save(root / "a" / "photo.jpg", _rgb((0, 255, 0)), "JPEG")
    _save(root / "a" / "gray.png", Image.new("L", (16, 16), 100))
    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))  # left half fully transparent
    _save(root / "b" / "rgba.png", rgba)
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    _save(root / "b" / "palette.png", pal)
    _save(root / "b" / "deep.png", Image.fromarray(np.full((16, 16), 65535, np.uint16)))  # 16-bit gray
    (root / "b" / "notes.txt").write_text("not an image")

    d = load_dataset(_cfg(root, test_fraction=0.0))
    assert d.test is None and d.info["skipped"] == 0
    assert d.info["converted"] == 4  # gray, rgba, palette, 16-bit
    assert d.classes == ["a", "b"] and d.image_size == 16
    x = d.train.images
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 16, 16)
    names = ["gray", "photo", "rgb", "deep", "palette", "rgba"]  # sorted file order per class
    px = {n: x[i, :, 12, 12].tolist() for i, n in enumerate(names)}
    assert px["rgb"] == [255, 0, 0]
    assert px["gray"] == [100, 100, 100]
    assert px["deep"] == [255, 255, 255]
    assert px["palette"] == [10, 20, 30]
    assert px["rgba"] == [0, 0, 255] and x[5, :, 4, 4].tolist() == [255, 255, 255]  # on white
    assert d.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_mixed_sizes_resize_and_crop(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "sizes"
    for i in range(2):
        _save(root / "a" / f"{i}.png", _rgb((200, 0, 0), (40, 40)))
    for i in range(4):
        _save(root / "b" / f"{i}.png", _rgb((0, 200, 0), (24, 30)))
    monkeypatch.setattr(folder_mod, "PROBE_FILES", 2)  # the guess (40 px) misses: decoded again
    d = load_dataset(_cfg(root, test_fraction=0.0))
    assert d.image_size == 24 and d.train.images.shape == (6, 3, 24, 24)
    assert any("different sizes" in w for w in d.info["warnings"])
    d = load_dataset(_cfg(root, test_fraction=0.0, image_size=20))
    assert d.image_size == 20 and d.info["resized"] == 6
    assert d.train.images[0, :, 10, 10].tolist() == [200, 0, 0]


def test_flat_folder_is_unlabelled_and_held_out(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for i in range(20):
        _save(root / f"img{i:02d}.png", _rgb((i * 10, 0, 0)))
    cfg = _cfg(root, test_fraction=0.25, seed=1)
    d = load_dataset(cfg)
    assert d.train.labels is None and d.test.labels is None and d.classes == []
    assert len(d.train) == 15 and len(d.test) == 5 and d.name == "flat"
    again = load_dataset(cfg)
    assert torch.equal(d.test.images, again.test.images)  # deterministic hold-out
    other = load_dataset(_cfg(root, test_fraction=0.25, seed=2))
    assert not torch.equal(d.test.images, other.test.images)
    reds = sorted(d.train.images[:, 0, 0, 0].tolist() + d.test.images[:, 0, 0, 0].tolist())
    assert reds == [i * 10 for i in range(20)]  # a partition of the images


def test_tar_with_split_one_level_down(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _class_folder(src / "train", ("cat", "dog"), per_class=3)
    _class_folder(src / "val", ("dog", "cat", "eel"), per_class=2)  # eel: not in train
    tgz = _tar(src, tmp_path / "pets.tar.gz", arcname="pets")  # pets/train/cat/000.png ...
    d = load_dataset(_cfg(tgz))
    assert d.name == "pets" and d.info["split"] == "detected train/val"
    assert d.classes == ["cat", "dog"] and len(d.train) == 6 and len(d.test) == 4
    assert d.info["ignored"] == 2 and any("ignored" in w for w in d.info["warnings"])
    assert d.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # the same class index in test as in train
    for split in (d.train, d.test):
        reds = split.images[:, 0, 0, 0].tolist()
        assert reds == [_red(split.classes[c]) for c in split.labels.tolist()]


def test_folder_with_split_and_no_test_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _class_folder(root / "data" / "Train", ("x", "y"), per_class=5)
    _class_folder(root / "data" / "Test", ("x", "y"), per_class=2)
    d = load_dataset(_cfg(root))
    assert d.info["split"] == "detected Train/Test" and (len(d.train), len(d.test)) == (10, 4)
    root2 = tmp_path / "only_train"
    _class_folder(root2 / "train", ("x", "y"), per_class=5)
    d2 = load_dataset(_cfg(root2, test_fraction=0.2))
    assert (len(d2.train), len(d2.test)) == (8, 2) and "held out" in d2.info["split"]


def test_test_split_without_any_training_class_falls_back_to_a_hold_out(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _class_folder(root / "train", ("cat", "dog"), per_class=5)
    _class_folder(root / "test", ("Cat", "Dog"), per_class=2)  # names that match no training class
    d = load_dataset(_cfg(root, test_fraction=0.2))
    assert (len(d.train), len(d.test)) == (8, 2)  # evaluation stays on, from train
    assert "no test image is in a train class" in d.info["split"] and "held out 2" in d.info["split"]


def test_corrupt_images_are_skipped(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "c", per_class=3)
    (root / "cat" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    good = io.BytesIO()
    _rgb((1, 2, 3), (64, 64)).save(good, "PNG")
    (root / "dog" / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    d = load_dataset(_cfg(root, test_fraction=0.0))
    assert d.info["skipped"] == 2 and len(d.train) == 6
    assert any("unreadable" in w for w in d.info["warnings"])
    assert d.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_all_corrupt_raises(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be decoded"):
        load_dataset(_cfg(root))


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: _dir(p / "empty"), "is empty"),
        (lambda p: _file(p / "t" / "a.txt", b"x").parent, r"no images found .*looked for \.jpg, \.jpeg"),
        (lambda p: _file(p / "x.tar.gz", b"not a tar at all"), "cannot open archive"),
        (lambda p: _file(p / "x.zip", b"PK"), "not a folder or a .tar"),
    ],
    ids=["missing", "empty", "no-images", "bad-tar", "not-an-archive"],
)
def test_bad_sources_raise_one_clear_line(tmp_path: Path, make, match) -> None:
    with pytest.raises(DataError, match=match) as e:
        load_dataset(_cfg(make(tmp_path)))
    assert "\n" not in str(e.value)


def test_tar_without_images(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("hello")
    tgz = _tar(tmp_path / "d", tmp_path / "d.tgz", arcname="d")
    with pytest.raises(DataError, match="no images found in archive"):
        load_dataset(_cfg(tgz))


def test_truncated_tar_raises(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(40):  # incompressible content, so that half the archive is half the members
        noise = np.random.default_rng(i).integers(0, 255, (24, 24, 3), np.uint8)
        _save(src / "a" / f"{i}.png", Image.fromarray(noise))
    data = _tar(src, tmp_path / "full.tar.gz", arcname="x").read_bytes()
    cut = _file(tmp_path / "cut.tar.gz", data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(_cfg(cut))


def test_cache_reuses_without_decoding(tmp_path: Path, monkeypatch) -> None:
    root = _class_folder(tmp_path / "src", per_class=5)
    calls = []
    real = folder_mod._decode_chunk

    def counting(items, size):
        calls.append(len(items))
        return real(items, size)

    monkeypatch.setattr(folder_mod, "_decode_chunk", counting)
    cfg = _cfg(root, cache_dir=str(tmp_path / "cache"), test_fraction=0.2)
    first = load_dataset(cfg)
    assert calls and first.info["cached"] is False
    n_calls = len(calls)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(f.endswith("-train.npy") for f in files) and any(f.endswith("-test.npy") for f in files)
    assert not any(f.endswith(".tmp") for f in files)

    second = load_dataset(cfg)
    assert len(calls) == n_calls, "a cached load must not decode"
    assert second.info["cached"] is True
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.images, second.test.images)
    assert first.train.labels.tolist() == second.train.labels.tolist() and second.classes == ["cat", "dog"]
    assert Path(second.info["cache_file"]).is_file()
    # a changed source is a different key: decoded again
    os.utime(root / "cat" / "000.png", ns=(1, 1))
    load_dataset(cfg)
    assert len(calls) > n_calls


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "pool"])
def test_a_load_stops_between_chunks_when_asked_and_writes_no_cache(tmp_path: Path, monkeypatch, workers) -> None:
    """A closing window or a Stop ends a long decode at the next chunk (not after the whole
    dataset), with Cancelled, and leaves no cache behind that a later load would trust."""
    from engine.errors import Cancelled

    root = _class_folder(tmp_path / "big", ("a", "b"), per_class=12)
    monkeypatch.setattr(folder_mod, "SERIAL_MAX_FILES", 4)
    monkeypatch.setattr(folder_mod, "TASK_FILES", 3)
    decoded = []
    if workers == 1:  # serial chunks are 1024 files: make them small too; count what is decoded
        real, real_chunks = folder_mod._decode_chunk, folder_mod._chunks
        monkeypatch.setattr(folder_mod, "_chunks", lambda items, n, b: real_chunks(items, 3, b))
        monkeypatch.setattr(folder_mod, "_decode_chunk", lambda items, size: decoded.append(len(items)) or real(items, size))
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) > 2

    cfg = _cfg(root, workers=workers, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(Cancelled):
        load_dataset(cfg, should_stop=stop_after_two)
    assert len(asked) == 3  # asked once per chunk until it said stop
    if workers == 1:
        assert sum(decoded) == 3  # one chunk of 3 decoded, then stopped (of 24 files)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    full = load_dataset(cfg, should_stop=lambda: False)
    assert len(full.train) + len(full.test) == 24


def test_shapes_generation_stops_when_asked() -> None:
    from engine.data import make_shapes
    from engine.errors import Cancelled

    with pytest.raises(Cancelled):
        make_shapes(100_000, size=64, should_stop=lambda: True)
    assert len(make_shapes(20, size=16, should_stop=lambda: False)) == 20


@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar"])
def test_parallel_decoding_matches_serial(tmp_path: Path, monkeypatch, as_tar: bool) -> None:
    root = _class_folder(tmp_path / "par", ("a", "b", "c"), per_class=8)
    (root / "a" / "zz_broken.png").write_bytes(b"nope")
    src = _tar(root, tmp_path / "par.tar", arcname="par") if as_tar else root
    serial = load_dataset(_cfg(src, workers=1, test_fraction=0.0))
    monkeypatch.setattr(folder_mod, "SERIAL_MAX_FILES", 4)
    monkeypatch.setattr(folder_mod, "TASK_FILES", 5)
    par = load_dataset(_cfg(src, workers=2, test_fraction=0.0))
    assert par.info["workers"] == 2 and not any("failed" in w for w in par.info["warnings"])
    assert par.info["skipped"] == serial.info["skipped"] == 1
    assert torch.equal(par.train.images, serial.train.images)
    assert torch.equal(par.train.labels, serial.train.labels)


# ---------------------------------------------------------------- BatchStream
def _numbered(n: int) -> ImageSet:
    """Images whose pixel [0, 0, 0] is their index (n <= 256)."""
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageSet(x, torch.arange(n) % 3, ["a", "b", "c"], {"seg": x[:, 0].clone()})


def test_batch_stream_deterministic_and_resumable() -> None:
    data = _numbered(50)
    s = BatchStream(data, batch_size=8, seed=7)
    assert s.steps_per_epoch == 6  # drop_last: 48 of 50 images per epoch
    x, idx = s.batch(0, 2)
    assert x.shape == (8, 3, 4, 4) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0, 0, 0].long(), idx)  # the images of those indices
    x2, idx2 = s.batch(0, 2)
    assert torch.equal(x, x2) and torch.equal(idx, idx2)
    resumed = BatchStream(data, batch_size=8, seed=7)  # a fresh object, e.g. after a restart
    assert torch.equal(resumed.batch(0, 2)[1], idx)
    epoch = torch.cat([s.batch(0, i)[1] for i in range(s.steps_per_epoch)])
    assert len(epoch) == 48 and len(set(epoch.tolist())) == 48  # no repeats within an epoch
    assert not torch.equal(s.batch(1, 0)[1], s.batch(0, 0)[1])  # a new order per epoch
    assert not torch.equal(BatchStream(data, 8, seed=8).batch(0, 0)[1], s.batch(0, 0)[1])
    g = torch.Generator().manual_seed(7 * 1_000_003 + 3)
    assert torch.equal(s.batch(3, 1)[1], torch.randperm(50, generator=g)[8:16])
    ex = s.extras(idx)
    assert torch.equal(ex["seg"], data.extras["seg"][idx])
    assert torch.equal(s.labels_of(idx), data.labels[idx])
    with pytest.raises(IndexError):
        s.batch(0, 6)


def test_batch_stream_rejects_tiny_sets() -> None:
    with pytest.raises(DataError, match="batch"):
        BatchStream(_numbered(5), batch_size=8)


def test_batch_stream_on_cached_memmap(tmp_path: Path) -> None:
    """A cached (memory-mapped) folder set streams like any other."""
    root = _class_folder(tmp_path / "m", per_class=6)
    d = load_dataset(_cfg(root, cache_dir=str(tmp_path / "cache"), test_fraction=0.0))
    d = load_dataset(_cfg(root, cache_dir=str(tmp_path / "cache"), test_fraction=0.0))
    assert d.info["cached"]
    s = BatchStream(d.train, batch_size=4, seed=0, on_device=False)
    x, idx = s.batch(0, 0)
    assert torch.equal(x, d.train.images[idx])


# the cache key includes data.image_size: another size is decoded again, not served stale
def test_cache_key_includes_the_image_size(tmp_path) -> None:
    from engine.data import load_dataset

    root = _class_folder(tmp_path / "src", per_class=5)
    cache = str(tmp_path / "cache")
    a = load_dataset(_cfg(root, cache_dir=cache, image_size=16, test_fraction=0.0))
    b = load_dataset(_cfg(root, cache_dir=cache, image_size=24, test_fraction=0.0))
    assert tuple(a.train.images.shape[-2:]) == (16, 16)
    assert b.info["cached"] is False and tuple(b.train.images.shape[-2:]) == (24, 24)
    c = load_dataset(_cfg(root, cache_dir=cache, image_size=16, test_fraction=0.0))
    assert c.info["cached"] is True and torch.equal(c.train.images, a.train.images)


# the held-out count is test_fraction x images ROUNDED (8 x 0.2 = 1.6 -> 2), not truncated
def test_hold_out_count_is_rounded(tmp_path) -> None:
    from engine.data import load_dataset

    root = _class_folder(tmp_path / "src", per_class=4)  # 8 images
    d = load_dataset(_cfg(root, test_fraction=0.2, seed=1))
    assert len(d.test) == 2 and len(d.train) == 6
    assert "held out 2 of 8" in d.info["split"]


# 16-bit gray maps to 8 bits by / 257 (65535 -> 255, 257 v -> v), every level
def test_16bit_gray_maps_to_8bit_by_257(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from engine.data import load_dataset

    levels = np.array([0, 257 * 50, 257 * 128, 257 * 200, 257 * 254, 65535], np.uint16)
    arr = np.repeat(levels[None, :], 6, axis=0).repeat(1, axis=1)  # [6, 6]: one column per level
    _save(tmp_path / "src" / "a" / "deep.png", Image.fromarray(arr))
    d = load_dataset(_cfg(tmp_path / "src", test_fraction=0.0))
    assert d.train.images[0, 0, 0].tolist() == [0, 50, 128, 200, 254, 255]


# ------------------------------------------------------------ depth and segmentation maps
def _modal_folder(root: Path, n: int = 3, size=(24, 32)) -> Path:
    """rgb/ with class folders and train/test, depth/ (16-bit) and seg/ (class ids) beside it.
    Image i of class c: red = 40 c + 10 i; depth = 1000 (i + 1) everywhere; seg: left half 0, right half c + 1."""
    w, h = size
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            for i in range(n):
                _save(root / "rgb" / split / name / f"{i}.jpg", _rgb((40 * c + 10 * i, 0, 0), size))
                _save(root / "depth" / split / name / f"{i}.png",
                      Image.fromarray(np.full((h, w), 1000 * (i + 1), np.uint16)))
                seg = np.zeros((h, w), np.uint8)
                seg[:, w // 2:] = c + 1
                _save(root / "seg" / split / name / f"{i}.png", Image.fromarray(seg, "L"))
    return root


def test_a_folder_with_depth_and_seg_trees_gives_the_extras(tmp_path: Path) -> None:
    """Issue 5 pt 5: a folder dataset may provide depth and segmentation as parallel folders of
    files with the same names; they get the RGB image's geometry (short side, centre square)."""
    from engine.data.modalities import available_modalities

    root = _modal_folder(tmp_path / "d")
    assert available_modalities(str(root)) == {"depth", "seg"} and available_modalities(str(tmp_path)) == set()
    s = load_dataset(_cfg(root, image_size=16, cache_dir=str(tmp_path / "cache")))
    assert s.classes == ["cat", "dog"] and len(s.train) == 6 and len(s.test) == 6
    assert s.info["extras"] == ["depth", "seg"] and s.train.image_size == 16
    depth, seg = s.train.extras["depth"], s.train.extras["seg"]
    assert depth.shape == (6, 1, 16, 16) and depth.dtype == torch.uint8 and seg.shape == (6, 16, 16)
    for k in range(6):  # rows follow the images: the same file's maps
        c = int(s.train.labels[k])
        i = (_red_of(s.train.images[k]) - 40 * c) // 10
        assert int(depth[k].float().mean().round()) == round(1000 * (i + 1) / 257)  # 16-bit -> 8-bit
        # the 32 x 24 map is centre-cropped to 24 x 24 like the image: its right half is class c + 1
        assert set(seg[k, :, :7].unique().tolist()) == {0} and set(seg[k, :, 9:].unique().tolist()) == {c + 1}
    again = load_dataset(_cfg(root, image_size=16, cache_dir=str(tmp_path / "cache")))
    assert again.info["cached"] and torch.equal(again.test.extras["seg"], s.test.extras["seg"])
    # a missing map: a clear error naming the file, nothing half-loaded
    (root / "depth" / "train" / "dog" / "1.png").unlink()
    with pytest.raises(DataError, match=r"no depth map for rgb/train/dog/1.jpg"):
        load_dataset(_cfg(root, image_size=16))


def _red_of(img: torch.Tensor) -> int:
    return int(round(img[0].float().mean().item() / 10.0) * 10)
