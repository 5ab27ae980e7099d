"""2-D rotary position embedding (RoPE) of DINOv3, for packed variable-size images.

DINOv3 (Siméoni et al. 2025) has no absolute position table: the query and key of every
patch token are rotated by angles ``2π · c / period`` of its patch-centre coordinates ``c``,
normalised per axis to ``[-1, 1]`` over the image's own patch grid (``(i + 0.5) / n · 2 - 1``,
DINOv3's ``normalize_coords="separate"``), ``head_dim / 4`` periods ``base^(2k / (head_dim/2))``
per axis, laid out ``[y freqs, x freqs]`` twice ("rotate half" convention). Prefix tokens
(CLS, registers) are not rotated. In a packed row every image gets the coordinates of its own
grid, so the rotation depends only on where a patch lies in its image, as in the unpacked model.

DINOv3's training-time coordinate augmentations (shift, jitter, rescale) are not applied: they
matter for pretraining from scratch at fixed resolution, not for native-resolution packing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aqqua_geo.foundation.packing import PackedBatch, PackedLayout


class RotaryEmbedding2D(nn.Module):
    """Per-slot ``(sin, cos)`` of DINOv3's 2-D RoPE for packed rows.

    ``periods`` is a persistent buffer, as in DINOv3's checkpoints (which store it, rounded to
    bfloat16): a converted checkpoint keeps the published periods bit for bit.
    """

    def __init__(self, head_dim: int, base: float = 100.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
        if not base > 0:
            raise ValueError(f"model.rope_base must be > 0, got {base}")
        self.head_dim = head_dim
        n_freq = head_dim // 4
        exponents = 2.0 * torch.arange(n_freq, dtype=torch.float32) / (head_dim // 2)
        self.register_buffer("periods", base**exponents, persistent=True)

    def forward(self, packed: PackedBatch, layout: PackedLayout) -> tuple[Tensor, Tensor]:
        """``sin``, ``cos`` of shape ``(rows, 1, row_length, head_dim)`` (float32); slots that
        hold no patch (prefix tokens, padding) get the identity rotation (sin 0, cos 1)."""
        grid_hw = packed.grid_hw.to(torch.float32)[packed.image_index]  # (T, 2)
        coords = (packed.grid_yx.to(torch.float32) + 0.5) / grid_hw * 2.0 - 1.0  # (T, 2) in [-1, 1]
        angles = 2.0 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # (T, 2, F)
        angles = angles.flatten(1).repeat(1, 2)  # (T, head_dim): [y, x, y, x] frequency layout
        sin = angles.new_zeros(layout.n_rows, layout.row_length, self.head_dim)
        cos = angles.new_ones(layout.n_rows, layout.row_length, self.head_dim)
        sin = sin.index_put((layout.token_row, layout.token_slot), angles.sin())
        cos = cos.index_put((layout.token_row, layout.token_slot), angles.cos())
        return sin.unsqueeze(1), cos.unsqueeze(1)


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate ``x`` ``(rows, heads, L, head_dim)`` by ``rope = (sin, cos)``, in float32 as DINOv3."""
    sin, cos = rope
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)
