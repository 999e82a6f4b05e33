"""Runs in a worker thread, observed through the engine's event stream.

Threads and objects::

    GUI thread                                     worker QThread
    ----------                                     --------------
    RunController  --start-->  QThread.started --> RunWorker.run()
      | QTimer (200 ms)                              Trainer(cfg, ...)   <- built HERE (CUDA device
      | drains EventBuffer                           trainer.run()          selection happens here)
      v                                                | listener: EventBuffer.append (only that)
    events(list) -> dashboard, window                  v
    pause/resume/stop/set_param  ---- direct, thread-safe Trainer calls ---->
    finished(status, message)  <---- RunWorker.done (queued) ----

The listener never touches Qt: it appends to a lock-protected list. The GUI
thread drains that list at most five times a second and emits one batch, so a
fast run cannot flood the event loop. Control calls are cooperative: the trainer
applies them between steps.

Also here: the device choices for the picker (CPU and every CUDA GPU with its
free / total memory) and the naming of run folders (``method-YYYYmmdd-HHMMSS``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from engine import events as ev
from engine.config import RunConfig
from engine.errors import ConfigError

TRAINING_NICE = 10  # how much lower than the GUI a CPU run's threads are scheduled (Linux)


def lower_thread_priority(nice: int = TRAINING_NICE) -> bool:
    """Schedule the calling thread, and the compute threads it starts from now on (PyTorch's
    intra-op pool of this thread inherits it), below the GUI thread. A CPU run otherwise shares
    the cores with the GUI on equal terms: on 2 cores a MultiMAE run's first seconds stalled the
    GUI for 104-151 ms. An idle GUI costs the run nothing (nice only orders who waits). Linux
    only (a per-thread nice value); elsewhere, or without the permission, nothing changes."""
    if not sys.platform.startswith("linux") or nice <= 0:
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        return True
    except (OSError, AttributeError):
        return False

DRAIN_INTERVAL_MS = 200  # at most ~5 batches a second


class EventBuffer:
    """A thread-safe list of events: ``append`` on the training thread, ``drain`` on the GUI thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[ev.Event] = []
        self.last_error: ev.Error | None = None
        self.finished: ev.Finished | None = None

    def append(self, e: ev.Event) -> None:
        with self._lock:
            self._items.append(e)
            if isinstance(e, ev.Error):
                self.last_error = e
            elif isinstance(e, ev.Finished):
                self.finished = e

    def drain(self) -> list[ev.Event]:
        with self._lock:
            items, self._items = self._items, []
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _runs_on_cpu(cfg: RunConfig) -> bool:
    from engine.trainer import resolve_device

    try:
        return resolve_device(cfg.train.device).type == "cpu"
    except Exception:  # noqa: BLE001 - an unusable device: the trainer reports it
        return False


