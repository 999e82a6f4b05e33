"""Per-method throughput: our engine against the anchor, lightly 1.6.0, measured in the same run.

    python bench/methods.py --out bench/results [--only dino_vits16 mae_vitb16 ...] [--data PATH]
                            [--steps N] [--warmup N] [--compile] [--small]

Every benchmark uses the same backbone, batch, crops and precision (bf16 autocast on CUDA) on
both sides and reports images/s (source images per second; a DINO image is 8 crops) for up to
three measurements:

* ``ours``        the engine's real ``Trainer``, end to end: uint8 image cache on the device ->
                  batched GPU augmentation making the crops -> bf16 autocast (channels_last) ->
                  the method's step, optimiser, EMA / queue updates. The rate comes from the
                  Trainer's own metric events (one host sync every ``log_every`` steps): the
                  steps after the warm-up divided by the time between those events. The final
                  kNN evaluation and checkpoint (after the last step) are skipped.
* ``model_only``  the same method's ``training_step`` + backward + optimiser step +
                  ``after_optimizer_step`` on fixed crops already on the device (made once by our
                  GPU augmentation): no augmentation, no data. The compute ceiling, and the
                  like-for-like comparison with an anchor that is fed pre-made crops.
* ``lightly``     the anchor: lightly 1.6.0's building blocks assembled as in its examples
                  (``examples/pytorch/*.py``), in eager PyTorch, with the same bf16 autocast.

Benchmarks (GPU sizes; ``--small``, or a machine without CUDA, shrinks them to a smoke run:
ViT-Ti/16 at 32 px, ResNet-18 at 12 px, batch 4, narrow heads):

``dino_vits16``    DINO, ViT-S/16 (timm ``vit_small_patch16_224``), 2 x 224 px global + 6 x 96 px
                   local crops, batch 64, head 2048 hidden / 256 bottleneck / 65536 out.
                   Anchor: two timm ViT-S/16 (student, teacher), ``DINOProjectionHead``,
                   ``DINOLoss``, ``update_momentum`` (cosine 0.996 -> 1), the teacher sees the
                   two global crops only, one forward per crop (as lightly's example), AdamW.
                   The anchor is fed PRE-MADE crops already on the GPU: it EXCLUDES augmentation
                   and data loading (so ``model_only`` is its like-for-like counterpart; ``ours``
                   includes our augmentation). Issue target: 3x lightly (392 img/s on an H100).
``mae_vitb16``     MAE, ViT-B/16 at 224 px, mask ratio 0.75, decoder 512 wide x 8 blocks x 16
                   heads, batch 256. Anchor: ``MaskedVisionTransformerTIMM`` over timm
                   ``vit_base_patch16_224``, ``MAEDecoderTIMM`` (deprecated in 1.6.0 in favour of
                   ``MaskedVisionTransformerDecoderTIMM``; same layers), ``random_token_mask``,
                   ``repeat_token`` / ``set_at_index`` / ``get_at_index``, ``patchify``, MSE on the
                   masked patches (raw pixels; ours uses the paper's per-patch normalised target),
                   AdamW; PRE-MADE crops on the GPU (no augmentation, no loading). Issue target:
                   1.8x lightly (3,180 img/s on an H100). Also reports the FLOP utilisation.
``simmim_vitb16``  SimMIM, ViT-B/16 at 224 px, mask ratio 0.6 on 32 px mask patches, batch 256,
                   L1. Anchor: lightly's SimMIM example (``MaskedVisionTransformerTIMM`` with a
                   mask token, all tokens encoded, a Linear decoder to patch pixels on the masked
                   tokens, ``L1Loss``), masks from ``random_grid_token_mask`` (2 x 2 patches =
                   32 px cells), AdamW; PRE-MADE crops on the GPU. Issue target: 1.5x lightly.
ResNet methods     ``moco_v2``, ``byol``, ``simsiam``, ``barlow_twins``, ``swav``, ``moco_v1``,
                   ``moco_v3``: ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), 32 px,
                   batch 512, two views (SwAV: 2 x 32 px + 4 x 16 px crops on both sides), heads of
                   lightly's example widths on both sides. Anchor: lightly's standard END-TO-END
                   pipeline as ``bench/run.py``'s SimCLR: its transform for the method
                   (MoCoV2Transform, MoCoV1Transform, BYOLTransform, SimSiamTransform, SwaVTransform;
                   Gaussian blur off at 32 px on both sides) on the CPU in DataLoader workers
                   (PIL images from the same uint8 cache, pinned memory), its heads and losses,
                   ``update_momentum`` with ``cosine_schedule``, channels_last, bf16 autocast.
                   The anchor INCLUDES augmentation and loading, like ``ours``; it gets
                   ``workers x prefetch_factor`` extra warm-up steps so that the timed steps do
                   not just drain batches prefetched during the warm-up.
                   lightly has no MoCo v1 / v3 example: those anchors are its MoCo example with
                   the v1 head (one Linear to 128-d) / the v3 heads (MoCoProjectionHead with BN,
                   BYOLPredictionHead, symmetric NTXentLoss). The MoCo memory bank (NTXentLoss) is
                   moved to the GPU. Ours keeps its shuffling BN (bn_splits 8) for MoCo v1/v2,
                   which the anchor does not do.
                   Issue target: every method at least 1.5x lightly end to end.

Sources: the ResNet benches use bench/run.py's ``make_data`` (synthetic uint8 32 px images, or
CIFAR-10 with ``--data``); the ViT benches synthetic uint8 256 px images (``--vit-data`` loads a
folder at 256 px), from which our augmentation makes the crops.

Optimisers: ours uses the optimiser of its own recipe for the method (LARS for BYOL, Barlow
Twins, SwAV, MoCo v3; SGD for MoCo v1/v2, SimSiam; AdamW for the ViTs; AdamW / SGD fused on
CUDA), the anchor the one of lightly's example (SGD momentum 0.9 / AdamW / Adam, PyTorch's
default foreach implementation); both are recorded in the JSON. No gradient clipping on either
side (lightly's examples have none). Nothing is compiled on the anchor side; ``--compile``
compiles ours only (give it more ``--warmup`` and ``--bench-timeout``).

Output: OUT/<bench>-<cuda|cpu>[-compiled].json per benchmark (device name, torch / timm / lightly
versions, batch, crops, precision, images/s, peak memory, ratios ours / lightly and
model_only / lightly, the issue's target and whether it is met, FLOPs per image and FLOP
utilisation against the card's dense bf16 peak where known) and one JSON line on stdout each.
A benchmark that fails (out of memory, time limit) records its error and the others still
run; without lightly the anchor is recorded as skipped. Each benchmark has a time limit and
the whole run a time budget (``--bench-timeout``, ``--budget-s``): benchmarks that would start
after the budget are recorded as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

_T_START = time.monotonic()  # the run's time budget counts from here, before torch is imported

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench.run import _time, device_name, make_data  # noqa: E402  (the SimCLR bench: reused, not copied)

from engine import events as ev  # noqa: E402
from engine.compiling import MODES, Compiled, compile_units  # noqa: E402
from engine.config import validate_config  # noqa: E402
from engine.data import DataSplits, ImageSet  # noqa: E402

# dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name fragment, first match wins
_PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (HBM3)
    ("A100", 312.0),
]


def peak_bf16_tflops(name: str) -> float | None:
    up = name.upper()
    for frag, peak in _PEAK_BF16_TFLOPS:
        if frag in up:
            return peak
    return None


class BenchTimeout(BaseException):
    """Raised by the per-benchmark alarm (a BaseException: library ``except Exception`` blocks
    cannot swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise BenchTimeout in the main thread after ``seconds`` (no-op when None/0 or off the main thread)."""
    if (not seconds or seconds <= 0 or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def _alarm(signum, frame):
        raise BenchTimeout(f"time limit of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ============================================================================ specs
@dataclass
class Spec:
    name: str
    method: str
    kind: str  # "vit" | "resnet"
    title: str
    batch: int
    global_crops: dict
    local_crops: dict | None
    params: dict
    small_params: dict
    aug: dict
    optim: dict
    target: float
    target_on: tuple[str, ...]  # ratios the issue's target is checked on
    issue: str
    anchor: str  # what the anchor includes / excludes
    lightly_optimizer: str
    model: dict = field(default_factory=dict)
    reference_lightly_images_per_s: float | None = None
    notes: list[str] = field(default_factory=list)


_NO_COLOUR = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}
_PREMADE = ("pre-made crops already on the device (made once by our GPU augmentation, NCHW): EXCLUDES "
            "augmentation and data loading; includes forward, loss, backward, optimiser step and "
            "EMA updates, as lightly's example loop")
_E2E = ("lightly's end-to-end pipeline: its CPU transform in DataLoader workers on PIL images of the "
        "same uint8 cache, pinned host->device copies, channels_last, bf16 autocast, forward, loss, "
        "backward, optimiser step, momentum updates: INCLUDES augmentation and loading")
_RESNET_MODEL = {"arch": "resnet18", "cifar_stem": True}
_SGD = {"optimizer": "sgd", "lr": 0.06, "scale_lr": False, "weight_decay": 5e-4, "momentum": 0.9,
        "exclude_bias_norm": False}
_BYOL_AUG = {"jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "gray_p": 0.2,
             "blur_p": 0.0, "solarize_p": [0.0, 0.2]}
_MOCO_AUG = {"jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "gray_p": 0.2,
             "blur_p": 0.0, "solarize_p": 0.0}
_RESNET_TARGET = "every method at least 1.5x lightly end to end"

SPECS: dict[str, Spec] = {s.name: s for s in [
    Spec(
        name="dino_vits16", method="dino", kind="vit",
        title="DINO ViT-S/16, 2x224 + 6x96 crops",
        batch=64,
        global_crops={"count": 2, "size": 224, "scale": [0.4, 1.0]},
        local_crops={"count": 6, "size": 96, "scale": [0.05, 0.4]},
        model={"arch": "vit_small", "patch_size": 16, "drop_path": 0.0},
        params={"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256, "head_layers": 3,
                "norm_last_layer": True, "freeze_last_layer": 0, "momentum_teacher": 0.996},
        small_params={"out_dim": 1024, "hidden_dim": 256, "bottleneck_dim": 64},
        aug={"jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "gray_p": 0.2,
             "blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]},
        optim={"optimizer": "adamw", "lr": 5e-4, "scale_lr": True, "warmup_epochs": 0, "weight_decay": 0.04,
               "weight_decay_end": 0.4, "clip_grad": 0.0},
        target=3.0, target_on=("model_only", "ours"),
        issue="lightly reached 392 images/s on an H100 with pre-made crops on the GPU (about 5% of "
              "the card's bf16 peak), so aim for at least 3x that",
        reference_lightly_images_per_s=392.0,
        anchor=_PREMADE, lightly_optimizer="AdamW (lr 5e-4 x batch/256, foreach)",
        notes=["no gradient clipping on either side (lightly's example has none)",
               "last layer not frozen on either side (ours freeze_last_layer 0, lightly freeze_last_layer -1)"],
    ),
    Spec(
        name="mae_vitb16", method="mae", kind="vit",
        title="MAE ViT-B/16 224 px, mask 0.75, decoder 512x8x16",
        batch=256,
        global_crops={"count": 1, "size": 224, "scale": [0.2, 1.0]}, local_crops=None,
        model={"arch": "vit_base", "patch_size": 16, "drop_path": 0.0},
        params={"mask_ratio": 0.75, "decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16,
                "norm_pix_loss": True},
        small_params={"decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4},
        aug={"hflip_p": 0.5, **_NO_COLOUR},
        optim={"optimizer": "adamw", "lr": 1.5e-4, "scale_lr": True, "warmup_epochs": 0, "weight_decay": 0.05,
               "betas": [0.9, 0.95], "clip_grad": 0.0},
        target=1.8, target_on=("model_only", "ours"),
        issue="lightly 1.6.0's MAE reached 3,180 images/s on an H100; reach at least 1.8x lightly and "
              "report FLOP utilisation",
        reference_lightly_images_per_s=3180.0,
        anchor=_PREMADE, lightly_optimizer="AdamW (lr 1.5e-4 x batch/256, betas 0.9/0.95, wd 0.05, foreach)",
        notes=["ours: per-patch normalised target (norm_pix_loss, the paper); lightly's example: raw pixels",
               "lightly's decoder predicts the masked tokens only; ours predicts every token (MAE's code)"],
    ),
    Spec(
        name="simmim_vitb16", method="simmim", kind="vit",
        title="SimMIM ViT-B/16 224 px, mask 0.6 of 32 px mask patches, L1",
        batch=256,
        global_crops={"count": 1, "size": 224, "scale": [0.67, 1.0]}, local_crops=None,
        model={"arch": "vit_base", "patch_size": 16, "drop_path": 0.0},
        params={"mask_ratio": 0.6, "mask_patch": 32},
        small_params={},
        aug={"hflip_p": 0.5, **_NO_COLOUR},
        optim={"optimizer": "adamw", "lr": 1e-4, "scale_lr": True, "warmup_epochs": 0, "weight_decay": 0.05,
               "betas": [0.9, 0.999], "clip_grad": 0.0},
        target=1.5, target_on=("model_only", "ours"),
        issue="at least 1.5x lightly's SimMIM at the same settings",
        anchor=_PREMADE, lightly_optimizer="AdamW (lr 1e-4 x batch/256, wd 0.05, foreach)",
        notes=["ours: 1x1 conv + PixelShuffle head on every patch, L1 on masked pixels (SimMIM's code); "
               "lightly's example: Linear decoder on the masked tokens only"],
    ),
    Spec(
        name="moco_v2", method="moco_v2", kind="resnet",
        title="MoCo v2 ResNet-18 CIFAR stem 32 px, 2 views, queue 4096",
        batch=512, global_crops={"count": 2, "size": 32, "scale": [0.2, 1.0]}, local_crops=None,
        model=_RESNET_MODEL,
        params={"queue_size": 4096, "momentum": 0.99, "temperature": 0.2, "proj_layers": 2, "proj_hidden": 512,
                "proj_out": 128, "bn_splits": 8, "symmetric": False},
        small_params={}, aug=_MOCO_AUG, optim=_SGD,
        target=1.5, target_on=("ours",), issue=_RESNET_TARGET, anchor=_E2E,
        lightly_optimizer="SGD (lr 0.06, momentum 0.9, wd 5e-4)",
        notes=["anchor: lightly's MoCo example (MoCoProjectionHead(512, 512, 128), NTXentLoss memory bank "
               "(4096, 128) moved to the device, MoCoV2Transform); ours additionally does shuffling BN "
               "(bn_splits 8), which the anchor does not"],
    ),
    Spec(
        name="byol", method="byol", kind="resnet",
        title="BYOL ResNet-18 CIFAR stem 32 px, 2 views, heads 1024/256",
        batch=512, global_crops={"count": 2, "size": 32, "scale": [0.08, 1.0]}, local_crops=None,
        model=_RESNET_MODEL,
        params={"proj_hidden": 1024, "proj_out": 256, "pred_hidden": 1024, "momentum": 0.996},
        small_params={"proj_hidden": 256, "pred_hidden": 256}, aug=_BYOL_AUG,
        optim={"optimizer": "lars", "lr": 1.0, "scale_lr": True, "warmup_epochs": 0, "weight_decay": 1e-5},
        target=1.5, target_on=("ours",), issue=_RESNET_TARGET, anchor=_E2E,
        lightly_optimizer="SGD (lr 0.06, momentum 0.9, wd 5e-4)",
        notes=["anchor: lightly's BYOL example (BYOLProjectionHead(512, 1024, 256), "
               "BYOLPredictionHead(256, 1024, 256), NegativeCosineSimilarity, BYOLTransform)"],
    ),
    Spec(
        name="simsiam", method="simsiam", kind="resnet",
        title="SimSiam ResNet-18 CIFAR stem 32 px, 2 views, heads 512/128/64",
        batch=512, global_crops={"count": 2, "size": 32, "scale": [0.2, 1.0]}, local_crops=None,
        model=_RESNET_MODEL,
        params={"proj_layers": 3, "proj_hidden": 512, "proj_out": 128, "pred_hidden": 64},
        small_params={}, aug=_MOCO_AUG,
        optim={"optimizer": "sgd", "lr": 0.03, "scale_lr": True, "warmup_epochs": 0, "weight_decay": 5e-4,
               "momentum": 0.9},
        target=1.5, target_on=("ours",), issue=_RESNET_TARGET, anchor=_E2E,
        lightly_optimizer="SGD (lr 0.06, momentum 0.9, wd 5e-4)",
        notes=["anchor: lightly's SimSiam example (SimSiamProjectionHead(512, 512, 128), "
               "SimSiamPredictionHead(128, 64, 128), NegativeCosineSimilarity, SimSiamTransform)"],
    ),
    Spec(
        name="barlow_twins", method="barlow_twins", kind="resnet",
        title="Barlow Twins ResNet-18 CIFAR stem 32 px, 2 views, projector 2048-2048-2048",
        batch=512, global_crops={"count": 2, "size": 32, "scale": [0.08, 1.0]}, local_crops=None,
        model=_RESNET_MODEL,
        params={"proj_layers": 3, "proj_hidden": 2048, "proj_out": 2048, "lambd": 0.0051},
        small_params={"proj_hidden": 256, "proj_out": 256}, aug=_BYOL_AUG,
        optim={"optimizer": "lars", "lr": 0.3, "scale_lr": True, "warmup_epochs": 0, "weight_decay": 1e-4},
        target=1.5, target_on=("ours",), issue=_RESNET_TARGET, anchor=_E2E,
        lightly_optimizer="SGD (lr 0.06, momentum 0.9, wd 5e-4)",
        notes=["anchor: lightly's Barlow Twins example (BarlowTwinsProjectionHead(512, 2048, 2048), "
               "BarlowTwinsLoss, BYOLTransform)"],
    ),
    Spec(
        name="swav", method="swav", kind="resnet",
        title="SwAV ResNet-18 CIFAR stem, 2x32 px + 4x16 px crops, 512 prototypes",
        batch=512, global_crops={"count": 2, "size": 32, "scale": [0.14, 1.0]},
        local_crops={"count": 4, "size": 16, "scale": [0.05, 0.14]},
        model=_RESNET_MODEL,
        params={"n_prototypes": 512, "proj_hidden": 512, "proj_out": 128, "queue_size": 0,
                "freeze_prototypes_iters": 0},
        small_params={"n_prototypes": 64},
        aug={"jitter_p": 0.8, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "gray_p": 0.2,
             "blur_p": 0.0, "solarize_p": 0.0},
        optim={"optimizer": "lars", "lr": 0.6, "scale_lr": True, "warmup_epochs": 0, "weight_decay": 1e-6,
               "lars_eta": 0.001},
        target=1.5, target_on=("ours",), issue=_RESNET_TARGET, anchor=_E2E,
        lightly_optimizer="Adam (lr 1e-3, as lightly's example)",
        notes=["anchor: lightly's SwAV example (SwaVProjectionHead(512, 512, 128), SwaVPrototypes(128, 512), "
               "SwaVLoss, SwaVTransform with crop sizes (32, 16), counts (2, 4)); one forward per crop as "
               "the example; no queue, prototypes not frozen on either side"],
    ),
    Spec(
        name="moco_v1", method="moco_v1", kind="resnet",
        title="MoCo v1 ResNet-18 CIFAR stem 32 px, 2 views, fc 128, queue 4096",
        batch=512, global_crops={"count": 2, "size": 32, "scale": [0.2, 1.0]}, local_crops=None,
        model=_RESNET_MODEL,
        params={"queue_size": 4096, "momentum": 0.99, "temperature": 0.07, "proj_layers": 1, "proj_out": 128,
                "bn_splits": 8, "symmetric": False},
        small_params={},
        aug={"jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.4, "gray_p": 0.2,
             "blur_p": 0.0, "solarize_p": 0.0},
        optim=_SGD,
        target=1.5, target_on=("ours",), issue=_RESNET_TARGET, anchor=_E2E,
        lightly_optimizer="SGD (lr 0.06, momentum 0.9, wd 5e-4)",
        notes=["lightly has no MoCo v1 example: its MoCo example with a single Linear(512, 128) head "
               "(ProjectionHead), NTXentLoss(0.07, memory bank (4096, 128)) and MoCoV1Transform; ours "
               "additionally does shuffling BN (bn_splits 8)"],
    ),
    Spec(
        name="moco_v3", method="moco_v3", kind="resnet",
        title="MoCo v3 (ResNet) ResNet-18 CIFAR stem 32 px, 2 views, heads 4096/256",
        batch=512, global_crops={"count": 2, "size": 32, "scale": [0.08, 1.0]}, local_crops=None,
        model=_RESNET_MODEL,
        params={"temperature": 1.0, "momentum": 0.99, "proj_layers": 2, "proj_hidden": 4096, "proj_out": 256,
                "pred_hidden": 4096},
        small_params={"proj_hidden": 256, "pred_hidden": 256}, aug=_BYOL_AUG,
        optim={"optimizer": "lars", "lr": 0.6, "scale_lr": True, "warmup_epochs": 0, "weight_decay": 1e-6},
        target=1.5, target_on=("ours",), issue=_RESNET_TARGET, anchor=_E2E,
        lightly_optimizer="SGD (lr 0.06, momentum 0.9, wd 5e-4)",
        notes=["lightly has no MoCo v3 example: its MoCo example with MoCoProjectionHead(512, 4096, 256, "
               "2 layers, BN), BYOLPredictionHead(256, 4096, 256), symmetric NTXentLoss(1.0) on the "
               "momentum keys, BYOLTransform"],
    ),
]}

BENCHES = list(SPECS)


# =========================================================================== helpers
def _dev(args) -> torch.device:
    return torch.device("cuda" if args.cuda else "cpu")


def _autocast_dtype(args):
    """As the Trainer: bf16 when asked, or 'auto' on CUDA; else None (fp32)."""
    if args.precision == "bf16" or (args.precision == "auto" and args.cuda):
        return torch.bfloat16
    return None


def _autocast(args):
    dtype = _autocast_dtype(args)
    return torch.autocast(_dev(args).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _free(args) -> None:
    if args.cuda:  # device memory back before the next part (a full collection costs ~0.3 s: CUDA only)
        gc.collect()
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _reset_peak(args) -> None:
    if args.cuda:
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(args) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.cuda else None


def count_flops(step: Callable[[], Any]) -> float:
    """FLOPs of one call of ``step`` (forward + backward; optimiser updates add none), counted
    by torch's FlopCounterMode (matmuls, convolutions, scaled-dot-product attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    return float(fc.get_total_flops())


def _timing(args, steps: int | None = None, warmup: int | None = None, batch: int | None = None):
    return SimpleNamespace(steps=steps or args.steps, warmup=args.warmup if warmup is None else warmup,
                           batch_size=batch)


def sizes(spec: Spec, args) -> dict:
    """Batch, crops, model and params of a spec, shrunk in small mode."""
    g = dict(spec.global_crops)
    loc = dict(spec.local_crops) if spec.local_crops else None
    params = dict(spec.params)
    model = dict(spec.model)
    batch = spec.batch
    if args.small:
        batch = args.small_batch
        params.update(spec.small_params)
        if spec.kind == "vit":
            model["arch"] = "vit_tiny"
            g["size"] = 32
            if loc:
                loc["size"] = 16
        else:
            g["size"] = 12
            if loc:
                loc["size"] = 8  # the config's smallest crop
    if args.batch_size:
        batch = args.batch_size
    src = (40 if args.small else 256) if spec.kind == "vit" else 32
    return {"batch": batch, "global": g, "local": loc, "params": params, "model": model, "source_size": src}


def our_config(spec: Spec, args, sz: dict, total_steps: int) -> dict:
    aug = {"global_crops": sz["global"], **spec.aug}
    aug["local_crops"] = sz["local"] or {"count": 0, "size": 8, "scale": [0.05, 0.4]}
    return {
        "method": spec.method,
        "params": sz["params"],
        "data": {"source": "shapes"},  # replaced by the DataSplits passed to the Trainer
        "model": sz["model"],
        "aug": aug,
        "optim": spec.optim,
        "train": {"steps": total_steps, "batch_size": sz["batch"], "device": "cuda" if args.cuda else "cpu",
                  "log_every": args.log_every, "eval_every": 10**9, "ckpt_every": 10**9,
                  "probe_every_s": 1e12, "compile": bool(args.compile), "precision": args.precision,
                  "channels_last": not args.no_channels_last,
                  "compile_mode": args.compile_mode},
    }


_DATA_CACHE: dict[tuple, DataSplits] = {}


def get_data(spec: Spec, args, sz: dict) -> DataSplits:
    """uint8 source images: the ResNet benches use bench/run.py's make_data (CIFAR-10 with --data,
    else synthetic 32 px); the ViT benches synthetic uint8 images (256 px; --vit-data loads a
    folder at that size)."""
    if spec.kind == "resnet":
        key = ("resnet", args.data, args.n_images)
        if key not in _DATA_CACHE:
            _DATA_CACHE[key] = make_data(args)
        return _DATA_CACHE[key]
    size = sz["source_size"]
    n = max(args.n_vit_images, sz["batch"])
    key = ("vit", args.vit_data, size, n)
    if key not in _DATA_CACHE:
        if args.vit_data:
            from engine.config import DataConfig
            from engine.data import load_dataset

            _DATA_CACHE[key] = load_dataset(DataConfig(source=args.vit_data, image_size=size,
                                                       cache_dir=args.cache_dir))
        else:
            dev = _dev(args)
            g = torch.Generator(device=dev).manual_seed(0)
            imgs = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g, device=dev).cpu()
            labels = torch.zeros(n, dtype=torch.long)
            s = ImageSet(images=imgs, labels=labels, classes=["0"])
            _DATA_CACHE[key] = DataSplits(train=s, test=None, name=f"synthetic{size}", source="synthetic", info={})
    return _DATA_CACHE[key]


