"""Studio responsiveness: does the dashboard keep the GUI thread free while a fast run streams?

A QApplication (offscreen when there is no display) shows a Dashboard; a Python thread feeds it
synthetic events at the rate a fast run produces them (StepMetrics every 1 ms, an Evaluation
with a 2-D embedding every second, reconstruction + attention probes every 2 s, a live change
every 10 s) through a queue that a 200 ms QTimer drains into ``Dashboard.handle_events`` - the
same path as the studio's worker pump. A 10 ms QTimer records its ticks; the longest gap
between ticks is how long the GUI thread was blocked.

    python bench/studio_responsiveness.py --seconds 30
    python bench/studio_responsiveness.py --seconds 30 --real quick_cpu   # a real CPU run
    {"max_gap_ms": ..., "p99_gap_ms": ..., "events": ..., "redraws": ..., ...}

``measure(seconds, feeder)`` is reusable: the feeder is any callable ``feeder(q, stop)`` that
puts engine events on the queue ``q`` until the threading.Event ``stop`` is set (e.g. a real
engine run's listener).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import events as ev  # noqa: E402

Feeder = Callable[["queue.Queue[ev.Event]", threading.Event], None]


def synthetic_feeder(step_interval_s: float = 0.001, eval_every_s: float = 1.0, probe_every_s: float = 2.0,
                     live_every_s: float = 10.0, image_size: int = 64, n_images: int = 8, heads: int = 6,
                     eval_points: int = 1000, seed: int = 0) -> Feeder:
    """Events at the rate of a fast run (defaults: 1000 train events/s)."""

    def feed(q: "queue.Queue[ev.Event]", stop: threading.Event) -> None:
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        q.put(ev.RunStarted(0, run_dir="bench-run", method="dino", device="synthetic", total_steps=10**7,
                            steps_per_epoch=1000, n_train=50000, n_test=10000, config={}))
        step = 0
        next_eval, next_probe, next_live = eval_every_s, probe_every_s, live_every_s
        labels = np.arange(eval_points) % 10
        centres = rng.normal(0, 4, (10, 2))
        lr = 1e-3
        while not stop.is_set():
            now = time.perf_counter() - t0
            due = int(now / step_interval_s)
            while step < due:
                step += 1
                loss = 6.0 / math.sqrt(step) + 0.1 * rng.random()
                q.put(ev.StepMetrics(step, epoch=step // 1000, loss=loss, lr=lr, weight_decay=0.04,
                                     images_per_s=4000 + 100 * rng.random(),
                                     scalars={"loss_dino": loss * 0.7, "loss_ibot": loss * 0.3,
                                              "teacher_temp": 0.04, "momentum": 0.996}))
            if now >= next_eval:
                next_eval += eval_every_s
                emb = centres[labels] + rng.normal(0, 1, (eval_points, 2))
                q.put(ev.Evaluation(step, knn_top1=min(0.9, step / 50000), embedding=emb, labels=labels,
                                    indicators={"std": 0.05, "std_ref": 1 / 16, "rank_me": 120.0,
                                                "alignment": 0.7, "uniformity": -2.8, "teacher_entropy": 6.0,
                                                "entropy_ref": math.log(65536), "kl": 0.9}))
            if now >= next_probe:
                next_probe += probe_every_s
                s, n = image_size, n_images
                img = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
                q.put(ev.VisualProbe(step, probe="reconstruction",
                                     images={"original": img, "masked": img // 2, "reconstruction": img,
                                             "pasted": img}))
                q.put(ev.VisualProbe(step, probe="attention",
                                     images={"image": img[:4], "attention":
                                             rng.random((4, heads, s, s)).astype(np.float32)}))
            if now >= next_live:
                next_live += live_every_s
                q.put(ev.LiveChange(step, key="optim.lr", old=lr, new=lr * 0.5))
                lr *= 0.5
            time.sleep(step_interval_s)

    return feed


def real_run_feeder(preset: str = "quick_cpu", run_dir: str | None = None, threads: int | None = None,
                    nice: bool = True) -> Feeder:
    """A real engine run on the CPU (the preset, until stopped) streaming into the queue, in a
    background thread as in the studio: the GUI thread competes with the training thread for
    the GIL and the cores."""

    # imported here, before the measurement: in the studio the engine is loaded with the window
    import tempfile

    import torch

    from engine.config import validate_config
    from engine.presets import load_preset
    from engine.trainer import Trainer
    importlib.import_module("engine.components")  # timm, torchvision: the studio has them loaded for its diagrams

    def feed(q: "queue.Queue[ev.Event]", stop: threading.Event) -> None:
        from studio.worker import lower_thread_priority

        if threads:
            torch.set_num_threads(threads)
        if nice:
            lower_thread_priority()  # as the studio's worker does for a CPU run
        raw = load_preset(preset)
        raw.setdefault("train", {}).update(time_limit_s=None, epochs=1000, device="cpu", probe_every_s=2.0, log_every=1,
                                           eval_every=25)
        out = run_dir or tempfile.mkdtemp(prefix="bench-studio-")
        trainer = Trainer(validate_config(raw), Path(out) / "run", overwrite=True, listeners=(q.put,))
        threading.Thread(target=lambda: (stop.wait(), trainer.stop()), daemon=True).start()
        trainer.run()

    return feed


class StackSampler:
    """Samples the GUI (main) thread's Python stack every ``interval_s`` from a daemon thread, so
    that the longest gaps can be explained: ``during(t0, t1)`` counts the innermost ``depth``
    frames seen between two ``perf_counter`` times. Time in Qt's C++ shows as the Python frame
    that called into it (``loop.exec()``, a ``paintEvent``)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._target = threading.main_thread().ident

    def start(self) -> "StackSampler":
        threading.Thread(target=self._run, daemon=True, name="bench-sampler").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            frame = sys._current_frames().get(self._target)
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{Path(code.co_filename).name}:{code.co_name}:{frame.f_lineno}")
                frame = frame.f_back
            self.samples.append((time.perf_counter(), stack))

    def during(self, t0: float, t1: float, depth: int = 6) -> list[tuple[int, str]]:
        counts: dict[str, int] = {}
        for t, stack in self.samples:
            if t0 <= t <= t1:
                key = " <- ".join(stack[:depth]) or "(no Python frame)"
                counts[key] = counts.get(key, 0) + 1
        return sorted(((n, k) for k, n in counts.items()), reverse=True)


