"""KoLeo regulariser (Sablayrolles et al. 2019): spread features uniformly on the sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KoLeoLoss(nn.Module):
    """``−mean_i log(‖x̂_i − x̂_nn(i)‖ + eps)`` on L2-normalised features ``(B, D)``.

    Nearest neighbours by cosine similarity (self excluded). Fewer than two samples have no
    neighbour: the loss is 0 rather than DINOv2's inf/NaN (dinov2 issue #314), and ``eps``
    keeps identical samples finite.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: Tensor) -> Tensor:
        n = features.shape[0]
        if n < 2:
            return features.sum() * 0.0
        x = F.normalize(features.float(), dim=-1, eps=self.eps)
        with torch.no_grad():
            sim = x @ x.t()
            sim.fill_diagonal_(-2.0)  # below any cosine similarity: never pick oneself
            nn_idx = sim.argmax(dim=1)
        dist = F.pairwise_distance(x, x[nn_idx], p=2, eps=self.eps)
        return -torch.log(dist + self.eps).mean()
