"""MoCo v1 and v2: Momentum Contrast for Unsupervised Visual Representation Learning.

He, Fan, Wu, Xie, Girshick, CVPR 2020 (arXiv:1911.05722); MoCo v2: Chen, Fan, Girshick, He,
"Improved Baselines with Momentum Contrastive Learning", arXiv:2003.04297. Official code:
github.com/facebookresearch/moco (and its CIFAR-10 demo notebook for one device).

A query encoder (backbone + projector) embeds one view; a key encoder, an EMA copy of it
that gets no gradient, embeds the other view. InfoNCE pulls each query to its own key and
pushes it from a large FIFO queue of keys of earlier batches (the dictionary); after each
step the batch's keys are enqueued and the oldest dropped.

Paper defaults kept here (``moco_v1`` / ``moco_v2``):
    queue size K     65536 keys (both)
    momentum m       0.999, constant (both)
    temperature      0.07 (v1) / 0.2 (v2)
    projector        v1: none, the encoder's fc maps to 128-d (``proj_layers=1``);
                     v2: 2-layer MLP in -> in (ReLU, no BN) -> 128 (``proj_layers=2``)
    augmentation     crop scale (0.2, 1), grayscale 0.2, flip; v1: colour jitter 0.4 (hue 0.4)
                     always; v2: jitter (0.4, 0.4, 0.4, 0.1) p 0.8 and Gaussian blur p 0.5
    optimiser        SGD, lr 0.03 x batch / 256, momentum 0.9, weight decay 1e-4, batch 256,
                     200 epochs; v1 drops the LR 10x at epochs 120 and 160, v2 uses cosine
                     (the presets use cosine for both: the trainer has no step schedule)
    shuffling BN     see below

Shuffling BN on one device. The official code trains on 8 GPUs without SyncBN, so each
BatchNorm sees 1/8 of the batch, and it shuffles the key batch across GPUs so that a
query's BN sub-batch and its key's BN sub-batch hold different images (otherwise the
model "cheats" through the batch statistics, paper section 3.3). As in the official
one-device demo, the backbones' BatchNorm2d layers here compute their training statistics
per sub-batch (``bn_splits`` groups, :class:`SplitBatchNorm2d`) and the key batch is
shuffled before the key encoder and unshuffled after it. ``bn_splits=1`` turns both off
(ordinary BN over the whole batch, the setting the paper warns against). ViTs have no BN.

The queue starts filled with random unit vectors, as in the official code, so the loss
has K negatives from the first step; the ``queue_fill`` monitor is the fraction of the
queue that holds real keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..components import MLPHead, build_backbone
from ..components.momentum import ema_update, make_teacher
from ..components.queue import FeatureQueue
from ..errors import ConfigError
from ..losses import info_nce
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over ``splits`` groups of the batch.

    Emulates BN on ``splits`` devices without SyncBN: image ``i`` is normalised with the
    statistics of the images ``j`` with ``j % s == i % s``, where ``s = gcd(N, splits)`` (fewer
    groups if a group would hold a single value per channel, e.g. 1x1 maps of tiny batches). The
    running statistics are the mean over the groups. In eval mode this is a plain BatchNorm2d
    (same parameters and buffers, so ``state_dict`` keys do not change).
    """

    splits: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = math.gcd(n, self.splits)
        while s > 1 and (n // s) * h * w < 2:  # BN needs two values per channel and group
            s = math.gcd(n, s // 2)
        if not self.training or s == 1:
            return super().forward(x)
        # [N, C, H, W] -> [N/s, s*C, H, W]: image i's channel ch becomes channel (i % s) * C + ch
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)  # [s*C]
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        y = F.batch_norm(x.reshape(n // s, s * c, h, w), mean, var,
                         self.weight.repeat(s) if self.affine else None,
                         self.bias.repeat(s) if self.affine else None, True, factor, self.eps)
        self.running_mean.copy_(mean.view(s, c).mean(0))
        self.running_var.copy_(var.view(s, c).mean(0))
        y = y.reshape(n, c, h, w)
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)  # keep the layout of the next conv
        return y


def split_batchnorm(module: nn.Module, splits: int) -> None:
    """Make every tracking BatchNorm2d in ``module`` a :class:`SplitBatchNorm2d` (in place)."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d and m.track_running_stats:
            m.__class__ = SplitBatchNorm2d  # adds behaviour only: same parameters and buffers
            m.splits = splits


class MoCoV1Params(Params):
    queue_size: int = Field(
        65536, ge=8, le=1_048_576,
        description="Keys in the queue K (65536); live: resizing keeps the newest keys.",
    )
    momentum: float = Field(
        0.999, ge=0.0, le=1.0, description="EMA momentum m of the key encoder (0.999, constant); 1 freezes it."
    )
    temperature: float = Field(0.07, gt=0.0, le=10.0, description="InfoNCE temperature (0.07 v1, 0.2 v2).")
    proj_layers: int = Field(
        1, ge=1, le=4,
        description="Projector depth: 1 = the encoder's fc to proj_out (v1), 2 = MLP with ReLU (v2).",
    )
    proj_hidden: int | None = Field(
        None, ge=16, le=16384, description="Projector hidden width; empty: the backbone's width (2048 for R50)."
    )
    proj_out: int = Field(128, ge=8, le=8192, description="Query / key dimension (128).")
    bn_splits: int = Field(
        8, ge=1, le=64,
        description="Shuffling BN on one device: BN statistics per 1/bn_splits of the batch (8 GPUs in "
        "the paper) and a shuffled key batch; 1 turns it off.",
    )
    symmetric: bool = Field(
        False,
        description="Also contrast view 2's query with view 1's key (sum of both losses, 2B keys enqueued), "
        "as in the official CIFAR demo; the papers use one direction.",
    )


class MoCoV2Params(MoCoV1Params):
    temperature: float = Field(0.2, gt=0.0, le=10.0, description="InfoNCE temperature (0.07 v1, 0.2 v2).")
    proj_layers: int = Field(
        2, ge=1, le=4,
        description="Projector depth: 1 = the encoder's fc to proj_out (v1), 2 = MLP with ReLU (v2).",
    )


class MoCoV1(Method):
    name = "moco_v1"
    family = "contrastive"
    paper = "He et al., Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020"
    summary = (
        "A query is pulled to the key of another view (from a slowly moving EMA encoder)\n"
        "and pushed from a large queue of keys of earlier batches (InfoNCE)."
    )
    Params = MoCoV1Params
    live_params = ("temperature", "momentum", "queue_size")

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        if cfg.aug.global_crops.count < 2:
            raise ConfigError("MoCo matches a query view with a key view: set aug.global_crops.count to 2")
        # query encoder: backbone f_q and projector (v1: one Linear, the "fc"; v2: MLP)
        self.backbone = build_backbone(cfg.model, image_size)
        if p.bn_splits > 1:
            split_batchnorm(self.backbone, p.bn_splits)
        d = self.backbone.out_dim
        self.projector = MLPHead(d, p.proj_hidden or d, p.proj_out, n_layers=p.proj_layers, bn=False)
        # key encoder: an EMA copy, no gradient
        self.key_backbone = make_teacher(self.backbone)
        self.key_projector = make_teacher(self.projector)
        # the dictionary: K keys [K, proj_out], random unit vectors until real keys arrive
        self.queue = FeatureQueue(p.queue_size, p.proj_out)
        self._randomise_unfilled_rows(0)  # (the queue is empty: no host read, so it also builds on 'meta')
        self._pending: torch.Tensor | None = None  # this step's keys, enqueued after the optimiser step

    @torch.no_grad()
    def _randomise_unfilled_rows(self, filled: int | None = None) -> None:
        n = int(self.queue.count) if filled is None else filled  # host read: only on resize
        rows = self.queue.feats[n:]
        rows.copy_(F.normalize(torch.randn_like(rows), dim=1))

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """Key encoder on x [B, 3, h, w] -> unit keys [B, proj_out], with the batch shuffled for BN."""
        if self.p.bn_splits > 1:
            perm = torch.randperm(x.shape[0], device=x.device)  # shuffle: other BN groups than the queries
            k = self.key_projector(self.key_backbone(x[perm]))
            k = k[torch.argsort(perm)]  # unshuffle: row i is image i again
        else:
            k = self.key_projector(self.key_backbone(x))
        return F.normalize(k.float(), dim=1)

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x1, x2 = batch.views[0], batch.views[1]  # x: [B, 3, h, w]
        t = self.p.temperature  # live-tunable
        queue = self.queue.feats  # [K, proj_out] negatives (no gradient: a buffer)
        q1 = self.projector(self.backbone(x1))  # q: [B, proj_out]
        k2 = self._keys(x2)  # k: [B, proj_out], no gradient
        loss = info_nce(q1, k2, queue, t)  # logits [B, 1 + K], positive first
        keys, pair = k2, (q1.detach(), k2)
        if self.p.symmetric:
            q2 = self.projector(self.backbone(x2))
            k1 = self._keys(x1)
            loss = loss + info_nce(q2, k1, queue, t)
            keys, pair = torch.cat([k2, k1]), (q1.detach(), q2.detach())
        self._pending = keys
        scalars = self._monitors(q1.detach(), k2, queue)
        return StepOutput(loss=loss, scalars=scalars, pair=pair)

    @torch.no_grad()
    def _monitors(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean positive cosine, mean hardest-negative cosine (real keys only), queue fill (0-dim tensors);
        in float32 (the step runs under bf16 autocast on CUDA)."""
        with torch.autocast(q.device.type, enabled=False):
            return self._monitors_fp32(q.float(), k.float(), queue.float())

    def _monitors_fp32(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> dict[str, torch.Tensor]:
        q = F.normalize(q, dim=1)  # q: [B, d]
        pos = (q * k).sum(dim=1).mean()
        sim = q @ queue.T  # [B, K]
        real = torch.arange(queue.shape[0], device=q.device) < self.queue.count  # filled rows are first
        hard = sim.masked_fill(~real, -1.0).max(dim=1).values.mean()  # -1 while the queue is empty
        fill = self.queue.count.float() / self.queue.size
        return {"pos_sim": pos, "hard_neg_sim": hard, "queue_fill": fill}

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        # enqueue this step's keys (dropping the oldest), then move the key encoder:
        # theta_k <- m theta_k + (1 - m) theta_q  (eq. 2)
        if self._pending is not None:
            self.queue.enqueue(self._pending)
            self._pending = None
        ema_update(self.key_backbone, self.backbone, self.p.momentum)
        ema_update(self.key_projector, self.projector, self.p.momentum)

    def set_live(self, key: str, value):
        old = super().set_live(key, value)
        if key == "queue_size" and int(value) != self.queue.size:
            self.queue.resize(int(value))  # keeps the newest keys
            self._randomise_unfilled_rows()
        return old


    _projector_label = "fc (128-d)"

    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "augment x2", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.jitter_p", "aug.gray_p", "aug.blur_p"]),
                Block("encoder", "encoder f_q", "encoder", ["model.arch", "model.cifar_stem", "params.bn_splits"],
                      note="BN statistics per 1/bn_splits of the batch (shuffling BN)"),
                Block("projector", f"projector {cls._projector_label}", "head",
                      ["params.proj_layers", "params.proj_hidden", "params.proj_out"]),
                Block("query", "query q", "op", [], note="view 1 (and view 2 when symmetric)"),
                Block("key_encoder", "momentum encoder f_k", "encoder", ["params.momentum", "params.bn_splits"],
                      note="EMA of f_q and its projector; no gradient; key batch shuffled for BN"),
                Block("key", "key k", "op", [], note="view 2; normalised"),
                Block("queue", "queue of keys", "memory", ["params.queue_size"],
                      note="FIFO: this batch's keys in, the oldest out"),
                Block("loss", "InfoNCE", "loss", ["params.temperature", "params.symmetric"],
                      note="positive: q.k; negatives: q against the K queued keys"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "encoder", "view 1"),
                Edge("aug", "key_encoder", "view 2"),
                Edge("encoder", "projector", "h"),
                Edge("projector", "query", "q"),
                Edge("query", "loss", "q"),
                Edge("encoder", "key_encoder", "EMA (m)", style="ema"),
                Edge("key_encoder", "key", "k", style="stopgrad"),
                Edge("key", "loss", "positive", style="stopgrad"),
                Edge("key", "queue", "enqueue", style="stopgrad"),
                Edge("queue", "loss", "negatives", style="stopgrad"),
            ],
        )


class MoCoV2(MoCoV1):
    name = "moco_v2"
    paper = "Chen et al., Improved Baselines with Momentum Contrastive Learning, arXiv 2020"
    summary = (
        "MoCo with SimCLR's improvements: an MLP projection head, temperature 0.2, blur in\n"
        "the augmentation and a cosine LR; a queue of keys from an EMA encoder as negatives."
    )
    Params = MoCoV2Params
    _projector_label = "MLP (2 layers)"
