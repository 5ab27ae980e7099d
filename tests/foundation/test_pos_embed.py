"""Physical (µm) and learned position embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from aqqua_geo.foundation.packing import pack_images
from aqqua_geo.foundation.pos_embed import LearnedPosEmbed, PhysicalPosEmbed, sincos_2d


def test_sincos_matches_hand_computation():
    pos = torch.tensor([[1.0, 2.0], [-0.5, 100.0]])
    emb = sincos_2d(pos, 8)  # 2 frequencies per axis: 1 and 10000^(-1/2) = 0.01
    for row, (y, x) in zip(emb.tolist(), pos.tolist()):
        expect = [math.sin(y), math.sin(0.01 * y), math.cos(y), math.cos(0.01 * y),
                  math.sin(x), math.sin(0.01 * x), math.cos(x), math.cos(0.01 * x)]
        assert row == pytest.approx(expect, abs=1e-6)


def test_patch_centres_are_relative_to_image_centre():
    pb = pack_images([torch.rand(1, 8, 12)], [2.0], patch_size=4, max_tokens_per_row=16)
    c = pb.patch_centres_um()
    assert c[:, 0].unique().tolist() == [-4.0, 4.0]  # (2 - 4) px * 2 µm, (6 - 4) px * 2 µm
    assert c[:, 1].unique().tolist() == [-8.0, 0.0, 8.0]


def test_same_physical_point_same_embedding_across_pixel_sizes():
    # 24 µm wide object: 24 px at 1 µm/px and 8 px at 3 µm/px. Patch centres (µm from the
    # centre): fine image -10, -6, -2, 2, 6, 10; coarse image -6, 6.
    fine = pack_images([torch.rand(1, 24, 24)], [1.0], 4, 64)
    coarse = pack_images([torch.rand(1, 8, 8)], [3.0], 4, 64)
    pe = PhysicalPosEmbed(embed_dim=32, pos_ref_um=5.0)
    e_fine = pe(fine).reshape(6, 6, 32)
    e_coarse = pe(coarse).reshape(2, 2, 32)
    for (cy, cx), (fy, fx) in {(0, 0): (1, 1), (0, 1): (1, 4), (1, 0): (4, 1), (1, 1): (4, 4)}.items():
        assert torch.equal(e_coarse[cy, cx], e_fine[fy, fx])
    # and a different physical point gets a different code
    assert not torch.allclose(e_coarse[0, 0], e_fine[0, 0])


def test_reference_length_sets_the_physical_scale():
    a = pack_images([torch.rand(1, 8, 8)], [1.0], 4, 16)
    b = pack_images([torch.rand(1, 8, 8)], [10.0], 4, 16)
    assert torch.allclose(PhysicalPosEmbed(16, 1.0)(a), PhysicalPosEmbed(16, 10.0)(b))


def test_learned_grid_is_resampled_to_each_image():
    pe = LearnedPosEmbed(embed_dim=8, grid=4)
    pb = pack_images([torch.rand(1, 16, 16), torch.rand(1, 8, 24)], [1.0, 1.0], 4, 40)
    out = pe(pb)
    assert out.shape == (16 + 2 * 6, 8)
    assert torch.equal(out[:16], pe.pos_embed[0])  # native grid: the table itself
    out.sum().backward()
    assert pe.pos_embed.grad is not None and pe.pos_embed.grad.abs().sum() > 0


def test_physical_needs_dim_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        PhysicalPosEmbed(30, 1.0)
    with pytest.raises(ValueError, match="pos_ref_um must be > 0"):
        PhysicalPosEmbed(32, 0.0)
