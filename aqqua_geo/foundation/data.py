"""Pretraining data: store items → seeded multi-crop samples, and a bundled demo store.

:class:`MultiCropDataset` wraps ``AqquaStore.torch_dataset()`` and is indexed by the
``(index, epoch, position)`` keys of :class:`~aqqua_geo.foundation.sampler.BalancedSampler`.
Each sample's augmentations draw from ``numpy.random.default_rng([seed, epoch, position])``,
so they do not depend on DataLoader workers and repeat exactly after a resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from aqqua_geo.foundation.augment import PlanktonMultiCrop

# UVP6 (Picheral et al. 2022, L&O Methods 20:115) images 73 µm per pixel.
UVP6_PIXEL_SIZE_UM = 73.0


class MultiCropDataset(Dataset):
    """Multi-crop views of store images, keyed by ``(index, epoch, position)``."""

    def __init__(self, store_dataset: Dataset, cfg: dict) -> None:
        self.base = store_dataset
        self.augment = PlanktonMultiCrop(cfg)
        self.seed = int(cfg["train"]["seed"])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, epoch, position = key
        item = self.base[index]
        rng = np.random.default_rng([self.seed, epoch, position])
        try:
            crops = self.augment(item["image"], item["pixel_size_um"], item["instrument"], rng)
        except ValueError as err:
            raise ValueError(f"object {item['object_id']!r} (row {index}): {err}") from None
        return {**crops, "index": index, "key": (epoch, position)}


def write_bundled_uvp6_store(
    store_dir: str | Path, exclude_classes: tuple[str, ...] = ("darksphere__7777",),
    per_class: int | None = None,
) -> Path:
    """Write the bundled labelled UVP6 vignettes (``aqqua_geo/data/uvp6_vignettes``) to a store.

    ``darksphere__7777`` is excluded by default: its files are byte copies of Copepoda
    vignettes with a conflicting label. The vignettes come without sampling metadata, so
    time/position/depth are explicit placeholders (``sample_id`` = ``uvpec_test``); only
    pixels, pixel size (73 µm) and labels are meaningful. ``per_class`` keeps the first *n*
    files (sorted) of every class, for tiny test stores.
    """
    from PIL import Image

    from aqqua_geo.data import path as data_path
    from aqqua_geo.store import StoreWriter

    root = data_path("uvp6_vignettes")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in exclude_classes)
    with StoreWriter(store_dir, source="uvp6_vignettes", source_format="folder", source_path=str(root)) as writer:
        for folder in folders:
            label = folder.name.split("__")[0]
            files = sorted(folder.glob("*.png"))[:per_class]
            for file in files:
                image = np.asarray(Image.open(file).convert("L"))
                record = {
                    "instrument": "UVP6", "sample_id": "uvpec_test", "datetime": "2020-01-01T00:00:00Z",
                    "lat": 0.0, "lon": 0.0, "depth_min": 0.0, "pixel_size_um": UVP6_PIXEL_SIZE_UM,
                    "label": label, "label_status": "validated",
                }
                writer.add(f"{folder.name}/{file.stem}", image, record, {"file": str(file.relative_to(root))})
    return Path(store_dir)
