"""Named presets: YAML files in ``assets/presets/`` (paper defaults, CIFAR-size, quick CPU demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import load_yaml
from .errors import ConfigError, UserError

PRESET_DIR = Path(__file__).resolve().parent.parent / "assets" / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(list_presets()) or 'none'}")
    data = load_yaml(path)
    data.pop("description", None)
    return data


def preset_description(name: str) -> str:
    return str(load_yaml(PRESET_DIR / f"{name}.yaml").get("description", ""))


def presets_by_method() -> dict[str, list[str]]:
    """method -> the presets that set it up (offered when the method refuses a setup)."""
    out: dict[str, list[str]] = {}
    for name in list_presets():
        try:
            out.setdefault(str(load_preset(name).get("method", "simclr")), []).append(name)
        except UserError:
            continue
    return out


def presets_of(method: str) -> list[str]:
    return presets_by_method().get(method, [])
