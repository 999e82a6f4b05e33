"""Training throughput with the studio attached, against the same run headless.

    python bench/studio_throughput.py --config CONFIG.yaml [--steps 300] [--warmup 60] [--out bench/results]
    python bench/studio_throughput.py                      # SimCLR, ResNet-18 CIFAR stem, B 512 on CUDA

The same config runs three times in one process: headless (the engine's ``Trainer`` on the
main thread, the way ``ssl-train`` runs it), then in the real studio (``MainWindow`` shown,
the run started with ``start_run()`` in its worker QThread, the dashboard drawing the live
events at its throttled rate), then headless again (to see drift: warm caches, clocks).
Throughput is the images/s of the Trainer's own ``StepMetrics`` after ``--warmup`` steps
(harmonic mean of equal windows = total images / total time), so data loading, the first
compilations and the final evaluation are outside it.

Target (issue 3, point 10): studio / headless >= 0.97 on a GPU. The result JSON names the
device and records every run's images/s; the ratio uses the mean of the two headless runs.
Without CUDA it runs a small CPU configuration (a smoke run, not the target).
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import step_weighted_rate  # noqa: E402
from engine import events as ev  # noqa: E402
from engine.config import RunConfig, load_yaml, validate_config  # noqa: E402
from engine.fileio import atomic_write_text  # noqa: E402
from engine.presets import load_preset  # noqa: E402

TARGET = 0.97


def default_config(cuda: bool, steps: int) -> dict:
    """SimCLR's CIFAR recipe on 32 px shapes (no files needed); small on the CPU."""
    raw = load_preset("simclr_cifar")
    raw["data"] = {"source": "shapes", "shapes_size": 32, "shapes_train": 20_000 if cuda else 512,
                   "shapes_test": 1000 if cuda else 128}
    if not cuda:
        raw["model"] = {"arch": "resnet18", "cifar_stem": False}
    raw["train"] = {"batch_size": 512 if cuda else 32, "device": "cuda" if cuda else "cpu"}
    return raw


def finalise(raw: dict, steps: int, log_every: int) -> RunConfig:
    raw = dict(raw)
    train = dict(raw.get("train", {}))
    # the studio's usual probe / log cadence; no evaluation or checkpoint inside the timed steps
    train.update(steps=steps, log_every=log_every, eval_every=10**9, ckpt_every=10**9, time_limit_s=None)
    train.setdefault("probe_every_s", 10.0)
    raw["train"] = train
    return validate_config(raw)


def rate(events: list[ev.Event], warmup: int) -> float | None:
    return step_weighted_rate([(e.step, e.images_per_s) for e in events if isinstance(e, ev.StepMetrics)], warmup)


def run_headless(cfg: RunConfig, out: Path) -> list[ev.Event]:
    from engine.trainer import Trainer

    seen: list[ev.Event] = []
    Trainer(cfg, out, listeners=(seen.append,)).run()
    return seen


def run_studio(cfg: RunConfig, runs_dir: Path, timeout_s: float) -> tuple[list[ev.Event], str]:
    """The real main window: config loaded from YAML, Start pressed, events drawn live."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from studio import gui_gc
    from studio.app import make_settings
    from studio.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    cfg_path = runs_dir / "bench-config.yaml"
    cfg.save(cfg_path)
    win = MainWindow(settings=make_settings(str(runs_dir / "settings.ini")), runs_dir=str(runs_dir))
    win.resize(1500, 940)
    win.show()
    win.load_config_file(str(cfg_path))
    seen: list[ev.Event] = []
    result = {"status": "timeout"}
    win.controller.events.connect(seen.extend)
    loop = QEventLoop()

    def finished(status: str, message: str) -> None:
        result["status"] = status if not message else f"{status}: {message}"
        loop.quit()

    win.run_finished.connect(finished)
    QTimer.singleShot(0, win.start_run)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    gui_gc.install()  # as ssl-studio does
    try:
        loop.exec()
    finally:
        gui_gc.uninstall()
    if win.controller.is_running():
        win.controller.shutdown(60)
    redraws = getattr(win.dashboard, "redraw_count", None)
    win.close()
    win.deleteLater()
    app.processEvents()
    return seen, f"{result['status']} ({redraws} redraws)" if redraws is not None else result["status"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a run config YAML (default: SimCLR CIFAR recipe on shapes)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for the studio run")
    ap.add_argument("--out", default=None, help="folder for the JSON (default: bench/results on CUDA)")
    args = ap.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    cuda = torch.cuda.is_available()
    steps = args.steps or (300 if cuda else 12)
    warmup = args.warmup if args.warmup is not None else (60 if cuda else 4)
    log_every = min(args.log_every, max(1, warmup // 2)) if not cuda else args.log_every
    raw = load_yaml(args.config) if args.config else default_config(cuda, steps)
    raw.pop("description", None)
    cfg = finalise(raw, steps, log_every)
    device = torch.cuda.get_device_name(0) if cuda and cfg.train.device != "cpu" else (platform.processor() or "cpu")
    result: dict = {"benchmark": "studio_throughput", "device": device, "torch": torch.__version__,
                    "method": cfg.method, "arch": cfg.model.arch, "batch_size": cfg.train.batch_size,
                    "steps": steps, "warmup": warmup, "target_ratio": TARGET, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, kind in enumerate(["headless", "studio", "headless"]):
            t0 = time.time()
            if kind == "headless":
                seen = run_headless(cfg, tmp / f"headless-{i}")
                status = next((e.status for e in reversed(seen) if isinstance(e, ev.Finished)), "none")
            else:
                try:
                    seen, status = run_studio(cfg, tmp / "studio-runs", args.timeout)
                except Exception as e:  # noqa: BLE001 - e.g. no Qt on the machine: keep the headless runs
                    seen, status = [], f"studio failed: {type(e).__name__}: {str(e)[:300]}"
            r = {"kind": kind, "images_per_s": rate(seen, warmup), "status": status, "wall_s": round(time.time() - t0, 1)}
            result["runs"].append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    heads = [r["images_per_s"] for r in result["runs"] if r["kind"] == "headless" and r["images_per_s"]]
    studio = next((r["images_per_s"] for r in result["runs"] if r["kind"] == "studio"), None)
    if heads and studio:
        result["ratio_studio_to_headless"] = studio / (sum(heads) / len(heads))
        result["target_met"] = bool(cuda and result["ratio_studio_to_headless"] >= TARGET)
    out = Path(args.out or ("bench/results" if cuda else tempfile.gettempdir()))
    atomic_write_text(out / f"studio-throughput-{'cuda' if cuda else 'cpu'}.json", json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if "ratio_studio_to_headless" in result else 1


if __name__ == "__main__":
    sys.exit(main())
