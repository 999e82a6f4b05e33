"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers.

Chen, Xie, He, ICCV 2021 (arXiv:2104.02057). Official code: github.com/facebookresearch/moco-v3.

No queue: the negatives of a query are the keys of the other images in the batch. The
query network is backbone -> projector -> predictor; the key network (momentum encoder)
is an EMA copy of backbone -> projector that gets no gradient. Both views play both
roles, and each direction's InfoNCE is scaled by 2T as in the official code:

    loss = 2T * ctr(q1, k2) + 2T * ctr(q2, k1),   ctr(q, k) = CE(q k^T / T, diagonal)

Paper / official-code defaults kept here:
    temperature      0.2 (ViT); 1.0 for ResNet-50 (preset ``moco_v3_resnet50``)
    momentum         0.99, raised to 1 by cosine: m = 1 - (1 - m0)(cos(pi k / K) + 1) / 2
    projector        ViT: 3 layers, ResNet: 2 layers; hidden 4096, output 256, BN on every
                     layer, the last BN without affine; Linear layers without bias
    predictor        2 layers, 256 -> 4096 (BN, ReLU) -> 256; ViT: output BN without affine,
                     ResNet: none
    ViT              random patch projection (Xavier-uniform init, frozen:
                     ``freeze_patch_embed``), fixed 2-D sin-cos position embedding, Linear
                     layers Xavier-uniform with Q, K, V as separate matrices (``vits.py``)
    augmentation     BYOL's asymmetric views: blur p 1.0 / 0.1, solarize p 0 / 0.2; jitter
                     (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, crop scale (0.08, 1)
    optimiser        ViT: AdamW, lr 1.5e-4 x batch / 256, weight decay 0.1, 40 warm-up epochs
                     of 300, batch 4096. ResNet-50: LARS, lr 0.6 x batch / 256, weight decay 1e-6,
                     10 warm-up epochs of 100 (crop scale (0.2, 1)).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..components import MLPHead, ViTBackboneMixin, build_backbone, xavier_init_split_qkv
from ..components.momentum import ema_update, make_teacher, momentum_at
from ..errors import ConfigError
from ..losses import info_nce
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput


class MoCoV3Params(Params):
    temperature: float = Field(
        0.2, gt=0.0, le=10.0, description="InfoNCE temperature T (0.2 for ViT, 1.0 for ResNet in the paper)."
    )
    momentum: float = Field(
        0.99, ge=0.0, le=1.0, description="Base EMA momentum of the momentum encoder (0.99); 1 freezes it."
    )
    momentum_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine: the momentum rises from its base to 1 over the run (paper); constant."
    )
    proj_layers: int | None = Field(
        None, ge=1, le=4, description="Projector depth; empty: 3 for a ViT, 2 for a ResNet (official code)."
    )
    proj_hidden: int = Field(4096, ge=16, le=16384, description="Projector hidden width (4096).")
    proj_out: int = Field(256, ge=8, le=8192, description="Output dimension of projector and predictor (256).")
    pred_hidden: int = Field(4096, ge=16, le=16384, description="Predictor hidden width (4096).")
    freeze_patch_embed: bool = Field(
        False,
        description="ViT: random patch projection, Xavier-initialised and frozen (stabilises training; "
        "on in the ViT presets).",
    )
    sincos_pos_embed: bool = Field(
        True, description="ViT: fixed 2-D sin-cos position embedding (official code) instead of a learned one."
    )


def sincos_2d(gh: int, gw: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine-cosine position embedding [gh * gw, dim] (row-major patches): a quarter of the
    channels each for sin / cos of the column and of the row, at geometric frequencies."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4 (got {dim})")
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                indexing="ij")
    omega = temperature ** -(torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # [dim/4]
    c = cols.flatten()[:, None] * omega  # [L, dim/4]
    r = rows.flatten()[:, None] * omega
    return torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=1)  # [L, dim]