# ===================================================================== ours (Trainer)
def run_ours(spec: Spec, args, data: DataSplits, sz: dict) -> dict:
    """The real Trainer end to end; rate from its StepMetrics events after the warm-up."""
    from engine.trainer import Trainer

    class _BenchTrainer(Trainer):
        def _final_save_and_eval(self) -> None:  # after the timed steps: not part of the measurement
            pass

    marks: list[tuple[int, float]] = []
    fallback: list[str] = []

    def listen(e):
        if isinstance(e, ev.StepMetrics):
            marks.append((e.step, time.perf_counter()))
        elif isinstance(e, ev.RunWarning) and "torch.compile failed" in e.message:
            fallback.append(e.message)

    total = args.warmup + args.steps
    cfg = validate_config(our_config(spec, args, sz, total))
    _reset_peak(args)
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmp:
        t0 = time.perf_counter()
        tr = _BenchTrainer(cfg, Path(tmp) / "run", listeners=(listen,), data=data)
        tr.run()
        wall = time.perf_counter() - t0
    timed = [(s, t) for s, t in marks if s >= args.warmup]
    if len(timed) < 2:
        raise RuntimeError(f"too few metric events after the warm-up ({marks}); raise --steps")
    (s0, t0_), (s1, t1) = timed[0], timed[-1]
    ips = (s1 - s0) * sz["batch"] / (t1 - t0_)
    opt = spec.optim["optimizer"]
    return {"images_per_s": ips, "timed_steps": s1 - s0, "wall_s": round(wall, 2), "peak_mem_gb": _peak_gb(args),
            "log_every": args.log_every, "optimizer": opt + (" (fused)" if args.cuda and opt != "lars" else ""),
            **({"compile_fallback": " | ".join(dict.fromkeys(fallback))} if fallback else {}),
            **({"compiled_units": unit_counts(tr.compiled)} if tr.compiled.modules else {})}


