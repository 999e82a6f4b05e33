"""Background jobs of the window (a linear probe, a backbone export): engine calls that take
seconds to minutes, run off the GUI thread so the window never freezes.

``Job(fn)`` runs ``fn(should_stop)`` in its own QThread and emits ``done(result, error)``:
the result, or None and the engine's message (``"cancelled"`` after :meth:`Job.cancel`).
"""

from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import QThread, Signal

from engine.errors import Cancelled, UserError


class Job(QThread):
    done = Signal(object, str)

    def __init__(self, fn: Callable[[Callable[[], bool]], Any], parent=None) -> None:
        super().__init__(parent)
        self._fn = fn
        self._cancel = False

    def cancel(self) -> None:
        """Ask the job to stop where it checks (the window is closing)."""
        self._cancel = True

    def run(self) -> None:
        try:
            result = self._fn(lambda: self._cancel)
        except Cancelled:
            self.done.emit(None, "cancelled")
        except UserError as e:
            self.done.emit(None, str(e))
        except OSError as e:
            self.done.emit(None, f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        except Exception as e:  # noqa: BLE001 - shown to the user, never a crash
            self.done.emit(None, f"{type(e).__name__}: {e}")
        else:
            self.done.emit(result, "")
