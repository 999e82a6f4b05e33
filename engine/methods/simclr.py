"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.

Chen, Kornblith, Norouzi, Hinton, ICML 2020 (arXiv:2002.05709); SimCLR v2:
Chen et al., NeurIPS 2020 (arXiv:2006.10029).

Two augmented views of each image go through one shared encoder and a projection
MLP; the NT-Xent loss pulls the two views of an image together and pushes them
away from the other 2B - 2 views of the batch.

Paper defaults kept here:
    temperature      0.5 (CIFAR-10, batch 512, appendix B.9); 0.1 for ImageNet / v2 preset
    projector        2 layers (hidden = backbone width, BN + ReLU), output 128
    v2 projector     3 layers with BN on every layer (preset ``simclr_v2``)
    augmentation     random-resized-crop, flip, colour jitter (strength 0.5 on CIFAR), grayscale 0.2;
                     no blur on 32-96 px images
    optimiser        LARS (trust coefficient 0.001), lr 0.3 x batch / 256, weight decay 1e-6,
                     10 warm-up epochs, cosine; CIFAR-10: lr 1.0 x batch / 256, weight decay 1e-4
    BatchNorm        both views in one forward pass (statistics over all 2B views, as the official code)
"""

from __future__ import annotations

import torch

from pydantic import Field

from ..components import MLPHead, build_backbone
from ..errors import ConfigError
from ..losses import NTXentLoss
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput


class SimCLRParams(Params):
    temperature: float = Field(0.5, gt=0.0, le=10.0, description="NT-Xent temperature (0.5 CIFAR, 0.1 ImageNet).")
    proj_layers: int = Field(2, ge=1, le=4, description="Projector depth (2 in SimCLR, 3 in SimCLR v2).")
    proj_hidden: int | None = Field(
        None, ge=16, le=16384, description="Projector hidden width; empty: the backbone's width."
    )
    proj_out: int = Field(128, ge=8, le=8192, description="Projector output dimension.")
    proj_last_bn: bool = Field(False, description="BatchNorm on the projector output (SimCLR v2).")


class SimCLR(Method):
    name = "simclr"
    family = "contrastive"
    paper = "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020"
    summary = (
        "Two augmented views of each image are pulled together by the NT-Xent loss\n"
        "while every other image in the batch serves as a negative."
    )
    Params = SimCLRParams
    live_params = ("temperature",)

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        if cfg.aug.global_crops.count < 2:
            raise ConfigError("SimCLR contrasts two views: set aug.global_crops.count to 2")
        self.backbone = build_backbone(cfg.model, image_size)
        d = self.backbone.out_dim
        self.projector = MLPHead(d, p.proj_hidden or d, p.proj_out, n_layers=p.proj_layers, last_bn=p.proj_last_bn)
        self.criterion = NTXentLoss(p.temperature)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x = torch.cat([batch.views[0], batch.views[1]])  # x: [2B, 3, h, w]
        # one forward: BatchNorm statistics over both views together, as the official code
        z0, z1 = self.projector(self.backbone(x)).chunk(2)  # z: [B, proj_out] each
        self.criterion.temperature = self.p.temperature  # live-tunable
        loss = self.criterion(z0, z1)
        return StepOutput(loss=loss, pair=(z0.detach(), z1.detach()))

    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "augment x2", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.jitter_p", "aug.gray_p", "aug.blur_p"]),
                Block("encoder", "encoder f", "encoder", ["model.arch", "model.cifar_stem"]),
                Block("projector", "projector g", "head", ["params.proj_layers", "params.proj_hidden",
                                                           "params.proj_out", "params.proj_last_bn"]),
                Block("loss", "NT-Xent", "loss", ["params.temperature"],
                      note="positives: the other view; negatives: the 2B-2 other views"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "encoder", "view 1, view 2"),
                Edge("encoder", "projector", "h"),
                Edge("projector", "loss", "z1, z2"),
            ],
        )
