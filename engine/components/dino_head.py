"""The DINO projection head (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021, arXiv:2104.14294, section 3.1 and appendix; ``DINOHead`` in the
official ``vision_transformer.py``).

Layout (defaults of the paper)::

    x [B, in_dim]
      -> Linear(in_dim, 2048) [BN] GELU -> Linear(2048, 2048) [BN] GELU -> Linear(2048, 256)
                                                     (``n_layers`` Linear layers in the MLP)
      -> L2 normalisation                            z [B, 256] on the unit sphere
      -> weight-normalised Linear(256, out_dim, no bias)   logits [B, out_dim] (65536 in the paper)

* MLP weights: truncated normal, std 0.02; biases zero (as the official code). No batch
  norm by default (``use_bn=False``: the paper's ViT heads are BN-free).
* Last layer: ``weight = g * v / ||v||`` per output unit (PyTorch's
  ``parametrizations.weight_norm``, ``dim=0``); ``g`` starts at 1 and, with
  ``norm_last_layer=True`` (the official default), stays frozen at 1, so every
  output unit has a unit-norm weight vector (the logits are then cosines, which
  stabilises training; ``False`` trains ``g`` too: better results, less stable).
* ``freeze_last_layer``: DINO drops the last layer's gradients during the first epoch
  (``cancel_gradients_last_layer``). :meth:`DINOHead.cancel_last_layer_grads_while`
  registers a hook on the last layer's trainable parameters that sets their gradient
  to None right after backward while a predicate holds, so the optimiser skips them
  (no update, no weight decay, no optimiser state), exactly as the official code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.hooks import RemovableHandle


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class DINOHead(nn.Module):
    """MLP -> L2 norm -> weight-normalised linear layer; see the module docstring.

    forward: ``x [B, in_dim] -> logits [B, out_dim]``; :meth:`bottleneck` gives the
    L2-normalised ``z [B, bottleneck_dim]`` before the last layer.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1 (got {n_layers})")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < n_layers - 1:  # hidden layer
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0  # g: [out_dim, 1]
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim
        self.norm_last_layer = norm_last_layer

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_dim] -> z [B, bottleneck_dim], L2-normalised."""
        return F.normalize(self.mlp(x), dim=-1, p=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(x))  # [B, out_dim]

    def cancel_last_layer_grads_while(self, frozen: Callable[[], bool]) -> list[RemovableHandle]:
        """While ``frozen()`` is true, the last layer's gradients are dropped (set to None)
        as soon as backward has accumulated them. Returns the hook handles."""

        def hook(p: torch.Tensor) -> None:
            if frozen():
                p.grad = None

        return [p.register_post_accumulate_grad_hook(hook)
                for p in self.last_layer.parameters() if p.requires_grad]


__all__ = ["DINOHead"]
