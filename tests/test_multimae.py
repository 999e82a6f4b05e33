"""MultiMAE (issue 5): joint crop, Dirichlet token budget, per-modality losses, probes, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from engine.config import validate_config
from engine.data.shapes import make_shapes
from engine.errors import ConfigError, DataError
from engine.methods import create_method, get_method
from engine.methods.base import Batch
from engine.methods.multimae import crop_thetas, cross_entropy_rows, joint_crop, masked_mean, standardize_depth
from engine.presets import load_preset
from helpers import with_
from test_beit import train_keep
from test_byol import check_diagram, check_run, final_eval
from test_cli import _tiny

SMALL = {"dec_dim": 64, "dec_heads": 4, "dec_depth": 1}
VIT = {"model.arch": "vit_tiny", "model.patch_size": 8, "aug.global_crops.count": 0}  # 4 x 4 patches per modality


def build(params: dict | None = None, **dotted):
    torch.manual_seed(0)
    cfg = validate_config(with_(_tiny(), method="multimae", params={**SMALL, **(params or {})}, **{**VIT, **dotted}))
    m = create_method(cfg, 32)
    m.setup(100, 8)
    return m


def shapes_batch(n: int = 8, size: int = 32, extras: bool = True) -> Batch:
    d = make_shapes(n, size, seed=2)
    return Batch(views=[], images=d.images, n_global=0, extras=dict(d.extras) if extras else {})


def first_block_lengths(m) -> list[int]:
    """Sequence lengths the encoder's first block sees, recorded by a forward pre-hook."""
    seen: list[int] = []
    m.backbone.blocks[0].register_forward_pre_hook(lambda _mod, args: seen.append(args[0].shape[1]))
    return seen


