"""Batched, per-sample-random image augmentation on the training device.

Why our own tensor code (and not torchvision.transforms.v2 / kornia): v2 on a
batch draws ONE set of parameters for the whole batch (same crop, same jitter
for every image), so per-sample randomness means a Python loop over samples
(bench/aug_micro.py --baseline, 2 views of 32 px, H100: 216 ms for 64 images
in that loop vs 1.7-2.4 ms for 512 images here, 0.43 ms of it GPU kernels);
kornia's per-sample pipeline was measured elsewhere at ~52 ms/batch on an H100.
Here every random parameter is drawn per sample from ONE ``torch.rand`` call
per group of views and each stage is a few batched kernels: no per-sample
Python loop and no host sync (no ``.item()``, no Python branch on tensor
values; probabilistic ops use masks or identity parameters; checked with
``torch.cuda.set_sync_debug_mode("error")``), so the launches queue
asynchronously behind the previous training step.

Pipeline of one view (SimCLR / BYOL / DINO order)::

    uint8 [B,3,H,W] -> float [0,1]         once per call, shared by all views
    random-resized-crop + horizontal flip  ONE affine sampling grid + grid_sample
                                           (bilinear, align_corners=False, border)
    colour jitter (p=jitter_p)             per-sample factors AND per-sample random
                                           order of the 4 ops; each op is a per-sample
                                           3x3 colour matrix (one bmm) + clamp to [0,1]
                                           after each op, like torchvision
    grayscale (p=gray_p)                   per-sample 3x3 matrix (torchvision's luma)
    gaussian blur (p=blur_p)               separable, per-sample kernels, reflect
                                           padding, kernel ~10% of the crop side
    solarize (p=solarize_p)                x >= 0.5 -> 1 - x
    normalise                              (x - mean) / std, float32

Design notes

* Crops: torchvision ``RandomResizedCrop`` semantics (area fraction uniform in
  ``scale``, log-uniform aspect ratio in ``ratio``, 10 attempts, then the
  centre-crop fallback), vectorised: 10 candidates per sample, the first valid
  one wins (``argmax`` of the validity mask). Boxes are continuous (sub-pixel,
  not rounded to whole pixels), so area and aspect stay exactly in range. The
  crop is resampled straight from the source with bilinear ``grid_sample``; the
  crop+flip is an axis-aligned affine map, so its grid is built from two 1-D
  ramps (the values ``F.affine_grid(theta)`` gives; ``theta`` is returned by
  ``view(return_params=True)``). No antialiasing: fine for the usual <= 1.5x
  downscale; cache images near the crop size rather than far above it.
* Views of the same size and scale range (the global crops; the local crops)
  are produced together: their sampling grids are stacked along the output
  height of ONE ``grid_sample`` over the (not copied) source, and the colour
  stages run on an ``[n*B]`` batch. ``view()`` is the same code with n=1.
* Hue: a rotation of the chroma plane (I, Q) in YIQ space, NOT torchvision's
  RGB->HSV->RGB. Reason: the rotation is a 3x3 matrix, so every jitter op
  (brightness b*I, contrast c*I + offset, saturation s*I + (1-s)*gray, hue) is a
  per-sample 3x3 colour matrix and one slot of the randomly ordered jitter is one
  ``bmm`` + clamp; HSV needs ~30 elementwise kernels per application with
  piecewise branches, for every one of the 4 slots. The rotation keeps luma and
  moves hue in torchvision's direction (red -> yellow -> green for positive
  factors) by ``2*pi*factor``; it differs from the HSV shift in how far colours
  move and in gamut clipping: against ``TF.adjust_hue`` on random colours, a shift
  of 0.05 turn differs by 0.05 on average (p99 0.18, max 0.24), 0.1 turn by 0.08
  (p99 0.30); torchvision's shift also changes luma (~0.06), the rotation keeps it.
  Brightness, contrast, saturation and grayscale match torchvision's ``adjust_*``
  / ``rgb_to_grayscale`` exactly (same luma weights, same per-op clamping).
* Contrast needs a per-sample offset; instead of adding it (a full pass), the
  image is carried as ``x + o`` with ``o`` [N, 3, 1]: the clamp becomes
  ``clamp(x, -o, 1 - o)`` and ``o`` is folded into the next op, the contrast
  means and the final normalisation (one ``addcmul``).
* Blur follows SimCLR: kernel side = 10% of the crop side (made odd, >= 3),
  sigma uniform in ``aug.blur_sigma`` in PIXELS of the output view (not rescaled
  with the image size), torchvision's reflect padding. Separable, applied as two
  batched matmuls with per-sample [s, s] band matrices that have the reflection
  folded in: on an H100 this was 2x faster than a grouped depthwise conv2d plus
  a reflect-pad pass at 224 px (0.6 vs 1.2 ms for 128 views) and equal at 32 px.
  Non-blurred samples get the identity matrix (exact). Note: if TF32 matmuls are
  enabled globally, the blur and colour matrices run in TF32 (~1e-3 relative).
* Per-view probabilities: ``blur_p`` / ``solarize_p`` may be lists with one value
  per global view; global view i uses ``p[i % len(p)]`` (BYOL [1.0, 0.1] with 4
  globals gives 1.0, 0.1, 1.0, 0.1). Local crops use ``local_blur_p`` /
  ``local_solarize_p`` (DINO: 0.5 and 0), or, left empty, the FIRST value of the
  list (the float itself otherwise).
* Random numbers: all from the given ``torch.Generator`` (on x's device), one
  ``torch.rand`` per group of views with a fixed number of columns, so the same
  generator state gives the same views (reproducible, resumable), whichever
  ops are switched off.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .config import AugConfig

__all__ = ["GPUAugment", "to_float", "resize_normalize", "denormalize", "blur_kernel_size"]

# luma weights of torchvision's rgb_to_grayscale (ITU-R 601, rounded as there)
_LUMA = (0.2989, 0.587, 0.114)
# RGB -> YIQ (NTSC)
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))

_K = 10  # crop candidates per sample (torchvision: 10 attempts)
# columns of the per-sample uniform draw
_C_AREA, _C_RATIO = 0, _K
_C_OFF = 2 * _K            # 2 columns: x, y offset
_C_FLIP = _C_OFF + 2
_C_JIT = _C_FLIP + 1
_C_FACT = _C_JIT + 1       # 4 columns: brightness, contrast, saturation, hue
_C_ORDER = _C_FACT + 4     # 4 columns: sort keys of the op order
_C_GRAY = _C_ORDER + 4
_C_BLUR = _C_GRAY + 1
_C_SIGMA = _C_BLUR + 1
_C_SOL = _C_SIGMA + 1
_NU = _C_SOL + 1

OPS = ("brightness", "contrast", "saturation", "hue")


def blur_kernel_size(size: int) -> int:
    """SimCLR: 10% of the image side, odd, at least 3."""
    k = max(3, int(0.1 * size))
    return k if k % 2 == 1 else k + 1


def _stats(mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, device, trailing: int = 2):
    # -> mean, std shaped [3, 1, ..., 1] (``trailing`` ones): broadcast over [..., 3, H, W]
    shape = (3,) + (1,) * trailing
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(shape)
    return m, s


def _u8_to_unit(x: torch.Tensor) -> torch.Tensor:
    # x: [B, 3, H, W] uint8 -> float32 in [0, 1]
    return x.to(torch.float32).div_(255.0)


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(x.shape)}")


def to_float(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """Plain normalisation (eval path): uint8 [B, 3, H, W] -> float32 (x/255 - mean) / std."""
    _check_images(x_uint8)
    m, s = _stats(mean, std, x_uint8.device)
    return _u8_to_unit(x_uint8).sub_(m).div_(s)


def resize_normalize(x_uint8: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Eval: resize (bilinear, antialias) to [B, 3, size, size] and normalise.

    Square inputs are resized directly; others are resized on the short side and
    centre-cropped (the usual eval transform).
    """
    _check_images(x_uint8)
    x = _u8_to_unit(x_uint8)  # x: [B, 3, H, W]
    H, W = x.shape[-2:]
    if H != W:
        if H < W:
            nh, nw = size, max(size, round(W * size / H))
        else:
            nh, nw = max(size, round(H * size / W)), size
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    elif H != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m, s = _stats(mean, std, x.device)
    return x.sub(m).div_(s)


