"""ssl-train: train a self-supervised method headless, with a progress bar.

    ssl-train --list-methods
    ssl-train --method simclr --data shapes --steps 200 --out runs/demo
    ssl-train --config runs/demo/config.yaml --out runs/demo2 --set optim.lr=0.1
    ssl-train --resume runs/demo --steps 400
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .. import events as ev
from ..config import build_config, load_yaml
from ..errors import ConfigError, UserError
from ..methods import get_method, list_methods
from ..presets import list_presets, load_preset, presets_of
from . import Parser, run_cli


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="ssl-train", description="Train a self-supervised method.",
                                allow_abbrev=False)
    p.add_argument("--list-methods", action="store_true", help="print the method names, one a line")
    p.add_argument("--list-presets", action="store_true", help="print the preset names, one a line")
    p.add_argument("--method", help="method name (see --list-methods)")
    p.add_argument("--data", help="'shapes', a folder of images or a .tar.gz")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, help="training length in epochs")
    g.add_argument("--steps", type=int, help="training length in optimiser steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set optim.lr=0.1 (repeatable)")
    p.add_argument("--config", help="YAML config (e.g. a run's config.yaml)")
    p.add_argument("--preset", help="named preset from assets/presets (see --list-presets)")
    p.add_argument("--resume", metavar="RUNDIR", help="continue the run in RUNDIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class ProgressPrinter:
    """The CLI's listener: a tqdm bar plus a line per evaluation, warning and error."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar = None

    def __call__(self, e: ev.Event) -> None:
        from tqdm import tqdm

        if isinstance(e, ev.RunStarted):
            print(f"{e.method} on {e.device}: {e.n_train} train / {e.n_test} test images, "
                  f"{e.total_steps} steps ({e.steps_per_epoch} a epoch) -> {e.run_dir}", file=sys.stderr)
            if not self.quiet:
                self.bar = tqdm(total=e.total_steps, initial=e.step, unit="step", dynamic_ncols=True,
                                mininterval=0.5, file=sys.stderr)
        elif isinstance(e, ev.StepMetrics) and self.bar is not None:
            self.bar.update(e.step - self.bar.n)
            self.bar.set_postfix(loss=f"{e.loss:.4f}", lr=f"{e.lr:.3g}", img_s=f"{e.images_per_s:.0f}", refresh=False)
        elif isinstance(e, ev.Evaluation):
            ind = " ".join(f"{k}={v:.3g}" for k, v in e.indicators.items())
            knn = "n/a" if e.knn_top1 is None else f"{e.knn_top1:.4f}"
            z = " (standardised features)" if e.knn_standardized else ""
            self._write(f"step {e.step}: kNN top-1 {knn}{z} {ind}".rstrip())
        elif isinstance(e, (ev.RunWarning,)):
            self._write(f"warning: {e.message}")
        elif isinstance(e, ev.LiveChange):
            self._write(f"step {e.step}: {e.key} {e.old} -> {e.new}")
        elif isinstance(e, ev.Finished):
            if self.bar is not None:
                self.bar.update(e.step - self.bar.n)
                self.bar.close()

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    if args.list_methods:
        print("\n".join(list_methods()))
        return 0
    if args.list_presets:
        print("\n".join(list_presets()))
        return 0

    from ..preflight import known_image_size, preflight
    from ..trainer import Trainer  # heavy imports after the quick paths

    base: dict = {}
    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise UserError("--resume continues RUNDIR in place; leave out --out or give the same folder")
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise UserError(f"nothing to resume in {run_dir}: no config.yaml there")
        base = load_yaml(cfg_path)
    else:
        if not args.out:
            raise UserError("--out RUNDIR is required (the folder for config, metrics and checkpoints)")
        run_dir = Path(args.out)
    if args.preset:
        base = _merge(base, load_preset(args.preset))
    if args.config:
        base = _merge(base, load_yaml(args.config))
    if args.method and base.get("method") not in (None, args.method):
        base = {k: v for k, v in base.items() if k != "params"}  # another method's params do not apply
    if args.method:
        get_method(args.method)
    direct = {
        "method": args.method,
        "data.source": args.data,
        "train.batch_size": args.batch_size,
        "train.device": args.device,
    }
    if args.steps is not None:
        direct["train.steps"] = args.steps
    if args.epochs is not None:
        direct["train.epochs"] = args.epochs
        base.setdefault("train", {})["steps"] = None
    cfg = build_config(base, args.set, **direct)
    try:
        preflight(cfg, known_image_size(cfg.data))  # a setup the method refuses creates no run folder
    except ConfigError as e:
        hint = "" if args.resume or args.preset else ", ".join(presets_of(cfg.method))
        raise ConfigError(f"{e}; or start from --preset {hint}" if hint else str(e)) from None

    trainer = Trainer(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                      listeners=(ProgressPrinter(args.quiet),))
    old = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly with a checkpoint; second: abort
        signal.signal(signal.SIGINT, old)
        print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)
        trainer.stop()

    def on_sigterm(signum, frame):  # a scheduler's or `kill`'s request: stop cleanly, as Ctrl-C
        print("\nSIGTERM: stopping after this step", file=sys.stderr)
        trainer.stop()

    old_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        fin = trainer.run()
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
    knn = "n/a" if fin.knn_top1 is None else f"{fin.knn_top1:.4f}"
    print(f"{fin.status} at step {fin.step} in {fin.seconds:.1f} s; kNN top-1 {knn}; run folder {run_dir}")
    return 0


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


if __name__ == "__main__":
    sys.exit(main())
