"""SimMIM (issue 5): mask token inside the encoder, SimMIM masks, one-layer pixel head, L1 on
masked pixels, ViT and Swin encoders, reconstruction probe, config, presets, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from engine.config import validate_config
from engine.errors import ConfigError
from engine.masking import simmim_mask
from engine.methods import create_method, get_method
from engine.presets import load_preset
from engine.probes import MASK_GREY
from helpers import with_
from test_byol import check_diagram
from test_cli import _tiny
from test_mae import MICRO, ONE_CROP, build, check_learning, images_u8


def test_mask_token_replaces_masked_embeddings_inside_the_encoder() -> None:
    m = build("simmim")
    vit = m.backbone
    assert m.mask_patch == 8 and m.grid == (8, 8)  # 32 px at 192 px -> 8 px at 32 px (2x2 patches)
    x = torch.randn(2, 3, 32, 32)
    mask = m.generate_mask(2, "cpu", generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    h = vit.blocks[0].register_forward_pre_hook(lambda _mod, args: seen.append(args[0].detach()))
    try:
        feat = m.forward_encoder(x, mask)
    finally:
        h.remove()
    assert feat.shape == (2, 64, 8, 8)
    tokens = seen[0]
    assert tokens.shape == (2, 1 + 64, 64)  # every position is encoded (CLS + 64 patches)
    pos = vit.pos_embed[0, 1:].detach()  # [64, D]
    emb = vit.patch_embed(x).reshape(2, 64, 64).detach()
    expected = torch.where(mask[..., None], m.mask_token.detach().expand(2, 64, -1), emb) + pos
    torch.testing.assert_close(tokens[:, 1:], expected)
    # the mask token learns; the loss reaches the patch embedding through the visible patches
    loss, x_rec, _ = m(x)
    assert x_rec.shape == x.shape
    loss.backward()
    assert m.mask_token.grad.abs().sum() > 0 and vit.patch_embed.proj.weight.grad.abs().sum() > 0


def test_one_layer_pixel_shuffle_head() -> None:
    m = build("simmim")
    conv, shuffle = m.decoder
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    assert conv.in_channels == 64 and conv.out_channels == 4 * 4 * 3
    assert isinstance(shuffle, torch.nn.PixelShuffle) and shuffle.upscale_factor == 4


def test_vit_layer_scale_as_simmims_vit_and_plain_timm() -> None:
    """SimMIM's ViT configs use LayerScale 0.1; the backbone stays a plain timm ViT built with
    init_values=0.1 (what ssl-export passes on); 0 switches it off; Swin has none."""
    import timm

    assert get_method("simmim").Params().layer_scale == 0.1
    m = build("simmim")
    for blk in m.backbone.blocks:
        assert torch.allclose(blk.ls1.gamma, torch.full_like(blk.ls1.gamma, 0.1))
        assert torch.allclose(blk.ls2.gamma, torch.full_like(blk.ls2.gamma, 0.1))
    vit = m.backbone
    plain = timm.create_model(vit.timm_name, pretrained=False, img_size=32, patch_size=vit.patch_size,
                              num_classes=0, init_values=vit.init_values)
    plain.load_state_dict(vit.state_dict(), strict=True)
    off = build("simmim", {"layer_scale": 0.0})
    assert isinstance(off.backbone.blocks[0].ls1, torch.nn.Identity)
    assert not any("gamma" in n for n in off.state_dict())


def test_block_mask_type_and_live_switch() -> None:
    m = build("simmim")
    assert m.p.mask_type == "random" and "mask_type" in m.live_params
    assert m.set_live("mask_type", "block") == "random"
    mask = m.generate_mask(6, "cpu", generator=torch.Generator().manual_seed(2))
    assert (mask.sum(1) == round(0.6 * 64)).all()  # model-patch count, not whole mask-patch groups
    x = torch.randn(2, 3, 32, 32)
    loss, x_rec, used = m(x, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(loss) and (used.sum(1) == round(0.6 * 64)).all()
    with pytest.raises(ValidationError):
        m.set_live("mask_type", "grid")


def test_masks_are_groups_of_mask_patches() -> None:
    m = build("simmim")
    mask = m.generate_mask(16, "cpu", generator=torch.Generator().manual_seed(1)).reshape(16, 8, 8)
    groups = mask.reshape(16, 4, 2, 4, 2)
    assert (groups == groups[:, :, :1, :, :1]).all()  # constant inside each 2x2 group
    assert (mask.reshape(16, -1).sum(1) == 4 * math.ceil(16 * 0.6)).all()  # 10 of 16 groups


def explicit_l1(imgs, x_rec, mask, p: int) -> float:
    n, c, h, w = imgs.shape
    gw = w // p
    total, pixels = 0.0, 0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                if mask[i, (y // p) * gw + x // p]:
                    total += float((imgs[i, :, y, x] - x_rec[i, :, y, x]).abs().sum())
                    pixels += 1
    return total / (pixels + 1e-5) / c


def test_l1_loss_formula_and_only_masked_pixels() -> None:
    m = build("simmim")
    g = torch.Generator().manual_seed(2)
    imgs, x_rec = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    mask = m.generate_mask(2, "cpu", generator=g)
    loss = m.forward_loss(imgs, x_rec, mask)
    assert loss.item() == pytest.approx(explicit_l1(imgs, x_rec, mask, 4), rel=1e-5)
    px = mask.reshape(2, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand(-1, 3, -1, -1)
    changed = x_rec.clone()
    changed[~px] += 50.0  # anything on visible pixels
    assert m.forward_loss(imgs, changed, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    assert m.forward_loss(imgs, imgs, mask).item() == pytest.approx(0.0, abs=1e-7)


def test_swin_encoder() -> None:
    m = build("simmim", **{"model.arch": "swin_tiny"})
    assert m.is_swin and m.patch_size == 4 and m.stride == 32 and m.grid == (8, 8)
    assert m.decoder[0].out_channels == 32 * 32 * 3 and m.decoder[1].upscale_factor == 32
    x = torch.randn(2, 3, 32, 32)
    mask = m.generate_mask(2, "cpu", generator=torch.Generator().manual_seed(3))
    seen = []
    h = m.backbone.layers[0].register_forward_pre_hook(lambda _mod, args: seen.append(args[0].detach()))
    try:
        loss, x_rec, _ = m(x)
        m.forward_encoder(x, mask)
    finally:
        h.remove()
    emb = m.backbone.patch_embed(x).detach()  # [2, 8, 8, C]
    mt = m.mask_token.detach().reshape(1, 1, 1, -1)
    torch.testing.assert_close(seen[-1], torch.where(mask.reshape(2, 8, 8, 1), mt.expand_as(emb), emb))
    assert x_rec.shape == x.shape and torch.isfinite(loss)
    loss.backward()
    assert m.mask_token.grad.abs().sum() > 0
    assert m.embed(x).shape == (2, 768)
    no_wd = [g for g in m.param_groups() if g.get("wd_scale") == 0.0]
    names = {id(q): n for n, q in m.named_parameters()}
    assert any("relative_position_bias_table" in names[id(q)] for q in no_wd[0]["params"])


def test_mask_token_has_no_weight_decay() -> None:
    m = build("simmim")
    groups = m.param_groups()
    no_wd = [g for g in groups if g.get("wd_scale") == 0.0]
    assert len(no_wd) == 1 and any(q is m.mask_token for q in no_wd[0]["params"])
    assert sum(len(g["params"]) for g in groups) == sum(1 for q in m.parameters() if q.requires_grad)


def test_probe_four_uint8_panels_and_pasted_visible() -> None:
    m = build("simmim").eval()
    out = m.probes(images_u8(3))
    rec = out["reconstruction"]
    assert list(rec["images"]) == ["original", "masked", "reconstruction", "pasted"]
    for a in rec["images"].values():
        assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert rec["meta"]["mask_ratio"] == 0.6 and rec["meta"]["mask_patch"] == 8
    orig, masked, pasted = (rec["images"][k] for k in ("original", "masked", "pasted"))
    g = torch.Generator().manual_seed(1234)  # the probe's fixed mask
    mask = simmim_mask(3, (8, 8), 8, 4, 0.6, generator=g).reshape(3, 8, 8).numpy()
    px = np.repeat(np.repeat(mask, 4, axis=1), 4, axis=2)
    assert (masked[px] == MASK_GREY).all()
    assert np.array_equal(pasted[~px], orig[~px]) and np.array_equal(masked[~px], orig[~px])
    assert not np.array_equal(pasted[px], orig[px])


def test_mask_preview_and_config() -> None:
    cfg = validate_config(with_(_tiny(), method="simmim", **{**MICRO, **ONE_CROP}))
    out = get_method("simmim").mask_preview(torch.full((2, 3, 32, 32), 9, dtype=torch.uint8), cfg)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert ((out == MASK_GREY).float().mean(dim=(1, 2, 3)) == 10 / 16).all()
    cls = get_method("simmim")
    assert cls.Params().mask_ratio == 0.6 and cls.family == "masked image modelling"
    assert "mask_ratio" in cls.live_params
    for name, field in cls.Params.model_fields.items():
        assert field.description, name
    check_diagram("simmim")
    assert {"data", "mask", "encoder", "head", "loss"} <= {b.id for b in cls.diagram().blocks}
    m = build("simmim")
    assert m.set_live("mask_ratio", 0.4) == 0.6
    assert m.generate_mask(1, "cpu").sum() == 4 * math.ceil(16 * 0.4)
    with pytest.raises(ValidationError):
        m.set_live("mask_ratio", 0.0)
    with pytest.raises(ConfigError):
        build("simmim", {"mask_patch": 6})  # not a multiple of the 4 px patches
    with pytest.raises(ConfigError):
        create_method(validate_config(with_(_tiny(), method="simmim")), 32)  # resnet18


@pytest.mark.parametrize("preset", ["simmim", "simmim_small"])
def test_presets_validate(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    assert cfg.method == "simmim" and cfg.params["mask_ratio"] == 0.6
    assert cfg.aug.global_crops.scale == (0.67, 1.0) and cfg.aug.jitter_p == 0.0
    assert cfg.optim.optimizer == "adamw" and cfg.optim.weight_decay == 0.05 and cfg.optim.clip_grad == 5.0
    if preset == "simmim":
        assert cfg.model.arch == "swin_base" and cfg.aug.global_crops.size == 192
        assert cfg.params["mask_patch"] == 32
        peak = cfg.optim.lr * cfg.train.batch_size / 256
        assert peak == pytest.approx(8e-4)  # the paper's 8e-4 at batch 2048


def test_training_learns_to_reconstruct(tmp_path) -> None:
    r = check_learning("simmim", {}, 100, tmp_path, **{"aug.global_crops.scale": [0.67, 1.0]})
    assert r["last"] < 0.85 * r["first"], r  # training loss (batch 32: noisy)
    assert r["trained"] < 0.7 * r["untrained"], r  # held-out masked pixels
    assert r["trained"] < 0.75 * r["zero"], r  # better than predicting the mean colour
