"""The run worker: trainer in a worker thread, batched events, cooperative control, failures."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from engine import events as ev  # noqa: E402
from engine.config import validate_config  # noqa: E402
from engine.errors import ConfigError  # noqa: E402
from studio.worker import EventBuffer, RunController, device_choices, make_run_dir  # noqa: E402

RUN_TIMEOUT_MS = 90_000


def _cfg(tiny_cfg_dict, **dotted):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tiny_cfg_dict.items()}
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    return validate_config(raw)


class Recorder:
    """Collects the controller's batches (GUI thread)."""

    def __init__(self, controller: RunController) -> None:
        self.batches: list[list[ev.Event]] = []
        self.times: list[float] = []
        controller.events.connect(self.on_batch)

    def on_batch(self, batch: list) -> None:
        self.batches.append(list(batch))
        self.times.append(time.monotonic())

    @property
    def events(self) -> list[ev.Event]:
        return [e for b in self.batches for e in b]

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def controller(qtbot):
    before = threading.active_count()
    c = RunController()
    yield c
    c.shutdown(60)
    assert c.thread is None
    # the worker is a QThread: nothing of it may survive the test
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_event_buffer_is_thread_safe():
    buf = EventBuffer()

    def produce(k: int) -> None:
        for i in range(500):
            buf.append(ev.StepMetrics(i, epoch=k, loss=1.0, lr=0.1, weight_decay=0.0, images_per_s=1.0))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    got: list = []
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        got += buf.drain()
    for t in threads:
        t.join()
    got += buf.drain()
    assert len(got) == 2000 and len(buf) == 0


def test_run_folder_names(tmp_path):
    t = time.mktime((2024, 5, 6, 7, 8, 9, 0, 0, -1))
    a = make_run_dir(tmp_path / "runs", "simclr", now=t)
    b = make_run_dir(tmp_path / "runs", "simclr", now=t)
    assert a.name == "simclr-20240506-070809" and a.is_dir()
    assert b.name == "simclr-20240506-070809-2"
    assert re.fullmatch(r"byol-\d{8}-\d{6}", make_run_dir(tmp_path, "byol").name)


def test_device_choices_list_cpu_and_gpus():
    import torch

    values = [v for v, _ in device_choices()]
    assert values[:2] == ["auto", "cpu"]
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(values) == 2 + n_gpu


def test_run_completes_with_batched_events(controller, qtbot, tiny_cfg_dict, tmp_path):
    rec = Recorder(controller)
    run_dir = tmp_path / "run"
    with qtbot.waitSignal(controller.finished, timeout=RUN_TIMEOUT_MS) as sig:
        controller.start(_cfg(tiny_cfg_dict), run_dir)
        assert controller.is_running()
    assert sig.args == ["completed", ""]
    events = rec.events
    assert isinstance(events[0], ev.RunStarted) and isinstance(events[-1], ev.Finished)
    assert len(rec.of(ev.StepMetrics)) == 6  # log_every 1
    # events arrive in batches, never more often than the pump's interval (~5 a second)
    gaps = [b - a for a, b in zip(rec.times, rec.times[1:-1])]
    assert all(g > 0.12 for g in gaps), gaps
    assert len(rec.batches) < len(events)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert controller.state == "idle" and not controller.is_running()


def test_pause_resume_live_change_and_stop(controller, qtbot, tiny_cfg_dict, tmp_path):
    rec = Recorder(controller)
    controller.start(_cfg(tiny_cfg_dict, **{"train.steps": 100_000}), tmp_path / "run")
    qtbot.waitUntil(lambda: bool(rec.of(ev.StepMetrics)), timeout=RUN_TIMEOUT_MS)
    # pause: the run stops advancing
    controller.pause()
    qtbot.waitUntil(lambda: any(e.status == "paused" for e in rec.of(ev.StatusChanged)), timeout=30_000)
    trainer = controller.worker.trainer
    step = trainer.step
    qtbot.wait(500)
    assert trainer.step == step, "a paused run must not advance"
    assert controller.state == "paused"
    # live changes: refused ones raise at once, accepted ones are applied (even while paused)
    with pytest.raises(ConfigError, match="params.temperature"):
        controller.set_param("params.temperature", -1.0)
    with pytest.raises(ConfigError, match="cannot change during a run"):
        controller.set_param("model.arch", "resnet50")
    controller.set_param("params.temperature", 0.25)
    qtbot.waitUntil(lambda: bool(rec.of(ev.LiveChange)), timeout=30_000)
    change = rec.of(ev.LiveChange)[0]
    assert (change.key, change.new) == ("params.temperature", 0.25)
    # resume: it advances again
    controller.resume()
    assert controller.state == "running"
    qtbot.waitUntil(lambda: trainer.step > step, timeout=30_000)
    # stop: within a step, with a checkpoint
    with qtbot.waitSignal(controller.finished, timeout=RUN_TIMEOUT_MS) as sig:
        controller.stop()
    assert sig.args[0] == "stopped"
    assert rec.of(ev.Finished)[-1].step < 100_000
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    rows = ev.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert any(r["event"] == "live_change" and r["key"] == "params.temperature" and r["new"] == 0.25 for r in rows)


