"""iBOT masked-patch loss: the student predicts the teacher's targets at masked patches."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class IBOTPatchLoss(nn.Module):
    """Cross-entropy at masked tokens, each image weighted by 1 / (its masked tokens).

    ``forward(student_logits, teacher_probs, image_index, n_images)``: ``(M, K)`` logits and
    targets of the M masked tokens, their image indices, and the number of images in the
    (global) batch, masked or not. Returns
    ``−(1/n_images) Σ_tokens t·log softmax(s/τ_s) / n_masked(image)`` as DINOv2, so that
    every masked image counts equally whatever its size.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, image_index: Tensor, n_images: int) -> Tensor:
        if student_logits.shape[0] == 0:
            return student_logits.sum() * 0.0  # keeps the graph when no patch is masked
        ce = -(teacher_probs * torch.log_softmax(student_logits.float() / self.student_temp, dim=-1)).sum(dim=-1)
        n_masked = torch.bincount(image_index, minlength=n_images).clamp(min=1).to(ce.dtype)
        return (ce / n_masked[image_index]).sum() / n_images
