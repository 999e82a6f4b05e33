"""``shapes``: an embedded, procedural, labelled image dataset (no files).

Every image holds one large shape of a known class (circle, square, triangle,
star, ...) with a random colour, size, rotation, aspect and position, drawn over
a TEXTURED background (linear gradient, stripes, value noise, checkerboard or
concentric rings, each with two random colours) with optional small distractors
(discs and bars) and sensor noise. Colour and texture carry no information about
the class, so a randomly initialised network is far from solving it, while the
class stays obvious to a person (and to a trained network).

Besides the RGB image, each sample has two dense targets:

* ``depth``: uint8 [1, H, W] inverse depth (disparity-like: **brighter = nearer**).
  The background is a tilted plane; the shape floats in front of it with a
  bevelled, bulging surface. Distractors are painted on the background plane.
* ``seg``: uint8 [H, W] segmentation, 0 = background, ``c + 1`` = class ``c``.

Everything is drawn from one ``numpy.random.Generator`` seeded with ``seed`` and
rendered with vectorised float32 numpy (anti-aliased with signed distance
functions; numpy stays on one thread, so no thread pool is involved), so the same
seed always gives identical bytes. Rendering runs in fixed-size chunks of images;
2,500 images of 64x64 take about a second on one core.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..errors import Cancelled
from . import ImageSet

__all__ = ["SHAPE_CLASSES", "make_shapes", "derive_seed"]

#: Class names, in label order. ``make_shapes(n_classes=k)`` uses the first k.
SHAPE_CLASSES: list[str] = [
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "ellipse",
    "hexagon",
    "crescent",
    "arrow",
    "pentagon",
    "diamond",
    "semicircle",
    "tee",
]

_CHUNK = 64  # images rendered at once (fixed: part of the deterministic recipe; cache-friendly)
_N_DISTRACTORS = 4  # distractor slots per image, each active with p = DISTRACTOR_P

# Difficulty knobs (module constants; changing them changes the dataset).
# The background texture is an instance cue that survives cropping, so a self-supervised
# method can separate images by their background instead of their shape. These values keep
# the texture visible but weaker than the shape. Measured at 32 px, 2,000 train images,
# SimCLR (ResNet-18, batch 64, crops scale (0.4, 1)), weighted kNN (k=200) on 500 test
# images: untrained 0.144, after 100 steps 0.216, while with the earlier values
# (BG_CONTRAST=0.5, RADIUS=(0.22, 0.40), DISTRACTOR_P=0.3, MIN_CONTRAST=0.25) kNN
# went 0.122 -> 0.132 in 100 steps and 0.17 after 400. A random-init network stays far
# from solving it (kNN ~0.14).
BG_CONTRAST = 0.2  # largest per-channel difference between the two background colours
RADIUS = (0.28, 0.45)  # range of the shape's circumradius, as a fraction of the image side
DISTRACTOR_P = 0.15  # probability of each distractor slot (with clutter)
NOISE_STD = 0.05  # largest sensor-noise standard deviation (with clutter), in [0, 1] units
MIN_CONTRAST = 0.35  # least luminance difference between the shape and the mean background
_N_BG_TYPES = 5  # gradient, stripes, noise, checker, rings


def derive_seed(seed: int, tag: str) -> int:
    """A seed for a sub-stream (e.g. the test split) that differs from ``seed`` itself."""
    salt = int.from_bytes(tag.encode()[:8].ljust(8, b"\0"), "little")
    return int(np.random.SeedSequence([int(seed), salt]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ------------------------------------------------------------------ SDF pieces
# All distances are in the shape's local units (circumradius ~1); negative = inside.
# Arrays are float32 [B, S, S].
F32 = np.float32


def _box(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    return np.maximum(np.abs(u) - F32(a), np.abs(v) - F32(b))


def _polygon(r: np.ndarray, phi: np.ndarray, k: int, apothem: float) -> np.ndarray:
    """Regular k-gon with a vertex on the +u axis."""
    sector = F32(2 * math.pi / k)
    psi = np.remainder(phi, sector) - sector / 2
    return r * np.cos(psi) - F32(apothem)


def _star(r: np.ndarray, phi: np.ndarray, k: int, outer: float, inner: float) -> np.ndarray:
    """k-pointed star: fold the angle into one half-spike, distance to the edge line."""
    sector = 2 * math.pi / k
    psi = np.abs(np.remainder(phi + F32(sector / 2), F32(sector)) - F32(sector / 2))  # 0 at a tip
    px, py = r * np.cos(psi), r * np.sin(psi)
    tx, ty = outer, 0.0
    ix, iy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    ex, ey = ix - tx, iy - ty
    norm = math.hypot(ex, ey)
    nx, ny = ey / norm, -ex / norm  # normal of the tip->inner edge ...
    if nx * (0 - tx) + ny * (0 - ty) > 0:  # ... pointing away from the centre
        nx, ny = -nx, -ny
    return (px - F32(tx)) * F32(nx) + (py - F32(ty)) * F32(ny)


def _shape_sdf(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance of class ``cls`` at local coordinates u, v: [B, S, S]."""
    r = np.sqrt(u * u + v * v)
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return r - F32(0.9)
    if name == "square":
        return _box(u, v, 0.72, 0.72)
    if name == "triangle":
        return _polygon(r, np.arctan2(v, u), 3, 0.55)
    if name == "star":
        return _star(r, np.arctan2(v, u), 5, 1.05, 0.45)
    if name == "cross":
        return np.minimum(_box(u, v, 0.92, 0.27), _box(u, v, 0.27, 0.92))
    if name == "ring":
        return np.abs(r - F32(0.7)) - F32(0.23)
    if name == "ellipse":
        return (np.sqrt((u / F32(0.98)) ** 2 + (v / F32(0.5)) ** 2) - F32(1.0)) * F32(0.5)
    if name == "hexagon":
        return _polygon(r, np.arctan2(v, u), 6, 0.8)
    if name == "crescent":
        return np.maximum(r - F32(0.92), F32(0.74) - np.sqrt((u - F32(0.42)) ** 2 + v * v))
    if name == "arrow":
        shaft = _box(u + F32(0.3), v, 0.55, 0.17)
        slope = F32(1 / math.hypot(1, 0.78))
        head = np.maximum(F32(0.12) - u, (np.abs(v) - (F32(0.95) - u) * F32(0.78)) * slope)
        return np.minimum(shaft, head)
    if name == "pentagon":
        return _polygon(r, np.arctan2(v, u), 5, 0.76)
    if name == "diamond":
        return (np.abs(u) / F32(0.98) + np.abs(v) / F32(0.5) - F32(1.0)) * F32(0.45)
    if name == "semicircle":
        return np.maximum(np.sqrt((u + F32(0.38)) ** 2 + v * v) - F32(0.95), -(u + F32(0.38)))
    if name == "tee":
        return np.minimum(_box(u, v + F32(0.62), 0.85, 0.22), _box(u, v - F32(0.2), 0.22, 0.75))
    raise ValueError(f"unknown shape class {cls}")


