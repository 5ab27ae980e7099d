"""Pretraining data: store items → seeded multi-crop samples, and the bundled demo store.

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


def write_bundled_uvp6_store(store_dir: str | Path) -> Path:
    """Ingest the bundled labelled UVP6 vignettes into a store (demo, tests, benchmarks).

    Uses the project's folder ingest with ``aqqua_geo/data/uvp6_vignettes.metadata.csv``
    (label, instrument, 73 µm pixels). The vignettes come without sampling metadata, so time,
    position and depth are explicit placeholders (``sample_id`` = ``uvpec_test``): only pixels,
    pixel size and labels are meaningful. The ``darksphere__7777`` files are byte copies of
    Copepoda vignettes with a conflicting label: ingest keeps the Copepoda copies and records
    the others in ``duplicates.parquet``, leaving 630 objects in 8 classes.
    """
    from aqqua_geo.data import path as data_path
    from aqqua_geo.ingest import ingest
    from aqqua_geo.store import AqquaStore

    placeholders = ["datetime=2020-01-01T00:00:00Z", "lat=0", "lon=0", "depth_min=0", "sample_id=uvpec_test"]
    ingest(data_path("uvp6_vignettes"), store_dir, fmt="folder", constants=placeholders, progress=False)
    labels = set(AqquaStore(store_dir).metadata["label"])
    if "darksphere" in labels:  # the duplicate resolution kept the wrong copy
        raise RuntimeError(f"{store_dir}: darksphere copies were kept instead of the Copepoda originals")
    return Path(store_dir)
