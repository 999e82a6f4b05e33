"""Probe image views: MIM reconstructions (and any other image probe) and ViT attention maps.

Pure numpy helpers first (``attention_threshold``, ``to_rgb_uint8``, ``mosaic``,
``SnapshotHistory``); the widgets below only compose one RGB mosaic per snapshot and show it
in a single ImageItem (cheap to redraw, exportable like any plot).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# ---------------------------------------------------------------------------- pure logic

RECON_ORDER = ("original", "masked", "reconstruction", "pasted")
COLUMN_TITLES = {
    "original": "original",
    "masked": "masked",
    "reconstruction": "recon-\nstruction",
    "pasted": "recon. +\nvisible",
}


def attention_threshold(att: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask keeping the largest values holding ``fraction`` of each map's mass.

    As DINO's ``visualize_attention``: per map (the last two axes), sort the values descending,
    normalise their cumulative sum by the total and keep the values where it is <= fraction.
    ``att`` is [..., H, W]; negative values count as 0; an all-zero map keeps nothing.
    """
    a = np.asarray(att, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError("attention maps need at least 2 dims [..., H, W]")
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    flat = np.clip(a.reshape(-1, h * w), 0.0, None)
    order = np.argsort(-flat, axis=1, kind="stable")
    vals = np.take_along_axis(flat, order, axis=1)
    total = vals.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.where(total > 0, np.cumsum(vals, axis=1) / np.where(total > 0, total, 1.0), np.inf)
    keep_sorted = cum <= fraction + 1e-12
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return keep.reshape(*lead, h, w)


def resize_nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of [H, W, ...] to [h, w, ...]."""
    H, W = img.shape[:2]
    if (H, W) == (h, w):
        return img
    ys = (np.arange(h) * H // h).clip(0, H - 1)
    xs = (np.arange(w) * W // w).clip(0, W - 1)
    return img[ys][:, xs]


def to_rgb_uint8(a: np.ndarray) -> np.ndarray:
    """A batch to uint8 RGB [N, H, W, 3]: from [N, H, W, 3|4|1] or [N, H, W] (grey / float maps);
    a 2-D array is one map. Floats in [0, 1] scale by 255, other floats are min-max normalised
    per image."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"cannot show an array of shape {a.shape} as images")
    if a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        f = a.astype(np.float32)
        f = np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
        if f.size and f.min() >= 0.0 and f.max() <= 1.0:
            f = f * 255.0
        elif f.size:
            lo = f.min(axis=(1, 2, 3), keepdims=True)
            hi = f.max(axis=(1, 2, 3), keepdims=True)
            f = (f - lo) / np.maximum(hi - lo, 1e-12) * 255.0
        a = f.clip(0, 255).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a


def mosaic(columns: Sequence[np.ndarray], pad: int = 2, fill: int = 255) -> tuple[np.ndarray, int, int]:
    """Grid image: one column per uint8 [N, H, W, 3] batch, row i = image i of each batch.

    Batches of other sizes are resized (nearest) to the largest H, W; missing rows stay blank.
    Returns (RGB [rows*(h+pad)+pad, cols*(w+pad)+pad, 3], cell height, cell width).
    """
    if not columns:
        return np.full((1, 1, 3), fill, np.uint8), 1, 1
    h = max(c.shape[1] for c in columns)
    w = max(c.shape[2] for c in columns)
    n = max(c.shape[0] for c in columns)
    out = np.full((n * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), fill, np.uint8)
    for j, col in enumerate(columns):
        x0 = pad + j * (w + pad)
        for i in range(col.shape[0]):
            y0 = pad + i * (h + pad)
            out[y0:y0 + h, x0:x0 + w] = resize_nearest(col[i], h, w)
    return out, h, w


def column_order(keys: Sequence[str]) -> list[str]:
    """Reconstruction keys first in the canonical order, any extra (per-modality) keys after."""
    known = [k for k in RECON_ORDER if k in keys]
    return known + [k for k in keys if k not in RECON_ORDER]


_VIRIDIS: np.ndarray | None = None


def heat_rgb(maps: np.ndarray) -> np.ndarray:
    """Per-map max-normalised heat maps [N, H, W] -> uint8 RGB [N, H, W, 3] (viridis)."""
    global _VIRIDIS
    if _VIRIDIS is None:
        import pyqtgraph as pg

        _VIRIDIS = np.asarray(pg.colormap.get("viridis").getLookupTable(nPts=256, alpha=False), np.uint8)
    m = np.nan_to_num(np.asarray(maps, np.float32))
    m = np.clip(m, 0.0, None)
    mx = m.reshape(len(m), -1).max(axis=1).reshape(-1, 1, 1) if m.size else 1.0
    idx = (m / np.maximum(mx, 1e-12) * 255.0).astype(np.int32).clip(0, 255)
    return _VIRIDIS[idx]


def attention_columns(image: np.ndarray, attention: np.ndarray, fraction: float,
                      threshold_heads: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """Columns for the attention grid: image | one map per head | thresholded overlay.

    image: uint8 [N, H, W, 3]; attention: float [N, heads, h, w] (or [N, h, w]: one head).
    The overlay keeps ``fraction`` of the mass of the mean over heads (each head normalised to
    sum 1) at full brightness and darkens the rest; with ``threshold_heads`` each head column
    shows the image where that head keeps ``fraction`` of its mass instead of a heat map.
    """
    img = to_rgb_uint8(image)
    att = np.asarray(attention, np.float32)
    if att.ndim == 3:
        att = att[:, None]
    n, heads = min(len(img), len(att)), att.shape[1]
    img, att = img[:n], att[:n]
    H, W = img.shape[1:3]
    if att.shape[-2:] != (H, W):
        att = np.stack([np.stack([resize_nearest(att[i, k], H, W) for k in range(heads)]) for i in range(n)]) \
            if n else att.reshape(0, heads, H, W)
    cols = [img]
    titles = ["image"]
    for k in range(heads):
        if threshold_heads:
            m = attention_threshold(att[:, k], fraction)
            cols.append(_dim_outside(img, m))
        else:
            cols.append(heat_rgb(att[:, k]))
        titles.append(f"head {k}")
    sums = att.reshape(n, heads, -1).sum(axis=2).reshape(n, heads, 1, 1)
    mean = (att / np.maximum(sums, 1e-12)).mean(axis=1)
    cols.append(_dim_outside(img, attention_threshold(mean, fraction)))
    titles.append(f"{fraction:.0%}\nof mass")
    return cols, titles


def _dim_outside(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    dim = (img.astype(np.float32) * 0.22 + np.array([10.0, 10.0, 40.0], np.float32)).astype(np.uint8)
    return np.where(mask[..., None], img, dim)


@dataclass
class Snapshot:
    step: int
    images: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


class SnapshotHistory:
    """The last ``maxlen`` snapshots of one probe, with a cursor that follows the newest
    unless the user moved it back (then it stays on the same step)."""

    def __init__(self, maxlen: int = 50) -> None:
        self.items: deque[Snapshot] = deque(maxlen=maxlen)
        self.follow = True
        self.selected_step: int | None = None

    def __len__(self) -> int:
        return len(self.items)

    def add(self, snap: Snapshot) -> None:
        # a resumed run may repeat a step: replace instead of duplicating
        if self.items and self.items[-1].step >= snap.step:
            kept = [s for s in self.items if s.step < snap.step]
            self.items.clear()
            self.items.extend(kept)
        self.items.append(snap)
        if self.follow:
            self.selected_step = snap.step

    def index(self) -> int:
        if not self.items:
            return -1
        if self.follow or self.selected_step is None:
            return len(self.items) - 1
        for i, s in enumerate(self.items):
            if s.step >= self.selected_step:
                return i
        return len(self.items) - 1

    def select(self, i: int) -> None:
        if not self.items:
            return
        i = max(0, min(i, len(self.items) - 1))
        self.follow = i == len(self.items) - 1
        self.selected_step = self.items[i].step

    def current(self) -> Snapshot | None:
        i = self.index()
        return self.items[i] if i >= 0 else None


# ---------------------------------------------------------------------------- widgets

import pyqtgraph as pg  # noqa: E402
from PySide6 import QtCore, QtWidgets  # noqa: E402


class _MosaicView(QtWidgets.QWidget):
    """Title + one ImageItem mosaic with column headers + step slider."""

    changed = QtCore.Signal()

    def __init__(self, title: str, maxlen: int = 50, parent=None) -> None:
        super().__init__(parent)
        self.history = SnapshotHistory(maxlen)
        self.plot = pg.PlotWidget(background="w")
        pi = self.plot.getPlotItem()
        pi.hideAxis("left")
        pi.hideAxis("bottom")
        pi.setMenuEnabled(False)
        pi.setTitle(title, color="#222", size="10pt")
        vb = pi.getViewBox()
        vb.setAspectLocked(True)
        vb.invertY(True)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image_item)
        self._titles: list[pg.TextItem] = []
        self._title = title
        self.empty = QtWidgets.QLabel("no snapshot yet")
        self.empty.setStyleSheet("color: #777;")

        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._on_slider)
        self.step_label = QtWidgets.QLabel("step –")
        self.step_label.setMinimumWidth(150)
        self.controls = QtWidgets.QHBoxLayout()
        self.controls.addWidget(QtWidgets.QLabel("snapshot"))
        self.controls.addWidget(self.slider, 1)
        self.controls.addWidget(self.step_label)

        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.plot, 1)
        lay.addLayout(self.controls)
        self._dirty = False
        self._shown_key: Any = None
        self._shape: tuple[int, int] | None = None

    # -- data
    def add(self, step: int, images: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        self.history.add(Snapshot(step, images, dict(meta or {})))
        self._dirty = True

    def clear(self) -> None:
        self.history = SnapshotHistory(self.history.items.maxlen or 50)
        self.image_item.clear()
        for t in self._titles:
            self.plot.removeItem(t)
        self._titles = []
        self._shown_key = None
        self._shape = None
        self.slider.blockSignals(True)
        self.slider.setRange(0, 0)
        self.slider.blockSignals(False)
        self.slider.setEnabled(False)
        self.step_label.setText("step –")
        self._dirty = False

    def steps(self) -> list[int]:
        return [s.step for s in self.history.items]

    # -- redraw
    def _on_slider(self, v: int) -> None:
        self.history.select(v)
        self._dirty = True
        self.refresh()
        self.changed.emit()

    def refresh(self, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        self._dirty = False
        h = self.history
        n = len(h)
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, n - 1))
        self.slider.setValue(max(0, h.index()))
        self.slider.blockSignals(False)
        self.slider.setEnabled(n > 1)
        snap = h.current()
        if snap is None:
            return
        self.step_label.setText(f"step {snap.step}  ({h.index() + 1}/{n})")
        key = (id(snap), self._render_key())
        if key == self._shown_key and not force:
            return
        self._shown_key = key
        cols, titles = self.columns(snap)
        img, ch, cw = mosaic(cols)
        self.image_item.setImage(img, autoLevels=False, levels=(0, 255))
        self._set_titles(titles, ch, cw)
        if self._shape != img.shape[:2]:
            self._shape = img.shape[:2]
            self._fit()

    _HEADER_PX = 36  # two 8 pt title lines and their margins, in screen pixels

    def _fit(self) -> None:
        """Show the whole mosaic with room above it for the column titles. The titles are
        drawn in screen pixels while the mosaic scales with the widget, so the room (in image
        pixels) follows the view's height: a tall mosaic in a short view needs more of it."""
        if self._shape is None:
            return
        h, w = self._shape
        vb = self.plot.getPlotItem().getViewBox()
        view_px = max(float(vb.height()), 2.0 * self._HEADER_PX)
        header = max(12.0, self._HEADER_PX * h / (view_px - self._HEADER_PX))
        vb.setRange(xRange=(0, w), yRange=(-header, h), padding=0.02)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt)
        super().resizeEvent(event)
        self._fit()

    def _set_titles(self, titles: list[str], ch: int, cw: int) -> None:
        pad = 2
        if [t.toPlainText() for t in self._titles] == titles:
            return
        for t in self._titles:
            self.plot.removeItem(t)
        self._titles = []
        for j, text in enumerate(titles):
            t = pg.TextItem(text, color="#222", anchor=(0.5, 1.0))
            font = t.textItem.font()
            font.setPointSizeF(8.0)  # tiles of 32 px images are narrow: two short lines each
            t.setFont(font)
            t.setPos(pad + j * (cw + pad) + cw / 2, 0)
            self.plot.addItem(t)
            self._titles.append(t)

    def _render_key(self) -> Any:
        return None

    def columns(self, snap: Snapshot) -> tuple[list[np.ndarray], list[str]]:  # pragma: no cover
        raise NotImplementedError