# ======================================================================= model_only
def run_model_only(spec: Spec, args, data: DataSplits, sz: dict) -> dict:
    """Our method's step (forward, backward, optimiser, EMA / queue) on fixed crops on the device."""
    from engine.augment import GPUAugment
    from engine.config import total_steps
    from engine.methods import create_method
    from engine.methods.base import Batch
    from engine.optim import build_optimizer, peak_lr

    dev = _dev(args)
    cfg = validate_config(our_config(spec, args, sz, args.warmup + args.steps + 1))
    img = data.image_size
    m = create_method(cfg, cfg.aug.global_crops.size or img).to(dev)
    m.setup(*total_steps(cfg, len(data.train)))
    cuda = args.cuda
    if cuda and cfg.train.channels_last:
        m.to(memory_format=torch.channels_last)
    compiled = Compiled(compile_units(m) if cuda and args.compile else [], args.compile_mode)
    compiled.compile()
    fallback: list[str] = []
    opt = build_optimizer(m, m.param_groups(), cfg.optim, peak_lr(cfg.optim, sz["batch"]), dev)
    x = data.train.images[: sz["batch"]].to(dev)
    aug = GPUAugment(cfg.aug, img)
    views = aug(x, generator=torch.Generator(device=dev).manual_seed(1))
    if cuda and cfg.train.channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    batch = Batch(views=views, images=x, n_global=aug.n_global)
    it = [0]

    def forward_backward():
        with _autocast(args):
            out = m.training_step(batch, it[0])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()

    def step():
        compiled.guard(forward_backward, fallback.append)
        opt.step()
        m.after_optimizer_step(it[0])
        it[0] += 1

    _reset_peak(args)
    ips = _time(step, _timing(args, batch=sz["batch"]), cuda)
    res = {"images_per_s": ips, "peak_mem_gb": _peak_gb(args), **({"compile_fallback": " | ".join(dict.fromkeys(fallback))} if fallback else {}),
           **({"compiled_units": unit_counts(compiled)} if compiled.modules else {})}
    res.update(_flops_of(step, sz["batch"], args))
    return res