# ----------------------------------------------------------------- generation
def make_shapes(
    n: int, size: int = 64, seed: int = 0, n_classes: int = 10, *, clutter: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> ImageSet:
    """Generate ``n`` labelled shape images, deterministic in ``seed``.

    Returns an ImageSet with images uint8 [n, 3, size, size], labels int64 [n]
    (balanced: every class appears n // n_classes or one more times) and extras
    ``depth`` uint8 [n, 1, size, size] and ``seg`` uint8 [n, size, size].
    ``clutter=False`` leaves out the distractors and the sensor noise. ``should_stop`` is asked
    between chunks; when it answers True, ``engine.errors.Cancelled`` is raised.
    """
    if n < 1:
        raise ValueError("make_shapes: n must be >= 1")
    if size < 16:
        raise ValueError("make_shapes: size must be >= 16")
    if not 2 <= n_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"make_shapes: n_classes must be within [2, {len(SHAPE_CLASSES)}]")

    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    labels = rng.permutation(np.arange(n) % n_classes).astype(np.int64)

    images = np.empty((n, 3, size, size), dtype=np.uint8)
    depth = np.empty((n, 1, size, size), dtype=np.uint8)
    seg = np.empty((n, size, size), dtype=np.uint8)

    # pixel centres in [-0.5, 0.5] (normalised coordinates): [1, S, S]
    t = ((np.arange(size, dtype=F32) + F32(0.5)) / F32(size) - F32(0.5)).astype(F32)
    gx = np.broadcast_to(t[None, None, :], (1, size, size))
    gy = np.broadcast_to(t[None, :, None], (1, size, size))

    for start in range(0, n, _CHUNK):
        if should_stop is not None and should_stop():
            raise Cancelled("generating the shapes dataset was cancelled")
        stop = min(n, start + _CHUNK)
        img, dep, sg = _render_chunk(rng, labels[start:stop], size, gx, gy, clutter)
        images[start:stop] = img
        depth[start:stop] = dep
        seg[start:stop] = sg

    return ImageSet(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        classes=list(SHAPE_CLASSES[:n_classes]),
        extras={"depth": torch.from_numpy(depth), "seg": torch.from_numpy(seg)},
    )


