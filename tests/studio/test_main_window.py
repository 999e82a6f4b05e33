"""The main window, offscreen: library, diagram, inspector, data page, runs, scripted mode.

Runs use the tiny SimCLR config (32 px shapes, batch 32, a few steps); long runs
are stopped explicitly. Every test ends with no run thread, data loader or
preview thread alive. Screenshots of the panels go to ``tmp_path``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QPoint, QSettings  # noqa: E402

from engine import events as ev  # noqa: E402
from engine.config import RunConfig, load_yaml, validate_config  # noqa: E402
from engine.methods import get_method, list_methods  # noqa: E402
from studio.runs_panel import COLUMNS  # noqa: E402
from studio.main_window import MainWindow  # noqa: E402

RUN_TIMEOUT_MS = 90_000


def _with(cfg: dict, **dotted) -> dict:
    out = copy.deepcopy(cfg)
    for key, value in dotted.items():
        cur = out
        *head, last = key.split(".")
        for p in head:
            cur = cur.setdefault(p, {})
        cur[last] = value
    return out


class Dialogs:
    """Injected dialogs: questions answered from a list, errors recorded."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.questions: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str]] = []

    def ask(self, title: str, text: str) -> bool:
        self.questions.append((title, text))
        return self.answer

    def error(self, title: str, text: str) -> None:
        self.errors.append((title, text))


def _threads_idle(win: MainWindow) -> bool:
    dp = win.data_page
    return (win.controller.thread is None
            and not (dp.loader is not None and dp.loader.isRunning())
            and not (dp.preview_job is not None and dp.preview_job.isRunning()))


@pytest.fixture
def make_window(qtbot, tmp_path, tiny_cfg_dict):
    """Factory of windows with temp settings / runs folder, tiny config and injected dialogs."""
    before = threading.active_count()
    made: list[MainWindow] = []

    def make(settings_name: str = "settings.ini", load_tiny: bool = True) -> MainWindow:
        settings = QSettings(str(tmp_path / settings_name), QSettings.Format.IniFormat)
        win = MainWindow(settings=settings, runs_dir=str(tmp_path / "runs"))
        win.dialogs = Dialogs()
        win.ask_question = win.dialogs.ask
        win.show_error = win.dialogs.error
        qtbot.addWidget(win)
        if load_tiny:
            win.inspector.load_config(tiny_cfg_dict)
        win.resize(1400, 900)
        win.show()
        made.append(win)
        return win

    yield make
    for win in made:
        win.shutdown(60)
        assert _threads_idle(win), "a test left a thread running"
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def _run(qtbot, win: MainWindow) -> tuple[str, str, str]:
    """Start a run and wait for it; (status, message, run_dir)."""
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as sig:
        run_dir = win.start_run()
        assert run_dir is not None
    return sig.args[0], sig.args[1], run_dir


def _events_recorder(win: MainWindow) -> list:
    got: list = []
    win.controller.events.connect(lambda b: got.extend(b))
    return got


# ---------------------------------------------------------------------------- layout
def test_window_opens_with_panels(make_window, tmp_path):
    win = make_window()
    assert set(win.library.methods()) == set(list_methods())
    assert win.library.current_method() == "simclr"
    assert len(win.diagram.blocks) > 0
    assert win.inspector.is_valid() and win.act_start.isEnabled()
    assert not win.act_pause.isEnabled() and not win.act_stop.isEnabled()
    assert [win.tabs.tabText(i) for i in range(win.tabs.count())] == ["Dashboard", "Data", "Runs", "Log"]
    shots = win.save_panel_screenshots(str(tmp_path / "shots"))
    assert len(shots) >= 8 and all(Path(p).stat().st_size > 0 for p in shots)


def test_each_method_shows_its_diagram_and_form(make_window, tmp_path):
    win = make_window()
    for name in win.library.methods():
        win.library.select(name)
        assert win.inspector.method() == name
        cls = get_method(name)
        assert len(win.diagram.blocks) == len(cls.diagram().blocks) > 0
        keys = win.inspector.keys()
        for p in cls.Params.model_fields:
            assert f"params.{p}" in keys
        assert "optim.lr" in keys and "aug.global_crops.scale" in keys
        win.diagram.grab().save(str(tmp_path / f"diagram-{name}.png"))
        win.inspector.grab().save(str(tmp_path / f"inspector-{name}.png"))