def unit_counts(compiled: Compiled) -> dict[str, dict[str, int]]:
    """What train.compile compiled, by class: {class: {"units": n, "still_compiled": k}} (k < n
    where the compiler failed for that class and it fell back to eager)."""
    out: dict[str, dict[str, int]] = {}
    for m in compiled.modules:
        row = out.setdefault(type(m).__name__, {"units": 0, "still_compiled": 0})
        row["units"] += 1
        row["still_compiled"] += m._compiled_call_impl is not None
    return out


def _flops_of(step, batch: int, args) -> dict:
    if args.no_flops:
        return {}
    try:
        return {"flops_per_image": count_flops(step) / batch}
    except Exception as e:  # noqa: BLE001 - FLOP counting is a bonus; never lose the timing for it
        return {"flops_error": f"{type(e).__name__}: {e}"}


# ========================================================================== lightly
def _lightly_missing() -> str | None:
    try:
        importlib.import_module("lightly")
        importlib.import_module("lightly.models.utils")
    except ImportError as e:
        return f"lightly not installed ({e}); pip install -e '.[bench]'"
    except Exception as e:  # noqa: BLE001 - e.g. an incompatible dependency: still a recorded skip
        return f"lightly not importable ({type(e).__name__}: {e})"
    return None


def _lightly_resnet18() -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem, as bench/run.py's anchor (fc -> Identity:
    the same as lightly's ``nn.Sequential(*list(resnet.children())[:-1])`` plus flatten)."""
    import torchvision

    bb = torchvision.models.resnet18()
    bb.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    bb.maxpool = nn.Identity()
    bb.fc = nn.Identity()
    return bb


