"""Pixel conventions shared by training, inference and measurement.

One grey conversion, one background estimate and one model-input function, so that the
crops a backbone is trained on and the images it embeds at inference are made the same way:

- :func:`to_grey` — float 0–255 grey image (ITU-R BT.601 luminance) for measurement;
- :func:`border_pixels`, :func:`background_stats`, :func:`background_level` — vignettes are
  cut around the organism, so their one-pixel frame is background;
- :func:`to_model_channels` — uint8 image with the model's channel count (luminance rounded
  to uint8 for grey models: the quantisation of the stored images, kept on both paths);
- :func:`normalise_for_model` — float [0, 1] array → normalised ``(C, H, W)`` tensor;
- :func:`model_input` — both of the above: what every image fed to a backbone goes through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["LUMA_BT601", "BackgroundStats", "background_level", "background_stats", "border_pixels",
           "model_input", "normalise_for_model", "to_grey", "to_model_channels"]

# Luminance weights of ITU-R BT.601 (PIL's "L" mode).
LUMA_BT601 = np.array([0.299, 0.587, 0.114])


def to_grey(image: np.ndarray) -> np.ndarray:
    """Return a float64 H×W grey image on the 0–255 scale (BT.601 luminance for RGB/RGBA).

    uint8 is taken as is; bool, 16-bit and float images in [0, 1] are rescaled to 0–255 so that
    thresholds and grey statistics mean the same thing for every input.
    """
    img = np.asarray(image)
    if img.dtype == bool:
        img = img.astype(np.float64) * 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float64) * (255.0 / 65535.0)
    elif img.dtype.kind == "f" and img.size and np.nanmax(img) <= 1.0:
        img = img.astype(np.float64) * 255.0
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3:
        img = img[..., :3].astype(np.float64) @ LUMA_BT601
    elif img.ndim != 2:
        raise ValueError(f"expected an H×W or H×W×C image, got shape {img.shape}")
    return img.astype(np.float64, copy=False)


def border_pixels(grey: np.ndarray) -> np.ndarray:
    """The one-pixel frame of an image (vignettes are cut around the organism: it is background)."""
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


class BackgroundStats(NamedTuple):
    """Background of a vignette read from its border."""

    level: float  # median grey level of the border (0–255)
    dark_field: bool  # organism brighter than the background (UVP, IFCB) rather than darker
    noise: float  # robust σ of the border (1.4826 × MAD)


def background_stats(grey: np.ndarray) -> BackgroundStats:
    """Background level, dark-field flag and border noise of a grey image (see :func:`to_grey`)."""
    border = border_pixels(grey)
    level = float(np.median(border))
    dark_field = (level - float(grey.min())) < (float(grey.max()) - level)
    noise = 1.4826 * float(np.median(np.abs(border - level)))
    return BackgroundStats(level, bool(dark_field), noise)


def background_level(image: np.ndarray) -> float:
    """Background grey level (0–255) of any image: the median of its grey border."""
    return background_stats(to_grey(image)).level


def to_model_channels(image: np.ndarray, in_chans: int) -> np.ndarray:
    """uint8 H×W (grey model) or H×W×3 (RGB model) from a uint8 H×W or H×W×C image.

    RGB(A) becomes BT.601 luminance rounded to uint8 for a grey model; a grey image is
    repeated for an RGB model; alpha is dropped.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be H×W or H×W×C with H, W > 0, got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if in_chans == 1:
        if image.ndim == 3:
            image = np.clip(image[..., :3].astype(np.float32) @ LUMA_BT601.astype(np.float32) + 0.5,
                            0, 255).astype(np.uint8)
        return image
    if in_chans == 3:
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    raise ValueError(f"model.in_chans must be 1 or 3, got {in_chans}")


def normalise_for_model(x: np.ndarray, img_mean: Sequence[float] | float, img_std: Sequence[float] | float):
    """Float H×W or H×W×C array in [0, 1] → ``torch.float32`` tensor ``(C, H, W)``, (x − mean) / std."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    c = x.shape[0]
    mean = np.broadcast_to(np.asarray(img_mean, np.float32).reshape(-1), (c,)).reshape(c, 1, 1)
    std = np.broadcast_to(np.asarray(img_std, np.float32).reshape(-1), (c,)).reshape(c, 1, 1)
    return torch.from_numpy(np.ascontiguousarray((x - mean) / std, dtype=np.float32))


def model_input(image: np.ndarray, in_chans: int, img_mean: Sequence[float] | float,
                img_std: Sequence[float] | float):
    """The tensor a backbone sees for a uint8 image: model channels, /255, normalised."""
    return normalise_for_model(to_model_channels(image, in_chans).astype(np.float32) / 255.0, img_mean, img_std)
