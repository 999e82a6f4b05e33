"""Where a training step's time goes: the real Trainer under torch.profiler, one method at a time.

    python bench/profile_step.py [--only dino_vits16 mae_vitb16 ...] [--steps 6] [--warmup 8] [--out DIR]

Builds exactly the configuration of ``bench/methods.py`` (same specs, sizes, synthetic data,
optimiser), runs the engine's ``Trainer`` for ``warmup + steps`` steps with a metric event
after every step, and profiles the last ``steps`` steps (CPU and CUDA activity). For each
benchmark it writes, per step: wall time, GPU busy time (sum of kernel times), CPU time spent
launching, the number of kernels launched, and the top operators by device time and by CPU time,
split into the phases marked here (augmentation, forward, optimiser, the
method's after-step). That says whether a method is bound by the GPU's arithmetic, its memory
traffic, or by the host launching kernels (then fusing or CUDA graphs help, not faster kernels).

Output: OUT/profile-<bench>-<cuda|cpu>.json and one summary line each on stdout. Without CUDA
it runs the small CPU configuration (a smoke run: CPU operator times only).
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import methods as M  # noqa: E402  (the benchmark definitions, reused)
from engine import events as ev  # noqa: E402
from engine.config import validate_config  # noqa: E402
from engine.fileio import atomic_write_text  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

PHASES = ("augment", "forward", "optimizer", "after_step")  # backward: the autograd::engine rows


def _row(e, cuda: bool) -> dict:
    dev_total = getattr(e, "device_time_total", None)
    if dev_total is None:
        dev_total = getattr(e, "cuda_time_total", 0.0)
    dev_self = getattr(e, "self_device_time_total", None)
    if dev_self is None:
        dev_self = getattr(e, "self_cuda_time_total", 0.0)
    row = {"name": e.key[:120], "calls": e.count, "cpu_total_ms": round(e.cpu_time_total / 1e3, 3),
           "cpu_self_ms": round(e.self_cpu_time_total / 1e3, 3)}
    if cuda:
        row.update(device_total_ms=round(dev_total / 1e3, 3), device_self_ms=round(dev_self / 1e3, 3))
    return row


def summarise(prof, steps: int, cuda: bool, top: int = 25) -> dict:
    """Per-step numbers and the top operators of a finished profile."""
    ka = prof.key_averages()
    events = list(ka)
    out: dict = {"profiled_steps": steps}
    phases = {e.key: e for e in events if e.key in PHASES}
    out["phases_ms_per_step"] = {
        k: {"cpu": round(phases[k].cpu_time_total / 1e3 / steps, 3),
            **({"device": round((getattr(phases[k], "device_time_total", None)
                                 or getattr(phases[k], "cuda_time_total", 0.0)) / 1e3 / steps, 3)} if cuda else {})}
        for k in PHASES if k in phases}
    ops = [e for e in events if e.key not in PHASES and not e.key.startswith("ProfilerStep")]
    by_cpu = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    out["top_by_cpu_self"] = [_row(e, cuda) for e in by_cpu]
    if cuda:
        kernels = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
        busy_us = sum(k.time_range.elapsed_us() for k in kernels)
        out["kernels_per_step"] = round(len(kernels) / steps, 1)
        out["gpu_busy_ms_per_step"] = round(busy_us / 1e3 / steps, 3)

        def dev_self(e):
            v = getattr(e, "self_device_time_total", None)
            return v if v is not None else getattr(e, "self_cuda_time_total", 0.0)

        out["top_by_device_self"] = [_row(e, cuda) for e in sorted(ops, key=dev_self, reverse=True)[:top]]
    return out


class _MarkedTrainer(Trainer):
    """The Trainer with its step's phases marked for the profiler (record_function ranges) and
    without the final checkpoint / evaluation (not part of a step)."""

    def _final_save_and_eval(self) -> None:
        pass


def _mark_phases(trainer: Trainer) -> None:
    """Wrap the augmentation, the method's step, the optimiser and the after-step hook in
    record_function ranges (instance attributes: the Trainer's code is not changed)."""
    rf = torch.profiler.record_function

    def wrap(obj, name, label):
        fn = getattr(obj, name)

        def inner(*a, **k):
            with rf(label):
                return fn(*a, **k)

        setattr(obj, name, inner)

    class Ranged:  # the augmentation object, called inside a range; its attributes pass through
        def __init__(self, obj):
            self._obj = obj

        def __call__(self, *a, **k):
            with rf("augment"):
                return self._obj(*a, **k)

        def __getattr__(self, name):
            return getattr(self._obj, name)

    trainer.augment = Ranged(trainer.augment)
    wrap(trainer.method, "training_step", "forward")
    wrap(trainer.opt, "step", "optimizer")
    wrap(trainer.method, "after_optimizer_step", "after_step")


def profile_bench(name: str, args) -> dict:
    spec = M.SPECS[name]
    sz = M.sizes(spec, args)
    data = M.get_data(spec, args, sz)
    total = args.warmup + args.steps
    raw = M.our_config(spec, args, sz, total)
    raw["train"]["log_every"] = 1  # one event per step: the profiler's step marker
    cfg = validate_config(raw)
    cuda = args.cuda
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=acts,
                                  schedule=torch.profiler.schedule(wait=0, warmup=args.warmup - 1,
                                                                   active=args.steps, repeat=1))
    walls: list[float] = []
    last = [time.perf_counter()]

    def listen(e):
        if isinstance(e, ev.StepMetrics):
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if e.step > args.warmup:
                walls.append(now - last[0])
            last[0] = now
            prof.step()

    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        tr = _MarkedTrainer(cfg, Path(tmp) / "run", listeners=(listen,), data=data)
        orig_prepare = tr._prepare

        def prepare():
            orig_prepare()
            _mark_phases(tr)

        tr._prepare = prepare
        prof.start()
        try:
            tr.run()
        finally:
            prof.stop()
    res = {"benchmark": name, "device": M.device_name(M._dev(args)), "torch": torch.__version__,
           "batch_size": sz["batch"], "warmup": args.warmup, "compile": bool(args.compile),
           "wall_ms_per_step": round(1e3 * sum(walls) / max(1, len(walls)), 3) if walls else None,
           "note": "wall times include a host sync after every step (the profiled run is slower than the bench)"}
    res.update(summarise(prof, args.steps, cuda))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=M.BENCHES, default=["dino_vits16", "mae_vitb16", "simmim_vitb16"])
    p.add_argument("--steps", type=int, default=6, help="profiled steps")
    p.add_argument("--warmup", type=int, default=8, help="steps before the profiled ones")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default", choices=M.MODES)
    p.add_argument("--out", default=None, help="results folder (default: bench/results on CUDA, a temp folder on the CPU)")
    a = p.parse_args(argv)
    # the defaults bench/methods.py would use, then ours
    args = M.parse_args(["--device", a.device, "--steps", str(a.steps), "--warmup", str(a.warmup), "--no-flops"]
                        + (["--compile", "--compile-mode", a.compile_mode] if a.compile else []))
    args.steps, args.warmup = a.steps, max(2, a.warmup)
    out = Path(a.out or (ROOT / "bench" / "results" if args.cuda else Path(tempfile.gettempdir()) / "bench-profile"))
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in a.only:
        try:
            res = profile_bench(name, args)
        except Exception as e:  # noqa: BLE001 - keep going with the others
            res, failed = {"benchmark": name, "error": f"{type(e).__name__}: {e}"}, failed + 1
        tag = "cuda" if args.cuda else "cpu"
        atomic_write_text(out / f"profile-{name}-{tag}.json", json.dumps(res, indent=1, default=str))
        keys = ("benchmark", "wall_ms_per_step", "gpu_busy_ms_per_step", "kernels_per_step", "phases_ms_per_step", "error")
        print(json.dumps({k: res.get(k) for k in keys if k in res}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