@dataclass
class Anchor:
    """One lightly example's model and loop body: ``pre(i)`` (momentum updates, prototype
    normalisation, before the forward as in the examples), ``loss(views, i)`` (under autocast),
    ``post(i)`` (between backward and the optimiser step), ``optimizer``."""

    model: nn.Module
    loss: Callable[[list[torch.Tensor], int], torch.Tensor]
    optimizer: torch.optim.Optimizer
    pre: Callable[[int], None] = lambda i: None
    post: Callable[[int], None] = lambda i: None
    transform: Any = None
    channels_last: bool = False


class _Momentum(nn.Module):
    """The shape shared by lightly's MoCo / BYOL / SimSiam / Barlow Twins examples: backbone,
    projection head, optional prediction head, optional momentum copies (no gradients)."""

    def __init__(self, projection_head: nn.Module, prediction_head: nn.Module | None = None,
                 momentum: bool = False) -> None:
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = _lightly_resnet18()
        self.projection_head = projection_head
        self.prediction_head = prediction_head
        if momentum:
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        return self.prediction_head(z) if self.prediction_head is not None else z

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def update(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)


def _momentum_pre(model: _Momentum, total: int, start: float):
    from lightly.utils.scheduler import cosine_schedule

    def pre(i: int) -> None:
        model.update(cosine_schedule(i, total, start, 1.0))

    return pre


def _sgd(model: nn.Module):
    return torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)


