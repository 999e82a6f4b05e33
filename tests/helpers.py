"""Small utilities shared by the engine tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import timm
import yaml
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer


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


# ------------------------------------------------------------------ a micro ViT for CPU tests
def vit_mim_micro(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
    """A 4-block, 64-wide timm ViT (registered with timm, so ``model.arch`` can name it)."""
    return VisionTransformer(**{"embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0, **kwargs})


if not timm.list_models("vit_mim_micro"):
    register_model(vit_mim_micro)
