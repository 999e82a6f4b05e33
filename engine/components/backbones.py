"""Backbones: torchvision ResNets and timm Vision Transformers behind one small contract.

Every backbone built by :func:`build_backbone` is an ``nn.Module`` with

* ``out_dim`` (int): width of the pooled feature;
* ``arch`` (str): the architecture name it was built from;
* ``forward(x)``: ``x [B, 3, H, W]`` (normalised images) -> ``[B, out_dim]`` pooled features.

ViT backbones add ``forward_tokens``, ``patch_size``, ``grid`` and ``last_attention``
(see :class:`ViTBackboneMixin`).

Parameter names are exactly those of the upstream libraries, so that a backbone's
``state_dict()`` loads with ``strict=True`` into a plain model of the same shape:

* ResNet: ``torchvision.models.resnet18(); m.fc = nn.Identity()`` (with ``conv1`` and
  ``maxpool`` replaced the same way when the CIFAR stem is on) and
  ``timm.create_model('resnet18', num_classes=0)`` (standard stem);
* ViT: ``timm.create_model(<timm name>, img_size=..., patch_size=..., num_classes=0)``.

This is achieved by *being* the upstream model rather than wrapping it: ResNets are a
subclass of torchvision's ``ResNet``; ViTs are built by timm and then given the extra
methods of :class:`ViTBackboneMixin` (the instance's class is swapped for a subclass of
its own class, which adds methods only, no parameters).
"""

from __future__ import annotations

import math

import timm
import torch
from timm.layers import Attention, LayerScale
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..compiling import eager
from ..config import ModelConfig
from ..errors import ConfigError

# ===================================================================== ResNet
# name -> (block, layers per stage), as in torchvision.models.resnet
_RESNETS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


class ResNetBackbone(ResNet):
    """torchvision ResNet (He et al. 2016) without its classifier: ``fc = nn.Identity()``.

    Randomly initialised (torchvision's init, ``weights=None``; nothing is downloaded).

    CIFAR stem (``cifar_stem=True``): ``conv1`` is a 3x3 stride-1 convolution without
    bias and ``maxpool`` is removed, as in SimCLR's CIFAR-10 experiments (Chen et al.
    2020, Appendix B.9), so that 32 px images are not downsampled 4x before ``layer1``.

    forward: ``x [B, 3, H, W]`` -> ``[B, 512]`` (resnet18/34) or ``[B, 2048]`` (resnet50+),
    the global-average-pooled output of ``layer4``. Works with channels_last inputs and
    under bf16 autocast (plain convolutions and batch norm).
    """

    def __init__(self, arch: str = "resnet18", cifar_stem: bool = False) -> None:
        if arch not in _RESNETS:
            raise ConfigError(f"unknown ResNet '{arch}'; choose one of: {', '.join(_RESNETS)}")
        block, layers = _RESNETS[arch]
        super().__init__(block, layers)  # torchvision init (kaiming fan_out for convs)
        self.arch = arch
        self.cifar_stem = bool(cifar_stem)
        self.out_dim = 512 * block.expansion
        self.fc = nn.Identity()
        if self.cifar_stem:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()

    # forward is torchvision's: conv1 -> bn1 -> relu -> maxpool -> layer1..4 -> avgpool
    # -> flatten -> fc (Identity); x: [B, 3, H, W] -> [B, out_dim]


# ======================================================================== ViT
# short names -> timm configs (their patch size / image size are overridden by the config)
_VIT_ALIASES: dict[str, str] = {
    "vit_tiny": "vit_tiny_patch16_224",    # D=192,  depth 12, 3 heads
    "vit_small": "vit_small_patch16_224",  # D=384,  depth 12, 6 heads
    "vit_base": "vit_base_patch16_224",    # D=768,  depth 12, 12 heads
    "vit_large": "vit_large_patch16_224",  # D=1024, depth 24, 16 heads
}