def _f(a: np.ndarray) -> np.ndarray:
    """Parameters [B] -> float32 [B, 1, 1], broadcastable against [B, S, S]."""
    return np.asarray(a, dtype=F32).reshape(-1, 1, 1)


def _lerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a + (b - a) * w, broadcast."""
    return a + (b - a) * w


def _rotated(gx: np.ndarray, gy: np.ndarray, ang: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``ang`` [B]: two [B, S, S] arrays."""
    ca, sa = _f(np.cos(ang)), _f(np.sin(ang))
    return gx * ca + gy * sa, gy * ca - gx * sa


def _soft_wave(phase: np.ndarray, sharp: np.ndarray) -> np.ndarray:
    """0.5 + 0.5 sin(phase), squashed towards a square wave by ``sharp`` [B] (0: sine)."""
    k = _f(1.0 + sharp)
    return np.tanh(np.sin(phase) * k) * (F32(0.5) / np.tanh(k)) + F32(0.5)


def _upsample_bicubic(grid: np.ndarray, size: int) -> np.ndarray:
    """[B, g, g] -> [B, size, size], bicubic (a = -0.75, half-pixel centres, clamped edges)."""
    g = grid.shape[-1]
    src = (np.arange(size) + 0.5) * (g / size) - 0.5  # source coordinate of each output pixel
    base = np.floor(src).astype(np.int64)
    frac = src - base

    def cubic(x: np.ndarray) -> np.ndarray:
        a, x = -0.75, np.abs(x)
        return np.where(
            x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0)
        )

    taps = [(np.clip(base + k, 0, g - 1), cubic(frac - k).astype(F32)) for k in (-1, 0, 1, 2)]
    rows = sum(grid[:, i, :] * w[None, :, None] for i, w in taps)  # [B, size, g]
    return sum(rows[:, :, i] * w[None, None, :] for i, w in taps)  # [B, size, size]


