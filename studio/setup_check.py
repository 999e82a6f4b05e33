"""The method's own checks of a setup (``engine.preflight``), off the GUI thread.

The inspector validates each value through the config schema at once; whether the method
accepts the combination (MAE with a ResNet, SimCLR with one view, a ViT whose heads do not
divide its width) is known only by building it. ``engine.preflight`` builds it on the meta
device (20-300 ms); this class runs that in a worker thread so typing never stalls:

* ``request(cfg, image_size)`` after each valid edit; a setup seen before answers at once
  from a small cache, a new one is checked ``DELAY_MS`` after the last edit (one at a time,
  the newest only);
* ``checked`` fires when the answer for the newest request is in: ``problem`` holds the
  engine's one-line reason ("" when the method accepts the setup);
* ``check_now()`` answers synchronously (Start must not wait for a timer).

A check runs in a short-lived thread that touches only the engine; the GUI thread polls it, so
no Qt object crosses threads. ``wait()`` joins it (the window's shutdown).
"""

from __future__ import annotations

import json
from collections import OrderedDict
import threading

from PySide6.QtCore import QObject, QTimer, Signal

from engine.config import RunConfig
from engine.errors import UserError
from engine.preflight import preflight

DELAY_MS = 150  # after the last edit
POLL_MS = 25  # while a check runs
CACHE_SIZE = 64


def setup_problem(cfg: RunConfig, image_size: int | None) -> str:
    """The engine's reason for refusing ``cfg`` ("" when it builds)."""
    try:
        preflight(cfg, image_size)
    except UserError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - a check the meta device cannot make: the run itself decides
        return ""
    return ""


class SetupCheck(QObject):
    checked = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.problem = ""  # the answer for the newest request once ``checked`` fired
        self._want: tuple[RunConfig, int | None, tuple] | None = None  # newest request, unanswered
        self._thread: threading.Thread | None = None  # the check running, one at a time
        self._result: dict[tuple, str] = {}  # written by that thread: {key: problem}
        self._cache: OrderedDict[tuple, str] = OrderedDict()
        self._delay = QTimer(self, singleShot=True, interval=DELAY_MS)
        self._delay.timeout.connect(self._submit)
        self._poll = QTimer(self, interval=POLL_MS)
        self._poll.timeout.connect(self._collect)

    # ------------------------------------------------------------------ API
    def request(self, cfg: RunConfig, image_size: int | None) -> bool:
        """Ask about ``cfg``; True when answered now (``problem`` is set), else ``checked`` follows."""
        key = (json.dumps(cfg.model_dump(mode="json"), sort_keys=True), image_size)
        if key in self._cache:
            self._cache.move_to_end(key)
            self.problem = self._cache[key]
            self._want = None
            self._delay.stop()
            return True
        self._want = (cfg, image_size, key)
        self._delay.start()
        return False

    def pending(self) -> bool:
        return self._want is not None

    def check_now(self) -> str:
        """Answer the newest request in this thread (a click on Start); returns ``problem``."""
        if self._want is not None:
            cfg, size, key = self._want
            self._delay.stop()
            self._store(key, setup_problem(cfg, size))
            self.problem, self._want = self._cache[key], None
        return self.problem

    def wait(self, timeout_s: float | None = None) -> None:
        """Let a running check end (it takes well under a second)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def cancel(self) -> None:
        """Forget the newest request (a run started: the setup is fixed)."""
        self._want = None
        self._delay.stop()

    # ------------------------------------------------------------ internals
    def _submit(self) -> None:
        if self._want is None or self._thread is not None:
            return  # nothing to do, or one at a time: _collect submits the newest next
        cfg, size, key = self._want
        result = self._result = {}
        self._thread = threading.Thread(target=lambda: result.update({key: setup_problem(cfg, size)}),
                                        name="setup-check", daemon=True)
        self._thread.start()
        self._poll.start()

    def _collect(self) -> None:
        if self._thread is None or self._thread.is_alive():
            return
        self._poll.stop()
        self._thread = None
        for key, problem in self._result.items():
            self._store(key, problem)
            if self._want is not None and self._want[2] == key:
                self.problem, self._want = problem, None
                self.checked.emit()
        if self._want is not None and not self._delay.isActive():
            self._submit()  # newer edits arrived while this one ran

    def _store(self, key: tuple, problem: str) -> None:
        self._cache[key] = problem
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
