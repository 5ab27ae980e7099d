"""Position embeddings for packed variable-size images.

``physical`` (default): a fixed 2-D sin-cos code of each patch centre's *physical* position,
in µm from the image centre divided by ``pos_ref_um``, in the spirit of Scale-MAE's
ground-sample-distance encoding (Reed et al. 2023: grid positions multiplied by GSD / reference
GSD). The same organism imaged at 0.3 µm/px and at 70 µm/px then receives the same code at
the same physical point, so the model sees absolute size, which is a key taxonomic cue in
plankton and the basis of trait estimates.

``learned`` (ablation): a learned grid, resampled bicubically to each image's patch grid
(timm's ``dynamic_img_size`` behaviour, via ``timm.layers.resample_abs_pos_embed``); it
encodes relative position only, like an ImageNet ViT.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aqqua_geo._compat import import_timm
from aqqua_geo.foundation.packing import PackedBatch


def sincos_2d(pos_yx: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """MAE-style 2-D sin-cos code of continuous positions.

    Args:
        pos_yx: ``(T, 2)`` positions (any real units; the caller scales them).
        dim: output width, a multiple of 4: ``dim/4`` frequencies
            ``ω_k = temperature^(-k/(dim/4))`` per axis, laid out
            ``[sin(y ω), cos(y ω), sin(x ω), cos(x ω)]``.

    Returns:
        ``(T, dim)`` float32, computed in float64 so large µm positions keep their precision.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    n_freq = dim // 4
    omega = temperature ** (-torch.arange(n_freq, dtype=torch.float64, device=pos_yx.device) / n_freq)
    pos = pos_yx.to(torch.float64)
    ang_y = pos[:, :1] * omega
    ang_x = pos[:, 1:2] * omega
    return torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=1).float()


class PhysicalPosEmbed(nn.Module):
    """Fixed sin-cos code of patch centres in units of ``pos_ref_um`` µm (no parameters)."""

    def __init__(self, embed_dim: int, pos_ref_um: float) -> None:
        super().__init__()
        if not pos_ref_um > 0:
            raise ValueError(f"model.pos_ref_um must be > 0, got {pos_ref_um}")
        if embed_dim % 4:
            raise ValueError(f"pos_embed 'physical' needs embed_dim divisible by 4, got {embed_dim}")
        self.embed_dim = embed_dim
        self.pos_ref_um = float(pos_ref_um)

    def forward(self, packed: PackedBatch) -> Tensor:
        """``(T, D)`` embedding of every real patch token of ``packed``."""
        return sincos_2d(packed.patch_centres_um() / self.pos_ref_um, self.embed_dim)


class LearnedPosEmbed(nn.Module):
    """Learned ``grid × grid`` table resampled (bicubic) to every image's own patch grid."""

    def __init__(self, embed_dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, packed: PackedBatch) -> Tensor:
        """``(T, D)`` embedding of every real patch token, image-major."""
        resample = import_timm().layers.resample_abs_pos_embed
        cache: dict[tuple[int, int], Tensor] = {}
        per_image = []
        for gh, gw in packed.grid_hw.tolist():
            if (gh, gw) not in cache:
                if (gh, gw) == (self.grid, self.grid):
                    cache[gh, gw] = self.pos_embed[0]
                else:
                    cache[gh, gw] = resample(
                        self.pos_embed, new_size=[gh, gw], old_size=[self.grid, self.grid],
                        num_prefix_tokens=0, interpolation="bicubic", antialias=True,
                    )[0]
            per_image.append(cache[gh, gw])
        return torch.cat(per_image)


def build_pos_embed(kind: str, embed_dim: int, pos_ref_um: float, max_tokens_per_image: int) -> nn.Module:
    """Position embedding selected by ``model.pos_embed`` (``physical`` | ``learned``)."""
    if kind == "physical":
        return PhysicalPosEmbed(embed_dim, pos_ref_um)
    if kind == "learned":
        return LearnedPosEmbed(embed_dim, grid=max(1, math.isqrt(max_tokens_per_image)))
    raise ValueError(f"model.pos_embed must be 'physical' or 'learned', got {kind!r}")