def test_failed_run_reports_the_engine_message(controller, qtbot, tiny_cfg_dict, tmp_path):
    rec = Recorder(controller)
    missing = tmp_path / "no-such-folder"
    with qtbot.waitSignal(controller.finished, timeout=RUN_TIMEOUT_MS) as sig:
        controller.start(_cfg(tiny_cfg_dict, **{"data.source": str(missing)}), tmp_path / "run")
    status, message = sig.args
    assert status == "failed"
    assert "no-such-folder" in message
    assert rec.of(ev.Error) and isinstance(rec.events[-1], ev.Finished)
    # the controller is ready for the next run
    assert not controller.is_running()
    with pytest.raises(ConfigError):
        controller.set_param("optim.lr", 0.1)


def test_stop_before_the_trainer_exists_and_wait(controller, tiny_cfg_dict, tmp_path):
    """A stop issued right after start (before the worker built the trainer) still stops the run;
    wait() (used when the window closes) joins the thread and flushes the last events itself."""
    got: list = []
    controller.events.connect(lambda b: got.extend(b))
    controller.start(_cfg(tiny_cfg_dict, **{"train.steps": 100_000}), tmp_path / "run")
    controller.stop()
    assert controller.wait(RUN_TIMEOUT_MS / 1000)
    assert not controller.is_running() and controller.state == "idle"
    assert isinstance(got[-1], ev.Finished) and got[-1].status == "stopped"
    assert Path(tmp_path / "run" / "run.json").is_file()


def test_garbage_with_qt_objects_is_collected_in_the_gui_thread_only(qtbot):
    """Python's automatic collection would free cyclic garbage in whichever thread allocates:
    Qt objects in it would then be destroyed off the GUI thread (a deadlock seen in this suite).
    With studio.gui_gc (installed for every studio test, and by ssl-studio) a thread that
    allocates a lot collects nothing; the GUI thread's timer does."""
    import gc
    import weakref

    import pyqtgraph as pg

    from studio import gui_gc

    g = gui_gc.installed()
    assert g is not None and not gc.isenabled()
    w = pg.PlotWidget()
    cycle = [w]
    cycle.append(cycle)  # only the cyclic collector can free this
    ref = weakref.ref(w)
    del w, cycle
    destroyed_in: list[str] = []

    def churn() -> None:
        kept = [[] for _ in range(20_000)]  # far past gen-0's threshold: a collection would run
        del kept
        destroyed_in.append("worker" if ref() is None else "")

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    assert destroyed_in == [""], "the worker thread collected Qt garbage"
    # the GUI thread's timer collects once allocations pass the thresholds
    before = sum(g.collections)
    kept = [[] for _ in range(5_000)]
    qtbot.waitUntil(lambda: sum(g.collections) > before, timeout=3000)
    del kept
    gc.collect()  # (the cycle may sit in an older generation than the timer's collection)
    assert ref() is None


def test_gpu_labels_never_create_a_context_on_an_idle_gpu(monkeypatch):
    import types

    import torch

    from studio import worker

    calls = []
    fake_cuda = types.SimpleNamespace(
        get_device_properties=lambda i: types.SimpleNamespace(name=f"GPU{i}", total_memory=80 * 2**30),
        device_memory_used=lambda i: 3 * 2**30,
        is_initialized=lambda: False,
        memory_reserved=lambda i: 0,
        memory_allocated=lambda i: 0,
        mem_get_info=lambda i: calls.append(i) or (0, 0),
    )
    fake = types.SimpleNamespace(cuda=fake_cuda)
    assert worker._gpu_label(fake, 1) == "cuda:1  GPU1 — 3.0 / 80.0 GiB in use"
    # no NVML: only the total, and no mem_get_info (it would create a context on that GPU)
    def no_nvml(i):
        raise ModuleNotFoundError("pynvml")

    fake_cuda.device_memory_used = no_nvml
    assert worker._gpu_label(fake, 0) == "cuda:0  GPU0 — 80.0 GiB"
    assert calls == []
    # a GPU this process already uses: CUDA's own numbers, and the studio's share
    fake_cuda.is_initialized = lambda: True
    fake_cuda.memory_reserved = lambda i: 2**30
    fake_cuda.memory_allocated = lambda i: 2**29
    fake_cuda.mem_get_info = lambda i: (70 * 2**30, 80 * 2**30)
    assert worker._gpu_label(fake, 0) == "cuda:0  GPU0 — 10.0 / 80.0 GiB in use, studio 0.50 GiB"
    assert torch.cuda.device_count() >= 0  # the real module is untouched


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_a_cpu_run_thread_is_scheduled_below_the_gui(qtbot, controller, tiny_cfg_dict, tmp_path):
    """The worker lowers its own thread's priority for a CPU run (the GUI thread keeps its own),
    so that on few cores the run waits for the GUI, not the other way round."""
    import os

    from studio.worker import lower_thread_priority

    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def body():
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["lowered"] = lower_thread_priority(5)
        seen["delta"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - before

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["lowered"] and seen["delta"] == min(5, 19 - main_nice)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice  # this thread untouched
    # the studio's worker does it for a CPU run
    import studio.worker as W

    calls = []
    orig = W.lower_thread_priority
    W.lower_thread_priority = lambda *a: calls.append(threading.get_native_id()) or orig(*a)
    try:
        cfg = validate_config({**tiny_cfg_dict, "train": {**tiny_cfg_dict["train"], "steps": 2}})
        with qtbot.waitSignal(controller.finished, timeout=120_000):
            controller.start(cfg, tmp_path / "r")
    finally:
        W.lower_thread_priority = orig
    assert len(calls) == 1 and calls[0] != threading.get_native_id()
