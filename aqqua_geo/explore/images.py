"""Store images as PNG for the page (native resolution unless a size cap is asked for)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_png(image: np.ndarray, max_side: int | None = None) -> tuple[bytes, float]:
    """PNG bytes of a uint8 H×W or H×W×C image and the scale applied (1.0 = native pixels).

    With *max_side*, larger images are shrunk (aspect kept) so static exports stay small; the
    page derives the scale bar from the native width in the metadata, so it stays correct.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    scale = 1.0
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue(), scale