def test_block_click_filters_the_inspector(make_window, qtbot):
    win = make_window()
    block = next(b for b in win.diagram.diagram.blocks if b.params)
    item = win.diagram.blocks[block.id]
    pos = win.diagram.mapFromScene(item.sceneBoundingRect().center())
    qtbot.mouseClick(win.diagram.viewport(), qtbot_button(), pos=pos)
    assert win.diagram.selected_block().id == block.id
    visible = win.inspector.visible_keys()
    assert visible and set(visible) <= set(block.params)
    # empty space shows everything again
    qtbot.mouseClick(win.diagram.viewport(), qtbot_button(), pos=QPoint(3, 3))  # QPoint(0, 0) would mean 'the centre'
    assert win.diagram.selected_block() is None
    assert len(win.inspector.visible_keys()) == len(win.inspector.keys())


def qtbot_button():
    from PySide6.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_invalid_value_disables_start_with_the_reason(make_window, tmp_path):
    win = make_window()
    insp = win.inspector
    insp.set_text("optim.lr", "-1")
    assert not win.act_start.isEnabled()
    assert "optim.lr" in insp.error_text() and "greater than 0" in insp.error_text()
    assert insp.banner.isVisibleTo(insp)
    assert insp._rows["optim.lr"].error.isVisibleTo(insp)
    assert "optim.lr" in win.act_start.toolTip()
    insp.grab().save(str(tmp_path / "inspector-invalid.png"))
    # a second invalid value: each field shows its own reason, the banner counts the others
    insp.set_text("train.batch_size", "1")
    assert insp._rows["train.batch_size"].error.isVisibleTo(insp) and insp._rows["optim.lr"].error.isVisibleTo(insp)
    assert "train.batch_size" in insp._rows["train.batch_size"].message and "and 1 more" in insp.banner.text()
    insp.set_text("train.batch_size", "32")
    assert not insp._rows["train.batch_size"].error.isVisibleTo(insp) and "more" not in insp.banner.text()
    insp.set_text("optim.lr", "abc")
    assert not win.act_start.isEnabled() and "not a number" in insp.error_text()
    insp.set_text("optim.lr", "0.01")
    assert win.act_start.isEnabled() and insp.error_text() == ""
    # a tuple whose items contradict each other (cross-field check of the engine)
    ed = insp.editor("aug.global_crops.scale")
    ed.edits[0].setText("0.9")
    ed.edits[1].setText("0.5")
    insp._on_edited("aug.global_crops.scale")
    assert not win.act_start.isEnabled() and "aug.global_crops.scale" in insp.error_text()
    assert win.start_run() is None and win.controller.thread is None
    # an unparsable text, then another method: no error stays hidden behind the rebuilt form
    insp.set_value("aug.global_crops.scale", [0.2, 1.0])
    insp.set_text("optim.lr", "abc")
    assert not win.act_start.isEnabled()
    win.select_method("byol")
    assert win.act_start.isEnabled() and insp.error_text() == "" and insp.editor("optim.lr").edit.text() == "0.01"


def test_a_setup_the_method_refuses_disables_start_with_its_reason(make_window, qtbot, tmp_path):
    """Values each in range, a combination the method refuses (engine.preflight): Start is
    disabled with the method's own reason on the setting it names, as for a value out of range."""
    win = make_window()
    insp = win.inspector
    win.select_method("mae")  # the tiny setup's ResNet-18 stays: MAE needs a ViT
    qtbot.waitUntil(lambda: not win.act_start.isEnabled(), timeout=10_000)
    assert "MAE needs a ViT encoder" in insp.error_text() and "MAE needs a ViT" in win.act_start.toolTip()
    assert insp.banner.isVisibleTo(insp) and insp._rows["model.arch"].error.isVisibleTo(insp)
    assert win.start_run() is None and win.controller.thread is None
    assert "MAE needs a ViT" in win.dialogs.errors[-1][1]
    insp.set_value("model.arch", "vit_tiny")
    insp.set_value("model.patch_size", 4)
    qtbot.waitUntil(lambda: win.act_start.isEnabled(), timeout=10_000)
    assert insp.error_text() == "" and not insp.banner.isVisibleTo(insp)
    # Start right after an edit does not wait for the background check: it makes it at once
    insp.set_value("model.num_heads", 5)  # 5 heads cannot split the 192 channels of vit_tiny
    assert win.start_run() is None and win.controller.thread is None
    assert "num_heads" in win.dialogs.errors[-1][1] and not win.act_start.isEnabled()
    insp.set_value("model.num_heads", None)
    # crops larger than the images: known from the shapes' size before anything is loaded
    insp.set_value("aug.global_crops.size", 48)
    qtbot.waitUntil(lambda: not win.act_start.isEnabled(), timeout=10_000)
    assert "images are 32 px but the crops are 48 px" in insp.error_text()
    assert insp._rows["aug.global_crops.size"].error.isVisibleTo(insp)
    # a setup seen before answers at once (no wait)
    insp.set_value("aug.global_crops.size", 32)
    assert win.act_start.isEnabled() and insp.error_text() == ""
    # the refusal offers the method's own presets; one loads with the chosen dataset and device kept
    insp.set_value("model.arch", "resnet18")
    insp.set_value("data.source", str(tmp_path / "my-images"))
    insp.set_value("train.device", "cpu")
    qtbot.waitUntil(lambda: not win.act_start.isEnabled(), timeout=10_000)
    assert "preset:mae_small" in insp.banner.text() and "preset:simclr" not in insp.banner.text()
    insp.banner.linkActivated.emit("preset:mae_small")
    assert insp.current_preset() == "mae_small" and insp.value("model.arch") == "vit_tiny"
    assert insp.value("data.source") == str(tmp_path / "my-images") and insp.value("train.device") == "cpu"
    assert insp.check_now() and win.act_start.isEnabled()


