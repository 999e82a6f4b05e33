"""Python's cyclic garbage collector, run only in the GUI thread.

Python runs a collection in whichever thread happens to allocate when a threshold is crossed:
in the studio that is usually the training thread. If the garbage then holds Qt objects (a
pyqtgraph plot removed from the dashboard, a closed dialog: pyqtgraph items live in reference
cycles), their C++ destructors run in the training thread, take Qt's internal locks and call
back into Python, while the GUI thread, holding the GIL, waits for the same lock: both threads
hang (seen in the test suite: the producer threads of a thread-safety test collected a plot
widget left by an earlier test). pyqtgraph's documented remedy, done here: turn automatic
collection off and collect on a QTimer in the GUI thread, with the same generation thresholds
Python would use (so collections are as frequent, just in the right thread).

``install()`` is idempotent and returns the collector; ``uninstall()`` turns automatic
collection back on (as it was) and collects once, in the calling (GUI) thread.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

INTERVAL_MS = 500

_installed: "GuiThreadGC | None" = None


class GuiThreadGC(QObject):
    def __init__(self, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__()
        self.threshold = gc.get_threshold()
        self.was_enabled = gc.isenabled()
        self.collections = [0, 0, 0]  # per generation, for tests and the curious
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)

    def check(self) -> None:
        """Collect the generations whose counts passed their thresholds (as Python would)."""
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = self.threshold
        if c0 <= t0:
            return
        gen = 2 if (c1 > t1 and c2 > t2) else 1 if c1 > t1 else 0
        gc.collect(gen)
        self.collections[gen] += 1


def install(interval_ms: int = INTERVAL_MS) -> GuiThreadGC:
    """Automatic collection off; collect in this (the GUI) thread every ``interval_ms``."""
    global _installed
    if _installed is None:
        _installed = GuiThreadGC(interval_ms)
        gc.disable()
        _installed.timer.start()
    return _installed


def uninstall() -> None:
    """Back to Python's automatic collection; one full collection now, in this thread."""
    global _installed
    g, _installed = _installed, None
    if g is None:
        return
    g.timer.stop()
    if g.was_enabled:
        gc.enable()
    gc.collect()
    g.deleteLater()


def installed() -> GuiThreadGC | None:
    return _installed