@torch.no_grad()
def xavier_init_split_qkv(module: nn.Module) -> None:
    """Xavier-uniform init of every Linear layer in ``module``, bias 0, with a fused Q|K|V
    (``*qkv``) or K|V (``*.kv``) weight counted as three / two separate matrices: MoCo v3's ViT
    initialisation (``vits.py``), also MultiMAE's."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            parts = 3 if name.endswith("qkv") else 2 if name.endswith(".kv") or name == "kv" else 1
            bound = math.sqrt(6.0 / (m.weight.shape[0] // parts + m.weight.shape[1]))
            nn.init.uniform_(m.weight, -bound, bound)  # parts 1: nn.init.xavier_uniform_
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ViTBackboneMixin:
    """Methods added to a timm Vision Transformer (Dosovitskiy et al. 2021) built by timm.

    Only methods and plain attributes are added (no parameters or buffers), so the
    ``state_dict`` keys are timm's own. Attributes: ``arch``, ``timm_name``, ``out_dim``
    (= embed dim D), ``patch_size`` (int, square patches).

    * ``forward(x)`` (timm's, with ``num_classes=0``): ``[B, 3, H, W]`` -> ``[B, D]``, the
      CLS token after the final norm (models built without a class token pool as timm
      configures them, e.g. average).
    * ``forward_tokens(x)``: ``[B, 3, H, W]`` -> ``[B, P + L, D]``: every token after the
      final norm; ``P = num_prefix_tokens`` (1 for the CLS token, plus register tokens if
      the model has any) and ``L = gh * gw`` patch tokens in row-major order.
    * ``grid(h, w)``: patch grid ``(gh, gw)`` for an input of ``h x w`` pixels.
    * ``last_attention(x)``: CLS-to-patch attention of the last block, ``[B, heads, L]``.
    * ``add_layer_scale(init)``: LayerScale (Touvron et al. 2021) on every block, as timm's
      ``init_values=init`` builds it (BEiT and SimMIM's ViT use 0.1).

    Inputs of a size other than ``img_size`` are accepted (``dynamic_img_size=True``: the
    position embeddings are interpolated); their sides must be multiples of the patch
    size (timm asserts it).
    """

    arch: str
    timm_name: str
    out_dim: int
    patch_size: int

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: x [B, 3, H, W] -> [B, P + L, D]."""
        return self.forward_features(x)  # type: ignore[attr-defined]

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """Patch grid (gh, gw) of an h x w input."""
        pe = self.patch_embed  # type: ignore[attr-defined]
        if hasattr(pe, "dynamic_feat_size"):
            gh, gw = pe.dynamic_feat_size((h, w))
            return int(gh), int(gw)
        return h // self.patch_size, w // self.patch_size

    def add_layer_scale(self, init: float) -> None:
        """Per-channel residual scales ``gamma = init`` on both branches of every block.

        The modules and ``state_dict`` keys (``blocks.i.ls1.gamma``) are those of timm's
        ``init_values=init``; ``self.init_values`` records it for exporters."""
        d = self.out_dim
        for blk in self.blocks:  # type: ignore[attr-defined]
            blk.ls1 = LayerScale(d, init_values=init)
            blk.ls2 = LayerScale(d, init_values=init)
        self.init_values = init

    @torch.no_grad()
    def beit_init(self, std: float = 0.02) -> None:
        """BEiT's initialisation (also SimMIM's ViT): Linear and Conv2d weights N(0, std^2)
        (truncated at +-2), bias 0, LayerNorm (1, 0), class token N(0, std^2); then the two
        residual output projections of block l = 1..depth (``attn.proj``, ``mlp.fc2``) divided
        by sqrt(2 l) (their ``fix_init_weight``), so the residual stream does not grow with depth."""
        for m in self.modules():  # type: ignore[attr-defined]
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if getattr(self, "cls_token", None) is not None:
            nn.init.trunc_normal_(self.cls_token, std=std)
        for layer, blk in enumerate(self.blocks, start=1):  # type: ignore[attr-defined]
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    def last_attention(self, x: torch.Tensor, renormalise: bool = True) -> torch.Tensor:
        """CLS-to-patch attention of the last block, for visual probes.

        x: [B, 3, H, W] -> [B, heads, L], L = gh * gw patch tokens in row-major order
        (reshape to [B, heads, gh, gw] with :meth:`grid`).

        The attention is computed explicitly, ``softmax(q k^T * scale)`` in float32, from
        the input of the last block's attention (captured with a forward pre-hook while
        the model runs its normal forward). Only this probe path materialises the
        attention matrix; training keeps timm's fused scaled-dot-product attention.

        Returned values: the softmax row of the CLS query over all ``P + L`` keys, keeping
        the ``L`` patch columns (the CLS / register columns are dropped) and, when
        ``renormalise`` (default), dividing by their sum so that each ``[b, h, :]`` row sums
        to 1 (a distribution over patches, as DINO's attention-mass thresholding
        assumes). With ``renormalise=False`` the raw softmax values are returned (rows sum
        to 1 minus the mass on prefix tokens). Wrap the call in ``torch.no_grad()`` when no
        gradient is needed.
        """
        if getattr(self, "cls_token", None) is None:
            raise ValueError(f"{self.arch}: last_attention needs a model with a CLS token")
        blk = self.blocks[-1]  # type: ignore[attr-defined]
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, Attention):
            raise NotImplementedError(
                f"{self.arch}: last_attention supports timm's standard Attention blocks, "
                f"not {type(attn).__name__}"
            )
        captured: list[torch.Tensor] = []

        def _grab(_mod: nn.Module, args: tuple) -> None:
            captured.append(args[0])  # input of the last attention (after norm1), [B, N, D]

        handle = attn.register_forward_pre_hook(_grab)
        try:
            with eager(self):  # compiled blocks (train.compile) would not call the hook
                self.forward_features(x)  # type: ignore[attr-defined]
        finally:
            handle.remove()
        h = captured[-1]  # h: [B, N, D], N = P + L
        B, N, _ = h.shape
        with torch.autocast(device_type=h.device.type, enabled=False):
            qkv = attn.qkv(h.to(attn.qkv.weight.dtype))  # [B, N, 3 * heads * head_dim]
            qkv = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, _v = qkv.unbind(0)  # q, k: [B, heads, N, head_dim]
            q, k = attn.q_norm(q), attn.k_norm(k)
            q0 = q[:, :, :1].float() * attn.scale  # CLS query, [B, heads, 1, hd]
            a = (q0 @ k.float().transpose(-2, -1)).softmax(dim=-1)[:, :, 0]  # [B, heads, N]
        a = a[:, :, self.num_prefix_tokens:]  # type: ignore[attr-defined]  # [B, heads, L]
        if renormalise:
            a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return a


class ViTBackbone(ViTBackboneMixin, VisionTransformer):
    """A timm ``VisionTransformer`` with the backbone methods of :class:`ViTBackboneMixin`.

    The class of every standard ``vit_*`` model; other timm classes reached through a
    ``vit...`` name (e.g. ``Eva`` for ``vit_*_dinov3``) get an equivalent subclass made on
    the fly (``ViTBackbone_<Class>``); ``isinstance(m, ViTBackboneMixin)`` covers both.
    """


_VIT_CLASSES: dict[type, type] = {VisionTransformer: ViTBackbone}


def _vit_backbone_class(base: type) -> type:
    """The subclass (ViTBackboneMixin, base), cached; ViTBackbone for VisionTransformer."""
    cls = _VIT_CLASSES.get(base)
    if cls is None:
        cls = type(f"ViTBackbone_{base.__name__}", (ViTBackboneMixin, base), {"__module__": __name__})
        _VIT_CLASSES[base] = cls
    return cls


def _build_vit(arch: str, cfg: ModelConfig, image_size: int) -> nn.Module:
    name = _VIT_ALIASES.get(arch, arch)
    kwargs = dict(
        pretrained=False,
        img_size=image_size,
        patch_size=cfg.patch_size,
        num_classes=0,
        drop_path_rate=cfg.drop_path,
        dynamic_img_size=True,
    )
    if cfg.num_heads:
        kwargs["num_heads"] = cfg.num_heads
    try:
        try:
            model = timm.create_model(name, **kwargs)
        except TypeError as e:
            if "dynamic_img_size" not in str(e):
                raise
            # a class without variable input size (e.g. VisionTransformerRelPos): fixed size
            kwargs.pop("dynamic_img_size")
            model = timm.create_model(name, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ConfigError(f"model.arch '{arch}': {e}") from None
    except TypeError as e:  # the model class does not take one of the arguments
        raise ConfigError(f"model.arch '{arch}' cannot be built with these settings: {e}") from None
    except AssertionError:  # timm's Attention: dim % num_heads == 0
        raise ConfigError(f"model.num_heads {cfg.num_heads} does not divide the width of '{arch}'") from None
    # add the backbone methods without wrapping (keeps timm's state_dict keys)
    model.__class__ = _vit_backbone_class(type(model))
    model.arch = arch
    model.timm_name = name
    model.out_dim = int(model.num_features)
    ps = model.patch_embed.patch_size
    model.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
    return model


# ======================================================================= Swin
# short names -> timm configs (image size and window are set by _build_swin)
_SWIN_ALIASES: dict[str, str] = {
    "swin_tiny": "swin_tiny_patch4_window7_224",    # C=96,  depths (2, 2, 6, 2)
    "swin_small": "swin_small_patch4_window7_224",  # C=96,  depths (2, 2, 18, 2)
    "swin_base": "swin_base_patch4_window7_224",    # C=128, depths (2, 2, 18, 2)
    "swin_large": "swin_large_patch4_window7_224",  # C=192, depths (2, 2, 18, 2)
}


class SwinBackboneMixin:
    """Attributes and methods added to a timm Swin Transformer (Liu et al. 2021).

    No parameters are added (``state_dict`` keys are timm's). Attributes: ``arch``,
    ``timm_name``, ``out_dim`` (width of the last stage), ``patch_size`` (4 for ``patch4``
    models; ``model.patch_size`` does not apply to Swin), ``stride`` (total downsampling of
    the last stage: patch size x 2^(stages - 1), 32).

    * ``forward(x)`` (timm's, ``num_classes=0``): ``[B, 3, H, W]`` -> ``[B, out_dim]``, the
      average of the last stage's tokens after the final norm;
    * ``forward_features(x)`` (timm's): ``[B, H / stride, W / stride, out_dim]`` (NHWC);
    * ``patch_embed(x)`` (timm's): ``[B, H / p, W / p, C]`` (NHWC, patch norm applied);
    * ``grid(h, w)``: patch grid ``(h / p, w / p)`` of the first stage.

    Inputs must be ``img_size`` (timm's Swin checks it).
    """

    arch: str
    timm_name: str
    out_dim: int
    patch_size: int
    stride: int

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return h // self.patch_size, w // self.patch_size


_SWIN_CLASSES: dict[type, type] = {}


def _swin_backbone_class(base: type) -> type:
    cls = _SWIN_CLASSES.get(base)
    if cls is None:
        cls = type(f"SwinBackbone_{base.__name__}", (SwinBackboneMixin, base), {"__module__": __name__})
        _SWIN_CLASSES[base] = cls
    return cls


def _build_swin(arch: str, cfg: ModelConfig, image_size: int) -> nn.Module:
    """timm Swin Transformer for square ``image_size`` images (a multiple of 32).

    Built with ``img_size=image_size, num_classes=0, drop_path_rate=cfg.drop_path,
    pretrained=False``; the attention window is ``image_size / 32`` for images of 192 px and
    more (6 at 192 px as in SimMIM, 7 at 224 px, 12 at 384 px) and timm's default otherwise
    (timm shrinks windows larger than a stage's feature map to the map).
    """
    name = _SWIN_ALIASES.get(arch, arch)
    if image_size % 32:
        raise ConfigError(f"Swin needs an image size that is a multiple of 32 (got {image_size})")
    kwargs: dict = dict(pretrained=False, img_size=image_size, num_classes=0, drop_path_rate=cfg.drop_path)
    if image_size >= 192:
        kwargs["window_size"] = image_size // 32
    try:
        model = timm.create_model(name, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ConfigError(f"model.arch '{arch}': {e}") from None
    except TypeError as e:
        raise ConfigError(f"model.arch '{arch}' cannot be built with these settings: {e}") from None
    model.__class__ = _swin_backbone_class(type(model))
    model.arch = arch
    model.timm_name = name
    model.out_dim = int(model.num_features)
    ps = model.patch_embed.patch_size
    model.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
    model.stride = int(model.feature_info[-1]["reduction"])
    return model


# ==================================================================== factory
def resolve_cifar_stem(cfg: ModelConfig, image_size: int) -> bool:
    """The config's ``cifar_stem``; None means on for images of at most 64 px."""
    return cfg.cifar_stem if cfg.cifar_stem is not None else image_size <= 64


def build_backbone(cfg: ModelConfig, image_size: int) -> nn.Module:
    """Build the backbone named by ``cfg.arch`` for square images of ``image_size`` px.

    * ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``: torchvision
      (:class:`ResNetBackbone`), CIFAR stem per :func:`resolve_cifar_stem`.
    * ``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``: timm's
      ``vit_{size}_patch16_224`` configs; any other name starting with ``vit`` is a timm
      model name. Both are built with ``img_size=image_size, patch_size=cfg.patch_size,
      num_classes=0, drop_path_rate=cfg.drop_path, pretrained=False,
      dynamic_img_size=True`` (the last one is left out for the few timm classes that do
      not take it; those accept only ``image_size`` inputs). ``image_size`` must be a
      multiple of ``cfg.patch_size``.
    * ``swin_tiny``, ``swin_small``, ``swin_base``, ``swin_large`` or a timm ``swin_*`` name:
      timm's Swin Transformer (:func:`_build_swin`, :class:`SwinBackboneMixin`).

    Raises ConfigError for unknown names.
    """
    arch = cfg.arch.strip()
    if arch.lower() in _RESNETS:
        return ResNetBackbone(arch.lower(), cifar_stem=resolve_cifar_stem(cfg, image_size))
    if arch.lower().startswith("vit"):
        if image_size % cfg.patch_size:
            raise ConfigError(
                f"image size {image_size} is not a multiple of model.patch_size {cfg.patch_size}"
            )
        return _build_vit(arch, cfg, image_size)
    if arch.lower().startswith("swin"):
        return _build_swin(arch, cfg, image_size)
    raise ConfigError(
        f"unknown backbone '{cfg.arch}'; choose one of: {', '.join(_RESNETS)}, "
        f"{', '.join(_VIT_ALIASES)}, a timm ViT name (vit_...) or a Swin ({', '.join(_SWIN_ALIASES)}, swin_...)"
    )


def param_count(module: nn.Module) -> int:
    """Number of parameters (for the studio's model summary)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "ResNetBackbone",
    "SwinBackboneMixin",
    "ViTBackbone",
    "ViTBackboneMixin",
    "build_backbone",
    "param_count",
    "resolve_cifar_stem",
]
