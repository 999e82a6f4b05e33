"""2-D embedding view: the PCA of the evaluation features, coloured by class (10-colour palette),
with the class names of the run (``RunStarted.class_names``) in the legend and in each point's
tooltip."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6 import QtWidgets

from .curves import PALETTE


def label_colours(labels: np.ndarray | None, n: int) -> np.ndarray:
    """Palette index per point (labels modulo 10; no labels -> colour 0)."""
    if labels is None:
        return np.zeros(n, dtype=np.int64)
    lab = np.asarray(labels).reshape(-1)[:n].astype(np.int64, copy=False)
    if len(lab) < n:
        lab = np.concatenate([lab, np.zeros(n - len(lab), np.int64)])
    return np.mod(lab, len(PALETTE))


class EmbeddingView(QtWidgets.QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget(background="w")
        pi = self.plot.getPlotItem()
        pi.setTitle("Embedding (PCA of backbone features)", color="#222", size="10pt")
        pi.showGrid(x=True, y=True, alpha=0.2)
        pi.setLabel("bottom", "PC 1")
        pi.setLabel("left", "PC 2")
        for ax in ("left", "bottom"):
            pi.getAxis(ax).setTextPen("#333")
        self.scatter = pg.ScatterPlotItem(size=6, pen=None, hoverable=True, tip=self._tip)
        self.plot.addItem(self.scatter)
        self._brushes = [pg.mkBrush(r, g, b, 200) for r, g, b in PALETTE]
        self.legend = QtWidgets.QLabel("")
        self.legend.setWordWrap(True)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.legend)
        self.step: int | None = None
        self.points = 0
        self.class_names: list[str] = []
        self._pending: tuple[int, np.ndarray, np.ndarray | None] | None = None

    def set_class_names(self, names: list[str] | None) -> None:
        """Names for the label indices (empty: the indices are shown)."""
        self.class_names = [str(n) for n in (names or [])]

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def _tip(self, x: float, y: float, data) -> str:
        label = "" if data is None else f"{self.class_name(int(data))}\n"
        return f"{label}PC 1 {x:.3g}, PC 2 {y:.3g}"

    def set_embedding(self, step: int, emb: np.ndarray, labels: np.ndarray | None) -> None:
        """Store only (cheap); ``refresh`` draws the latest one."""
        self._pending = (step, emb, labels)

    def clear(self) -> None:
        self._pending = None
        self.scatter.clear()
        self.step = None
        self.points = 0
        self.class_names = []
        self.legend.setText("")
        self.plot.getPlotItem().setTitle("Embedding (PCA of backbone features)", color="#222", size="10pt")

    def refresh(self) -> None:
        if self._pending is None:
            return
        step, emb, labels = self._pending
        self._pending = None
        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] < 2:
            return
        emb = emb[:, :2]
        ok = np.isfinite(emb).all(axis=1)
        cols = label_colours(labels, len(emb))[ok]
        emb = emb[ok]
        lab = None
        if labels is not None and len(np.asarray(labels).reshape(-1)) >= len(ok):
            lab = np.asarray(labels).reshape(-1)[: len(ok)][ok].astype(int).tolist()
        self.scatter.setData(pos=emb, brush=[self._brushes[c] for c in cols.tolist()], data=lab)
        self.step = step
        self.points = len(emb)
        self.plot.getPlotItem().setTitle(f"Embedding (PCA of backbone features), step {step}",
                                         color="#222", size="10pt")
        if labels is not None and len(emb):
            present = sorted(set(np.asarray(labels).reshape(-1)[: len(ok)][ok].astype(int).tolist()))
            parts = []
            for c in present[:20]:
                r, g, b = PALETTE[c % len(PALETTE)]
                name = html.escape(self.class_name(c))
                parts.append(f"<span style='color: rgb({r},{g},{b}); font-size: 14pt'>●</span> {name}")
            more = "" if len(present) <= 20 else f" … ({len(present)} classes; colours repeat every 10)"
            self.legend.setText("class: " + "&nbsp;&nbsp;".join(parts) + more)
        else:
            self.legend.setText("")