def measure(seconds: float, feeder: Feeder, dashboard: Any = None, tick_ms: int = 10,
            drain_ms: int = 200, join_timeout_s: float = 5.0, trace: int = 0) -> dict[str, Any]:
    """Run the event loop for ``seconds`` while ``feeder`` streams events; return the gaps.
    ``trace`` > 0 samples the GUI thread's stack and reports what it ran in the ``trace``
    longest gaps (``res["trace"]``)."""
    from PySide6 import QtCore, QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    if dashboard is None:
        from studio.dashboard import Dashboard

        dashboard = Dashboard()
        dashboard.resize(1400, 900)
        dashboard.show()
    q: "queue.Queue[ev.Event]" = queue.Queue()
    stop = threading.Event()
    ticks: list[float] = []
    batch_ms: list[float] = []
    counts = {"events": 0}
    redraws0 = getattr(dashboard, "redraw_count", 0)

    def drain() -> None:
        batch = []
        try:
            while True:
                batch.append(q.get_nowait())
        except queue.Empty:
            pass
        if batch:
            t = time.perf_counter()
            dashboard.handle_events(batch)
            batch_ms.append((time.perf_counter() - t) * 1000)
            counts["events"] += len(batch)

    tick = QtCore.QTimer()
    tick.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
    tick.setInterval(tick_ms)
    tick.timeout.connect(lambda: ticks.append(time.perf_counter()))
    pump = QtCore.QTimer()
    pump.setInterval(drain_ms)
    pump.timeout.connect(drain)
    loop = QtCore.QEventLoop()

    warm = time.perf_counter() + 1.0  # the window's first layout and paint, before the run starts
    while time.perf_counter() < warm:
        app.processEvents()
        time.sleep(0.01)
    thread = threading.Thread(target=feeder, args=(q, stop), daemon=True, name="bench-feeder")
    thread.start()
    tick.start()
    pump.start()
    QtCore.QTimer.singleShot(int(seconds * 1000), loop.quit)
    sampler = StackSampler().start() if trace else None
    t0, c0 = time.perf_counter(), time.process_time()
    loop.exec()
    if sampler:
        sampler.stop()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tick.stop()
    pump.stop()
    stop.set()
    thread.join(timeout=join_timeout_s)  # a real run stops after its current step
    app.processEvents()

    gaps = np.diff(np.asarray(ticks)) * 1000 if len(ticks) > 1 else np.zeros(1)
    traced = []
    if sampler and len(ticks) > 1:
        for i in np.argsort(gaps)[::-1][:trace]:
            traced.append({"gap_ms": round(float(gaps[i]), 1), "at_s": round(float(ticks[i + 1] - t0), 2),
                           "stacks": [f"{n}x {k}" for n, k in sampler.during(ticks[i], ticks[i + 1])[:8]]})
    res = {
        "max_gap_ms": round(float(gaps.max()), 2),
        "max_gap_at_s": round(float(ticks[int(np.argmax(gaps)) + 1] - t0), 2) if len(ticks) > 1 else 0.0,
        "gaps_over_100ms": int((gaps > 100).sum()),
        "gaps_over_100ms_at_s": [round(float(ticks[i + 1] - t0), 2) for i in np.flatnonzero(gaps > 100)][:20],
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 2),
        "median_gap_ms": round(float(np.median(gaps)), 2),
        "events": counts["events"],
        "redraws": getattr(dashboard, "redraw_count", 0) - redraws0,
        "max_handle_events_ms": round(max(batch_ms), 2) if batch_ms else 0.0,
        "ticks": len(ticks),
        "tick_ms": tick_ms,
        "seconds": round(wall, 2),
        "process_cpu_s": round(cpu, 2),  # GUI + feeder threads together
        "backlog": q.qsize(),
    }
    if sampler:
        res["trace"] = traced
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--step-ms", type=float, default=1.0, help="synthetic StepMetrics interval")
    ap.add_argument("--real", metavar="PRESET", help="feed a real CPU training run of this preset "
                    "(e.g. quick_cpu) instead of synthetic events")
    ap.add_argument("--no-nice", action="store_true",
                    help="the real run's thread at the GUI's priority (the studio lowers a CPU run's)")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="sample the GUI thread's stack; report what it ran in the N longest gaps")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    feeder = (real_run_feeder(args.real, nice=not args.no_nice) if args.real
              else synthetic_feeder(step_interval_s=args.step_ms / 1000))
    res = measure(args.seconds, feeder, join_timeout_s=120.0 if args.real else 5.0,
                  trace=args.trace)
    res["feeder"] = (f"real run: {args.real}" + (" (GUI priority)" if args.no_nice else " (run thread niced, as the studio)")
                     if args.real else f"synthetic, a step every {args.step_ms} ms")
    from PySide6 import __version__ as pyside_version
    import pyqtgraph

    res.update(load_avg_1m=round(os.getloadavg()[0], 2), cpus=os.cpu_count(), platform=os.environ.get("QT_QPA_PLATFORM", "native"), python=platform.python_version(),
               pyside6=pyside_version, pyqtgraph=pyqtgraph.__version__, cpu=platform.processor() or platform.machine())
    text = json.dumps(res)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
