"""Each method learns: a short CPU run on ``shapes`` raises kNN top-1 above chance and above
the untrained network with the same initial weights.

One shared recipe (32 px shapes, 2,000 training images, 500 queries, ResNet-18 without the
CIFAR stem, batch 64, crops of scale (0.4, 1), AdamW, one torch thread), one row per method
in ``RECIPES`` with the few settings that differ (smaller heads for CPU speed, steps, LR).
Measured numbers are in the row's comment (2-core machine, one thread per run).

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
from engine.methods import create_method
from engine.trainer import Trainer
from helpers import with_

CHANCE = 0.1

BASE = {
    "data": {"source": "shapes", "shapes_size": 32, "shapes_train": 2000, "shapes_test": 500},
    "model": {"arch": "resnet18", "cifar_stem": False},
    "aug": {"global_crops": {"count": 2, "size": 32, "scale": [0.4, 1.0]}},
    "optim": {"optimizer": "adamw", "lr": 2e-3, "scale_lr": False, "warmup_epochs": 0.5, "weight_decay": 1e-4},
    "train": {"batch_size": 64, "device": "cpu", "log_every": 10, "eval_every": 0, "ckpt_every": 100_000,
              "probe_every_s": 100_000},
    "eval": {"max_bank": 2000, "max_queries": 500},
}

# method -> (params, steps, extra dotted config, least kNN gain over the untrained network)
RECIPES: dict[str, tuple[dict, int, dict, float]] = {
    # measured: untrained 0.144 -> 0.232 after 100 steps, 0.254 after 150 (about a minute alone)
    "simclr": ({"temperature": 0.5, "proj_out": 128}, 120, {}, 0.05),
    # measured: 0.144 -> 0.196 after 250 steps (about 2 minutes alone); 0.194 after 300.
    # Paper queue / temperature scaled down: 256 keys (4 batches), T 0.2 (the paper's), EMA 0.99.
    "moco_v2": ({"queue_size": 256, "momentum": 0.99, "temperature": 0.2, "bn_splits": 2}, 250, {}, 0.025),
}


def learn(method: str, tmp_path) -> tuple[float, float, list[ev.Event]]:
    """(untrained kNN, trained kNN, events) of the method's recipe, on one thread."""
    params, steps, dotted, _ = RECIPES[method]
    cfg = validate_config(with_({**BASE, "method": method, "params": params}, **{"train.steps": steps, **dotted}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset(cfg.data)
        torch.manual_seed(cfg.train.seed)  # the trainer's seed: the same initial weights
        untrained, _, _ = knn_evaluate(create_method(cfg, 32), data, cfg, torch.device("cpu"))
        seen: list[ev.Event] = []
        t = time.time()
        Trainer(cfg, tmp_path / method, listeners=(seen.append,), data=data).run()
        print(f"{method}: {steps} steps in {time.time() - t:.0f} s")
    finally:
        torch.set_num_threads(threads)
    trained = [e for e in seen if isinstance(e, ev.Evaluation)][-1].knn_top1
    return untrained, trained, seen


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute alone; several on a loaded 2-core machine
@pytest.mark.parametrize("method", list(RECIPES))
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
