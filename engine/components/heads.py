"""Projection / prediction heads: configurable MLPs.

Layouts used by the methods (``in`` = backbone width):

* SimCLR (Chen et al. 2020): 2 layers, ``in -> 2048 (BN, ReLU) -> 128``; the paper's
  ImageNet head uses hidden width = ``in`` (2048 for ResNet-50).
  ``MLPHead(in_dim, 2048, 128)``.
* SimCLR v2 (Chen et al. 2020b): 3 layers, BN on every layer including the output.
  ``MLPHead(in_dim, in_dim, 128, n_layers=3, last_bn=True)``.
* SimSiam (Chen & He 2021) projector: 3 layers of 2048 with BN on the output.
  ``MLPHead(in_dim, 2048, 2048, n_layers=3, last_bn=True)``; predictor:
  ``MLPHead(2048, 512, 2048)``.
* MoCo v3 (Chen, Xie & He 2021): BN without affine on the output:
  ``MLPHead(in_dim, 4096, 256, n_layers=3, last_bn=True, last_bn_affine=False)``.
* BYOL (Grill et al. 2020): ``MLPHead(in_dim, 4096, 256)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLPHead(nn.Sequential):
    """A multi-layer perceptron: ``Linear -> [BN] -> ReLU`` per hidden layer, then ``Linear -> [BN]``.

    Args:
        in_dim: input width.
        hidden_dims: widths of the hidden layers: a list (one entry per hidden layer), or an
            int repeated ``n_layers - 1`` times.
        out_dim: output width.
        n_layers: number of Linear layers in total. With an int ``hidden_dims`` it
            defaults to 2 (one hidden layer, the SimCLR head); with a list it defaults to
            ``len(hidden_dims) + 1`` and, if given, must equal it. ``n_layers=1`` is a
            single Linear ``in_dim -> out_dim``.
        bn: BatchNorm1d after each hidden Linear (before the ReLU).
        last_bn: BatchNorm1d on the output (SimCLR v2, SimSiam projector, MoCo v3).
        last_bn_affine: whether that output BN has a learnable scale and shift
            (MoCo v3 uses ``affine=False``).
        bias: bias of the Linear layers. None (default): a Linear has a bias only when no
            BN follows it (a BN's shift makes it redundant); True / False force it.

    Layout, as ``nn.Sequential`` children (so ``head[0]`` is the first Linear), e.g.
    ``MLPHead(512, 2048, 128)``::

        0: Linear(512, 2048, bias=False)  1: BatchNorm1d(2048)  2: ReLU
        3: Linear(2048, 128, bias=True)

    forward: ``x [B, in_dim] -> [B, out_dim]``; extra leading dimensions are allowed
    (``[B, N, in_dim] -> [B, N, out_dim]``, e.g. patch tokens: BN then normalises over
    all B*N rows).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] | int,
        out_dim: int,
        n_layers: int | None = None,
        bn: bool = True,
        last_bn: bool = False,
        last_bn_affine: bool = True,
        bias: bool | None = None,
    ) -> None:
        if isinstance(hidden_dims, int):
            n = 2 if n_layers is None else n_layers
            if n < 1:
                raise ValueError(f"n_layers must be >= 1 (got {n})")
            hidden = [hidden_dims] * (n - 1)
        else:
            hidden = [int(h) for h in hidden_dims]
            if n_layers is not None and n_layers != len(hidden) + 1:
                raise ValueError(
                    f"n_layers={n_layers} does not match {len(hidden)} hidden widths "
                    f"(expected n_layers={len(hidden) + 1})"
                )
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            has_bn = last_bn if last else bn
            layers.append(nn.Linear(d_in, d_out, bias=(not has_bn) if bias is None else bias))
            if has_bn:
                layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine if last else True))
            if not last:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.dims = dims  # [in_dim, *hidden, out_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # x: [B, in_dim]
            return super().forward(x)
        lead = x.shape[:-1]  # x: [..., in_dim] -> rows [prod(...), in_dim]
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, self.out_dim)


def mlp(dims: Sequence[int], bn: bool = True, last_bn: bool = False) -> MLPHead:
    """Shorthand: ``mlp([512, 2048, 128])`` == ``MLPHead(512, [2048], 128)``.

    ``dims`` lists every width, input first, output last (at least two entries).
    """
    dims = list(dims)
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least an input and an output width (got {dims})")
    return MLPHead(dims[0], dims[1:-1], dims[-1], bn=bn, last_bn=last_bn)


__all__ = ["MLPHead", "mlp"]
