"""Fixtures of the downstream-classic tests: real IFCB ROIs + WHOI golden features, UVP6 vignettes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

IFCB_BIN = "IFCB5_2012_028_081515"
IFCB_PIXEL_UM = 1 / 3.4  # WHOI's µm per pixel for IFCB (iRfcb default micron_factor)


def read_ifcb_v1_rois(bin_dir: Path) -> dict[int, np.ndarray]:
    """ROIs of a V1 IFCB bin, by ROI number (1-based ADC row), read with numpy.

    V1 ADC rows: column 12/13 = ROI width/height, column 14 = start byte in the .roi file
    (0-based here: the file has a 1-byte preamble); pixels are row-major height × width.
    ROIs of the same trigger (ADC column 1) are stitched into one image on their union box,
    gaps filled with the median background, as WHOI stitches them before measuring.
    """
    stem = bin_dir / bin_dir.name
    adc = np.genfromtxt(stem.with_suffix(".adc"), delimiter=",")
    raw = stem.with_suffix(".roi").read_bytes()
    rois, boxes = {}, {}
    for i, row in enumerate(adc, start=1):
        x, y, w, h, start = (int(v) for v in row[9:14])
        if w <= 0 or h <= 0:
            continue
        rois[i] = np.frombuffer(raw[start : start + w * h], np.uint8).reshape(h, w)
        boxes[i] = (int(row[0]), x, y, w, h)
    out: dict[int, np.ndarray] = {}
    for i, (trig, x, y, w, h) in boxes.items():
        group = [j for j, b in boxes.items() if b[0] == trig]
        if len(group) == 1:
            out[i] = rois[i]
        elif i == group[0]:
            x0 = min(boxes[j][1] for j in group)
            y0 = min(boxes[j][2] for j in group)
            x1 = max(boxes[j][1] + boxes[j][3] for j in group)
            y1 = max(boxes[j][2] + boxes[j][4] for j in group)
            bg = np.median(np.concatenate([rois[j].ravel() for j in group]))
            canvas = np.full((y1 - y0, x1 - x0), bg, np.uint8)
            for j in group:
                _, xj, yj, wj, hj = boxes[j]
                canvas[yj - y0 : yj - y0 + hj, xj - x0 : xj - x0 + wj] = rois[j]
            out[i] = canvas
    return out


@pytest.fixture(scope="session")
def ifcb_rois(bundled_data) -> dict[int, np.ndarray]:
    return read_ifcb_v1_rois(bundled_data.path("ifcb") / IFCB_BIN)


@pytest.fixture(scope="session")
def whoi_golden(test_data) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """WHOI ifcb-features v4 table (indexed by roi_number) and blob masks by ROI number."""
    folder = test_data / "ifcb_whoi_features"
    feats = pd.read_csv(folder / f"{IFCB_BIN}_features_v4.csv").set_index("roi_number")
    masks = {}
    from PIL import Image

    with zipfile.ZipFile(folder / f"{IFCB_BIN}_blobs_v4.zip") as z:
        for name in z.namelist():
            roi = int(Path(name).stem.rsplit("_", 1)[1])
            masks[roi] = np.array(Image.open(io.BytesIO(z.read(name)))) > 0
    return feats, masks
