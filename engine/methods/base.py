"""The method interface.

A method is a small ``nn.Module`` composed from shared components (backbones,
heads, losses, ...). It declares:

* ``name``, ``family``, ``paper``, ``summary`` - for ``--list-methods`` and the studio's library;
* ``Params`` - a pydantic model of its own settings (defaults from the paper, ranges, help);
* ``live_params`` - which of those settings may change during a run;
* ``diagram()`` - its components and their connections (the studio draws it);
* ``training_step(batch)`` -> ``StepOutput`` (loss + scalars to log, tensors, no host sync);
* ``after_optimizer_step(step)`` - EMA updates, queues;
* ``probes(images)`` - optional visual probes (reconstructions, attention maps).

The trainer owns the optimiser, schedules, precision, augmentation and events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

if TYPE_CHECKING:
    from ..config import RunConfig


class Params(BaseModel):
    """Base for a method's own settings: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class Batch:
    """One training batch, already augmented on the training device.

    views:  list of float tensors [B, 3, h_i, w_i]; global crops first, then local crops.
    images: the uint8 source images [B, 3, H, W] (for methods that need them).
    n_global: how many of ``views`` are global crops.
    extras: optional per-image modalities (e.g. 'depth', 'seg') as tensors.
    """

    views: list[torch.Tensor]
    images: torch.Tensor
    n_global: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepOutput:
    """What a training step returns. Tensors stay on the device (no .item())."""

    loss: torch.Tensor
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    # detached, L2-normalisable outputs of two views of the same images, [B, d] each,
    # for the collapse indicators (std, effective rank, alignment, uniformity)
    pair: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class Block:
    """A box in the method's diagram. ``params`` are dotted config keys shown in the inspector."""

    id: str
    label: str
    kind: str = "module"  # data | augment | encoder | head | loss | memory | op
    params: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Edge:
    src: str
    dst: str
    label: str = ""
    style: str = "solid"  # solid | stopgrad | ema


@dataclass
class Diagram:
    blocks: list[Block]
    edges: list[Edge]

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": [b.__dict__ for b in self.blocks],
            "edges": [e.__dict__ for e in self.edges],
        }


class Method(nn.Module):
    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # contrastive | self-distillation | masked image modelling | hybrid | task-specific
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # two lines: how it learns
    Params: ClassVar[type[Params]] = Params
    live_params: ClassVar[tuple[str, ...]] = ()
    # kNN on per-dimension standardised features when eval.standardize is empty (see EvalConfig)
    standardize_features: ClassVar[bool] = False
    # step scalars that are collapse indicators too: each evaluation carries their latest values
    # (DINO: teacher entropy, log K, KL), so the collapse check and its plots see them
    indicator_scalars: ClassVar[tuple[str, ...]] = ()
    # multi-crop methods read batch.views[n_global:]; for the others the trainer makes no local crops
    uses_local_crops: ClassVar[bool] = False
    # the step where the run's LR / weight-decay schedule (warm-up, cosine) begins; before it the
    # scheduled groups get LR 0 (BEiT: its encoder starts after the tokenizer stage)
    schedule_start: int = 0

    def __init__(self, cfg: "RunConfig", image_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.p = self.Params(**cfg.params)
        self.image_size = image_size
        self.total_steps = 1
        self.steps_per_epoch = 1

    # -- set by the trainer before training
    def setup(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch

    # -- required
    backbone: nn.Module

    def training_step(self, batch: Batch, step: int) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def diagram(cls) -> Diagram:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- optional
    def after_optimizer_step(self, step: int) -> None:
        """Called after each optimiser step (EMA updates, queue updates)."""

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features for evaluation: x [B, 3, H, W] normalised -> [B, D]."""
        return self.backbone(x)

    def setup_warnings(self) -> list[str]:
        """Settings that make no sense for this run's length (after ``setup``); the trainer
        emits each as a RunWarning at the start. E.g. BEiT's tokenizer stage filling the run."""
        return []

    def probes(self, images: torch.Tensor) -> dict[str, dict[str, Any]]:
        """Visual probes on fixed uint8 images [N, 3, H, W]: name -> {'images': {...}, 'meta': {...}}.

        The default: the last block's CLS-to-patch attention when the backbone is a ViT
        (nothing for a ResNet); masked-image methods add their reconstructions."""
        if not hasattr(getattr(self, "backbone", None), "last_attention"):
            return {}
        from ..probes import attention_probe

        a = self.cfg.aug
        return {"attention": attention_probe(self.backbone, images, self.image_size, a.mean, a.std)}

    def set_live(self, key: str, value: Any) -> Any:
        """Change one of ``live_params`` (validated); returns the old value."""
        if key not in self.live_params:
            raise KeyError(key)
        old = getattr(self.p, key)
        setattr(self.p, key, value)  # validate_assignment checks the range
        return old

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; the trainer adds weight-decay exclusion."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
