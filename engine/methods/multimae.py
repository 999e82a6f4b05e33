"""MultiMAE: Multi-modal Multi-task Masked Autoencoders.

Bachmann, Mizrahi, Atanov, Zamir, ECCV 2022 (arXiv:2204.01678). Official code:
github.com/EPFL-VILAB/MultiMAE (``run_pretraining_multimae.py``, ``multimae/multimae.py``,
``multimae/input_adapters.py``, ``multimae/output_adapters.py``, ``multimae/criterion.py``,
``cfgs/pretrain/multimae-b_98_rgb+-depth-semseg_1600e.yaml``).

RGB, depth and semantic segmentation are each cut into patches and projected to tokens
by their own input adapter (segmentation: a class embedding, then a patch projection);
all three get the same fixed 2-D sin-cos positions. A fixed budget of visible tokens is
split between the modalities by a Dirichlet draw per image, the visible tokens of every
modality plus one global token go through ONE shared ViT encoder, and a shallow decoder
per modality reconstructs all of that modality's patches: its queries (the modality's
encoded visible tokens and mask tokens, with positions and a modality embedding)
cross-attend to all encoded tokens, then a few self-attention blocks follow. Losses on
the masked patches only: MSE on per-patch normalised pixels for RGB, L1 on
(standardised) depth, cross-entropy for segmentation; their sum is minimised.

The method crops and flips the images itself: one random-resized crop + flip per image
is applied identically to RGB, depth (bilinear) and segmentation (nearest) with
``affine_grid`` / ``grid_sample``, from the uncropped ``batch.images`` and
``batch.extras['depth' | 'seg']`` (the trainer's own views are not used; the presets set
``aug.global_crops.count`` to 0). Crop size, scale and aspect range and the flip
probability are ``aug.global_crops.size``, ``aug.global_crops.scale``, ``aug.ratio`` and
``aug.hflip_p``.

Paper / official-code defaults kept here:
    modalities       rgb, depth, semantic segmentation as inputs and outputs
    visible tokens   98 of 3 x 196 (1/6) at 224 px, patch 16 (``num_visible``; empty: 1/6 of all)
    allocation       Dirichlet(alpha = 1) over the modalities, per image
    encoder          ViT-B/16, one global token, sin-cos positions (not learnt), no modality embedding,
                     the official init (Xavier-uniform, Q / K / V apart); the ViT's final norm stays
                     on the decoders' path (the official encoder has none: see ``run_encoder``)
    adapters         linear patch projections; segmentation: class embedding 64 wide, then a patch
                     projection, at 1/4 resolution with 4 px patches (the official ``stride_level``
                     4: a 56 x 56 map at 224 px, one 4 x 4 patch per token; ``seg_stride``), and
                     the segmentation decoder predicts that 1/4-resolution map
    decoders         256 wide, 8 heads, one cross-attention + MLP, then 2 self-attention blocks;
                     queries = own encoded tokens + mask tokens, + positions + modality embedding
    losses           RGB: MSE on per-patch normalised pixels (norm_pix; the official code also adds
                     a plain-pixel RGB decoder), depth: L1 on per-image standardised depth (10 %
                     trimmed mean / std), segmentation: cross-entropy; each averaged over the masked
                     pixels of an image, then over the images; summed, unweighted
    augmentation     random-resized crop, scale (0.2, 1), ratio (3/4, 4/3), flip 0.5; nothing else
    optimiser        AdamW, betas (0.9, 0.95), lr 1e-4 x batch / 256, weight decay 0.05, 40 warm-up
                     epochs, cosine to 0, batch 2048, 1600 epochs (preset ``multimae``)

Data: ``shapes`` has all three; a folder provides depth and segmentation as trees parallel
to its images (``rgb/``, ``depth/``, ``seg/``, files of the same names; see
:mod:`engine.data.modalities`). ``params.modalities`` may restrict the run (it must keep rgb);
a source without the maps (a plain folder, an archive) works only with ``modalities: [rgb]``.

``embed()`` for kNN: the encoder on RGB alone (all RGB tokens, no masking), its global token
after the final norm (``embed_pool: cls``; every decoder cross-attends to it), or the mean of
its patch tokens (``mean``, as MultiMAE's classification fine-tuning pools).
Probes: per modality original | masked | prediction | prediction pasted into the visible
patches, and ``cross_modal``: depth and segmentation predicted from RGB alone. They use the
first 8 images of the first training batch (with their depth and segmentation), since the
trainer's fixed probe images come without them.
"""

from __future__ import annotations

import colorsys
import math
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from timm.layers import Mlp
from timm.models.vision_transformer import Block as ViTBlock
from torch import nn

from ..augment import denormalize
from ..components import ViTBackboneMixin, build_backbone, xavier_init_split_qkv
from ..data.modalities import available_modalities
from ..errors import ConfigError, DataError
from ..masking import dirichlet_allocation, mask_to_pixels, multimodal_random_masking
from ..probes import MASK_GREY, mask_images, norm_pix_target, patchify, reconstruction_panels, to_hwc_uint8, unpatchify
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput
from .moco_v3 import sincos_2d

MODALITIES = ("rgb", "depth", "seg")  # canonical order of the token sequence
PROBE_SEED = 1234  # the probe's masks are the same at every snapshot, so snapshots compare
PROBE_IMAGES = 8

Modality = Literal["rgb", "depth", "seg"]


