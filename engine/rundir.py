"""The run folder: the contract shared by the CLI, the studio and other tools.

    RUNDIR/
      config.yaml          the full resolved config (reusable with ssl-train --config)
      metrics.jsonl        one JSON object a line, each with "step" and "event"
      events.log           the human-readable event log (live changes, warnings, errors)
      run.json             summary for run browsers: status, method, dataset, step, best kNN
      checkpoints/last.pt  the last good checkpoint (atomic)
      probes/              visual probe snapshots (probe-<name>-<step>.npz)
      linear_probe.json    the last linear probe (ssl-eval linear, the studio's runs panel)
      run.lock             while a run trains here: "pid host" of its process
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text
from .errors import UserError

RUN_FILES = ("config.yaml", "metrics.jsonl", "events.log", "run.json", "linear_probe.json")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.root / "events.log"

    @property
    def summary(self) -> Path:
        return self.root / "run.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    def holds_run(self) -> bool:
        return any((self.root / f).exists() for f in RUN_FILES) or self.checkpoint.exists()

    def ended_before_training(self) -> bool:
        """True for a run that failed or was stopped before its first step (bad data, a Stop while
        loading): it has no checkpoint, so there is nothing to resume or to protect."""
        if self.checkpoint.exists():
            return False
        s = self.read_summary()
        try:
            return s.get("status") in ("failed", "stopped") and int(s.get("step") or 0) == 0
        except (TypeError, ValueError):
            return False

    @property
    def linear_probe(self) -> Path:
        return self.root / "linear_probe.json"

    def read_linear_probe(self) -> dict[str, Any]:
        return _read_json_dict(self.linear_probe)

    def write_linear_probe(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.linear_probe, json.dumps(data, indent=1, default=str))

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    def read_summary(self) -> dict[str, Any]:
        return _read_json_dict(self.summary)

    def write_summary(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.summary, json.dumps(data, indent=1, default=str))

    def clear(self) -> None:
        """Remove the files of a previous run (used by --overwrite); other files stay."""
        for f in RUN_FILES:
            (self.root / f).unlink(missing_ok=True)
        self.checkpoint.unlink(missing_ok=True)
        _remove_if_empty(self.checkpoint.parent)
        probes = self.root / "probes"
        if probes.is_dir():
            for f in probes.glob("probe-*.npz"):
                f.unlink(missing_ok=True)
            _remove_if_empty(probes)

    # -------------------------------------------------------------- the lock
    def acquire(self) -> None:
        """Mark the folder as trained in by this process; UserError if another live run holds it."""
        key = str(self.root.resolve())
        with _LOCKS_GUARD:
            holder = self._holder()
            if key in _HELD or (holder is not None and _alive(*holder)):
                pid = holder[0] if holder else os.getpid()
                raise UserError(f"run folder {self.root} is in use by a run in process {pid} (ssl-train or the "
                                "studio); stop that run first")
            atomic_write_text(self.lock, f"{os.getpid()} {socket.gethostname()}\n")
            _HELD.add(key)

    def release(self) -> None:
        key = str(self.root.resolve())
        with _LOCKS_GUARD:
            if key in _HELD:
                _HELD.discard(key)
                holder = self._holder()
                if holder is not None and holder[0] == os.getpid():
                    self.lock.unlink(missing_ok=True)

    def _holder(self) -> tuple[int, str] | None:
        try:
            pid, host = self.lock.read_text().split()
            return int(pid), host
        except (OSError, ValueError):
            return None


_HELD: set[str] = set()  # run folders this process trains in
_LOCKS_GUARD = threading.Lock()


def _alive(pid: int, host: str) -> bool:
    """Whether the lock's process still runs (a lock from another host counts as held)."""
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        return False  # this process, but not in _HELD: left by an earlier run that died
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when missing, unreadable, half-copied or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> RunDir:
    rd = RunDir(Path(path))
    if rd.root.exists() and not rd.root.is_dir():
        raise UserError(f"output path {rd.root} exists and is not a folder")
    if resume:
        if not rd.holds_run():
            raise UserError(f"nothing to resume in {rd.root}: it holds no run")
        if rd.ended_before_training():
            raise UserError(f"nothing to resume in {rd.root}: its run ended before its first step; "
                            "start it again without --resume")
        return rd
    if rd.holds_run():
        if not overwrite and not rd.ended_before_training():  # a run that never trained is replaced
            raise UserError(
                f"output folder {rd.root} already holds a run; use --resume {rd.root} to continue it "
                "or --overwrite to replace it"
            )
        holder = rd._holder()
        if holder is not None and _alive(*holder):
            raise UserError(f"run folder {rd.root} is in use by a run in process {holder[0]}; stop it before "
                            "overwriting")
        rd.clear()
    try:
        rd.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {rd.root}: {e.strerror or e}") from None
    return rd


def list_runs(parent: str | Path) -> list[RunDir]:
    """Run folders directly under ``parent`` (those with a config.yaml), newest first."""
    p = Path(parent)
    if not p.is_dir():
        return []
    runs = []
    try:
        for d in p.iterdir():
            try:
                if d.is_dir() and (d / "config.yaml").exists():
                    runs.append((RunDir(d), (d / "config.yaml").stat().st_mtime))
            except OSError:  # unreadable, or deleted while listing
                continue
    except OSError:
        return []
    return [r for r, _ in sorted(runs, key=lambda t: t[1], reverse=True)]


def config_as_ended(path: str | Path) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """A run's config.yaml with the settings changed during the run at the values it ended with
    (run.json's ``live``), as YAML text headed by a comment naming each change (start -> end),
    and the changes {key: (start, end)}. Without live changes: config.yaml's text, unchanged."""
    import yaml

    rd = RunDir(Path(path))
    text = rd.config.read_text()
    live = rd.read_summary().get("live") or {}
    if not isinstance(live, dict) or not live:
        return text, {}
    raw = yaml.safe_load(text) or {}
    changes: dict[str, tuple[Any, Any]] = {}
    for key, end in live.items():
        cur: Any = raw
        parts = str(key).split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {}) if isinstance(cur, dict) else None
        if not isinstance(cur, dict):
            continue
        start = cur.get(parts[-1])
        if start != end:
            cur[parts[-1]] = end
            changes[key] = (start, end)
    if not changes:
        return text, {}
    head = [f"# {rd.root.name}: the config it ended with; changed during the run (start -> end):"]
    head += [f"#   {k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()]
    return "\n".join(head) + "\n" + yaml.safe_dump(raw, sort_keys=False), changes
