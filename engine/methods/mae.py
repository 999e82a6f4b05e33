"""MAE: Masked Autoencoders Are Scalable Vision Learners.

He, Chen, Xie, Li, Dollár, Girshick, CVPR 2022 (arXiv:2111.06377). Official code:
github.com/facebookresearch/mae (``models_mae.py``, ``main_pretrain.py``); this file follows
``models_mae.MaskedAutoencoderViT`` method by method.

Most patches of an image (75 %) are removed at random; a ViT encoder sees only the
visible ones (no mask tokens in the encoder). A light decoder gets the encoded visible
tokens plus a shared learned mask token at every removed position (with fixed 2-D sin-cos
positions) and predicts the pixels of every patch; the MSE is taken on the removed patches
only, against per-patch normalised pixels (``norm_pix_loss``).

Paper / official-code defaults kept here:
    masking          random, mask ratio 0.75 (exactly int(L * 0.25) visible patches per image);
                     ``mask_type`` block / grid: the paper's sampling ablation (Table 1f, Fig. 6)
    encoder          ViT (timm, ``model.arch``); fixed 2-D sin-cos position embedding; MAE's init
                     (Xavier-uniform Linear layers and patch projection, tokens N(0, 0.02))
    decoder          512 wide, 8 blocks, 16 heads, MLP ratio 4; fixed 2-D sin-cos positions;
                     a linear layer to p * p * 3 pixels per patch
    loss             MSE on masked patches, per-patch normalised target (norm_pix_loss, eps 1e-6)
    augmentation     one random-resized crop, scale (0.2, 1), horizontal flip; nothing else
    optimiser        AdamW, betas (0.9, 0.95), lr 1.5e-4 x batch / 256, weight decay 0.05,
                     40 warm-up epochs, cosine, batch 4096, 800-1600 epochs (preset ``mae``)

Here: every global crop of a batch is an independent sample (presets use one crop, as the
paper); ``embed()`` for kNN is the encoder's CLS token after the final norm on the full,
unmasked image (the token MAE's linear probe uses), or the mean of the patch tokens with
``embed_pool: mean``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from timm.models.vision_transformer import Block as ViTBlock
from torch import nn

from ..augment import resize_normalize, resize_u8
from ..components import ViTBackboneMixin, build_backbone
from ..errors import ConfigError
from ..masking import ids_from_mask, patch_mask, random_masking
from ..probes import attention_probe, mask_images, norm_pix_target, patchify, reconstruction_panels
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput
from .moco_v3 import sincos_2d

PROBE_SEED = 1234  # the probe's mask is the same at every snapshot, so snapshots compare


def mae_masking(kind: str, n: int, grid: tuple[int, int], mask_ratio: float, device=None,
                generator: torch.Generator | None = None):
    """(ids_keep [n, L_keep], mask [n, L] True = removed, ids_restore [n, L]): MAE's random
    masking, or a blockwise / grid-wise mask (``patch_mask``) with the same count of removed
    patches (grid: 3 of every 2 x 2)."""
    L = grid[0] * grid[1]
    if kind == "random":
        return random_masking(n, L, mask_ratio, device=device, generator=generator)
    mask = patch_mask(kind, n, grid, L - int(L * (1 - mask_ratio)), device=device, generator=generator)
    ids_keep, ids_restore = ids_from_mask(mask)
    return ids_keep, mask, ids_restore


class MAEParams(Params):
    mask_ratio: float = Field(
        0.75, ge=0.05, le=0.95,
        description="Fraction of patches removed before the encoder (0.75 in the paper).",
    )
    mask_type: Literal["random", "block", "grid"] = Field(
        "random", description="Which patches are removed: random (the paper), block (BEiT's blockwise, the same "
        "count) or grid (one of every 2x2 kept: 75 %, mask_ratio ignored); the paper's Table 1f ablation.")
    decoder_dim: int = Field(512, ge=16, le=4096, description="Decoder width (512 in the paper).")
    decoder_depth: int = Field(8, ge=1, le=32, description="Decoder Transformer blocks (8 in the paper).")
    decoder_heads: int = Field(16, ge=1, le=64, description="Decoder attention heads (16 in the paper).")
    norm_pix_loss: bool = Field(
        True, description="Predict per-patch normalised pixels (mean 0, std 1 per patch; on in the paper)."
    )
    embed_pool: Literal["cls", "mean"] = Field(
        "cls", description="kNN / evaluation feature: the encoder's CLS token, or the mean of its patch tokens."
    )

    @model_validator(mode="after")
    def _decoder_shape(self) -> "MAEParams":
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} must be a multiple of decoder_heads {self.decoder_heads}")
        if self.decoder_dim % 4:
            raise ValueError(f"decoder_dim {self.decoder_dim} must be a multiple of 4 (2-D sin-cos positions)")
        return self


class MAE(Method):
    name = "mae"
    family = "masked image modelling"
    standardize_features = True  # kNN on z-scored features (MAE's BatchNorm before the linear probe)
    paper = "He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022"
    summary = (
        "A ViT encoder sees only a random 25 % of the patches; a light decoder with mask tokens\n"
        "reconstructs the pixels of the removed ones (MSE on masked patches)."
    )
    Params = MAEParams
    live_params = ("mask_ratio", "mask_type")

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        if cfg.aug.global_crops.count < 1:
            raise ConfigError("MAE trains on one augmented crop per image: set aug.global_crops.count to 1")
        # --- encoder: the project's timm ViT, applied to the visible patches only
        self.backbone = build_backbone(cfg.model, image_size)
        if not isinstance(self.backbone, ViTBackboneMixin):
            raise ConfigError(f"MAE needs a ViT encoder (model.arch vit_*), not '{cfg.model.arch}'")
        vit = self.backbone
        self.patch_size = vit.patch_size
        self.grid = vit.grid(image_size, image_size)  # (gh, gw)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix = int(vit.num_prefix_tokens)  # CLS (+ registers)
        if vit.out_dim % 4:
            raise ConfigError(f"MAE's sin-cos positions need a ViT width divisible by 4 (got {vit.out_dim})")
        # --- decoder: embed -> [mask tokens] -> + sin-cos positions -> blocks -> norm -> pixels
        d = p.decoder_dim
        self.decoder_embed = nn.Linear(vit.out_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("decoder_pos_embed", self._sincos(d), persistent=False)  # [1, P + L, d], fixed
        self.decoder_blocks = nn.ModuleList(
            ViTBlock(d, p.decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=_layer_norm)
            for _ in range(p.decoder_depth)
        )
        self.decoder_norm = _layer_norm(d)
        self.decoder_pred = nn.Linear(d, self.patch_size**2 * 3)
        self._initialize_weights()

    # ------------------------------------------------------------------ set-up
    def _sincos(self, dim: int) -> torch.Tensor:
        """Fixed 2-D sin-cos positions [1, P + L, dim]; the prefix (CLS) rows are zero, as in MAE."""
        pe = torch.zeros(1, self.num_prefix + self.num_patches, dim)
        pe[0, self.num_prefix:] = sincos_2d(*self.grid, dim)
        return pe

    @torch.no_grad()
    def _initialize_weights(self) -> None:
        """MAE's ``initialize_weights``: fixed sin-cos encoder positions, Xavier-uniform patch
        projection and Linear layers (bias 0), LayerNorm (1, 0), tokens N(0, 0.02)."""
        vit = self.backbone
        if getattr(vit, "pos_embed", None) is not None and vit.pos_embed.shape[1] == self.decoder_pos_embed.shape[1]:
            vit.pos_embed.copy_(self._sincos(vit.pos_embed.shape[2]))
            vit.pos_embed.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = vit.patch_embed.proj.weight  # like nn.Linear: view the conv as [D, 3 p p]
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for tok in (getattr(vit, "cls_token", None), getattr(vit, "reg_token", None), self.mask_token):
            if tok is not None:
                nn.init.normal_(tok, std=0.02)

    # ----------------------------------------------------------------- pieces
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs [N, 3, H, W] -> patches [N, L, p * p * 3]."""
        return patchify(imgs, self.patch_size)

    def masking(self, n: int, device, generator: torch.Generator | None = None):
        """(ids_keep [N, L_keep], mask [N, L] True = removed, ids_restore [N, L]) of params.mask_type."""
        return mae_masking(self.p.mask_type, n, self.grid, self.p.mask_ratio, device, generator)

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode the visible patches only: imgs [N, 3, H, W] -> latent [N, P + L_keep, D]."""
        vit = self.backbone
        x = vit._pos_embed(vit.patch_embed(imgs))  # x: [N, P + L, D], positions added, CLS prepended
        prefix, x = x[:, : self.num_prefix], x[:, self.num_prefix:]  # [N, P, D], [N, L, D]
        x = x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # keep: [N, L_keep, D]
        x = torch.cat([prefix, x], dim=1)  # x: [N, P + L_keep, D]
        x = vit.norm_pre(vit.patch_drop(x))
        x = vit.blocks(x)  # timm blocks: fused scaled-dot-product attention
        return vit.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [N, P + L_keep, D] -> predicted patches [N, L, p * p * 3]."""
        x = self.decoder_embed(latent)  # x: [N, P + L_keep, d]
        n, k, d = x.shape
        P, L = self.num_prefix, ids_restore.shape[1]
        mask_tokens = self.mask_token.to(x.dtype).expand(n, L + P - k, d)  # [N, L - L_keep, d]
        x_ = torch.cat([x[:, P:], mask_tokens], dim=1)  # [N, L, d], shuffled order
        x_ = x_.gather(1, ids_restore[..., None].expand(-1, -1, d))  # unshuffle: [N, L, d]
        x = torch.cat([x[:, :P], x_], dim=1) + self.decoder_pos_embed.to(x.dtype)  # [N, P + L, d]
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))  # [N, P + L, p * p * 3]
        return x[:, P:]  # drop the prefix: [N, L, p * p * 3]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on the removed patches: imgs [N, 3, H, W], pred [N, L, p p 3], mask [N, L] (True = removed)."""
        target = self.patchify(imgs).float()  # [N, L, p p 3]
        if self.p.norm_pix_loss:
            target = norm_pix_target(target)
        loss = (pred.float() - target).pow(2).mean(dim=-1)  # [N, L], mean loss per patch
        m = mask.float()
        return (loss * m).sum() / m.sum()  # mean over removed patches only

    def forward(self, imgs: torch.Tensor, generator: torch.Generator | None = None):
        """imgs [N, 3, H, W] -> (loss, pred [N, L, p p 3], mask [N, L])."""
        ids_keep, mask, ids_restore = self.masking(imgs.shape[0], imgs.device, generator)
        latent = self.forward_encoder(imgs, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    # --------------------------------------------------------------- training
    def training_step(self, batch: Batch, step: int) -> StepOutput:
        imgs = torch.cat(batch.views[: batch.n_global], dim=0)  # [N, 3, s, s]; one crop in the presets
        loss, pred, mask = self(imgs)  # mask_ratio is read live from self.p
        return StepOutput(loss=loss, scalars={"visible": (~mask).float().mean().detach()})

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Full, unmasked image -> the encoder's CLS token [B, D] (or the mean patch token)."""
        tokens = self.backbone.forward_tokens(x)  # [B, P + L, D], after the final norm
        if self.p.embed_pool == "mean":
            return tokens[:, self.num_prefix:].mean(dim=1)
        return tokens[:, 0]

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def probes(self, images: torch.Tensor) -> dict:
        """Reconstructions of fixed uint8 images [N, 3, H, W] with a fixed random mask."""
        a = self.cfg.aug
        x = resize_normalize(images, self.image_size, a.mean, a.std).float()  # [N, 3, s, s]
        g = torch.Generator(device=x.device).manual_seed(PROBE_SEED)
        _, pred, mask = self(x, generator=g)
        panels = reconstruction_panels(x, pred, mask, self.patch_size, a.mean, a.std, norm_pix=self.p.norm_pix_loss)
        out = {"reconstruction": {"images": panels, "meta": {
            "mask_ratio": float(self.p.mask_ratio), "patch_size": int(self.patch_size),
            "grid": list(self.grid), "norm_pix_loss": bool(self.p.norm_pix_loss)}}}
        out["attention"] = attention_probe(self.backbone, images, self.image_size, a.mean, a.std)
        return out

    @classmethod
    def mask_preview(cls, images: torch.Tensor, cfg) -> torch.Tensor:
        """The data page's masked-input preview: uint8 [N, 3, H, W] -> uint8 [N, 3, s, s] with
        the removed patches grey (s: the global crop size, patches of ``model.patch_size``)."""
        size = cfg.aug.global_crops.size or int(images.shape[-1])
        ps = cfg.model.patch_size
        ratio = float(cfg.params.get("mask_ratio", cls.Params().mask_ratio))
        x = resize_u8(images, size)
        grid = (size // ps, size // ps)
        g = torch.Generator().manual_seed(PROBE_SEED)
        kind = cfg.params.get("mask_type", cls.Params().mask_type)
        _, mask, _ = mae_masking(kind, x.shape[0], grid, ratio, generator=g)
        return mask_images(x[..., : grid[0] * ps, : grid[1] * ps], mask, grid, ps)

    # ----------------------------------------------------------------- diagram
    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "random-resized crop + flip", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.hflip_p"]),
                Block("mask", "random masking", "op", ["params.mask_ratio", "params.mask_type", "model.patch_size"],
                      note="keep a random int(L (1 - ratio)) patches per image (or blockwise / grid-wise)"),
                Block("encoder", "ViT encoder (visible patches only)", "encoder",
                      ["model.arch", "model.patch_size", "model.drop_path"],
                      note="sin-cos positions, CLS + visible tokens; no mask tokens"),
                Block("decoder", "decoder + mask tokens", "head",
                      ["params.decoder_dim", "params.decoder_depth", "params.decoder_heads"],
                      note="mask tokens at the removed positions, sin-cos positions, linear to p*p*3"),
                Block("loss", "MSE on masked patches", "loss", ["params.norm_pix_loss"],
                      note="target: pixels of each removed patch, normalised per patch"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "mask", "image"),
                Edge("mask", "encoder", "visible patches"),
                Edge("encoder", "decoder", "latent"),
                Edge("decoder", "loss", "predicted pixels"),
                Edge("aug", "loss", "target pixels", style="stopgrad"),
            ],
        )


def _layer_norm(dim: int, **kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)  # MAE: partial(nn.LayerNorm, eps=1e-6)
