"""Plankton multi-crop augmentations that keep physical scale.

DINOv2's ImageNet pipeline (RandomResizedCrop, colour jitter, solarize) is wrong for
plankton vignettes in three ways, and this module replaces it:

* **Size is information.** A 1 mm copepod and a 100 µm one differ in taxon, so crops are
  never resized to a fixed pixel size: every crop stays at the instrument's native µm/px.
  Global crops are windows that keep at least ``crops.global_min_object_fraction`` of the
  organism's pixels; local crops have a side drawn in **µm** (per-instrument
  ``local_size_um``) centred on the organism. A crop is downscaled only when it exceeds its
  token budget (``crops.global_max_tokens`` / ``local_max_tokens``) and its pixel size is
  then multiplied by the same factor, so the physical position embedding stays right.
* **Orientation is arbitrary in the water.** Any rotation angle (0-360°) plus a flip
  (rotation and one flip generate every orientation). Corners exposed by the rotation are
  filled with the vignette's own background level (median of its border), not black,
  because ZooScan/IFCB/FlowCam vignettes have bright backgrounds and a black wedge would be
  a trivial cue.
* **Images are grey.** Only grey-level jitter (brightness, contrast about the background
  level, gamma): no hue/saturation jitter, no solarisation (it inverts the
  object/background polarity that distinguishes instruments' optics). Blur and sensor
  noise strengths are per-instrument profiles (``augment.profiles``).

Randomness comes only from the ``numpy.random.Generator`` passed in, so a sample's crops
are a pure function of its seed (exact resume, any number of DataLoader workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from aqqua_geo.foundation.packing import resized_size
from aqqua_geo.imaging import background_level, border_pixels, normalise_for_model, to_grey, to_model_channels

_MAX_GLOBAL_TRIES = 10


@dataclass
class Crop:
    """One augmented view: float tensor (C, H, W), normalised with the model's
    ``img_mean``/``img_std``, whose sides are whole patches, and its µm per pixel."""

    image: torch.Tensor
    pixel_size_um: float


def instrument_profile(cfg: dict, instrument: str | None) -> dict:
    """Augmentation profile of *instrument*: ``augment.profiles[instrument]`` over ``default``.

    Matching is exact first, then case-insensitive; unknown instruments use ``default``.
    """
    profiles = cfg["augment"]["profiles"]
    default = profiles["default"]
    name = instrument if instrument in profiles else _casefold_match(profiles, instrument)
    override = profiles.get(name, {}) if name else {}
    unknown = set(override) - set(default)
    if unknown:
        raise ValueError(
            f"augment.profiles.{name}: unknown keys {sorted(unknown)} (valid: {sorted(default)})"
        )
    return {**default, **override}


def _casefold_match(profiles: dict, instrument: str | None) -> str | None:
    if not instrument:
        return None
    for key in profiles:
        if key.casefold() == instrument.casefold():
            return key
    return None


class PlanktonMultiCrop:
    """``n_global_crops`` global + ``n_local_crops`` local views of one vignette.

    Call with a uint8 image (H×W or H×W×C), its µm/px, its instrument and a seeded
    generator; returns ``{"global_crops": [Crop], "local_crops": [Crop]}``.
    """

    def __init__(self, cfg: dict) -> None:
        crops = cfg["crops"]
        self.cfg = cfg
        self.patch_size = int(cfg["model"]["patch_size"])
        self.in_chans = int(cfg["model"]["in_chans"])
        # The backbone's own normalisation (stored in backbone.pt, reused by embed_images).
        self.img_mean = cfg["model"]["img_mean"]
        self.img_std = cfg["model"]["img_std"]
        self.n_global = int(crops["n_global_crops"])
        self.n_local = int(crops["n_local_crops"])
        self.global_area_range = tuple(float(v) for v in crops["global_area_range"])
        self.global_min_object_fraction = float(crops["global_min_object_fraction"])
        self.global_max_tokens = int(crops["global_max_tokens"])
        self.local_size_um = crops["local_size_um"]
        self.local_object_scale = tuple(float(v) for v in crops["local_object_scale"])
        self.local_max_tokens = int(crops["local_max_tokens"])
        self.min_side = int(crops["min_side_patches"]) * self.patch_size
        self._profiles: dict[str | None, dict] = {}

    def profile(self, instrument: str | None) -> dict:
        if instrument not in self._profiles:
            self._profiles[instrument] = instrument_profile(self.cfg, instrument)
        return self._profiles[instrument]

    def __call__(
        self, image: np.ndarray, pixel_size_um: float, instrument: str | None, rng: np.random.Generator
    ) -> dict[str, list[Crop]]:
        if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
            raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
        prof = self.profile(instrument)
        image = to_model_channels(image, self.in_chans)
        background = background_level(image) if prof["background"] == "auto" else float(prof["background"])
        mask = organism_mask(image, background)
        blur_p = prof["blur_p"]
        global_crops = [
            self._global_crop(image, mask, pixel_size_um, background, prof, blur_p[min(i, 1)], rng)
            for i in range(self.n_global)
        ]
        local_crops = [
            self._local_crop(image, mask, pixel_size_um, background, prof, blur_p[2], rng)
            for _ in range(self.n_local)
        ]
        return {"global_crops": global_crops, "local_crops": local_crops}

    # -- crops -------------------------------------------------------------------------------
    def _global_crop(self, image, mask, px_um, bg, prof, blur_p, rng) -> Crop:
        img, msk = _random_orientation(image, mask, bg, prof, rng)
        h, w = msk.shape
        total = max(int(msk.sum()), 1)
        box = (0, 0, h, w)  # fallback: the whole (rotated) vignette
        for _ in range(_MAX_GLOBAL_TRIES):
            area = rng.uniform(*self.global_area_range) * h * w
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            ch = min(h, max(1, round(math.sqrt(area / aspect))))
            cw = min(w, max(1, round(math.sqrt(area * aspect))))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            if msk[top : top + ch, left : left + cw].sum() >= self.global_min_object_fraction * total:
                box = (top, left, ch, cw)
                break
        return self._finish(img, box, px_um, bg, prof, blur_p, self.global_max_tokens, rng)

    def _local_crop(self, image, mask, px_um, bg, prof, blur_p, rng) -> Crop:
        img, msk = _random_orientation(image, mask, bg, prof, rng)
        h, w = msk.shape
        size_um = self.local_size_um or prof["local_size_um"]
        rows, cols = np.nonzero(msk)
        if size_um is not None:  # physical size range: log-uniform side in µm
            side = math.exp(rng.uniform(math.log(size_um[0]), math.log(size_um[1]))) / px_um
        else:  # no physical range known for this instrument: relative to the organism
            extent = max(np.ptp(rows) + 1, np.ptp(cols) + 1) if rows.size else max(h, w)
            side = rng.uniform(*self.local_object_scale) * extent
        side = int(round(min(max(side, self.patch_size), h, w)))
        # Centre on a random organism pixel: most of a vignette is empty water.
        if rows.size:
            k = int(rng.integers(rows.size))
            cy, cx = int(rows[k]), int(cols[k])
        else:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top = min(max(cy - side // 2, 0), h - side)
        left = min(max(cx - side // 2, 0), w - side)
        return self._finish(img, (top, left, side, side), px_um, bg, prof, blur_p, self.local_max_tokens, rng)

    def _finish(self, img: Image.Image, box, px_um, bg, prof, blur_p, max_tokens, rng) -> Crop:
        top, left, ch, cw = box
        crop = img.crop((left, top, left + cw, top + ch))
        crop, px_um = fit_token_budget(crop, px_um, self.patch_size, max_tokens)
        crop = _pad_to_patches(crop, self.patch_size, self.min_side, bg, rng)
        if rng.random() < blur_p:
            crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(*prof["blur_sigma_px"])))
        x = np.asarray(crop, dtype=np.float32) / 255.0
        x = _photometric(x, bg / 255.0, prof, rng)
        return Crop(normalise_for_model(x, self.img_mean, self.img_std), px_um)


# -- building blocks (public: used by tests) -------------------------------------------------
def organism_mask(image: np.ndarray, background: float) -> np.ndarray:
    """Boolean mask of pixels that differ from the background by more than its noise.

    Threshold = max(8 grey levels, 4 × the border's median absolute deviation). Used only
    to place crops, so a rough mask is enough (the traits' full segmentation is not needed);
    an all-background image gives an all-True mask.
    """
    grey = to_grey(image)
    mad = float(np.median(np.abs(border_pixels(grey) - background)))
    mask = np.abs(grey - background) > max(8.0, 4.0 * mad)
    return mask if mask.any() else np.ones_like(mask)


def fit_token_budget(
    crop: Image.Image, pixel_size_um: float, patch_size: int, max_tokens: int
) -> tuple[Image.Image, float]:
    """Downscale *crop* (never up) until its patch grid has at most *max_tokens* tokens.

    The size is :func:`~aqqua_geo.foundation.packing.resized_size`, the fit that packing
    applies at inference. Returns the crop and its new pixel size (µm/px grows by the mean of
    the two axis factors).
    """
    w, h = crop.size
    nh, nw = resized_size(h, w, patch_size, max_tokens)
    if (nh, nw) == (h, w):
        return crop, pixel_size_um
    resized = crop.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    return resized, pixel_size_um * 0.5 * (w / nw + h / nh)


def _random_orientation(image: np.ndarray, mask: np.ndarray, bg: float, prof, rng) -> tuple[Image.Image, np.ndarray]:
    """Flip (p=0.5) then rotate by any angle; corners take the background level."""
    img = Image.fromarray(image)
    msk = Image.fromarray(mask.astype(np.uint8) * 255)
    if prof["flip"] and rng.random() < 0.5:
        img, msk = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), msk.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if prof["rotate"]:
        angle = float(rng.uniform(0.0, 360.0))
        fill = int(round(bg)) if img.mode == "L" else (int(round(bg)),) * 3
        img = img.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=fill)
        msk = msk.rotate(angle, Image.Resampling.NEAREST, expand=True, fillcolor=0)
    return img, np.asarray(msk) > 0


def _pad_to_patches(crop: Image.Image, patch: int, min_side: int, bg: float, rng) -> Image.Image:
    """Pad with background to whole patches (at least *min_side*), at a random offset."""
    w, h = crop.size
    tw = max(math.ceil(w / patch) * patch, min_side)
    th = max(math.ceil(h / patch) * patch, min_side)
    if (tw, th) == (w, h):
        return crop
    fill = int(round(bg)) if crop.mode == "L" else (int(round(bg)),) * 3
    canvas = Image.new(crop.mode, (tw, th), fill)
    canvas.paste(crop, (int(rng.integers(0, tw - w + 1)), int(rng.integers(0, th - h + 1))))
    return canvas


def _photometric(x: np.ndarray, bg: float, prof: dict, rng) -> np.ndarray:
    """Grey-level jitter (same on every channel: never a hue change) then sensor noise."""
    if rng.random() < prof["jitter_p"]:
        contrast = rng.uniform(1 - prof["contrast"], 1 + prof["contrast"])
        x = bg + (x - bg) * contrast + rng.uniform(-prof["brightness"], prof["brightness"])
        g0, g1 = prof["gamma"]
        x = np.clip(x, 0.0, 1.0) ** math.exp(rng.uniform(math.log(g0), math.log(g1)))
    if rng.random() < prof["noise_p"]:
        noise = rng.normal(0.0, prof["noise_std"], size=x.shape[:2])  # same on all channels
        x = x + (noise if x.ndim == 2 else noise[..., None])
    return np.clip(x, 0.0, 1.0).astype(np.float32)
