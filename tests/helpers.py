"""Small utilities shared by the engine tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml


def write_cfg(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def with_(cfg: dict, **dotted) -> dict:
    """Copy of a config dict with dotted keys set: with_(cfg, **{'train.steps': 4})."""
    out = copy.deepcopy(cfg)
    for key, value in dotted.items():
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