def resize_u8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> uint8 [N, 3, size, size] (antialiased bilinear); unchanged if already that size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8)


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Back to [0, 1] for display: x * std + mean, clamped. x: [B, 3, H, W] (or [3, H, W])."""
    m, s = _stats(mean, std, x.device)
    return (x.float() * s + m).clamp_(0.0, 1.0)


def _per_view(p: float | list[float], i: int) -> float:
    if isinstance(p, (list, tuple)):
        return float(p[i % len(p)])
    return float(p)


def _first(p: float | list[float]) -> float:
    return float(p[0]) if isinstance(p, (list, tuple)) else float(p)


def _reflect_taps(size: int, k: int, device) -> torch.Tensor:
    """[k, size*size] one-hot: tap t of output row i reads source index reflect(i + t - k//2).

    ``gaussian [N, k] @ this`` gives per-sample [size, size] blur matrices with
    torchvision's 'reflect' padding folded in (no padding pass)."""
    r = k // 2
    i = torch.arange(size).view(size, 1)
    j = i + torch.arange(k).view(1, k) - r                                        # [s, k]
    j = j.abs()                                                                   # reflect at 0
    j = torch.where(j > size - 1, 2 * (size - 1) - j, j)                          # reflect at s-1
    j = j.clamp(0, size - 1)                                                      # (only if r >= size)
    m = torch.zeros(k, size, size)
    m.scatter_(2, j.t().unsqueeze(-1), 1.0)
    return m.view(k, size * size).to(device)


class _Consts:
    """Small constant tensors on one device (built once: no host->device copy per call)."""

    def __init__(self, aug: AugConfig, device: torch.device):
        f32 = dict(dtype=torch.float32, device=device)
        eye = torch.eye(3, dtype=torch.float64)
        luma = torch.tensor(_LUMA, dtype=torch.float64)
        gray = torch.ones(3, 1, dtype=torch.float64) @ luma[None]       # J = 1 w^T
        T = torch.tensor(_YIQ, dtype=torch.float64)
        Ti = torch.linalg.inv(T)
        p0 = Ti @ torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)) @ T
        p1 = Ti @ torch.diag(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)) @ T
        # rotation of (I, Q) by -theta: [I'; Q'] = [[c, s], [-s, c]] [I; Q]
        rot = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
        p2 = Ti @ rot @ T
        # basis of every jitter matrix: M = c0*I + c1*J + c2*P0 + c3*P1 + c4*P2
        self.basis = torch.stack([eye, gray, p0, p1, p2]).reshape(5, 9).to(**f32)
        self.eye = eye.to(**f32)
        self.gray = gray.to(**f32)
        self.luma = luma.to(**f32)
        strengths = (aug.brightness, aug.contrast, aug.saturation)
        lo = [max(0.0, 1.0 - s) for s in strengths] + [-aug.hue]
        hi = [1.0 + s for s in strengths] + [aug.hue]
        self.f_lo = torch.tensor(lo, **f32)
        self.f_span = torch.tensor([h - l for h, l in zip(hi, lo)], **f32)
        self.f_id = torch.tensor([1.0, 1.0, 1.0, 0.0], **f32)
        self.op_ids = torch.arange(4, device=device)
        self.flip_sign = torch.tensor([-1.0, 1.0], **f32)
        self.zero_one = torch.tensor([0.0, 1.0], **f32)
        self.mean, self.std = _stats(aug.mean, aug.std, device, trailing=1)  # [3, 1]
        self.inv_std = 1.0 / self.std
        self.norm_bias = -self.mean * self.inv_std
        self.luma_row = self.luma.view(1, 3)
        self._cache: dict[Any, torch.Tensor] = {}

    def cached(self, key, make):
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = make()
        return t