def test_the_method_check_uses_the_loaded_images_size(make_window, qtbot, tmp_path):
    """A folder at its native size: the size is known once the data page has loaded it, and
    the method is checked again then (a Swin needs a multiple of 32 px)."""
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(d / f"{i}.png")
    win = make_window()
    insp = win.inspector
    insp.set_value("model.arch", "swin_tiny")
    insp.set_value("aug.global_crops.size", None)
    insp.set_value("data.source", str(tmp_path / "imgs"))
    qtbot.wait(400)
    assert insp.check_now() and win.act_start.isEnabled()  # size unknown: the run decides
    win.tabs.setCurrentWidget(win.data_page)
    win.data_page.load()
    qtbot.waitUntil(lambda: win.data_page.splits is not None and not win.data_page.is_loading(), timeout=30_000)
    qtbot.waitUntil(lambda: not win.act_start.isEnabled(), timeout=10_000)
    assert "multiple of 32 (got 40)" in insp.error_text()


def test_changed_values_are_marked_in_form_and_diagram(make_window):
    win = make_window()
    insp = win.inspector
    assert insp.changed_keys() == set()
    insp.set_text("params.temperature", "0.2")
    assert "params.temperature" in insp.changed_keys()
    assert insp._rows["params.temperature"].label.font().bold()
    loss_blocks = [bid for bid, it in win.diagram.blocks.items() if "params.temperature" in it.block.params]
    assert loss_blocks and set(loss_blocks) <= set(win.diagram.changed_blocks())
    insp.reset_to_baseline()
    assert insp.changed_keys() == set() and win.diagram.changed_blocks() == []


def test_editors_follow_the_schema(make_window):
    from studio.inspector import BoolEditor, EnumEditor, LineEditor, TupleEditor

    insp = make_window().inspector
    assert isinstance(insp.editor("optim.optimizer"), EnumEditor)
    assert isinstance(insp.editor("optim.scale_lr"), BoolEditor)
    assert isinstance(insp.editor("aug.ratio"), TupleEditor)
    assert isinstance(insp.editor("aug.mean"), TupleEditor) and len(insp.editor("aug.mean").edits) == 3
    lr = insp.editor("optim.lr")
    assert isinstance(lr, LineEditor) and "value ≤ 100" in lr.toolTip()
    size = insp.editor("data.image_size")
    assert size.auto is not None and size.auto.isChecked()  # optional: 'auto'
    assert insp.editor("model.cifar_stem").combo is not None  # optional bool: auto / on / off
    assert "params.temperature" in insp.live_keys() and "optim.lr" in insp.live_keys()
    # blur_p: a probability or one per view
    insp.set_text("aug.blur_p", "1.0, 0.1")
    assert insp.value("aug.blur_p") == [1.0, 0.1] and insp.is_valid()
    size.auto.setChecked(False)
    insp.set_text("data.image_size", "32")
    assert insp.value("data.image_size") == 32 and insp.is_valid()
    size.auto.setChecked(True)
    assert insp.value("data.image_size") is None


