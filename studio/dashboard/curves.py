"""Curve buffers, smoothing and collapse rules (pure numpy) and the curve plots (pyqtgraph).

The pure part (``SeriesBuffer``, ``debiased_ema``, ``EmaState``, ``collapse_message``) uses no
Qt and is tested on its own; the widgets below only copy buffers into plot items on redraw.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

# ---------------------------------------------------------------------------- pure logic


class SeriesBuffer:
    """Append-only (step, value) series in growable numpy arrays (amortised O(1) append).

    A step smaller than the last one (a resumed run replaying from its checkpoint) drops the
    points at or after that step first, so the curve never folds back on itself.
    """

    __slots__ = ("_x", "_y", "n", "version", "truncated")

    def __init__(self, capacity: int = 256) -> None:
        self._x = np.empty(capacity, dtype=np.float64)
        self._y = np.empty(capacity, dtype=np.float64)
        self.n = 0
        self.version = 0  # bumps on every change (for redraw bookkeeping)
        self.truncated = False  # set when points were dropped (consumers recompute from scratch)

    def __len__(self) -> int:
        return self.n

    def append(self, x: float, y: float | None) -> None:
        n = self.n
        if n and x < self._x[n - 1]:
            n = int(np.searchsorted(self._x[:n], x, side="left"))
            self.truncated = True
        if n == len(self._x):
            cap = max(256, 2 * n)
            self._x = np.resize(self._x, cap)
            self._y = np.resize(self._y, cap)
        self._x[n] = x
        self._y[n] = math.nan if y is None else y
        self.n = n + 1
        self.version += 1

    def extend(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """Bulk append of points at or after the last step (no truncation check)."""
        k = len(xs)
        if not k:
            return
        need = self.n + k
        if need > len(self._x):
            cap = max(256, 2 * need)
            self._x = np.resize(self._x, cap)
            self._y = np.resize(self._y, cap)
        self._x[self.n:need] = xs
        self._y[self.n:need] = ys
        self.n = need
        self.version += 1

    @property
    def x(self) -> np.ndarray:
        return self._x[: self.n]

    @property
    def y(self) -> np.ndarray:
        return self._y[: self.n]

    def last(self) -> float | None:
        return float(self._y[self.n - 1]) if self.n else None


def debiased_ema(values: np.ndarray | list[float], alpha: float) -> np.ndarray:
    """TensorBoard's smoothing: s_t = a*s_{t-1} + (1-a)*x_t, s_0 = 0, shown as s_t / (1 - a^t).

    ``t`` counts the finite values seen so far; non-finite values give NaN and are skipped.
    """
    st = EmaState(alpha)
    return st.extend(np.asarray(values, dtype=np.float64))


class EmaState:
    """Incremental :func:`debiased_ema` (the dashboard smooths only the new points per redraw)."""

    __slots__ = ("alpha", "last", "count")

    def __init__(self, alpha: float) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.last = 0.0
        self.count = 0

    def extend(self, values: np.ndarray) -> np.ndarray:
        a = self.alpha
        out = np.empty(len(values), dtype=np.float64)
        last, count = self.last, self.count
        for i, v in enumerate(values.tolist()):
            if not math.isfinite(v):
                out[i] = math.nan
                continue
            last = a * last + (1.0 - a) * v
            count += 1
            out[i] = last / (1.0 - a ** count) if a > 0 else last
        self.last, self.count = last, count
        return out


# collapse thresholds (documented in the dashboard's tooltip)
STD_FRACTION = 0.2  # std of L2-normalised outputs below 0.2 / sqrt(d)
RANK_MIN = 2.0  # effective rank below 2 ...
RANK_MIN_DIMS = 8  # ... out of at least this many dimensions
ENTROPY_LOW = 0.05  # teacher entropy below 5 % of log K: one-hot collapse
ENTROPY_HIGH = 0.98  # teacher entropy above 98 % of log K ...
KL_ZERO = 1e-3  # ... with a teacher-student KL this close to 0: uniform collapse


def _finite(ind: Mapping[str, Any], key: str) -> float | None:
    v = ind.get(key)
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def collapse_message(indicators: Mapping[str, Any]) -> str | None:
    """A human message when the collapse indicators of one evaluation say collapse, else None.

    Rules (any one fires): ``std < 0.2 * std_ref`` (std_ref = 1/sqrt(d));
    ``rank_me < 2`` when the output has at least 8 dimensions (d from std_ref or ``dim``);
    ``teacher_entropy < 0.05 * entropy_ref`` (entropy_ref = log K); or
    ``teacher_entropy > 0.98 * entropy_ref`` with ``kl`` < 1e-3 (teacher uniform, student matches).
    Missing or non-finite indicators never fire a rule.
    """
    reasons: list[str] = []
    std, std_ref = _finite(indicators, "std"), _finite(indicators, "std_ref")
    if std is not None and std_ref is not None and std_ref > 0 and std < STD_FRACTION * std_ref:
        reasons.append(f"output std {std:.3g} < {STD_FRACTION:g} × 1/√d ({std_ref:.3g})")
    rank = _finite(indicators, "rank_me")
    if rank is not None and rank < RANK_MIN:
        dims = _finite(indicators, "dim")
        if dims is None and std_ref is not None and std_ref > 0:
            dims = 1.0 / (std_ref * std_ref)
        if dims is None or dims >= RANK_MIN_DIMS:
            of = f" of {dims:.0f} dims" if dims is not None else ""
            reasons.append(f"effective rank {rank:.2f}{of}")
    h, h_ref = _finite(indicators, "teacher_entropy"), _finite(indicators, "entropy_ref")
    if h is not None and h_ref is not None and h_ref > 0:
        kl = _finite(indicators, "kl")
        if h < ENTROPY_LOW * h_ref:
            reasons.append(f"teacher entropy {h:.3g} ≪ log K ({h_ref:.3g}): one-hot collapse")
        elif h > ENTROPY_HIGH * h_ref and kl is not None and abs(kl) < KL_ZERO:
            reasons.append(f"teacher entropy {h:.3g} ≈ log K ({h_ref:.3g}) with KL {kl:.2g} ≈ 0: uniform collapse")
    if not reasons:
        return None
    return "Collapse: " + "; ".join(reasons)


STICKY_GROW = 0.2  # an auto-range that must grow adds this fraction of the data span on that side
STICKY_KEEP = 0.5  # ... and is kept while the data fill at least this fraction of it


def sticky_range(lo: float, hi: float, current: tuple[float, float], padding: float = 0.02,
                 grow: float = STICKY_GROW, keep: float = STICKY_KEEP) -> tuple[float, float] | None:
    """The next auto-range of a live curve whose data span [lo, hi], or None to keep ``current``.

    A range fitted exactly to the data changes on every redraw of a growing curve, and each change
    makes pyqtgraph regenerate and repaint the axes, the larger part of a redraw (measured on 2 CPU
    cores: 50 ms a redraw of the training tab, 35 of them the axes). So the range is kept while it
    holds all the data and the data fill at least ``keep`` of it; when a side must grow it grows
    past the data by ``grow`` of the span, so a steadily growing curve changes its range about 12
    times per tenfold growth instead of every redraw. A side that did not overflow is fitted with
    the usual ``padding``."""
    span = hi - lo
    c0, c1 = current
    if c0 <= lo and hi <= c1 and span >= keep * (c1 - c0):
        return None
    if span <= 0:
        half = 0.5 * abs(lo) if lo else 0.5
        return lo - half, hi + half
    pad = padding * span
    new_lo = lo - pad - (grow * span if lo < c0 else 0.0)
    new_hi = hi + pad + (grow * span if hi > c1 else 0.0)
    return new_lo, new_hi


# ---------------------------------------------------------------------------- widgets

import pyqtgraph as pg  # noqa: E402
from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402

PALETTE = [  # matplotlib tab10
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]


def set_title(w: pg.PlotWidget, title: str) -> None:
    """The plot's title in the theme's text colour."""
    w.getPlotItem().setTitle(title, color="#ddd" if is_dark() else "#222", size="10pt")


class StickyViewBox(pg.ViewBox):
    """A ViewBox whose auto-range moves in steps (:func:`sticky_range`), not on every new point.

    Only the automatic range changes; zooming or panning by hand turns it off as usual and the
    "A" button turns it back on."""

    def updateAutoRange(self) -> None:  # noqa: N802 (pyqtgraph's name)
        if self._updatingRange:
            return
        auto = self.state["autoRange"]
        if not any(auto) or any(self.state["autoVisibleOnly"]) or any(self.state["autoPan"]):
            return super().updateAutoRange()  # the modes this class does not handle
        self._updatingRange = True
        try:
            bounds = self.childrenBounds()
            current = self.viewRange()
            args: dict[str, Any] = {}
            for ax, key in ((0, "xRange"), (1, "yRange")):
                b = bounds[ax]
                if auto[ax] is False or b is None or not all(math.isfinite(v) for v in b):
                    continue
                r = sticky_range(float(b[0]), float(b[1]), tuple(current[ax]), self.suggestPadding(ax))
                if r is not None:
                    args[key] = r
            if args:
                self.setRange(**args, padding=0.0, disableAutoRange=False)
        finally:
            self._autoRangeNeedsUpdate = False
            self._updatingRange = False


def make_plot(title: str, y_label: str = "", x_label: str = "step") -> pg.PlotWidget:
    dark = is_dark()
    w = pg.PlotWidget(background="#1f2023" if dark else "w", viewBox=StickyViewBox())
    w.setMinimumHeight(170)
    pi = w.getPlotItem()
    set_title(w, title)
    # horizontal grid only: in the raster paint engine the vertical grid lines cost as much
    # as the curves (measured: 95 -> 56 ms per redraw of the training tab)
    pi.showGrid(x=False, y=True, alpha=0.25)
    if x_label:
        pi.setLabel("bottom", x_label)
    if y_label:
        pi.setLabel("left", y_label)
    # plain tick values: pyqtgraph's SI scaling turned kNN top-1 0.15-0.20 into "150-200 (x0.001)"
    pi.getAxis("left").enableAutoSIPrefix(False)
    pi.setClipToView(True)
    pi.setDownsampling(auto=True, mode="peak")
    for ax in ("left", "bottom"):
        pi.getAxis(ax).setTextPen("#ccc" if dark else "#333")
        pi.getAxis(ax).setPen("#888")
        # axes are replayed from a QPicture on every repaint of the area they cover (the left axis
        # covers the plot: it draws the grid), and the replay lays the tick labels out anew:
        # about 3 ms an axis. A device-pixmap cache makes it a blit until the axis changes.
        pi.getAxis(ax).setCacheMode(QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache)
    return w


def is_dark() -> bool:
    """True when the application's palette is dark (the studio's theme follows the system)."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        return False
    return app.palette().color(QtGui.QPalette.ColorRole.Window).lightness() < 128