class GPUAugment:
    """Multi-crop SSL augmentation of a uint8 batch on its own device.

    ``GPUAugment(cfg.aug, image_size)(x, generator)`` -> list of float32
    normalised views ``[B, 3, s, s]``: ``n_global`` global crops first, then
    ``n_local`` local crops. Crop sizes left empty in the config take
    ``image_size``.
    """

    def __init__(self, aug: AugConfig, image_size: int):
        self.aug = aug
        g, l = aug.global_crops, aug.local_crops
        self.n_global: int = int(g.count)
        self.n_local: int = int(l.count)
        self.global_size: int = int(g.size or image_size)
        self.local_size: int = int(l.size or image_size)
        self.global_scale = (float(g.scale[0]), float(g.scale[1]))
        self.local_scale = (float(l.scale[0]), float(l.scale[1]))
        self.global_blur_p = [_per_view(aug.blur_p, i) for i in range(self.n_global)]
        self.global_solarize_p = [_per_view(aug.solarize_p, i) for i in range(self.n_global)]
        self.local_blur_p = _first(aug.blur_p) if aug.local_blur_p is None else float(aug.local_blur_p)
        self.local_solarize_p = _first(aug.solarize_p) if aug.local_solarize_p is None else float(aug.local_solarize_p)
        self._consts: dict[torch.device, _Consts] = {}

    # ------------------------------------------------------------------ public
    def view_specs(self) -> list[dict[str, Any]]:
        """Per output view: kind, size, scale, blur_p, solarize_p (in output order)."""
        specs = [
            dict(kind="global", size=self.global_size, scale=self.global_scale,
                 blur_p=self.global_blur_p[i], solarize_p=self.global_solarize_p[i])
            for i in range(self.n_global)
        ]
        specs += [
            dict(kind="local", size=self.local_size, scale=self.local_scale,
                 blur_p=self.local_blur_p, solarize_p=self.local_solarize_p)
            for _ in range(self.n_local)
        ]
        return specs

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """x: uint8 [B, 3, H, W] on any device -> list of float32 normalised views [B, 3, s, s]:
        global crops first, then local crops."""
        _check_images(x)
        src = _u8_to_unit(x) if x.dtype == torch.uint8 else x.float()  # src: [B, 3, H, W] in [0, 1]
        views: list[torch.Tensor] = []
        if self.n_global:
            out, _ = self._views(src, self.n_global, self.global_size, self.global_scale,
                                 self.global_blur_p, self.global_solarize_p, generator, False)
            views += list(out.unbind(0))
        if self.n_local:
            out, _ = self._views(src, self.n_local, self.local_size, self.local_scale,
                                 [self.local_blur_p] * self.n_local,
                                 [self.local_solarize_p] * self.n_local, generator, False)
            views += list(out.unbind(0))
        return views

    def view(self, x: torch.Tensor, size: int, scale: tuple[float, float], blur_p: float,
             solarize_p: float, generator: torch.Generator | None = None, return_params: bool = False):
        """One augmented view [B, 3, size, size] of x (uint8, or float already in [0, 1]).

        With ``return_params`` also returns a dict of per-sample parameters:
        ``box`` [B, 4] (x0, y0, w, h in source pixels), ``area`` [B] (fraction of
        the image), ``ratio`` [B] (w/h), ``fallback`` [B] (centre-crop fallback
        used), ``flip`` [B], ``jitter`` [B], ``brightness``/``contrast``/
        ``saturation``/``hue`` [B] (applied factors; identity where not jittered),
        ``order`` [B, m] (op index per jitter slot, 0..3 = brightness, contrast,
        saturation, hue; only ops with non-zero strength), ``gray`` [B], ``blur``
        [B], ``sigma`` [B] (drawn; applied where ``blur``), ``kernel_size`` (int),
        ``solarize`` [B], ``theta`` [B, 2, 3] (the crop+flip as ``F.affine_grid`` matrices).
        """
        _check_images(x)
        src = _u8_to_unit(x) if x.dtype == torch.uint8 else x.float()
        out, params = self._views(src, 1, int(size), (float(scale[0]), float(scale[1])),
                                  [float(blur_p)], [float(solarize_p)], generator, return_params)
        return (out[0], params) if return_params else out[0]

    # ---------------------------------------------------------------- internals
    def _c(self, device: torch.device) -> _Consts:
        c = self._consts.get(device)
        if c is None:
            c = self._consts[device] = _Consts(self.aug, device)
        return c

    def _prob(self, c: _Consts, ps: list[float], n: int, B: int, name: str) -> float | torch.Tensor:
        """A probability for the [n*B] batch: a float if all views agree, else [n*B] tensor."""
        if all(p == ps[0] for p in ps):
            return ps[0]
        key = (name, tuple(ps), B)
        return c.cached(key, lambda: torch.tensor(ps, dtype=torch.float32, device=c.eye.device)
                        .repeat_interleave(B))

    def _views(self, src: torch.Tensor, n: int, size: int, scale: tuple[float, float],
               blur_ps: list[float], sol_ps: list[float], generator, return_params: bool):
        # src: [B, 3, H, W] float in [0, 1]  ->  out: [n, B, 3, size, size] normalised
        aug = self.aug
        dev = src.device
        c = self._c(dev)
        B, _, H, W = src.shape
        N = n * B
        s = size
        # u: [N, _NU]; row v*B + b is view v of sample b
        u = torch.rand(N, _NU, device=dev, dtype=torch.float32, generator=generator)

        # ---- random-resized-crop boxes, vectorised over _K candidates
        lo, hi = scale
        lr0, lr1 = math.log(aug.ratio[0]), math.log(aug.ratio[1])
        area = u[:, _C_AREA:_C_AREA + _K] * (hi - lo) + lo                      # [N, K] fraction
        ar = torch.exp(u[:, _C_RATIO:_C_RATIO + _K] * (lr1 - lr0) + lr0)        # [N, K] w / h
        px = area * float(H * W)
        wh = torch.stack([torch.sqrt(px * ar), torch.sqrt(px / ar)], -1)        # [N, K, 2]
        valid = (wh[..., 0] <= W) & (wh[..., 1] <= H)                             # [N, K]
        first = valid.to(torch.uint8).argmax(1)                                   # first valid candidate
        ok = valid.any(1)                                                         # [N]
        wh = wh.gather(1, first.view(N, 1, 1).expand(N, 1, 2)).squeeze(1)       # [N, 2]
        # fallback: torchvision's centre crop with the aspect ratio clamped into range
        in_ratio = W / H
        if in_ratio < min(aug.ratio):
            fw, fh = float(W), W / min(aug.ratio)
        elif in_ratio > max(aug.ratio):
            fw, fh = H * max(aug.ratio), float(H)
        else:
            fw, fh = float(W), float(H)
        dims = c.cached(("dims", H, W), lambda: torch.tensor([W, H], dtype=torch.float32, device=dev))
        fb = c.cached(("fb", H, W, aug.ratio), lambda: torch.tensor([fw, fh], dtype=torch.float32, device=dev))
        okc = ok.unsqueeze(1)
        wh = torch.where(okc, wh, fb)                                             # [N, 2]
        off = torch.where(okc, u[:, _C_OFF:_C_OFF + 2], 0.5)                    # centre when fallback
        xy = off * (dims - wh)                                                    # [N, 2] top-left
        flip = u[:, _C_FLIP] < aug.hflip_p                                        # [N]
        # theta maps output coords in [-1, 1] to source coords (align_corners=False):
        # [[sx, 0, cx], [0, sy, cy]]; sx < 0 flips.
        scl = wh / dims                                                           # [N, 2]
        scl = scl * torch.where(flip.unsqueeze(1), c.flip_sign, 1.0)                # negate sx where flipped
        ctr = (2.0 * xy + wh) / dims - 1.0                                        # [N, 2]
        # The transform is axis-aligned, so F.affine_grid(theta) reduces to two 1-D
        # coordinate ramps broadcast into the grid (same values; avoids affine_grid's
        # batched [s*s, 3] @ [3, 2] matmul, slow on the CPU).
        base = c.cached(("base", s), lambda: (torch.arange(s, dtype=torch.float32, device=dev) * 2 + 1) / s - 1)
        ramp = torch.addcmul(ctr.unsqueeze(1), scl.unsqueeze(1), base.view(1, s, 1))  # [N, s, 2]
        # sample-major so that the n grids of one sample stack along the output height
        ramp = ramp.view(n, B, s, 2).transpose(0, 1)                              # [B, n, s, 2]
        grid = torch.stack([ramp[:, :, None, :, 0].expand(B, n, s, s),            # x varies along width
                            ramp[:, :, :, None, 1].expand(B, n, s, s)], -1)        # y along height
        grid = grid.view(B, n * s, s, 2)                                          # [B, n*s, s, 2]
        y = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # y: [B, 3, n*s, s] -> x: [N, 3, s*s] view-major
        if n > 1:
            x = y.view(B, 3, n, s * s).permute(2, 0, 1, 3).reshape(N, 3, s * s)
        else:
            x = y.view(N, 3, s * s)

        params: dict[str, Any] = {}
        # Offsets are carried, not added: the image is x + o with o a per-sample,
        # per-channel offset [N, 3, 1] (None: zero), folded into the clamps, the
        # contrast means and the final normalisation (saves a full pass per op).
        o: torch.Tensor | None = None
        # ---- colour jitter: per-sample factors, per-sample random op order
        strengths = (aug.brightness, aug.contrast, aug.saturation, aug.hue)
        active = [i for i in range(4) if strengths[i] > 0]
        do_jitter = bool(active) and aug.jitter_p > 0
        if do_jitter or return_params:
            jit = u[:, _C_JIT] < aug.jitter_p                                     # [N]
            fac = u[:, _C_FACT:_C_FACT + 4] * c.f_span + c.f_lo                   # [N, 4] b, c, s, h
            fac = torch.where(jit.unsqueeze(1), fac, c.f_id)                      # identity if not drawn
        if return_params:
            params.update(jitter=jit, **{name: fac[:, i] for i, name in enumerate(OPS)})
        if do_jitter:
            m = len(active)
            keys = u[:, _C_ORDER:_C_ORDER + 4]
            if m < 4:
                act = c.cached(("active", tuple(active)), lambda: torch.tensor(active, device=dev))
                keys = keys.index_select(1, act)
            order = keys.argsort(1)                                               # [N, m] (local) op index
            if m < 4:
                order = act[order]
            b_, c_, s_, h_ = fac.unbind(1)
            theta_h = h_ * (2.0 * math.pi)
            one = torch.ones_like(b_)
            zer = torch.zeros_like(b_)
            coef = torch.stack([
                b_, zer, zer, zer, zer,                                           # brightness: b*I
                c_, zer, zer, zer, zer,                                           # contrast: c*I (+ offset)
                s_, 1.0 - s_, zer, zer, zer,                                      # saturation: s*I + (1-s)*J
                zer, zer, one, torch.cos(theta_h), torch.sin(theta_h),            # hue: YIQ rotation
            ], -1).view(N, 4, 5)
            mats = coef @ c.basis                                                 # [N, 4, 9]
            sel = (order.unsqueeze(-1) == c.op_ids).float()                      # [N, m, 4] one-hot
            slot_m = (sel @ mats).view(N, m, 3, 3)                                # [N, m, 3, 3]
            has_contrast = 1 in active
            if has_contrast:
                slot_t = sel[..., 1] * (1.0 - c_).unsqueeze(1)                    # [N, m]
            for k in range(m):
                mk = slot_m[:, k]                                                 # [N, 3, 3]
                if has_contrast:
                    # contrast blends towards the mean luma of the image as it is now
                    mean_now = x.mean(-1, keepdim=True)                           # [N, 3, 1]
                    if o is not None:
                        mean_now = mean_now + o
                    t = slot_t[:, k].view(N, 1, 1) * (c.luma_row @ mean_now)     # [N, 1, 1]
                    o = t.expand(N, 3, 1) if o is None else torch.baddbmm(t, mk, o)
                x = torch.bmm(mk, x)
                if o is None:
                    x = x.clamp_(0.0, 1.0)
                else:  # clamp(x + o, 0, 1) - o, i.e. x clamped to [-o, 1 - o]
                    lim = c.zero_one - o.unsqueeze(-1)                            # [N, 3, 1, 2]
                    x = x.clamp_(lim[..., 0], lim[..., 1])
            if return_params:
                params["order"] = order
        elif return_params:
            params["order"] = torch.empty(N, 0, dtype=torch.long, device=dev)

        # ---- grayscale
        if aug.gray_p > 0 or return_params:
            gray = u[:, _C_GRAY] < aug.gray_p                                     # [N]
        if aug.gray_p > 0:
            gm3 = torch.where(gray.view(N, 1, 1), c.gray, c.eye)                 # [N, 3, 3]
            x = torch.bmm(gm3, x)
            if o is not None:
                o = torch.bmm(gm3, o)

        # ---- gaussian blur: separable, per-sample band matrices (reflect padding folded in)
        k = blur_kernel_size(s)
        r = k // 2
        do_blur = any(p > 0 for p in blur_ps)
        if do_blur or return_params:
            blur = u[:, _C_BLUR] < self._prob(c, blur_ps, n, B, "blur")          # [N]
            s0, s1 = aug.blur_sigma
            sigma = u[:, _C_SIGMA] * (s1 - s0) + s0                               # [N] pixels
        if do_blur:
            taps = c.cached(("taps", k), lambda: torch.arange(-r, r + 1, dtype=torch.float32, device=dev))
            delta = c.cached(("delta", k), lambda: (taps == 0).float())
            g = torch.exp(-0.5 * (taps / sigma.unsqueeze(1)) ** 2)                # [N, k]
            g = g / g.sum(1, keepdim=True)
            g = torch.where(blur.unsqueeze(1), g, delta)                          # identity if not drawn
            band = c.cached(("band", s, k), lambda: _reflect_taps(s, k, dev))     # [k, s*s]
            kmat = (g @ band).view(N, s, s)                                       # [N, s, s] rows sum to 1
            x = torch.bmm(x.view(N, 3 * s, s), kmat.transpose(1, 2))             # along width
            x = torch.matmul(kmat.unsqueeze(1), x.view(N, 3, s, s))               # along height
            x = x.view(N, 3, s * s)                                               # (offset o unchanged)

        # ---- solarize, then normalise
        do_sol = any(p > 0 for p in sol_ps)
        if do_sol or return_params:
            sol = u[:, _C_SOL] < self._prob(c, sol_ps, n, B, "sol")              # [N]
        if do_sol:
            if o is not None:
                x, o = x + o, None
            thr = torch.where(sol, 0.5, math.inf).view(N, 1, 1)
            x = torch.where(x >= thr, 1.0 - x, x)
        # (x + o - mean) / std in one pass
        bias = c.norm_bias if o is None else (o - c.mean) * c.inv_std            # [N or 1, 3, 1]
        x = torch.addcmul(bias, x, c.inv_std)                                     # [N, 3, s*s]

        out = x.view(n, B, 3, s, s)
        if return_params:
            params.update(
                box=torch.cat([xy, wh], 1), area=(wh[:, 0] * wh[:, 1]) / float(H * W),
                ratio=wh[:, 0] / wh[:, 1], fallback=~ok, flip=flip, gray=gray, blur=blur,
                sigma=sigma, kernel_size=k, solarize=sol,
                theta=torch.stack([scl[:, 0], torch.zeros_like(ctr[:, 0]), ctr[:, 0],
                                   torch.zeros_like(ctr[:, 0]), scl[:, 1], ctr[:, 1]], 1).view(N, 2, 3),
            )
        return out, params
