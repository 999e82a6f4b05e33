"""SimMIM: A Simple Framework for Masked Image Modeling.

Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu, CVPR 2022 (arXiv:2111.09886). Official code:
github.com/microsoft/SimMIM (``models/simmim.py``, ``data/data_simmim.py``,
``main_simmim.py``, ``configs/swin_base__100ep/simmim_pretrain__swin_base__img192_window6__100ep.yaml``,
``configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml``).

Random square regions of the image (32 px "mask patches") are masked: their patch
embeddings are replaced by one learned mask token *inside* the encoder, which sees every
position. A one-layer head (a 1x1 convolution to stride^2 x 3 values, then PixelShuffle)
turns the encoder's feature map back into pixels, and an L1 loss on the masked pixels
trains the whole model.

Paper / official-code defaults kept here:
    masking          random mask patches of 32 px at 192 px (``simmim_mask_patch`` scales them
                     down for small images), exactly ceil(0.6 x groups) masked per image
    encoder          Swin-B (window 6 at 192 px) or ViT-B/16 from timm (``model.arch``); the
                     mask token N(0, 0.02) replaces masked patch embeddings before the blocks
    head             Conv2d(C, stride^2 x 3, 1) + PixelShuffle(stride); stride 32 (Swin) or
                     the patch size (ViT, 16)
    loss             L1 on masked pixels: (|x - x_rec| * mask).sum() / (mask.sum() + 1e-5) / 3
    augmentation     random-resized crop scale (0.67, 1), ratio (3/4, 4/3), flip; no colour
    optimiser        AdamW, betas (0.9, 0.999), weight decay 0.05 (none on norms, biases,
                     position tables and the mask token), lr 2e-4 x batch / 512 = 8e-4 at
                     batch 2048 (written here as 1e-4 x batch / 256), 10 warm-up epochs,
                     cosine to 1e-5 x batch / 512, gradient clipping 5.0; Swin-B: 100 epochs at
                     192 px, drop path 0 (preset ``simmim``)

ViT encoder: LayerScale 0.1 on every block as SimMIM's ViT configs (``layer_scale``) and their
(BEiT's) initialisation, output projections divided by sqrt(2 l) (``beit_init``); unlike
them, timm's learned absolute position embedding instead of a shared relative position bias.
The official ViT-B recipe (800 epochs at 224 px) also differs from Swin's: base LR 1e-4 x
batch / 512, drop path 0.1, and a multi-step schedule (x 0.1 at epoch 700) instead of the cosine;
there is no ViT-B preset here (``simmim_small`` is a small-image recipe, not the paper's).
``embed()`` for kNN is a pooled feature of the full, unmasked image: the mean patch token for
a ViT (no loss reaches its CLS output; SimMIM fine-tunes ViTs with mean pooling), the average
of the last stage for Swin.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..augment import resize_normalize, resize_u8
from ..components import ViTBackboneMixin, build_backbone
from ..components.backbones import SwinBackboneMixin
from ..errors import ConfigError
from ..masking import mask_to_pixels, patch_mask, simmim_mask, simmim_mask_patch
from ..probes import attention_probe, mask_images, reconstruction_panels
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput

PROBE_SEED = 1234  # the probe's mask is the same at every snapshot


def simmim_masking(kind: str, n: int, grid: tuple[int, int], mask_patch: int, model_patch: int, mask_ratio: float,
                   device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [n, L], True = masked: SimMIM's random mask patches (``random``), or BEiT's blockwise
    masking of round(mask_ratio x L) model patches (``block``)."""
    if kind == "block":
        L = grid[0] * grid[1]
        k = max(1, min(L - 1, round(mask_ratio * L)))
        return patch_mask("block", n, grid, k, device=device, generator=generator)
    return simmim_mask(n, grid, mask_patch, model_patch, mask_ratio, device=device, generator=generator)


class SimMIMParams(Params):
    mask_ratio: float = Field(
        0.6, ge=0.05, le=0.95, description="Fraction of mask patches replaced by the mask token (0.6 in the paper)."
    )
    mask_patch: int | None = Field(
        None, ge=1, le=256,
        description="Side of the square masked regions in pixels, a multiple of the model's patch size "
        "(32 in the paper); empty: 32 px at 192 px, scaled down for smaller images.",
    )
    mask_type: Literal["random", "block"] = Field(
        "random", description="SimMIM's random mask patches (the paper) or BEiT's blockwise masking of the same "
        "fraction of model patches (the paper's masking-strategy ablation).")
    layer_scale: float = Field(
        0.1, ge=0.0, le=1.0,
        description="LayerScale init of the ViT blocks (0.1 in SimMIM's ViT configs; 0: off; not used by Swin).")


