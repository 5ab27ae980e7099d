"""DINO loss on CLS tokens: cross-entropy between teacher targets and student predictions."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DINOLoss(nn.Module):
    """``−Σ_k t_k · log softmax(s / τ_s)_k``, averaged over samples, summed over crop pairs.

    ``forward(student_logits, teacher_probs)`` takes lists of ``(B, K)`` tensors (student
    crops, teacher crops) and sums the per-pair mean cross-entropy over all pairs
    (``pairs`` restricts them, e.g. to i ≠ j for global crops). The student temperature is
    0.1 as in DINOv2; teacher temperature and centring are applied by the caller
    (:mod:`~aqqua_geo.foundation.losses.centering`).
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, student_logits: list[Tensor], teacher_probs: list[Tensor],
                pairs: list[tuple[int, int]] | None = None) -> Tensor:
        if pairs is None:
            pairs = [(i, j) for i in range(len(student_logits)) for j in range(len(teacher_probs))]
        log_p = [torch.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_logits]
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        for i, j in pairs:
            total = total - (teacher_probs[j] * log_p[i]).sum(dim=-1).mean()
        return total
