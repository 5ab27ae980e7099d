"""Pretraining data: store items → seeded multi-crop samples.

:class:`MultiCropDataset` wraps ``AqquaStore.torch_dataset()`` and is indexed by the
``(index, epoch, position)`` keys of :class:`~aqqua_geo.foundation.sampler.BalancedSampler`.
Each sample's augmentations draw from ``numpy.random.default_rng([seed, epoch, position])``,
so they do not depend on DataLoader workers and repeat exactly after a resume.
"""

from __future__ import annotations

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
