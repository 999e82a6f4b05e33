"""The runs panel: lists run folders from their run.json, emits open/resume/compare/export."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from studio.runs_panel import COLUMNS, RunsPanel, run_row  # noqa: E402
from engine.rundir import RunDir  # noqa: E402


def _fake_run(parent: Path, name: str, summary: dict | None, mtime: float, ckpt: bool = False) -> Path:
    d = parent / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("method: byol\ndata:\n  source: cifar10\n")
    (d / "metrics.jsonl").write_text("")
    if summary is not None:
        (d / "run.json").write_text(json.dumps(summary))
    if ckpt:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "last.pt").write_bytes(b"x")
    os.utime(d / "config.yaml", (mtime, mtime))
    return d


@pytest.fixture
def runs(tmp_path):
    now = time.time()
    done = _fake_run(tmp_path, "simclr-done", {
        "status": "completed", "method": "simclr", "dataset": "shapes", "step": 500, "total_steps": 500,
        "best_knn_top1": 0.734, "updated": now - 3600}, now - 3600, ckpt=True)
    part = _fake_run(tmp_path, "dino-stopped", {
        "status": "stopped", "method": "dino", "dataset": "cifar10", "step": 120, "total_steps": 1000,
        "best_knn_top1": None, "updated": now - 60}, now - 60)
    (tmp_path / "not-a-run").mkdir()
    return tmp_path, done, part


def test_lists_runs_with_columns(qtbot, runs):
    root, done, part = runs
    p = RunsPanel(str(root))
    qtbot.addWidget(p)
    p.resize(900, 300)
    p.show()
    assert [p.table.horizontalHeaderItem(j).text() for j in range(p.table.columnCount())] == list(COLUMNS)
    texts = p.row_texts()
    assert len(texts) == 2
    assert texts[0][:7] == ["dino-stopped", "dino", "cifar10", "120 / 1000", "", "", "stopped"]
    assert texts[1][:7] == ["simclr-done", "simclr", "shapes", "500 / 500", "73.4%", "", "completed"]
    assert texts[1][7].count(":") == 1 and texts[1][7][:2] == "20"  # date YYYY-MM-DD HH:MM
    # a linear probe's result (ssl-eval linear or the panel's button) fills the Linear column
    (done / "linear_probe.json").write_text('{"linear_top1": 0.812, "step": 500}')
    p.refresh()
    assert [r for r in p.row_texts() if r[0] == "simclr-done"][0][5] == "81.2%"
    p.grab().save(str(root / "runs-panel.png"))

    # a run without run.json yet: method/dataset from config.yaml, status unknown
    _fake_run(root, "fresh", None, time.time())
    p.refresh()
    row = [r for r in p.rows() if r["name"] == "fresh"][0]
    assert (row["method"], row["dataset"], row["status"]) == ("byol", "cifar10", "unknown")
    assert run_row(RunDir(done))["checkpoint"] is True


def test_buttons_and_signals(qtbot, runs):
    root, done, part = runs
    p = RunsPanel(str(root))
    qtbot.addWidget(p)
    p.show()
    assert not p.open_btn.isEnabled() and not p.compare_btn.isEnabled()

    p.select_run_dirs([str(done)])
    assert p.open_btn.isEnabled() and not p.resume_btn.isEnabled()  # completed: no resume
    assert p.export_actions["torchvision"].isEnabled()  # has a checkpoint
    with qtbot.waitSignal(p.open_requested) as s:
        p.open_btn.click()
    assert s.args == [str(done)]
    with qtbot.waitSignal(p.export_requested) as s:
        p.export_actions["safetensors"].trigger()
    assert s.args == [str(done), "safetensors"]

    p.select_run_dirs([str(part)])
    assert p.resume_btn.isEnabled()
    assert not p.export_actions["timm"].isEnabled() and p.export_actions["config"].isEnabled()
    with qtbot.waitSignal(p.resume_requested) as s:
        p.resume_btn.click()
    assert s.args == [str(part)]
    with qtbot.waitSignal(p.export_requested) as s:
        p.export_actions["config"].trigger()
    assert s.args == [str(part), "config"]

    # double-click opens
    with qtbot.waitSignal(p.open_requested) as s:
        p.table.itemDoubleClicked.emit(p.table.item(0, 0))
    assert s.args == [str(part)]

    p.select_run_dirs([str(done), str(part)])
    assert p.compare_btn.isEnabled() and not p.open_btn.isEnabled()
    with qtbot.waitSignal(p.compare_requested) as s:
        p.compare_btn.click()
    assert sorted(s.args[0]) == sorted([str(done), str(part)])


def test_refresh_keeps_selection_and_follows_changes(qtbot, runs, tmp_path):
    root, done, part = runs
    p = RunsPanel(str(root))
    qtbot.addWidget(p)
    p.select_run_dirs([str(part)])
    s = json.loads((part / "run.json").read_text())
    s.update(status="running", step=300)
    (part / "run.json").write_text(json.dumps(s))
    p.refresh()
    assert p.selected_run_dirs() == [str(part)]
    row = [r for r in p.row_texts() if r[0] == "dino-stopped"][0]
    assert row[3] == "300 / 1000" and row[6] == "running"

    other = tmp_path / "elsewhere"
    other.mkdir()
    p.set_runs_dir(str(other))
    assert p.row_texts() == [] and p.runs_dir == str(other)
    assert p._timer.isActive() and p._timer.interval() <= 5000  # auto refresh