class RunWorker(QObject):
    """Builds the Trainer in its own (worker) thread and runs it; control calls are thread-safe.

    ``done(status, message)`` is emitted from the worker thread when ``run()`` returns:
    status is completed | stopped | failed; message is the engine's error message.
    """

    done = Signal(str, str, int)  # status, message, run token

    def __init__(self, cfg: RunConfig, run_dir: str, buffer: EventBuffer, *, resume: bool = False,
                 overwrite: bool = False, data: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.run_dir = str(run_dir)
        self.buffer = buffer
        self.resume_run = resume
        self.overwrite = overwrite
        self.data = data
        self.trainer = None
        self.token = 0
        self.result: tuple[str, str] | None = None
        self.ended = threading.Event()  # set when run() has returned (the thread's loop may still spin)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._want_stop = False
        self._want_pause = False

    @Slot()
    def run(self) -> None:
        """The body of the worker thread: construct, apply early controls, train, report."""
        try:
            from engine.trainer import Trainer  # heavy import, off the GUI thread

            trainer = Trainer(self.cfg, self.run_dir, resume=self.resume_run, overwrite=self.overwrite,
                              listeners=(self.buffer.append,), data=self.data)
        except Exception as e:  # noqa: BLE001 - reported like a failed run
            from engine.errors import UserError

            msg = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            self.buffer.append(ev.Error(0, message=msg, error_type="input"))
            self.buffer.append(ev.Finished(0, status="failed", seconds=0.0))
            self._ready.set()
            self._report("failed", msg)
            return
        with self._lock:
            self.trainer = trainer
            if self._want_pause:
                trainer.pause()
            if self._want_stop:
                trainer.stop()
        self._ready.set()
        self.data = None  # the trainer holds it now
        if _runs_on_cpu(self.cfg):
            lower_thread_priority()  # (the worker's QThread ends with the run: the priority with it)
        status, message = "failed", ""
        try:
            fin = trainer.run()
            status = fin.status
        except BaseException as e:  # noqa: BLE001 - the trainer emitted Error + Finished already
            err = self.buffer.last_error
            message = err.message if err is not None else (str(e) or type(e).__name__)
            fin = self.buffer.finished
            status = fin.status if fin is not None else "failed"
        finally:
            self._report(status, message)

    def _report(self, status: str, message: str) -> None:
        self.result = (status, message)
        self.ended.set()
        self.done.emit(status, message, self.token)

    # -------------------------------------------------- control (any thread)
    def pause(self) -> None:
        with self._lock:
            self._want_pause = True
            if self.trainer is not None:
                self.trainer.pause()

    def resume(self) -> None:
        with self._lock:
            self._want_pause = False
            if self.trainer is not None:
                self.trainer.resume()

    def stop(self) -> None:
        with self._lock:
            self._want_stop = True
            if self.trainer is not None:
                self.trainer.stop()

    def set_param(self, key: str, value: Any) -> None:
        """Queue a live change (Trainer.set_param); raises ConfigError when the trainer refuses it."""
        if not self._ready.wait(timeout=10.0) or self.trainer is None:
            raise ConfigError("the run has not started: live changes apply to a running run")
        self.trainer.set_param(key, value)


class RunController(QObject):
    """GUI-side owner of one run at a time: the thread, the worker and the event pump.

    Signals (GUI thread):
        events(list)              batches of engine events, at most ~5 per second
        started(str)              a run was started in this folder
        finished(str, str)        status, error message ('' unless failed); after the last batch
        state_changed(str)        idle | running | paused | stopping
    """

    events = Signal(list)
    started = Signal(str)
    finished = Signal(str, str)
    state_changed = Signal(str)

    def __init__(self, parent: QObject | None = None, interval_ms: int = DRAIN_INTERVAL_MS) -> None:
        super().__init__(parent)
        self.buffer = EventBuffer()
        self.thread: QThread | None = None
        self.worker: RunWorker | None = None
        self._token = 0
        self.run_dir: str | None = None
        self._state = "idle"
        self._result: tuple[str, str] | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.drain)

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        return self._state

    def is_running(self) -> bool:
        return self.thread is not None

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.state_changed.emit(state)

    # ---------------------------------------------------------------- control
    def start(self, cfg: RunConfig, run_dir: str | os.PathLike, *, resume: bool = False,
              overwrite: bool = False, data: Any = None) -> None:
        """Start a run in a new worker thread (one run at a time)."""
        if self.thread is not None:
            raise RuntimeError("a run is already in progress")
        self.buffer = EventBuffer()
        self.run_dir = str(run_dir)
        self._result = None
        thread = QThread()
        thread.setObjectName(f"ssl-run-{Path(run_dir).name}")
        worker = RunWorker(cfg, self.run_dir, self.buffer, resume=resume, overwrite=overwrite, data=data)
        self._token += 1
        worker.token = self._token
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.done.connect(self._on_done)
        self.thread, self.worker = thread, worker
        thread.start()
        self.timer.start()
        self._set_state("running")
        self.started.emit(self.run_dir)

    def pause(self) -> None:
        if self.worker is not None:
            self.worker.pause()
            self._set_state("paused")

    def resume(self) -> None:
        if self.worker is not None:
            self.worker.resume()
            self._set_state("running")

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self._set_state("stopping")

    def set_param(self, key: str, value: Any) -> None:
        if self.worker is None:
            raise ConfigError("no run is in progress")
        self.worker.set_param(key, value)

    # ------------------------------------------------------------- pumping
    @Slot()
    def drain(self) -> None:
        """Forward the buffered events as one batch (GUI thread)."""
        batch = self.buffer.drain()
        if not batch:
            return
        for e in batch:
            if isinstance(e, ev.StatusChanged) and self.thread is not None:
                if e.status in ("paused", "running") and self._state != "stopping":
                    self._set_state(e.status)
        self.events.emit(batch)

    @Slot(str, str, int)
    def _on_done(self, status: str, message: str, token: int) -> None:
        if self.worker is None or token != self.worker.token:
            return  # a late report of a run already joined by wait()
        self._result = (status, message)
        self._finish()

    def _finish(self) -> None:
        """Join the worker thread, flush the last events, then report ``finished``."""
        thread = self.thread
        if thread is None:
            return
        thread.quit()
        thread.wait()
        self.timer.stop()
        self.drain()
        status, message = self._result or ("failed", "the run ended without reporting")
        self.thread, self.worker = None, None
        self._set_state("idle")
        self.finished.emit(status, message)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the run ends (GUI thread); True if it did, then ``finished`` has been emitted."""
        worker = self.worker
        if self.thread is None or worker is None:
            return True
        if not worker.ended.wait(timeout_s):
            return False
        if self._result is None:  # done() is still queued for the event loop we are blocking
            self._result = worker.result
        self._finish()
        return True

    def shutdown(self, timeout_s: float | None = 120.0) -> bool:
        """Stop a run cleanly (it saves its checkpoint) and wait for its thread."""
        if self.thread is None:
            return True
        self.stop()
        return self.wait(timeout_s)


# =========================================================== devices, folders
def device_choices() -> list[tuple[str, str]]:
    """(train.device value, label) for the device picker: auto, CPU, then each CUDA GPU with its memory."""
    import torch

    out = [("auto", "auto (CUDA GPU if available)"), ("cpu", f"CPU ({torch.get_num_threads()} threads)")]
    try:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver: CPU only
        n = 0
    for i in range(n):
        try:
            out.append((f"cuda:{i}", _gpu_label(torch, i)))
        except Exception as e:  # noqa: BLE001
            out.append((f"cuda:{i}", f"cuda:{i}  (unavailable: {type(e).__name__})"))
    return out


def _gpu_label(torch, i: int) -> str:
    """Name and memory of GPU ``i`` without creating a CUDA context on it (a few hundred MB of
    that GPU, and seconds, for every GPU the picker lists): memory in use from NVML
    (``torch.cuda.device_memory_used``) where available, else from ``mem_get_info`` only on a
    GPU this process already uses; the studio's own allocations from the caching allocator."""
    props = torch.cuda.get_device_properties(i)
    total = props.total_memory
    try:
        used = torch.cuda.device_memory_used(i)  # all processes, via NVML
    except Exception:  # noqa: BLE001 - no NVML: ask CUDA only where a context exists already
        used = None
        if torch.cuda.is_initialized() and torch.cuda.memory_reserved(i) > 0:
            free, total = torch.cuda.mem_get_info(i)
            used = total - free
    mine = torch.cuda.memory_allocated(i) if torch.cuda.is_initialized() else 0
    mem = (f"{used / 2**30:.1f} / {total / 2**30:.1f} GiB in use" if used is not None
           else f"{total / 2**30:.1f} GiB")
    return f"cuda:{i}  {props.name} — {mem}" + (f", studio {mine / 2**30:.2f} GiB" if mine else "")


def default_runs_dir() -> Path:
    return Path(os.environ.get("SSL_STUDIO_RUNS_DIR") or Path.home() / "ssl-studio-runs")


def make_run_dir(runs_dir: str | os.PathLike, method: str, now: float | None = None) -> Path:
    """Create and return a fresh ``runs_dir/method-YYYYmmdd-HHMMSS`` (suffix -2, -3… if taken)."""
    root = Path(runs_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    base = f"{method}-{stamp}"
    for i in range(1, 1000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise OSError(f"cannot create a run folder under {root}")
