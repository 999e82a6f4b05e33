"""Backbones, heads and the contrastive losses (tiny sizes, CPU)."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torchvision
from torch import nn

from engine.components import MLPHead, ViTBackboneMixin, build_backbone, mlp, resolve_cifar_stem
from engine.config import ModelConfig
from engine.errors import ConfigError
from engine.losses import NTXentLoss, info_nce, nt_xent


# =================================================================== ResNet
@pytest.fixture(scope="module")
def r18_cifar() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(ModelConfig(arch="resnet18", cifar_stem=True), image_size=32)


@pytest.fixture(scope="module")
def r18_std() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(ModelConfig(arch="resnet18"), image_size=96)  # > 64 px: standard stem


@pytest.mark.parametrize("cifar_stem", [True, False])
def test_resnet18_shapes(cifar_stem: bool, r18_cifar: nn.Module, r18_std: nn.Module) -> None:
    bb = r18_cifar if cifar_stem else r18_std
    assert bb.out_dim == 512 and bb.arch == "resnet18"
    assert isinstance(bb.fc, nn.Identity)
    if cifar_stem:
        assert bb.conv1.kernel_size == (3, 3) and bb.conv1.stride == (1, 1) and bb.conv1.bias is None
        assert isinstance(bb.maxpool, nn.Identity)
    else:
        assert bb.conv1.kernel_size == (7, 7) and isinstance(bb.maxpool, nn.MaxPool2d)
    y = bb(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 512) and torch.isfinite(y).all()


def test_cifar_stem_default_follows_image_size() -> None:
    assert resolve_cifar_stem(ModelConfig(), 32) and resolve_cifar_stem(ModelConfig(), 64)
    assert not resolve_cifar_stem(ModelConfig(), 96)
    assert not resolve_cifar_stem(ModelConfig(cifar_stem=False), 32)
    assert resolve_cifar_stem(ModelConfig(cifar_stem=True), 224)


def test_resnet50_out_dim() -> None:
    bb = build_backbone(ModelConfig(arch="resnet50"), image_size=32)
    y = bb(torch.randn(2, 3, 16, 16))
    assert bb.out_dim == 2048 and y.shape == (2, 2048)


def test_resnet_channels_last_and_bf16_autocast(r18_cifar: nn.Module) -> None:
    bb = copy.deepcopy(r18_cifar).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bb(x)
    assert y.shape == (2, 512) and torch.isfinite(y.float()).all()


def test_resnet_state_dict_loads_into_torchvision_strict(r18_cifar: nn.Module, r18_std: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    # CIFAR stem: replace conv1 / maxpool in the plain model the same way
    ref = torchvision.models.resnet18(weights=None)
    ref.fc = nn.Identity()
    ref.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    ref.maxpool = nn.Identity()
    ref.load_state_dict(r18_cifar.state_dict(), strict=True)
    ref.eval(), r18_cifar.eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(x), r18_cifar(x))
    # standard stem: the plain model as it is
    ref = torchvision.models.resnet18(weights=None)
    ref.fc = nn.Identity()
    ref.load_state_dict(r18_std.state_dict(), strict=True)


def test_resnet_state_dict_loads_into_timm_strict(r18_std: nn.Module) -> None:
    ref = timm.create_model("resnet18", num_classes=0, pretrained=False).eval()
    ref.load_state_dict(r18_std.state_dict(), strict=True)
    r18_std.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), r18_std(x))


def test_unknown_arch_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        build_backbone(ModelConfig(arch="alexnet"), 32)
    with pytest.raises(ConfigError):
        build_backbone(ModelConfig(arch="vit_nonexistent_thing"), 32)
    with pytest.raises(ConfigError):  # 30 is not a multiple of the patch size 4
        build_backbone(ModelConfig(arch="vit_tiny", patch_size=4), 30)


# ====================================================================== ViT
@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(ModelConfig(arch="vit_tiny", patch_size=4), image_size=32).eval()


def test_vit_tiny_shapes(vit: nn.Module) -> None:
    assert isinstance(vit, ViTBackboneMixin)
    assert vit.out_dim == 192 and vit.patch_size == 4 and vit.arch == "vit_tiny"
    assert vit.grid(32, 32) == (8, 8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = vit(x)
        tok = vit.forward_tokens(x)
    assert f.shape == (2, 192)
    assert tok.shape == (2, 1 + 64, 192)
    torch.testing.assert_close(f, tok[:, 0])  # forward = CLS token after the final norm


def test_vit_other_input_size(vit: nn.Module) -> None:
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        tok = vit.forward_tokens(x)
        a = vit.last_attention(x)
    gh, gw = vit.grid(48, 40)
    assert (gh, gw) == (12, 10)
    assert tok.shape == (1, 1 + gh * gw, 192) and a.shape == (1, 3, gh * gw)


def test_vit_last_attention(vit: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = vit.last_attention(x)  # renormalised over patches
        raw = vit.last_attention(x, renormalise=False)  # softmax over cls + patches, cls dropped
    assert a.shape == (2, 3, 64) and raw.shape == (2, 3, 64)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3))
    assert (raw.sum(-1) < 1).all()
    torch.testing.assert_close(a, raw / raw.sum(-1, keepdim=True))

    # reference: explicit attention of the last block, from a manual forward
    blk = vit.blocks[-1]
    with torch.no_grad():
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for b in vit.blocks[:-1]:
            h = b(h)
        h = blk.norm1(h)
        B, N, _ = h.shape
        qkv = blk.attn.qkv(h).reshape(B, N, 3, 3, 64).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        full = (q @ k.transpose(-2, -1) * 64 ** -0.5).softmax(-1)  # [B, heads, N, N]
    torch.testing.assert_close(full.sum(-1), torch.ones(B, 3, N))  # rows over cls + patches sum to 1
    torch.testing.assert_close(raw, full[:, :, 0, 1:], rtol=1e-4, atol=1e-6)
    # the training path still uses timm's fused attention
    assert blk.attn.fused_attn == timm.layers.use_fused_attn()


def test_vit_state_dict_is_timms_and_deepcopy_works(vit: nn.Module) -> None:
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=0, pretrained=False)
    ref.load_state_dict(vit.state_dict(), strict=True)
    teacher = copy.deepcopy(vit)  # EMA teachers are deep copies
    assert isinstance(teacher, ViTBackboneMixin) and teacher.out_dim == 192


def test_vit_drop_path_and_gradients() -> None:
    bb = build_backbone(ModelConfig(arch="vit_tiny", patch_size=8, drop_path=0.1), image_size=16).train()
    assert bb.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    bb(torch.randn(2, 3, 16, 16)).sum().backward()
    assert bb.patch_embed.proj.weight.grad is not None


def test_vit_num_heads_setting() -> None:
    bb = build_backbone(ModelConfig(arch="vit_small", patch_size=8, num_heads=12), image_size=16)
    assert bb.blocks[0].attn.num_heads == 12 and bb.out_dim == 384  # MoCo v3's ViT-S
    assert build_backbone(ModelConfig(arch="vit_small", patch_size=8), image_size=16).blocks[0].attn.num_heads == 6
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="num_heads 7 does not divide"):
        build_backbone(ModelConfig(arch="vit_small", patch_size=8, num_heads=7), image_size=16)
    # the export names the heads: the weights alone load into a 6-head model just as well
    from engine.config import validate_config
    from engine.export import timm_spec

    cfg = validate_config({"method": "moco_v3", "model": {"arch": "vit_small", "patch_size": 8, "num_heads": 12}})
    spec = timm_spec(cfg, bb)
    assert spec["kwargs"]["num_heads"] == 12
    plain = timm.create_model(spec["model_name"], **spec["kwargs"])
    plain.load_state_dict(bb.state_dict(), strict=True)
    assert plain.blocks[0].attn.num_heads == 12


# ==================================================================== heads
def _kinds(m: nn.Module) -> list[str]:
    return [type(c).__name__ for c in m.children()]


def test_mlp_head_simclr_layout() -> None:
    h = MLPHead(512, 2048, 128)
    assert _kinds(h) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (h[0].in_features, h[0].out_features, h[3].out_features) == (512, 2048, 128)
    assert h[0].bias is None and h[3].bias is not None  # bias only where no BN follows
    assert h(torch.randn(4, 512)).shape == (4, 128)


def test_mlp_head_depth_width_and_output_bn() -> None:
    h = MLPHead(64, [32, 16], 8, last_bn=True)
    assert _kinds(h) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert [m.out_features for m in h if isinstance(m, nn.Linear)] == [32, 16, 8]
    assert h[-1].affine and h.dims == [64, 32, 16, 8]

    moco = MLPHead(64, 32, 8, n_layers=3, last_bn=True, last_bn_affine=False)
    assert [m.out_features for m in moco if isinstance(m, nn.Linear)] == [32, 32, 8]
    assert not moco[-1].affine and moco[-1].weight is None

    nobn = MLPHead(64, 32, 8, bn=False)
    assert _kinds(nobn) == ["Linear", "ReLU", "Linear"] and nobn[0].bias is not None
    assert MLPHead(64, 32, 8, bias=False)[-1].bias is None

    lin = MLPHead(64, 32, 8, n_layers=1)
    assert _kinds(lin) == ["Linear"]
    with pytest.raises(ValueError):
        MLPHead(64, [32, 16], 8, n_layers=2)


def test_mlp_head_token_input_and_helper() -> None:
    h = MLPHead(16, 32, 8)
    assert h(torch.randn(2, 5, 16)).shape == (2, 5, 8)
    m = mlp([16, 32, 8], last_bn=True)
    assert _kinds(m) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert _kinds(mlp([16, 8])) == ["Linear"]


# =================================================================== losses
def _ntxent_reference(z0: torch.Tensor, z1: torch.Tensor, t: float) -> float:
    """Explicit SimCLR eq. 1 in float64, one anchor at a time."""
    z = torch.cat([z0, z1]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z.shape[0]
    b = n // 2
    total = 0.0
    for i in range(n):
        j = i + b if i < b else i - b
        s = [float(z[i] @ z[k]) for k in range(n)]
        denom = sum(math.exp(s[k] / t) for k in range(n) if k != i)
        total += -math.log(math.exp(s[j] / t) / denom)
    return total / n


@pytest.mark.parametrize("t", [0.5, 0.1, 1.0])
def test_ntxent_matches_explicit_formula(t: float) -> None:
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    loss = NTXentLoss(t)(z0, z1)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(_ntxent_reference(z0, z1, t), rel=1e-5, abs=1e-5)
    assert nt_xent(z0, z1, t).item() == pytest.approx(loss.item(), rel=1e-6)


def test_ntxent_gradients_and_bf16() -> None:
    z0 = torch.randn(8, 16, requires_grad=True)
    z1 = torch.randn(8, 16, requires_grad=True)
    loss = NTXentLoss()(z0, z1)
    loss.backward()
    assert z0.grad is not None and z1.grad is not None
    assert torch.isfinite(z0.grad).all() and z0.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lb = NTXentLoss(0.1)(z0.bfloat16(), z1.bfloat16())
    assert lb.dtype == torch.float32 and torch.isfinite(lb)
    # perfectly aligned views with orthogonal negatives: near-zero loss at low temperature
    e = torch.eye(4)
    assert NTXentLoss(0.05)(e, e).item() < 1e-3


def test_info_nce() -> None:
    g = torch.Generator().manual_seed(2)
    q, k, neg = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(10, 8, generator=g)
    t = 0.2
    qn, kn, nn_ = (torch.nn.functional.normalize(v, dim=1) for v in (q, k, neg))
    # queue negatives: logits [B, 1 + K], target 0
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ nn_.T], 1) / t
    ref = -torch.log_softmax(logits, 1)[:, 0].mean()
    torch.testing.assert_close(info_nce(q, k, neg, t), ref)
    # per-query negatives [B, K, d] equal the shared queue when repeated
    torch.testing.assert_close(info_nce(q, k, neg.expand(4, 10, 8), t), ref)
    # in-batch negatives: logits q k^T, target i
    ref_b = torch.nn.functional.cross_entropy(qn @ kn.T / t, torch.arange(4))
    torch.testing.assert_close(info_nce(q, k, None, t), ref_b)
    qg = q.clone().requires_grad_()
    info_nce(qg, k, neg, t).backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()