def test_settings_the_setup_ignores_are_greyed_out(make_window):
    insp = make_window().inspector
    insp.set_text("model.arch", "resnet18")
    insp.set_value("optim.optimizer", "adamw")
    insp.set_text("data.source", "shapes")
    on = lambda key: insp.editor(key).isEnabled()  # noqa: E731
    assert on("model.cifar_stem") and not on("model.patch_size") and not on("model.drop_path")
    assert on("optim.betas") and not on("optim.momentum") and not on("optim.lars_eta") and not on("optim.lars_clip")
    assert on("data.shapes_size") and not on("data.workers") and not on("data.cache_dir")
    assert "applies when model.arch is vit*" in insp.editor("model.patch_size").toolTip()
    insp.set_text("model.arch", "vit_tiny")
    combo = insp.editor("optim.optimizer").combo
    combo.setCurrentText("lars")
    combo.activated.emit(combo.currentIndex())  # as when a user picks it
    assert not on("model.cifar_stem") and on("model.patch_size") and on("model.drop_path")
    assert not on("optim.betas") and on("optim.momentum") and on("optim.lars_eta") and on("optim.lars_clip")
    assert "not used" not in insp.editor("model.patch_size").toolTip()
    insp.set_text("model.arch", "swin_tiny")
    assert not on("model.patch_size") and on("model.drop_path")  # Swin's patch is its model's
    insp.set_text("data.source", "/data/cifar10.tar.gz")
    assert not on("data.shapes_size") and on("data.workers") and on("data.cache_dir")
    assert insp.is_valid()  # greyed-out settings stay in the config and never block Start


def test_presets_and_yaml_round_trip(make_window, tmp_path):
    win = make_window()
    insp = win.inspector
    win.load_preset("quick_cpu")
    assert insp.current_preset() == "quick_cpu" and insp.changed_keys() == set()
    insp.set_text("optim.lr", "0.005")
    path = tmp_path / "setup.yaml"
    insp.save_file_dialog = lambda: str(path)
    insp._save_clicked()
    saved = validate_config(load_yaml(path))  # what ssl-train --config reads
    assert saved.optim.lr == 0.005 and saved.method == "simclr"
    insp.load_preset("simclr_v2")
    assert insp.value("params.temperature") == 0.1
    insp.open_file_dialog = lambda: str(path)
    insp._open_clicked()
    assert insp.value("optim.lr") == 0.005 and insp.changed_keys() == set()
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: -3}\n")
    insp.open_file_dialog = lambda: str(bad)
    insp._open_clicked()
    assert win.dialogs.errors and "optim.lr" in win.dialogs.errors[-1][1]
    assert insp.value("optim.lr") == 0.005  # nothing changed
    # a preset names its method: choosing another method leaves the preset
    insp.load_preset("quick_cpu")
    other = next(m for m in win.library.methods() if m != "simclr")
    win.library.select(other)
    assert insp.method() == other and insp.current_preset() is None
    assert insp.preset_combo.currentIndex() == 0


