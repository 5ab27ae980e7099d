"""Plankton multi-crop: physical scale kept, crops in µm, grey-only jitter, background fill,
determinism; iBOT block masking ratios on any grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from aqqua_geo.foundation.augment import (
    PlanktonMultiCrop,
    background_level,
    fit_token_budget,
    instrument_profile,
    organism_mask,
)
from aqqua_geo.foundation.config import load_config
from aqqua_geo.foundation.masking import block_mask, sample_masks


def _uvp6(name="Copepoda__6666"):
    from aqqua_geo.data import path

    file = sorted((path("uvp6_vignettes") / name).glob("*.png"))[0]
    return np.asarray(Image.open(file).convert("L"))


def _bright_disc(size=120, radius=30, background=230, organism=60):
    """A dark organism on a bright (ZooScan/IFCB-like) background."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), background, np.uint8)
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2] = organism
    return img


def _augment(*overrides):
    return PlanktonMultiCrop(load_config("tiny", list(overrides)))


def _undo_norm(aug, crop):
    return crop.image.numpy() * aug.img_std + aug.img_mean  # back to [0, 1] grey levels


def test_crops_keep_native_pixel_size_within_the_token_budget():
    aug = _augment("crops.global_max_tokens=64", "crops.local_max_tokens=16")
    out = aug(_uvp6(), 73.0, "UVP6", np.random.default_rng(0))
    assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 4
    for crop, budget in [(c, 64) for c in out["global_crops"]] + [(c, 16) for c in out["local_crops"]]:
        _, h, w = crop.image.shape
        assert h % 8 == 0 and w % 8 == 0  # whole patches
        assert (h // 8) * (w // 8) <= budget
        assert crop.pixel_size_um >= 73.0  # never upsampled
    # local crops of a 54×94 UVP6 vignette are far below their budget: native 73 µm/px
    assert all(c.pixel_size_um == 73.0 for c in out["local_crops"])


def test_downscaling_updates_pixel_size():
    crop = Image.fromarray(np.zeros((100, 200), np.uint8))
    small, px = fit_token_budget(crop, 10.0, patch_size=10, max_tokens=50)
    w, h = small.size
    assert math.ceil(h / 10) * math.ceil(w / 10) <= 50
    assert px == pytest.approx(10.0 * 0.5 * (200 / w + 100 / h))
    same, px_same = fit_token_budget(crop, 10.0, patch_size=10, max_tokens=200)
    assert same is crop and px_same == 10.0


def test_local_crops_have_the_physical_size_asked_for():
    # no rotation: a local crop's side is exactly its µm size / pixel size (before padding)
    aug = _augment("augment.profiles.default.rotate=false", "crops.local_size_um=[400, 800]",
                   "crops.local_max_tokens=400", "crops.n_local_crops=16")
    img = _bright_disc(size=200, radius=80)
    out = aug(img, 5.0, "ZooScan", np.random.default_rng(1))
    for crop in out["local_crops"]:
        side_um = np.array(crop.image.shape[1:]) * crop.pixel_size_um
        assert crop.pixel_size_um == 5.0
        assert np.all(side_um >= 400 - 5.0) and np.all(side_um <= 800 + 8 * 5.0)  # + patch padding


def test_unknown_instrument_local_crops_scale_with_the_organism():
    # the default profile has no µm range: local sides are 0.2-0.6 × the organism's extent
    aug = _augment("augment.profiles.default.rotate=false", "crops.local_max_tokens=400",
                   "crops.n_local_crops=12")
    img = _bright_disc(size=200, radius=50)  # organism extent 100 px
    for crop in aug(img, 5.0, "NewCam", np.random.default_rng(5))["local_crops"]:
        side_px = max(crop.image.shape[1:])
        assert crop.pixel_size_um == 5.0 and 16 <= side_px <= 0.6 * 100 + 8


def test_instrument_profiles_merge_over_default():
    cfg = load_config("tiny")
    assert instrument_profile(cfg, "UVP6")["local_size_um"] == [700.0, 2500.0]
    assert instrument_profile(cfg, "uvp6")["local_size_um"] == [700.0, 2500.0]  # case-insensitive
    assert instrument_profile(cfg, "NewCam")["local_size_um"] is None  # default profile
    cfg["augment"]["profiles"]["Bad"] = {"hue": 0.1}
    with pytest.raises(ValueError, match=r"augment.profiles.Bad: unknown keys \['hue'\]"):
        instrument_profile(cfg, "Bad")


def test_global_crops_keep_most_of_the_organism():
    aug = _augment("augment.profiles.default.rotate=false", "augment.profiles.default.jitter_p=0",
                   "augment.profiles.default.noise_p=0", "augment.profiles.default.blur_p=[0, 0, 0]",
                   "crops.global_max_tokens=64", "model.max_tokens_per_image=64")
    img = _bright_disc(size=64, radius=12)
    organism_px = int((img < 145).sum())
    rng = np.random.default_rng(2)
    for _ in range(10):
        for crop in aug(img, 10.0, "ZooScan", rng)["global_crops"]:
            grey = _undo_norm(aug, crop)[0] * 255
            assert crop.pixel_size_um == 10.0
            assert (grey < 145).sum() >= 0.6 * organism_px


def test_rotation_fills_with_the_background_not_black():
    aug = _augment("augment.profiles.default.jitter_p=0", "augment.profiles.default.noise_p=0",
                   "augment.profiles.default.blur_p=[0, 0, 0]", "crops.global_area_range=[1.0, 1.0]",
                   "crops.global_min_object_fraction=0.0")
    img = _bright_disc()
    assert background_level(img) == 230
    rng = np.random.default_rng(3)
    for crop in aug(img, 10.0, "ZooScan", rng)["global_crops"]:
        grey = _undo_norm(aug, crop)[0] * 255
        corners = [grey[0, 0], grey[0, -1], grey[-1, 0], grey[-1, -1]]
        assert min(corners) > 200  # a black wedge would be ~0


def test_grey_images_stay_grey_no_hue_jitter():
    aug = _augment("model.in_chans=3", "model.img_mean=[0.5]", "model.img_std=[0.5]")
    out = aug(_uvp6(), 73.0, "UVP6", np.random.default_rng(4))
    for crop in out["global_crops"] + out["local_crops"]:
        assert crop.image.shape[0] == 3
        assert torch.equal(crop.image[0], crop.image[1]) and torch.equal(crop.image[1], crop.image[2])
    rgb = np.stack([_uvp6()] * 3, axis=-1)
    grey_model = _augment()(rgb, 73.0, "UVP6", np.random.default_rng(4))
    assert grey_model["global_crops"][0].image.shape[0] == 1  # RGB → luminance for in_chans=1


def test_same_seed_same_crops():
    aug = _augment()
    a = aug(_uvp6(), 73.0, "UVP6", np.random.default_rng(7))
    b = aug(_uvp6(), 73.0, "UVP6", np.random.default_rng(7))
    for x, y in zip(a["global_crops"] + a["local_crops"], b["global_crops"] + b["local_crops"]):
        assert torch.equal(x.image, y.image) and x.pixel_size_um == y.pixel_size_um


def test_bad_inputs_are_named():
    aug = _augment()
    with pytest.raises(ValueError, match="pixel_size_um must be a positive number"):
        aug(_uvp6(), float("nan"), "UVP6", np.random.default_rng(0))
    with pytest.raises(ValueError, match="images must be uint8"):
        aug(_uvp6().astype(np.float32), 73.0, "UVP6", np.random.default_rng(0))


def test_organism_mask_on_real_vignette():
    img = _uvp6()
    mask = organism_mask(img, background_level(img))
    assert 0 < mask.mean() < 0.5  # a UVP6 vignette is mostly dark water


# -- masking ------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_block_mask_hits_the_target_count_on_any_grid(h, w, ratio, seed):
    n = int(round(ratio * h * w))
    mask = block_mask((h, w), n, np.random.default_rng(seed))
    assert mask.shape == (h, w) and int(mask.sum()) == n


def test_block_mask_grows_blocks_not_salt_and_pepper():
    mask = block_mask((16, 16), 80, np.random.default_rng(0))
    # most masked patches have a masked 4-neighbour
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert (mask & neighbours).sum() >= 0.9 * mask.sum()


def test_sample_masks_ratios_follow_dinov2_bins():
    ibot = load_config("tiny")["ibot"]  # p = 0.5, ratios over [0.1, 0.5]
    grids = [(9, 7)] * 20 + [(4, 13)] * 20
    masks = sample_masks(grids, ibot, np.random.default_rng(0))
    ratios = sorted(float(m.float().mean()) for m in masks)
    masked = [r for r in ratios if r > 0]
    assert len(masked) == 20  # mask_sample_probability × crops
    assert 0.08 <= masked[0] and masked[-1] <= 0.52  # inside [min, max] (rounding to whole patches)
    assert masked[-1] - masked[0] > 0.25  # the bins spread over the range
    assert all(tuple(m.shape) == g for m, g in zip(masks, grids))
