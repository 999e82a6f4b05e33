"""The run folder: the contract shared by the CLI, the studio and other tools.

    RUNDIR/
      config.yaml          the full resolved config (reusable with ssl-train --config)
      metrics.jsonl        one JSON object a line, each with "step" and "event"
      events.log           the human-readable event log (live changes, warnings, errors)
      run.json             summary for run browsers: status, method, dataset, step, best kNN
      checkpoints/last.pt  the last good checkpoint (atomic)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text
from .errors import UserError

RUN_FILES = ("config.yaml", "metrics.jsonl", "events.log", "run.json")


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

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_summary(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.summary, json.dumps(data, indent=1, default=str))

    def clear(self) -> None:
        """Remove the files of a previous run (used by --overwrite); other files stay."""
        for f in RUN_FILES:
            (self.root / f).unlink(missing_ok=True)
        shutil.rmtree(self.root / "checkpoints", ignore_errors=True)


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> RunDir:
    rd = RunDir(Path(path))
    if rd.root.exists() and not rd.root.is_dir():
        raise UserError(f"output path {rd.root} exists and is not a folder")
    if resume:
        if not rd.holds_run():
            raise UserError(f"nothing to resume in {rd.root}: it holds no run")
        return rd
    if rd.holds_run():
        if not overwrite:
            raise UserError(
                f"output folder {rd.root} already holds a run; use --resume {rd.root} to continue it "
                "or --overwrite to replace it"
            )
        rd.clear()
    rd.root.mkdir(parents=True, exist_ok=True)
    return rd


def list_runs(parent: str | Path) -> list[RunDir]:
    """Run folders directly under ``parent`` (those with a config.yaml), newest first."""
    p = Path(parent)
    if not p.is_dir():
        return []
    runs = [RunDir(d) for d in p.iterdir() if d.is_dir() and (d / "config.yaml").exists()]
    return sorted(runs, key=lambda r: r.config.stat().st_mtime, reverse=True)
