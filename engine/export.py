"""Load a trained run and export its backbone for downstream work.

Formats (each loads into the plain library model with ``strict=True``):

* ``torchvision``: a ``torch.save``d state dict for ``torchvision.models.resnet18/50()`` with
  ``model.fc = torch.nn.Identity()`` (and, for the CIFAR stem, ``model.conv1 =
  nn.Conv2d(3, 64, 3, 1, 1, bias=False)``; ``model.maxpool = nn.Identity()``). ResNets only.
* ``timm``: a state dict for ``timm.create_model(name, num_classes=0, ...)``; the keyword
  arguments to use are printed and stored beside the weights in ``FILE.json``.
* ``safetensors``: the timm-named tensors in a .safetensors file, with the same metadata.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .config import RunConfig
from .fileio import atomic_write_bytes, atomic_write_text
from .errors import CheckpointError, UserError
from .methods import create_method
from .methods.base import Method
from .rundir import RunDir

FORMATS = ("torchvision", "timm", "safetensors")


def load_run_method(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[RunConfig, Method, dict]:
    """The run's method with the weights of its last checkpoint (eval mode)."""
    from .trainer import load_run_config

    rd = RunDir(Path(run_dir))
    cfg = load_run_config(rd.root)
    state = load_checkpoint(rd.checkpoint)
    img = cfg.aug.global_crops.size or state.get("image_size") or _image_size_from(cfg)
    method = create_method(cfg, img)
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint does not fit the run's config: {str(e).splitlines()[0]}") from None
    return cfg, method.to(device).eval(), state


def _image_size_from(cfg: RunConfig) -> int:
    if cfg.data.image_size:
        return cfg.data.image_size
    if cfg.data.source == "shapes":
        return cfg.data.shapes_size
    raise UserError("cannot tell the image size of this run: set aug.global_crops.size or data.image_size")


def timm_spec(cfg: RunConfig, backbone: torch.nn.Module) -> dict[str, Any]:
    """timm.create_model name and kwargs that rebuild this backbone."""
    arch = backbone.arch if hasattr(backbone, "arch") else cfg.model.arch
    if arch.startswith("resnet"):
        return {"model_name": arch, "kwargs": {"num_classes": 0}, "cifar_stem": _cifar_stem(backbone)}
    img_size = getattr(backbone, "img_size", None)
    pe = getattr(backbone, "patch_embed", None)
    if img_size is None and pe is not None and getattr(pe, "img_size", None) is not None:
        img_size = int(pe.img_size[0])  # timm keeps it on the patch embedding
    kw = {"num_classes": 0, "img_size": img_size, "patch_size": cfg.model.patch_size}
    blocks = getattr(backbone, "blocks", None)
    heads = getattr(getattr(blocks[0], "attn", None), "num_heads", None) if blocks is not None and len(blocks) else None
    if cfg.model.num_heads and heads:  # not the architecture's default: weights alone do not tell
        kw["num_heads"] = int(heads)
    init_values = getattr(backbone, "init_values", None)
    if init_values:  # LayerScale (BEiT, 0.1): the plain timm model needs it to have the gamma weights
        kw["init_values"] = float(init_values)
    name = getattr(backbone, "timm_name", arch)
    return {"model_name": name, "kwargs": kw}


def _cifar_stem(backbone: torch.nn.Module) -> bool:
    conv1 = getattr(backbone, "conv1", None)
    return conv1 is not None and tuple(conv1.kernel_size) == (3, 3)


def export_backbone(run_dir: str | Path, fmt: str, out: str | Path) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    cfg, method, state = load_run_method(run_dir)
    bb = method.backbone
    sd = {k: v.detach().cpu().contiguous() for k, v in _plain_state_dict(bb).items()}
    spec = timm_spec(cfg, bb)
    out = Path(out)
    meta = {"format": fmt, "method": cfg.method, "step": int(state["step"]), "arch": cfg.model.arch, **spec}
    if fmt == "torchvision":
        if not cfg.model.arch.startswith("resnet"):
            raise UserError("the torchvision format holds ResNet backbones; use --format timm or safetensors for a ViT")
        buf = io.BytesIO()
        torch.save(sd, buf)
        atomic_write_bytes(out, buf.getvalue())
    elif fmt == "timm":
        buf = io.BytesIO()
        torch.save(sd, buf)
        atomic_write_bytes(out, buf.getvalue())
    else:
        from safetensors.torch import save

        atomic_write_bytes(out, save(sd, metadata={k: json.dumps(v) for k, v in meta.items()}))
    atomic_write_text(out.with_suffix(out.suffix + ".json"), json.dumps(meta, indent=1))
    return meta


def _plain_state_dict(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The library model's own keys (unwraps torch.compile's _orig_mod and our wrapper's prefix)."""
    inner = getattr(m, "export_module", None)
    mod = inner() if callable(inner) else m
    sd = mod.state_dict()
    return {k.replace("_orig_mod.", ""): v for k, v in sd.items()}