class ProbeGridView(_MosaicView):
    """Any image probe: one row per image, one column per key of ``images``.

    For reconstructions: original | masked | reconstruction | reconstruction + visible, then
    any extra keys (e.g. MultiMAE modalities) as extra columns."""

    def columns(self, snap: Snapshot) -> tuple[list[np.ndarray], list[str]]:
        cols, titles = [], []
        for k in column_order(list(snap.images)):
            try:
                cols.append(to_rgb_uint8(snap.images[k]))
            except ValueError:
                continue
            titles.append(COLUMN_TITLES.get(k, k))
        return cols, titles


class AttentionView(_MosaicView):
    """ViT attention: image | one map per head | thresholded overlay, mass-fraction slider."""

    def __init__(self, title: str = "Attention maps", maxlen: int = 50, parent=None) -> None:
        super().__init__(title, maxlen, parent)
        self.fraction = 0.6
        self.frac_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.frac_slider.setRange(5, 100)
        self.frac_slider.setValue(60)
        self.frac_slider.setMaximumWidth(180)
        self.frac_slider.setToolTip("keep the most attended pixels holding this fraction of the attention mass")
        self.frac_label = QtWidgets.QLabel("mass 0.60")
        self.heads_box = QtWidgets.QCheckBox("threshold heads")
        self.heads_box.setToolTip("show each head thresholded over the image instead of its heat map")
        self.frac_slider.valueChanged.connect(self._on_fraction)
        self.heads_box.toggled.connect(lambda _=False: self.refresh(force=True))
        self.controls.addSpacing(12)
        self.controls.addWidget(self.frac_label)
        self.controls.addWidget(self.frac_slider)
        self.controls.addWidget(self.heads_box)

    def set_fraction(self, fraction: float) -> None:
        self.frac_slider.setValue(int(round(fraction * 100)))

    def _on_fraction(self, v: int) -> None:
        self.fraction = v / 100.0
        self.frac_label.setText(f"mass {self.fraction:.2f}")
        self.refresh(force=True)

    def _render_key(self) -> Any:
        return (self.fraction, self.heads_box.isChecked())

    def columns(self, snap: Snapshot) -> tuple[list[np.ndarray], list[str]]:
        image = snap.images.get("image")
        att = snap.images.get("attention")
        if att is None:
            return ProbeGridView.columns(self, snap)  # type: ignore[arg-type]
        att = np.asarray(att)
        if image is None:
            n, h, w = att.shape[0], att.shape[-2], att.shape[-1]
            image = np.full((n, h, w, 3), 128, np.uint8)
        return attention_columns(image, att, self.fraction, self.heads_box.isChecked())
