"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction.

Zbontar, Jing, Misra, LeCun, Deny, ICML 2021 (arXiv:2103.03230); official code
github.com/facebookresearch/barlowtwins.

Two views go through one shared encoder and a wide projector. Each branch's embeddings
are standardised over the batch (BatchNorm without affine) and their cross-correlation
matrix C [D, D] is pushed towards the identity: the diagonal to 1 (invariance to the
augmentations), the off-diagonal to 0 (decorrelated, non-redundant dimensions), which
also rules out collapse. No negatives, no predictor, no stop-gradient, no momentum.

Paper defaults kept here:
    projector        3 linear layers 8192-8192-8192: Linear-BN-ReLU twice, then a plain
                     Linear (no bias, no BN); then BN(affine=False) on each branch (in the loss)
    loss             sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2, lambda = 0.0051
    augmentation     as BYOL: blur p 1.0 / 0.1, solarize p 0.0 / 0.2 for views 1 / 2
    optimiser        LARS, lr 0.2 for weights and 0.0048 for biases and BN parameters (x batch / 256;
                     ``bias_lr_scale`` = 0.0048 / 0.2), weight decay 1.5e-6 (biases and BN excluded),
                     10 warm-up epochs then cosine, batch 2048, 1000 epochs
"""

from __future__ import annotations

from pydantic import Field

from ..components import MLPHead, build_backbone
from ..errors import ConfigError
from ..losses.barlow import BarlowTwinsLoss
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput


class BarlowTwinsParams(Params):
    proj_layers: int = Field(3, ge=1, le=4, description="Projector depth (3 linear layers in the paper).")
    proj_hidden: int = Field(8192, ge=16, le=32768, description="Projector hidden width (8192).")
    proj_out: int = Field(8192, ge=8, le=32768, description="Embedding dimension D of the cross-correlation (8192).")
    lambd: float = Field(
        0.0051, ge=0.0, le=1.0,
        description="Weight lambda of the off-diagonal (redundancy-reduction) term (0.0051, about 1/D).",
    )
    bias_lr_scale: float = Field(
        0.024, gt=0.0, le=1.0,
        description="LR multiplier of biases and norm parameters (paper: 0.0048 / 0.2 = 0.024 with LARS).",
    )


class BarlowTwins(Method):
    name = "barlow_twins"
    family = "contrastive"  # across dimensions, not samples (Garrido et al. 2023: dimension-contrastive)
    paper = "Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, ICML 2021"
    summary = (
        "The cross-correlation of two views' batch-normalised embeddings is pushed towards\n"
        "the identity: invariant features on the diagonal, decorrelated dimensions off it."
    )
    Params = BarlowTwinsParams
    live_params = ("lambd",)

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        if cfg.aug.global_crops.count < 2:
            raise ConfigError("Barlow Twins compares two views: set aug.global_crops.count to 2")
        self.backbone = build_backbone(cfg.model, image_size)
        # Linear(no bias)-BN-ReLU x (layers - 1), then Linear(no bias): the official projector
        self.projector = MLPHead(self.backbone.out_dim, p.proj_hidden, p.proj_out, n_layers=p.proj_layers,
                                 bias=False)
        self.criterion = BarlowTwinsLoss(p.lambd)  # includes the affine-free batch standardisation

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x1, x2 = batch.views[0], batch.views[1]  # x: [B, 3, h, w]
        z1 = self.projector(self.backbone(x1))  # z: [B, D]
        z2 = self.projector(self.backbone(x2))
        loss, on_diag, off_diag = self.criterion(z1, z2, self.p.lambd)  # C: [D, D] inside, float32
        return StepOutput(
            loss=loss,
            scalars={"loss_on_diag": on_diag.detach(), "loss_off_diag": (self.p.lambd * off_diag).detach()},
            pair=(z1.detach(), z2.detach()),
        )

    def param_groups(self) -> list[dict]:
        # the paper's two learning rates: weights, and biases + BN parameters (1-D tensors)
        params = [q for q in self.parameters() if q.requires_grad]
        weights = [q for q in params if q.ndim > 1]
        biases = [q for q in params if q.ndim <= 1]
        groups = [{"params": weights}]
        if biases:
            groups.append({"params": biases, "lr_scale": self.p.bias_lr_scale})
        return groups


    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "augment x2 (asymmetric)", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.jitter_p", "aug.gray_p",
                       "aug.blur_p", "aug.solarize_p"]),
                Block("encoder", "encoder f (shared)", "encoder", ["model.arch", "model.cifar_stem"]),
                Block("projector", "projector", "head", ["params.proj_layers", "params.proj_hidden", "params.proj_out"]),
                Block("bn", "batch norm (no affine)", "op", [], note="standardise each dimension over the batch"),
                Block("xcorr", "cross-correlation C", "op", ["params.proj_out"], note="C = zn1^T zn2 / B, [D, D]"),
                Block("loss", "Barlow Twins loss", "loss", ["params.lambd"],
                      note="sum (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "encoder", "view 1, view 2"),
                Edge("encoder", "projector", "y"),
                Edge("projector", "bn", "z1, z2"),
                Edge("bn", "xcorr", "zn1, zn2"),
                Edge("xcorr", "loss", "C"),
            ],
        )
