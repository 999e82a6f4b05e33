"""Accuracy on real data: CIFAR-10 kNN top-1 after the same number of epochs, method by method.

    python bench/cifar_accuracy.py --data cifar10.tar.gz [--methods simclr moco_v2 byol dino]
                                   [--epochs 20] [--batch-size 512] [--out bench/results]

Every method trains from its ``<method>_cifar`` preset with a ResNet-18 with CIFAR stem (DINO
too, as lightly's CIFAR-10 benchmark, from ``dino_cifar_resnet18``: that benchmark's ResNet
recipe, not the ViT preset's AdamW), batch 512, on the CIFAR-10 training split (50,000
images, uint8 cache on the device), for ``--epochs`` epochs; the warm-up lengths of the preset
(learning rate, DINO's teacher temperature) shrink in proportion to the shorter schedule.
Then the weighted kNN (k 200, t 0.1, lightly's protocol) of the backbone features: memory bank
= all 50,000 training images, queries = all 10,000 test images.

Writes OUT/cifar10-accuracy-<cuda|cpu>.json (device, epochs, kNN, wall time, images/s per
method, with lightly's published 200-epoch ResNet-18 figures beside them) and prints a Markdown
table for the README. lightly's figures come from its benchmark page (batch 512, 200 epochs);
a shorter budget is expected to reach less: the table says how many epochs each row had.
``--small`` (or no CUDA) is a smoke run on the embedded ``shapes`` data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import device_name  # noqa: E402
from bench.common import step_weighted_rate  # noqa: E402
from engine import events as ev  # noqa: E402
from engine.config import validate_config  # noqa: E402
from engine.fileio import atomic_write_text  # noqa: E402
from engine.presets import load_preset  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

# lightly's CIFAR-10 benchmark (docs: "Benchmarks", ResNet-18, batch 512, 200 epochs, kNN top-1)
LIGHTLY_200_EPOCHS = {"simclr": 0.848, "moco_v2": 0.847, "byol": 0.868, "dino": 0.813,
                      "simsiam": 0.764, "barlow_twins": 0.819, "swav": 0.842}


# lightly's CIFAR-10 benchmark recipe (docs/source/getting_started/benchmarks/cifar10_benchmark.py):
# every method with SGD lr 0.06 x batch / 128, momentum 0.9, weight decay 5e-4 on every parameter,
# cosine to 0 over the run, no warm-up, and the benchmark's heads. `--recipe lightly` trains
# ours with it, so that a short run can tell a method's own (paper / solo-learn) recipe, tuned for
# 200-1000 epochs with long warm-ups, from the method itself.
LIGHTLY_RECIPE_PARAMS = {
    "simclr": {"temperature": 0.5, "proj_layers": 2, "proj_hidden": 512, "proj_out": 128},
    "moco_v2": {"temperature": 0.1, "queue_size": 8192, "momentum": 0.99, "proj_layers": 2, "proj_hidden": 512,
                "proj_out": 128, "symmetric": True},
    "byol": {"proj_hidden": 1024, "proj_out": 256, "pred_hidden": 1024, "momentum": 0.99,
             "momentum_schedule": "constant"},
    "dino": {"out_dim": 2048, "hidden_dim": 2048, "bottleneck_dim": 256, "head_layers": 2, "head_bn": True,
             "warmup_teacher_temp": 0.04, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
             "momentum_teacher": 0.99, "momentum_schedule": "constant", "freeze_last_layer": 0},
}


def lightly_recipe(cfg: dict, method: str, batch_size: int) -> dict:
    """``cfg`` (a ``_cifar`` preset) with lightly's benchmark optimiser, schedule and heads."""
    cfg["optim"] = {"optimizer": "sgd", "lr": 0.06 * batch_size / 128, "scale_lr": False, "momentum": 0.9,
                    "weight_decay": 5e-4, "exclude_bias_norm": False, "warmup_epochs": 0.0, "min_lr": 0.0}
    cfg.setdefault("params", {}).update(LIGHTLY_RECIPE_PARAMS.get(method, {}))
    if method == "dino":  # two 32 px global crops, no local crops
        cfg.setdefault("aug", {})["local_crops"] = {"count": 0}
    return cfg


# the preset each method trains from (default ``<method>_cifar``)
PRESETS = {"dino": "dino_cifar_resnet18"}


def method_config(method: str, args, source: str) -> dict:
    cfg = load_preset(PRESETS.get(method, f"{method}_cifar"))
    if getattr(args, "recipe", "preset") == "lightly":
        cfg = lightly_recipe(cfg, method, args.batch_size)
    scale = args.epochs / float(cfg.get("train", {}).get("epochs") or args.epochs)
    cfg["model"] = {"arch": "resnet18", "cifar_stem": True}
    optim = cfg.setdefault("optim", {})
    optim["warmup_epochs"] = round(float(optim.get("warmup_epochs", 10.0)) * scale, 3)
    params = cfg.setdefault("params", {})
    if "warmup_teacher_temp_epochs" in params:
        params["warmup_teacher_temp_epochs"] = max(0, round(params["warmup_teacher_temp_epochs"] * scale))
    cfg["data"] = {"source": source, "image_size": 32, "cache_dir": args.cache_dir,
                   **({"shapes_size": 32, "shapes_train": 512, "shapes_test": 128} if source == "shapes" else {})}
    cfg["train"] = {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device,
                    "log_every": 50, "eval_every": 0 if args.small else 10**9, "ckpt_every": 10**9,
                    "probe_every_s": 1e9, "compile": args.compile,
                    **({"time_limit_s": args.time_limit} if args.time_limit else {})}
    cfg["eval"] = {"knn_k": 200, "knn_t": 0.1, "max_bank": 50_000, "max_queries": 10_000}
    return cfg