# ------------------------------------------------------------------------------ runs
def test_short_run_emits_curves_then_reopens_and_resumes(make_window, qtbot, tmp_path, tiny_cfg_dict):
    win = make_window()
    win.inspector.load_config(_with(tiny_cfg_dict, **{"train.steps": 4}))
    got = _events_recorder(win)
    status, message, run_dir = _run(qtbot, win)
    assert (status, message) == ("completed", "")
    assert re.fullmatch(r"simclr-\d{8}-\d{6}(-\d+)?", Path(run_dir).name)
    assert Path(run_dir).parent == tmp_path / "runs"
    assert len([e for e in got if isinstance(e, ev.StepMetrics)]) == 4 and isinstance(got[-1], ev.Finished)
    dash = win.dashboard
    if hasattr(dash, "series"):
        x, _ = dash.series("loss")
        assert len(x) == 4
    assert win.progress.value() == 4
    assert win.act_start.isEnabled() and win.library.isEnabled()
    assert not win.dialogs.errors
    win.save_panel_screenshots(str(tmp_path / "after-run"))

    # the past run reopens from the runs panel: its curves and its own config come back
    pytest.importorskip("studio.runs_panel")
    win.runs_panel.refresh()
    assert run_dir in [r["run_dir"] for r in win.runs_panel.rows()]
    win.inspector.set_text("optim.lr", "0.05")
    win.dashboard.clear()
    win.runs_panel.open_requested.emit(run_dir)
    assert win.opened_run == run_dir
    assert win.inspector.value("optim.lr") == pytest.approx(1e-3)
    if hasattr(dash, "series"):
        x, _ = dash.series("loss")
        assert len(x) == 4
    win.tabs.setCurrentWidget(win.runs_panel)
    win.grab().save(str(tmp_path / "runs-tab.png"))

    # ... and continues from its checkpoint for two more steps
    cfg = load_yaml(Path(run_dir) / "config.yaml")
    cfg["train"]["steps"] = 6
    cfg["train"]["device"] = "auto"  # saved elsewhere: the device picked here is the one used
    (Path(run_dir) / "config.yaml").write_text(RunConfig(**cfg).to_yaml())
    win.device_picker.set_device("cpu")
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as sig:
        win.runs_panel.resume_requested.emit(run_dir)
    assert sig.args[0] == "completed"
    assert win.device_picker.device() == "cpu" and load_yaml(Path(run_dir) / "config.yaml")["train"]["device"] == "cpu"
    rows = ev.read_metrics(str(Path(run_dir) / "metrics.jsonl"))
    starts = [r for r in rows if r["event"] == "run_started"]
    assert len(starts) == 2 and starts[1]["resumed"] is True and starts[1]["step"] == 4
    assert [r for r in rows if r["event"] == "finished"][-1]["step"] == 6

    # a linear probe of the run, in the background; the result fills the panel's Linear column
    win.runs_panel.refresh()
    win.runs_panel.select_run_dirs([run_dir])
    assert win.runs_panel.probe_btn.isEnabled()
    with qtbot.waitSignal(win.probe_finished, timeout=RUN_TIMEOUT_MS) as sig:
        win.runs_panel.probe_btn.click()
        assert not win.runs_panel.probe_btn.isEnabled()  # one probe at a time
    res = sig.args[1]
    assert 0.0 <= res["linear_top1"] <= 1.0 and res["step"] == 6
    assert json.loads((Path(run_dir) / "linear_probe.json").read_text())["linear_top1"] == res["linear_top1"]
    row = next(r for r in win.runs_panel.row_texts() if r[0] == Path(run_dir).name)
    assert row[COLUMNS.index("Linear")] == f"{res['linear_top1']:.1%}"
    assert win.runs_panel.probe_btn.isEnabled() and not win.dialogs.errors
    # exports: the backbone is written in the background (torchvision weights, strict load), the config at once
    win.choose_save_path = lambda *_a: str(tmp_path / "exported" / "bb.pth")
    with qtbot.waitSignal(win.export_finished, timeout=RUN_TIMEOUT_MS) as sig:
        win.runs_panel.export_requested.emit(run_dir, "torchvision")
    assert sig.args[1]["step"] == 6
    import torch
    import torchvision

    bb = torchvision.models.resnet18()
    bb.fc = torch.nn.Identity()
    bb.load_state_dict(torch.load(tmp_path / "exported" / "bb.pth", weights_only=True), strict=True)
    win.choose_save_path = lambda *_a: str(tmp_path / "exported" / "run.yaml")
    win.runs_panel.export_requested.emit(run_dir, "config")
    assert validate_config(load_yaml(tmp_path / "exported" / "run.yaml")).train.steps == 6
    # a setting changed during the run is exported at the value the run ended with
    summary = json.loads((Path(run_dir) / "run.json").read_text())
    (Path(run_dir) / "run.json").write_text(json.dumps({**summary, "live": {"optim.lr": 0.25}}))
    win.runs_panel.export_requested.emit(run_dir, "config")
    exported = validate_config(load_yaml(tmp_path / "exported" / "run.yaml"))
    assert exported.optim.lr == 0.25 and exported.train.steps == 6
    assert "optim.lr" in win.statusBar().currentMessage()
    # a run whose data is gone: the engine's message in a dialog, the window stays usable
    cfg["data"]["source"] = str(tmp_path / "gone")
    (Path(run_dir) / "config.yaml").write_text(RunConfig(**cfg).to_yaml())
    assert win.linear_probe_run(run_dir)
    qtbot.waitUntil(lambda: bool(win.dialogs.errors), timeout=RUN_TIMEOUT_MS)
    assert "gone" in win.dialogs.errors[-1][1] and win.runs_panel.probe_btn.isEnabled()


