"""MAE (issue 5): visible-only encoder, masked-only norm-pix MSE, decoder, reconstruction probe,
config, presets and a short real training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from engine.augment import resize_normalize
from engine.checkpoint import load_checkpoint
from engine.config import load_yaml, validate_config
from engine.data import load_dataset
from engine.errors import ConfigError
from engine.masking import random_masking
from engine.methods import create_method, get_method
from engine.methods.base import Batch
from engine.presets import load_preset
from engine.probes import (
    MASK_GREY,
    norm_pix_target,
    patchify,
    reconstruction_panels,
    unnormalize_norm_pix,
    unpatchify,
)
from helpers import metrics, with_  # also registers timm's vit_mim_micro
from test_byol import check_diagram, check_run, final_eval, train_vs_untrained
from test_cli import _tiny


# shared with test_simmim.py
MICRO = {"model.arch": "vit_mim_micro", "model.patch_size": 4}
ONE_CROP = {"aug.global_crops.count": 1, "aug.jitter_p": 0.0, "aug.gray_p": 0.0}
SMALL_DEC = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 4}


def build(method: str, params: dict | None = None, **dotted):
    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method=method, params=params or {}, **{**MICRO, **ONE_CROP, **dotted}))
    m = create_method(cfg, 32)
    m.setup(100, 8)
    return m


def images_u8(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("kind", ["block", "grid"])
def test_mask_types_feed_the_encoder_the_visible_patches_only(kind: str) -> None:
    m = build("mae", SMALL_DEC)
    assert m.Params().mask_type == "random" and "mask_type" in m.live_params
    assert m.set_live("mask_type", kind) == "random"
    seen: list[torch.Tensor] = []
    handle = m.backbone.blocks[0].register_forward_pre_hook(lambda _mod, args: seen.append(args[0].detach()))
    try:
        x = torch.randn(3, 3, 32, 32)
        loss, pred, mask = m(x, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert (mask.sum(1) == 48).all()  # 3/4 of 64 either way
    assert seen[-1].shape == (3, 1 + 16, 64)
    if kind == "grid":
        assert torch.equal(mask[0], ~((torch.arange(8)[:, None] % 2 == 0) & (torch.arange(8) % 2 == 0)).reshape(64))
    assert torch.isfinite(loss) and pred.shape == (3, 64, 4 * 4 * 3)
    with pytest.raises(ValidationError):
        m.set_live("mask_type", "square")
    cfg = validate_config(with_(_tiny(), method="mae", params={**SMALL_DEC, "mask_type": kind}, **{**MICRO, **ONE_CROP}))
    prev = get_method("mae").mask_preview(images_u8(2), cfg)
    assert ((prev == MASK_GREY).all(dim=1).float().mean(dim=(1, 2)) >= 0.7).all()


def test_live_mask_type_change_in_a_run(tmp_path, monkeypatch) -> None:
    """ssl-train / the studio switch the mask type between steps; the change is logged."""
    from engine import events as ev
    from engine.methods.mae import MAE
    from engine.trainer import Trainer

    kinds: list[str] = []
    real = MAE.masking

    def spy(self, n, device, generator=None):
        kinds.append(self.p.mask_type)
        return real(self, n, device, generator)

    monkeypatch.setattr(MAE, "masking", spy)
    cfg = validate_config(with_(_tiny(), method="mae", params=SMALL_DEC, **{
        **MICRO, **ONE_CROP, "train.steps": 5, "train.log_every": 1, "train.eval_every": 0}))
    seen: list = []
    tr = Trainer(cfg, tmp_path / "r", listeners=(seen.append,))

    def on(e):
        if isinstance(e, ev.StepMetrics) and e.step == 2:
            tr.set_param("params.mask_type", "block")

    tr.subscribe(on)
    assert tr.run().status == "completed"
    assert kinds[:2] == ["random", "random"] and kinds[-1] == "block"
    changes = [e for e in seen if isinstance(e, ev.LiveChange)]
    assert [(c.key, c.new) for c in changes] == [("params.mask_type", "block")]
    assert any(r["event"] == "live_change" and r.get("key") == "params.mask_type" for r in metrics(tmp_path / "r"))


# ---------------------------------------------------------------------- encoder
def test_encoder_sees_only_visible_tokens() -> None:
    m = build("mae", SMALL_DEC)
    vit = m.backbone
    seen: list[torch.Tensor] = []
    handle = vit.blocks[0].register_forward_pre_hook(lambda _mod, args: seen.append(args[0].detach()))
    try:
        x = torch.randn(3, 3, 32, 32)
        m.training_step(Batch([x], images_u8(3), 1), 0)
        L = (32 // 4) ** 2
        assert seen[-1].shape == (3, 1 + int(L * 0.25), 64)  # CLS + 16 visible of 64 patches
        m.set_live("mask_ratio", 0.5)
        m.training_step(Batch([x], images_u8(3), 1), 1)
        assert seen[-1].shape == (3, 1 + 32, 64)
        # exactly the kept patches' embeddings + positions, no mask token, CLS first
        ids_keep, _, _ = random_masking(3, L, 0.75, generator=torch.Generator().manual_seed(5))
        m.forward_encoder(x, ids_keep)
        full = vit._pos_embed(vit.patch_embed(x))  # [3, 1 + L, D]
        torch.testing.assert_close(seen[-1][:, 1:], full[:, 1:].gather(1, ids_keep[..., None].expand(-1, -1, 64)))
        torch.testing.assert_close(seen[-1][:, 0], full[:, 0])
    finally:
        handle.remove()


def test_sincos_positions_are_fixed_and_mask_token_learns() -> None:
    m = build("mae", SMALL_DEC)
    vit = m.backbone
    assert not vit.pos_embed.requires_grad
    assert torch.equal(vit.pos_embed[0, 0], torch.zeros(64))  # CLS row zero, as in MAE
    assert m.decoder_pos_embed.shape == (1, 65, 32) and not m.decoder_pos_embed.requires_grad
    out = m.training_step(Batch([torch.randn(4, 3, 32, 32)], images_u8(4), 1), 0)
    out.loss.backward()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    assert vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert vit.pos_embed.grad is None


def test_decoder_puts_mask_tokens_on_removed_positions() -> None:
    m = build("mae", SMALL_DEC)
    n, L = 2, 64
    ids_keep, mask, ids_restore = random_masking(n, L, 0.75, generator=torch.Generator().manual_seed(1))
    latent = m.forward_encoder(torch.randn(n, 3, 32, 32), ids_keep)
    seen = []
    h = m.decoder_blocks[0].register_forward_pre_hook(lambda _mod, args: seen.append(args[0].detach()))
    try:
        pred = m.forward_decoder(latent, ids_restore)
    finally:
        h.remove()
    assert pred.shape == (n, L, 4 * 4 * 3)
    x = seen[0][:, 1:] - m.decoder_pos_embed[:, 1:]  # [n, L, d] before the positions
    tok = m.mask_token[0, 0].detach()
    assert torch.allclose(x[mask], tok.expand(int(mask.sum()), -1), atol=1e-6)  # removed: the mask token
    vis = m.decoder_embed(latent[:, 1:]).detach()  # kept tokens in ids_keep order
    for i in range(n):
        torch.testing.assert_close(x[i, ids_keep[i]], vis[i])


# ------------------------------------------------------------------------- loss
def explicit_mae_loss(imgs, pred, mask, p: int, norm_pix: bool) -> float:
    """Per patch: pixels in (row, col, channel) order; unbiased variance; MSE averaged over masked."""
    n, _, h, w = imgs.shape
    gw = w // p
    total, count = 0.0, 0
    for i in range(n):
        for l in range(mask.shape[1]):
            if not mask[i, l]:
                continue
            r, c = divmod(l, gw)
            t = imgs[i, :, r * p:(r + 1) * p, c * p:(c + 1) * p].permute(1, 2, 0).reshape(-1).double()
            if norm_pix:
                mu = t.sum() / t.numel()
                var = ((t - mu) ** 2).sum() / (t.numel() - 1)
                t = (t - mu) / torch.sqrt(var + 1e-6)
            total += float(((pred[i, l].double() - t) ** 2).mean())
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_matches_explicit_formula(norm_pix: bool) -> None:
    m = build("mae", {**SMALL_DEC, "norm_pix_loss": norm_pix})
    g = torch.Generator().manual_seed(3)
    imgs, pred = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 64, 48, generator=g)
    _, mask, _ = random_masking(2, 64, 0.75, generator=g)
    expected = explicit_mae_loss(imgs, pred, mask, 4, norm_pix)
    assert m.forward_loss(imgs, pred, mask).item() == pytest.approx(expected, rel=1e-5)


def test_loss_counts_only_masked_patches() -> None:
    m = build("mae", SMALL_DEC)
    g = torch.Generator().manual_seed(4)
    imgs, pred = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 64, 48, generator=g)
    _, mask, _ = random_masking(2, 64, 0.75, generator=g)
    base = m.forward_loss(imgs, pred, mask)
    changed = pred.clone()
    changed[~mask] += 100.0  # anything on visible patches
    assert m.forward_loss(imgs, changed, mask).item() == pytest.approx(base.item(), rel=1e-6)
    changed = pred.clone()
    changed[mask] += 1.0
    assert m.forward_loss(imgs, changed, mask).item() > base.item() + 0.5
    # a perfect prediction of the normalised patches gives zero loss
    perfect = norm_pix_target(patchify(imgs, 4))
    assert m.forward_loss(imgs, perfect, mask).item() == pytest.approx(0.0, abs=1e-8)


def test_patchify_layout_and_inverse() -> None:
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    pt = patchify(x, 4)
    assert pt.shape == (2, 6, 48)
    # patch 4 = row 1, column 1; its first values are pixel (4, 4) in channels 0, 1, 2
    assert pt[0, 4, :3].tolist() == [x[0, 0, 4, 4].item(), x[0, 1, 4, 4].item(), x[0, 2, 4, 4].item()]
    assert torch.equal(unpatchify(pt, 4, (2, 3)), x)
    t = torch.randn(2, 6, 48)
    torch.testing.assert_close(unnormalize_norm_pix(norm_pix_target(t), t), t, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------ probe
def test_probe_four_uint8_panels_and_pasted_visible() -> None:
    m = build("mae", SMALL_DEC).eval()
    imgs = images_u8(3)
    out = m.probes(imgs)
    rec = out["reconstruction"]
    assert set(rec["images"]) == {"original", "masked", "reconstruction", "pasted"}
    for a in rec["images"].values():
        assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert rec["meta"]["mask_ratio"] == 0.75
    # the probe's mask: the same every time (comparable snapshots)
    again = m.probes(imgs)["reconstruction"]["images"]
    assert np.array_equal(again["masked"], rec["images"]["masked"])
    orig, masked, pasted = (rec["images"][k] for k in ("original", "masked", "pasted"))
    grey = (masked == MASK_GREY).all(axis=-1)  # [N, H, W] masked pixels
    cells = grey.reshape(3, 8, 4, 8, 4).all(axis=(2, 4))  # whole 4x4 patches
    assert (cells.sum(axis=(1, 2)) >= 48).all()  # 48 removed patches per image (random pixels may be grey too)
    vis = ~np.repeat(np.repeat(cells, 4, axis=1), 4, axis=2)
    assert np.array_equal(pasted[vis], orig[vis])  # visible patches pasted back exactly
    assert np.array_equal(masked[vis], orig[vis])
    assert "attention" in out


def test_reconstruction_panels_unnormalise_norm_pix() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    u8 = images_u8(2)
    x = (u8.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    _, mask, _ = random_masking(2, 64, 0.75, generator=torch.Generator().manual_seed(0))
    perfect = norm_pix_target(patchify(x, 4))  # what a perfect norm-pix model predicts
    panels = reconstruction_panels(x, perfect, mask, 4, mean, std, norm_pix=True)
    ref = u8.permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(panels["original"].astype(int) - ref).max() <= 1
    assert np.abs(panels["reconstruction"].astype(int) - ref).max() <= 1  # back in pixel space
    assert np.abs(panels["pasted"].astype(int) - ref).max() <= 1
    # a prediction in plain normalised-pixel space (norm_pix off), given as an image
    panels = reconstruction_panels(x, x, mask, 4, mean, std, norm_pix=False)
    assert np.abs(panels["reconstruction"].astype(int) - ref).max() <= 1


def test_mask_preview_for_the_data_page() -> None:
    cfg = validate_config(with_(_tiny(), method="mae", params=SMALL_DEC, **{**MICRO, **ONE_CROP}))
    imgs = torch.full((2, 3, 32, 32), 7, dtype=torch.uint8)
    out = get_method("mae").mask_preview(imgs, cfg)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert ((out == MASK_GREY).float().mean(dim=(1, 2, 3)) == 0.75).all()
    # the studio's data page shows it
    from studio.data_page import masking_preview

    res = masking_preview(cfg, imgs, 32)
    assert len(res["masked"]) == 2 and res["masked"][0].shape == (3, 32, 32) and not res.get("mask_note")


# ---------------------------------------------------------------- embed, config
def test_embed_is_the_cls_token_of_the_full_image() -> None:
    m = build("mae", SMALL_DEC).eval()
    x = torch.randn(3, 3, 32, 32)
    e = m.embed(x)
    assert e.shape == (3, 64)
    torch.testing.assert_close(e, m.backbone.forward_tokens(x)[:, 0])
    torch.testing.assert_close(e, m.backbone(x))
    m.p.embed_pool = "mean"
    torch.testing.assert_close(m.embed(x), m.backbone.forward_tokens(x)[:, 1:].mean(1))


def test_paper_defaults_params_and_diagram() -> None:
    cls = get_method("mae")
    p = cls.Params()
    assert (p.mask_ratio, p.decoder_dim, p.decoder_depth, p.decoder_heads, p.norm_pix_loss) == (0.75, 512, 8, 16, True)
    assert cls.family == "masked image modelling" and "mask_ratio" in cls.live_params
    for name, field in cls.Params.model_fields.items():
        assert field.description, name
    check_diagram("mae")
    kinds = {b.id: b.kind for b in cls.diagram().blocks}
    assert {"data", "mask", "encoder", "decoder", "loss"} <= set(kinds)
    m = build("mae", SMALL_DEC)
    with pytest.raises(ValidationError):
        m.set_live("mask_ratio", 1.0)
    with pytest.raises(ConfigError):
        validate_config(with_(_tiny(), method="mae", params={"decoder_dim": 30, "decoder_heads": 4}))
    with pytest.raises(ConfigError):
        create_method(validate_config(with_(_tiny(), method="mae")), 32)  # resnet18: no ViT


@pytest.mark.parametrize("preset", ["mae", "mae_small"])
def test_presets_validate(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    assert cfg.method == "mae" and cfg.aug.global_crops.count == 1
    assert cfg.optim.optimizer == "adamw" and tuple(cfg.optim.betas) == (0.9, 0.95)
    assert cfg.aug.jitter_p == 0.0 and cfg.aug.gray_p == 0.0 and cfg.aug.blur_p == 0.0
    assert cfg.aug.global_crops.scale == (0.2, 1.0) and cfg.optim.weight_decay == 0.05
    if preset == "mae":
        assert (cfg.model.arch, cfg.model.patch_size, cfg.aug.global_crops.size) == ("vit_base", 16, 224)
        assert (cfg.train.batch_size, cfg.optim.lr, cfg.optim.warmup_epochs) == (4096, 1.5e-4, 40)


# --------------------------------------------------------------------- training
@torch.no_grad()
def heldout_losses(run_dir, n: int = 64) -> dict[str, float]:
    """Masked-reconstruction loss on held-out (test) images with one fixed mask, for the
    untrained network (the trainer's seed: the same initial weights), the trained one (the
    run's checkpoint) and an all-zero prediction (norm-pix: each patch's mean colour;
    plain pixels: the normalisation mean)."""
    cfg = validate_config(load_yaml(run_dir / "config.yaml"))
    test = load_dataset(cfg.data).test
    x = resize_normalize(test.images[:n], 32, cfg.aug.mean, cfg.aug.std)
    torch.manual_seed(cfg.train.seed)
    untrained = create_method(cfg, 32).eval()
    trained = create_method(cfg, 32).eval()
    trained.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
    out = {}
    for name, m in (("untrained", untrained), ("trained", trained)):
        loss, pred, mask = m(x, generator=torch.Generator().manual_seed(0))
        out[name] = loss.item()
    out["zero"] = trained.forward_loss(x, torch.zeros_like(pred), mask).item()
    return out


def check_learning(method: str, params: dict, steps: int, tmp_path, **dotted) -> dict[str, float]:
    """Train through the real Trainer (one thread) and check the run and what it learned.

    Here (4 px patches, 100 steps) held-out reconstruction is asserted; the kNN gain over the
    untrained encoder is asserted by tests/test_learning.py's MAE and MultiMAE rows."""
    untrained_knn, seen, _secs = train_vs_untrained(method, params, steps=steps, lr=2e-3, tmp=tmp_path,
                                                    **{**MICRO, **ONE_CROP, **dotted})
    steps_m = check_run(seen)
    first = float(np.mean([e.loss for e in steps_m[:2]]))
    last = float(np.mean([e.loss for e in steps_m[-2:]]))
    knn = final_eval(seen).knn_top1
    assert untrained_knn is not None and knn is not None and 0.0 <= knn <= 1.0
    losses = heldout_losses(tmp_path / method)
    losses.update(first=first, last=last, knn_untrained=untrained_knn, knn=knn)
    print(method, {k: round(v, 4) for k, v in losses.items()})
    return losses


def test_training_learns_to_reconstruct(tmp_path) -> None:
    r = check_learning("mae", {**SMALL_DEC, "decoder_dim": 64}, 100, tmp_path,
                       **{"aug.global_crops.scale": [0.2, 1.0], "optim.betas": [0.9, 0.95]})
    assert r["last"] < 0.5 * r["first"], r  # training loss
    assert r["trained"] < 0.5 * r["untrained"], r  # held-out masked patches
    assert r["trained"] < 0.6 * r["zero"], r  # better than each patch's mean colour
