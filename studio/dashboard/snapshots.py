"""Probe snapshots and metrics replay for the dashboard (numpy only, no Qt).

Probe snapshot files (written by the engine, read here by ``load_run``)::

    RUNDIR/probes/probe-<name>-<step>.npz

* ``<name>`` is ``VisualProbe.probe`` (e.g. ``reconstruction``, ``attention``); it may contain
  letters, digits, ``_`` ``.`` and ``-`` (the step is the last ``-<digits>`` group).
* ``<step>`` is ``VisualProbe.step`` as a decimal integer, optionally zero-padded
  (``probe-attention-00001200.npz`` and ``probe-attention-1200.npz`` both read as step 1200).
* The archive is what ``np.savez_compressed(f, **images)`` writes: one array per key of
  ``VisualProbe.images``, same names, same dtypes and shapes (uint8 ``[N, H, W, 3]`` images,
  float32 ``[N, heads, H, W]`` attention).
* Optional: ``__meta__``, a 0-d unicode array holding ``json.dumps(VisualProbe.meta)``, and
  ``__time__``, a 0-d float64 array holding ``VisualProbe.time``. Keys starting with ``__``
  are never images.
* Write to a temporary name and ``os.replace`` it (see :func:`save_probe`): a torn or
  unreadable archive is skipped by the reader, never fatal.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from engine import events as ev

from engine.probes import PROBES_DIR, probe_filename, save_probe  # the writer lives in the engine

__all__ = [  # probe_filename and save_probe: the engine's writer, re-exported beside the readers
    "PROBES_DIR", "events_from_metrics", "list_probe_files", "load_probes", "parse_probe_filename", "probe_filename",
    "read_probe_file", "replay_events", "row_to_event", "save_probe",
]

_PROBE_RE = re.compile(r"^probe-(?P<name>.+)-(?P<step>\d+)\.npz$")


def parse_probe_filename(filename: str) -> tuple[str, int] | None:
    """``probe-<name>-<step>.npz`` -> (name, step); None for anything else."""
    m = _PROBE_RE.match(os.path.basename(filename))
    if not m:
        return None
    return m.group("name"), int(m.group("step"))


def read_probe_file(path: str | os.PathLike) -> ev.VisualProbe | None:
    """One snapshot file -> VisualProbe (None if the name or the archive is unreadable)."""
    parsed = parse_probe_filename(str(path))
    if parsed is None:
        return None
    name, step = parsed
    try:
        with np.load(path, allow_pickle=False) as z:
            images = {k: z[k] for k in z.files if not k.startswith("__")}
            meta: dict[str, Any] = {}
            if "__meta__" in z.files:
                try:
                    meta = json.loads(str(z["__meta__"]))
                except (ValueError, TypeError):
                    meta = {}
            t = float(z["__time__"]) if "__time__" in z.files else os.path.getmtime(path)
    except Exception:  # noqa: BLE001 - a torn/corrupt archive is skipped
        return None
    if not images:
        return None
    return ev.VisualProbe(step, probe=name, images=images, meta=meta, time=t)


def list_probe_files(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, Path]]]:
    """name -> [(step, path)] sorted by step, for ``RUNDIR/probes/probe-*.npz``."""
    d = Path(run_dir) / PROBES_DIR
    out: dict[str, list[tuple[int, Path]]] = {}
    if not d.is_dir():
        return out
    for p in d.iterdir():
        parsed = parse_probe_filename(p.name)
        if parsed is None or not p.is_file():
            continue
        out.setdefault(parsed[0], []).append((parsed[1], p))
    for v in out.values():
        v.sort(key=lambda t: t[0])
    return out


def load_probes(run_dir: str | os.PathLike, max_per_probe: int | None = 50) -> list[ev.VisualProbe]:
    """The snapshots of a run folder (the last ``max_per_probe`` of each probe), sorted by step."""
    probes: list[ev.VisualProbe] = []
    for _name, items in list_probe_files(run_dir).items():
        if max_per_probe is not None:
            items = items[-max_per_probe:]
        for _step, p in items:
            probe = read_probe_file(p)
            if probe is not None:
                probes.append(probe)
    probes.sort(key=lambda e: e.step)
    return probes


# ---------------------------------------------------------------- metrics.jsonl -> events

_KINDS: dict[str, type[ev.Event]] = {
    cls.kind: cls
    for cls in (ev.RunStarted, ev.StepMetrics, ev.EpochEnd, ev.Evaluation, ev.VisualProbe,
                ev.CheckpointSaved, ev.LiveChange, ev.StatusChanged, ev.RunWarning, ev.Error, ev.Finished)
}


def _num(v: Any) -> float:
    if v is None:
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def row_to_event(row: dict[str, Any]) -> ev.Event | None:
    """Rebuild the typed event of one metrics.jsonl line (flattened scalars/indicators regrouped).

    Unknown event kinds and malformed rows give None. Keys that are not fields of the event
    class become ``StepMetrics.scalars`` / ``Evaluation.indicators`` (numbers only).
    """
    kind = row.get("event")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None or "step" not in row:
        return None
    names = {f.name for f in fields(cls)}
    kw = {k: v for k, v in row.items() if k in names and k != "event"}
    extra = {k: v for k, v in row.items() if k not in names and k != "event"}
    try:
        kw["step"] = int(row["step"])
        if cls is ev.StepMetrics:
            for k in ("loss", "lr", "weight_decay", "images_per_s"):
                kw[k] = _num(kw.get(k))
            kw.setdefault("epoch", 0)
            kw["scalars"] = {k: _num(v) for k, v in extra.items() if isinstance(v, (int, float)) or v is None}
        elif cls is ev.Evaluation:
            knn = kw.get("knn_top1")
            kw["knn_top1"] = None if knn is None else float(knn)
            kw["knn_standardized"] = kw.get("knn_standardized") is True
            kw["indicators"] = {k: _num(v) for k, v in extra.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        elif cls is ev.VisualProbe:
            kw.setdefault("probe", "")
        t = kw.pop("time", None)
        e = cls(**kw)
        if isinstance(t, (int, float)):
            e.time = float(t)
        return e
    except (TypeError, ValueError):
        return None


def events_from_metrics(rows: Iterable[dict[str, Any]]) -> list[ev.Event]:
    """Typed events of metrics.jsonl rows. Probe rows are left out: their images are not in the
    log (they come from ``probes/*.npz``)."""
    out = []
    for r in rows:
        e = row_to_event(r)
        if e is not None and not isinstance(e, ev.VisualProbe):
            out.append(e)
    return out


def replay_events(run_dir: str | os.PathLike, max_per_probe: int | None = 50) -> list[ev.Event]:
    """All events of a finished or running run folder: metrics.jsonl + probe snapshots, by step.

    Probes are placed after the metrics of the same step (stable merge)."""
    rows = ev.read_metrics(str(Path(run_dir) / "metrics.jsonl"))
    events = events_from_metrics(rows)
    probes = load_probes(run_dir, max_per_probe)
    if not probes:
        return events
    merged: list[ev.Event] = []
    i = 0
    # metrics.jsonl may step backwards after a resume: merge each probe before the first
    # metric row with a larger step that follows all earlier rows
    for e in events:
        while i < len(probes) and probes[i].step < e.step:
            merged.append(probes[i])
            i += 1
        merged.append(e)
    merged.extend(probes[i:])
    return merged