def pen(i: int, width: float = 1.0, alpha: int = 255, style=None) -> QtGui.QPen:
    """A palette pen. Width 1 (cosmetic) is the fast path; wider pens are stroked per segment."""
    r, g, b = PALETTE[i % len(PALETTE)]
    p = pg.mkPen((r, g, b, alpha), width=width)
    if style is not None:
        p.setStyle(style)
    return p


def ref_pen() -> QtGui.QPen:
    return pg.mkPen((90, 90, 90), width=1.2, style=QtCore.Qt.PenStyle.DashLine)


class SmoothedCurve:
    """A raw (faint) + debiased-EMA smoothed (bold) curve fed from a SeriesBuffer."""

    def __init__(self, plot: pg.PlotWidget, buf: SeriesBuffer, color: int, name: str | None = None,
                 width: float = 1.0) -> None:
        self.buf = buf
        self.raw = plot.plot(pen=pen(color, 1.0, 70))
        self.smooth = plot.plot(pen=pen(color, width), name=name)
        # about one point per pixel column (pyqtgraph's default keeps ~5): the raw curve keeps each
        # column's min and max, the smooth one needs no more; the bold smooth curve is stroked per
        # segment, so this is most of a long run's redraw (measured: 9 -> 2 ms at 12,000 steps)
        self.raw.setDownsampling(auto=True, method="peak")
        self.smooth.setDownsampling(auto=True, method="subsample")
        for item in (self.raw, self.smooth):
            item.opts["autoDownsampleFactor"] = 1.0
        self._alpha = 0.6
        self._state = EmaState(self._alpha)
        self._smoothed = SeriesBuffer()
        self._done = 0  # points of buf already smoothed
        self._seen_version = -1

    def set_alpha(self, alpha: float) -> None:
        if alpha != self._alpha:
            self._alpha = alpha
            self._reset()

    def _reset(self) -> None:
        self._state = EmaState(self._alpha)
        self._smoothed = SeriesBuffer(max(256, len(self.buf)))
        self._done = 0
        self._seen_version = -1

    def pending(self) -> bool:
        """New points not drawn yet."""
        return self.buf.version != self._seen_version

    def update(self) -> bool:
        """Copy new points into the plot items; True when something changed."""
        buf = self.buf
        if buf.version == self._seen_version:
            return False
        if buf.truncated:
            buf.truncated = False
            self._reset()
        x, y = buf.x, buf.y
        if self._done < len(x):
            self._smoothed.extend(x[self._done:], self._state.extend(y[self._done:]))
            self._done = len(x)
        self.raw.setData(x, y, connect="finite")
        self.smooth.setData(self._smoothed.x, self._smoothed.y, connect="finite")
        self._seen_version = buf.version
        return True

    def view_box(self) -> pg.ViewBox:
        return self.smooth.getViewBox()

    def smoothed(self) -> tuple[np.ndarray, np.ndarray]:
        return self._smoothed.x, self._smoothed.y
