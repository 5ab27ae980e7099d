"""Teacher-target centring: Sinkhorn-Knopp (SwAV / DINOv2) or softmax with an EMA centre (DINO).

Both turn teacher prototype logits ``(B, K)`` into target distributions ``(B, K)`` whose rows
sum to 1, and both prevent collapse onto one prototype. Under ``torch.distributed`` the sums
and the centre are all-reduced, so every rank computes the same targets as one big batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(x: Tensor, op=None) -> Tensor:
    if _dist_on():
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, teacher_temp: float, n_iterations: int = 3,
                   n_samples: Tensor | int | None = None) -> Tensor:
    """Sinkhorn-Knopp targets: equipartition over K prototypes, one distribution per sample.

    ``Q = exp(logits / temp)ᵀ`` is alternately scaled so that every prototype row sums to
    1/K and every sample column to 1/B (``B`` = ``n_samples`` over all ranks, default the
    all-reduced batch size), ``n_iterations`` times; the result, scaled by B, has rows
    (samples) summing to 1.
    """
    logits = teacher_logits.float() / teacher_temp
    # A global shift cancels in the first normalisation; it keeps exp() finite.
    # (Every rank joins each all-reduce, even with no samples, e.g. no masked patch.)
    local_max = logits.amax().reshape(1) if logits.numel() else logits.new_full((1,), float("-inf"))
    shift = _all_reduce(local_max, dist.ReduceOp.MAX if _dist_on() else None)
    q = torch.exp(logits - shift).t()  # (K, B)
    k = q.shape[0]
    if n_samples is None:
        b = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    else:
        b = torch.as_tensor(n_samples, dtype=torch.float32, device=q.device)
    q /= _all_reduce(q.sum().reshape(1))
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


class SoftmaxCentering(nn.Module):
    """DINO's softmax centring: ``softmax((logits − c) / temp)``, ``c`` an EMA of batch means."""

    def __init__(self, out_dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Targets from the *current* centre (call :meth:`update` afterwards, as DINOv2)."""
        return torch.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: Tensor) -> None:
        """``c ← m·c + (1−m)·mean(logits)`` with the mean over all ranks."""
        logits = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
        total = _all_reduce(logits.sum(dim=0, keepdim=True))
        count = _all_reduce(torch.tensor(float(logits.shape[0]), device=logits.device))
        self.center.mul_(self.momentum).add_(total / count.clamp(min=1), alpha=1 - self.momentum)
