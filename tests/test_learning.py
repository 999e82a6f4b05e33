"""Each method learns: a short CPU run on ``shapes`` raises kNN top-1 above chance and above
the untrained network with the same initial weights.

One shared recipe (32 px shapes, 2,000 training images, 500 queries, ResNet-18 without the
CIFAR stem, batch 64, crops of scale (0.4, 1), AdamW, one torch thread), one row per method
in ``RECIPES`` with the few settings that differ (smaller heads for CPU speed, steps, LR).
Measured numbers are in the row's comment (2-core machine, one thread per run, evaluation
only at the end as here).

The recipe's colour augmentation is strong (hue 0.5, saturation 0.8, grayscale 0.5): in
``shapes`` the colour of a shape and of its background carry no class information, and with
the usual ImageNet strength (hue 0.1, grayscale 0.2) the non-contrastive methods matched
views by colour and left kNN at the untrained level within a few hundred steps (BYOL 300
steps: 0.156, SimSiam 0.158, Barlow Twins 0.136; with the strong jitter: 0.208, 0.182, 0.230).

Masked-image models use their own recipe (``MIM``: a micro ViT with 8 px patches, MAE's
optimiser settings) and are evaluated as the trainer does for them, on per-dimension
standardised features (``eval.standardize``).

kNN: weighted, k=200, t=0.1 (the project's defaults), memory bank = the 2,000 training
images, queries = the 500 test images; chance is 0.1 (10 balanced classes).
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from engine import events as ev
from engine.config import validate_config
from engine.data import load_dataset
from engine.evaluation import knn_evaluate
from engine.methods import create_method, get_method
from engine.trainer import Trainer
from helpers import with_  # also registers timm's vit_mim_micro

CHANCE = 0.1

BASE = {
    "data": {"source": "shapes", "shapes_size": 32, "shapes_train": 2000, "shapes_test": 500},
    "model": {"arch": "resnet18", "cifar_stem": False},
    "aug": {"global_crops": {"count": 2, "size": 32, "scale": [0.4, 1.0]}, "hue": 0.5, "saturation": 0.8,
            "gray_p": 0.5},
    "optim": {"optimizer": "adamw", "lr": 2e-3, "scale_lr": False, "warmup_epochs": 0.5, "weight_decay": 1e-4},
    "train": {"batch_size": 64, "device": "cpu", "log_every": 10, "eval_every": 10**6, "ckpt_every": 10**6,
              "probe_every_s": 100_000},
    "eval": {"max_bank": 2000, "max_queries": 500},
}

# Masked image modelling: the 4-block, 64-wide vit_mim_micro with 8 px patches (4 x 4 tokens
# at 32 px), one crop (0.2, 1) + flip, no colour jitter, AdamW betas (0.9, 0.95), wd 0.05 (MAE's
# recipe at CPU scale); kNN on standardised features (EvalConfig.standardize, on for these
# methods). With 4 px patches (8 x 8 tokens; a 6-block, 96-wide ViT) MAE stayed near the
# untrained level after 1,200 steps (standardised CLS 0.140 -> 0.146, mean token 0.140 -> 0.150).
# SimMIM learns less for kNN than MAE here: with MAE's crops (0.2, 1) and betas it stayed within
# noise (500 queries, one standard error about 0.016); with SimMIM's own crops (0.67, 1) and
# betas (0.9, 0.999) (its presets') it gains about 0.04, measured on 2,000 queries
# (5,000 training images; 2,000 steps: +0.029 and +0.043 with two seeds).
MIM = {"model.arch": "vit_mim_micro", "model.patch_size": 8, "aug.global_crops.count": 1,
       "aug.global_crops.scale": [0.2, 1.0], "aug.jitter_p": 0.0, "aug.gray_p": 0.0, "optim.lr": 1.5e-3,
       "optim.betas": [0.9, 0.95], "optim.weight_decay": 0.05, "optim.warmup_epochs": 1}
SIMMIM = {**MIM, "aug.global_crops.scale": [0.67, 1.0], "optim.betas": [0.9, 0.999],
          "data.shapes_train": 5000, "data.shapes_test": 2000, "eval.max_bank": 5000, "eval.max_queries": 2000}

# method -> (params, steps, extra dotted config, least kNN gain over the untrained network)
RECIPES: dict[str, tuple[dict, int, dict, float]] = {
    # measured 2026-11-27, fused CPU optimisers (untrained 0.144 for every row: the same ResNet-18
    # initial weights); the numbers before the optimisers were fused are in brackets
    "simclr": ({"temperature": 0.5, "proj_out": 128}, 100, {}, 0.05),  # 0.242 after 100 steps (0.228 with one BN batch per view)
    "moco_v1": ({"queue_size": 256, "momentum": 0.99, "temperature": 0.2, "symmetric": True,  # 0.236 / 150 (0.258)
                 "bn_splits": 2}, 150, {}, 0.05),
    "moco_v2": ({"queue_size": 256, "momentum": 0.99, "temperature": 0.2, "bn_splits": 2},  # 0.218 / 150 (0.200)
                150, {}, 0.025),
    "moco_v3": ({"proj_hidden": 512, "pred_hidden": 512, "proj_out": 128, "temperature": 0.5,  # 0.186 / 150 (0.190)
                 "momentum": 0.99}, 150, {"optim.lr": 1e-3}, 0.02),
    "barlow_twins": ({"proj_hidden": 512, "proj_out": 512, "lambd": 0.002}, 150,  # 0.198 / 150 (0.192)
                     {"optim.lr": 1e-3}, 0.02),
    "simsiam": ({"proj_hidden": 512, "proj_out": 512, "pred_hidden": 128, "proj_layers": 2}, 200,  # 0.206 / 200
                {"optim.optimizer": "sgd", "optim.lr": 0.03, "optim.weight_decay": 5e-4}, 0.025),
    "byol": ({"proj_hidden": 512, "pred_hidden": 512, "proj_out": 128, "momentum": 0.99}, 300,  # 0.206 / 300
             {"train.batch_size": 32, "optim.optimizer": "sgd", "optim.lr": 0.03, "optim.weight_decay": 5e-4}, 0.03),
    "swav": ({"n_prototypes": 30, "proj_hidden": 512, "proj_out": 128, "temperature": 0.2,  # 0.350 / 300 (0.302)
              "freeze_prototypes_iters": 31}, 300, {"optim.lr": 1e-3}, 0.05),
    "dino": ({"out_dim": 1024, "hidden_dim": 512, "bottleneck_dim": 128, "teacher_temp": 0.04,  # 0.200 / 300 (0.192)
              "warmup_teacher_temp_epochs": 0, "momentum_teacher": 0.99}, 300, {"optim.lr": 5e-4}, 0.02),
    # masked image modelling (untrained: the same micro-ViT weights, standardised kNN)
    "mae": ({"decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 4}, 1200, MIM, 0.04),  # 0.146 -> 0.218
    # kNN on the global token (embed_pool; the mean patch token: 0.116 -> 0.160); 1,200 steps: 0.176
    # the official init (Xavier, Q / K / V apart) makes the untrained network's kNN higher: 0.196
    # (timm's init: 0.132 -> 0.254); without the final norm on the decoders' path: 0.196 -> 0.230
    # segmentation at 1/4 resolution (the paper's stride 4; full resolution before: 0.196 -> 0.268)
    "multimae": ({"dec_dim": 64, "dec_heads": 4, "dec_depth": 1, "num_visible": 12}, 2400,  # 0.166 -> 0.292
                 {**MIM, "aug.global_crops.count": 0}, 0.05),
    # mean patch token; with timm's init, 4,000 steps: 0.113 -> 0.151 (seeds 1, 2: 0.096 -> 0.151,
    # 0.113 -> 0.145). SimMIM's ViT init (BEiT's, output projections / sqrt(2 l)): 0.114 -> 0.138
    # after 4,000 steps, 0.158 after 5,000, 0.149 after 6,000
    "simmim": ({"mask_ratio": 0.6, "mask_patch": 8}, 5000, SIMMIM, 0.02),  # 0.114 -> 0.158
    # 300 tokenizer steps, then 1,200 BEiT steps; kNN on the CLS token (embed_pool; the mean
    # patch token stayed at 0.116 -> 0.114)
    # BEiT's init (output projections / sqrt(2 l)): 0.114 -> 0.158 (timm's init: 0.128 -> 0.170)
    "beit": ({"mask_ratio": 0.4, "min_block": 2, "vocab_size": 256, "tokenizer_steps": 300}, 1500,
             MIM, 0.02),
}


def learn(method: str, tmp_path) -> tuple[float, float, list[ev.Event]]:
    """(untrained kNN, trained kNN, events) of the method's recipe, on one thread."""
    params, steps, dotted, _ = RECIPES[method]
    cfg = validate_config(with_({**BASE, "method": method, "params": params}, **{"train.steps": steps, **dotted}))
    untrained, trained, seen = train_and_evaluate(cfg, tmp_path / method)
    # the trainer's kNN protocol is the method's: standardised features for masked image modelling
    final = [e for e in seen if isinstance(e, ev.Evaluation)][-1]
    assert final.knn_standardized is (get_method(method).family == "masked image modelling")
    return untrained, trained, seen


