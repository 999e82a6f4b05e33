"""The run dashboard: curves, collapse indicators, kNN, probe images and the embedding.

It consumes only the engine's typed events (``handle_events``, on the GUI thread, in batches)
and run folders (``load_run`` / ``set_overlay_runs``). Per event it only appends numbers to
numpy buffers or stores a snapshot reference; all drawing happens in one QTimer-coalesced
redraw at most every ``REDRAW_MS`` (200 ms), and only for the visible tab.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Signal

from engine import events as ev

from .. import theme
from .curves import (
    PALETTE, SeriesBuffer, SmoothedCurve, collapse_message, debiased_ema, make_plot, pen, ref_pen, set_title,
)
from .embedding import EmbeddingView
from .images import AttentionView, ProbeGridView
from .snapshots import replay_events

__all__ = ["Dashboard"]


# indicator keys drawn by the fixed plots; any other indicator gets its own plot
_KNOWN_INDICATORS = ("std", "std_ref", "rank_me", "dim", "alignment", "uniformity", "teacher_entropy",
                     "entropy_ref", "kl")
_COLLAPSE_HELP = (
    "Collapse rules: std of L2-normalised outputs < 0.2 × 1/√d; effective rank (RankMe) < 2 "
    "out of ≥ 8 dims; teacher entropy < 5 % of log K, or > 98 % of log K with KL ≈ 0."
)


class _Line:
    """A plot item mirrored from a SeriesBuffer (setData only when the buffer changed)."""

    __slots__ = ("item", "buf", "seen")

    def __init__(self, item: pg.PlotDataItem, buf: SeriesBuffer) -> None:
        self.item, self.buf, self.seen = item, buf, -1

    def pending(self) -> bool:
        return self.buf.version != self.seen

    def update(self) -> bool:
        if self.buf.version == self.seen:
            return False
        self.seen = self.buf.version
        self.item.setData(self.buf.x, self.buf.y, connect="finite")
        return True

    def view_box(self) -> pg.ViewBox:
        return self.item.getViewBox()


FLAT_REL = 1e-6  # a series varying less than this (relative to its size) is drawn as flat
TERM_PLOT_HEIGHT = 170  # px: a per-term plot (make_plot's minimum), its grid row reserved at once


def _fit_flat(vb: pg.ViewBox | None) -> None:
    """Give a view box whose curves are (nearly) constant a y range of +-50 % around the value,
    instead of pyqtgraph's auto-range, which draws an exactly constant series +-0.5 around it (a
    weight decay of 1e-4 read 'between -400 and 400 x 0.001') and zooms into rounding noise
    (a smoothed constant teacher temperature had ticks 0.0399999999999999 ... 0.0400000000000001).
    Runs once per redraw per view box, over all its curves (a flat reference line beside a
    varying curve is not flat); a range the user zoomed to by hand is left alone."""
    if vb is None:
        return
    bounds = vb.childrenBounds()[1]
    if bounds is None or not all(math.isfinite(b) for b in bounds):
        return
    lo, hi = float(bounds[0]), float(bounds[1])
    ours = getattr(vb, "_flat_fit", False)
    if hi - lo <= FLAT_REL * max(abs(lo), abs(hi), 1e-30):
        if ours or vb.autoRangeEnabled()[1]:
            mid = 0.5 * (lo + hi)
            half = abs(mid) * 0.5 if mid != 0 else 1.0
            vb.setYRange(mid - half, mid + half, padding=0)  # (turns the y auto-range off)
            vb._flat_fit = True
    elif ours:  # no longer flat: back to auto-range
        vb._flat_fit = False
        vb.enableAutoRange(axis="y")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_knn(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.1%}" if v <= 1.0 else f"{v:.1f}%"


class Dashboard(QtWidgets.QWidget):
    """Live (or reopened) view of one run, plus an overlay of several runs."""

    collapse_warning = Signal(str)

    REDRAW_MS = 200

    def __init__(self, parent: QtWidgets.QWidget | None = None, max_snapshots: int = 50) -> None:
        super().__init__(parent)
        self.max_snapshots = max_snapshots
        self.redraw_count = 0
        self.events_handled = 0
        self.plots: dict[str, pg.PlotWidget] = {}
        self._curve_plots: list[str] = []  # plots that get live-change markers
        self._alpha = 0.6

        self._timer = QtCore.QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.REDRAW_MS)
        self._timer.timeout.connect(self._redraw)

        self._overlays: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._build_ui()
        self._reset_state()
        self._relayout_eval()

    # ------------------------------------------------------------------ UI construction
    def _build_ui(self) -> None:
        self.status_label = QtWidgets.QLabel("no run")
        self.status_label.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.badge = QtWidgets.QLabel("")
        self.badge.setObjectName("collapseBadge")
        self.badge.setStyleSheet(
            "QLabel#collapseBadge { background: #c62828; color: white; font-weight: bold;"
            " padding: 4px 10px; border-radius: 4px; }")
        self.badge.setWordWrap(True)
        self.badge.setToolTip(_COLLAPSE_HELP)
        self.badge.hide()

        self.tabs = QtWidgets.QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.currentChanged.connect(lambda _i: self._schedule())

        # --- training
        train = QtWidgets.QWidget()
        self._train_page = train
        tg = QtWidgets.QGridLayout(train)
        tg.setContentsMargins(4, 4, 4, 4)
        self.loss_plot = self._add_plot("loss", make_plot("Loss (raw + smoothed)", "loss"), curve=True)
        self.loss_plot.setMinimumHeight(240)
        tg.addWidget(self.loss_plot, 0, 0, 1, 3)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("smoothing"))
        self.smoothing_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.smoothing_slider.setRange(0, 99)
        self.smoothing_slider.setValue(int(round(self._alpha * 100)))
        self.smoothing_slider.setToolTip("debiased exponential moving average (as TensorBoard)")
        self.smoothing_slider.setMaximumWidth(260)
        self.smoothing_label = QtWidgets.QLabel(f"{self._alpha:.2f}")
        self.smoothing_slider.valueChanged.connect(self._on_smoothing)
        row.addWidget(self.smoothing_slider)
        row.addWidget(self.smoothing_label)
        row.addStretch(1)
        tg.addLayout(row, 1, 0, 1, 3)
        self.lr_plot = self._add_plot("lr", make_plot("Learning rate", "lr"), curve=True)
        self.wd_plot = self._add_plot("weight_decay", make_plot("Weight decay", "wd"), curve=True)
        self.thr_plot = self._add_plot("throughput", make_plot("Throughput", "images/s"), curve=True)
        tg.addWidget(self.lr_plot, 2, 0)
        tg.addWidget(self.wd_plot, 2, 1)
        tg.addWidget(self.thr_plot, 2, 2)
        self.terms_title = QtWidgets.QLabel("<b>Loss terms and method scalars</b>")
        self.terms_title.hide()
        tg.addWidget(self.terms_title, 3, 0, 1, 3)
        self.terms_grid = QtWidgets.QGridLayout()
        tg.addLayout(self.terms_grid, 4, 0, 1, 3)
        tg.setRowStretch(5, 1)
        train_scroll = self._scroll(train)
        # the scroll bar always shown: appearing when the per-term plots open rows below, it
        # narrowed every plot of the tab, which then all resized and painted a second time
        train_scroll.setVerticalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.tabs.addTab(train_scroll, "Training")

        # --- evaluation
        evw = QtWidgets.QWidget()
        eg = QtWidgets.QVBoxLayout(evw)
        eg.setContentsMargins(4, 4, 4, 4)
        self.eval_hint = QtWidgets.QLabel(
            "kNN accuracy and the collapse indicators appear with the first evaluation.  " + _COLLAPSE_HELP)
        self.eval_hint.setWordWrap(True)
        self.eval_hint.setStyleSheet(f"color: {theme.pick(theme.MUTED_COLOR).name()};")
        eg.addWidget(self.eval_hint)
        self.eval_grid = QtWidgets.QGridLayout()
        eg.addLayout(self.eval_grid)
        eg.addStretch(1)
        self.knn_plot = self._add_plot("knn", make_plot("kNN top-1", "top-1"), curve=True)
        self.std_plot = self._add_plot("std", make_plot("Std of L2-normalised outputs (dashed: 1/√d)", "std"), curve=True)
        self.rank_plot = self._add_plot("rank_me", make_plot("Effective rank (RankMe; dashed: min(batch, d))", "rank"), curve=True)
        self.au_plot = self._add_plot("alignment_uniformity", make_plot("Alignment / uniformity", ""), curve=True)
        self.au_plot.getPlotItem().addLegend(offset=(-10, 10))
        self.ent_plot = self._add_plot("teacher_entropy", make_plot("Teacher entropy (dashed: log K)", "nats"), curve=True)
        self.kl_plot = self._add_plot("kl", make_plot("KL teacher ‖ student", "nats"), curve=True)
        self._eval_fixed = [self.knn_plot, self.std_plot, self.rank_plot, self.au_plot, self.ent_plot, self.kl_plot]
        self.tabs.addTab(self._scroll(evw), "Evaluation")

        # --- embedding
        self.embedding_view = EmbeddingView()
        self.plots["embedding"] = self.embedding_view.plot
        self.tabs.addTab(self.embedding_view, "Embedding")

        # --- probes
        self.recon_view = ProbeGridView("Reconstructions", self.max_snapshots)
        self.plots["reconstruction"] = self.recon_view.plot
        self.attention_view = AttentionView("Attention maps", self.max_snapshots)
        self.plots["attention"] = self.attention_view.plot
        self.tabs.addTab(self.recon_view, "Reconstructions")
        self.tabs.addTab(self.attention_view, "Attention")
        self.probe_views: dict[str, ProbeGridView | AttentionView] = {
            "reconstruction": self.recon_view, "attention": self.attention_view}

        # --- compare
        cmp = QtWidgets.QWidget()
        cl = QtWidgets.QHBoxLayout(cmp)
        cl.setContentsMargins(4, 4, 4, 4)
        self.cmp_loss_plot = self._add_plot("compare_loss", make_plot("Loss (smoothed), by run", "loss"))
        self.cmp_knn_plot = self._add_plot("compare_knn", make_plot("kNN top-1, by run", "top-1"))
        for p in (self.cmp_loss_plot, self.cmp_knn_plot):
            p.getPlotItem().addLegend(offset=(-10, 10))
            cl.addWidget(p)
        self._compare_page = cmp
        self.tabs.addTab(cmp, "Compare")

        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.status_label, 1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(self.badge)
        lay.addWidget(self.tabs, 1)

        # fixed lines (their buffers are re-bound in _reset_state)
        self._loss_curve: SmoothedCurve | None = None

    @staticmethod
    def _scroll(w: QtWidgets.QWidget) -> QtWidgets.QScrollArea:
        s = QtWidgets.QScrollArea()
        s.setWidgetResizable(True)
        s.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        s.setWidget(w)
        return s

    def _add_plot(self, name: str, w: pg.PlotWidget, curve: bool = False) -> pg.PlotWidget:
        self.plots[name] = w
        if curve:
            self._curve_plots.append(name)
        return w

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        self._run_dir: str | None = None
        self._run_name = ""
        self._method = ""
        self._total_steps: int | None = None
        self._step = 0
        self._status = ""
        self._message = ""
        self._last_knn: float | None = None
        self._knn_title: str | None = None  # set by the run's first evaluation
        self._collapse_msg: str | None = None
        self._collapse_emitted = False
        self._markers: list[tuple[int, str]] = []
        self._marker_items: dict[str, list[pg.InfiniteLine]] = {}

        self.buffers: dict[str, SeriesBuffer] = {
            k: SeriesBuffer() for k in ("loss", "lr", "weight_decay", "images_per_s", "knn_top1")}
        self.scalar_buffers: dict[str, SeriesBuffer] = {}
        self.indicator_buffers: dict[str, SeriesBuffer] = {}

        # lines, by redraw group
        for name in ("loss", "lr", "weight_decay", "throughput", "knn", "std", "rank_me",
                     "alignment_uniformity", "teacher_entropy", "kl"):
            pi = self.plots[name].getPlotItem()
            for item in list(pi.listDataItems()):
                pi.removeItem(item)
            if pi.legend is not None:
                pi.legend.clear()
        self._loss_curve = SmoothedCurve(self.loss_plot, self.buffers["loss"], 0, "loss", width=2.0)
        self._loss_curve.set_alpha(self._alpha)
        self._smoothed: list[SmoothedCurve] = [self._loss_curve]
        self._train_lines: list[_Line] = [
            _Line(self.lr_plot.plot(pen=pen(1)), self.buffers["lr"]),
            _Line(self.wd_plot.plot(pen=pen(4)), self.buffers["weight_decay"]),
            _Line(self.thr_plot.plot(pen=pen(2)), self.buffers["images_per_s"]),
        ]
        self._eval_lines: list[_Line] = [
            _Line(self.knn_plot.plot(pen=pen(3), symbol="o", symbolSize=5, symbolBrush=PALETTE[3]),
                  self.buffers["knn_top1"]),
        ]
        self._ind_line_keys: set[str] = set()
        self._base_painted = False  # the run's first curves painted: new plots wait for the next redraw
        # snapshots of probes whose tab does not exist yet: made in a redraw, one tab per redraw
        self._pending_probes: dict[str, list[ev.VisualProbe]] = {}
        self._scalar_plot_order: list[str] = []
        self._indicator_plot_order: list[str] = []

    def clear(self) -> None:
        """Forget the current run (curves, markers, snapshots, badge). Overlays stay."""
        self._timer.stop()
        for name in list(self.plots):
            if name.startswith("scalar/") or name.startswith("indicator/"):
                w = self.plots.pop(name)
                if name in self._curve_plots:
                    self._curve_plots.remove(name)
                w.setParent(None)
                w.deleteLater()
        for name, lines in getattr(self, "_marker_items", {}).items():
            w = self.plots.get(name)
            if w is not None:
                for ln in lines:
                    w.removeItem(ln)
        for name, view in list(self.probe_views.items()):
            view.clear()
            if name not in ("reconstruction", "attention"):
                idx = self.tabs.indexOf(view)
                if idx >= 0:
                    self.tabs.removeTab(idx)
                self.plots.pop(f"probe/{name}", None)
                del self.probe_views[name]
                view.setParent(None)
                view.deleteLater()
        self.embedding_view.clear()
        self.badge.hide()
        self.badge.setText("")
        self.terms_title.hide()
        for r in range(self.terms_grid.rowCount()):
            self.terms_grid.setRowMinimumHeight(r, 0)
        self._reset_state()
        self._relayout_eval()
        self.status_label.setText("no run")

    # ------------------------------------------------------------------ events (cheap)
    def handle_events(self, events: list[ev.Event]) -> None:
        """Append the events' numbers to buffers; one redraw is scheduled (≤ 5 per second)."""
        for e in events:
            self._handle(e)
        self.events_handled += len(events)
        self._schedule()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.StepMetrics):
            s = e.step
            b = self.buffers
            b["loss"].append(s, e.loss)
            b["lr"].append(s, e.lr)
            b["weight_decay"].append(s, e.weight_decay)
            b["images_per_s"].append(s, e.images_per_s)
            for k, v in e.scalars.items():
                buf = self.scalar_buffers.get(k)
                if buf is None:
                    buf = self.scalar_buffers[k] = SeriesBuffer()
                buf.append(s, _to_float(v))
            self._step = s
        elif isinstance(e, ev.Evaluation):
            self._on_eval(e)
        elif isinstance(e, ev.VisualProbe):
            self._on_probe(e)
        elif isinstance(e, ev.LiveChange):
            self._markers.append((e.step, f"{e.key}={_fmt(e.new)}"))
            self._message = f"step {e.step}: {e.key} {_fmt(e.old)} → {_fmt(e.new)}"
        elif isinstance(e, ev.RunStarted):
            if self._run_dir is not None and not _same_dir(e.run_dir, self._run_dir):
                self.clear()
            self._run_dir = e.run_dir
            self._run_name = Path(e.run_dir).name
            self._method = e.method
            self._total_steps = e.total_steps
            self._step = e.step
            self._status = "resumed" if e.resumed else "running"
            self._message = f"device {e.device}"
            self.embedding_view.set_class_names(e.class_names)
        elif isinstance(e, ev.StatusChanged):
            self._status = e.status
        elif isinstance(e, ev.Finished):
            self._status = e.status
            self._step = max(self._step, e.step)
            self._message = f"finished in {e.seconds:.0f} s"
        elif isinstance(e, ev.RunWarning):
            self._message = f"⚠ {e.message}"
        elif isinstance(e, ev.Error):
            self._message = f"✖ {e.error_type}: {e.message}"
        elif isinstance(e, ev.EpochEnd):
            pass
        elif isinstance(e, ev.CheckpointSaved):
            pass

    def _on_eval(self, e: ev.Evaluation) -> None:
        s = e.step
        if e.knn_top1 is not None:
            self.buffers["knn_top1"].append(s, float(e.knn_top1))
            title = "kNN top-1 (standardised features)" if e.knn_standardized else "kNN top-1"
            if title != self._knn_title:  # once per run: the protocol is fixed by the config
                self._knn_title = title
                set_title(self.knn_plot, title)
            self._last_knn = float(e.knn_top1)
        for k, v in e.indicators.items():
            buf = self.indicator_buffers.get(k)
            if buf is None:
                buf = self.indicator_buffers[k] = SeriesBuffer()
            buf.append(s, _to_float(v))
        if e.embedding is not None:
            self.embedding_view.set_embedding(s, e.embedding, e.labels)
        if e.indicators:
            msg = collapse_message(e.indicators)
            self._collapse_msg = None if msg is None else f"step {s}: {msg}"
            if msg is not None and not self._collapse_emitted:
                self._collapse_emitted = True
                self.collapse_warning.emit(self._collapse_msg)

    def _on_probe(self, e: ev.VisualProbe) -> None:
        images = e.images
        if not images:  # a probe row replayed from metrics.jsonl: no images there
            return
        if e.probe == "embedding" and "embedding" in images:  # persisted embedding (see snapshots)
            self.embedding_view.set_embedding(e.step, images["embedding"], images.get("labels"))
            return
        view = self.probe_views.get(e.probe)
        if view is None:
            # a new tab (a plot widget of its own) is made in a redraw, one per redraw: MultiMAE's
            # four probes arriving together stalled the GUI thread for 230 ms in one handle_events
            self._pending_probes.setdefault(e.probe, []).append(e)
            self._schedule()
            return
        view.add(e.step, images, e.meta)

    def _create_new_probe_views(self, all_at_once: bool = False) -> None:
        for name in list(self._pending_probes)[: None if all_at_once else 1]:
            events = self._pending_probes.pop(name)
            if "attention" in events[0].images:
                view = AttentionView(f"Attention: {name}", self.max_snapshots)
            else:
                view = ProbeGridView(f"Probe: {name}", self.max_snapshots)
            self.probe_views[name] = view
            self.plots[f"probe/{name}"] = view.plot
            self.tabs.insertTab(self.tabs.indexOf(self.attention_view) + 1, view, name.replace("_", " ").title())
            for e in events:
                view.add(e.step, e.images, e.meta)
        if self._pending_probes:
            self._schedule()

    # ------------------------------------------------------------------ redraw (timer)
    def flush(self) -> None:
        """Redraw everything now (all tabs), e.g. before exporting or in tests."""
        self._timer.stop()
        self._redraw(all_tabs=True)

    def _redraw(self, all_tabs: bool = False) -> None:
        self.redraw_count += 1
        current = self.tabs.currentWidget()
        if all_tabs:
            self._create_term_plots(all_at_once=True)
            self._create_new_probe_views(all_at_once=True)
        elif self._create_one_widget():
            # a redraw that made a widget (about 10 ms of pyqtgraph construction, more on loaded
            # cores, then its first paint) does nothing else: the curves are updated on the next
            # tick. A MultiMAE run's longest GUI stall on two busy cores (103 ms, sampled with
            # bench/studio_responsiveness.py --trace) held both; apart: 52-74 ms in nine runs
            self._schedule()
            return
        self._add_indicator_lines()
        changed: list[Any] = []
        # the main loss curve every redraw; the small plots in two alternating halves, so one
        # redraw paints about half of the tab (they are still refreshed 2.5 times a second)
        odd = self.redraw_count % 2
        if all_tabs or current is self.tabs.widget(0):
            small = self._smoothed[1:] + self._train_lines
            changed += [c for c in self._smoothed[:1] if c.update()]
            changed += [c for i, c in enumerate(small) if (all_tabs or i % 2 == odd) and c.update()]
            if not all_tabs and any(c.pending() for c in small):
                self._schedule()  # the other half has news too: paint it on the next tick
        if all_tabs or current is self.tabs.widget(1):
            changed += [ln for ln in self._eval_lines if ln.update()]
        if getattr(self, "_overlays_dirty", False) and (all_tabs or current is self._compare_page):
            self._overlays_dirty = False
            self._draw_overlays()
        if all_tabs or current is self.embedding_view:
            self.embedding_view.refresh()
        for view in self.probe_views.values():
            if all_tabs or current is view:
                view.refresh()
        self._update_markers()
        self._update_status()
        # settle the auto-range now: done inside the paint, it changes the range (axes, grid)
        # and schedules a second paint of every plot (measured: 17 -> 9 paints per redraw)
        seen: set[int] = set()
        for obj in changed:
            vb = obj.view_box()
            if vb is not None and id(vb) not in seen:
                seen.add(id(vb))
                _fit_flat(vb)
                vb.prepareForPaint()

    def _create_one_widget(self) -> bool:
        """Make at most one pending widget (a per-term plot, else a probe tab); True if made."""
        if any(f"scalar/{k}" not in self.plots for k in self.scalar_buffers):
            if not self._base_painted:
                # the run's first redraw paints the main curves for the first time (the costliest
                # paint of each); the new plots come from the next redraw on, in their own ticks
                self._base_painted = True
                self._schedule()
                return False
            self._create_term_plots()
            return True
        if self._pending_probes:
            self._create_new_probe_views()
            return True
        return False

    def _create_term_plots(self, all_at_once: bool = False) -> None:
        """Per-term scalars (any key): a small plot each (raw + smoothed); one per call unless
        ``all_at_once`` (created together, five plots' first paints stalled the GUI for 450-570 ms
        at a DINO run's start)."""
        new_terms = [k for k in self.scalar_buffers if f"scalar/{k}" not in self.plots]
        if new_terms:
            # the grid's final shape at once (equal columns, rows of a plot's height): the plots
            # then fill reserved cells one by one instead of re-laying out (and repainting) the
            # whole tab each time a plot widens the columns or opens a row
            rows = -(-(len(self._scalar_plot_order) + len(new_terms)) // 3)
            for c in range(3):
                self.terms_grid.setColumnStretch(c, 1)
            for r in range(rows):
                self.terms_grid.setRowMinimumHeight(r, TERM_PLOT_HEIGHT)
            self.terms_title.show()
        if len(new_terms) > 1 and not all_at_once:
            new_terms = new_terms[:1]
            self._schedule()
        for k in new_terms:
            w = self._add_plot(f"scalar/{k}", make_plot(k, ""), curve=True)
            w.setMinimumHeight(TERM_PLOT_HEIGHT)
            i = len(self._scalar_plot_order)
            self._scalar_plot_order.append(k)
            c = SmoothedCurve(w, self.scalar_buffers[k], (i + 1) % len(PALETTE), k)
            c.set_alpha(self._alpha)
            self._smoothed.append(c)
            self.terms_grid.addWidget(w, i // 3, i % 3)
            w.show()  # now, not by Qt's queued show: a layout ignores a hidden widget
        if new_terms:
            # settle the geometry now (the tab's layout, then the scroll area's size of it): left
            # to the posted layout request, it arrived after the first paint, and every plot of
            # the tab was resized and painted a second time
            QtCore.QCoreApplication.sendEvent(self._train_page, QtCore.QEvent(QtCore.QEvent.Type.LayoutRequest))

    def _add_indicator_lines(self) -> None:
        """Collapse indicators: a line in a fixed plot for the known ones, a plot per unknown key."""
        relayout = False
        for k, buf in self.indicator_buffers.items():
            if k in self._ind_line_keys:
                continue
            self._ind_line_keys.add(k)
            relayout = True
            if k == "std":
                self._eval_lines.append(_Line(self.std_plot.plot(pen=pen(0), symbol="o", symbolSize=4,
                                                                  symbolBrush=PALETTE[0]), buf))
            elif k == "std_ref":
                self._eval_lines.append(_Line(self.std_plot.plot(pen=ref_pen()), buf))
            elif k == "rank_me":
                self._eval_lines.append(_Line(self.rank_plot.plot(pen=pen(4), symbol="o", symbolSize=4,
                                                                   symbolBrush=PALETTE[4]), buf))
            elif k in ("alignment", "uniformity"):
                i = 1 if k == "alignment" else 2
                self._eval_lines.append(_Line(self.au_plot.plot(pen=pen(i), name=k, symbol="o", symbolSize=4,
                                                                 symbolBrush=PALETTE[i]), buf))
            elif k == "teacher_entropy":
                self._eval_lines.append(_Line(self.ent_plot.plot(pen=pen(5), symbol="o", symbolSize=4,
                                                                  symbolBrush=PALETTE[5]), buf))
            elif k == "entropy_ref":
                self._eval_lines.append(_Line(self.ent_plot.plot(pen=ref_pen()), buf))
            elif k == "dim":  # the largest rank possible, min(batch, d): RankMe's reference line
                self._eval_lines.append(_Line(self.rank_plot.plot(pen=ref_pen()), buf))
            elif k == "kl":
                self._eval_lines.append(_Line(self.kl_plot.plot(pen=pen(6), symbol="o", symbolSize=4,
                                                                 symbolBrush=PALETTE[6]), buf))
            else:
                w = self._add_plot(f"indicator/{k}", make_plot(k, ""), curve=True)
                self._indicator_plot_order.append(k)
                self._eval_lines.append(_Line(w.plot(pen=pen(len(self._indicator_plot_order) + 6),
                                                     symbol="o", symbolSize=4), buf))
        if relayout:
            self._relayout_eval()

    def _relayout_eval(self) -> None:
        keys = self._ind_line_keys if hasattr(self, "_ind_line_keys") else set()
        has_knn = len(self.buffers["knn_top1"]) > 0 if hasattr(self, "buffers") else False
        visible = [self.knn_plot]
        if "std" in keys:
            visible.append(self.std_plot)
        if "rank_me" in keys:
            visible.append(self.rank_plot)
        if keys & {"alignment", "uniformity"}:
            visible.append(self.au_plot)
        if "teacher_entropy" in keys:
            visible.append(self.ent_plot)
        if "kl" in keys:
            visible.append(self.kl_plot)
        visible += [self.plots[f"indicator/{k}"] for k in getattr(self, "_indicator_plot_order", [])]
        for w in self._eval_fixed:
            self.eval_grid.removeWidget(w)
            w.setVisible(w in visible)
        for i, w in enumerate(visible):
            self.eval_grid.removeWidget(w)
            self.eval_grid.addWidget(w, i // 2, i % 2)
        self.eval_hint.setVisible(not keys and not has_knn)

    def _update_markers(self) -> None:
        if not self._markers:
            return
        for name in self._curve_plots:
            items = self._marker_items.setdefault(name, [])
            if len(items) >= len(self._markers):
                continue
            w = self.plots[name]
            for i in range(len(items), len(self._markers)):
                step, text = self._markers[i]
                line = pg.InfiniteLine(
                    pos=step, angle=90, movable=False,
                    pen=pg.mkPen((230, 120, 0), width=1.2, style=QtCore.Qt.PenStyle.DashLine),
                    label=text,
                    labelOpts={"position": 0.92 - 0.12 * (i % 4), "color": (160, 80, 0),
                               "fill": (255, 255, 255, 200), "movable": False})
                w.addItem(line, ignoreBounds=True)
                items.append(line)

    def _update_status(self) -> None:
        parts = []
        if self._run_name:
            parts.append(f"<b>{_html(self._run_name)}</b>")
        if self._method:
            parts.append(_html(self._method))
        if self._run_name or self._step:
            tot = f" / {self._total_steps}" if self._total_steps else ""
            parts.append(f"step {self._step}{tot}")
        if self._status:
            parts.append(_html(self._status))
        if self._last_knn is not None:
            parts.append(f"kNN {_fmt_knn(self._last_knn)}")
        if self._message:
            parts.append(f"<span style='color:{theme.pick(theme.MUTED_COLOR).name()}'>{_html(self._message)}</span>")
        self.status_label.setText(" · ".join(parts) if parts else "no run")
        if self._collapse_msg:
            self.badge.setText("⚠ " + self._collapse_msg)
            self.badge.show()
        else:
            self.badge.hide()
        self.eval_hint.setVisible(not self._ind_line_keys and len(self.buffers["knn_top1"]) == 0)

    # ------------------------------------------------------------------ smoothing
    def _on_smoothing(self, v: int) -> None:
        self.set_smoothing(v / 100.0)

    def set_smoothing(self, alpha: float) -> None:
        alpha = min(max(float(alpha), 0.0), 0.99)
        self._alpha = alpha
        self.smoothing_label.setText(f"{alpha:.2f}")
        if int(round(alpha * 100)) != self.smoothing_slider.value():
            self.smoothing_slider.blockSignals(True)
            self.smoothing_slider.setValue(int(round(alpha * 100)))
            self.smoothing_slider.blockSignals(False)
        for c in self._smoothed:
            c.set_alpha(alpha)
        self._overlays_dirty = bool(self._overlays)  # re-smoothed by the throttled redraw, not per slider tick
        self._schedule()

    @property
    def smoothing(self) -> float:
        return self._alpha

    # ------------------------------------------------------------------ run folders
    def load_run(self, run_dir: str) -> None:
        """Reopen a run folder: curves from metrics.jsonl, images from probes/*.npz."""
        self.clear()
        events = [_rebase(e, run_dir) for e in replay_events(run_dir, self.max_snapshots)]
        self._run_dir = str(run_dir)  # a RunStarted of this folder must not clear it again
        self._run_name = Path(run_dir).name
        self.handle_events(events)
        if not self._status:
            self._status = _summary_status(run_dir)
        self.flush()
        if self.tabs.currentWidget() is self._compare_page:  # show the reopened run, not the overlay
            self.tabs.setCurrentIndex(0)

    def set_overlay_runs(self, run_dirs: list[str]) -> None:
        """Overlay the smoothed loss and the kNN curves of several runs (legend: run name)."""
        names = _unique_names([str(d) for d in run_dirs])
        self._overlays = []
        for d, name in zip(run_dirs, names):
            rows = ev.read_metrics(str(Path(d) / "metrics.jsonl"))
            lx, ly, kx, ky = [], [], [], []
            for r in rows:
                kind = r.get("event")
                if kind == "train" and "loss" in r:
                    lx.append(r.get("step", 0))
                    ly.append(_to_float(r.get("loss")))
                elif kind == "eval" and r.get("knn_top1") is not None:
                    kx.append(r.get("step", 0))
                    ky.append(_to_float(r.get("knn_top1")))
            self._overlays.append((name, *_monotonic(lx, ly), *_monotonic(kx, ky)))
        self._draw_overlays()
        if run_dirs:
            self.tabs.setCurrentWidget(self._compare_page)

    def _draw_overlays(self) -> None:
        overlays = self._overlays
        for p in (self.cmp_loss_plot, self.cmp_knn_plot):
            pi = p.getPlotItem()
            pi.clear()
            if pi.legend is not None:
                pi.legend.clear()
        for i, (name, lx, ly, kx, ky) in enumerate(overlays):
            if len(lx):
                self.cmp_loss_plot.plot(lx, debiased_ema(ly, self._alpha), pen=pen(i, 1.8), name=name,
                                        connect="finite")
            if len(kx):
                self.cmp_knn_plot.plot(kx, ky, pen=pen(i, 1.8), name=name, symbol="o", symbolSize=5,
                                       symbolBrush=PALETTE[i % len(PALETTE)])

    # ------------------------------------------------------------------ export
    def plot_names(self) -> list[str]:
        return list(self.plots)

    def export_plot(self, name: str, path: str) -> None:
        """Write one plot as PNG (or JPG) or SVG, chosen by the path's extension."""
        import pyqtgraph.exporters as pgx

        if name not in self.plots:
            raise KeyError(f"no plot named {name!r}; plots: {', '.join(self.plots)}")
        self.flush()
        w = self.plots[name]
        item = w.getPlotItem()
        ext = Path(path).suffix.lower()
        if ext not in (".png", ".jpg", ".jpeg", ".bmp", ".svg"):
            raise ValueError(f"export format {ext or '(none)'} not supported: use .png or .svg")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        restore = None
        rect = item.sceneBoundingRect()
        if rect.width() < 100 or rect.height() < 80:  # never laid out (hidden tab): give it a size
            restore = item.geometry()
            item.setGeometry(QtCore.QRectF(0, 0, 900, 520))
        try:
            if ext == ".svg":
                try:
                    with _svg_closed_path_fix():
                        pgx.SVGExporter(item).export(fileName=str(path))
                except Exception:  # noqa: BLE001 - exporter bug: render the scene with QtSvg
                    _render_svg(w, item, str(path))
            else:
                exp = pgx.ImageExporter(item)
                width = int(item.sceneBoundingRect().width())
                if width < 1200:
                    exp.parameters()["width"] = 1200
                exp.export(fileName=str(path))
        finally:
            if restore is not None:
                item.setGeometry(restore)

    # ------------------------------------------------------------------ queries (tests, tools)
    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a series: 'loss', 'lr', 'weight_decay', 'images_per_s', 'knn_top1',
        'scalar/<key>' or 'indicator/<key>'."""
        if key.startswith("scalar/"):
            b = self.scalar_buffers[key[7:]]
        elif key.startswith("indicator/"):
            b = self.indicator_buffers[key[10:]]
        else:
            b = self.buffers[key]
        return b.x.copy(), b.y.copy()

    def smoothed_loss(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._loss_curve is not None
        return self._loss_curve.smoothed()

    @property
    def collapse_text(self) -> str | None:
        return self._collapse_msg

    def marker_count(self, plot: str) -> int:
        return len(self._marker_items.get(plot, []))


# ---------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _svg_closed_path_fix():
    """pyqtgraph 0.14's SVGExporter fails on closed paths ('... Z') that Qt >= 6.8 writes
    (pyqtgraph issue #3495): drop the standalone Z tokens (Qt closes its paths explicitly
    with a line back to the start anyway) while our export runs."""
    import sys

    mod = sys.modules.get("pyqtgraph.exporters.SVGExporter")
    orig = getattr(mod, "correctCoordinates", None)
    if orig is None:
        yield
        return

    def fixed(node, defs, item, options):  # type: ignore[no-untyped-def]
        for el in node.getElementsByTagName("path"):
            d = el.getAttribute("d")
            if "Z" in d or "z" in d:
                el.setAttribute("d", " ".join(t for t in d.split() if t not in ("Z", "z")))
        return orig(node, defs, item, options)

    mod.correctCoordinates = fixed
    try:
        yield
    finally:
        mod.correctCoordinates = orig


def _render_svg(widget: pg.PlotWidget, item: pg.PlotItem, path: str) -> None:
    from PySide6 import QtGui, QtSvg

    rect = item.sceneBoundingRect()
    gen = QtSvg.QSvgGenerator()
    gen.setFileName(path)
    gen.setSize(QtCore.QSize(int(rect.width()), int(rect.height())))
    gen.setViewBox(QtCore.QRectF(0, 0, rect.width(), rect.height()))
    painter = QtGui.QPainter(gen)
    try:
        widget.scene().render(painter, QtCore.QRectF(0, 0, rect.width(), rect.height()), rect)
    finally:
        painter.end()


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _same_dir(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def _rebase(e: ev.Event, run_dir: str) -> ev.Event:
    """A reopened (maybe moved) run: its RunStarted events point at where it is now."""
    if isinstance(e, ev.RunStarted) and not _same_dir(e.run_dir, run_dir):
        e.run_dir = str(run_dir)
    return e


def _summary_status(run_dir: str) -> str:
    from engine.rundir import RunDir

    return str(RunDir(Path(run_dir)).read_summary().get("status", ""))


def _unique_names(dirs: list[str]) -> list[str]:
    names = [Path(d).name or d for d in dirs]
    out = []
    for d, n in zip(dirs, names):
        if names.count(n) > 1:
            p = Path(d)
            n = f"{p.parent.name}/{p.name}"
        out.append(n)
    return out


def _monotonic(xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
    """Steps of a resumed run may go back: keep the last occurrence, as the live view does."""
    buf = SeriesBuffer()
    for x, y in zip(xs, ys):
        buf.append(float(x), y)
    return buf.x.copy(), buf.y.copy()
