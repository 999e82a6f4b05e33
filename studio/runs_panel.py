"""The runs panel: the run folders under a parent folder, with open / resume / compare / export
and a linear probe (run in a background thread, kept in the run's ``linear_probe.json``).

Cheap by design: a refresh lists the folders (``engine.rundir.list_runs``) and reads each
``run.json`` summary (config.yaml only for a run that has no summary yet, cached by mtime);
the table is rebuilt only when something changed, keeping the selection.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from typing import Any

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Qt, Signal

from engine.rundir import RunDir, list_runs

COLUMNS = ("Run", "Method", "Dataset", "Steps", "Best kNN", "Linear", "Status", "Date")
EXPORT_FORMATS = (
    ("torchvision", "torchvision backbone (.pth)…"),
    ("timm", "timm backbone…"),
    ("safetensors", "safetensors weights…"),
    ("config", "config YAML…"),
)
AUTO_REFRESH_MS = 3000

_config_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def _config_fallback(rd: RunDir) -> dict[str, Any]:
    """method / dataset from config.yaml for a run without run.json (cached by mtime)."""
    try:
        mtime = rd.config.stat().st_mtime
    except OSError:
        return {}
    key = str(rd.config)
    hit = _config_cache.get(key)
    if hit and hit[0] == mtime:
        return hit[1]
    out: dict[str, Any] = {}
    try:
        import yaml

        cfg = yaml.safe_load(rd.config.read_text()) or {}
        if isinstance(cfg, dict):
            out["method"] = cfg.get("method", "")
            data = cfg.get("data") or {}
            if isinstance(data, dict):
                out["dataset"] = data.get("source", "")
    except Exception:  # noqa: BLE001 - an unreadable config only leaves the columns empty
        pass
    _config_cache[key] = (mtime, out)
    return out


def run_row(rd: RunDir) -> dict[str, Any]:
    """The panel's row for one run folder (pure: no Qt)."""
    s = rd.read_summary()
    if not s:
        s = {**_config_fallback(rd), "status": "unknown"}
    step = s.get("step")
    total = s.get("total_steps")
    best = s.get("best_knn_top1")
    t = s.get("updated")
    if not isinstance(t, (int, float)):
        try:
            t = rd.config.stat().st_mtime
        except OSError:
            t = None
    has_ckpt = rd.checkpoint.exists()
    lin = rd.read_linear_probe().get("linear_top1") if rd.linear_probe.exists() else None
    return {
        "run_dir": str(rd.root),
        "name": rd.root.name,
        "method": str(s.get("method") or ""),
        "dataset": str(s.get("dataset") or ""),
        "step": step if isinstance(step, int) else None,
        "total_steps": total if isinstance(total, int) else None,
        "best_knn": float(best) if isinstance(best, (int, float)) and math.isfinite(best) else None,
        "linear": float(lin) if isinstance(lin, (int, float)) and math.isfinite(lin) else None,
        "status": str(s.get("status") or "unknown"),
        "time": float(t) if t is not None else None,
        "error": s.get("error"),
        "checkpoint": has_ckpt,
    }


def format_row(r: dict[str, Any]) -> list[str]:
    steps = "" if r["step"] is None else str(r["step"])
    if r["total_steps"]:
        steps = f"{steps or 0} / {r['total_steps']}"
    b, lin = r["best_knn"], r.get("linear")
    best = "" if b is None else (f"{b:.1%}" if b <= 1.0 else f"{b:.1f}%")
    linear = "" if lin is None else f"{lin:.1%}"
    date = "" if r["time"] is None else _dt.datetime.fromtimestamp(r["time"]).strftime("%Y-%m-%d %H:%M")
    return [r["name"], r["method"], r["dataset"], steps, best, linear, r["status"], date]


def can_resume(r: dict[str, Any]) -> bool:
    return r["status"] != "completed"


class _Item(QtWidgets.QTableWidgetItem):
    """Sorts by a number when one is set (steps, kNN, date), else by text."""

    def __init__(self, text: str, key: Any = None) -> None:
        super().__init__(text)
        self._key = key

    def __lt__(self, other: QtWidgets.QTableWidgetItem) -> bool:  # type: ignore[override]
        a, b = self._key, getattr(other, "_key", None)
        if a is not None and b is not None:
            return a < b
        if (a is None) != (b is None):
            return a is None
        return self.text().lower() < other.text().lower()


