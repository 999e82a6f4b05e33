"""BEiT: BERT Pre-Training of Image Transformers.

Bao, Dong, Piao, Wei, ICLR 2022 (arXiv:2106.08254). Official code:
github.com/microsoft/unilm/tree/master/beit (``run_beit_pretraining.py``,
``modeling_pretrain.py``, ``masking_generator.py``).

Masked image modelling with a discrete target: each image is turned into a grid of
visual tokens (one per ViT patch) by a frozen image tokenizer; about 40 % of the patches
are masked in blocks, their embeddings are replaced by a learned [MASK] embedding, and
the ViT, followed by a linear head over the vocabulary, predicts the visual token of each
masked patch (cross-entropy on the masked positions only).

The paper's tokenizer is OpenAI's DALL-E dVAE (vocabulary 8192), which cannot be
downloaded here, so a run has two stages:

    stage 1 (steps < tokenizer_steps)   train a VQ-VAE tokenizer on the same data
                                        (engine/components/tokenizer.py); the ViT is idle.
                                        Scalars: tok_recon, tok_perplexity, codes_used.
    stage 2 (steps >= tokenizer_steps)  freeze the tokenizer (no gradient, no codebook
                                        update) and pre-train the ViT as BEiT does.
                                        Scalars: mim_acc (token accuracy on masked patches).

The tokenizer is part of the method's ``state_dict`` (``tokenizer.*``), so every trainer
checkpoint carries it (written atomically); ``params.tokenizer_path`` loads a tokenizer
instead of training one: a file written by ``engine.components.tokenizer.save_tokenizer``,
a BEiT run folder or its ``checkpoints/last.pt`` (read with ``torch.load(weights_only=True)``).

Paper / official-code defaults kept here:
    masking          blockwise (Algorithm 1): blocks of >= 16 patches, aspect ratio in [0.3, 1/0.3],
                     40 % of the patches (the official script masks 75 of 196, 38 %: preset ``beit`` uses 0.383)
    encoder          ViT-B/16 at 224 px with a learned [MASK] embedding replacing masked patch
                     embeddings before the positions are added; LayerScale 0.1 (1e-5 for ViT-L)
    head             one linear layer from the patch representation to the vocabulary (8192)
    loss             cross-entropy on the masked positions, averaged over all masked tokens
    augmentation     random-resized crop (0.08-1), flip, colour jitter 0.4 (preset ``beit``)
    optimiser        AdamW, lr 1.5e-3, betas (0.9, 0.999) (the official script's default: 0.98),
                     weight decay 0.05, batch 2048, 800 epochs (ImageNet-1k), 10 warm-up epochs,
                     cosine to 1e-5, gradient clip 3.0, drop path 0.1

Not kept: BEiT's relative position bias (the project's timm ViT has absolute learned
positions). Kept: its initialisation, N(0, 0.02) weights with each block's output projections
divided by sqrt(2 l) (``ViTBackboneMixin.beit_init``).

Learning-rate schedule: the run's schedule (warm-up of ``optim.warmup_epochs``, cosine) starts
at ``tokenizer_steps`` (``schedule_start``), when the ViT starts learning, and spans the rest
of the run, so the ViT gets the paper's warm-up from zero. The tokenizer trains with the
run's optimiser at a fixed learning rate ``tok_lr`` (no warm-up, no weight decay; a live
change of ``optim.lr`` scales it too).

``embed()`` for kNN is the encoder's CLS token on the unmasked image (``embed_pool: cls``) or
the mean of its patch tokens (``mean``; BEiT's linear probe averages patch representations).
No loss reaches the CLS output directly, but it attends to the trained patch tokens, and it is
the better kNN feature here: micro ViT, 32 px ``shapes``, 1,500 steps, standardised kNN:
CLS 0.128 -> 0.168, mean patch token 0.116 -> 0.114 (tests/test_learning.py).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..augment import denormalize, resize_normalize
from ..components import ViTBackboneMixin, build_backbone
from ..components.tokenizer import VQTokenizer, load_tokenizer, tokenizer_config
from ..errors import CheckpointError, ConfigError
from ..masking import patch_mask
from ..optim import peak_lr
from ..probes import mask_images, reconstruction_panels, to_hwc_uint8
from .base import Batch, Block, Diagram, Edge, Method, Params, StepOutput

PROBE_SEED = 1234  # the probe's mask is the same at every snapshot, so snapshots compare


class BEiTParams(Params):
    mask_ratio: float = Field(
        0.4, ge=0.05, le=0.9, description="Fraction of patches masked (blockwise); 0.4 in the paper (75 of 196).")
    mask_type: Literal["block", "random"] = Field(
        "block", description="Blockwise masking (the paper) or the same number of patches at random "
        "(the paper's ablation without blockwise masking).")
    min_block: int = Field(
        16, ge=1, le=1024,
        description="Smallest masked block in patches at BEiT's 14x14 grid (16); scaled down for smaller grids.")
    layer_scale: float = Field(
        0.1, ge=0.0, le=1.0, description="LayerScale init of the ViT blocks (0.1 ViT-B, 1e-5 ViT-L; 0: off).")
    vocab_size: int = Field(8192, ge=2, le=65536, description="Visual-token vocabulary (8192 as DALL-E's).")
    tokenizer_steps: int = Field(
        5000, ge=0, le=10_000_000,
        description="Stage one: optimiser steps that train the VQ-VAE tokenizer before BEiT pre-training "
        "(ignored with tokenizer_path).")
    tokenizer_path: str | None = Field(
        None, description="Load the tokenizer from a saved tokenizer file, a BEiT run folder or its "
        "checkpoints/last.pt instead of training one; empty: train it (stage one).")
    tok_code_dim: int = Field(32, ge=4, le=1024, description="Tokenizer: code vector dimension.")
    tok_width: int = Field(128, ge=16, le=1024, description="Tokenizer: channels at the code resolution.")
    tok_res_blocks: int = Field(1, ge=0, le=8, description="Tokenizer: residual blocks in encoder and decoder.")
    tok_ema: bool = Field(True, description="Tokenizer: EMA codebook updates (True) or a learnt codebook "
                          "(codebook loss, straight-through).")
    tok_decay: float = Field(0.99, ge=0.5, lt=1.0, description="Tokenizer: EMA decay of the codebook statistics.")
    tok_beta: float = Field(0.25, ge=0.0, le=10.0, description="Tokenizer: commitment-loss weight (0.25).")
    tok_restart: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Tokenizer: restart codes used less than this fraction of the average (0: never).")
    tok_lr: float = Field(1e-3, gt=0.0, le=1.0, description="Tokenizer: fixed learning rate during stage one.")
    embed_pool: Literal["cls", "mean"] = Field(
        "cls", description="kNN / evaluation feature: the encoder's CLS token, or the mean of its patch tokens.")

    @model_validator(mode="after")
    def _tokenizer_source(self) -> "BEiTParams":
        if self.tokenizer_steps == 0 and not self.tokenizer_path:
            raise ValueError("tokenizer_steps is 0 and no tokenizer_path is set: train a tokenizer "
                             "(tokenizer_steps > 0) or load one (tokenizer_path)")
        return self


def mim_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BEiT's loss: logits [B, L, K], targets long [B, L], mask bool [B, L] (True = masked) ->
    cross-entropy averaged over all masked positions of the batch (visible positions ignored)."""
    return F.cross_entropy(logits[mask].float(), targets[mask])


