"""SimSiam: Exploring Simple Siamese Representation Learning.

Chen & He, CVPR 2021 (arXiv:2011.10566); official code github.com/facebookresearch/simsiam.

Two views go through one shared encoder f (backbone + projection MLP); a prediction MLP h
on one side predicts the other side's projection, which is treated as a constant
(stop-gradient). Loss: the negative cosine similarity, symmetrised,
``L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2``. No negatives, no momentum
encoder: the stop-gradient alone prevents collapse (section 4.1: without it the outputs
collapse at once; ``predictor: false`` + ``stop_gradient: false`` reproduces that).

Paper defaults kept here (ImageNet):
    projector        3 layers, 2048 hidden and output, BN on every layer including the output
                     (the official code's output BN has no affine parameters), no ReLU on the output
    predictor        bottleneck 2048 -> 512 (BN, ReLU) -> 2048, no BN on the output
    loss             negative cosine, symmetric, / 2 (minimum -1)
    optimiser        SGD, lr 0.05 x batch / 256, momentum 0.9, weight decay 1e-4, cosine decay,
                     no warm-up, batch 512, 100 epochs; the predictor's LR is fixed at the peak
                     (``fix_pred_lr``, table 1 / the official ``--fix-pred-lr``)
    augmentation     as MoCo v2: crop 0.2-1, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2,
                     blur p 0.5
    CIFAR-10         ResNet-18 (CIFAR stem), 2-layer projector, lr 0.03 x B / 256, wd 5e-4,
                     batch 512, 800 epochs (appendix)

Ablation switches: ``predictor``, ``stop_gradient`` (section 4.1) and ``proj_last_bn``
(table 4). With the output BN a collapsing network cannot reach a constant output and
collapses to rank ~1 instead (RankMe -> 1, the std indicator falls slowly); without it the
std of the normalised outputs drops to ~0 within a few dozen steps.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from ..components import MLPHead, build_backbone
from ..errors import ConfigError
from ..losses.byol import negative_cosine
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput


class SimSiamParams(Params):
    proj_layers: int = Field(3, ge=1, le=4, description="Projector depth (3 on ImageNet, 2 on CIFAR).")
    proj_hidden: int = Field(2048, ge=16, le=16384, description="Projector hidden width (2048).")
    proj_out: int = Field(2048, ge=8, le=16384, description="Projection dimension d (2048).")
    proj_last_bn: bool = Field(
        True, description="BatchNorm (no affine) on the projector output (paper; off: the table 4 ablation)."
    )
    pred_hidden: int = Field(512, ge=8, le=16384, description="Predictor bottleneck width (512 = d / 4).")
    fix_pred_lr: bool = Field(
        True, description="Keep the predictor's learning rate at the peak while the rest follows the schedule."
    )
    predictor: bool = Field(
        True, description="Use the prediction MLP h (off: p = z, an ablation that collapses without stop-gradient)."
    )
    stop_gradient: bool = Field(
        True, description="Stop the gradient through the target projection (off: collapse experiment, section 4.1)."
    )


class SimSiam(Method):
    name = "simsiam"
    family = "self-distillation"
    paper = "Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021"
    summary = (
        "One shared encoder; a predictor on one view regresses the other view's projection,\n"
        "held constant by a stop-gradient (negative cosine); no negatives, no momentum encoder."
    )
    Params = SimSiamParams
    live_params = ()  # everything that may change during a run is an optimiser setting

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        if cfg.aug.global_crops.count < 2:
            raise ConfigError("SimSiam compares two views: set aug.global_crops.count to 2")
        self.backbone = build_backbone(cfg.model, image_size)
        # projector: Linear-BN-ReLU x (layers - 1), then Linear-BN without affine (official code)
        self.projector = MLPHead(self.backbone.out_dim, p.proj_hidden, p.proj_out, n_layers=p.proj_layers,
                                 last_bn=p.proj_last_bn, last_bn_affine=False)
        # predictor: bottleneck d -> d/4 (BN, ReLU) -> d, plain Linear output
        self.predictor = MLPHead(p.proj_out, p.pred_hidden, p.proj_out) if p.predictor else None

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x1, x2 = batch.views[0], batch.views[1]  # x: [B, 3, h, w]
        z1 = self.projector(self.backbone(x1))  # z: [B, d]
        z2 = self.projector(self.backbone(x2))
        p1 = self.predictor(z1) if self.predictor is not None else z1  # p: [B, d]
        p2 = self.predictor(z2) if self.predictor is not None else z2
        t1, t2 = (z1.detach(), z2.detach()) if self.p.stop_gradient else (z1, z2)  # targets
        loss = 0.5 * negative_cosine(p1, t2) + 0.5 * negative_cosine(p2, t1)  # in [-1, 1]
        out_std = F.normalize(z1.detach().float(), dim=1).std(dim=0).mean()  # ~1/sqrt(d) healthy, 0 collapsed
        return StepOutput(loss=loss, scalars={"out_std": out_std}, pair=(z1.detach(), z2.detach()))

    def param_groups(self) -> list[dict]:
        if self.predictor is None or not self.p.fix_pred_lr:
            return super().param_groups()
        pred = {id(q) for q in self.predictor.parameters()}
        rest = [q for q in self.parameters() if q.requires_grad and id(q) not in pred]
        return [{"params": rest}, {"params": list(self.predictor.parameters()), "fixed_lr": True}]


    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "augment x2", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.jitter_p", "aug.gray_p", "aug.blur_p"]),
                Block("encoder", "encoder f (shared)", "encoder", ["model.arch", "model.cifar_stem"]),
                Block("projector", "projector", "head", ["params.proj_layers", "params.proj_hidden", "params.proj_out",
                                                          "params.proj_last_bn"],
                      note="BN on every layer, output BN without affine"),
                Block("predictor", "predictor h", "head", ["params.predictor", "params.pred_hidden", "params.fix_pred_lr"],
                      note="bottleneck d -> d/4 -> d"),
                Block("loss", "negative cosine (symmetric)", "loss", ["params.stop_gradient"],
                      note="D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "encoder", "view 1, view 2"),
                Edge("encoder", "projector", "h"),
                Edge("projector", "predictor", "z1, z2"),
                Edge("predictor", "loss", "p1, p2"),
                Edge("projector", "loss", "z2, z1 (stop-grad)", style="stopgrad"),
            ],
        )