# ------------------------------------------------------------------ joint crop
def _blocks(n: int = 6, size: int = 64, cell: int = 8, seed: int = 0):
    """Piecewise-constant images: each 8x8 cell has a class c; rgb = palette[c], depth = 40 c, seg = c."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, 5, (n, size // cell, size // cell), generator=g)
    seg = cls.repeat_interleave(cell, 1).repeat_interleave(cell, 2)  # [n, H, W]
    palette = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=torch.float32)
    rgb = palette[seg].permute(0, 3, 1, 2) / 255.0  # [n, 3, H, W]
    depth = (seg[:, None].float() * 40.0) / 255.0  # [n, 1, H, W]
    return rgb, depth, seg, palette / 255.0


def _agreement(rgb, depth, seg, palette) -> tuple[float, float | None]:
    """Fraction of pixels where the class read off the rgb (nearest palette colour) / off the
    depth (None: not given) equals the seg label."""
    from_rgb = ((rgb.permute(0, 2, 3, 1)[..., None, :] - palette) ** 2).sum(-1).argmin(-1)  # [n, s, s]
    a_rgb = (from_rgb == seg).float().mean().item()
    if depth is None:
        return a_rgb, None
    from_depth = (depth[:, 0] * 255.0 / 40.0).round().long()
    return a_rgb, (from_depth == seg).float().mean().item()


def test_joint_crop_keeps_the_modalities_aligned() -> None:
    rgb, depth, seg, pal = _blocks()
    g = torch.Generator().manual_seed(1)
    theta = crop_thetas(6, 64, 64, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, "cpu", generator=g)
    assert (theta[:, 0, 0] < 0).any() and (theta[:, 0, 0] > 0).any()  # some flipped, some not
    r, d, s = joint_crop(theta, 32, rgb, depth, seg)
    assert r.shape == (6, 3, 32, 32) and d.shape == (6, 1, 32, 32) and s.shape == (6, 32, 32) and s.dtype == torch.long
    a_rgb, a_depth = _agreement(r, d, s, pal)
    assert a_rgb > 0.9 and a_depth > 0.9  # all but the pixels on cell borders (bilinear vs nearest)
    # control: segmentation cropped with other crops no longer matches
    other = crop_thetas(6, 64, 64, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, "cpu", generator=g)
    _, _, s2 = joint_crop(other, 32, rgb, depth, seg)
    assert _agreement(r, d, s2, pal)[0] < 0.7
    # identity: the whole image, not flipped, at its own size -> unchanged; flip -> mirrored
    eye = crop_thetas(6, 64, 64, (1.0, 1.0), (1.0, 1.0), 0.0, "cpu")
    r, d, s = joint_crop(eye, 64, rgb, depth, seg)
    torch.testing.assert_close(r, rgb)
    torch.testing.assert_close(d, depth)
    assert torch.equal(s, seg)
    flip = crop_thetas(6, 64, 64, (1.0, 1.0), (1.0, 1.0), 1.0, "cpu")
    r, _, s = joint_crop(flip, 64, rgb, depth, seg)
    torch.testing.assert_close(r, rgb.flip(-1))
    assert torch.equal(s, seg.flip(-1))


def test_training_step_crops_jointly() -> None:
    """The method's own pipeline: rgb and seg stay aligned after prepare() (seg = f(rgb) holds)."""
    m = build()
    rgb, depth, seg, pal = _blocks(n=4)  # 64 px images, cropped to 32 px
    images = (rgb * 255).round().to(torch.uint8)
    extras = {"depth": (depth * 255).round().to(torch.uint8), "seg": seg.to(torch.uint8)}
    torch.manual_seed(3)
    inputs, _ = m.prepare(images, extras)
    a = m.cfg.aug
    rgb01 = inputs["rgb"] * torch.tensor(a.std).view(1, 3, 1, 1) + torch.tensor(a.mean).view(1, 3, 1, 1)
    st = m.p.seg_stride  # the map is at 1/st resolution (4: the paper's): compare at its cells' centres
    assert inputs["seg"].shape == (4, 32 // st, 32 // st) and inputs["rgb"].shape == (4, 3, 32, 32)
    assert _agreement(rgb01[..., st // 2::st, st // 2::st], None, inputs["seg"], pal)[0] > 0.85


def test_segmentation_runs_at_a_quarter_of_the_resolution_as_the_paper() -> None:
    """The official stride_level 4: a 1/4-resolution class map, patches of patch_size / 4, and a
    decoder that predicts that map; seg_stride 1 gives the full-resolution variant."""
    m = build()  # 8 px patches at 32 px: 4 x 4 tokens, the map 8 x 8 in 2 x 2 patches
    assert m.p.seg_stride == 4 and m.seg_patch == 2 and m.seg_proj.kernel_size == (2, 2)
    seg = torch.randint(0, m.p.seg_classes, (2, 8, 8))
    assert m.seg_tokens(seg).shape == (2, 16, m.backbone.out_dim)
    assert m.decoders["seg"].out.out_features == 2 * 2 * m.p.seg_classes
    cross = m.predict_from_rgb(torch.randn(2, 3, 32, 32))
    assert cross["seg"].shape == (2, m.p.seg_classes, 8, 8) and cross["depth"].shape == (2, 1, 32, 32)
    full = build({"seg_stride": 1})
    assert full.seg_patch == 8 and full.decoders["seg"].out.out_features == 64 * full.p.seg_classes
    with pytest.raises(ConfigError, match="seg_stride 3 must divide the patch size 8"):
        build({"seg_stride": 3})
    # weights of a full-resolution run (the default before) say how to load them
    with pytest.raises(RuntimeError, match=r"params.seg_stride 1 .* set params.seg_stride=1"):
        m.load_state_dict(full.state_dict())
    full.load_state_dict(build({"seg_stride": 1}).state_dict())  # the same stride loads


def test_depth_standardisation() -> None:
    d = torch.rand(3, 1, 10, 10)
    out, mean, std = standardize_depth(d)
    for i in range(3):
        v = torch.sort(d[i].flatten()).values[10:90]  # the middle 80 of 100 values
        assert mean[i].item() == pytest.approx(v.mean().item(), rel=1e-5)
        assert std[i].item() == pytest.approx(math.sqrt(v.var().item() + 1e-6), rel=1e-5)
    torch.testing.assert_close(out, (d - mean) / std)


# ------------------------------------------------------------- token budget
def test_dirichlet_budget_is_what_the_encoder_sees() -> None:
    m = build()
    assert m.num_visible() == round(3 * 16 / 6) == 8  # 1/6 of all tokens by default (98 / 588 in the paper)
    lengths = first_block_lengths(m)
    batch = shapes_batch(16)
    m.training_step(batch, 0)
    assert lengths == [8 + 1]  # visible tokens + the global token
    masks = m.sample_masks(64, "cpu", generator=torch.Generator().manual_seed(0))
    visible = torch.stack([(~masks[k]).sum(1) for k in ("rgb", "depth", "seg")], 1)  # [64, 3]
    assert (visible.sum(1) == 8).all()  # the budget, exactly, per image
    assert len({tuple(r) for r in visible.tolist()}) > 5  # split differently from image to image
    assert (visible == 0).any()  # Dir(1) often leaves a modality out entirely
    m.set_live("num_visible", 12)
    m.training_step(batch, 1)
    assert lengths[-1] == 12 + 1


# ------------------------------------------------------------------ losses
def test_losses_match_explicit_formulas() -> None:
    m = build()
    p, C = 8, m.p.seg_classes
    sp = m.seg_patch  # the segmentation map is at 1/4 resolution: 8 x 8, patches of 2
    g = torch.Generator().manual_seed(4)
    B = 3
    rgb = torch.randn(B, 3, 32, 32, generator=g)
    depth = torch.randn(B, 1, 32, 32, generator=g)
    seg = torch.randint(0, C, (B, 4 * sp, 4 * sp), generator=g)
    preds = {"rgb": torch.randn(B, 16, p * p * 3, generator=g), "depth": torch.randn(B, 16, p * p, generator=g),
             "seg": torch.randn(B, 16, sp * sp * C, generator=g)}
    mask = torch.rand(B, 16, generator=g) < 0.5
    mask[2] = False  # an image with nothing masked in this modality does not count

    def patch(img, l, p=p):  # pixels of patch l: [C, p, p]
        r, c = divmod(l, 4)
        return img[:, r * p:(r + 1) * p, c * p:(c + 1) * p]

    def pred_patch(v, ch, p=p):  # a prediction row, laid out (p, p, C) -> [C, p, p]
        return v.reshape(p, p, ch).permute(2, 0, 1)

    def expected(fn) -> float:
        per_image = []
        for b in range(B):
            ls = [fn(b, l) for l in range(16) if mask[b, l]]
            if ls:
                per_image.append(sum(ls) / len(ls))
        return sum(per_image) / len(per_image)

    def rgb_term(b, l):
        t = patch(rgb[b], l)
        t = (t - t.mean()) / torch.sqrt(t.var() + 1e-6)  # norm-pix over the whole patch (all channels)
        return ((pred_patch(preds["rgb"][b, l], 3) - t) ** 2).mean()

    def depth_term(b, l):
        return (pred_patch(preds["depth"][b, l], 1) - patch(depth[b], l)).abs().mean()

    def seg_term(b, l):
        logits = pred_patch(preds["seg"][b, l], C, sp).reshape(C, -1).t()  # [sp sp, C]
        return F.cross_entropy(logits, patch(seg[b][None], l, sp).reshape(-1))

    for name, target, fn in (("rgb", rgb, rgb_term), ("depth", depth, depth_term), ("seg", seg, seg_term)):
        got = masked_mean(m.per_token_loss(name, preds[name], target), mask)
        assert got.item() == pytest.approx(expected(fn).item(), rel=1e-5), name
        # predictions at visible patches do not count
        changed = preds[name].clone()
        changed[~mask] = 50.0
        assert masked_mean(m.per_token_loss(name, changed, target), mask).item() == pytest.approx(got.item(), rel=1e-6)


def test_cpu_cross_entropy_equals_torchs_with_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(500, 15, generator=g) * 30).requires_grad_()  # large logits: needs the max shift
    labels = torch.randint(0, 15, (500,), generator=g)
    ours = cross_entropy_rows(logits, labels)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    ref = F.cross_entropy(logits, labels, reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("seg_classes", [15, 80])  # fewer / more classes than the 64 embedding channels
def test_segmentation_adapter_is_embedding_then_patch_projection(seg_classes: int) -> None:
    m = build({"seg_classes": seg_classes})
    seg = torch.randint(0, seg_classes, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    got = m.seg_tokens(seg)  # [2, 16, D]
    ref = m.seg_proj(m.seg_embed(seg).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # the adapter as written
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    params = (m.seg_embed.weight, m.seg_proj.weight, m.seg_proj.bias)
    for a, b in zip(torch.autograd.grad(got.pow(2).sum(), params), torch.autograd.grad(ref.pow(2).sum(), params)):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_step_loss_is_the_sum_of_the_task_losses() -> None:
    m = build()
    batch = shapes_batch(8)
    torch.manual_seed(7)
    out = m.training_step(batch, 0)
    assert set(out.scalars) == {"loss_rgb", "loss_depth", "loss_seg"}
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.scalars.values()), rel=1e-5)
    # the same crops and masks again, by hand
    torch.manual_seed(7)
    inputs, _ = m.prepare(batch.images, batch.extras)
    masks = m.sample_masks(8, "cpu")
    preds = m(inputs, masks, m.num_visible())
    for k in ("rgb", "depth", "seg"):
        ref = masked_mean(m.per_token_loss(k, preds[k], inputs[k]), masks[k])
        assert out.scalars[f"loss_{k}"].item() == pytest.approx(ref.item(), rel=1e-5), k
    out.loss.backward()
    for mod in (m.backbone.patch_embed.proj, m.depth_proj, m.seg_proj, m.decoders["seg"].out):
        assert mod.weight.grad is not None


def _uniform_to(w: torch.Tensor, bound: float) -> bool:
    """w looks drawn from U(-bound, bound): nothing beyond it, its largest values close to it."""
    top = float(w.detach().abs().max())
    return 0.95 * bound < top <= bound


def test_official_init() -> None:
    """multimae.py: Xavier-uniform Linear layers with Q, K, V (decoders: K, V) as separate
    matrices, bias 0, LayerNorm (1, 0), patch projections like Linear layers, decoder mask tokens 0."""
    m = build()
    D = m.backbone.out_dim
    qkv = m.backbone.blocks[0].attn.qkv.weight  # [3D, D]
    bound = math.sqrt(6 / (D + D))  # one D x D matrix; fused Xavier would give sqrt(6 / (4D))
    assert _uniform_to(qkv, bound)
    assert qkv.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    kv = m.decoders["rgb"].xattn.kv.weight  # [2d, d]
    d = kv.shape[1]
    assert _uniform_to(kv, math.sqrt(6 / (d + d)))
    fc1 = m.backbone.blocks[0].mlp.fc1.weight  # [4D, D]: plain Xavier
    assert _uniform_to(fc1, math.sqrt(6 / (5 * D)))
    assert all(float(mod.bias.detach().abs().max()) == 0 for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    conv = m.depth_proj.weight  # [D, 1, p, p] as a Linear of fan-in p * p
    fan = conv[0].numel()
    assert _uniform_to(conv, math.sqrt(6 / (D + fan)))
    assert float(m.decoders["rgb"].mask_token.detach().abs().max()) == 0


# ----------------------------------------------------------------- probes
def test_cross_modal_prediction_and_probes() -> None:
    m = build()
    lengths = first_block_lengths(m)
    x = torch.randn(2, 3, 32, 32)
    cross = m.predict_from_rgb(x)
    assert cross["depth"].shape == (2, 1, 32, 32) and cross["seg"].shape == (2, m.p.seg_classes, 8, 8)
    assert lengths == [16 + 1]  # all 16 RGB tokens, no depth / seg tokens, + global
    m.training_step(shapes_batch(10), 0)  # the probes' images come from the first batch
    m.eval()
    probes = m.probes(make_shapes(4, 32, seed=0).images)
    assert set(probes) == {"reconstruction", "reconstruction_depth", "reconstruction_seg", "cross_modal"}
    for name in ("reconstruction", "reconstruction_depth", "reconstruction_seg"):
        panels = probes[name]["images"]
        assert list(panels) == ["original", "masked", "reconstruction", "pasted"], name
        assert all(a.shape == (8, 32, 32, 3) and a.dtype.name == "uint8" for a in panels.values()), name
    assert set(probes["cross_modal"]["images"]) == {"original", "depth", "depth_prediction", "seg", "seg_prediction"}
    assert all(a.shape == (8, 32, 32, 3) for a in probes["cross_modal"]["images"].values())
    assert sum(probes["reconstruction"]["meta"]["visible_per_modality"].values()) == pytest.approx(8)
    assert get_method("multimae").mask_preview(make_shapes(3, 32).images, m.cfg).shape == (3, 3, 32, 32)


def test_embed_is_the_encoder_on_rgb_alone() -> None:
    m = build().eval()
    x = torch.randn(3, 3, 32, 32)
    lengths = first_block_lengths(m)
    e = m.embed(x)
    assert e.shape == (3, m.backbone.out_dim) and lengths == [17]
    # the backbone carries the same sin-cos positions, so the exported ViT computes the same features:
    # its CLS output (timm's own forward) is the global token
    torch.testing.assert_close(e, m.backbone.forward_tokens(x)[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e, m.backbone(x), rtol=1e-4, atol=1e-5)
    m.p.embed_pool = "mean"
    torch.testing.assert_close(m.embed(x), m.backbone.forward_tokens(x)[:, 1:].mean(1), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ data and config
def test_rgb_only_and_missing_modalities(tmp_path) -> None:
    folder_like = shapes_batch(8, extras=False)  # an image folder: no depth, no seg
    with pytest.raises(DataError, match=r"params.modalities=\[rgb\]"):
        build().training_step(folder_like, 0)
    # known from the config alone, so refused before any data is read (the studio disables Start)
    plain = tmp_path / "imgs"
    plain.mkdir()
    with pytest.raises(ConfigError, match=r"which data.source does not have.*params.modalities=\[rgb\]"):
        build(**{"data.source": str(plain)})
    build({"modalities": ["rgb"]}, **{"data.source": str(plain)})
    build(**{"data.source": str(tmp_path / "gone")})  # a finished run's folder deleted: it still builds (export)
    m = build({"modalities": ["rgb"]})
    assert not hasattr(m, "depth_proj") and list(m.decoders) == ["rgb"]
    out = m.training_step(folder_like, 0)
    assert set(out.scalars) == {"loss_rgb"} and math.isfinite(out.loss.item())
    m.eval()
    assert set(m.probes(folder_like.images)) == {"reconstruction"}
    with pytest.raises(ValidationError):
        get_method("multimae").Params(modalities=["depth", "seg"])
    bad = shapes_batch(8)
    bad.extras["seg"] = bad.extras["seg"].clone()
    bad.extras["seg"][0, 0, 0] = 40
    with pytest.raises(DataError, match="seg_classes"):
        build().training_step(bad, 0)


def test_defaults_live_params_and_diagram() -> None:
    cls = get_method("multimae")
    p = cls.Params()
    assert (p.modalities, p.num_visible, p.alpha, p.dec_dim, p.dec_depth, p.dec_heads) == (
        ["rgb", "depth", "seg"], None, 1.0, 256, 2, 8)
    assert p.norm_pix_loss and p.standardize_depth and p.seg_embed_dim == 64
    assert cls.live_params == ("num_visible", "alpha")
    with pytest.raises(ValidationError):
        cls.Params(dec_dim=100, dec_heads=8)
    for name, field in cls.Params.model_fields.items():
        assert field.description, name
    check_diagram("multimae")


@pytest.mark.parametrize("preset", ["multimae", "multimae_small"])
def test_presets_validate(preset: str) -> None:
    cfg = validate_config(load_preset(preset))
    assert cfg.method == "multimae" and cfg.params["modalities"] == ["rgb", "depth", "seg"]
    assert cfg.aug.global_crops.count == 0 and tuple(cfg.aug.global_crops.scale) == (0.2, 1.0)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.05
    if preset == "multimae":  # the paper: 98 of 3 x 196 tokens at 224 px
        assert cfg.params["num_visible"] == 98 and (cfg.model.arch, cfg.model.patch_size) == ("vit_base", 16)
        assert (cfg.train.batch_size, cfg.train.epochs, cfg.params["dec_dim"]) == (2048, 1600, 256)


# ---------------------------------------------------------------- training
def test_trains_through_the_trainer(tmp_path) -> None:
    untrained, seen, seconds, _ = train_keep("multimae", SMALL, steps=30, tmp=tmp_path, lr=1e-3,
                                             **{**VIT, "optim.warmup_epochs": 0})
    steps = check_run(seen)
    assert {"loss_rgb", "loss_depth", "loss_seg"} <= set(steps[-1].scalars)
    assert steps[-1].loss < steps[0].loss
    assert steps[-1].scalars["loss_seg"] < steps[0].scalars["loss_seg"]
    knn = final_eval(seen).knn_top1
    print(f"MultiMAE 30 steps ({seconds:.0f} s): loss {steps[0].loss:.3f} -> {steps[-1].loss:.3f} "
          f"(rgb {steps[0].scalars['loss_rgb']:.3f} -> {steps[-1].scalars['loss_rgb']:.3f}, depth "
          f"{steps[0].scalars['loss_depth']:.3f} -> {steps[-1].scalars['loss_depth']:.3f}, seg "
          f"{steps[0].scalars['loss_seg']:.3f} -> {steps[-1].scalars['loss_seg']:.3f}), "
          f"kNN untrained {untrained:.3f} -> {knn:.3f}")


# each modality's decoder queries ITS OWN grid (own visible tokens + mask
# tokens) and cross-attends to the visible tokens of all modalities + the global token, nothing else
def test_multimae_decoder_queries_and_context() -> None:

    m = build().eval()
    B, L, V = 2, m.num_patches, m.num_visible()
    g = torch.Generator().manual_seed(3)
    inputs = {"rgb": torch.randn(B, 3, 32, 32, generator=g), "depth": torch.randn(B, 1, 32, 32, generator=g),
              "seg": torch.randint(0, m.p.seg_classes, (B, 8, 8), generator=g)}  # (1/4 resolution)
    masks = m.sample_masks(B, "cpu", generator=g)
    seen = {}
    for name, dec in m.decoders.items():
        dec.xattn.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args))
    with torch.no_grad():
        m(inputs, masks, V)
        tokens = {k: m.tokens(k, inputs[k]) for k in inputs}
        enc, ids_keep, present = m.encode(tokens, masks, V)
        for own, dec in m.decoders.items():
            c = dec.proj_context(enc)
            glob, vis = c[:, :1], c[:, 1:]
            full = torch.empty(B, len(present) * L, c.shape[-1])
            for b in range(B):
                for i, mod in enumerate(present):
                    for l in range(L):
                        emb = dec.task_emb[dec.modalities.index(mod)] + dec.pos[l]
                        if masks[mod][b, l]:
                            full[b, i * L + l] = dec.mask_token + emb
                        else:
                            k = int((ids_keep[b] == i * L + l).nonzero())
                            full[b, i * L + l] = vis[b, k] + emb
            j = present.index(own)
            q = full[:, j * L:(j + 1) * L]
            ctx = torch.cat([torch.stack([full[b, ids_keep[b]] for b in range(B)]), glob], dim=1)  # [B, V + 1, d]
            x_seen, ctx_seen = seen[own]
            assert ctx_seen.shape == (B, V + 1, c.shape[-1]), own
            torch.testing.assert_close(x_seen, dec.query_norm(q), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ctx_seen, dec.context_norm(ctx), rtol=1e-4, atol=1e-5)


def test_trains_on_a_folder_with_depth_and_seg_trees(tmp_path) -> None:
    """A folder with rgb/, depth/ and seg/ (issue 5 pt 5) feeds all three modalities."""
    from engine import events as ev
    from engine.trainer import Trainer
    from test_data import _modal_folder

    root = _modal_folder(tmp_path / "d", n=8, size=(40, 32))
    cfg = validate_config(with_(_tiny(), method="multimae", params={**SMALL, "seg_classes": 3}, **{
        **VIT, "data.source": str(root), "data.image_size": 32, "data.workers": 1, "train.steps": 3,
        "train.batch_size": 8, "train.log_every": 1, "optim.warmup_epochs": 0}))
    seen: list = []
    Trainer(cfg, tmp_path / "run", listeners=(seen.append,)).run()
    steps = [e for e in seen if isinstance(e, ev.StepMetrics)]
    assert seen[-1].status == "completed" and {"loss_rgb", "loss_depth", "loss_seg"} <= set(steps[-1].scalars)
    # the data folder deleted afterwards: the run still exports its backbone
    import shutil

    from engine.cli import export

    shutil.rmtree(root)
    assert export.main(["--run", str(tmp_path / "run"), "--format", "timm", "--out", str(tmp_path / "vit.pth")]) == 0
    assert (tmp_path / "vit.pth").is_file()
