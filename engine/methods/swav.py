"""SwAV: Swapping Assignments between multiple Views.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020 (arXiv:2006.09882); official
code facebookresearch/swav (``main_swav.py``).

Every crop is encoded, projected and L2-normalised (z) and scored against K learnable,
L2-normalised prototypes (scores z C^T). For each global crop, the Sinkhorn-Knopp
algorithm turns the batch's scores into soft codes that spread the batch evenly over the
prototypes (no collapse); the code of one crop is then predicted from the scores of
every other crop (swapped prediction, a cross-entropy with temperature 0.1).
Multi-crop: codes come from the global crops only; the loss averages over all crops.

Paper / official defaults kept here:
    projector        2 layers: backbone width -> 2048 (BN, ReLU) -> 128, then L2 norm
    prototypes       3000 (fewer for small data: 100-300), L2-normalised before every step,
                     frozen for the first 313 iterations (one ImageNet epoch at batch 4096)
    Sinkhorn         epsilon 0.05, 3 iterations
    temperature      0.1
    queue            off for large batches; 3840 features (per global crop) from epoch 15
                     when the batch is small (256); used once full, scores recomputed with
                     the current prototypes, codes kept for the batch only
    crops            2 x 224 (scale 0.14-1) + 6 x 96 (scale 0.05-0.14)
    optimiser        LARS, lr 4.8 at batch 4096 (0.3 x batch / 256), cosine to 0.0048,
                     weight decay 1e-6, 10 warm-up epochs (presets)

Monitor, per step: ``prototype_usage``, the fraction of the K prototypes that are the
hard assignment (argmax of the codes) of at least one global crop of the batch; a low
value means a few prototypes take everything (equipartition failing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..components import MLPHead, build_backbone
from ..components.queue import FeatureQueue
from ..components.sinkhorn import sinkhorn
from ..errors import ConfigError
from ..losses.swav import swav_loss
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput


class SwAVParams(Params):
    n_prototypes: int = Field(3000, ge=2, le=100000,
                              description="Number of prototypes K (3000 on ImageNet; 100-300 for small data).")
    proj_hidden: int = Field(2048, ge=16, le=16384, description="Projector hidden width.")
    proj_out: int = Field(128, ge=8, le=4096, description="Projector output (feature) dimension.")
    temperature: float = Field(0.1, gt=0.0, le=10.0, description="Softmax temperature of the swapped prediction.")
    epsilon: float = Field(0.05, gt=0.0, le=10.0,
                           description="Sinkhorn entropic regularisation (smaller: sharper codes).")
    sinkhorn_iterations: int = Field(3, ge=1, le=100, description="Sinkhorn-Knopp iterations.")
    queue_size: int = Field(
        0, ge=0, le=1_000_000,
        description="Stored features per global crop used for the codes (0: no queue; 3840 for batch 256).")
    queue_start_epoch: int = Field(15, ge=0, le=100000, description="Epoch from which the queue is filled.")
    freeze_prototypes_iters: int = Field(
        313, ge=0, le=10_000_000, description="Iterations during which the prototypes get no update.")


class SwAV(Method):
    name = "swav"
    uses_local_crops = True
    family = "contrastive"
    paper = ("Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster Assignments, "
             "NeurIPS 2020")
    summary = (
        "Crops are scored against learnable prototypes; Sinkhorn-Knopp turns the scores into\n"
        "evenly spread codes, and each crop predicts the code of another crop of the same image."
    )
    Params = SwAVParams
    live_params = ("temperature", "epsilon", "sinkhorn_iterations")

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        self.backbone = build_backbone(cfg.model, image_size)
        self.projector = MLPHead(self.backbone.out_dim, p.proj_hidden, p.proj_out)
        self.prototypes = nn.Linear(p.proj_out, p.n_prototypes, bias=False)  # C: [K, d]
        self.n_assign = cfg.aug.global_crops.count  # codes from the global crops
        if self.n_assign < 1 or self.n_assign + cfg.aug.local_crops.count < 2:
            raise ConfigError(
                f"SwAV needs at least 1 global crop and 2 crops in all (aug.global_crops.count={self.n_assign}, "
                f"aug.local_crops.count={cfg.aug.local_crops.count})")
        self.queues = nn.ModuleList(
            [FeatureQueue(p.queue_size, p.proj_out) for _ in range(self.n_assign)] if p.queue_size else [])
        self._queued: int | None = None  # rows in the queues (host-side count, no sync per step)
        self._pending: list[torch.Tensor] = []
        self._step = 0

        def drop_grad(w: torch.Tensor) -> None:  # the official code sets p.grad = None
            if self._step < self.p.freeze_prototypes_iters:
                w.grad = None

        self.prototypes.weight.register_post_accumulate_grad_hook(drop_grad)

    def _forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """z (L2-normalised projections), one [B, d] per view; one backbone call per run of
        same-size views."""
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))  # [n*B, D]
            start = end
        z = F.normalize(self.projector(torch.cat(feats)), dim=1)  # z: [V*B, d]
        return list(z.chunk(len(views)))

    def _queue_in_use(self, step: int) -> bool:
        return bool(self.queues) and step // max(1, self.steps_per_epoch) >= self.p.queue_start_epoch

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        self._step = step  # read by the prototypes' gradient hook during backward
        p = self.p
        with torch.no_grad():  # prototypes back on the unit sphere
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = self._forward(batch.views)  # V x [B, d]
        scores = list(self.prototypes(torch.cat(z)).chunk(len(z)))  # V x [B, K]
        B = z[0].shape[0]

        use_queue = self._queue_in_use(step)
        if use_queue and self._queued is None:
            self._queued = int(self.queues[0].count)  # once (e.g. after a resume)
        codes = []
        with torch.no_grad():
            for i in range(self.n_assign):
                s = scores[i].detach()  # [B, K]
                if use_queue and self._queued >= self.queues[i].size:  # used once full
                    s = torch.cat([self.queues[i].feats @ self.prototypes.weight.T, s])  # [Q + B, K]
                codes.append(sinkhorn(s, p.epsilon, p.sinkhorn_iterations)[-B:])  # [B, K], rows sum to 1
        self._pending = [z[i].detach() for i in range(self.n_assign)] if use_queue else []
        loss = swav_loss(scores, codes, list(range(self.n_assign)), p.temperature)

        hard = torch.cat(codes).argmax(dim=1)  # [n_assign * B]
        used = torch.zeros(p.n_prototypes, device=hard.device).index_fill_(0, hard, 1.0)
        return StepOutput(loss=loss, scalars={"prototype_usage": used.mean()},
                          pair=(z[0].detach(), z[1].detach()))

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        for q, feats in zip(self.queues, self._pending):
            q.enqueue(feats)  # this step's global-crop features, [B, d]
        if self._pending:
            self._queued = min(self.queues[0].size, (self._queued or 0) + self._pending[0].shape[0])
        self._pending = []

    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "multi-crop", "augment",
                      ["aug.global_crops.count", "aug.global_crops.size", "aug.global_crops.scale",
                       "aug.local_crops.count", "aug.local_crops.size", "aug.local_crops.scale"]),
                Block("encoder", "encoder f", "encoder", ["model.arch", "model.cifar_stem"]),
                Block("projector", "projector + L2 norm", "head", ["params.proj_hidden", "params.proj_out"]),
                Block("prototypes", "prototypes C", "head",
                      ["params.n_prototypes", "params.freeze_prototypes_iters"],
                      note="L2-normalised each step; scores z C^T"),
                Block("queue", "feature queue", "memory", ["params.queue_size", "params.queue_start_epoch"],
                      note="past global-crop features, rescored with the current prototypes"),
                Block("sinkhorn", "Sinkhorn-Knopp", "op", ["params.epsilon", "params.sinkhorn_iterations"],
                      note="codes q of the global crops, equipartitioned over the prototypes"),
                Block("loss", "swapped prediction", "loss", ["params.temperature"],
                      note="code of crop i predicted from every other crop"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "encoder", "all crops"),
                Edge("encoder", "projector", "h"),
                Edge("projector", "prototypes", "z"),
                Edge("projector", "queue", "z (global crops)", style="stopgrad"),
                Edge("queue", "sinkhorn", "stored z", style="stopgrad"),
                Edge("prototypes", "sinkhorn", "scores (global crops)", style="stopgrad"),
                Edge("sinkhorn", "loss", "codes q", style="stopgrad"),
                Edge("prototypes", "loss", "scores / tau (all crops)"),
            ],
        )