def lightly_anchor(spec: Spec, args, sz: dict, total: int, dev: torch.device) -> Anchor:
    from lightly.models.modules import heads as H
    from lightly.models.utils import deactivate_requires_grad
    import timm
    from lightly.models import utils
    from lightly.models.modules import MaskedVisionTransformerTIMM

    name, p, bs = spec.name, sz["params"], sz["batch"]
    g = sz["global"]
    if name == "dino_vits16":
        from lightly.loss import DINOLoss
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        timm_name = "vit_tiny_patch16_224" if args.small else "vit_small_patch16_224"

        class DINO(nn.Module):  # lightly's examples/pytorch/dino.py, with a timm ViT-S/16
            def __init__(self):
                super().__init__()
                backbone = timm.create_model(timm_name, img_size=g["size"], num_classes=0, dynamic_img_size=True)
                d = backbone.embed_dim
                self.student_backbone = backbone
                self.student_head = H.DINOProjectionHead(d, p["hidden_dim"], p["bottleneck_dim"], p["out_dim"],
                                                         freeze_last_layer=-1)
                self.teacher_backbone = copy.deepcopy(backbone)
                self.teacher_head = H.DINOProjectionHead(d, p["hidden_dim"], p["bottleneck_dim"], p["out_dim"])
                deactivate_requires_grad(self.teacher_backbone)
                deactivate_requires_grad(self.teacher_head)

            def forward(self, x):
                return self.student_head(self.student_backbone(x).flatten(start_dim=1))

            def forward_teacher(self, x):
                return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))

        model = DINO().to(dev)
        crit = DINOLoss(output_dim=p["out_dim"], warmup_teacher_temp=0.04, teacher_temp=0.07,
                        warmup_teacher_temp_epochs=30).to(dev)

        def pre(i):
            m = cosine_schedule(i, total, 0.996, 1.0)
            update_momentum(model.student_backbone, model.teacher_backbone, m=m)
            update_momentum(model.student_head, model.teacher_head, m=m)

        def loss(views, i):
            teacher_out = [model.forward_teacher(v) for v in views[:2]]
            student_out = [model(v) for v in views]
            return crit(teacher_out, student_out, epoch=0)

        def post(i):
            model.student_head.cancel_last_layer_gradients(current_epoch=0)

        opt = torch.optim.AdamW(model.parameters(), lr=5e-4 * bs / 256, weight_decay=0.04)
        return Anchor(model, loss, opt, pre=pre, post=post)

    if name == "mae_vitb16":

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MAEDecoderTIMM is deprecated in 1.6.0 (same layers as its successor)
            from lightly.models.modules import MAEDecoderTIMM

        timm_name = "vit_tiny_patch16_224" if args.small else "vit_base_patch16_224"

        class MAE(nn.Module):  # lightly's examples/pytorch/mae.py with a ViT-B/16 and the paper's decoder
            def __init__(self, vit):
                super().__init__()
                self.mask_ratio = p["mask_ratio"]
                self.patch_size = vit.patch_embed.patch_size[0]
                self.backbone = MaskedVisionTransformerTIMM(vit=vit)
                self.sequence_length = self.backbone.sequence_length
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.decoder = MAEDecoderTIMM(
                        num_patches=vit.patch_embed.num_patches, patch_size=self.patch_size,
                        embed_dim=vit.embed_dim, decoder_embed_dim=p["decoder_dim"],
                        decoder_depth=p["decoder_depth"], decoder_num_heads=p["decoder_heads"],
                        mlp_ratio=4.0, proj_drop_rate=0.0, attn_drop_rate=0.0)

            def forward_encoder(self, images, idx_keep=None):
                return self.backbone.encode(images=images, idx_keep=idx_keep)

            def forward_decoder(self, x_encoded, idx_keep, idx_mask):
                batch_size = x_encoded.shape[0]
                x_decode = self.decoder.embed(x_encoded)
                x_masked = utils.repeat_token(self.decoder.mask_token, (batch_size, self.sequence_length))
                x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
                x_decoded = self.decoder.decode(x_masked)
                x_pred = utils.get_at_index(x_decoded, idx_mask)
                return self.decoder.predict(x_pred)

            def forward(self, images):
                batch_size = images.shape[0]
                idx_keep, idx_mask = utils.random_token_mask(
                    size=(batch_size, self.sequence_length), mask_ratio=self.mask_ratio, device=images.device)
                x_encoded = self.forward_encoder(images=images, idx_keep=idx_keep)
                x_pred = self.forward_decoder(x_encoded=x_encoded, idx_keep=idx_keep, idx_mask=idx_mask)
                patches = utils.patchify(images, self.patch_size)
                target = utils.get_at_index(patches, idx_mask - 1)  # no class token in the patches
                return x_pred, target

        vit = timm.create_model(timm_name, img_size=g["size"], num_classes=0)
        model = MAE(vit).to(dev)
        crit = nn.MSELoss()

        def loss(views, i):
            x_pred, target = model(views[0])
            return crit(x_pred, target)

        opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4 * bs / 256, betas=(0.9, 0.95), weight_decay=0.05)
        return Anchor(model, loss, opt)

    if name == "simmim_vitb16":

        timm_name = "vit_tiny_patch16_224" if args.small else "vit_base_patch16_224"

        class SimMIM(nn.Module):  # lightly's examples/pytorch/simmim.py, 32 px mask patches
            def __init__(self, vit):
                super().__init__()
                decoder_dim = vit.embed_dim
                self.mask_ratio = p["mask_ratio"]
                self.patch_size = vit.patch_embed.patch_size[0]
                self.sequence_length = vit.patch_embed.num_patches + vit.num_prefix_tokens
                mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
                torch.nn.init.normal_(mask_token, std=0.02)
                self.backbone = MaskedVisionTransformerTIMM(vit=vit, mask_token=mask_token)
                self.decoder = nn.Linear(decoder_dim, self.patch_size**2 * 3)  # a simple linear layer
                self.cell = p["mask_patch"] // self.patch_size  # 32 px mask patches = 2 x 2 ViT patches

            def forward(self, images):
                batch_size = images.shape[0]
                _, idx_mask = utils.random_grid_token_mask(
                    size=(batch_size, self.sequence_length), mask_ratio=self.mask_ratio, grid_size=self.cell,
                    num_prefix_tokens=1, device=images.device)
                x_encoded = self.backbone.encode(images=images, idx_mask=idx_mask)  # every token encoded
                x_encoded_masked = utils.get_at_index(x_encoded, idx_mask)
                x_out = self.decoder(x_encoded_masked)
                patches = utils.patchify(images, self.patch_size)
                target = utils.get_at_index(patches, idx_mask - 1)
                return x_out, target

        vit = timm.create_model(timm_name, img_size=g["size"], num_classes=0)
        model = SimMIM(vit).to(dev)
        crit = nn.L1Loss()

        def loss(views, i):
            x_out, target = model(views[0])
            return crit(x_out, target)

        opt = torch.optim.AdamW(model.parameters(), lr=1e-4 * bs / 256, weight_decay=0.05)
        return Anchor(model, loss, opt)

    # ------------------------------------------------------------- ResNet-18, 32 px
    from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, SwaVLoss
    from lightly.transforms import (BYOLTransform, BYOLView1Transform, BYOLView2Transform, MoCoV1Transform,
                                    MoCoV2Transform, SimSiamTransform, SwaVTransform)

    s = g["size"]

    def byol_transform():
        return BYOLTransform(view_1_transform=BYOLView1Transform(input_size=s, gaussian_blur=0.0),
                             view_2_transform=BYOLView2Transform(input_size=s, gaussian_blur=0.0))

    if name in ("moco_v2", "moco_v1"):
        if name == "moco_v2":
            head = H.MoCoProjectionHead(512, p["proj_hidden"], p["proj_out"])
            transform = MoCoV2Transform(input_size=s, gaussian_blur=0.0)
        else:
            head = H.ProjectionHead([(512, p["proj_out"], None, None)])  # v1: the fc to 128-d
            transform = MoCoV1Transform(input_size=s)
        model = _Momentum(head, momentum=True).to(dev)
        crit = NTXentLoss(temperature=p["temperature"], memory_bank_size=(p["queue_size"], p["proj_out"])).to(dev)

        def loss(views, i):
            query = model(views[0])
            key = model.forward_momentum(views[1])
            return crit(query, key)

        return Anchor(model, loss, _sgd(model), pre=_momentum_pre(model, total, 0.996), transform=transform,
                      channels_last=True)

    if name == "moco_v3":
        model = _Momentum(H.MoCoProjectionHead(512, p["proj_hidden"], p["proj_out"], num_layers=2, batch_norm=True),
                          H.BYOLPredictionHead(p["proj_out"], p["pred_hidden"], p["proj_out"]), momentum=True).to(dev)
        crit = NTXentLoss(temperature=p["temperature"])

        def loss(views, i):
            x0, x1 = views
            q0, q1 = model(x0), model(x1)
            k0, k1 = model.forward_momentum(x0), model.forward_momentum(x1)
            return crit(q0, k1) + crit(q1, k0)

        return Anchor(model, loss, _sgd(model), pre=_momentum_pre(model, total, p["momentum"]),
                      transform=byol_transform(), channels_last=True)

    if name == "byol":
        model = _Momentum(H.BYOLProjectionHead(512, p["proj_hidden"], p["proj_out"]),
                          H.BYOLPredictionHead(p["proj_out"], p["pred_hidden"], p["proj_out"]), momentum=True).to(dev)
        crit = NegativeCosineSimilarity()

        def loss(views, i):
            x0, x1 = views
            p0, z0 = model(x0), model.forward_momentum(x0)
            p1, z1 = model(x1), model.forward_momentum(x1)
            return 0.5 * (crit(p0, z1) + crit(p1, z0))

        return Anchor(model, loss, _sgd(model), pre=_momentum_pre(model, total, 0.996), transform=byol_transform(),
                      channels_last=True)

    if name == "simsiam":
        model = _Momentum(H.SimSiamProjectionHead(512, p["proj_hidden"], p["proj_out"]),
                          H.SimSiamPredictionHead(p["proj_out"], p["pred_hidden"], p["proj_out"])).to(dev)
        crit = NegativeCosineSimilarity()

        def fwd(x):  # lightly's SimSiam.forward: (z.detach(), p)
            z = model.projection_head(model.backbone(x).flatten(start_dim=1))
            return z.detach(), model.prediction_head(z)

        def loss(views, i):
            z0, p0 = fwd(views[0])
            z1, p1 = fwd(views[1])
            return 0.5 * (crit(z0, p1) + crit(z1, p0))

        return Anchor(model, loss, _sgd(model), transform=SimSiamTransform(input_size=s, gaussian_blur=0.0),
                      channels_last=True)

    if name == "barlow_twins":
        model = _Momentum(H.BarlowTwinsProjectionHead(512, p["proj_hidden"], p["proj_out"])).to(dev)
        crit = BarlowTwinsLoss()

        def loss(views, i):
            return crit(model(views[0]), model(views[1]))

        return Anchor(model, loss, _sgd(model), transform=byol_transform(), channels_last=True)

    if name == "swav":
        class SwaV(nn.Module):  # lightly's examples/pytorch/swav.py
            def __init__(self):
                super().__init__()
                self.backbone = _lightly_resnet18()
                self.projection_head = H.SwaVProjectionHead(512, p["proj_hidden"], p["proj_out"])
                self.prototypes = H.SwaVPrototypes(p["proj_out"], n_prototypes=p["n_prototypes"])

            def forward(self, x):
                x = self.projection_head(self.backbone(x).flatten(start_dim=1))
                x = nn.functional.normalize(x, dim=1, p=2)
                return self.prototypes(x)

        model = SwaV().to(dev)
        crit = SwaVLoss()
        n_g = g["count"]
        loc = sz["local"]

        def pre(i):
            model.prototypes.normalize()

        def loss(views, i):
            feats = [model(v) for v in views]
            return crit(feats[:n_g], feats[n_g:])

        transform = SwaVTransform(crop_sizes=(s, loc["size"]), crop_counts=(n_g, loc["count"]),
                                  crop_min_scales=(g["scale"][0], loc["scale"][0]),
                                  crop_max_scales=(g["scale"][1], loc["scale"][1]), gaussian_blur=0.0)
        return Anchor(model, loss, torch.optim.Adam(model.parameters(), lr=1e-3), pre=pre, transform=transform,
                      channels_last=True)

    raise KeyError(name)


