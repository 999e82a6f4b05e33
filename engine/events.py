"""The typed event stream of a run.

The trainer emits these events to every listener (a callable taking one event).
The CLI's progress bar, the run folder's ``metrics.jsonl`` writer and the studio
all consume the same stream. Events are plain dataclasses; ``to_json()`` gives
the JSON line written to ``metrics.jsonl`` (always with "step" and "event").

Listeners are called on the training thread: they must be quick (the studio's
listener only queues the event for its GUI thread).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar

import numpy as np


@dataclass
class Event:
    kind: ClassVar[str] = "event"
    step: int
    time: float = field(default_factory=time.time, kw_only=True)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict; arrays (images) are left out of the log."""
        out: dict[str, Any] = {"step": self.step, "event": self.kind}
        for f in fields(self):
            if f.name == "step":
                continue
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray) or _has_arrays(v):
                continue
            out[f.name] = _json_safe(v)
        return out


def _has_arrays(v: Any) -> bool:
    if isinstance(v, dict):
        return any(isinstance(x, np.ndarray) for x in v.values())
    return False


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


@dataclass
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_dir: str
    method: str
    device: str
    total_steps: int
    steps_per_epoch: int
    n_train: int
    n_test: int
    config: dict[str, Any]
    resumed: bool = False
    class_names: list[str] = field(default_factory=list)  # what Evaluation.labels index (may be empty)


@dataclass
class StepMetrics(Event):
    """Training metrics averaged over the last ``log_every`` steps."""

    kind: ClassVar[str] = "train"
    epoch: int
    loss: float
    lr: float
    weight_decay: float
    images_per_s: float
    scalars: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out.pop("scalars", None)
        out.update({k: _json_safe(v) for k, v in self.scalars.items()})
        return out


@dataclass
class EpochEnd(Event):
    kind: ClassVar[str] = "epoch_end"
    epoch: int
    seconds: float


@dataclass
class Evaluation(Event):
    """kNN accuracy, collapse indicators and a 2-D PCA embedding of the eval images."""

    kind: ClassVar[str] = "eval"
    knn_top1: float | None
    indicators: dict[str, float] = field(default_factory=dict)
    knn_standardized: bool = False  # kNN on per-dimension z-scored features (eval.standardize)
    embedding: np.ndarray | None = None  # [Q, 2] PCA of backbone features
    labels: np.ndarray | None = None  # [Q]

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out.pop("indicators", None)
        out.update({k: _json_safe(v) for k, v in self.indicators.items()})
        return out


@dataclass
class VisualProbe(Event):
    """Images for the studio: name -> uint8 array [N, H, W, 3] (or [N, heads, H, W] float)."""

    kind: ClassVar[str] = "probe"
    probe: str
    images: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    path: str


@dataclass
class LiveChange(Event):
    kind: ClassVar[str] = "live_change"
    key: str
    old: Any
    new: Any


@dataclass
class StatusChanged(Event):
    """running / paused / stopping."""

    kind: ClassVar[str] = "status"
    status: str


@dataclass
class RunWarning(Event):
    kind: ClassVar[str] = "warning"
    message: str


@dataclass
class Error(Event):
    kind: ClassVar[str] = "error"
    message: str
    error_type: str = "error"


@dataclass
class Finished(Event):
    """The last event of every run. status: completed | stopped | failed."""

    kind: ClassVar[str] = "finished"
    status: str
    seconds: float
    knn_top1: float | None = None


Listener = Callable[[Event], None]


class EventBus:
    """Delivers each event to every listener; a failing listener never kills the run."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return unsubscribe

    def emit(self, ev: Event) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(ev)
            except Exception as e:  # noqa: BLE001 - a listener bug must not stop training
                import sys

                print(f"ssl-studio: event listener {fn!r} failed: {e}", file=sys.stderr)


class JsonlWriter:
    """Appends each event's JSON line to ``metrics.jsonl`` (flushed per line)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def __call__(self, ev: Event) -> None:
        line = json.dumps(ev.to_json(), default=str)
        with self._lock:
            if not self._f.closed:
                self._f.write(line + "\n")
            if isinstance(ev, Finished):
                self._f.close()

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Read a metrics.jsonl, skipping a torn last line."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return rows


__all__ = [
    "Event", "RunStarted", "StepMetrics", "EpochEnd", "Evaluation", "VisualProbe",
    "CheckpointSaved", "LiveChange", "StatusChanged", "RunWarning", "Error", "Finished",
    "EventBus", "JsonlWriter", "read_metrics", "asdict",
]