def run_method(method: str, args, source: str) -> dict:
    row: dict = {"method": method, "recipe": getattr(args, "recipe", "preset"), "epochs": args.epochs,
                 "lightly_200_epochs": LIGHTLY_200_EPOCHS.get(method)}
    seen: list[ev.Event] = []
    try:
        cfg = validate_config(method_config(method, args, source))
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            Trainer(cfg, Path(tmp) / method, listeners=(seen.append,)).run()
        row["wall_s"] = round(time.time() - t0, 1)
    except Exception as e:  # noqa: BLE001 - one failing method must not stop the others
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    fin = seen[-1]
    steps = [e for e in seen if isinstance(e, ev.StepMetrics)]
    started = next(e for e in seen if isinstance(e, ev.RunStarted))
    if steps:  # a --time-limit stop ends early: report the epochs really trained
        row["epochs"] = round(steps[-1].step / started.steps_per_epoch, 2)
    row.update(status=getattr(fin, "status", None), steps=getattr(fin, "step", None),
               knn_top1=getattr(fin, "knn_top1", None),
               images_per_s=_mean_rate([(e.step, e.images_per_s) for e in steps]),
               final_loss=steps[-1].loss if steps else None)
    if row["status"] != "completed":
        errors = [e.message for e in seen if isinstance(e, ev.Error)]
        row["error"] = errors[-1] if errors else row["status"]
    return row


def untrained_row(args, source: str) -> dict:
    """The same kNN protocol on a randomly initialised ResNet-18 (CIFAR stem, seed 0): the floor a
    trained backbone must clear (a random ResNet-18 already separates CIFAR-10 classes somewhat)."""
    from engine.data import load_dataset
    from engine.evaluation import knn_evaluate
    from engine.methods import create_method

    row: dict = {"method": "untrained (random init)", "epochs": 0, "lightly_200_epochs": None}
    try:
        cfg = validate_config(method_config("simclr", args, source))
        device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
        t0 = time.time()
        data = load_dataset(cfg.data)
        torch.manual_seed(cfg.train.seed)
        method = create_method(cfg, data.image_size).to(device)
        dtype = torch.bfloat16 if device.type == "cuda" else None
        knn, _, _ = knn_evaluate(method, data, cfg, device, dtype)
        row.update(status="completed", knn_top1=knn, wall_s=round(time.time() - t0, 1))
    except Exception as e:  # noqa: BLE001 - the baseline must not stop the trained rows
        row["error"] = f"{type(e).__name__}: {e}"
    return row


def _mean_rate(windows: list[tuple[int, float]]) -> float | None:
    """Total images / total time over the StepMetrics windows (each weighted by its steps)."""
    r = step_weighted_rate(windows)
    return round(r, 1) if r is not None else None


def markdown(result: dict) -> str:
    lines = ["| method | epochs | kNN top-1 | lightly 1.6.0, 200 epochs | wall time | device |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        knn = f"{r['knn_top1']:.3f}" if r.get("knn_top1") is not None else r.get("error", "-")
        ref = f"{r['lightly_200_epochs']:.3f}" if r.get("lightly_200_epochs") else "-"
        wall = f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") else "-"
        name = r["method"] + (" (lightly's recipe)" if r.get("recipe") == "lightly" else "")
        lines.append(f"| {name} | {r['epochs']} | {knn} | {ref} | {wall} | {result['device']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CIFAR-10 folder or .tar.gz (class folders, train/test)")
    p.add_argument("--methods", nargs="*", default=["simclr", "moco_v2", "byol", "dino"])
    p.add_argument("--epochs", type=float, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--time-limit", type=float, help="seconds per method (the run stops and is evaluated)")
    p.add_argument("--small", action="store_true", help="CPU smoke run on shapes")
    p.add_argument("--recipe", default="preset", choices=["preset", "lightly"],
                   help="preset: each method's own _cifar preset; lightly: lightly's benchmark recipe (SGD, "
                        "lr 0.06 x B/128, no warm-up, its heads), the same for every method")
    p.add_argument("--no-baseline", action="store_true", help="skip the untrained-backbone kNN row")
    p.add_argument("--baseline-only", action="store_true",
                   help="only the untrained-backbone kNN row (runs on the CPU too, with --data)")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    args.small = args.small or (not cuda and not (args.baseline_only and args.data))
    if args.small:
        args.epochs, args.batch_size, args.device = min(args.epochs, 1), min(args.batch_size, 64), "cpu"
    elif not args.data:
        p.error("--data (CIFAR-10 folder or .tar.gz) is required on a GPU")
    unknown = [m for m in args.methods if m not in LIGHTLY_200_EPOCHS]
    if unknown:
        p.error(f"no CIFAR preset / reference for: {', '.join(unknown)}")
    source = "shapes" if args.small else args.data
    result = {"benchmark": "cifar10_knn_resnet18_cifarstem", "recipe": args.recipe, "device": device_name(torch.device("cuda" if cuda else "cpu")),
              "torch": torch.__version__, "batch_size": args.batch_size, "data": source, "rows": []}
    out = Path(args.out)
    tag = "cpu-smoke" if args.small else ("cuda" if cuda else "cpu")
    recipe = "" if args.recipe == "preset" else f"-{args.recipe}-recipe"
    path = out / f"cifar10-accuracy-{tag}{recipe}{'-baseline' if args.baseline_only else ''}.json"
    methods = [] if args.baseline_only else list(args.methods)
    if not args.no_baseline or args.baseline_only:
        row = untrained_row(args, source)
        result["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        atomic_write_text(path, json.dumps(result, indent=1))
    for m in methods:
        row = run_method(m, args, source)
        result["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        atomic_write_text(path, json.dumps(result, indent=1))  # after every method: a killed run keeps the rows
    print(markdown(result))
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
