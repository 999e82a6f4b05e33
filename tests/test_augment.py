"""Tests of engine/augment.py: batched per-sample augmentation.

CPU tensors by default; ``AUG_TEST_DEVICE=cuda`` runs the augmentation on a GPU
(references are still computed on the CPU).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from engine.augment import GPUAugment, blur_kernel_size, denormalize, resize_normalize, to_float
from engine.config import AugConfig, CropConfig

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
ID = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
OFF = dict(hflip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)


DEV = torch.device(os.environ.get("AUG_TEST_DEVICE", "cpu"))


def gen(seed: int = 0) -> torch.Generator:
    """A seeded generator on the device under test."""
    return torch.Generator(device=DEV).manual_seed(seed)


def _cpu(t):
    return t.cpu() if isinstance(t, torch.Tensor) else t


def view(a: GPUAugment, x: torch.Tensor, *args, **kw):
    """a.view on the device under test; results back on the CPU."""
    r = a.view(x.to(DEV), *args, **kw)
    if kw.get("return_params"):
        return r[0].cpu(), {k: _cpu(v) for k, v in r[1].items()}
    return r.cpu()


def call(a: GPUAugment, x: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    return [v.cpu() for v in a(x.to(DEV), generator=generator)]


def images(b: int = 8, h: int = 40, w: int | None = None, seed: int = 0) -> torch.Tensor:
    # x: [B, 3, H, W] uint8 (CPU)
    return torch.randint(0, 256, (b, 3, h, w or h), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def smooth_images(b: int = 8, h: int = 32, seed: int = 0) -> torch.Tensor:
    # low-frequency random images (so crops/blur differences are meaningful)
    lo = torch.rand(b, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    x = F.interpolate(lo, size=(h, h), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


# ----------------------------------------------------------------- shapes
def test_multicrop_shapes_dtypes_count():
    aug = AugConfig(
        global_crops=CropConfig(count=2, size=32),
        local_crops=CropConfig(count=3, size=16, scale=(0.05, 0.4)),
        blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2],
    )
    a = GPUAugment(aug, image_size=40)
    assert (a.n_global, a.n_local) == (2, 3)
    views = call(a, images(6, 40), generator=gen())
    assert len(views) == 5
    assert [tuple(v.shape) for v in views] == [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    # per-view probabilities: list per global view, first value for locals
    specs = a.view_specs()
    assert [s["blur_p"] for s in specs] == [1.0, 0.1, 1.0, 1.0, 1.0]
    assert [s["solarize_p"] for s in specs] == [0.0, 0.2, 0.0, 0.0, 0.0]
    # two global views of the same images differ
    assert not torch.allclose(views[0], views[1])


def test_sizes_default_to_image_size_and_zero_locals():
    aug = AugConfig(global_crops=CropConfig(count=2, size=None), local_crops=CropConfig(count=0))
    a = GPUAugment(aug, image_size=24)
    views = call(a, images(4, 24), generator=gen())
    assert [tuple(v.shape) for v in views] == [(4, 3, 24, 24)] * 2
    assert a.n_local == 0


def test_list_probabilities_cycle_over_more_globals():
    aug = AugConfig(global_crops=CropConfig(count=4, size=16), blur_p=[1.0, 0.1])
    assert [s["blur_p"] for s in GPUAugment(aug, 16).view_specs()] == [1.0, 0.1, 1.0, 0.1]


# ----------------------------------------------------------- parameters
def test_params_per_sample_and_in_range():
    aug = AugConfig(blur_p=0.5, solarize_p=0.3)
    a = GPUAugment(aug, 16)
    B, H, W = 4096, 24, 24
    x = images(B, H, W)
    out, p = view(a, x, 16, (0.08, 1.0), 0.5, 0.3, generator=gen(1), return_params=True)
    assert out.shape == (B, 3, 16, 16)
    valid = ~p["fallback"]
    assert valid.float().mean() > 0.99
    area, ratio, box = p["area"][valid], p["ratio"][valid], p["box"][valid]
    assert area.min() >= 0.08 - 1e-5 and area.max() <= 1.0 + 1e-5
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    x0, y0, w, h = box.unbind(1)
    assert x0.min() >= 0 and y0.min() >= 0
    assert (x0 + w).max() <= W + 1e-4 and (y0 + h).max() <= H + 1e-4
    # different samples get different crops / jitter
    assert p["box"][:64].unique(dim=0).shape[0] == 64
    for name in ("brightness", "contrast", "saturation", "hue"):
        j = p["jitter"]
        assert p[name][j].unique().numel() > B // 2
    # factor ranges (identity where not jittered)
    assert p["brightness"].min() >= 0.6 - 1e-6 and p["brightness"].max() <= 1.4 + 1e-6
    assert p["hue"].abs().max() <= 0.1 + 1e-6
    assert (p["hue"][~p["jitter"]] == 0).all()
    # per-sample op order: permutations of the 4 ops, many different orders
    order = p["order"]
    assert order.shape == (B, 4)
    assert (order.sort(1).values == torch.arange(4)).all()
    assert order.unique(dim=0).shape[0] == 24
    # sigma range
    assert p["sigma"].min() >= 0.1 - 1e-6 and p["sigma"].max() <= 2.0 + 1e-6
    assert p["kernel_size"] == blur_kernel_size(16) == 3
    # flag frequencies
    for name, prob in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("solarize", 0.3)):
        assert abs(p[name].float().mean().item() - prob) < 0.04, name
    assert p["theta"].shape == (B, 2, 3)


def test_fallback_centre_crop_on_wide_image():
    # no candidate box fits a 4:1 image at >= 90% area with ratio <= 4/3 -> centre crop
    a = GPUAugment(AugConfig(**OFF), 16)
    x = images(16, 16, 64)
    _, p = view(a, x, 16, (0.9, 1.0), 0.0, 0.0, generator=gen(), return_params=True)
    assert p["fallback"].all()
    exp = torch.tensor([(64 - 16 * 4 / 3) / 2, 0.0, 16 * 4 / 3, 16.0])
    assert torch.allclose(p["box"], exp.expand(16, 4), atol=1e-4)


def test_blur_kernel_size_rule():
    assert [blur_kernel_size(s) for s in (16, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]


# ----------------------------------------------------------- determinism
def test_determinism_and_resume():
    aug = AugConfig(global_crops=CropConfig(count=2, size=24),
                    local_crops=CropConfig(count=2, size=12, scale=(0.05, 0.4)),
                    blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2])
    a = GPUAugment(aug, 32)
    x = images(8, 32)
    v1 = call(a, x, generator=gen(123))
    v2 = call(a, x, generator=gen(123))
    assert all(torch.equal(p, q) for p, q in zip(v1, v2))
    v3 = call(a, x, generator=gen(124))
    assert not torch.equal(v1[0], v3[0])
    # resumable: a saved generator state reproduces the next batch
    g = gen(5)
    call(a, x, generator=g)
    state = g.get_state()
    nxt = call(a, x, generator=g)
    g2 = torch.Generator(device=DEV)
    g2.set_state(state)
    again = call(a, x, generator=g2)
    assert all(torch.equal(p, q) for p, q in zip(nxt, again))


# ------------------------------------------------------- exact identities
def test_all_off_full_scale_is_normalised_image():
    a = GPUAugment(AugConfig(**OFF, mean=MEAN, std=STD), 32)
    x = images(4, 32)
    # same size: exactly the normalised image (fallback path: default ratio, scale 1)
    out, p = view(a, x, 32, (1.0, 1.0), 0.0, 0.0, generator=gen(), return_params=True)
    assert p["fallback"].all()
    assert torch.allclose(out, to_float(x, MEAN, STD), atol=1e-5)
    # smaller output: bilinear resize of the whole image (no antialias), normalised
    out16 = view(a, x, 16, (1.0, 1.0), 0.0, 0.0, generator=gen())
    ref = F.interpolate(x.float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
    ref = (ref - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(out16, ref, atol=1e-5)


def _interp_matrix(start: float, length: float, n_out: int, n_in: int) -> torch.Tensor:
    """Bilinear weights [n_out, n_in] sampling [start, start+length) at n_out pixel centres."""
    pos = start + (torch.arange(n_out, dtype=torch.float64) + 0.5) * length / n_out - 0.5
    pos = pos.clamp(0, n_in - 1)
    i0 = pos.floor().long().clamp(max=n_in - 2)
    f = pos - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), i0] += 1 - f
    m[torch.arange(n_out), i0 + 1] += f
    return m


def test_crop_boxes_match_independent_bilinear_reference():
    # the sampled (continuous) box + flip is exactly what is resampled
    a = GPUAugment(AugConfig(**{**OFF, "hflip_p": 0.5}, **ID), 24)
    x = images(16, 24, 32)
    out, p = view(a, x, 12, (0.1, 0.9), 0.0, 0.0, generator=gen(3), return_params=True)
    v = x.double() / 255
    for i in range(16):
        x0, y0, w, h = p["box"][i].double().tolist()
        ref = _interp_matrix(y0, h, 12, 24) @ v[i] @ _interp_matrix(x0, w, 12, 32).T
        if p["flip"][i]:
            ref = ref.flip(-1)
        assert torch.allclose(out[i].double(), ref, atol=1e-4), i
    assert p["flip"].any() and not p["flip"].all()
    # the returned theta is the crop+flip as F.affine_grid matrices
    grid = F.affine_grid(p["theta"], [16, 3, 12, 12], align_corners=False)
    ref = F.grid_sample(v.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(out, ref, atol=1e-5)


def test_flip_on_asymmetric_image():
    x = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    x[..., :5] = 255  # bright left band
    x[:, 1, :4, :] = 128  # and a top band in G
    off = dict(OFF)
    off.pop("hflip_p")
    a1 = GPUAugment(AugConfig(**off, hflip_p=1.0, **ID), 16)
    out, p = view(a1, x, 16, (1.0, 1.0), 0.0, 0.0, generator=gen(), return_params=True)
    assert p["flip"].all()
    assert torch.allclose(out, x.float().flip(-1) / 255, atol=1e-5)
    a0 = GPUAugment(AugConfig(**off, hflip_p=0.0, **ID), 16)
    assert torch.allclose(view(a0, x, 16, (1.0, 1.0), 0.0, 0.0, generator=gen()), x.float() / 255, atol=1e-5)


def test_grayscale_makes_channels_equal():
    off = dict(OFF)
    off.pop("gray_p")
    a = GPUAugment(AugConfig(**off, gray_p=1.0, mean=MEAN, std=STD), 16)
    out = denormalize(view(a, images(4, 16), 16, (0.2, 1.0), 0.0, 0.0, generator=gen()), MEAN, STD)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)
    # luma weights of torchvision
    x = images(2, 16)
    out = view(a, x, 16, (1.0, 1.0), 0.0, 0.0, generator=gen())
    ref = TF.rgb_to_grayscale(x.float() / 255, num_output_channels=3)
    assert torch.allclose(denormalize(out, MEAN, STD), ref, atol=1e-5)


def test_solarize_inverts_above_half():
    a = GPUAugment(AugConfig(**OFF, **ID), 16)
    x = images(4, 16)
    out = view(a, x, 16, (1.0, 1.0), 0.0, 1.0, generator=gen())
    v = x.float() / 255
    assert torch.allclose(out, torch.where(v >= 0.5, 1 - v, v), atol=1e-5)
    assert out.max() <= 0.5 + 1e-6


def test_blur_reduces_high_frequencies_and_matches_torchvision():
    a = GPUAugment(AugConfig(**OFF, **ID, blur_sigma=(1.0, 2.0)), 64)
    x = images(8, 64)  # white noise
    out, p = view(a, x, 64, (1.0, 1.0), 1.0, 0.0, generator=gen(), return_params=True)
    assert p["blur"].all() and p["kernel_size"] == 7
    v = x.float() / 255

    def hf(t):  # energy of horizontal + vertical differences
        return (t.diff(dim=-1) ** 2).mean() + (t.diff(dim=-2) ** 2).mean()

    assert hf(out) < 0.3 * hf(v)
    for i in range(3):  # per-sample sigma == torchvision's gaussian_blur (reflect padding)
        s = p["sigma"][i].item()
        ref = TF.gaussian_blur(v[i], [7, 7], [s, s])
        assert torch.allclose(out[i], ref, atol=1e-5)
    # blur_p = 0: untouched
    out0 = view(a, x, 64, (1.0, 1.0), 0.0, 0.0, generator=gen())
    assert torch.allclose(out0, v, atol=1e-5)


def test_blur_per_sample_flags_mixed():
    a = GPUAugment(AugConfig(**OFF, **ID), 32)
    x = images(64, 32)
    out, p = view(a, x, 32, (1.0, 1.0), 0.5, 0.0, generator=gen(2), return_params=True)
    v = x.float() / 255
    same = (out - v).abs().flatten(1).amax(1) < 1e-5
    assert same[~p["blur"]].all()  # not drawn: untouched
    assert not same[p["blur"] & (p["sigma"] > 0.5)].any()  # drawn (and sigma not ~0): blurred
    assert 0 < p["blur"].sum() < 64


# ------------------------------------------------------------ colour jitter
def _tv_jitter(img, b, c, s, h, order):
    fns = {
        0: lambda t: TF.adjust_brightness(t, b),
        1: lambda t: TF.adjust_contrast(t, c),
        2: lambda t: TF.adjust_saturation(t, s),
        3: lambda t: TF.adjust_hue(t, h),
    }
    for o in order:
        img = fns[int(o)](img)
    return img


def test_jitter_matches_torchvision_in_per_sample_order():
    # brightness / contrast / saturation are torchvision's exact ops, per-sample order
    aug = AugConfig(**{**OFF, "jitter_p": 1.0}, **ID, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.0)
    a = GPUAugment(aug, 16)
    x = smooth_images(32, 16)
    out, p = view(a, x, 16, (1.0, 1.0), 0.0, 0.0, generator=gen(7), return_params=True)
    assert p["order"].shape == (32, 3)
    assert p["order"].unique(dim=0).shape[0] > 1
    v = x.float() / 255
    for i in range(32):
        ref = _tv_jitter(v[i], p["brightness"][i].item(), p["contrast"][i].item(),
                         p["saturation"][i].item(), 0.0, p["order"][i].tolist())
        assert torch.allclose(out[i], ref, atol=2e-5), i


def test_full_pipeline_matches_torchvision_reference():
    # jitter (no hue) -> grayscale -> blur -> solarize -> normalise, per-sample flags
    aug = AugConfig(hflip_p=0.0, jitter_p=0.7, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.0,
                    gray_p=0.3, blur_sigma=(0.5, 2.0), mean=MEAN, std=STD)
    a = GPUAugment(aug, 32)
    x = smooth_images(48, 32, seed=3)
    out, p = view(a, x, 32, (1.0, 1.0), 0.6, 0.4, generator=gen(11), return_params=True)
    k = p["kernel_size"]
    for i in range(48):
        ref = x[i].float() / 255
        if p["jitter"][i]:
            ref = _tv_jitter(ref, p["brightness"][i].item(), p["contrast"][i].item(),
                             p["saturation"][i].item(), 0.0, p["order"][i].tolist())
        if p["gray"][i]:
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        if p["blur"][i]:
            sg = p["sigma"][i].item()
            ref = TF.gaussian_blur(ref, [k, k], [sg, sg])
        if p["solarize"][i]:
            ref = torch.where(ref >= 0.5, 1 - ref, ref)
        ref = TF.normalize(ref, MEAN, STD)
        assert torch.allclose(out[i], ref, atol=1e-4), i
    for name in ("jitter", "gray", "blur", "solarize"):
        assert p[name].any() and not p[name].all(), name


def test_hue_is_luma_preserving_rotation_in_torchvision_direction():
    aug = AugConfig(**{**OFF, "jitter_p": 1.0}, **ID, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.05)
    a = GPUAugment(aug, 8)
    col = torch.tensor([0.7, 0.4, 0.3]).view(1, 3, 1, 1).expand(64, 3, 8, 8)
    x = (col * 255).round().to(torch.uint8)
    out, p = view(a, x, 8, (1.0, 1.0), 0.0, 0.0, generator=gen(), return_params=True)
    v = x.float() / 255
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # Y of YIQ
    assert torch.allclose((out * luma).sum(1), (v * luma).sum(1), atol=1e-4)  # in gamut: luma kept
    ref = torch.stack([TF.adjust_hue(v[i], p["hue"][i].item()) for i in range(64)])
    # same direction as the HSV shift: green moves the same way
    dg_ours, dg_tv = (out - v)[:, 1, 0, 0], (ref - v)[:, 1, 0, 0]
    big = p["hue"].abs() > 0.01
    assert ((dg_ours[big] > 0) == (dg_tv[big] > 0)).all()
    assert (out - ref).abs().max() < 0.15  # YIQ rotation vs HSV shift: close, not equal


def test_jitter_off_when_p_zero():
    aug = AugConfig(**OFF, **ID)
    a = GPUAugment(aug, 16)
    x = images(4, 16)
    out, p = view(a, x, 16, (1.0, 1.0), 0.0, 0.0, generator=gen(), return_params=True)
    assert not p["jitter"].any() and (p["brightness"] == 1).all()
    assert torch.allclose(out, x.float() / 255, atol=1e-5)


# ------------------------------------------------------------- eval helpers
def test_normalise_denormalize_round_trip_and_eval_resize():
    x = images(3, 20).to(DEV)
    f = to_float(x, MEAN, STD)
    assert f.dtype == torch.float32 and f.shape == (3, 3, 20, 20) and f.device == x.device
    assert torch.allclose(denormalize(f, MEAN, STD), x.float() / 255, atol=1e-6)
    assert torch.allclose(denormalize(f[0], MEAN, STD), x[0].float() / 255, atol=1e-6)
    r = resize_normalize(x, 10, MEAN, STD)
    assert r.shape == (3, 3, 10, 10)
    ref = F.interpolate(x.float() / 255, size=(10, 10), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(denormalize(r, MEAN, STD), ref.clamp(0, 1), atol=1e-5)
    assert torch.allclose(resize_normalize(x, 20, MEAN, STD), f, atol=1e-6)
    wide = resize_normalize(images(2, 20, 40).to(DEV), 10, MEAN, STD)
    assert wide.shape == (2, 3, 10, 10)


def test_rejects_bad_shapes():
    a = GPUAugment(AugConfig(), 16)
    with pytest.raises(ValueError):
        a(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


# the aspect ratio is log-uniform over the whole aug.ratio range, not one value
def test_crop_aspect_ratio_is_log_uniform_over_the_range() -> None:
    import math

    from engine.config import AugConfig

    a = GPUAugment(AugConfig(), 16)
    x = images(4096, 24, 24)
    _, p = view(a, x, 16, (0.08, 0.3), 0.0, 0.0, generator=gen(2), return_params=True)  # small areas: no fallback
    r = p["ratio"][~p["fallback"]].log()
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert r.min() >= lo - 1e-4 and r.max() <= hi + 1e-4
    assert r.min() < lo + 0.02 and r.max() > hi - 0.02  # both ends reached
    assert abs(r.mean().item()) < 0.02  # symmetric in log space: log-uniform
    assert abs(((r - lo) / (hi - lo) < 0.5).float().mean().item() - 0.5) < 0.03


# local crops are drawn with aug.local_crops.scale, global crops with theirs
def test_local_crops_use_the_local_scale_range() -> None:
    from engine.config import AugConfig, CropConfig

    aug = AugConfig(**OFF, **ID, global_crops=CropConfig(count=1, size=16, scale=(0.9, 1.0)),
                    local_crops=CropConfig(count=2, size=16, scale=(0.05, 0.1)))
    a = GPUAugment(aug, image_size=64)
    assert [s["scale"] for s in a.view_specs()] == [(0.9, 1.0), (0.05, 0.1), (0.05, 0.1)]
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8)  # brightness = x position
    x = ramp.view(1, 1, 1, 64).expand(32, 3, 64, 64).contiguous()
    g, l1, l2 = call(a, x, generator=gen(0))
    span = lambda v: (v[:, 0].amax((1, 2)) - v[:, 0].amin((1, 2)))  # noqa: E731 - crop width / image width, about
    assert span(g).min() > 0.7  # width >= sqrt(0.9 * 3 / 4) of the image
    assert span(l1).max() < 0.45 and span(l2).max() < 0.45  # width <= sqrt(0.1 * 4 / 3) of the image