def test_pause_resume_live_change_and_close_during_a_run(make_window, qtbot, tiny_cfg_dict, tmp_path):
    win = make_window()
    win.inspector.load_config(_with(tiny_cfg_dict, **{"train.steps": 100_000}))
    got = _events_recorder(win)

    def n_steps() -> int:
        return len([e for e in got if isinstance(e, ev.StepMetrics)])

    run_dir = win.start_run()
    assert not win.act_start.isEnabled() and win.act_pause.isEnabled() and win.act_stop.isEnabled()
    # only live-tunable settings stay editable during a run
    assert win.inspector.editor("params.temperature").isEnabled()
    assert win.inspector.editor("optim.lr").isEnabled()
    assert not win.inspector.editor("model.arch").isEnabled()
    assert not win.library.isEnabled() and not win.device_picker.isEnabled()
    qtbot.waitUntil(lambda: n_steps() > 0, timeout=RUN_TIMEOUT_MS)

    # pause / resume
    win.act_pause.trigger()
    qtbot.waitUntil(lambda: any(isinstance(e, ev.StatusChanged) and e.status == "paused" for e in got),
                    timeout=30_000)
    assert win.act_resume.isEnabled() and not win.act_pause.isEnabled()
    n = n_steps()
    qtbot.wait(500)
    assert n_steps() == n, "a paused run must not advance"
    win.act_resume.trigger()
    qtbot.waitUntil(lambda: n_steps() > n, timeout=30_000)

    # live change: a refused value is shown on the field and the run goes on; a good one is applied
    win.inspector.set_text("params.temperature", "-2")
    assert "params.temperature" in win.inspector.error_text()
    win.inspector.set_text("params.temperature", "0.3")
    qtbot.waitUntil(lambda: any(isinstance(e, ev.LiveChange) for e in got), timeout=30_000)
    assert win.inspector.value("params.temperature") == 0.3
    assert [e.new for e in got if isinstance(e, ev.LiveChange)] == [0.3]
    win.grab().save(str(tmp_path / "during-run.png"))

    # closing asks; "no" keeps the run, "yes" stops it cleanly (checkpoint kept), then closes
    win.dialogs.answer = False
    assert not win.close()
    assert win.isVisible() and win.controller.is_running()
    win.dialogs.answer = True
    with qtbot.waitSignal(win.run_finished, timeout=RUN_TIMEOUT_MS) as sig:
        win.close()
    assert len(win.dialogs.questions) == 2
    assert sig.args[0] == "stopped"
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=10_000)
    assert win.controller.thread is None
    assert (Path(run_dir) / "checkpoints" / "last.pt").is_file()
    rows = ev.read_metrics(str(Path(run_dir) / "metrics.jsonl"))
    live = [r for r in rows if r["event"] == "live_change"]
    assert live and live[0]["key"] == "params.temperature" and live[0]["new"] == 0.3
    assert "live_change" in (Path(run_dir) / "events.log").read_text()
    # reopened (another window), the run shows the value it ended with, marked as changed
    # against its config.yaml, and a resume goes on with it
    assert load_yaml(Path(run_dir) / "config.yaml")["params"]["temperature"] != 0.3
    win2 = make_window("settings2.ini")
    win2.open_run(run_dir)
    assert win2.inspector.value("params.temperature") == 0.3
    assert "params.temperature" in win2.inspector.changed_keys() and win2.inspector.is_valid()


def test_failed_run_shows_the_error_and_the_window_stays_usable(make_window, qtbot, tmp_path):
    win = make_window()
    win.inspector.set_value("data.source", str(tmp_path / "missing-images"))
    status, message, _ = _run(qtbot, win)
    assert status == "failed" and "missing-images" in message
    assert win.dialogs.errors and "missing-images" in win.dialogs.errors[-1][1]
    assert win.act_start.isEnabled() and win.library.isEnabled()
    assert win.inspector.editor("model.arch").isEnabled()
    assert not win.act_stop.isEnabled() and win.controller.state == "idle"
    win.grab().save(str(tmp_path / "after-failure.png"))
    # usable: settings can change and another method can be chosen
    win.inspector.set_value("data.source", "shapes")
    assert win.inspector.is_valid() and win.act_start.isEnabled()


