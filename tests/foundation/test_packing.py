"""NaViT patch n' pack: grids, resizing, first-fit-decreasing rows, masks and efficiency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.foundation.packing import concat_packed, grid_size, pack_images, resized_size


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), p=st.sampled_from([4, 8, 14, 16]),
       budget=st.integers(1, 600))
def test_resize_never_up_keeps_aspect_and_fits_budget(h, w, p, budget):
    rh, rw = resized_size(h, w, p, budget)
    assert rh <= h and rw <= w
    assert math.ceil(rh / p) * math.ceil(rw / p) <= budget
    if math.ceil(h / p) * math.ceil(w / p) <= budget:
        assert (rh, rw) == (h, w)
    elif min(rh, rw) > 8:  # aspect ratio kept up to the rounding of a pixel
        assert abs(rh / rw - h / w) <= (h / w) * (1.0 / min(rh, rw) + 1.0 / min(rh, rw)) + 1e-9


def test_tiny_image_becomes_one_padded_patch():
    img = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3)
    pb = pack_images([img], [1.0], patch_size=4, max_tokens_per_row=8)
    assert pb.grid_hw.tolist() == [[1, 1]]
    patch = pb.patches.reshape(4, 4)
    # centred replicate padding (odd remainder to the end): rows [pad, r0, r1, pad],
    # cols [c0, c1, c2, pad]
    assert torch.equal(patch[1, :3], img[0, 0]) and torch.equal(patch[2, :3], img[0, 1])
    assert torch.equal(patch[0], patch[1]) and torch.equal(patch[3], patch[2])
    assert torch.equal(patch[:, 3], patch[:, 2])


def test_patch_layout_is_channel_major_raster():
    img = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(2, 4, 8)
    pb = pack_images([img], [1.0], patch_size=4, max_tokens_per_row=8)
    assert pb.grid_hw.tolist() == [[1, 2]]
    assert torch.equal(pb.patches[1], img[:, :, 4:].reshape(-1))  # (C, p, p) flattened
    assert pb.grid_yx.tolist() == [[0, 0], [0, 1]]


def test_downsizing_updates_pixel_size():
    img = torch.rand(1, 64, 32)
    pb = pack_images([img], [2.0], patch_size=4, max_tokens_per_row=100, max_tokens_per_image=32)
    gh, gw = pb.grid_hw[0].tolist()
    assert gh * gw <= 32 and (gh, gw) == grid_size(64, 32, 4, 32)
    h, w = resized_size(64, 32, 4, 32)
    assert pb.pixel_size_yx_um[0].tolist() == pytest.approx([2.0 * 64 / h, 2.0 * 32 / w])


def _five_images():
    sizes = [(12, 16), (4, 4), (3, 2), (20, 8), (16, 16)]  # 12, 1, 1, 10, 16 patches of 4 px
    return [torch.rand(1, h, w) for h, w in sizes]


def test_first_fit_decreasing_rows_and_efficiency_by_hand():
    pb = pack_images(_five_images(), [1.0] * 5, patch_size=4, max_tokens_per_row=20)
    assert pb.tokens_per_image.tolist() == [12, 1, 1, 10, 16]
    lay = pb.layout(1)
    # blocks (CLS + patches) 13, 2, 2, 11, 17 sorted: 17 -> row0, 13 -> row1, 11 -> row2,
    # 2 -> row0 (19), 2 -> row1 (15)
    assert lay.image_row.tolist() == [1, 0, 1, 2, 0]
    assert lay.image_start.tolist() == [0, 17, 13, 0, 0]
    assert (lay.n_rows, lay.row_length) == (3, 19)
    assert pb.efficiency == pytest.approx(45 / 57)
    assert pb.padded_efficiency == pytest.approx(45 / (17 * 5))
    # every real slot is used once, the rest is padding
    assert int((lay.segment >= 0).sum()) == 45


def test_attention_mask_is_block_diagonal():
    pb = pack_images(_five_images(), [1.0] * 5, patch_size=4, max_tokens_per_row=20)
    lay = pb.layout(1)
    mask = lay.attention_mask()[:, 0]
    seg = lay.segment
    for r in range(lay.n_rows):
        for a in range(lay.row_length):
            for b in range(lay.row_length):
                assert bool(mask[r, a, b]) == (int(seg[r, a]) == int(seg[r, b]))
    # image 1 (row 0, slots 17-18) and image 4 (row 0, slots 0-16) cannot see each other
    assert not mask[0, 17, :17].any() and not mask[0, :17, 17].any()


def test_more_prefix_tokens_relayout_within_budget():
    pb = pack_images(_five_images(), [1.0] * 5, patch_size=4, max_tokens_per_row=20)
    lay = pb.layout(3)
    lengths = (pb.tokens_per_image + 3).tolist()
    for r in range(lay.n_rows):
        assert sum(n for n, row in zip(lengths, lay.image_row.tolist()) if row == r) <= 20


def test_masks_are_flattened_image_major():
    imgs = [torch.rand(1, 8, 12), torch.rand(1, 4, 8)]
    m0 = torch.tensor([[True, False, False], [False, False, True]])
    m1 = torch.tensor([[False, True]])
    pb = pack_images(imgs, [1.0, 1.0], 4, 16, masks=[m0, m1])
    assert pb.mask.tolist() == [True, False, False, False, False, True, False, True]


def test_bad_inputs_have_clear_messages():
    img = torch.rand(1, 8, 8)
    with pytest.raises(ValueError, match="2 images but 1 pixel sizes"):
        pack_images([img, img], [1.0], 4, 16)
    with pytest.raises(ValueError, match="image 0 has invalid pixel size"):
        pack_images([img], [0.0], 4, 16)
    with pytest.raises(ValueError, match=r"mask 0 has shape \(3, 3\), image grid is \(2, 2\)"):
        pack_images([img], [1.0], 4, 16, masks=[torch.zeros(3, 3, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"image 1 has shape \(3, 8, 8\)"):
        pack_images([img, torch.rand(3, 8, 8)], [1.0, 1.0], 4, 16)
    with pytest.raises(ValueError, match="no images"):
        pack_images([], [], 4, 16)


def test_to_device_keeps_content():
    pb = pack_images(_five_images(), [1.0] * 5, patch_size=4, max_tokens_per_row=20)
    moved = pb.to("cpu")
    assert torch.equal(moved.patches, pb.patches) and moved.efficiency == pb.efficiency


def test_concat_packed_keeps_images_tokens_and_masks_in_order():
    a = pack_images(_five_images(), [1.0] * 5, patch_size=4, max_tokens_per_row=20)
    m = torch.zeros(3 * 3, dtype=torch.bool)
    m[4] = True
    b = pack_images([torch.rand(1, 12, 12)], [2.0], 4, 16, masks=[m.reshape(3, 3)])
    both = concat_packed([a, b])
    assert both.n_images == 6 and both.n_tokens == a.n_tokens + b.n_tokens
    assert both.image_index[-9:].eq(5).all() and torch.equal(both.patches[: a.n_tokens], a.patches)
    assert both.mask.tolist() == [False] * a.n_tokens + m.tolist()
    assert both.pixel_size_yx_um[5].tolist() == [2.0, 2.0]


def test_packing_beats_padding_on_bundled_uvp6_vignettes(bundled_data):
    from PIL import Image

    files = sorted(bundled_data.path("uvp6_vignettes").glob("*/*.png"))[::5]
    imgs = [torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255.0)[None] for f in files]
    pb = pack_images(imgs, [73.0] * len(imgs), patch_size=8, max_tokens_per_row=1024, max_tokens_per_image=256)
    # vignettes range from 70x18 to 354x216 px: padding to the largest wastes most slots
    assert pb.efficiency > 0.9
    assert pb.padded_efficiency < 0.6
    assert pb.layout(1).row_length <= 1024


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=12),
       row=st.integers(26, 80), n_prefix=st.integers(1, 4))
def test_layout_invariants(sizes, row, n_prefix):
    pb = pack_images([torch.zeros(1, h, w) for h, w in sizes], [1.0] * len(sizes), 4, row,
                     max_tokens_per_image=25, n_prefix_tokens=n_prefix)
    lay = pb.layout(n_prefix)
    blocks = (pb.tokens_per_image + n_prefix).tolist()
    # rows respect the budget and every image's block is contiguous in one row
    for r in range(lay.n_rows):
        assert sum(b for b, rr in zip(blocks, lay.image_row.tolist()) if rr == r) <= row
    slots = set(zip(lay.token_row.tolist(), lay.token_slot.tolist()))
    slots |= set(zip(lay.prefix_row.tolist(), lay.prefix_slot.tolist()))
    assert len(slots) == pb.n_tokens + n_prefix * pb.n_images  # no slot used twice
    assert int((lay.segment >= 0).sum()) == len(slots)
    assert torch.equal(lay.segment[lay.token_row, lay.token_slot], pb.image_index)
    assert 0 < pb.padded_efficiency <= 1 and 0 < pb.efficiency <= 1
    # first-fit-decreasing never needs more rows than one per image, nor fewer than the volume bound
    assert math.ceil(sum(blocks) / row) <= lay.n_rows <= pb.n_images
