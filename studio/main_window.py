"""The main window: method library | diagram + dashboard / data / runs | inspector.

::

    +----------------+------------------------------------------+------------------+
    | Methods        | method header (name, paper, summary)     | Settings         |
    |  contrastive   | component diagram (click a block to      |  preset / yaml   |
    |   simclr       |   filter the inspector)                  |  Method          |
    |  ...           +------------------------------------------+  Data            |
    |                | [Dashboard] [Data] [Runs] [Log]          |  Augmentation    |
    |                |                                          |  ...             |
    +----------------+------------------------------------------+------------------+
    toolbar: Start  Pause  Resume  Stop | device picker | progress | status

The window never touches a Trainer directly: runs go through
:class:`studio.worker.RunController` (a worker thread, an event pump, control
calls). The library and inspector are disabled for editing during a run except
the live-tunable settings, whose committed edits go to ``trainer.set_param``.

Persistence (QSettings, injectable): geometry and dock state, splitter sizes,
last method, last dataset, device, runs folder.

Dialogs are injectable for tests and scripted use: ``ask_question(title, text)
-> bool`` (closing during a run) and ``show_error(title, text)`` (non-blocking).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QSplitter,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from engine import events as ev
from engine.config import RunConfig, load_yaml, validate_config
from engine.errors import ConfigError, UserError
from engine.fileio import atomic_write_text
from engine.methods import get_method
from engine.preflight import known_image_size
from engine.presets import list_presets
from engine.rundir import RunDir, config_as_ended

from . import theme
from .data_page import DataPage
from .diagram import DiagramView
from .inspector import ParameterInspector
from .jobs import Job
from .library import MethodLibrary
from .worker import RunController, default_runs_dir, device_choices, make_run_dir

DEFAULT_PRESET = "quick_cpu"


def _optional_module(name: str):
    """Import a sibling module that another team may not have delivered yet (None if missing)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == name or name.startswith(e.name + ".")):
            return None
        raise


def _action(menu, text: str, slot, shortcut=None) -> QAction:
    act = QAction(text, menu)
    if shortcut is not None:
        act.setShortcut(QKeySequence(shortcut))
    act.triggered.connect(lambda _checked=False: slot())
    menu.addAction(act)
    return act


class _Placeholder(QWidget):
    """Stands in for the dashboard / runs panel when their modules are not installed."""

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lab = QLabel(text)
        lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lab.setWordWrap(True)
        QVBoxLayout(self).addWidget(lab)

    # the Dashboard API, as no-ops
    def clear(self) -> None: ...
    def handle_events(self, events) -> None: ...
    def load_run(self, run_dir: str) -> None: ...
    def set_overlay_runs(self, run_dirs) -> None: ...
    def refresh(self) -> None: ...