class MultiMAEParams(Params):
    modalities: list[Modality] = Field(
        default_factory=lambda: ["rgb", "depth", "seg"],
        description="Modalities used as inputs and outputs (rgb is required; depth and seg need a dataset "
        "with them, e.g. shapes).")
    num_visible: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Visible tokens given to the encoder, across all modalities; empty: 1/6 of all tokens "
        "(the paper's 98 of 3 x 196).")
    alpha: float = Field(1.0, gt=0.0, le=1000.0,
                         description="Dirichlet concentration of the split of visible tokens between modalities (1).")
    dec_dim: int = Field(256, ge=16, le=4096, description="Decoder width (256).")
    dec_depth: int = Field(2, ge=0, le=16, description="Self-attention blocks after the decoder's cross-attention (2).")
    dec_heads: int = Field(8, ge=1, le=64, description="Decoder attention heads (8).")
    norm_pix_loss: bool = Field(True, description="RGB target: per-patch normalised pixels (MAE's norm_pix).")
    standardize_depth: bool = Field(
        True, description="Depth target: per-image standardised (10 % trimmed mean and std), as the official code.")
    seg_classes: int = Field(
        15, ge=2, le=1024,
        description="Segmentation classes including background (shapes: 15 covers all; COCO: 133).")
    seg_embed_dim: int = Field(64, ge=4, le=1024, description="Segmentation class-embedding width (64).")
    seg_stride: int = Field(
        4, ge=1, le=16,
        description="Segmentation maps at 1/seg_stride of the image side, patches of patch_size / seg_stride "
        "(4 in the paper: 56 x 56 maps, 4 x 4 patches at 224 px; 1: full resolution); must divide patch_size.")
    embed_pool: Literal["cls", "mean"] = Field(
        "cls", description="kNN / evaluation feature: the encoder's global token, or the mean of its patch tokens.")

    @field_validator("modalities")
    @classmethod
    def _mods(cls, v: list[str]) -> list[str]:
        if "rgb" not in v:
            raise ValueError("modalities must include rgb (the encoder's features on RGB are what is evaluated)")
        if len(set(v)) != len(v):
            raise ValueError("modalities must not repeat")
        return [m for m in MODALITIES if m in v]  # canonical order

    @model_validator(mode="after")
    def _decoder_shape(self) -> "MultiMAEParams":
        if self.dec_dim % self.dec_heads:
            raise ValueError(f"dec_dim {self.dec_dim} must be a multiple of dec_heads {self.dec_heads}")
        if self.dec_dim % 4:
            raise ValueError(f"dec_dim {self.dec_dim} must be a multiple of 4 (2-D sin-cos positions)")
        return self


# ============================================================ joint crop and flip
def crop_thetas(n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], hflip_p: float,
                device, generator: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
    """Random-resized-crop + horizontal-flip transforms as ``F.affine_grid`` matrices [n, 2, 3].

    torchvision's ``RandomResizedCrop.get_params``, vectorised: ``tries`` candidate boxes per
    image (area ~ U(scale) x h w, log aspect ~ U(log ratio)); the first that fits is used,
    otherwise the centre crop with the aspect clamped into ``ratio``.
    """
    u = torch.rand(n, 2 * tries + 3, device=device, generator=generator)  # [n, 2K + 3]
    area = (u[:, :tries] * (scale[1] - scale[0]) + scale[0]) * (h * w)  # [n, K] pixels
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    ar = torch.exp(u[:, tries:2 * tries] * (lr1 - lr0) + lr0)  # [n, K] w / h
    cw, ch = torch.sqrt(area * ar), torch.sqrt(area / ar)  # [n, K]
    ok = (cw <= w) & (ch <= h)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first fitting candidate
    cw, ch = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0]  # [n]
    if w / h < ratio[0]:
        fw, fh = float(w), w / ratio[0]
    elif w / h > ratio[1]:
        fw, fh = h * ratio[1], float(h)
    else:
        fw, fh = float(w), float(h)
    any_ok = ok.any(1)
    cw = torch.where(any_ok, cw, torch.full_like(cw, fw))
    ch = torch.where(any_ok, ch, torch.full_like(ch, fh))
    off = torch.where(any_ok[:, None], u[:, 2 * tries:2 * tries + 2], torch.full_like(u[:, :2], 0.5))
    x0, y0 = off[:, 0] * (w - cw), off[:, 1] * (h - ch)  # top-left corner in pixels
    flip = u[:, -1] < hflip_p
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = torch.where(flip, -cw / w, cw / w)  # x scale (negative: flipped)
    theta[:, 0, 2] = (2 * x0 + cw) / w - 1  # x centre in [-1, 1]
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * y0 + ch) / h - 1
    return theta