def run_lightly(spec: Spec, args, data: DataSplits, sz: dict) -> dict:
    """The anchor: pre-made crops on the device (ViT benches) or lightly's end-to-end pipeline."""
    missing = _lightly_missing()
    if missing:
        return {"skipped": missing}
    import lightly

    dev = _dev(args)
    cuda = args.cuda
    bs = sz["batch"]
    e2e = spec.kind == "resnet"
    warmup = args.warmup + (args.workers * args.prefetch_factor if e2e and args.workers > 0 else 0)
    # DataLoader workers deliver whole batches in waves of `workers`: time several waves (on CUDA)
    timed = max(args.steps, 6 * args.workers) if e2e and args.cuda and args.workers > 0 else args.steps
    total = warmup + timed + 2
    anchor = lightly_anchor(spec, args, sz, total, dev)
    model, opt = anchor.model, anchor.optimizer
    model.train()
    if cuda and anchor.channels_last:
        model.to(memory_format=torch.channels_last)

    if e2e:
        from PIL import Image

        images = data.train.images.permute(0, 2, 3, 1).contiguous().numpy()  # [N, H, W, 3] uint8
        transform = anchor.transform

        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                return transform(Image.fromarray(images[i]))

        loader = torch.utils.data.DataLoader(
            DS(), batch_size=bs, shuffle=True, drop_last=True, num_workers=args.workers, pin_memory=cuda,
            persistent_workers=args.workers > 0,
            prefetch_factor=args.prefetch_factor if args.workers > 0 else None,
            # fork (as bench/run.py gets by default on Linux before Python 3.14): DS is a local class
            multiprocessing_context="fork" if args.workers > 0 and sys.platform.startswith("linux") else None,
        )

        def batches():
            while True:
                yield from loader

        it = batches()

        def get_views():
            views = [v.to(dev, non_blocking=True) for v in next(it)]
            if cuda and anchor.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            return views
    else:
        from engine.augment import GPUAugment

        cfg = validate_config(our_config(spec, args, sz, 10))
        x = data.train.images[:bs].to(dev)
        fixed = [v.contiguous() for v in GPUAugment(cfg.aug, data.image_size)(
            x, generator=torch.Generator(device=dev).manual_seed(1))]
        del x

        def get_views():
            return fixed

    counter = [0]

    def step():
        i = counter[0]
        views = get_views()
        anchor.pre(i)
        with _autocast(args):
            loss = anchor.loss(views, i)
        loss.backward()
        anchor.post(i)
        opt.step()
        opt.zero_grad(set_to_none=True)
        counter[0] = i + 1

    _reset_peak(args)
    try:
        ips = _time(step, _timing(args, steps=timed, warmup=warmup, batch=bs), cuda)
        res = {"images_per_s": ips, "peak_mem_gb": _peak_gb(args), "lightly_version": lightly.__version__,
               "warmup_steps": warmup, "optimizer": spec.lightly_optimizer, "includes": spec.anchor}
        if e2e:
            res["workers"] = args.workers
        res.update(_flops_of(step, bs, args))
    finally:
        if e2e:
            del it, loader  # shut the workers down now
    return res