class MoCoV3(Method):
    name = "moco_v3"
    family = "contrastive"
    paper = "Chen, Xie & He, An Empirical Study of Training Self-Supervised Vision Transformers, ICCV 2021"
    summary = (
        "Each view's prediction is pulled to the momentum encoder's key of the other view and\n"
        "pushed from the keys of the other images in the batch (symmetric InfoNCE, no queue)."
    )
    Params = MoCoV3Params
    live_params = ("temperature", "momentum")

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        if cfg.aug.global_crops.count < 2:
            raise ConfigError("MoCo v3 matches two views symmetrically: set aug.global_crops.count to 2")
        self.backbone = build_backbone(cfg.model, image_size)
        self.is_vit = isinstance(self.backbone, ViTBackboneMixin)
        if self.is_vit:
            self._prepare_vit()
        d = self.backbone.out_dim
        # projector: Linear (no bias) -> BN -> ReLU ... -> Linear -> BN without affine ("SimCLR's design")
        n_proj = p.proj_layers or (3 if self.is_vit else 2)
        self.projector = MLPHead(d, p.proj_hidden, p.proj_out, n_layers=n_proj,
                                 last_bn=True, last_bn_affine=False, bias=False)
        # predictor: 2 layers; the output BN (no affine) only for ViTs, as in the official code
        self.predictor = MLPHead(p.proj_out, p.pred_hidden, p.proj_out, n_layers=2,
                                 last_bn=self.is_vit, last_bn_affine=False, bias=False)
        # momentum encoder: EMA copies of backbone and projector (no predictor, no gradient)
        self.momentum_backbone = make_teacher(self.backbone)
        self.momentum_projector = make_teacher(self.projector)
        self.register_buffer("m", torch.tensor(p.momentum))  # current EMA momentum (logged)

    @torch.no_grad()
    def _prepare_vit(self) -> None:
        vit, p = self.backbone, self.p
        if p.sincos_pos_embed and getattr(vit, "pos_embed", None) is not None:
            gh, gw = vit.grid(self.image_size, self.image_size)
            pe = vit.pos_embed  # [1, prefix + L, D]; prefix rows (CLS) stay zero
            n_prefix = pe.shape[1] - gh * gw
            if n_prefix >= 0:
                pe.zero_()
                pe[0, n_prefix:] = sincos_2d(gh, gw, pe.shape[2]).to(pe.dtype)
                pe.requires_grad_(False)
        xavier_init_split_qkv(vit)  # the official ViT's Linear layers (Q, K, V apart), bias 0
        # the official ViT's patch projection: Xavier-uniform over (3 ps ps + D), zero bias;
        # frozen (random) with freeze_patch_embed, the paper's stabilising trick
        proj = vit.patch_embed.proj  # Conv2d(3, D, ps, stride=ps)
        fan = proj.weight.shape[1] * proj.weight.shape[2] * proj.weight.shape[3] + proj.weight.shape[0]
        bound = math.sqrt(6.0 / fan)
        proj.weight.uniform_(-bound, bound)
        if proj.bias is not None:
            proj.bias.zero_()
        if p.freeze_patch_embed:
            proj.weight.requires_grad_(False)
            if proj.bias is not None:
                proj.bias.requires_grad_(False)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x1, x2 = batch.views[0], batch.views[1]  # x: [B, 3, h, w]
        t = self.p.temperature  # live-tunable
        # query network, one forward per view (BN statistics per view)
        z1, z2 = (self.projector(self.backbone(v)) for v in (x1, x2))  # z: [B, proj_out]
        q1, q2 = self.predictor(z1), self.predictor(z2)  # q: [B, proj_out]
        with torch.no_grad():  # momentum encoder: no gradient
            k1, k2 = (self.momentum_projector(self.momentum_backbone(v)) for v in (x1, x2))  # k: [B, proj_out]
        # in-batch negatives: logits [B, B], target i; each direction scaled by 2T (official code)
        loss = 2 * t * (info_nce(q1, k2, None, t) + info_nce(q2, k1, None, t))
        scalars = self._monitors(q1.detach(), k2)
        scalars["momentum"] = self.m.clone()
        return StepOutput(loss=loss, scalars=scalars, pair=(z1.detach(), z2.detach()))

    @staticmethod
    @torch.no_grad()
    def _monitors(q: torch.Tensor, k: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean positive cosine (diagonal) and mean hardest-negative cosine (off-diagonal max)."""
        q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)  # [B, d]
        sim = q @ k.T  # [B, B]
        eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
        return {"pos_sim": sim.diagonal().mean(), "hard_neg_sim": sim.masked_fill(eye, -1.0).max(dim=1).values.mean()}

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        # the keys of the next step use m(k + 1) = 1 - (1 - m0)(cos(pi (k + 1) / K) + 1) / 2
        m = momentum_at(step + 1, self.total_steps, self.p.momentum, self.p.momentum_schedule)
        ema_update(self.momentum_backbone, self.backbone, m)
        ema_update(self.momentum_projector, self.projector, m)
        self.m.fill_(m)


    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "augment x2 (asymmetric)", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.jitter_p", "aug.gray_p",
                       "aug.blur_p", "aug.solarize_p"]),
                Block("encoder", "encoder f", "encoder",
                      ["model.arch", "model.patch_size", "params.freeze_patch_embed", "params.sincos_pos_embed"]),
                Block("projector", "projector g", "head",
                      ["params.proj_layers", "params.proj_hidden", "params.proj_out"]),
                Block("predictor", "predictor h", "head", ["params.pred_hidden", "params.proj_out"]),
                Block("m_encoder", "momentum encoder f_k", "encoder", ["params.momentum", "params.momentum_schedule"],
                      note="EMA of f; no gradient"),
                Block("m_projector", "momentum projector g_k", "head", ["params.momentum", "params.momentum_schedule"],
                      note="EMA of g; no gradient"),
                Block("loss", "InfoNCE x 2T (symmetric)", "loss", ["params.temperature"],
                      note="q1 vs k2 and q2 vs k1; negatives: the other keys of the batch"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "encoder", "view 1, view 2"),
                Edge("aug", "m_encoder", "view 1, view 2"),
                Edge("encoder", "projector", "h"),
                Edge("projector", "predictor", "z"),
                Edge("predictor", "loss", "q1, q2"),
                Edge("m_encoder", "m_projector", "h_k"),
                Edge("m_projector", "loss", "k1, k2 (stop-grad)", style="stopgrad"),
                Edge("encoder", "m_encoder", "EMA (m)", style="ema"),
                Edge("projector", "m_projector", "EMA (m)", style="ema"),
            ],
        )