class DevicePicker(QComboBox):
    """auto / CPU / each CUDA GPU with its free memory (re-read whenever the list opens)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip("Training device (train.device); GPU memory is read when the list opens")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.reload()

    def reload(self) -> None:
        current = self.currentData()
        self.blockSignals(True)
        self.clear()
        for value, label in device_choices():
            self.addItem(label, value)
        if current is not None:
            self.set_device(current)
        self.blockSignals(False)

    def set_device(self, value: str) -> None:
        i = self.findData(value)
        if i < 0:
            self.addItem(value, value)
            i = self.count() - 1
        self.setCurrentIndex(i)

    def device(self) -> str:
        return str(self.currentData() or "auto")

    def showPopup(self) -> None:  # noqa: N802
        self.reload()
        super().showPopup()


class MainWindow(QMainWindow):
    """SSL Studio's main window. ``run_finished(status, message)`` after every run."""

    run_finished = Signal(str, str)
    probe_finished = Signal(str, object)  # run folder, linear probe result
    export_finished = Signal(str, object)  # output file, export metadata (None when it failed)
    run_started = Signal(str)

    def __init__(self, settings: QSettings | None = None, runs_dir: str | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else QSettings()
        self._last_method = str(self.settings.value("last_method", "") or "")  # before building overwrites it
        self.runs_dir = str(Path(runs_dir or self.settings.value("runs_dir", "") or default_runs_dir()).expanduser())
        self.setWindowTitle("SSL Studio")
        self.controller = RunController(self)
        # injectable dialogs
        self.ask_question: Callable[[str, str], bool] = self._ask_question
        self.show_error: Callable[[str, str], None] = self._show_error
        self.choose_directory: Callable[[str, str], str] = self._choose_directory
        self.choose_save_path: Callable[[str, str, str], str] = self._choose_save_path
        self.errors: list[str] = []         # every error shown (newest last)
        self.probe_job: Job | None = None  # a linear probe (one at a time)
        self.export_job: Job | None = None  # a backbone export (one at a time)
        self.persist_settings = True  # False: a scripted session leaves the user's settings alone
        self.last_run_dir: str | None = None
        self.opened_run: str | None = None
        self._close_after_run = False
        self._closing = False
        self._total_steps = 0
        self._build()
        self._connect()
        self._restore_geometry()
        self._on_method_changed(self.inspector.method())
        self._update_actions()

    # =============================================================== building
    def _build(self) -> None:
        # --- left: library
        self.library = MethodLibrary()
        self.library_dock = QDockWidget("Methods", self)
        self.library_dock.setObjectName("library_dock")
        self.library_dock.setWidget(self.library)
        self.library_dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                                      | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.library_dock)
        # --- right: inspector
        self.inspector = ParameterInspector()
        self.inspector_dock = QDockWidget("Settings", self)
        self.inspector_dock.setObjectName("inspector_dock")
        self.inspector_dock.setWidget(self.inspector)
        self.inspector_dock.setFeatures(self.library_dock.features())
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.inspector_dock)
        # --- centre: method header + diagram, then the tabs
        self.method_header = QLabel()
        self.method_header.setWordWrap(True)
        self.method_header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.method_header.setContentsMargins(8, 6, 8, 0)
        self.diagram = DiagramView()
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.setSpacing(2)
        tl.addWidget(self.method_header)
        tl.addWidget(self.diagram, 1)

        dash_mod = _optional_module("studio.dashboard")
        self.dashboard = dash_mod.Dashboard() if dash_mod is not None else _Placeholder(
            "The live dashboard (studio.dashboard) is not installed.")
        self.data_page = DataPage()
        runs_mod = _optional_module("studio.runs_panel")
        self.runs_panel = runs_mod.RunsPanel(self.runs_dir) if runs_mod is not None else _Placeholder(
            "The runs panel (studio.runs_panel) is not installed.")
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.dashboard, "Dashboard")
        self.tabs.addTab(self.data_page, "Data")
        self.tabs.addTab(self.runs_panel, "Runs")
        self.tabs.addTab(self.log_view, "Log")

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setSizes([260, 640])
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)

        # --- actions, toolbar, menus, status bar
        self.act_start = QAction(theme.run_icon("start"), "Start", self, shortcut=QKeySequence("Ctrl+R"))
        self.act_pause = QAction(theme.run_icon("pause"), "Pause", self)
        self.act_resume = QAction(theme.run_icon("resume"), "Resume", self)
        self.act_stop = QAction(theme.run_icon("stop"), "Stop", self, shortcut=QKeySequence("Ctrl+."))
        self.act_start.setToolTip("Start a run with the current settings (Ctrl+R)")
        self.act_pause.setToolTip("Pause after the current step")
        self.act_resume.setToolTip("Continue the paused run")
        self.act_stop.setToolTip("Stop after the current step; a checkpoint is saved")
        self.device_picker = DevicePicker()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(260)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("no run")
        self.state_label = QLabel("idle")
        self.state_label.setMinimumWidth(70)
        tb = QToolBar("Run")
        tb.setObjectName("run_toolbar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        tb.setMovable(False)
        for a in (self.act_start, self.act_pause, self.act_resume, self.act_stop):
            tb.addAction(a)
        tb.addSeparator()
        tb.addWidget(QLabel(" Device "))
        tb.addWidget(self.device_picker)
        tb.addSeparator()
        tb.addWidget(self.progress)
        tb.addWidget(QLabel("  "))
        tb.addWidget(self.state_label)
        self.addToolBar(tb)
        self.run_toolbar = tb

        m = self.menuBar()
        fm = m.addMenu("&File")
        self.act_open_cfg = _action(fm, "Open config…", self.inspector._open_clicked, QKeySequence.StandardKey.Open)
        self.act_save_cfg = _action(fm, "Save config…", self.inspector._save_clicked, QKeySequence.StandardKey.Save)
        fm.addSeparator()
        _action(fm, "Open run folder…", self._open_run_dialog)
        _action(fm, "Runs folder…", self._choose_runs_dir)
        fm.addSeparator()
        _action(fm, "Save screenshot…", self._screenshot_dialog)
        _action(fm, "Quit", self.close, QKeySequence.StandardKey.Quit)
        rm = m.addMenu("&Run")
        for a in (self.act_start, self.act_pause, self.act_resume, self.act_stop):
            rm.addAction(a)
        rm.addSeparator()
        self.act_resume_opened = _action(rm, "Resume opened run", self._resume_opened)
        self.act_resume_opened.setToolTip("Continue the run opened from the Runs tab, with the current settings")
        vm = m.addMenu("&View")
        vm.addAction(self.library_dock.toggleViewAction())
        vm.addAction(self.inspector_dock.toggleViewAction())
        for i, name in enumerate(("Dashboard", "Data", "Runs", "Log")):
            _action(vm, name, lambda i=i: self.tabs.setCurrentIndex(i), QKeySequence(f"Ctrl+{i + 1}"))
        hm = m.addMenu("&Help")
        _action(hm, "About SSL Studio", self._about)

        self.runs_label = QLabel()
        self.statusBar().addPermanentWidget(self.runs_label)
        self._update_runs_label()

    def _connect(self) -> None:
        self.library.method_selected.connect(self.select_method)
        self.inspector.method_changed.connect(self._on_method_changed)
        self.inspector.config_changed.connect(self._on_config_changed)
        self.inspector.validity_changed.connect(lambda ok, msg: self._update_actions())
        self.inspector.live_edit.connect(self._on_live_edit)
        self.inspector.error.connect(lambda msg: self.report_error("Settings", msg))
        self.inspector.message.connect(lambda msg: self.statusBar().showMessage(msg, 8000))
        self.diagram.block_selected.connect(self._on_block_selected)
        self.data_page.source_chosen.connect(self._on_source_chosen)
        self.data_page.load_failed.connect(lambda msg: self.statusBar().showMessage(f"data: {msg}", 10000))
        self.inspector.image_size_of = self._image_size_of
        self.data_page.data_loaded.connect(lambda _splits: self.inspector.recheck())
        self.device_picker.currentIndexChanged.connect(self._on_device_picked)
        self.act_start.triggered.connect(self.start_run)
        self.act_pause.triggered.connect(self.pause_run)
        self.act_resume.triggered.connect(self.resume_run)
        self.act_stop.triggered.connect(self.stop_run)
        self.controller.events.connect(self._on_events)
        self.controller.finished.connect(self._on_run_finished)
        self.controller.state_changed.connect(self._on_state_changed)
        if hasattr(self.runs_panel, "open_requested"):
            self.runs_panel.open_requested.connect(self.open_run)
            self.runs_panel.resume_requested.connect(self.resume_past_run)
            self.runs_panel.compare_requested.connect(self.compare_runs)
        if hasattr(self.runs_panel, "export_requested"):
            self.runs_panel.export_requested.connect(self.export_run)
        if hasattr(self.runs_panel, "probe_requested"):
            self.runs_panel.probe_requested.connect(self.linear_probe_run)
        if hasattr(self.dashboard, "collapse_warning"):
            self.dashboard.collapse_warning.connect(self._on_collapse_warning)
        self.data_page.set_config(self.inspector.config())

    # ============================================================ settings
    def _restore_geometry(self) -> None:
        geo = self.settings.value("window/geometry")
        if not (isinstance(geo, QByteArray) and not geo.isEmpty() and self.restoreGeometry(geo)):
            self.resize(1500, 940)  # first start, or a geometry Qt cannot read
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)
        else:  # first start: room for the form's values
            self.resizeDocks([self.library_dock, self.inspector_dock], [250, 420], Qt.Orientation.Horizontal)
        sizes = self.settings.value("window/splitter")
        if isinstance(sizes, QByteArray) and not sizes.isEmpty():
            self.splitter.restoreState(sizes)
        tab = self.settings.value("window/tab")
        if tab is not None:
            try:
                self.tabs.setCurrentIndex(int(tab))
            except (TypeError, ValueError):
                pass

    def save_settings(self) -> None:
        if not self.persist_settings:
            return
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/splitter", self.splitter.saveState())
        s.setValue("window/tab", self.tabs.currentIndex())
        s.setValue("last_method", self.inspector.method())
        s.setValue("last_dataset", str(self.inspector.value("data.source")))
        s.setValue("last_preset", self.inspector.current_preset() or "")
        s.setValue("device", self.device_picker.device())
        s.setValue("runs_dir", self.runs_dir)
        s.sync()

    def restore_session(self, preset: str | None = DEFAULT_PRESET, restore_last: bool = True) -> None:
        """Start-up setup: ``preset`` (if it exists), then the last method and dataset of the previous session."""
        if preset and preset in list_presets():
            self.load_preset(preset)
        if not restore_last:
            return
        method = self._last_method
        if method and method != self.inspector.method():
            try:
                get_method(str(method))
                self.select_method(str(method))
            except UserError:
                pass
        dataset = str(self.settings.value("last_dataset", "") or "")
        if dataset and dataset != self.inspector.value("data.source"):
            if dataset == "shapes" or Path(dataset).expanduser().exists():
                self.inspector.set_value("data.source", dataset)
            else:
                self._log(f"the last session's dataset {dataset} is gone; keeping {self.inspector.value('data.source')}")
        device = str(self.settings.value("device", "") or "")
        if device and device != self.inspector.value("train.device"):
            if device in [v for v, _ in device_choices()]:
                self.inspector.set_value("train.device", device)
            else:
                self._log(f"the last session's device {device} is not here; using {self.inspector.value('train.device')}")

    # ============================================================= setup
    def select_method(self, name: str) -> None:
        """Select a method (library, inspector params, diagram)."""
        if self.controller.is_running():
            self.library.select(self.inspector.method(), emit=False)
            return
        self.inspector.set_method(name)  # emits method_changed when it differs
        self._on_method_changed(name)

    def load_preset(self, name: str) -> RunConfig:
        return self.inspector.load_preset(name)

    def load_config_file(self, path: str) -> RunConfig:
        return self.inspector.load_yaml_file(path)

    def _on_method_changed(self, name: str) -> None:
        self.library.select(name, emit=False)
        try:
            cls = get_method(name)
        except UserError as e:
            self.report_error("Method", str(e))
            return
        if self.diagram.diagram is None or getattr(self, "_diagram_method", None) != name:
            self.diagram.set_diagram(cls.diagram())
            self._diagram_method = name
            self.inspector.set_block_filter(None)
        self.diagram.set_changed_keys(self.inspector.changed_keys())
        summary = cls.summary.strip().replace("\n", " ")
        self.method_header.setText(
            f"<span style='font-size:15pt; font-weight:600'>{cls.name or name}</span>"
            f" &nbsp;<span style='color:gray'>{cls.family}</span><br>"
            f"<i>{cls.paper}</i><br>{summary}")

    def _image_size_of(self, cfg: RunConfig) -> int | None:
        """Side of the images ``cfg`` trains on: known from the config, else from the loaded data."""
        size = known_image_size(cfg.data)
        if size is None:
            splits = self.data_page.data_for(cfg)
            size = splits.image_size if splits is not None else None
        return size

    def _on_config_changed(self, cfg: RunConfig | None) -> None:
        self.diagram.set_changed_keys(self.inspector.changed_keys())
        if cfg is not None:
            self.data_page.set_config(cfg)
            if cfg.train.device != self.device_picker.device():
                self.device_picker.blockSignals(True)
                self.device_picker.set_device(cfg.train.device)
                self.device_picker.blockSignals(False)
        self._update_actions()

    def _on_block_selected(self, block) -> None:
        if block is None:
            self.inspector.set_block_filter(None)
        else:
            self.inspector.set_block_filter(block.params, block.label)

    def _on_source_chosen(self, source: str) -> None:
        if source != self.inspector.value("data.source"):
            self.inspector.set_value("data.source", source)
        self.settings.setValue("last_dataset", source)

    def _on_device_picked(self, _i: int) -> None:
        dev = self.device_picker.device()
        if dev != self.inspector.value("train.device") and not self.controller.is_running():
            self.inspector.set_value("train.device", dev)
        self.settings.setValue("device", dev)

    # =============================================================== runs
    def start_run(self) -> str | None:
        """Start a run with the current settings in a new timestamped folder; returns the folder."""
        if self.controller.is_running():
            return None
        cfg = self.inspector.config()
        if not self.inspector.check_now():  # (the method's check of the last edit may still run)
            self.report_error("Cannot start", self.inspector.error_text() or "the settings are not valid")
            return None
        try:
            run_dir = make_run_dir(self.runs_dir, cfg.method)
        except OSError as e:
            self.report_error("Cannot start", f"cannot create a run folder in {self.runs_dir}: {e}")
            return None
        return self._start(cfg.model_copy(deep=True), str(run_dir), resume=False)

    def _start(self, cfg: RunConfig, run_dir: str, resume: bool) -> str:
        self.dashboard.clear()
        if resume:
            self.dashboard.load_run(run_dir)
        self.last_run_dir = run_dir
        self._total_steps = 0
        self.progress.setRange(0, 0)  # busy until RunStarted
        self._log(f"{'resuming' if resume else 'starting'} {cfg.method} in {run_dir}")
        data = self.data_page.data_for(cfg)
        self.controller.start(cfg, run_dir, resume=resume, data=data)
        self.inspector.set_running(True)
        self.library.setEnabled(False)
        self.tabs.setCurrentWidget(self.dashboard)
        self._update_actions()
        self.statusBar().showMessage(f"run folder {run_dir}")
        self.run_started.emit(run_dir)
        return run_dir

    def pause_run(self) -> None:
        self.controller.pause()
        self._update_actions()

    def resume_run(self) -> None:
        self.controller.resume()
        self._update_actions()

    def stop_run(self) -> None:
        self.controller.stop()
        self.statusBar().showMessage("stopping after this step; a checkpoint is saved…")
        self._update_actions()

    def wait_for_run(self, timeout_s: float | None = None) -> bool:
        """Block until the current run ends (scripts, shutdown); True when it ended."""
        return self.controller.wait(timeout_s)

    def shutdown(self, timeout_s: float | None = 300.0) -> None:
        """Stop a run cleanly, wait for every thread (run, data loader, preview, setup check), save settings."""
        self.controller.shutdown(timeout_s)
        self.data_page.shutdown()
        self.inspector.shutdown()
        for job in (self.probe_job, self.export_job):
            if job is not None:
                job.wait()
        self.save_settings()

    def _on_live_edit(self, key: str, value: Any) -> None:
        if not self.controller.is_running():
            return
        try:
            self.controller.set_param(key, value)
        except ConfigError as e:
            self.inspector.set_field_error(key, str(e))
            self.statusBar().showMessage(f"live change refused: {e}", 10000)
            self._log(f"live change refused: {e}")
            return
        self.statusBar().showMessage(f"{key} = {value!r} applies before the next step", 6000)

    def _on_events(self, batch: list) -> None:
        try:
            self.dashboard.handle_events(batch)
        except Exception as e:  # noqa: BLE001 - a dashboard bug must not lose the run's control
            self._log(f"dashboard error: {type(e).__name__}: {e}")
        for e in batch:
            if isinstance(e, ev.RunStarted):
                self._total_steps = e.total_steps
                self.progress.setFormat("%v / %m steps")
                self.progress.setRange(0, max(1, e.total_steps))
                self.progress.setValue(e.step)
                self._log(f"{e.method} on {e.device}: {e.n_train} train / {e.n_test} test images, "
                          f"{e.total_steps} steps -> {e.run_dir}")
            elif isinstance(e, ev.StepMetrics):
                self.progress.setValue(min(e.step, self.progress.maximum()))
                self.statusBar().showMessage(
                    f"step {e.step}/{self._total_steps}  loss {e.loss:.4f}  lr {e.lr:.3g}  "
                    f"{e.images_per_s:.0f} img/s")
            elif isinstance(e, ev.LiveChange):
                self.inspector.confirm_live_value(e.key, e.new)
                self._log(f"step {e.step}: {e.key} {e.old} -> {e.new}")
            elif isinstance(e, ev.Evaluation):
                knn = "n/a" if e.knn_top1 is None else f"{e.knn_top1:.3f}"
                self._log(f"step {e.step}: kNN top-1 {knn}")
            elif isinstance(e, ev.RunWarning):
                self._log(f"step {e.step}: warning: {e.message}")
                self.statusBar().showMessage(f"warning: {e.message}", 10000)
            elif isinstance(e, ev.Error):
                self._log(f"step {e.step}: error ({e.error_type}): {e.message}")
            elif isinstance(e, ev.CheckpointSaved):
                self._log(f"step {e.step}: checkpoint {e.path}")
            elif isinstance(e, ev.Finished):
                self.progress.setRange(0, max(1, self._total_steps or e.step))
                self.progress.setValue(min(e.step, self.progress.maximum()))
                self._log(f"step {e.step}: {e.status} after {e.seconds:.1f} s")

    def _on_state_changed(self, state: str) -> None:
        colors = {"running": "#2e9d4f", "paused": "#d99a1c", "stopping": "#d0443e"}
        c = colors.get(state)
        self.state_label.setText(f"<b style='color:{c}'>{state}</b>" if c else state)
        self._update_actions()

    def _on_run_finished(self, status: str, message: str) -> None:
        self.inspector.set_running(False)
        self.library.setEnabled(True)
        self._update_actions()
        if hasattr(self.runs_panel, "refresh"):
            self.runs_panel.refresh()
        self.statusBar().showMessage(f"run {status}: {self.last_run_dir}", 15000)
        if status == "failed":
            self.report_error("Run failed", message or "the run failed")
        self.run_finished.emit(status, message)
        if self._close_after_run:
            QTimer.singleShot(0, self.close)

    def _on_collapse_warning(self, text: str) -> None:
        self._log(f"collapse warning: {text}")
        self.statusBar().showMessage(f"⚠ {text}", 15000)

    def _update_actions(self) -> None:
        running = self.controller.is_running()
        state = self.controller.state
        valid = self.inspector.is_valid()
        self.act_start.setEnabled(not running and valid)
        self.act_start.setToolTip("Start a run with the current settings (Ctrl+R)" if valid
                                  else f"Cannot start: {self.inspector.error_text()}")
        self.act_pause.setEnabled(running and state == "running")
        self.act_resume.setEnabled(running and state == "paused")
        self.act_stop.setEnabled(running and state != "stopping")
        self.act_resume_opened.setEnabled(not running and valid and self.opened_run is not None)
        self.device_picker.setEnabled(not running)
        for a in (self.act_open_cfg,):
            a.setEnabled(not running)

    # ========================================================= past runs
    def open_run(self, run_dir: str) -> None:
        """Show a past run's curves and snapshots; its config becomes the current setup."""
        if self.controller.is_running():
            self.report_error("Open run", "a run is in progress; stop it before opening another")
            return
        if not (Path(run_dir) / "config.yaml").is_file():
            self.report_error("Open run", f"{run_dir} holds no run (no config.yaml)")
            return
        self.dashboard.load_run(run_dir)
        self.opened_run = run_dir
        try:
            self.inspector.load_config(load_yaml(Path(run_dir) / "config.yaml"))
            self._show_live_values(run_dir)
        except UserError as e:
            self.report_error("Open run", f"the curves of {run_dir} are shown, but its config does not load "
                                          f"into the form: {e}")
        self.tabs.setCurrentWidget(self.dashboard)
        self._log(f"opened {run_dir}")
        self._update_actions()

    def _show_live_values(self, run_dir: str) -> None:
        """Settings changed during the run show the values it ended with (run.json's ``live``),
        marked as changed against its config.yaml; resuming goes on with them, as the trainer does."""
        live = RunDir(Path(run_dir)).read_summary().get("live") or {}
        shown = []
        for key, value in live.items() if isinstance(live, dict) else ():
            if key in self.inspector.keys() and self.inspector.value(key) != value:
                self.inspector.set_value(key, value)
                shown.append(f"{key} = {value}")
        if shown:
            self._log(f"changed during the run (shown, marked as changed): {', '.join(shown)}")
            self.statusBar().showMessage(f"changed during the run: {', '.join(shown)}", 15000)

    def resume_past_run(self, run_dir: str) -> str | None:
        """Continue a past run from its last checkpoint with its own config."""
        if self.controller.is_running():
            self.report_error("Resume", "a run is in progress; stop it before resuming another")
            return None
        device = self.device_picker.device()  # the user's pick, not the device the run was saved with
        try:
            self.inspector.load_config(load_yaml(Path(run_dir) / "config.yaml"))
            self._show_live_values(run_dir)
            self.inspector.set_value("train.device", device)  # keeps the picker on the user's pick
            cfg = validate_config(self.inspector.raw_config())
        except UserError as e:
            self.report_error("Resume", str(e))
            return None
        self.opened_run = run_dir
        return self._start(cfg, run_dir, resume=True)

    def _resume_opened(self) -> None:
        cfg = self.inspector.config()
        if self.opened_run and not self.controller.is_running():
            if not self.inspector.check_now():
                self.report_error("Cannot resume", self.inspector.error_text() or "the settings are not valid")
                return
            self._start(cfg.model_copy(deep=True), self.opened_run, resume=True)

    def linear_probe_run(self, run_dir: str) -> bool:
        """Start a linear probe of a past run in the background (one at a time)."""
        if self.probe_job is not None and self.probe_job.isRunning():
            return False
        if self.controller.is_running():
            self.report_error("Linear probe", "a run is in progress (it would share the device); "
                                              "probe when it has finished")
            return False
        from engine.evaluation import linear_probe_run
        from engine.trainer import resolve_device

        device = self.device_picker.device()
        self.probe_job = Job(lambda stop: linear_probe_run(run_dir, resolve_device(device), should_stop=stop))
        self.probe_job.done.connect(lambda res, error: self._probe_done(run_dir, res, error))
        self.runs_panel.set_probing(True)
        self._log(f"linear probe of {run_dir} …")
        self.statusBar().showMessage(f"linear probe of {Path(run_dir).name} …")
        self.probe_job.start()
        return True

    def _probe_done(self, run_dir: str, res: dict | None, error: str) -> None:
        if self.probe_job is not None:
            self.probe_job.wait()
        self.runs_panel.set_probing(False)
        if res is None:
            if error == "cancelled":
                self._log(f"linear probe of {run_dir} cancelled")
            else:
                self.report_error("Linear probe", error)
            return
        text = (f"linear probe of {Path(run_dir).name} (step {res['step']}): top-1 {res['linear_top1']:.1%} "
                f"(train {res['train_top1']:.1%}; {res['n_train']} training / {res['n_test']} test images, "
                f"{res['epochs']} epochs)")
        self._log(text)
        self.statusBar().showMessage(text, 15000)
        self.runs_panel.refresh()
        self.probe_finished.emit(run_dir, res)

    def compare_runs(self, run_dirs: list[str]) -> None:
        self.dashboard.set_overlay_runs(list(run_dirs))
        self.tabs.setCurrentWidget(self.dashboard)

    def export_run(self, run_dir: str, fmt: str) -> None:
        name = Path(run_dir).name
        if fmt == "config":
            out = self.choose_save_path("Export config", f"{name}.yaml", "YAML (*.yaml)")
            if out:
                try:
                    text, changes = config_as_ended(run_dir)
                    atomic_write_text(out, text)
                    ended = f" with the values the run ended with ({', '.join(changes)})" if changes else ""
                    self.statusBar().showMessage(f"config written to {out}{ended}", 10000)
                    if changes:
                        self._log(f"exported {out}: changed during the run, at their last values: "
                                  + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
                except Exception as e:  # noqa: BLE001 - a missing or broken config.yaml: reported, not fatal
                    self.report_error("Export", f"{type(e).__name__}: {e}")
            return
        ext = {"safetensors": ".safetensors"}.get(fmt, ".pth")
        stem = f"{name}-backbone" if fmt == "safetensors" else f"{name}-backbone-{fmt}"  # torchvision != timm keys
        out = self.choose_save_path(f"Export backbone ({fmt})", f"{stem}{ext}", f"*{ext}")
        if not out:
            return
        self.export_backbone_in_background(run_dir, fmt, out)

    def export_backbone_in_background(self, run_dir: str, fmt: str, out: str) -> bool:
        """Write a run's backbone weights off the GUI thread (loading a large checkpoint takes a while)."""
        from engine.export import export_backbone

        if self.export_job is not None and self.export_job.isRunning():
            self.report_error("Export", "an export is still being written; try again when it has finished")
            return False
        self.export_job = Job(lambda _stop: export_backbone(run_dir, fmt, out))
        self.export_job.done.connect(lambda meta, error: self._export_done(out, meta, error))
        self.statusBar().showMessage(f"writing the backbone to {out} …")
        self.export_job.start()
        return True

    def _export_done(self, out: str, meta: dict | None, error: str) -> None:
        if self.export_job is not None:
            self.export_job.wait()
        if meta is None:
            self.report_error("Export", error)
        else:
            text = f"backbone ({meta.get('arch')}, step {meta.get('step')}) written to {out}"
            self._log(text)
            self.statusBar().showMessage(text, 10000)
        self.export_finished.emit(out, meta)

    def _open_run_dialog(self) -> None:
        d = self.choose_directory("Open run folder", self.runs_dir)
        if d:
            self.open_run(d)

    def _choose_runs_dir(self) -> None:
        d = self.choose_directory("Runs folder", self.runs_dir)
        if d:
            self.set_runs_dir(d)

    def set_runs_dir(self, path: str) -> None:
        self.runs_dir = str(Path(path).expanduser())
        self.settings.setValue("runs_dir", self.runs_dir)
        if hasattr(self.runs_panel, "set_runs_dir"):
            self.runs_panel.set_runs_dir(self.runs_dir)
        self._update_runs_label()

    def _update_runs_label(self) -> None:
        self.runs_label.setText(f"runs: {self.runs_dir}")

    # ============================================================ dialogs
    def report_error(self, title: str, text: str) -> None:
        """Record and show an error (non-blocking)."""
        self.errors.append(text)
        self._log(f"{title}: {text}")
        self.show_error(title, text)

    def _show_error(self, title: str, text: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Critical, title, text, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.open()  # window-modal, does not block the event loop

    def _ask_question(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(self, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _choose_directory(self, title: str, start: str) -> str:
        return QFileDialog.getExistingDirectory(self, title, start)

    def _choose_save_path(self, title: str, name: str, filters: str) -> str:
        path, _ = QFileDialog.getSaveFileName(self, title, name, filters)
        return path

    def _screenshot_dialog(self) -> None:
        path = self.choose_save_path("Save screenshot", "ssl-studio.png", "PNG (*.png)")
        if path:
            self.save_screenshot(path)

    def save_screenshot(self, path: str) -> bool:
        """Save a picture of the whole window."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return self.grab().save(str(path))

    def save_panel_screenshots(self, folder: str) -> list[str]:
        """Pictures of the main panels (tests, documentation): one PNG each."""
        out = []
        Path(folder).mkdir(parents=True, exist_ok=True)
        panels = {"window": self, "library": self.library, "diagram": self.diagram, "inspector": self.inspector}
        current = self.tabs.currentIndex()
        for name, widget in panels.items():
            p = str(Path(folder) / f"{name}.png")
            if widget.grab().save(p):
                out.append(p)
        for i in range(self.tabs.count()):
            self.tabs.setCurrentIndex(i)
            QApplication.processEvents()
            p = str(Path(folder) / f"tab-{self.tabs.tabText(i).lower()}.png")
            if self.tabs.widget(i).grab().save(p):
                out.append(p)
        self.tabs.setCurrentIndex(current)
        return out

    def _about(self) -> None:
        from . import __version__

        QMessageBox.about(self, "About SSL Studio",
                          f"<b>SSL Studio</b> {__version__}<br>An experiment studio for self-supervised "
                          "visual representation learning.<br>Runs are written to "
                          f"<code>{self.runs_dir}</code>.")

    def _log(self, line: str) -> None:
        self.log_view.appendPlainText(f"{time.strftime('%H:%M:%S')}  {line}")

    # ============================================================== close
    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self.controller.is_running():
            if self._close_after_run:
                event.ignore()
                return
            if not self.ask_question("Stop the run?",
                                     "A run is in progress. Stop it (its checkpoint is kept) and close?"):
                event.ignore()
                return
            # stop cooperatively; the window closes when the run has saved its checkpoint
            self._close_after_run = True
            self.controller.stop()
            self.statusBar().showMessage("stopping the run; the window closes once its checkpoint is saved…")
            event.ignore()
            return
        if self.probe_job is not None and self.probe_job.isRunning():
            self.probe_job.cancel()  # stops at its next batch or epoch; shutdown() waits for it
        self.data_page.shutdown()
        self.save_settings()
        self._closing = True
        event.accept()