def joint_crop(theta: torch.Tensor, size: int, rgb: torch.Tensor, depth: torch.Tensor | None = None,
               seg: torch.Tensor | None = None, seg_size: int | None = None):
    """Apply the same crop + flip to every modality.

    theta [B, 2, 3]; rgb float [B, 3, H, W]; depth float [B, 1, H, W]; seg long [B, H, W].
    Returns (rgb [B, 3, s, s], depth [B, 1, s, s] or None, seg long [B, s', s'] or None) with
    s' = ``seg_size`` (default s): bilinear for rgb and depth, nearest for seg (at the centres of
    its own, coarser cells), borders replicated.
    """
    grid = F.affine_grid(theta.float(), [theta.shape[0], 1, size, size], align_corners=False)  # [B, s, s, 2]
    out_rgb = F.grid_sample(rgb, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_depth = None if depth is None else F.grid_sample(depth, grid, mode="bilinear", padding_mode="border",
                                                          align_corners=False)
    out_seg = None
    if seg is not None:
        if seg_size is not None and seg_size != size:
            grid = F.affine_grid(theta.float(), [theta.shape[0], 1, seg_size, seg_size], align_corners=False)
        s = F.grid_sample(seg[:, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False)
        out_seg = s[:, 0].round().long()
    return out_rgb, out_depth, out_seg


def standardize_depth(depth: torch.Tensor, trim: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image truncated standardisation (official code): depth [B, 1, H, W] ->
    ((depth - mean) / sqrt(var + 1e-6), mean [B, 1, 1, 1], std [B, 1, 1, 1]), with the mean and
    (unbiased) variance of the values between the 10th and 90th percentile."""
    flat = torch.sort(depth.flatten(1).float(), dim=1).values  # [B, HW]
    k = flat.shape[1]
    mid = flat[:, int(trim * k): int((1 - trim) * k)]
    mean = mid.mean(1).view(-1, 1, 1, 1)
    std = (mid.var(1) + 1e-6).sqrt().view(-1, 1, 1, 1)
    return (depth - mean) / std, mean, std


def cross_entropy_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per row: logits float [N, C], labels long [N] -> [N].

    ``F.cross_entropy`` on CUDA; elsewhere logsumexp written out, because the CPU log-softmax
    kernel is slow for few classes (65,536 x 15, one thread, forward and backward: 30.7 ms
    with ``F.cross_entropy``, 5.8 ms here; equal to 1e-6)."""
    if logits.is_cuda:
        return F.cross_entropy(logits, labels, reduction="none")
    top = logits.detach().amax(dim=-1, keepdim=True)  # [N, 1], for stability
    lse = (logits - top).exp().sum(dim=-1).log() + top[:, 0]  # [N]
    return lse - logits.gather(1, labels[:, None])[:, 0]


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MultiMAE's reduction: per_token [B, L] losses, mask [B, L] (True = masked) -> the mean over
    images (with at least one masked token) of each image's mean over its masked tokens."""
    m = mask.float()
    den = m.sum(1)  # [B]
    per_img = (per_token.float() * m).sum(1) / den.clamp_min(1.0)
    valid = (den > 0).float()
    return (per_img * valid).sum() / valid.sum().clamp_min(1.0)


# ================================================================= decoder
class CrossAttention(nn.Module):
    """Multi-head attention of queries [B, Nq, d] to a context [B, Nc, d] -> [B, Nq, d]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, Nq, d = x.shape
        h = self.heads
        q = self.q(x).reshape(B, Nq, h, d // h).transpose(1, 2)  # [B, h, Nq, d/h]
        k, v = self.kv(context).reshape(B, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)  # [B, h, Nc, d/h]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, Nq, d/h]
        return self.proj(out.transpose(1, 2).reshape(B, Nq, d))


class ModalityDecoder(nn.Module):
    """One modality's decoder (MultiMAE's ``SpatialOutputAdapter`` with task queries and cross-attention).

    context = proj(encoder tokens) with, on each visible token, its position and modality
    embedding, plus the global token; queries = this modality's full grid: its own encoded
    visible tokens and mask tokens, with positions and modality embedding. Then
    x = xattn(norm(queries), norm(context)); x = x + MLP(norm(x)); self-attention blocks;
    a linear layer to the patch's values.
    """

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, out_dim: int,
                 modalities: list[str], pos: torch.Tensor) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.proj_context = nn.Linear(enc_dim, dim)
        self.task_emb = nn.Parameter(torch.zeros(len(modalities), dim))  # one per context modality
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.task_emb, std=0.02)  # (the mask token stays 0, as in the official adapter)
        self.register_buffer("pos", pos, persistent=False)  # [L, dim] fixed sin-cos
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.context_norm = nn.LayerNorm(dim, eps=1e-6)
        self.out_norm = nn.LayerNorm(dim, eps=1e-6)
        self.xattn = CrossAttention(dim, heads)
        self.mlp = Mlp(dim, 4 * dim)
        self.blocks = nn.Sequential(*[
            ViTBlock(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(depth)])
        self.out = nn.Linear(dim, out_dim)

    def forward(self, enc: torch.Tensor, ids_keep: torch.Tensor, present: list[str], own: str) -> torch.Tensor:
        """enc [B, 1 + V, D] (global token first), ids_keep long [B, V] (into the concatenated
        tokens of ``present``) -> predictions for every patch of ``own``: [B, L, out_dim]."""
        c = self.proj_context(enc)  # [B, 1 + V, d]
        glob, vis = c[:, :1], c[:, 1:]  # [B, 1, d], [B, V, d]
        B, V, d = vis.shape
        L = self.pos.shape[0]
        rows = [self.modalities.index(m) for m in present]
        emb = (self.task_emb[rows][:, None, :] + self.pos[None]).reshape(len(present) * L, d)  # [M'L, d]
        idx = ids_keep[..., None].expand(-1, -1, d)  # [B, V, d]
        full = self.mask_token.to(vis.dtype).expand(B, len(present) * L, d).scatter(1, idx, vis)  # [B, M'L, d]
        full = full + emb.to(full.dtype)  # every token: position + modality embedding
        context = torch.cat([full.gather(1, idx), glob], dim=1)  # visible tokens + global: [B, V + 1, d]
        if own in present:
            j = present.index(own)
            q = full[:, j * L:(j + 1) * L]  # own visible tokens + mask tokens: [B, L, d]
        else:  # nothing of this modality was given: mask tokens only
            q = (self.mask_token + self.pos + self.task_emb[self.modalities.index(own)]).to(vis.dtype).expand(B, L, d)
        x = self.xattn(self.query_norm(q), self.context_norm(context))  # [B, L, d]
        x = x + self.mlp(self.out_norm(x))
        x = self.blocks(x)
        return self.out(x)  # [B, L, out_dim]


# ================================================================== method
class MultiMAE(Method):
    name = "multimae"
    family = "masked image modelling"
    standardize_features = True  # kNN on z-scored features (MAE's BatchNorm before the linear probe)
    paper = "Bachmann et al., MultiMAE: Multi-modal Multi-task Masked Autoencoders, ECCV 2022"
    summary = (
        "RGB, depth and segmentation patches share one ViT: a Dirichlet split of a small visible-token\n"
        "budget goes in, one shallow decoder per modality reconstructs every masked patch."
    )
    Params = MultiMAEParams
    live_params = ("num_visible", "alpha")

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        self.modalities: list[str] = list(p.modalities)
        missing = [m for m in self.modalities if m != "rgb" and m not in available_modalities(cfg.data.source)]
        if missing and Path(cfg.data.source).expanduser().exists():  # known before any image is read
            # (a source that is gone is the loader's to report: a finished run still exports)
            raise ConfigError(self._missing_maps(missing, "data.source does not have"))
        # --- shared encoder: the project's timm ViT (its patch projection is the RGB adapter)
        self.backbone = build_backbone(cfg.model, image_size)
        if not isinstance(self.backbone, ViTBackboneMixin):
            raise ConfigError(f"MultiMAE needs a ViT encoder (model.arch vit_*), not '{cfg.model.arch}'")
        vit = self.backbone
        D = vit.out_dim
        if D % 4:
            raise ConfigError(f"MultiMAE's sin-cos positions need a ViT width divisible by 4 (got {D})")
        if getattr(vit, "cls_token", None) is None:
            raise ConfigError(f"MultiMAE needs a ViT with a class token (its global token); "
                              f"'{cfg.model.arch}' has none")
        self.patch_size = ps = vit.patch_size
        self.grid = vit.grid(image_size, image_size)
        self.num_patches = self.grid[0] * self.grid[1]
        pos = sincos_2d(*self.grid, D)  # [L, D], shared by all modalities, not learnt
        self.register_buffer("pos_embed", pos, persistent=False)
        self._use_sincos_in_backbone(pos)
        nn.init.trunc_normal_(vit.cls_token, std=0.02)
        # --- input adapters for the other modalities
        if "depth" in self.modalities:
            self.depth_proj = nn.Conv2d(1, D, ps, stride=ps)
        # segmentation at 1/seg_stride resolution (the official stride_level 4): patches of ps / seg_stride
        if "seg" in self.modalities and ps % p.seg_stride:
            raise ConfigError(f"params.seg_stride {p.seg_stride} must divide the patch size {ps} (the "
                              f"segmentation map is patched at {ps} / {p.seg_stride} pixels)")
        self.seg_patch = sp = max(1, ps // p.seg_stride)
        if "seg" in self.modalities:
            self.seg_embed = nn.Embedding(p.seg_classes, p.seg_embed_dim)
            self.seg_proj = nn.Conv2d(p.seg_embed_dim, D, sp, stride=sp)
        # --- one decoder per modality
        out_dims = {"rgb": ps * ps * 3, "depth": ps * ps, "seg": sp * sp * p.seg_classes}
        dpos = sincos_2d(*self.grid, p.dec_dim)
        self.decoders = nn.ModuleDict({
            m: ModalityDecoder(D, p.dec_dim, p.dec_depth, p.dec_heads, out_dims[m], self.modalities, dpos)
            for m in self.modalities})
        self._probe_set: dict[str, torch.Tensor] | None = None
        self._seg_checked = False
        self._initialize_weights()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, with the reason spelled out for weights of another ``seg_stride`` (runs
        from before the paper's 1/4-resolution segmentation trained it at full resolution)."""
        w = state_dict.get("seg_proj.weight")
        if w is not None and hasattr(self, "seg_proj") and w.shape[-1] != self.seg_proj.weight.shape[-1]:
            was = self.patch_size // max(1, int(w.shape[-1]))
            raise RuntimeError(f"these weights segment at params.seg_stride {was} (1: full resolution, the "
                               f"default before 2026-11-28), this config at {self.p.seg_stride}: set "
                               f"params.seg_stride={was} in the run's config.yaml to load them")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _missing_maps(self, missing: list[str], why: str) -> str:
        return (f"MultiMAE with modalities {self.modalities} needs per-image {' and '.join(missing)} maps, "
                f"which {why}: use 'shapes', a folder holding rgb/ plus {'/ and '.join(missing)}/ trees "
                "(files of the same names), or set params.modalities=[rgb]")

    @torch.no_grad()
    def _initialize_weights(self) -> None:
        """The official initialisation (``multimae.py``, over encoder, adapters and decoders):
        Xavier-uniform Linear layers, the fused Q|K|V (and K|V) weights counted as separate
        matrices, bias 0; LayerNorm (1, 0); patch projections (Conv2d) like Linear layers."""
        xavier_init_split_qkv(self)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))

    @torch.no_grad()
    def _use_sincos_in_backbone(self, pos: torch.Tensor) -> None:
        """Give the backbone the same fixed positions (CLS row 0), so that the exported ViT computes embed()."""
        vit = self.backbone
        pe = getattr(vit, "pos_embed", None)
        if pe is None:
            return
        n_pre = pe.shape[1] - self.num_patches
        if n_pre < 0:
            return
        pe.zero_()
        pe[0, n_pre:] = pos
        pe.requires_grad_(False)

    # ----------------------------------------------------------------- pieces
    def num_visible(self) -> int:
        total = len(self.modalities) * self.num_patches
        v = self.p.num_visible if self.p.num_visible is not None else round(total / 6)
        return int(max(1, min(total - 1, v)))

    def tokens(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """One modality's input adapter: x -> tokens [B, L, D] with positions.
        rgb: [B, 3, H, W] normalised; depth: [B, 1, H, W]; seg: long [B, H / seg_stride, W / seg_stride]."""
        if m == "rgb":
            t = self.backbone.patch_embed(x)  # [B, gh, gw, D] or [B, L, D]
            t = t.reshape(t.shape[0], -1, t.shape[-1])
        elif m == "depth":
            t = self.depth_proj(x).flatten(2).transpose(1, 2)  # [B, L, D]
        else:
            t = self.seg_tokens(x)  # [B, L, D]
        return t + self.pos_embed.to(t.dtype)

    def seg_tokens(self, seg: torch.Tensor) -> torch.Tensor:
        """Segmentation adapter: class embedding, then patch projection: seg long [B, h, w] (1/seg_stride
        of the image side) -> [B, L, D].

        Both maps are linear, so with fewer classes than embedding channels the same function
        is one patch convolution of the one-hot classes with the composed weight
        (conv_W(E[seg]) = conv_{W E}(onehot(seg))), which needs no gradient at full resolution:
        32 px, batch 64, 15 classes, 64 channels, 8 px patches, one CPU thread, forward and
        backward 62 ms -> 9.4 ms; the activation is C instead of E channels on the GPU too.
        """
        C, E = self.seg_embed.weight.shape  # [C, E]
        if C < E:
            w = torch.einsum("dehw,ce->dchw", self.seg_proj.weight, self.seg_embed.weight)  # [D, C, p, p]
            onehot = F.one_hot(seg, C).permute(0, 3, 1, 2).to(w.dtype)  # [B, C, H, W]
            t = F.conv2d(onehot, w, self.seg_proj.bias, stride=self.seg_proj.stride)  # [B, D, gh, gw]
        else:
            t = self.seg_proj(self.seg_embed(seg).permute(0, 3, 1, 2))  # [B, E, H, W] -> [B, D, gh, gw]
        return t.flatten(2).transpose(1, 2)  # [B, L, D]

    def sample_masks(self, n: int, device, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Dirichlet split of num_visible() tokens, then uniform sampling within each modality:
        {modality: mask [n, L] (True = masked)}."""
        M, L = len(self.modalities), self.num_patches
        counts = dirichlet_allocation(n, self.num_visible(), M, self.p.alpha, device=device, generator=generator,
                                      capacity=[L] * M)  # [n, M], rows sum to num_visible()
        pairs = multimodal_random_masking(counts, [L] * M, generator=generator)
        return {m: pairs[i][1] for i, m in enumerate(self.modalities)}

    def encode(self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], n_visible: int):
        """Shared encoder on the visible tokens of the given modalities.

        tokens {m: [B, L, D]}, masks {m: [B, L]} (True = masked; ``n_visible`` False per row
        over all modalities) -> (encoded [B, 1 + n_visible, D] with the global token first,
        ids_keep long [B, n_visible] into the concatenated tokens of ``present``, present)."""
        present = [m for m in MODALITIES if m in tokens]
        x = torch.cat([tokens[m] for m in present], dim=1)  # [B, M'L, D]
        mask = torch.cat([masks[m] for m in present], dim=1)  # [B, M'L]
        ids_keep = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[:, :n_visible]  # visible first
        x = x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # [B, V, D]
        return self.run_encoder(x), ids_keep, present

    def run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] -> [global token; tokens] through the ViT blocks and final norm: [B, 1 + N, D].

        The official encoder has no final norm while pre-training (each decoder normalises its
        context); here the ViT's own stays on the path, so that it is trained and the kNN
        monitor (and the exported backbone) read the global token through a learnt norm. In the
        learning check (tests/test_learning.py) the untrained norm cost 0.04 kNN (0.230 vs 0.268)."""
        vit = self.backbone
        g = vit.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)  # the global token (no position)
        x = vit.norm_pre(vit.patch_drop(torch.cat([g, x], dim=1)))
        return vit.norm(vit.blocks(x))

    def prepare(self, images: torch.Tensor, extras: dict[str, torch.Tensor], crop: bool = True):
        """uint8 images [B, 3, H, W], extras {'depth' uint8 [B, 1, H, W], 'seg' uint8 [B, H, W]} ->
        inputs {rgb: normalised [B, 3, s, s], depth: [B, 1, s, s] (standardised),
        seg: long [B, s / seg_stride, s / seg_stride]}
        and the depth statistics (for display). ``crop``: random crop + flip, else a plain resize."""
        a, s = self.cfg.aug, self.image_size
        B, _, H, W = images.shape
        rgb = images.float() / 255.0
        depth = extras["depth"].float() / 255.0 if "depth" in self.modalities else None
        seg = extras["seg"].long() if "seg" in self.modalities else None
        if crop:
            theta = crop_thetas(B, H, W, tuple(a.global_crops.scale), tuple(a.ratio), a.hflip_p, images.device)
        else:  # identity transform: a resize of the whole image
            theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=images.device).expand(B, 2, 3)
        rgb, depth, seg = joint_crop(theta, s, rgb, depth, seg, seg_size=s // self.p.seg_stride)
        mean = torch.tensor(a.mean, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(a.std, device=rgb.device).view(1, 3, 1, 1)
        inputs = {"rgb": (rgb - mean) / std}
        stats = {}
        if depth is not None:
            if self.p.standardize_depth:
                inputs["depth"], stats["mean"], stats["std"] = standardize_depth(depth)
            else:
                inputs["depth"] = depth
        if seg is not None:
            inputs["seg"] = seg
        return inputs, stats

    def per_token_loss(self, m: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred [B, L, p p C_m], target (the modality's input) -> loss per patch [B, L]."""
        ps = self.patch_size
        if m == "rgb":
            t = patchify(target.float(), ps)  # [B, L, p p 3]
            if self.p.norm_pix_loss:
                t = norm_pix_target(t)
            return (pred.float() - t).pow(2).mean(-1)
        if m == "depth":
            return (pred.float() - patchify(target.float(), ps)).abs().mean(-1)
        sp = self.seg_patch  # seg: [B, s / stride, s / stride], patches of sp = ps / stride
        labels = patchify(target[:, None].float(), sp).round().long()  # [B, L, sp sp]
        B, Lp, _ = labels.shape
        logits = pred.float().reshape(B, Lp, sp * sp, self.p.seg_classes)  # [B, L, sp sp, C]
        ce = cross_entropy_rows(logits.reshape(-1, self.p.seg_classes), labels.reshape(-1))  # [B L sp sp]
        return ce.reshape(B, Lp, sp * sp).mean(-1)

    def forward(self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], n_visible: int,
                outputs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """inputs {m: modality tensor}, masks {m: [B, L]} -> predictions {m: [B, L, p p C_m]}."""
        tokens = {m: self.tokens(m, inputs[m]) for m in inputs}  # {m: [B, L, D]}
        enc, ids_keep, present = self.encode(tokens, masks, n_visible)  # enc: [B, 1 + V, D]
        return {m: self.decoders[m](enc, ids_keep, present, m) for m in (outputs or self.modalities)}

    # --------------------------------------------------------------- training
    def _check_data(self, batch: Batch) -> None:
        missing = [m for m in self.modalities if m != "rgb" and m not in batch.extras]
        if missing:
            raise DataError(self._missing_maps(missing, "this dataset does not have"))
        if "seg" in self.modalities and not self._seg_checked:  # one host sync, on the first batch
            top = int(batch.extras["seg"].max())
            if top >= self.p.seg_classes:
                raise DataError(f"the segmentation maps hold class {top}, but params.seg_classes is "
                                f"{self.p.seg_classes}: set params.seg_classes to at least {top + 1}")
            self._seg_checked = True

    def training_step(self, batch: Batch, step: int) -> StepOutput:
        self._check_data(batch)
        if self._probe_set is None:  # the probes' images: the first images of the first batch, uncropped
            self._probe_set = {"images": batch.images[:PROBE_IMAGES].clone(),
                               **{k: v[:PROBE_IMAGES].clone() for k, v in batch.extras.items()
                                  if k in ("depth", "seg")}}
        inputs, _ = self.prepare(batch.images, batch.extras)  # one joint crop + flip per image
        B = batch.images.shape[0]
        masks = self.sample_masks(B, batch.images.device)  # {m: [B, L]}
        preds = self(inputs, masks, self.num_visible())  # {m: [B, L, p p C_m]}
        losses = {m: masked_mean(self.per_token_loss(m, preds[m], inputs[m]), masks[m]) for m in self.modalities}
        loss = sum(losses.values())
        return StepOutput(loss=loss, scalars={f"loss_{m}": v.detach() for m, v in losses.items()})

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """RGB alone, nothing masked: x [B, 3, H, W] normalised -> the global token (or the mean
        patch token, ``embed_pool: mean``) after the final norm [B, D]."""
        tokens = self.run_encoder(self.tokens("rgb", x))  # [B, 1 + L, D]
        if self.p.embed_pool == "mean":
            return tokens[:, 1:].mean(dim=1)
        return tokens[:, 0]

    @torch.no_grad()
    def predict_from_rgb(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-modal prediction: every RGB token visible, no depth / seg tokens ->
        {'depth': [B, 1, s, s] (standardised units if standardize_depth),
        'seg': logits [B, C, s / seg_stride, s / seg_stride]}
        for the modalities of the run other than rgb."""
        B = rgb.shape[0]
        others = [m for m in self.modalities if m != "rgb"]
        if not others:
            return {}
        none = torch.zeros(B, self.num_patches, dtype=torch.bool, device=rgb.device)
        preds = self({"rgb": rgb}, {"rgb": none}, self.num_patches, outputs=others)
        chans = {"depth": 1, "seg": self.p.seg_classes}
        patch = {"depth": self.patch_size, "seg": self.seg_patch}
        return {m: unpatchify(preds[m].float(), patch[m], self.grid, chans[m]) for m in others}

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def probes(self, images: torch.Tensor) -> dict:
        ps = self._probe_set or {"images": images}
        x8 = ps["images"]
        have = [m for m in self.modalities if m == "rgb" or m in ps]
        extras = {k: ps[k] for k in ("depth", "seg") if k in ps}
        inputs, stats = self._probe_inputs(x8, extras, have)
        n = x8.shape[0]
        out: dict[str, dict] = {}
        # per modality: reconstructions from a Dirichlet mix of visible tokens of the available modalities
        g = torch.Generator().manual_seed(PROBE_SEED)
        full = self.sample_masks(n, x8.device, generator=g)
        masks, n_vis = self._restrict(full, have)
        preds = self(inputs, masks, n_vis, outputs=have)
        a = self.cfg.aug
        meta = {"num_visible": int(n_vis), "alpha": float(self.p.alpha), "grid": list(self.grid),
                "visible_per_modality": {m: float((~masks[m]).float().sum(1).mean()) for m in have}}
        out["reconstruction"] = {"images": reconstruction_panels(
            inputs["rgb"], preds["rgb"], masks["rgb"], self.patch_size, a.mean, a.std,
            norm_pix=self.p.norm_pix_loss), "meta": {**meta, "modality": "rgb"}}
        if "depth" in have:
            out["reconstruction_depth"] = {"images": self._depth_panels(
                inputs["depth"], preds["depth"], masks["depth"], stats), "meta": {**meta, "modality": "depth"}}
        if "seg" in have:
            out["reconstruction_seg"] = {"images": self._seg_panels(inputs["seg"], preds["seg"], masks["seg"]),
                                         "meta": {**meta, "modality": "seg"}}
        # cross-modal: depth and segmentation from RGB alone
        cross = self.predict_from_rgb(inputs["rgb"])
        if cross:
            imgs = {"original": to_hwc_uint8(_u8(denormalize(inputs["rgb"], a.mean, a.std)))}
            if "depth" in cross:
                if "depth" in inputs:
                    imgs["depth"] = _grey(self._depth01(inputs["depth"], stats))
                imgs["depth_prediction"] = _grey(self._depth01(cross["depth"], stats if "depth" in inputs else {}))
            if "seg" in cross:
                if "seg" in inputs:
                    imgs["seg"] = _colour(self._seg_full(inputs["seg"]), self.p.seg_classes)
                imgs["seg_prediction"] = _colour(self._seg_full(cross["seg"].argmax(1)), self.p.seg_classes)
            out["cross_modal"] = {"images": imgs, "meta": {"inputs": "rgb only, all tokens visible"}}
        return out

    def _probe_inputs(self, images: torch.Tensor, extras: dict, have: list[str]):
        """Uncropped (resized) probe inputs; RGB only when the other modalities have no ground truth."""
        if len(have) == len(self.modalities):
            return self.prepare(images, extras, crop=False)
        return self._rgb_only_inputs(images)

    def _rgb_only_inputs(self, images: torch.Tensor):
        a, s = self.cfg.aug, self.image_size
        theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=images.device).expand(images.shape[0], 2, 3)
        rgb, _, _ = joint_crop(theta, s, images.float() / 255.0)
        mean = torch.tensor(a.mean, device=rgb.device).view(1, 3, 1, 1)
        std = torch.tensor(a.std, device=rgb.device).view(1, 3, 1, 1)
        return {"rgb": (rgb - mean) / std}, {}

    def _restrict(self, masks: dict[str, torch.Tensor], have: list[str]):
        """Masks of the modalities at hand; without ground truth for some, rgb gets the whole budget."""
        if len(have) == len(self.modalities):
            return masks, self.num_visible()
        n = masks["rgb"].shape[0]
        v = min(self.num_visible(), self.num_patches - 1)
        g = torch.Generator().manual_seed(PROBE_SEED)
        order = torch.argsort(torch.rand(n, self.num_patches, generator=g), dim=1).to(masks["rgb"].device)
        m = torch.argsort(order, dim=1) >= v  # [n, L], v visible per row
        return {"rgb": m}, v

    def _depth01(self, d: torch.Tensor, stats: dict) -> torch.Tensor:
        """Depth in the loss's units -> [0, 1] for display: [B, 1, s, s]."""
        if self.p.standardize_depth and stats:
            d = d * stats["std"] + stats["mean"]
        elif self.p.standardize_depth:  # no statistics (no ground truth): min-max per image
            lo = d.amin(dim=(1, 2, 3), keepdim=True)
            hi = d.amax(dim=(1, 2, 3), keepdim=True)
            d = (d - lo) / (hi - lo).clamp_min(1e-6)
        return d.clamp(0, 1)

    def _depth_panels(self, depth: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, stats: dict) -> dict:
        rec = unpatchify(pred.float(), self.patch_size, self.grid, 1)  # [B, 1, s, s]
        orig8 = _u8(self._depth01(depth, stats)).expand(-1, 3, -1, -1)  # [B, 3, s, s] grey
        rec8 = _u8(self._depth01(rec, stats)).expand(-1, 3, -1, -1)
        return self._panels(orig8, rec8, mask)

    def _seg_full(self, seg: torch.Tensor) -> torch.Tensor:
        """Class map [B, s / stride, s / stride] -> [B, s, s] (nearest), to show beside the images."""
        st = self.p.seg_stride
        return seg if st == 1 else seg.repeat_interleave(st, dim=-2).repeat_interleave(st, dim=-1)

    def _seg_panels(self, seg: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> dict:
        logits = unpatchify(pred.float(), self.seg_patch, self.grid, self.p.seg_classes)  # [B, C, s/st, s/st]
        pal = seg_palette(self.p.seg_classes, seg.device)  # [C, 3]
        orig8 = pal[self._seg_full(seg)].permute(0, 3, 1, 2)  # [B, 3, s, s]
        rec8 = pal[self._seg_full(logits.argmax(1))].permute(0, 3, 1, 2)
        return self._panels(orig8, rec8, mask)

    def _panels(self, orig8: torch.Tensor, rec8: torch.Tensor, mask: torch.Tensor) -> dict:
        """original | masked | prediction | prediction pasted into the masked patches (uint8 [B, 3, s, s] in)."""
        orig8, rec8 = orig8.contiguous(), rec8.contiguous()
        px = mask_to_pixels(mask.bool(), self.grid, self.patch_size).to(orig8.device)  # [B, 1, s, s]
        return {
            "original": to_hwc_uint8(orig8),
            "masked": to_hwc_uint8(torch.where(px, torch.full_like(orig8, MASK_GREY), orig8)),
            "reconstruction": to_hwc_uint8(rec8),
            "pasted": to_hwc_uint8(torch.where(px, rec8, orig8)),
        }

    @classmethod
    def mask_preview(cls, images: torch.Tensor, cfg) -> torch.Tensor:
        """The data page's preview of the RGB input: uint8 [N, 3, H, W] -> [N, 3, s, s] with the RGB
        patches that are not among the visible tokens grey (RGB's share of a Dirichlet draw)."""
        p = cls.Params(**cfg.params)
        size = cfg.aug.global_crops.size or int(images.shape[-1])
        ps = cfg.model.patch_size
        grid = (size // ps, size // ps)
        L, M = grid[0] * grid[1], len(p.modalities)
        v = p.num_visible if p.num_visible is not None else round(M * L / 6)
        v = max(1, min(M * L - 1, v))
        g = torch.Generator().manual_seed(PROBE_SEED)
        counts = dirichlet_allocation(images.shape[0], v, M, p.alpha, generator=g, capacity=[L] * M)
        mask = multimodal_random_masking(counts, [L] * M, generator=g)[0][1]  # rgb comes first
        x = images
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        return mask_images(x[..., : grid[0] * ps, : grid[1] * ps], mask, grid, ps)

    # ----------------------------------------------------------------- diagram
    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images + depth + segmentation", "data", ["data.source", "train.batch_size"]),
                Block("crop", "joint crop + flip", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.ratio", "aug.hflip_p"],
                      note="one random-resized crop + flip per image, identical for all modalities"),
                Block("adapters", "patch projections per modality", "op",
                      ["params.modalities", "model.patch_size", "params.seg_classes", "params.seg_embed_dim",
                       "params.seg_stride"],
                      note="rgb / depth: linear patch projection; seg: class embedding, then patch projection; "
                      "shared sin-cos positions"),
                Block("mask", "Dirichlet token budget", "op", ["params.num_visible", "params.alpha"],
                      note="per image: split the visible tokens between modalities ~ Dir(alpha), sample uniformly"),
                Block("encoder", "shared ViT encoder", "encoder", ["model.arch", "model.drop_path"],
                      note="visible tokens of all modalities + one global token"),
                Block("decoders", "decoder per modality", "head",
                      ["params.dec_dim", "params.dec_depth", "params.dec_heads"],
                      note="queries (own tokens + mask tokens) cross-attend to all encoded tokens, then "
                      "self-attention blocks"),
                Block("loss", "masked losses: MSE / L1 / CE", "loss",
                      ["params.norm_pix_loss", "params.standardize_depth"],
                      note="rgb: MSE on normalised pixels; depth: L1; seg: cross-entropy; masked patches only"),
            ],
            edges=[
                Edge("data", "crop"),
                Edge("crop", "adapters", "rgb, depth, seg"),
                Edge("adapters", "mask", "tokens"),
                Edge("mask", "encoder", "visible tokens"),
                Edge("encoder", "decoders", "encoded tokens"),
                Edge("decoders", "loss", "predictions"),
                Edge("crop", "loss", "targets", style="stopgrad"),
            ],
        )


# ------------------------------------------------------------------ display helpers
def seg_palette(n: int, device=None) -> torch.Tensor:
    """Class colours uint8 [n, 3]: 0 (background) dark grey, the rest well-separated hues."""
    cols = [(40, 40, 40)]
    for i in range(1, n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return torch.tensor(cols, dtype=torch.uint8, device=device)


def _u8(x01: torch.Tensor) -> torch.Tensor:
    return (x01.float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def _grey(d01: torch.Tensor):
    """[B, 1, s, s] in [0, 1] -> uint8 [B, s, s, 3]."""
    return to_hwc_uint8(_u8(d01).expand(-1, 3, -1, -1).contiguous())


def _colour(labels: torch.Tensor, n: int):
    """long [B, s, s] -> uint8 [B, s, s, 3]."""
    return to_hwc_uint8(seg_palette(n, labels.device)[labels.clamp(0, n - 1)].permute(0, 3, 1, 2).contiguous())
