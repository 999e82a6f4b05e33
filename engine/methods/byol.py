"""BYOL: Bootstrap Your Own Latent, a new approach to self-supervised learning.

Grill, Strub, Altché, Tallec, Richemond, Buchatskaya, Doersch, Pires, Guo, Azar, Piot,
Kavukcuoglu, Munos, Valko, NeurIPS 2020 (arXiv:2006.07733); official code
github.com/deepmind/deepmind-research/tree/master/byol.

An online network (encoder f, projector g, predictor q) predicts the projection that a
target network (an EMA copy of f and g, no predictor, no gradient) gives for the other
view. The loss is the normalised MSE ``2 - 2 cos(q(z1), z2')``, symmetrised over the two
view orders; no negatives. The predictor and the slowly moving target keep the outputs
from collapsing.

Paper defaults kept here:
    projector        2 layers: in -> 4096 (BN, ReLU) -> 256
    predictor        same shape: 256 -> 4096 (BN, ReLU) -> 256
    target momentum  tau_base 0.996, raised to 1 by cosine: tau = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2
    loss             sum over both view orders of mean_batch (2 - 2 cos)
    augmentation     asymmetric: blur p 1.0 / 0.1, solarize p 0.0 / 0.2 for views 1 / 2;
                     jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2
    optimiser        LARS, lr 0.2 x batch / 256, weight decay 1.5e-6 (biases and BN excluded),
                     10 warm-up epochs then cosine, batch 4096, 1000 epochs
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..components import MLPHead, build_backbone
from ..components.momentum import ema_update, make_teacher, momentum_at
from ..errors import ConfigError
from ..losses.byol import normalized_mse
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput


class BYOLParams(Params):
    proj_hidden: int = Field(4096, ge=16, le=16384, description="Projector hidden width (4096 in the paper).")
    proj_out: int = Field(256, ge=8, le=8192, description="Projection (and prediction) dimension (256).")
    pred_hidden: int = Field(4096, ge=16, le=16384, description="Predictor hidden width (4096).")
    momentum: float = Field(
        0.996, ge=0.0, le=1.0,
        description="Base EMA momentum tau_base of the target network (0.996); 1 freezes the target.",
    )
    momentum_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine: tau rises from tau_base to 1 over the run (paper); constant: tau_base."
    )


class BYOL(Method):
    name = "byol"
    family = "self-distillation"
    paper = "Grill et al., Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning, NeurIPS 2020"
    summary = (
        "An online network predicts a slowly moving (EMA) target network's projection\n"
        "of another view of the same image; no negatives (normalised MSE)."
    )
    Params = BYOLParams
    live_params = ("momentum",)

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        if cfg.aug.global_crops.count < 2:
            raise ConfigError("BYOL compares two views: set aug.global_crops.count to 2")
        # online network: encoder f, projector g, predictor q
        self.backbone = build_backbone(cfg.model, image_size)
        self.projector = MLPHead(self.backbone.out_dim, p.proj_hidden, p.proj_out)
        self.predictor = MLPHead(p.proj_out, p.pred_hidden, p.proj_out)
        # target network: EMA copies of f and g (frozen, no predictor)
        self.target_backbone = make_teacher(self.backbone)
        self.target_projector = make_teacher(self.projector)
        self.register_buffer("tau", torch.tensor(p.momentum))  # current EMA momentum (logged)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x1, x2 = batch.views[0], batch.views[1]  # x: [B, 3, h, w]
        # each view is its own forward pass (BN statistics per view, as in the official code)
        z1, z2 = (self.projector(self.backbone(v)) for v in (x1, x2))  # z: [B, proj_out] online
        p1, p2 = self.predictor(z1), self.predictor(z2)  # p: [B, proj_out]
        with torch.no_grad():  # target network: no gradient (stop-gradient)
            t1, t2 = (self.target_projector(self.target_backbone(v)) for v in (x1, x2))  # [B, proj_out]
        loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)  # symmetric, each in [0, 4]
        out_std = F.normalize(z1.detach().float(), dim=1).std(dim=0).mean()  # ~1/sqrt(d) healthy, 0 collapsed
        return StepOutput(
            loss=loss,
            scalars={"out_std": out_std, "tau": self.tau.clone()},
            pair=(z1.detach(), z2.detach()),
        )

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        # tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2  (section 3.2); target <- tau target + (1 - tau) online
        tau = momentum_at(step, self.total_steps, self.p.momentum, self.p.momentum_schedule)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)
        self.tau.fill_(tau)

    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "augment x2 (asymmetric)", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.jitter_p", "aug.gray_p",
                       "aug.blur_p", "aug.solarize_p"],
                      note="view 1: blur 1.0, solarize 0.0; view 2: blur 0.1, solarize 0.2"),
                Block("encoder", "online encoder f", "encoder", ["model.arch", "model.cifar_stem"]),
                Block("projector", "online projector g", "head", ["params.proj_hidden", "params.proj_out"]),
                Block("predictor", "predictor q", "head", ["params.pred_hidden", "params.proj_out"]),
                Block("t_encoder", "target encoder f'", "encoder", ["params.momentum", "params.momentum_schedule"],
                      note="EMA of the online encoder; no gradient"),
                Block("t_projector", "target projector g'", "head", ["params.momentum", "params.momentum_schedule"],
                      note="EMA of the online projector; no gradient"),
                Block("loss", "normalised MSE (2 - 2 cos)", "loss", [],
                      note="q(z1) vs z2' and q(z2) vs z1', summed"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "encoder", "view 1, view 2"),
                Edge("aug", "t_encoder", "view 1, view 2"),
                Edge("encoder", "projector", "y"),
                Edge("projector", "predictor", "z"),
                Edge("predictor", "loss", "q(z)"),
                Edge("t_encoder", "t_projector", "y'"),
                Edge("t_projector", "loss", "z' (stop-grad)", style="stopgrad"),
                Edge("encoder", "t_encoder", "EMA", style="ema"),
                Edge("projector", "t_projector", "EMA", style="ema"),
            ],
        )