class SimMIM(Method):
    name = "simmim"
    family = "masked image modelling"
    standardize_features = True  # kNN on z-scored features (MAE's BatchNorm before the linear probe)
    paper = "Xie et al., SimMIM: A Simple Framework for Masked Image Modeling, CVPR 2022"
    summary = (
        "Masked patch embeddings are replaced by a learned token inside the encoder; a one-layer\n"
        "head predicts the raw pixels, with an L1 loss on the masked regions."
    )
    Params = SimMIMParams
    live_params = ("mask_ratio", "mask_type")

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        if cfg.aug.global_crops.count < 1:
            raise ConfigError("SimMIM trains on one augmented crop per image: set aug.global_crops.count to 1")
        # --- encoder: timm ViT or Swin, with a mask token replacing masked patch embeddings
        self.backbone = build_backbone(cfg.model, image_size)
        self.is_swin = isinstance(self.backbone, SwinBackboneMixin)
        if not (self.is_swin or isinstance(self.backbone, ViTBackboneMixin)):
            raise ConfigError(f"SimMIM needs a ViT or Swin encoder (model.arch vit_* / swin_*), not '{cfg.model.arch}'")
        enc = self.backbone
        if not self.is_swin:
            enc.beit_init()  # SimMIM's ViT (BEiT's code): N(0, 0.02), output projections scaled with depth
            if self.p.layer_scale > 0:
                enc.add_layer_scale(self.p.layer_scale)  # SimMIM's ViT: init_values 0.1
        self.patch_size = enc.patch_size
        self.grid = enc.grid(image_size, image_size)  # model-patch grid (gh, gw)
        self.mask_patch = self.p.mask_patch or simmim_mask_patch(image_size, model_patch=self.patch_size)
        if self.mask_patch % self.patch_size:
            raise ConfigError(
                f"params.mask_patch {self.mask_patch} must be a multiple of the patch size {self.patch_size}")
        embed_dim = enc.embed_dim if self.is_swin else enc.out_dim  # width of the patch embeddings
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        # --- one-layer prediction head: 1x1 conv to stride^2 * 3 channels, PixelShuffle(stride)
        self.stride = enc.stride if self.is_swin else self.patch_size
        self.decoder = nn.Sequential(
            nn.Conv2d(enc.out_dim, self.stride**2 * 3, kernel_size=1),
            nn.PixelShuffle(self.stride),
        )

    # ----------------------------------------------------------------- pieces
    def generate_mask(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """SimMIM's mask generator (or blockwise, ``mask_type``) at model-patch resolution: bool [N, L], True = masked."""
        return simmim_masking(self.p.mask_type, n, self.grid, self.mask_patch, self.patch_size, self.p.mask_ratio,
                              device=device, generator=generator)

    def _mask_tokens(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x * (1 - w) + mask_token * w: x [N, gh, gw, C] or [N, L, C], mask [N, L]."""
        w = mask.reshape(*x.shape[:-1], 1).to(x.dtype)
        return x * (1 - w) + self.mask_token.to(x.dtype).reshape(*([1] * (x.dim() - 1)), -1) * w

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs [N, 3, H, W], mask [N, L] -> feature map [N, C, H / stride, W / stride]."""
        enc = self.backbone
        if self.is_swin:
            x = enc.patch_embed(imgs)  # x: [N, gh, gw, C] (NHWC, patch norm applied)
            x = self._mask_tokens(x, mask)
            x = enc.norm(enc.layers(x))  # [N, H / 32, W / 32, C_out]
            return x.permute(0, 3, 1, 2)
        x = enc.patch_embed(imgs)  # x: [N, gh, gw, D] (dynamic size) or [N, L, D]
        x = self._mask_tokens(x, mask)
        x = enc._pos_embed(x)  # CLS prepended, positions added: [N, P + L, D]
        x = enc.norm(enc.blocks(enc.norm_pre(enc.patch_drop(x))))
        x = x[:, enc.num_prefix_tokens:]  # drop CLS (+ registers): [N, L, D]
        gh, gw = self.grid
        return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)  # [N, D, gh, gw]

    def forward_loss(self, imgs: torch.Tensor, x_rec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L1 on masked pixels, per channel: imgs, x_rec [N, 3, H, W], mask [N, L] (True = masked)."""
        m = mask_to_pixels(mask, self.grid, self.patch_size).to(imgs.dtype)  # [N, 1, H, W]
        loss_recon = F.l1_loss(imgs.float(), x_rec.float(), reduction="none")  # [N, 3, H, W]
        return (loss_recon * m).sum() / (m.sum() + 1e-5) / imgs.shape[1]

    def forward(self, imgs: torch.Tensor, generator: torch.Generator | None = None):
        """imgs [N, 3, H, W] -> (loss, x_rec [N, 3, H, W], mask [N, L])."""
        mask = self.generate_mask(imgs.shape[0], imgs.device, generator)
        x_rec = self.decoder(self.forward_encoder(imgs, mask))  # [N, 3, H, W]
        return self.forward_loss(imgs, x_rec, mask), x_rec, mask

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unmasked image -> [B, D]: ViT: the mean patch token (the loss never reaches the CLS
        output; SimMIM fine-tunes ViTs with mean pooling, as BEiT); Swin: its average pool."""
        if self.is_swin:
            return self.backbone(x)
        return self.backbone.forward_tokens(x)[:, self.backbone.num_prefix_tokens:].mean(dim=1)

    # --------------------------------------------------------------- training
    def training_step(self, batch: Batch, step: int) -> StepOutput:
        imgs = torch.cat(batch.views[: batch.n_global], dim=0)  # [N, 3, s, s]; one crop in the presets
        loss, _, mask = self(imgs)  # mask_ratio is read live from self.p
        return StepOutput(loss=loss, scalars={"masked": mask.float().mean().detach()})

    def param_groups(self) -> list[dict]:
        """No weight decay on the mask token and Swin's relative position tables (official code);
        norms and biases are excluded by the trainer."""
        skip = ("mask_token", "relative_position_bias_table", "absolute_pos_embed")
        named = [(n, q) for n, q in self.named_parameters() if q.requires_grad]
        groups = [{"params": [q for n, q in named if not any(s in n for s in skip)]}]
        no_wd = [q for n, q in named if any(s in n for s in skip)]
        if no_wd:
            groups.append({"params": no_wd, "wd_scale": 0.0, "lars": False})
        return groups

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def probes(self, images: torch.Tensor) -> dict:
        """Reconstructions of fixed uint8 images [N, 3, H, W] with a fixed mask."""
        a = self.cfg.aug
        x = resize_normalize(images, self.image_size, a.mean, a.std).float()  # [N, 3, s, s]
        g = torch.Generator(device=x.device).manual_seed(PROBE_SEED)
        _, x_rec, mask = self(x, generator=g)
        panels = reconstruction_panels(x, x_rec, mask, self.patch_size, a.mean, a.std)
        out = {"reconstruction": {"images": panels, "meta": {
            "mask_ratio": float(self.p.mask_ratio), "mask_patch": int(self.mask_patch),
            "patch_size": int(self.patch_size), "grid": list(self.grid)}}}
        if not self.is_swin:
            out["attention"] = attention_probe(self.backbone, images, self.image_size, a.mean, a.std)
        return out

    @classmethod
    def mask_preview(cls, images: torch.Tensor, cfg) -> torch.Tensor:
        """The data page's masked-input preview: uint8 [N, 3, H, W] -> uint8 [N, 3, s, s] with the
        masked regions grey (s: the global crop size)."""
        size = cfg.aug.global_crops.size or int(images.shape[-1])
        ps = 4 if cfg.model.arch.lower().startswith("swin") else cfg.model.patch_size
        p = cls.Params(**cfg.params)
        mp = p.mask_patch or simmim_mask_patch(size, model_patch=ps)
        grid = (size // ps, size // ps)
        x = resize_u8(images, size)
        g = torch.Generator().manual_seed(PROBE_SEED)
        mask = simmim_masking(p.mask_type, x.shape[0], grid, mp, ps, p.mask_ratio, generator=g)
        return mask_images(x[..., : grid[0] * ps, : grid[1] * ps], mask, grid, ps)

    # ----------------------------------------------------------------- diagram
    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "random-resized crop + flip", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.hflip_p"]),
                Block("mask", "random mask patches", "op", ["params.mask_ratio", "params.mask_patch", "params.mask_type"],
                      note="squares of mask_patch px (32 at 192 px); exactly ceil(ratio x groups) masked"),
                Block("encoder", "ViT / Swin encoder + mask token", "encoder",
                      ["model.arch", "model.patch_size", "model.drop_path"],
                      note="masked patch embeddings replaced by a learned token; all positions encoded"),
                Block("head", "1x1 conv + PixelShuffle", "head", [],
                      note="one layer: C -> stride^2 x 3, then pixel shuffle back to the image"),
                Block("loss", "L1 on masked pixels", "loss", [],
                      note="sum |x - x_rec| over masked pixels / (masked pixels) / 3 channels"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "mask", "image"),
                Edge("mask", "encoder", "image + mask"),
                Edge("encoder", "head", "feature map"),
                Edge("head", "loss", "predicted pixels"),
                Edge("aug", "loss", "target pixels", style="stopgrad"),
            ],
        )