def train_and_evaluate(cfg, run_dir) -> tuple[float, float, list[ev.Event]]:
    """(untrained kNN with the trainer's initial weights, trained kNN, events), on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset(cfg.data)
        torch.manual_seed(cfg.train.seed)  # the trainer's seed: the same initial weights
        untrained, _, _ = knn_evaluate(create_method(cfg, 32), data, cfg, torch.device("cpu"))
        seen: list[ev.Event] = []
        t = time.time()
        Trainer(cfg, run_dir, listeners=(seen.append,), data=data).run()
        print(f"{cfg.method}: {cfg.train.steps} steps in {time.time() - t:.0f} s")
    finally:
        torch.set_num_threads(threads)
    final = [e for e in seen if isinstance(e, ev.Evaluation)][-1]
    return untrained, final.knn_top1, seen


# In ``make test``: SimCLR only (issue 2's learning check, about 80 s of one core). The whole
# suite must stay under 5 minutes on 2 cores (issue 2 point 11): with MoCo v2 and MAE as well
# (another 160 s of one core) it took 5 min 19 s in CI. Every other row runs in
# ``make test-learning`` (--learning-extended); MoCo and MAE still show learning in ``make
# test`` on their pretext tasks (tests/test_moco.py, tests/test_mae.py).
IN_MAKE_TEST = ("simclr",)


@pytest.mark.slow
@pytest.mark.timeout(900)  # one to two minutes alone; several on a loaded 2-core machine
@pytest.mark.parametrize("method", [
    pytest.param(m, marks=() if m in IN_MAKE_TEST else pytest.mark.learning_extended) for m in RECIPES])
def test_short_run_beats_chance_and_the_untrained_network(method: str, tmp_path) -> None:
    untrained, trained, seen = learn(method, tmp_path)
    fin = seen[-1]
    assert isinstance(fin, ev.Finished) and fin.status == "completed", fin
    losses = [e.loss for e in seen if isinstance(e, ev.StepMetrics)]
    assert losses and all(math.isfinite(v) for v in losses)
    print(f"{method}: kNN untrained {untrained:.3f} -> trained {trained:.3f}")
    gain = RECIPES[method][3]
    assert trained >= untrained + gain, (untrained, trained)
    assert trained >= CHANCE + 2 * gain, (untrained, trained)


# The CIFAR presets' own optimiser recipes (LARS and its clipping, learning rates, weight decay)
# on the shared recipe above: heads narrowed for CPU speed, the warm-up shortened to 0.3 epochs,
# everything else from the preset. A recipe that cannot learn shows here before a GPU hour is
# spent: byol_cifar's LARS (lr 1.0 x B/256, eta 0.02) without solo-learn's clip_lr went below the
# untrained network, 0.144 -> 0.128 after 300 steps, as BYOL did on CIFAR-10 (10 epochs on an
# H200: 0.272 against the untrained 0.364); clipped: 0.192 (2026-11-28, one core, 190 s).
OPTIM_OVERRIDE: dict = {}  # a seam to check that the test fails without the recipe's fix
PRESET_ROWS: dict[str, tuple[dict, int, float]] = {
    "byol_cifar": ({"proj_hidden": 512, "pred_hidden": 512, "proj_out": 128}, 300, 0.015),
    "simclr_cifar": ({}, 150, 0.015),
    "moco_v2_cifar": ({"queue_size": 512, "bn_splits": 2}, 150, 0.015),
    # lambda about 1 / D for the narrowed 512-d head; the preset's unclipped LARS: 0.284, clipped
    # (solo-learn's clip_lr without its scale_loss 0.1): 0.128, below the untrained network
    "barlow_twins_cifar": ({"proj_hidden": 512, "proj_out": 512, "lambd": 0.002}, 150, 0.05),
    # lightly's benchmark recipe; solo-learn's (LARS clipped, EMA 0.9995, temp 0.04 -> 0.07): 0.172,
    # the loss at ln K (a uniform student) from step 70 on; the ViT preset's AdamW: 0.170, the same
    "dino_cifar_resnet18": ({"out_dim": 1024, "hidden_dim": 512}, 300, 0.05),
}


@pytest.mark.slow
@pytest.mark.learning_extended
@pytest.mark.timeout(900)
@pytest.mark.parametrize("preset", sorted(PRESET_ROWS))
def test_cifar_preset_recipe_beats_the_untrained_network(preset: str, tmp_path) -> None:
    from engine.presets import load_preset

    narrow, steps, gain = PRESET_ROWS[preset]
    p = load_preset(preset)
    optim = {**p["optim"], "warmup_epochs": 0.3, **OPTIM_OVERRIDE}
    raw = {**BASE, "method": p["method"], "params": {**p.get("params", {}), **narrow}, "optim": optim}
    cfg = validate_config(with_(raw, **{"train.steps": steps}))
    untrained, trained, _ = train_and_evaluate(cfg, tmp_path / preset)
    print(f"{preset}: kNN untrained {untrained:.3f} -> trained {trained:.3f}")
    assert trained >= untrained + gain, (untrained, trained)
