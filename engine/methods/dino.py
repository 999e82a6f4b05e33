"""DINO: self-DIstillation with NO labels.

Caron, Touvron, Misra, Jegou, Mairal, Bojanowski, Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294); official code
facebookresearch/dino (``main_dino.py``).

A student network (backbone + DINO head) is trained to match, on every other view,
the output distribution of a teacher network for the global views. The teacher is an
exponential moving average of the student and never receives gradients; its output
is centred (running mean of its logits) and sharpened (low temperature) so that
neither a uniform nor a one-hot collapse is stable. Multi-crop: the student sees all
crops (2 global + several small local ones), the teacher only the global crops.

Paper / official defaults kept here:
    head             3 layers, hidden 2048, GELU, bottleneck 256, L2 norm, weight-normed
                     last layer to K = 65536 (``norm_last_layer`` True), no BN
    temperatures     student 0.1; teacher warmed up linearly 0.04 -> 0.07 over 30 epochs
    centre momentum  0.9
    teacher momentum 0.996 -> 1 by cosine over the run (per step)
    last layer       gradients dropped during the first epoch (``freeze_last_layer`` 1)
    crops            2 x 224 global (scale 0.4-1) + 8 x 96 local (scale 0.05-0.4)
                     (``aug.global_crops`` / ``aug.local_crops`` in the presets)
    optimiser        AdamW, lr 5e-4 x batch / 256, 10 warm-up epochs, cosine to 1e-6;
                     weight decay 0.04 -> 0.4 (cosine), gradient clip 3.0 per parameter (presets: optim.clip_mode=per_param)

Monitors (section 5.3, fig. 7), per step: ``teacher_entropy`` (mean entropy of the
teacher's distribution), ``entropy_ref`` (log K, the entropy of a uniform output) and
``kl`` (mean KL(teacher || student) over the loss's pairs). Collapse to a uniform output
shows as teacher_entropy -> entropy_ref with kl -> 0; to one-hot as teacher_entropy -> 0.

Evaluation and export use the student backbone (``self.backbone``); the teacher is
``self.teacher_backbone`` (the paper evaluates the teacher, which is better after long
training; on short runs the student is ahead). With a ViT backbone the visual probe
shows the last block's CLS attention per head (figs. 1 and 3).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from ..components import build_backbone
from ..components.centering import Centering, teacher_temp_at
from ..components.dino_head import DINOHead
from ..components.momentum import ema_update, make_teacher, momentum_at
from ..errors import ConfigError
from ..losses.dino import dino_loss, entropy
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput


class DINOParams(Params):
    out_dim: int = Field(65536, ge=2, le=262144,
                         description="Head output dimension K (65536 in the paper; 1024-4096 for small data).")
    hidden_dim: int = Field(2048, ge=16, le=16384, description="Head MLP hidden width.")
    bottleneck_dim: int = Field(256, ge=8, le=4096, description="Head bottleneck width (L2-normalised).")
    head_layers: int = Field(3, ge=1, le=6, description="Linear layers of the head MLP before the bottleneck.")
    head_bn: bool = Field(False, description="BatchNorm in the head's hidden layers (off in the paper).")
    norm_last_layer: bool = Field(
        True, description="Freeze the weight-norm gain of the last layer at 1 (stabler; False: better, less stable).")
    student_temp: float = Field(0.1, gt=0.0, le=10.0, description="Student softmax temperature.")
    teacher_temp: float = Field(0.07, gt=0.0, le=10.0,
                                description="Teacher temperature after the warm-up (0.04-0.07 in the paper).")
    warmup_teacher_temp: float = Field(0.04, gt=0.0, le=10.0, description="Teacher temperature at the start.")
    warmup_teacher_temp_epochs: int = Field(
        30, ge=0, le=10000, description="Epochs of linear teacher-temperature warm-up (0: none).")
    center_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="EMA momentum of the teacher centre.")
    momentum_teacher: float = Field(0.996, ge=0.0, le=1.0,
                                    description="Teacher EMA momentum at the start (rises to 1 by cosine).")
    momentum_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="Teacher momentum schedule: cosine to 1 (paper) or constant.")
    freeze_last_layer: float = Field(
        1.0, ge=0.0, le=1000.0, description="Epochs during which the head's last layer gets no update.")


class DINO(Method):
    name = "dino"
    uses_local_crops = True
    family = "self-distillation"
    paper = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021"
    summary = (
        "A student matches, on every other crop, the centred and sharpened output distribution\n"
        "of a momentum teacher that sees only the global crops."
    )
    Params = DINOParams
    indicator_scalars = ("teacher_entropy", "entropy_ref", "kl")  # DINO section 5.3
    live_params = ("student_temp", "teacher_temp", "warmup_teacher_temp", "center_momentum", "momentum_teacher")

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        n_global, n_local = cfg.aug.global_crops.count, cfg.aug.local_crops.count
        if n_global < 1 or n_global + n_local < 2:
            raise ConfigError(
                f"DINO needs at least 1 global crop and 2 crops in all (aug.global_crops.count={n_global}, "
                f"aug.local_crops.count={n_local})")
        self.backbone = build_backbone(cfg.model, image_size)
        self.head = DINOHead(self.backbone.out_dim, p.out_dim, p.hidden_dim, p.bottleneck_dim,
                             n_layers=p.head_layers, use_bn=p.head_bn, norm_last_layer=p.norm_last_layer)
        self.teacher_backbone = make_teacher(self.backbone)  # EMA copies, no gradients
        self.teacher_head = make_teacher(self.head)
        self.center = Centering(p.out_dim, p.center_momentum)
        self._step = 0
        self.head.cancel_last_layer_grads_while(
            lambda: self._step < self.p.freeze_last_layer * self.steps_per_epoch)

    def setup_warnings(self) -> list[str]:
        frozen = int(self.p.freeze_last_layer * self.steps_per_epoch)
        if frozen >= self.total_steps:
            return [f"params.freeze_last_layer ({self.p.freeze_last_layer:g} epochs, {frozen} steps) covers the "
                    f"whole run ({self.total_steps} steps): the head's last layer never trains; lower it"]
        return []

    def teacher_temp(self, step: int) -> float:
        """Teacher temperature at a step (per-epoch warm-up as in the official code)."""
        p = self.p
        return teacher_temp_at(step // max(1, self.steps_per_epoch), p.warmup_teacher_temp, p.teacher_temp,
                               p.warmup_teacher_temp_epochs)

    def _student(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Student on all views: one backbone call per run of same-size views, one head call.
        -> z (L2-normalised bottleneck), one [B, .] tensor per view, and logits [V, B, K]."""
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))  # [n*B, D]
            start = end
        z = self.head.bottleneck(torch.cat(feats))  # z: [V*B, bottleneck]
        logits = self.head.last_layer(z)  # [V*B, K]
        return list(z.chunk(len(views))), logits.view(len(views), -1, logits.shape[-1])  # [V, B, K]

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        self._step = step  # read by the last layer's gradient hook during backward
        G = batch.n_global
        z, s_logits = self._student(batch.views)  # V x [B, bottleneck], [V, B, K]
        with torch.no_grad():
            t_logits = self.teacher_head(self.teacher_backbone(torch.cat(batch.views[:G])))  # [G*B, K]
            t_probs = self.center(t_logits, self.teacher_temp(step))  # centred + sharpened, [G*B, K]
            self.center.update(t_logits, self.p.center_momentum)  # after use, as the official code
        loss = dino_loss(s_logits, t_probs.view(G, -1, t_probs.shape[-1]), self.p.student_temp)
        h_t = entropy(t_probs)  # mean teacher entropy (every teacher view is in V - 1 pairs)
        scalars = {
            "teacher_entropy": h_t,
            "entropy_ref": torch.full((), math.log(self.p.out_dim), device=loss.device),
            "kl": loss.detach() - h_t,  # cross-entropy = entropy + KL, averaged over the pairs
        }
        return StepOutput(loss=loss, scalars=scalars, pair=(z[0].detach(), z[1].detach()))

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        m = momentum_at(step, self.total_steps, self.p.momentum_teacher, self.p.momentum_schedule)
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_head, self.head, m)


    @classmethod
    def diagram(cls) -> Diagram:
        head = ["params.out_dim", "params.hidden_dim", "params.bottleneck_dim", "params.head_layers",
                "params.head_bn", "params.norm_last_layer", "params.freeze_last_layer"]
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "multi-crop", "augment",
                      ["aug.global_crops.count", "aug.global_crops.size", "aug.global_crops.scale",
                       "aug.local_crops.count", "aug.local_crops.size", "aug.local_crops.scale",
                       "aug.blur_p", "aug.solarize_p"]),
                Block("student", "student encoder", "encoder", ["model.arch", "model.patch_size", "model.drop_path"]),
                Block("student_head", "student head", "head", head,
                      note="MLP -> L2 norm -> weight-normed linear to K"),
                Block("teacher", "teacher encoder", "encoder", ["params.momentum_teacher", "params.momentum_schedule"],
                      note="EMA of the student; global crops only"),
                Block("teacher_head", "teacher head", "head", ["params.momentum_teacher"]),
                Block("center", "centre + sharpen", "op",
                      ["params.center_momentum", "params.teacher_temp", "params.warmup_teacher_temp",
                       "params.warmup_teacher_temp_epochs"],
                      note="softmax((t - c) / tau_t); c <- m c + (1 - m) mean(t)"),
                Block("loss", "cross-entropy", "loss", ["params.student_temp"],
                      note="teacher global view i vs student view v != i, averaged"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "student", "all crops"),
                Edge("aug", "teacher", "global crops"),
                Edge("student", "student_head", "h"),
                Edge("teacher", "teacher_head", "h"),
                Edge("student_head", "loss", "softmax(s / tau_s)"),
                Edge("teacher_head", "center", "t", style="stopgrad"),
                Edge("center", "loss", "P_t", style="stopgrad"),
                Edge("student", "teacher", "EMA", style="ema"),
                Edge("student_head", "teacher_head", "EMA", style="ema"),
            ],
        )