class BEiT(Method):
    name = "beit"
    family = "masked image modelling"
    standardize_features = True  # kNN on z-scored features (MAE's BatchNorm before the linear probe)
    paper = "Bao et al., BEiT: BERT Pre-Training of Image Transformers, ICLR 2022"
    summary = (
        "A ViT sees images with ~40% of the patches masked in blocks and predicts, for each masked\n"
        "patch, its discrete visual token from a VQ-VAE tokenizer (trained first, then frozen)."
    )
    Params = BEiTParams
    live_params = ("mask_ratio", "mask_type")

    def __init__(self, cfg, image_size: int) -> None:
        super().__init__(cfg, image_size)
        p = self.p
        if cfg.aug.global_crops.count < 1:
            raise ConfigError("BEiT trains on one augmented crop per image: set aug.global_crops.count to 1")
        # --- encoder: the project's timm ViT with LayerScale and a [MASK] embedding
        self.backbone = build_backbone(cfg.model, image_size)
        if not isinstance(self.backbone, ViTBackboneMixin):
            raise ConfigError(f"BEiT needs a ViT encoder (model.arch vit_*), not '{cfg.model.arch}'")
        vit = self.backbone
        d = vit.out_dim
        vit.beit_init()  # N(0, 0.02) weights, output projections scaled down with depth
        if p.layer_scale > 0:
            vit.add_layer_scale(p.layer_scale)  # timm's init_values=layer_scale (exporters read it back)
        self.patch_size = vit.patch_size
        self.grid = vit.grid(image_size, image_size)  # (gh, gw)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix = int(vit.num_prefix_tokens)
        self.mask_token = nn.Parameter(torch.zeros(d))  # [D]; 1-D: no weight decay (like the positions)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        # --- head: patch representation -> logits over the vocabulary
        self.head = nn.Linear(d, p.vocab_size)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        # --- tokenizer: trained in stage one, or loaded
        if p.tokenizer_path:
            self.tokenizer = load_tokenizer(p.tokenizer_path)
            self._check_loaded(self.tokenizer)
        else:
            self.tokenizer = VQTokenizer(**tokenizer_config(p.model_dump(), self.patch_size))
        self.tokenizer_steps = 0 if p.tokenizer_path else p.tokenizer_steps
        self.schedule_start = self.tokenizer_steps  # the ViT's warm-up and cosine begin with stage two
        self.register_buffer("tokenizer_ready", torch.tensor(bool(p.tokenizer_path)))  # stage two has begun
        self._frozen = False
        if p.tokenizer_path:
            self._freeze_tokenizer()

    def _check_loaded(self, tok: VQTokenizer) -> None:
        if tok.vocab_size != self.p.vocab_size:
            raise CheckpointError(f"the tokenizer at {self.p.tokenizer_path} has a vocabulary of {tok.vocab_size}, "
                                  f"this run's params.vocab_size is {self.p.vocab_size}: set them equal")
        if tok.patch_size != self.patch_size:
            raise CheckpointError(f"the tokenizer at {self.p.tokenizer_path} makes one token per {tok.patch_size} px, "
                                  f"this run's model.patch_size is {self.patch_size}: set them equal")

    def _freeze_tokenizer(self) -> None:
        """Stage two: the tokenizer gets no gradient and no codebook update from here on."""
        self.tokenizer.requires_grad_(False)
        self.tokenizer_ready.fill_(True)
        self._frozen = True

    def param_groups(self) -> list[dict]:
        """ViT, [MASK] and head follow the run's schedule; the tokenizer (while it trains) a fixed LR."""
        main = [q for n, q in self.named_parameters() if not n.startswith("tokenizer.") and q.requires_grad]
        groups: list[dict] = [{"params": main}]
        tok = [q for q in self.tokenizer.parameters() if q.requires_grad]
        if tok and self.tokenizer_steps > 0:
            peak = peak_lr(self.cfg.optim, self.cfg.train.batch_size)
            groups.append({"params": tok, "fixed_lr": True, "lr_scale": self.p.tok_lr / peak, "wd_scale": 0.0})
        return groups

    def setup_warnings(self) -> list[str]:
        if self.tokenizer_steps >= self.total_steps:
            return [f"params.tokenizer_steps ({self.tokenizer_steps}) covers the whole run ({self.total_steps} "
                    "steps): only the tokenizer trains, the ViT never does; raise the run's length or "
                    "lower params.tokenizer_steps"]
        return []

    # ----------------------------------------------------------------- pieces
    def num_masked(self) -> int:
        return max(1, min(self.num_patches - 1, round(self.p.mask_ratio * self.num_patches)))

    def generate_mask(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Blockwise (or random, ``mask_type``) mask [n, L], True = masked, exactly num_masked() per image."""
        return patch_mask(self.p.mask_type, n, self.grid, self.num_masked(), min_block=self.p.min_block,
                          device=device, generator=generator)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, 3, H, W] (normalised), mask [B, L] (True = masked) or None -> patch tokens [B, L, D]."""
        vit = self.backbone
        t = vit.patch_embed(x)  # [B, gh, gw, D] (timm's dynamic size: NHWC) or [B, L, D]
        if mask is not None:
            m = mask.reshape(*t.shape[:-1], 1)  # [B, gh, gw, 1]
            t = torch.where(m, self.mask_token.to(t.dtype), t)  # [MASK] replaces the patch embedding
        t = vit._pos_embed(t)  # CLS prepended, positions added: [B, P + L, D]
        t = vit.norm_pre(vit.patch_drop(t))
        t = vit.norm(vit.blocks(t))  # [B, P + L, D]
        return t[:, self.num_prefix:]  # [B, L, D]

    def mim_loss(self, h: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
        """h [B, L, D], targets long [B, L], mask [B, L] -> (loss, logits of the masked positions [M, K]).

        Only the masked positions go through the head (as the official code); the value equals
        ``mim_cross_entropy(self.head(h), targets, mask)``."""
        logits = self.head(h[mask])  # [M, K]
        return F.cross_entropy(logits.float(), targets[mask]), logits

    # --------------------------------------------------------------- training
    def training_step(self, batch: Batch, step: int) -> StepOutput:
        x = batch.views[0]  # x: [B, 3, s, s] one augmented crop (normalised)
        if step < self.tokenizer_steps:
            return self._tokenizer_step(x)
        if not self._frozen:
            self._freeze_tokenizer()
        B = x.shape[0]
        with torch.no_grad():
            targets = self.tokenizer.encode(x).reshape(B, -1)  # visual tokens of the unmasked image: [B, L]
        mask = self.generate_mask(B, x.device)  # [B, L], True = masked
        h = self.encode(x, mask)  # h: [B, L, D]
        loss, logits = self.mim_loss(h, targets, mask)  # logits: [M, K]
        acc = (logits.detach().argmax(-1) == targets[mask]).float().mean()
        return StepOutput(loss=loss, scalars={"mim_acc": acc, "stage": torch.full((), 2.0, device=x.device)})

    def _tokenizer_step(self, x: torch.Tensor) -> StepOutput:
        out = self.tokenizer(x, update=True)  # VQ-VAE loss, EMA codebook update, dead-code restarts
        return StepOutput(loss=out["loss"], scalars={
            "tok_recon": out["recon_loss"].detach(), "tok_perplexity": out["perplexity"],
            "codes_used": out["codes_used"], "stage": torch.full((), 1.0, device=x.device)})

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unmasked image -> the CLS token (or the mean patch token) after the final norm [B, D]."""
        tokens = self.backbone.forward_tokens(x)  # [B, P + L, D]
        if self.p.embed_pool == "mean":
            return tokens[:, self.num_prefix:].mean(dim=1)
        return tokens[:, 0]

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def probes(self, images: torch.Tensor) -> dict:
        """'tokenizer': original | the tokenizer's reconstruction; from stage two also
        'reconstruction': original | masked | tokenizer decode of the predicted tokens | pasted."""
        a = self.cfg.aug
        x = resize_normalize(images, self.image_size, a.mean, a.std).float()  # [N, 3, s, s]
        n = x.shape[0]
        codes = self.tokenizer.encode(x)  # [N, gh, gw]
        rec = self.tokenizer.decode_codes(codes).float()  # [N, 3, s, s]

        def u8(t: torch.Tensor) -> torch.Tensor:
            return (denormalize(t, a.mean, a.std) * 255.0).round().to(torch.uint8)

        out = {"tokenizer": {
            "images": {"original": to_hwc_uint8(u8(x)), "reconstruction": to_hwc_uint8(u8(rec))},
            "meta": {"codes_used": int(codes.unique().numel()), "vocab_size": int(self.tokenizer.vocab_size),
                     "tokenizer_mse": float(F.mse_loss(rec, x))}}}
        if bool(self.tokenizer_ready):
            g = torch.Generator().manual_seed(PROBE_SEED)
            mask = self.generate_mask(n, x.device, generator=g)  # [N, L]
            logits = self.head(self.encode(x, mask))  # [N, L, K]
            pred = torch.where(mask, logits.argmax(-1), codes.reshape(n, -1))  # predicted tokens where masked
            img = self.tokenizer.decode_codes(pred.reshape(codes.shape)).float()  # [N, 3, s, s]
            panels = reconstruction_panels(x, img, mask, self.patch_size, a.mean, a.std)
            acc = (pred[mask] == codes.reshape(n, -1)[mask]).float().mean()
            out["reconstruction"] = {"images": panels, "meta": {
                "token_accuracy": float(acc), "mask_ratio": float(self.p.mask_ratio), "grid": list(self.grid),
                "reconstruction": "tokenizer decode of the predicted tokens (masked) and its own tokens (visible)"}}
        return out

    @classmethod
    def mask_preview(cls, images: torch.Tensor, cfg) -> torch.Tensor:
        """The data page's masked-input preview: uint8 [N, 3, H, W] -> uint8 [N, 3, s, s], masked patches grey."""
        size = cfg.aug.global_crops.size or int(images.shape[-1])
        ps = cfg.model.patch_size
        p = cls.Params(**cfg.params)
        x = images
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        grid = (size // ps, size // ps)
        L = grid[0] * grid[1]
        k = max(1, min(L - 1, round(p.mask_ratio * L)))
        g = torch.Generator().manual_seed(PROBE_SEED)
        mask = patch_mask(p.mask_type, x.shape[0], grid, k, min_block=p.min_block, generator=g)
        return mask_images(x[..., : grid[0] * ps, : grid[1] * ps], mask, grid, ps)

    # ----------------------------------------------------------------- diagram
    @classmethod
    def diagram(cls) -> Diagram:
        return Diagram(
            blocks=[
                Block("data", "images", "data", ["data.source", "train.batch_size"]),
                Block("aug", "random-resized crop, flip, jitter", "augment",
                      ["aug.global_crops.size", "aug.global_crops.scale", "aug.hflip_p", "aug.jitter_p"]),
                Block("tokenizer", "VQ-VAE tokenizer", "encoder",
                      ["params.tokenizer_steps", "params.tokenizer_path", "params.vocab_size", "params.tok_code_dim",
                       "params.tok_width", "params.tok_res_blocks", "params.tok_ema", "params.tok_decay",
                       "params.tok_beta", "params.tok_restart", "params.tok_lr"],
                      note="stage 1: trained on the same images; stage 2: frozen, one token per patch"),
                Block("mask", "blockwise masking", "op",
                      ["params.mask_ratio", "params.mask_type", "params.min_block", "model.patch_size"],
                      note="rectangular blocks, aspect 0.3-3.3, until ~40% of the patches are masked"),
                Block("encoder", "ViT + [MASK] embedding", "encoder",
                      ["model.arch", "model.patch_size", "model.drop_path", "params.layer_scale"],
                      note="masked patches' embeddings replaced by a learned [MASK] vector"),
                Block("head", "linear head -> vocabulary", "head", ["params.vocab_size"]),
                Block("loss", "cross-entropy on masked patches", "loss", [],
                      note="target: the tokenizer's token of each masked patch of the unmasked image"),
            ],
            edges=[
                Edge("data", "aug"),
                Edge("aug", "mask", "image"),
                Edge("aug", "tokenizer", "image"),
                Edge("mask", "encoder", "patches + [MASK]"),
                Edge("encoder", "head", "patch tokens"),
                Edge("head", "loss", "logits (masked)"),
                Edge("tokenizer", "loss", "visual tokens", style="stopgrad"),
            ],
        )
