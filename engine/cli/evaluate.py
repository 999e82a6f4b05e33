"""ssl-eval: evaluate a run's backbone.

    ssl-eval knn --run RUNDIR [--data PATH] [--device auto|cpu|cuda] [--k K]
    ssl-eval linear --run RUNDIR [--data PATH] [--device auto|cpu|cuda] [--epochs E] [--lr LR]

each prints one JSON line: {"knn_top1": ..., "step": ..., "n_bank": ..., "n_queries": ...} or
{"linear_top1": ..., "train_top1": ..., "step": ..., "n_train": ..., "n_test": ..., "epochs": ...};
the linear probe of the run's own data is also kept in RUNDIR/linear_probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from . import Parser, run_cli


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="ssl-eval", description="Evaluate a trained run.", allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("knn", help="weighted kNN top-1 on backbone features")
    k.add_argument("--run", required=True, help="run folder")
    k.add_argument("--data", help="dataset to evaluate on (default: the run's)")
    k.add_argument("--device", default="auto")
    k.add_argument("--k", type=_positive_int, help="neighbours (default: the run's eval.knn_k)")
    lin = sub.add_parser("linear", help="linear probe on frozen backbone features (BatchNorm without affine + "
                                        "one linear layer, as MAE's)")
    lin.add_argument("--run", required=True, help="run folder")
    lin.add_argument("--data", help="dataset to evaluate on (default: the run's)")
    lin.add_argument("--device", default="auto")
    lin.add_argument("--epochs", type=_positive_int, default=100, help="passes over the cached features (100)")
    lin.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate, cosine-decayed (1e-2)")
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv):
    args = parser().parse_args(argv)
    from ..data import load_dataset
    from ..errors import UserError
    from ..evaluation import knn_evaluate, linear_probe_run
    from ..export import load_run_method
    from ..trainer import resolve_device

    device = resolve_device(args.device)
    if args.cmd == "linear":
        if not (math.isfinite(args.lr) and args.lr > 0):
            raise UserError(f"--lr must be positive and finite, got {args.lr}")
        res = linear_probe_run(args.run, device, epochs=args.epochs, lr=args.lr, data_source=args.data)
        print(json.dumps({k: res[k] for k in ("linear_top1", "train_top1", "step", "n_train", "n_test",
                                              "epochs", "data")}))
        if "not_saved" in res:
            print(f"warning: the result was not kept in the run folder: {res['not_saved']}", file=sys.stderr)
        return 0
    cfg, method, state = load_run_method(args.run, device)
    if args.data:
        cfg.data.source = args.data
    if args.cmd == "knn" and args.k:
        cfg.eval.knn_k = args.k
    data = load_dataset(cfg.data)
    knn, _, _ = knn_evaluate(method, data, cfg, device)
    if knn is None:
        raise UserError("the data has no labels (or no test split): kNN accuracy needs both")
    n_bank = min(len(data.train), cfg.eval.max_bank)
    n_q = min(len(data.test), cfg.eval.max_queries)
    print(json.dumps({"knn_top1": knn, "step": int(state["step"]), "n_bank": n_bank, "n_queries": n_q,
                      "k": min(cfg.eval.knn_k, n_bank), "data": cfg.data.source}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