class RunsPanel(QtWidgets.QWidget):
    open_requested = Signal(str)
    resume_requested = Signal(str)
    compare_requested = Signal(list)
    export_requested = Signal(str, str)
    probe_requested = Signal(str)

    def __init__(self, runs_dir: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs_dir = str(runs_dir)
        self._rows: list[dict[str, Any]] = []
        self._probing = False
        self._sized = False

        self.title = QtWidgets.QLabel()
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COLUMNS.index("Date"), Qt.SortOrder.DescendingOrder)  # newest first
        hh = self.table.horizontalHeader()
        hh.setStretchLastSection(True)
        hh.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Interactive)
        self.table.itemDoubleClicked.connect(lambda _item: self._open())
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._context_menu)

        self.open_btn = QtWidgets.QPushButton("Open")
        self.resume_btn = QtWidgets.QPushButton("Resume")
        self.compare_btn = QtWidgets.QPushButton("Compare")
        self.export_btn = QtWidgets.QToolButton()
        self.export_btn.setText("Export ▸")
        self.export_btn.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        self.export_menu = QtWidgets.QMenu(self.export_btn)
        self.export_actions: dict[str, Any] = {}
        for fmt, label in EXPORT_FORMATS:
            act = self.export_menu.addAction(label)
            act.triggered.connect(lambda _checked=False, f=fmt: self._export(f))
            self.export_actions[fmt] = act
        self.export_btn.setMenu(self.export_menu)
        self.probe_btn = QtWidgets.QPushButton("Linear probe")
        self.probe_btn.setToolTip("train a linear classifier on the frozen backbone's features of the run's data "
                                  "(labels needed); the result fills the Linear column")
        self.probe_btn.clicked.connect(self._probe)
        self.refresh_btn = QtWidgets.QPushButton("Refresh")
        self.open_btn.setToolTip("show the run in the dashboard (double-click a row does the same)")
        self.resume_btn.setToolTip("continue an unfinished run from its last checkpoint")
        self.compare_btn.setToolTip("overlay the loss and kNN curves of the selected runs")
        self.open_btn.clicked.connect(self._open)
        self.resume_btn.clicked.connect(self._resume)
        self.compare_btn.clicked.connect(self._compare)
        self.refresh_btn.clicked.connect(self.refresh)

        buttons = QtWidgets.QHBoxLayout()
        for b in (self.open_btn, self.resume_btn, self.compare_btn, self.export_btn, self.probe_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_btn)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.title)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)

        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(AUTO_REFRESH_MS)
        self._timer.timeout.connect(self._auto_refresh)
        self._timer.start()
        self.refresh()

    # ------------------------------------------------------------------ data
    def set_runs_dir(self, runs_dir: str) -> None:
        self.runs_dir = str(runs_dir)
        self._rows = []
        self.table.setRowCount(0)
        self.refresh()

    def _auto_refresh(self) -> None:
        if self.isVisible():
            self.refresh()

    def refresh(self) -> None:
        rows = [run_row(rd) for rd in list_runs(self.runs_dir)]
        self.title.setText(f"<b>Runs</b> in {self.runs_dir} ({len(rows)})")
        if rows == self._rows:
            return
        selected = set(self.selected_run_dirs())
        self._rows = rows
        t = self.table
        sorting = t.isSortingEnabled()
        t.setSortingEnabled(False)
        t.blockSignals(True)
        t.setRowCount(len(rows))
        for i, r in enumerate(rows):
            texts = format_row(r)
            keys = [None, None, None, r["step"], r["best_knn"], r.get("linear"), None, r["time"]]
            for j, (text, key) in enumerate(zip(texts, keys)):
                item = _Item(text, key)
                item.setData(Qt.ItemDataRole.UserRole, r["run_dir"])
                if j in (3, 4, 5):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if j == COLUMNS.index("Status"):
                    item.setForeground(_status_colour(r["status"]))
                    if r.get("error"):
                        item.setToolTip(str(r["error"]))
                if j == 0:
                    item.setToolTip(r["run_dir"])
                t.setItem(i, j, item)
        t.setSortingEnabled(sorting)
        sel = t.selectionModel()
        sel.clearSelection()
        for i in range(t.rowCount()):
            if t.item(i, 0).data(Qt.ItemDataRole.UserRole) in selected:
                sel.select(t.model().index(i, 0),
                           QtCore.QItemSelectionModel.SelectionFlag.Select
                           | QtCore.QItemSelectionModel.SelectionFlag.Rows)
        t.blockSignals(False)
        if not self._sized and rows:  # once: later refreshes keep the widths the user set
            t.resizeColumnsToContents()
            self._sized = True
        self._update_buttons()

    def rows(self) -> list[dict[str, Any]]:
        """The rows as last read (newest first), for tests and tools."""
        return list(self._rows)

    def row_texts(self) -> list[list[str]]:
        """The table's cells as shown (current sort order)."""
        t = self.table
        return [[t.item(i, j).text() for j in range(t.columnCount())] for i in range(t.rowCount())]

    # ------------------------------------------------------------------ selection
    def selected_run_dirs(self) -> list[str]:
        t = self.table
        rows = sorted({ix.row() for ix in t.selectionModel().selectedRows()}) if t.selectionModel() else []
        out = []
        for i in rows:
            item = t.item(i, 0)
            if item is not None:
                out.append(item.data(Qt.ItemDataRole.UserRole))
        return out

    def select_run_dirs(self, run_dirs: list[str]) -> None:
        want = {os.path.normpath(d) for d in run_dirs}
        t = self.table
        sel = t.selectionModel()
        sel.clearSelection()
        for i in range(t.rowCount()):
            if os.path.normpath(t.item(i, 0).data(Qt.ItemDataRole.UserRole)) in want:
                sel.select(t.model().index(i, 0),
                           QtCore.QItemSelectionModel.SelectionFlag.Select
                           | QtCore.QItemSelectionModel.SelectionFlag.Rows)
        self._update_buttons()

    def _row(self, run_dir: str) -> dict[str, Any] | None:
        for r in self._rows:
            if r["run_dir"] == run_dir:
                return r
        return None

    def _update_buttons(self) -> None:
        dirs = self.selected_run_dirs()
        one = len(dirs) == 1
        r = self._row(dirs[0]) if one else None
        self.open_btn.setEnabled(one)
        self.resume_btn.setEnabled(bool(r and can_resume(r)))
        self.compare_btn.setEnabled(len(dirs) >= 2)
        self.export_btn.setEnabled(one)
        self.probe_btn.setEnabled(bool(r and r["checkpoint"]) and not self._probing)
        if r is not None:
            for fmt, act in self.export_actions.items():
                act.setEnabled(fmt == "config" or r["checkpoint"])

    # ------------------------------------------------------------------ actions
    def _open(self) -> None:
        dirs = self.selected_run_dirs()
        if dirs:
            self.open_requested.emit(dirs[0])

    def _resume(self) -> None:
        dirs = self.selected_run_dirs()
        r = self._row(dirs[0]) if len(dirs) == 1 else None
        if r is not None and can_resume(r):
            self.resume_requested.emit(r["run_dir"])

    def _compare(self) -> None:
        dirs = self.selected_run_dirs()
        if len(dirs) >= 2:
            self.compare_requested.emit(dirs)

    def _probe(self) -> None:
        dirs = self.selected_run_dirs()
        r = self._row(dirs[0]) if len(dirs) == 1 else None
        if r is not None and r["checkpoint"] and not self._probing:
            self.probe_requested.emit(r["run_dir"])

    def set_probing(self, on: bool) -> None:
        """A linear probe runs (one at a time): the button waits for it."""
        self._probing = on
        self.probe_btn.setText("Linear probe…" if on else "Linear probe")
        self._update_buttons()

    def _export(self, fmt: str) -> None:
        dirs = self.selected_run_dirs()
        if len(dirs) == 1:
            self.export_requested.emit(dirs[0], fmt)

    def _context_menu(self, pos: QtCore.QPoint) -> None:
        if not self.selected_run_dirs():
            return
        menu = QtWidgets.QMenu(self)
        for label, btn in (("Open", self.open_btn), ("Resume", self.resume_btn), ("Compare", self.compare_btn),
                           ("Linear probe", self.probe_btn)):
            a = menu.addAction(label)
            a.setEnabled(btn.isEnabled())
            a.triggered.connect(btn.click)
        if self.export_btn.isEnabled():
            menu.addMenu(self.export_menu).setText("Export")
        menu.exec(self.table.viewport().mapToGlobal(pos))


def _status_colour(status: str):
    from . import theme

    return theme.pick(theme.STATUS_COLORS.get(status, theme.MUTED_COLOR))