# ------------------------------------------------------------------------- settings
def test_settings_persist_between_sessions(make_window, tmp_path):
    win = make_window(settings_name="persist.ini", load_tiny=False)
    win.restore_session("quick_cpu")
    assert win.inspector.current_preset() == "quick_cpu"
    win.select_method("dino")
    (tmp_path / "my-images").mkdir()
    win.inspector.set_value("data.source", str(tmp_path / "my-images"))
    win.resize(1234, 777)
    win.tabs.setCurrentIndex(2)
    win.save_settings()
    win.close()
    again = make_window(settings_name="persist.ini", load_tiny=False)
    again.restore_session("quick_cpu")
    assert again.inspector.value("data.source") == str(tmp_path / "my-images")
    assert again.inspector.method() == "dino" and again.library.current_method() == "dino"
    assert again.tabs.currentIndex() == 2
    assert again.settings.value("last_method") == "dino"
    again.close()
    # what the last session named may be gone: a deleted folder, a GPU of another machine
    s = again.settings
    s.setValue("last_dataset", str(tmp_path / "deleted-images"))
    s.setValue("device", "cuda:7")
    s.sync()
    third = make_window(settings_name="persist.ini", load_tiny=False)
    third.restore_session("quick_cpu")
    assert third.inspector.value("data.source") == "shapes" and third.inspector.value("train.device") != "cuda:7"
    assert "cuda:7" not in [third.device_picker.itemData(i) for i in range(third.device_picker.count())]


# ----------------------------------------------------------------------------- data
def test_data_page_loads_and_previews_augmentation(make_window, qtbot, tmp_path):
    win = make_window()
    page = win.data_page
    win.tabs.setCurrentWidget(page)
    with qtbot.waitSignal(page.preview_updated, timeout=60_000):
        page.choose_source("shapes")
        assert page.is_busy()  # a scripted screenshot of this page waits for it
    qtbot.waitUntil(lambda: not page.is_busy(), timeout=10_000)
    s = page.splits
    assert len(s.train) == 256 and len(s.test) == 128 and s.image_size == 32
    assert page.info_labels["train"].text().startswith("256")
    assert page.info_labels["image size"].text() == "32 × 32 px, with depth and seg maps"
    # the grid ends with the first images and their maps, the maps' pixels from the data
    from studio.data_page import thumbnail_rows

    rows = dict(thumbnail_rows(s))
    assert [name for name, _ in thumbnail_rows(s)][-3:] == ["images", "depth", "segmentation"]
    assert len(rows["depth"]) == 8 and (rows["depth"][0][0][0] == s.train.extras["depth"][0, 0].numpy()).all()
    seg0, pic = s.train.extras["seg"][0].numpy(), rows["segmentation"][0][0]
    assert pic.shape == (3, 32, 32) and len({tuple(pic[:, y, x]) for y, x in zip(*np.nonzero(seg0 == 0))}) == 1
    assert not page.thumbs.pixmap().isNull() and not page.preview.pixmap().isNull()
    assert page.data_for(win.inspector.config()) is s
    before = page.preview.pixmap().toImage()
    # an aug.* change refreshes the preview (debounced)
    with qtbot.waitSignal(page.preview_updated, timeout=30_000):
        win.inspector.set_text("aug.local_crops.count", "2")
    after = page.preview.pixmap().toImage()
    assert after.width() > before.width()  # two more columns: the local crops
    page.grab().save(str(tmp_path / "data-page.png"))
    # a masked-image method: its mask settings refresh the masked-input column too
    with qtbot.waitSignal(page.preview_updated, timeout=30_000):
        win.library.select("mae")
    before = page.preview.pixmap().toImage()
    with qtbot.waitSignal(page.preview_updated, timeout=30_000):
        win.inspector.set_text("params.mask_ratio", "0.25")
    assert page.preview.pixmap().toImage() != before  # fewer grey patches
    # a bad path: the message is shown, nothing crashes
    with qtbot.waitSignal(page.load_failed, timeout=30_000) as sig:
        page.choose_source(str(tmp_path / "nothing-here"))
    assert "nothing-here" in sig.args[0]
    assert win.inspector.value("data.source") == str(tmp_path / "nothing-here")
    # correcting the source after the failure loads it again
    win.inspector.set_text("data.source", str(tmp_path / "still-nothing"))
    qtbot.waitUntil(lambda: "still-nothing" in page.status.text() and not page.is_loading(), timeout=30_000)
    win.inspector.set_text("data.source", "shapes")
    qtbot.waitUntil(lambda: page.status.text().startswith("Loaded"), timeout=30_000)


def test_closing_during_a_large_data_load_does_not_wait_for_it(make_window, qtbot):
    """The data page decodes in the background; closing the window (or choosing another source)
    stops that load at its next chunk instead of waiting for the whole dataset."""
    import time

    win = make_window()
    page = win.data_page
    win.inspector.set_text("data.shapes_train", "300000")  # minutes of generation on 2 cores
    win.tabs.setCurrentWidget(page)
    page.choose_source("shapes")
    qtbot.waitUntil(page.is_loading, timeout=10_000)
    qtbot.wait(300)
    t0 = time.monotonic()
    page.shutdown()
    assert time.monotonic() - t0 < 20
    assert not page.is_loading() and page.splits is None


