"""Benchmarks: SimCLR end to end, ours against the anchor (lightly 1.6.0), in the same run.

    python bench/run.py --out bench/results [--data cifar10.tar.gz] [--compile] [--steps N]

Three measurements, same backbone (ResNet-18, CIFAR stem), batch, views and precision:

* ``ours``       the engine's Trainer, end to end: uint8 cache on the device -> batched GPU
                 augmentation (2 views, 32 px) -> bf16 autocast, channels_last -> LARS step.
* ``model_only`` the same method step on pre-made views (no augmentation): the compute ceiling.
* ``lightly``    lightly 1.6.0's standard pipeline: SimCLRTransform on the CPU in a DataLoader with
                 N workers (PIL images from the same uint8 cache), SimCLRProjectionHead, NTXentLoss,
                 bf16 autocast, channels_last, SGD.

Prints one JSON object (and writes it to OUT/simclr-<device>.json) with images/s (source images
per second), the device name, torch version and the ratio ours / lightly.
On a machine without CUDA it runs with small sizes (``--steps``/``--batch-size`` defaults shrink).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import step_weighted_rate  # noqa: E402
from engine.fileio import atomic_write_text  # noqa: E402
from engine import events as ev  # noqa: E402
from engine.compiling import MODES, Compiled, compile_units  # noqa: E402
from engine.config import validate_config  # noqa: E402
from engine.data import DataSplits, ImageSet, load_dataset  # noqa: E402


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu")


def make_data(args) -> DataSplits:
    if args.data:
        from engine.config import DataConfig

        return load_dataset(DataConfig(source=args.data, image_size=32, cache_dir=args.cache_dir))
    g = torch.Generator().manual_seed(0)
    n = args.n_images
    imgs = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    s = ImageSet(images=imgs, labels=labels, classes=[str(i) for i in range(10)])
    return DataSplits(train=s, test=None, name="synthetic", source="synthetic", info={})


def simclr_cfg(args, steps: int) -> dict:
    return {
        "method": "simclr",
        "data": {"source": "shapes"},  # replaced by the passed DataSplits
        "model": {"arch": "resnet18", "cifar_stem": True},
        "aug": {"global_crops": {"count": 2, "size": 32, "scale": [0.08, 1.0]}, "blur_p": 0.0},
        "optim": {"optimizer": "lars", "lr": 0.3, "warmup_epochs": 0},
        "train": {"steps": steps, "batch_size": args.batch_size, "device": args.device,
                  "log_every": args.log_every, "eval_every": 10**9, "ckpt_every": 10**9,
                  "probe_every_s": 1e9, "compile": args.compile, "precision": args.precision,
                  "compile_mode": args.compile_mode},
    }


def bench_ours(args, data: DataSplits) -> dict:
    """The real Trainer loop; images/s from its own StepMetrics after the warm-up windows."""
    rates: list[tuple[int, float]] = []
    fallback: list[str] = []

    def listen(e):
        if isinstance(e, ev.StepMetrics):
            rates.append((e.step, e.images_per_s))
        elif isinstance(e, ev.RunWarning) and "torch.compile failed" in e.message:
            fallback.append(e.message)

    from engine.trainer import Trainer

    class _BenchTrainer(Trainer):
        def _final_save_and_eval(self) -> None:  # after the timed steps (a compiled model would recompile)
            pass

    cfg = validate_config(simclr_cfg(args, args.warmup + args.steps))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        _BenchTrainer(cfg, Path(tmp) / "run", listeners=(listen,), data=data).run()
        wall = time.time() - t0
    timed = [r for s, r in rates if s > args.warmup]
    ips = step_weighted_rate(rates, after_step=args.warmup)  # total images / total time
    return {"images_per_s": ips if ips is not None else float("nan"), "windows": len(timed), "wall_s": wall,
            **({"compile_fallback": " | ".join(dict.fromkeys(fallback))} if fallback else {})}


def bench_model_only(args, data: DataSplits) -> dict:
    """SimCLR step (forward, backward, LARS) on fixed pre-made views: no augmentation, no data."""
    from engine.augment import GPUAugment
    from engine.methods import create_method
    from engine.methods.base import Batch
    from engine.optim import build_optimizer
    from engine.trainer import resolve_device

    cfg = validate_config(simclr_cfg(args, 10))
    dev = resolve_device(args.device)
    m = create_method(cfg, 32).to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        m.to(memory_format=torch.channels_last)
    compiled = Compiled(compile_units(m) if cuda and args.compile else [], args.compile_mode)
    compiled.compile()
    fallback: list[str] = []
    opt = build_optimizer(m, m.param_groups(), cfg.optim, 0.3, dev)
    x = data.train.images[: args.batch_size].to(dev)
    views = GPUAugment(cfg.aug, 32)(x)
    if cuda:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    batch = Batch(views=views, images=x, n_global=2)
    dtype = torch.bfloat16 if cuda and args.precision != "fp32" else None

    def forward_backward():
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = m.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()

    def step():
        compiled.guard(forward_backward, fallback.append)
        opt.step()

    return {"images_per_s": _time(step, args, cuda), **({"compile_fallback": " | ".join(dict.fromkeys(fallback))} if fallback else {})}


def _time(step, args, cuda: bool) -> float:
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - t)


def bench_lightly(args, data: DataSplits) -> dict:
    """lightly 1.6.0's standard SimCLR pipeline with CPU transforms in DataLoader workers."""
    try:
        import lightly
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
    except ImportError as e:
        return {"skipped": f"lightly not installed ({e}); pip install -e '.[bench]'"}
    import torchvision
    from PIL import Image

    images = data.train.images.permute(0, 2, 3, 1).contiguous().numpy()  # [N, H, W, 3] uint8

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.t = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return self.t(Image.fromarray(images[i]))

    dev = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    loader = torch.utils.data.DataLoader(
        DS(), batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
        pin_memory=cuda, persistent_workers=args.workers > 0,
    )
    bb = torchvision.models.resnet18()
    bb.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    bb.maxpool = torch.nn.Identity()
    bb.fc = torch.nn.Identity()
    model = torch.nn.Sequential(bb, SimCLRProjectionHead(512, 512, 128)).to(dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    crit = NTXentLoss(temperature=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.06 * args.batch_size / 256, momentum=0.9, weight_decay=5e-4)
    dtype = torch.bfloat16 if cuda and args.precision != "fp32" else None

    def batches():
        while True:
            yield from loader

    it = batches()

    def step():
        v0, v1 = next(it)
        v0 = v0.to(dev, non_blocking=True)
        v1 = v1.to(dev, non_blocking=True)
        if cuda:
            v0 = v0.contiguous(memory_format=torch.channels_last)
            v1 = v1.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = crit(model(v0), model(v1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # the workers fill 2 batches each before the first is taken: warm up past that, and time
    # several waves of `workers` batches
    timing = argparse.Namespace(warmup=args.warmup + 2 * args.workers, steps=max(args.steps, 6 * args.workers),
                                batch_size=args.batch_size)
    return {"images_per_s": _time(step, timing, cuda), "lightly_version": lightly.__version__,
            "workers": args.workers, "warmup_steps": timing.warmup, "timed_steps": timing.steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--data", help="CIFAR-10 folder or .tar.gz (default: synthetic uint8 images)")
    p.add_argument("--cache-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--n-images", type=int, default=50_000)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default", choices=MODES)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--only", nargs="*", default=["ours", "model_only", "lightly"])
    args = p.parse_args()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    small = not cuda
    args.batch_size = args.batch_size or (64 if small else 512)
    args.steps = args.steps or (10 if small else 200)
    args.warmup = args.warmup if args.warmup is not None else (3 if small else 40)
    args.log_every = min(args.log_every, args.steps)
    if small:
        args.n_images = min(args.n_images, 2048)
        args.workers = min(args.workers, 2)
    data = make_data(args)
    dev = torch.device("cuda" if cuda else "cpu")
    result = {
        "benchmark": "simclr_resnet18_cifarstem_32px_2views",
        "device": device_name(dev),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "precision": "bf16" if cuda and args.precision != "fp32" else "fp32",
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "data": data.name,
        "n_images": len(data.train),
    }
    out = Path(args.out)
    tag = "cuda" if cuda else "cpu"
    suffix = ("-compiled" + ("" if args.compile_mode == "default" else f"-{args.compile_mode}")) if args.compile else ""
    path = out / f"simclr-{tag}{suffix}.json"
    for name in args.only:
        fn = {"ours": bench_ours, "model_only": bench_model_only, "lightly": bench_lightly}[name]
        t = time.time()
        try:
            result[name] = fn(args, data)
        except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
            result[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        result[name]["seconds"] = round(time.time() - t, 1)
        print(name, json.dumps(result[name]), file=sys.stderr, flush=True)
        ours = result.get("ours", {}).get("images_per_s")
        anchor = result.get("lightly", {}).get("images_per_s")
        if ours and anchor:
            result["ratio_ours_to_lightly"] = ours / anchor
        atomic_write_text(path, json.dumps(result, indent=1))  # after every part: a killed run keeps the rest
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
