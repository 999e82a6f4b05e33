"""ssl-export: write a run's backbone weights for downstream use.

    ssl-export --run RUNDIR --format torchvision|timm|safetensors --out FILE
"""

from __future__ import annotations

import sys

from . import Parser, run_cli


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv):
    from ..export import FORMATS, export_backbone

    p = Parser(prog="ssl-export", description="Export a run's backbone weights.",
                                allow_abbrev=False)
    p.add_argument("--run", required=True)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    meta = export_backbone(args.run, args.format, args.out)
    kw = ", ".join(f"{k}={v!r}" for k, v in meta["kwargs"].items())
    recipe = f"timm.create_model({meta['model_name']!r}, {kw})"
    if meta.get("cifar_stem"):  # the plain model's stem is 7x7 + max-pool: swap in the CIFAR one
        recipe = (f"m = {recipe}; m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); "
                  "m.maxpool = torch.nn.Identity()")
    print(f"wrote {args.out} ({meta['arch']}, step {meta['step']}); timm: {recipe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
