"""Position embeddings for packed variable-size images.

``physical`` (default): a fixed 2-D sin-cos code of each patch centre's *physical* position,
in µm from the image centre divided by ``pos_ref_um``, in the spirit of Scale-MAE's
ground-sample-distance encoding (Reed et al. 2023: grid positions multiplied by GSD / reference
GSD). The same organism imaged at 0.3 µm/px and at 70 µm/px then receives the same code at
the same physical point, so the model sees absolute size, which is a key taxonomic cue in
plankton and the basis of trait estimates.

``learned``: a learned grid, interpolated bicubically to each image's patch grid exactly as
DINOv2 does; it encodes relative position only, like an ImageNet ViT. ``learned+physical``:
both, the µm code behind a zero-initialised gain (warm starts from public weights).
``gated_physical``: the µm code behind a zero-initialised gain and nothing else, for models
whose relative position is rotary (DINOv3 warm starts, ``model.rope_base``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

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
    """Learned ``grid × grid`` table interpolated to every image's own patch grid, as DINOv2.

    The interpolation is DINOv2's ``interpolate_pos_encoding``: bicubic with
    ``scale_factor = (g + 0.1) / grid`` per axis (no antialiasing), and the table itself at
    the native grid, so public DINOv2 weights give the public model's tokens. With
    ``physical_ref_um`` the µm code of :class:`PhysicalPosEmbed` is added through a
    per-channel gain initialised to zero (``pos_embed: learned+physical``): a warm-started
    model starts exactly at the public model and can learn to use physical size.
    """

    def __init__(self, embed_dim: int, grid: int, physical_ref_um: float | None = None) -> None:
        super().__init__()
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.physical = None if physical_ref_um is None else PhysicalPosEmbed(embed_dim, physical_ref_um)
        self.physical_gain = None if physical_ref_um is None else nn.Parameter(torch.zeros(embed_dim))

    def resampled(self, gh: int, gw: int) -> Tensor:
        """``(gh·gw, D)`` table for a ``gh × gw`` grid."""
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed[0]
        table = self.pos_embed.float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        out = nn.functional.interpolate(
            table, scale_factor=((gh + 0.1) / self.grid, (gw + 0.1) / self.grid), mode="bicubic")
        if tuple(out.shape[-2:]) != (gh, gw):  # floor((g + 0.1)) == g: cannot happen, but say so
            raise RuntimeError(f"position table resampled to {tuple(out.shape[-2:])}, expected {(gh, gw)}")
        return out.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(self.pos_embed.dtype)

    def forward(self, packed: PackedBatch) -> Tensor:
        """``(T, D)`` embedding of every real patch token, image-major."""
        cache: dict[tuple[int, int], Tensor] = {}
        per_image = []
        for gh, gw in packed.grid_hw.tolist():
            if (gh, gw) not in cache:
                cache[gh, gw] = self.resampled(gh, gw)
            per_image.append(cache[gh, gw])
        out = torch.cat(per_image)
        if self.physical is not None:
            out = out + self.physical_gain * self.physical(packed).to(out.dtype)
        return out


class GatedPhysicalPosEmbed(nn.Module):
    """:class:`PhysicalPosEmbed` through a per-channel gain initialised to zero."""

    def __init__(self, embed_dim: int, pos_ref_um: float) -> None:
        super().__init__()
        self.physical = PhysicalPosEmbed(embed_dim, pos_ref_um)
        self.physical_gain = nn.Parameter(torch.zeros(embed_dim))

    def forward(self, packed: PackedBatch) -> Tensor:
        return self.physical_gain * self.physical(packed).to(self.physical_gain.dtype)


POS_EMBEDS = ("physical", "learned", "learned+physical", "gated_physical")


def build_pos_embed(kind: str, embed_dim: int, pos_ref_um: float, max_tokens_per_image: int,
                    grid: int | None = None) -> nn.Module:
    """Position embedding selected by ``model.pos_embed`` (see :data:`POS_EMBEDS`).

    ``grid``: side of a learned table (default: the square root of ``max_tokens_per_image``).
    """
    grid = grid or max(1, math.isqrt(max_tokens_per_image))
    if kind == "physical":
        return PhysicalPosEmbed(embed_dim, pos_ref_um)
    if kind == "learned":
        return LearnedPosEmbed(embed_dim, grid)
    if kind == "learned+physical":
        return LearnedPosEmbed(embed_dim, grid, physical_ref_um=pos_ref_um)
    if kind == "gated_physical":
        return GatedPhysicalPosEmbed(embed_dim, pos_ref_um)
    raise ValueError(f"model.pos_embed must be one of {POS_EMBEDS}, got {kind!r}")