# --------------------------------------------------------------------------- scripted
def test_scripted_mode_runs_and_saves_a_screenshot(qtbot, tmp_path, tiny_cfg_dict, capsys):
    from studio import app

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(validate_config(_with(tiny_cfg_dict, **{"train.steps": 3})).to_yaml())
    shot = tmp_path / "studio.png"
    rc = app.main(["--run", str(cfg_path), "--data", "shapes", "--steps", "2", "--screenshot", str(shot),
                   "--set", "optim.lr=0.0123", "--set", "params.temperature=0.3", "--set", "train.device=cpu",
                   "--quit", "--runs-dir", str(tmp_path / "runs"), "--settings", str(tmp_path / "s.ini")])
    assert rc == 0, capsys.readouterr().err
    assert shot.is_file() and shot.stat().st_size > 10_000
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    rows = ev.read_metrics(str(runs[0] / "metrics.jsonl"))
    assert rows[-1]["event"] == "finished" and rows[-1]["step"] == 2
    cfg = load_yaml(runs[0] / "config.yaml")  # --set reached the run (as ssl-train --set)
    assert cfg["optim"]["lr"] == 0.0123 and cfg["params"]["temperature"] == 0.3


def test_scripted_mode_leaves_the_users_settings_alone(qtbot, tmp_path, tiny_cfg_dict, capsys, monkeypatch):
    from studio import app

    user = tmp_path / "user.ini"
    before = QSettings(str(user), QSettings.Format.IniFormat)
    before.setValue("last_method", "dino")
    before.setValue("runs_dir", str(tmp_path / "my-runs"))
    before.sync()
    text = user.read_text()
    monkeypatch.setenv("SSL_STUDIO_SETTINGS", str(user))  # the user's own settings file
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(validate_config(_with(tiny_cfg_dict, **{"train.steps": 2})).to_yaml())
    rc = app.main(["--run", str(cfg_path), "--quit", "--runs-dir", str(tmp_path / "elsewhere"),
                   "--size", "1100x700"])
    assert rc == 0, capsys.readouterr().err
    assert user.read_text() == text  # no runs_dir, method, window size or device written


@pytest.mark.parametrize("bad, says", [
    ("optim.no_such_key=1", "unknown setting 'optim.no_such_key'"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.lr", "key=value"),
    ("aug.global_crops.count=1", "SimCLR contrasts two views"),  # the method's own check
])
def test_scripted_mode_rejects_a_bad_set(qtbot, tmp_path, capsys, bad, says):
    from studio import app

    rc = app.main(["--run", "quick_cpu", "--set", bad, "--quit", "--runs-dir", str(tmp_path / "runs"),
                   "--settings", str(tmp_path / "s.ini")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and says in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_scripted_mode_reports_a_failed_run(qtbot, tmp_path, tiny_cfg_dict, capsys):
    from studio import app

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(validate_config(tiny_cfg_dict).to_yaml())
    rc = app.main(["--run", str(cfg_path), "--data", str(tmp_path / "absent.tar.gz"), "--quit",
                   "--runs-dir", str(tmp_path / "runs"), "--settings", str(tmp_path / "s.ini")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "run failed" in err and "absent.tar.gz" in err
    assert app.main(["--run", "no_such_preset", "--quit", "--settings", str(tmp_path / "s.ini")]) == 2


def test_show_tabs_selects_a_dashboard_tab_and_its_page(make_window):
    from PySide6.QtWidgets import QTabWidget

    from studio.app import show_tabs

    win = make_window()
    assert show_tabs(win, ["log"]) == ["Log"]  # an outer page first
    chosen = show_tabs(win, ["attention"])
    assert chosen == ["Attention"]
    selected = [t.tabText(t.currentIndex()) for t in win.findChildren(QTabWidget)]
    assert "Attention" in selected and "Dashboard" in selected  # the page holding it is shown too
    assert show_tabs(win, ["no such tab"]) == []


def test_the_entry_point_shows_a_splash_before_the_heavy_imports(qtbot):
    """ssl-studio must put something on screen at once: its module loads without PyTorch (the
    seconds of importing torch, timm and the methods come after the splash is shown)."""
    import subprocess
    import sys

    code = ("import sys, studio.app; from studio.theme import splash_screen; "
            "from PySide6.QtWidgets import QApplication; app = QApplication([]); "
            "s = splash_screen('loading'); print('torch' in sys.modules, s.isVisible())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]
