"""DINO / iBOT projection head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP → L2-normalise → weight-normalised prototypes (DINOv2 ``DINOHead``).

    ``nlayers`` linear layers ``in → hidden → … → bottleneck`` with GELU in between, then the
    bottleneck is L2-normalised and mapped to ``n_prototypes`` logits by a bias-free linear
    layer whose weight rows are normalised (weight norm with the gain fixed to 1), so the
    logits are cosine similarities to the prototypes. ``last_layer`` is the layer DINOv2
    freezes during the first epoch. ``use_bn`` adds BatchNorm after the hidden linear layers
    (an option of DINOv2's head): the batch's shared component is removed before the
    prototypes, so images whose CLS tokens are nearly identical (a small ViT at init) still
    get distinct targets.
    """

    def __init__(self, in_dim: int, n_prototypes: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, use_bn: bool = False) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"head_nlayers must be >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                if use_bn:  # DINOv2's `use_bn`: normalise the hidden layers over the batch
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, n_prototypes, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)