# ============================================================================ driver
PARTS = {"ours": run_ours, "model_only": run_model_only, "lightly": run_lightly}


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("timm", "torchvision", "lightly"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is just recorded
            out[mod] = None
    return out


def _host() -> dict:
    """CPU count and free /dev/shm (lightly's DataLoader workers hand batches over through it)."""
    out: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        out["dev_shm_free_gb"] = round(shutil.disk_usage("/dev/shm").free / 2**30, 2)
    return out


def result_path(args, name: str) -> Path:
    tag = "cuda" if args.cuda else "cpu"
    return Path(args.out) / f"{name}-{tag}{_compiled_tag(args)}.json"


def run_bench(name: str, args, parts: list[str] | None = None, timeout: float | None = None) -> dict:
    """One benchmark: its parts in turn (a failing part records its error), ratios, target,
    FLOP utilisation; writes OUT/<bench>-<device>.json atomically and returns the dict."""
    spec = SPECS[name]
    sz = sizes(spec, args)
    dev = _dev(args)
    dname = device_name(dev)
    result: dict[str, Any] = {
        "benchmark": name,
        "title": spec.title,
        "method": spec.method,
        "device": dname,
        "device_type": dev.type,
        "versions": _versions(),
        "host": _host(),
        "small": bool(args.small),
        "batch_size": sz["batch"],
        "crops": {"global": sz["global"], "local": sz["local"]},
        "model": sz["model"],
        "params": sz["params"],
        "precision": "bf16" if _autocast_dtype(args) is not None else "fp32",
        "channels_last": {"ours": bool(args.cuda and not args.no_channels_last),
                          "lightly": bool(args.cuda and spec.kind == "resnet")},
        "compile": bool(args.compile),
        "compile_mode": args.compile_mode if args.compile else None,
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_s_unit": "source images per second (each with all its crops)",
        "anchor": spec.anchor,
        "notes": spec.notes,
    }
    deadline = time.monotonic() + timeout if timeout else None
    data = None
    for part in parts or list(PARTS):
        t = time.monotonic()
        left = None if deadline is None else deadline - t
        if left is not None and left < min(3.0, 0.25 * timeout):
            result[part] = {"error": "not run: the benchmark's time limit was reached before this part"}
            continue
        try:
            with time_limit(left):
                if data is None:
                    data = get_data(spec, args, sz)
                    result["data"] = {"name": data.name, "n_images": len(data.train), "image_size": data.image_size}
                result[part] = PARTS[part](spec, args, data, sz)
        except BenchTimeout as e:
            result[part] = {"error": f"timeout: {e}"}
        except Exception as e:  # noqa: BLE001 - one failing part (OOM, ...) must not stop the rest
            tb = traceback.format_exc().strip().splitlines()
            result[part] = {"error": f"{type(e).__name__}: {str(e)[:500]}", "traceback": tb[-6:]}
        finally:
            _free(args)
        result[part]["seconds"] = round(time.monotonic() - t, 1)
        print(f"[{name}] {part} {json.dumps(result[part], default=str)[:400]}", file=sys.stderr, flush=True)

    def ips(part):
        v = result.get(part, {}).get("images_per_s")
        return v if isinstance(v, (int, float)) and v > 0 and math.isfinite(v) else None

    anchor = ips("lightly")
    for part in ("ours", "model_only"):
        if ips(part) and anchor:
            result[f"ratio_{part}_to_lightly"] = ips(part) / anchor
    met = {p: (result[f"ratio_{p}_to_lightly"] >= spec.target) if f"ratio_{p}_to_lightly" in result else None
           for p in spec.target_on}
    result["target"] = {"ratio": spec.target, "checked_on": [f"{p}/lightly" for p in spec.target_on],
                        "issue": spec.issue, "met": met,
                        "all_met": all(met.values()) if met and all(v is not None for v in met.values()) else None}
    if spec.reference_lightly_images_per_s:
        result["target"]["issue_lightly_images_per_s_h100"] = spec.reference_lightly_images_per_s

    # FLOP utilisation: images/s x FLOPs per image (one training step, forward + backward) / peak
    peak = peak_bf16_tflops(dname) if args.cuda else None
    ours_fpi = result.get("model_only", {}).get("flops_per_image")
    lightly_fpi = result.get("lightly", {}).get("flops_per_image")
    fl: dict[str, Any] = {"peak_bf16_tflops": peak, "flops_per_image_ours": ours_fpi,
                          "flops_per_image_lightly": lightly_fpi,
                          "counted_with": "torch.utils.flop_counter.FlopCounterMode on one training step "
                                          "(forward + backward); per source image"}
    if not args.cuda:
        fl["note"] = "CPU: scaled-dot-product attention is not counted on the CPU; smoke check only"
    for part, fpi in (("ours", ours_fpi), ("model_only", ours_fpi), ("lightly", lightly_fpi)):
        r = ips(part)
        fl[f"achieved_tflops_{part}"] = r * fpi / 1e12 if r and fpi else None
        fl[f"utilisation_{part}"] = r * fpi / (peak * 1e12) if r and fpi and peak else None
    result["flops"] = fl
    # ok: every part measured (an anchor skipped because lightly is missing does not count as a failure)
    result["ok"] = all(ips(p) for p in (parts or list(PARTS)) if not result.get(p, {}).get("skipped"))
    atomic_write_json(result_path(args, name), result)
    print(json.dumps(result, default=str), flush=True)
    return result


def _compiled_tag(args) -> str:
    """'' eager; '-compiled', or '-compiled-<mode>' for a mode other than the default; '-nchw'
    appended with --no-channels-last."""
    nchw = "-nchw" if getattr(args, "no_channels_last", False) else ""
    if not args.compile:
        return nchw
    return "-compiled" + ("" if args.compile_mode == "default" else f"-{args.compile_mode}") + nchw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="results folder (default: bench/results on CUDA; a temp folder in small mode)")
    p.add_argument("--only", nargs="*", choices=BENCHES, help="benchmarks to run (default: all)")
    p.add_argument("--parts", nargs="*", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--data", help="CIFAR-10 folder or .tar.gz for the ResNet benches (default: synthetic 32 px)")
    p.add_argument("--vit-data", help="image folder for the ViT benches, loaded at 256 px (default: synthetic)")
    p.add_argument("--cache-dir")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch-size", type=int, help="override every benchmark's batch size")
    p.add_argument("--steps", type=int, help="timed steps (default 30 on CUDA, 2 small)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 10 on CUDA, 1 small)")
    p.add_argument("--log-every", type=int, help="Trainer metric interval (default 10; 1 small)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                   help="lightly DataLoader workers (ResNet anchors)")
    p.add_argument("--prefetch-factor", type=int, default=2)
    p.add_argument("--n-images", type=int, default=50_000, help="synthetic 32 px images (ResNet benches)")
    p.add_argument("--n-vit-images", type=int, default=4096, help="synthetic 256 px images (ViT benches)")
    p.add_argument("--compile", action="store_true", help="torch.compile ours (not the anchor)")
    p.add_argument("--compile-mode", default="default", choices=MODES, help="torch.compile mode (with --compile)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--no-channels-last", action="store_true",
                   help="ours in NCHW (train.channels_last false), as lightly's ViT examples: for a ViT only "
                        "the patch embedding (and SimMIM's 1x1-conv decoder) see the layout")
    p.add_argument("--small", action="store_true", help="tiny sizes (also implied without CUDA)")
    p.add_argument("--small-batch", type=int, default=4)
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP counting step")
    p.add_argument("--bench-timeout", type=float,
                   help="seconds per ViT benchmark; ResNet ones get 0.6x (default 90 on CUDA, none small)")
    p.add_argument("--budget-s", type=float,
                   help="total seconds for the run from start-up; later benchmarks are skipped "
                        "(default 390 on CUDA, none small)")
    return p


def finish_args(args) -> argparse.Namespace:
    """Resolve device-dependent defaults (small mode without CUDA)."""
    args.cuda = args.device != "cpu" and torch.cuda.is_available()
    if args.device == "cuda" and not args.cuda:
        raise SystemExit("--device cuda: CUDA is not available here")
    args.small = bool(args.small or not args.cuda)
    args.steps = args.steps or (2 if args.small else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.small else 10)
    args.log_every = args.log_every or (1 if args.small else 10)
    args.log_every = max(1, min(args.log_every, args.steps))
    if args.small:
        args.n_images = min(args.n_images, 64)
        args.n_vit_images = min(args.n_vit_images, 16)
        args.workers = min(args.workers, 2)
    if args.bench_timeout is None:
        args.bench_timeout = 0.0 if args.small else 90.0
    if args.budget_s is None:
        args.budget_s = 0.0 if args.small else 390.0
    if not args.out:
        args.out = str(Path(tempfile.gettempdir()) / "bench-methods") if args.small else str(ROOT / "bench" / "results")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return finish_args(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cuda:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
    warnings.filterwarnings("ignore", message=".*weight_norm.*")
    print(f"bench/methods.py: {device_name(_dev(args))}, small={args.small}, steps={args.steps}, "
          f"warmup={args.warmup}, out={args.out}", file=sys.stderr, flush=True)
    names = args.only or BENCHES
    failed = 0
    combined: dict[str, Any] = {"device": device_name(_dev(args)), "torch": torch.__version__, "results": {}}
    tag = "cuda" if args.cuda else "cpu"
    combined_path = Path(args.out) / f"methods-{tag}{_compiled_tag(args)}.json"

    def keep(res: dict) -> None:  # one file with every benchmark so far: a device call returns few files
        combined["results"][res.get("benchmark", name)] = res
        with contextlib.suppress(Exception):
            atomic_write_json(combined_path, combined)

    for name in names:
        timeout = args.bench_timeout * (0.6 if SPECS[name].kind == "resnet" else 1.0) or None
        if args.budget_s:
            left = args.budget_s - (time.monotonic() - _T_START) - 5
            if left < 15:
                res = {"benchmark": name, "device": device_name(_dev(args)), "skipped": "out of the run's time budget"}
                atomic_write_json(result_path(args, name), res)
                keep(res)
                print(json.dumps(res), flush=True)
                failed += 1
                continue
            timeout = min(timeout, left) if timeout else left
        try:
            res = run_bench(name, args, parts=args.parts, timeout=timeout)
            keep({"benchmark": name, **res})
            failed += not res.get("ok")
        except BaseException as e:  # noqa: BLE001 - keep going with the other benchmarks
            if isinstance(e, KeyboardInterrupt):
                raise
            res = {"benchmark": name, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc().strip().splitlines()[-6:]}
            with contextlib.suppress(Exception):
                atomic_write_json(result_path(args, name), res)
            keep(res)
            print(json.dumps(res), flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
