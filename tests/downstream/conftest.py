"""Fixtures of the downstream-classic tests: real IFCB ROIs + WHOI golden features, UVP6 vignettes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

IFCB_BIN = "IFCB5_2012_028_081515"


def read_ifcb_rois(bin_dir: Path) -> dict[int, np.ndarray]:
    """ROIs of an IFCB bin by ROI number, triggers stitched (``ingest.ifcb.stitched_rois``);
    every ROI of the bundled bins has pixels."""
    from aqqua_geo.ingest.ifcb import iter_ifcb, stitched_rois

    for item in iter_ifcb(bin_dir):
        assert item.image is not None, item
    return stitched_rois(bin_dir)


@pytest.fixture(scope="session")
def ifcb_rois(bundled_data) -> dict[int, np.ndarray]:
    return read_ifcb_rois(bundled_data.path("ifcb") / IFCB_BIN)


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


def uvp6_files(bundled_data, counts: dict[str, int]) -> dict[str, list[Path]]:
    """The first *n* vignettes (sorted by name) of each bundled UVP6 class folder in *counts*."""
    src = bundled_data.path("uvp6_vignettes")
    return {folder: sorted((src / folder).glob("*.png"))[:n] for folder, n in counts.items()}


def make_uvp6_store(root: Path, files: dict[str, list[Path]], raw_area: bool = False) -> Path:
    """A small labelled store of these real UVP6 vignettes at ``root/store``, through the one
    bundled-store builder (:func:`aqqua_geo.data.write_uvp6_store`). With *raw_area* the raw
    metadata carries a ZooProcess-style ``object_area`` (px), which enables the trait R² path."""
    from PIL import Image

    from aqqua_geo.data import uvp6_metadata, write_uvp6_store

    src = Path(next(iter(files.values()))[0]).parents[1]
    wanted = [f"{folder}/{f.name}" for folder, paths in files.items() for f in paths]
    table = uvp6_metadata().set_index("path").loc[wanted].reset_index()
    if raw_area:
        table["object_area"] = [str(int((np.array(Image.open(src / rel).convert("L")) > 20).sum()))
                                for rel in table["path"]]
    return write_uvp6_store(root / "store", table)
