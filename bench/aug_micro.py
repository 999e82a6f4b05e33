"""Micro-benchmark of engine.augment.GPUAugment; prints one JSON document.

    python bench/aug_micro.py                   # CPU, a few sizes
    python bench/aug_micro.py --device cuda     # on a GPU (CUDA-event timing)
    python bench/aug_micro.py --baseline        # + torchvision.transforms.v2 per-sample loop
    python bench/aug_micro.py --device cuda --check-sync --profile
                                                # + fail on any host sync, + kernel counts

Cases: SimCLR CIFAR-like (2 x 32 px from 32 px, B=512), BYOL-like 64 px, and
DINO-like multi-crop (2 x 224 + 6 x 96 from 224 px, B=64). Reported: median ms
per batch (all views), source images per second, peak CUDA memory; on CUDA
also ``host_ms`` (time for the Python call to return, i.e. launch cost: when it
is close to ``ms_per_batch`` the pipeline is launch-bound).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.augment import GPUAugment  # noqa: E402
from engine.config import AugConfig, CropConfig  # noqa: E402

CASES = {
    "simclr_32px_b512": dict(
        B=512, src=32,
        aug=dict(global_crops=CropConfig(count=2, size=32), gray_p=0.2, blur_p=0.0),
    ),
    "byol_64px_b256": dict(
        B=256, src=64,
        aug=dict(global_crops=CropConfig(count=2, size=64), blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2]),
    ),
    "dino_2x224_6x96_b64": dict(
        B=64, src=224,
        aug=dict(global_crops=CropConfig(count=2, size=224, scale=(0.32, 1.0)),
                 local_crops=CropConfig(count=6, size=96, scale=(0.05, 0.32)),
                 blur_p=[1.0, 0.1], solarize_p=[0.0, 0.2]),
    ),
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_case(name: str, case: dict, dev: torch.device, iters: int, warmup: int) -> dict:
    aug = GPUAugment(AugConfig(**case["aug"]), case["src"])
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 256, (case["B"], 3, case["src"], case["src"]), dtype=torch.uint8, device=dev)
    for _ in range(warmup):
        aug(x, generator=g)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, host = [], []
    for _ in range(iters):
        if dev.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            t0 = time.perf_counter()
            aug(x, generator=g)
            host.append((time.perf_counter() - t0) * 1e3)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            aug(x, generator=g)
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    res = dict(
        B=case["B"], src=case["src"], views=[tuple(v.shape[-2:]) for v in aug(x, generator=g)],
        ms_per_batch=round(ms, 3), ms_min=round(min(times), 3), images_per_s=round(case["B"] / ms * 1e3),
    )
    if dev.type == "cuda":
        res["host_ms"] = round(statistics.median(host), 3)
        res["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return res


def check_sync(case: dict, dev: torch.device) -> str:
    """Run one call with CUDA sync debugging set to error: any host sync raises."""
    aug = GPUAugment(AugConfig(**case["aug"]), case["src"])
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 256, (case["B"], 3, case["src"], case["src"]), dtype=torch.uint8, device=dev)
    aug(x, generator=g)  # constants cached
    torch.cuda.synchronize(dev)
    torch.cuda.set_sync_debug_mode("error")
    try:
        aug(x, generator=g)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return "no host sync"


def profile_case(case: dict, dev: torch.device, rows: int = 15) -> dict:
    """Kernel launches per call and the top kernels (printed to stderr)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    aug = GPUAugment(AugConfig(**case["aug"]), case["src"])
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 256, (case["B"], 3, case["src"], case["src"]), dtype=torch.uint8, device=dev)
    for _ in range(3):
        aug(x, generator=g)
    _sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        aug(x, generator=g)
        _sync(dev)
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total",
                   row_limit=rows), file=sys.stderr)
    evs = prof.events()
    n_kernels = sum(1 for e in evs if e.device_type == DeviceType.CUDA)
    n_ops = sum(1 for e in evs if e.device_type == DeviceType.CPU and e.name.startswith("aten::")
                and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    return dict(cuda_kernels_per_call=n_kernels, top_level_aten_ops_per_call=n_ops)


def time_torchvision_baseline(dev: torch.device, B: int = 64, iters: int = 5) -> dict:
    """torchvision.transforms.v2 applied per sample in a Python loop (per-sample parameters)."""
    from torchvision.transforms import v2

    t = v2.Compose([
        v2.RandomResizedCrop(32, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    x = torch.randint(0, 256, (B, 3, 32, 32), dtype=torch.uint8, device=dev)
    times = []
    for _ in range(iters + 1):
        _sync(dev)
        t0 = time.perf_counter()
        [torch.stack([t(img) for img in x]) for _ in range(2)]
        _sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times[1:])
    return dict(B=B, views=2, ms_per_batch=round(ms, 2), images_per_s=round(B / ms * 1e3),
                note="2 x 32 px views, per-sample Python loop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=0, help="timed iterations (default: 10 CPU, 100 CUDA)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--baseline", action="store_true", help="also time a torchvision v2 per-sample loop")
    ap.add_argument("--check-sync", action="store_true", help="CUDA: fail on any host sync (each case)")
    ap.add_argument("--profile", action="store_true", help="kernel counts per call; top kernels to stderr")
    args = ap.parse_args()
    dev = torch.device(args.device)
    iters = args.iters or (100 if dev.type == "cuda" else 10)
    warmup = 10 if dev.type == "cuda" else 2
    out = dict(
        device=str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(), cases={},
    )
    for name in args.cases.split(","):
        out["cases"][name] = time_case(name, CASES[name], dev, iters, warmup)
        if args.check_sync and dev.type == "cuda":
            out["cases"][name]["sync_check"] = check_sync(CASES[name], dev)
        if args.profile:
            out["cases"][name].update(profile_case(CASES[name], dev))
    if args.baseline:
        out["torchvision_v2_per_sample"] = time_torchvision_baseline(dev)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