def _background(
    rng: np.random.Generator, B: int, S: int, gx: np.ndarray, gy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Textured backgrounds [B, 3, S, S] in [0, 1], and their mean colour [B, 3]."""
    u01 = lambda *shape: rng.random(shape, dtype=F32)  # noqa: E731
    bg_type = rng.integers(0, _N_BG_TYPES, B)
    c1 = u01(B, 3)
    c2 = np.clip(c1 + (u01(B, 3) * F32(2) - F32(1)) * F32(BG_CONTRAST), 0, 1)
    ang = u01(B) * F32(2 * math.pi)
    freq = F32(2.0) + u01(B) * F32(7.0)  # stripes / rings: cycles per image
    phase = u01(B) * F32(2 * math.pi)
    sharp = u01(B) * F32(6.0)  # 0: sine, larger: square wave
    gain = F32(0.8) + u01(B) * F32(1.2)  # gradient steepness
    cell = F32(1.0) / (F32(2.0) + u01(B) * F32(6.0))  # checker cell, as a fraction of the image
    centre = u01(B, 2) - F32(0.5)  # rings
    coarse = u01(B, 4, 4)  # value noise, two octaves
    fine = u01(B, 9, 9)
    mix = u01(B)

    pattern = np.empty((B, S, S), dtype=F32)  # [B, S, S] in [0, 1]
    for kind in range(_N_BG_TYPES):
        sel = np.nonzero(bg_type == kind)[0]
        if len(sel) == 0:
            continue
        if kind == 0:  # linear gradient
            xr, _ = _rotated(gx, gy, ang[sel])
            pat = np.clip(xr * _f(gain[sel]) + F32(0.5), 0, 1)
        elif kind == 1:  # stripes
            xr, _ = _rotated(gx, gy, ang[sel])
            pat = _soft_wave(xr * _f(F32(2 * math.pi) * freq[sel]) + _f(phase[sel]), sharp[sel])
        elif kind == 2:  # value noise
            noise = _upsample_bicubic(coarse[sel], S) + _upsample_bicubic(fine[sel], S) * _f(mix[sel])
            lo = noise.min(axis=(1, 2), keepdims=True)
            hi = noise.max(axis=(1, 2), keepdims=True)
            pat = (noise - lo) / (hi - lo + F32(1e-6))
        elif kind == 3:  # checkerboard
            xr, yr = _rotated(gx, gy, ang[sel])
            cl = _f(cell[sel])
            pat = np.remainder(np.floor(xr / cl) + np.floor(yr / cl), F32(2.0))
        else:  # concentric rings
            rr = np.sqrt((gx - _f(centre[sel, 0])) ** 2 + (gy - _f(centre[sel, 1])) ** 2)
            pat = _soft_wave(rr * _f(F32(2 * math.pi) * freq[sel]) + _f(phase[sel]), sharp[sel])
        pattern[sel] = pat
    img = _lerp(c1[:, :, None, None], c2[:, :, None, None], pattern[:, None])  # [B, 3, S, S]
    return img.astype(F32, copy=False), (c1 + c2) / 2


def _distractors(
    rng: np.random.Generator, img: np.ndarray, gx: np.ndarray, gy: np.ndarray, active_p: float
) -> None:
    """Paint small discs and bars onto ``img`` [B, 3, S, S] in place."""
    B, S = img.shape[0], img.shape[-1]
    K = _N_DISTRACTORS
    px = F32(1.0 / S)  # one pixel in normalised units
    u01 = lambda *shape: rng.random(shape, dtype=F32)  # noqa: E731
    active = rng.random((B, K)) < active_p
    is_disc = rng.random((B, K)) < 0.5
    pos = u01(B, K, 2) - F32(0.5)
    rad = F32(0.03) + u01(B, K) * F32(0.07)
    half_len = F32(0.08) + u01(B, K) * F32(0.2)
    half_wid = F32(max(0.6 / S, 0.008)) + u01(B, K) * F32(0.012)
    ang = u01(B, K) * F32(math.pi)
    col = u01(B, K, 3)
    for k in range(K):  # slots in order: later ones are painted over earlier ones
        for disc in (True, False):
            sel = np.nonzero(active[:, k] & (is_disc[:, k] == disc))[0]
            if len(sel) == 0:
                continue
            dx, dy = gx - _f(pos[sel, k, 0]), gy - _f(pos[sel, k, 1])
            if disc:
                sd = np.sqrt(dx * dx + dy * dy) - _f(rad[sel, k])
            else:
                ca, sa = _f(np.cos(ang[sel, k])), _f(np.sin(ang[sel, k]))
                sd = np.maximum(
                    np.abs(dx * ca + dy * sa) - _f(half_len[sel, k]),
                    np.abs(dy * ca - dx * sa) - _f(half_wid[sel, k]),
                )
            alpha = np.clip(F32(0.5) - sd / px, 0, 1)[:, None]  # [n, 1, S, S]
            img[sel] = _lerp(img[sel], col[sel, k][:, :, None, None], alpha)


def _render_chunk(
    rng: np.random.Generator,
    labels: np.ndarray,
    size: int,
    gx: np.ndarray,
    gy: np.ndarray,
    clutter: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one chunk: returns images [B,3,S,S], depth [B,1,S,S], seg [B,S,S] (uint8)."""
    B, S = len(labels), size
    px = F32(1.0 / S)
    u01 = lambda *shape: rng.random(shape, dtype=F32)  # noqa: E731

    img, bg_mean = _background(rng, B, S, gx, gy)  # [B, 3, S, S]

    # background depth: a tilted plane (disparity in 0..1, larger = nearer)
    plane0 = F32(0.15) + u01(B) * F32(0.25)
    tilt = u01(B, 2) * F32(0.5) - F32(0.25)
    dep = gx * _f(tilt[:, 0]) + gy * _f(tilt[:, 1]) + _f(plane0)  # [B, S, S]

    _distractors(rng, img, gx, gy, DISTRACTOR_P if clutter else 0.0)

    # ---------------------------------------------------------- main shape
    radius = F32(RADIUS[0]) + u01(B) * F32(RADIUS[1] - RADIUS[0])  # circumradius / image side
    margin = radius * F32(0.75)
    cx = (u01(B) - F32(0.5)) * (F32(1) - 2 * margin)
    cy = (u01(B) - F32(0.5)) * (F32(1) - 2 * margin)
    rot = u01(B) * F32(2 * math.pi)
    aspect = F32(0.85) + u01(B) * F32(0.3)
    fg = u01(B, 3)
    light = u01(B) * F32(2 * math.pi)
    shade = F32(0.15) + u01(B) * F32(0.3)
    lift = F32(0.3) + u01(B) * F32(0.25)  # how far in front of the background plane
    bulge = F32(0.1) + u01(B) * F32(0.15)

    # keep the shape visible: push its colour away from the background's mean luminance
    lum = np.array([0.299, 0.587, 0.114], dtype=F32)
    bg_lum = bg_mean @ lum
    weak = np.abs(fg @ lum - bg_lum) < MIN_CONTRAST
    darken = weak & (bg_lum > 0.5)
    lighten = weak & ~(bg_lum > 0.5)
    fg[darken] *= F32(0.3)
    fg[lighten] = F32(1) - (F32(1) - fg[lighten]) * F32(0.3)

    # local shape coordinates u, v (circumradius 1): [B, S, S]
    xr, yr = _rotated(gx - _f(cx), gy - _f(cy), rot)
    u = xr * _f(aspect / radius)
    v = yr * _f(F32(1) / (aspect * radius))

    sdf = np.empty((B, S, S), dtype=F32)
    for c in np.unique(labels):
        sel = np.nonzero(labels == c)[0]
        sdf[sel] = _shape_sdf(int(c), u[sel], v[sel])
    cover = np.clip(F32(0.5) - sdf * (_f(radius) / px), 0, 1)  # anti-aliased coverage: [B, S, S]

    height = np.clip(sdf * F32(-1 / 0.35), 0, 1)  # bevel: 0 at the edge, 1 inside
    lit = np.clip(u * _f(np.cos(light)) + v * _f(np.sin(light)), -1, 1) * _f(shade) + F32(1.0)
    tone = (lit * (height * F32(0.2) + F32(0.8)))[:, None]  # [B, 1, S, S]
    fgc = np.clip(fg[:, :, None, None] * tone, 0, 1)
    img = _lerp(img, fgc, cover[:, None])

    rim = F32(1.0) - np.clip(u * u + v * v, 0, 1) * F32(0.3)
    surface = height * rim * _f(bulge) + _f(plane0 + lift)
    dep = _lerp(dep, surface, cover)

    # ---------------------------------------------------------- sensor noise
    if clutter:
        amp = u01(B) * F32(NOISE_STD * math.sqrt(12.0))  # uniform noise, std up to NOISE_STD
        noise = rng.random((B, 3, S, S), dtype=F32) - F32(0.5)
        img += noise * _f(amp)[:, None]

    images = (np.clip(img, 0, 1) * F32(255) + F32(0.5)).astype(np.uint8)
    depth = (np.clip(dep, 0, 1) * F32(255) + F32(0.5)).astype(np.uint8)[:, None]
    seg = np.where(cover >= 0.5, (labels + 1).reshape(-1, 1, 1), 0).astype(np.uint8)
    return images, depth, seg
