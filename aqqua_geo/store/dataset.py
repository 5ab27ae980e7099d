"""PyTorch access to a store: a map-style Dataset safe for multi-worker DataLoaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from aqqua_geo.store.shard_reader import ShardReader

if TYPE_CHECKING:
    from aqqua_geo.store.reader import AqquaStore


class AqquaTorchDataset(Dataset):
    """Items ``{"image", "object_id", "pixel_size_um", "instrument", "label", "index"}``.

    Holds only plain lists and a :class:`ShardReader` that pickles without its LMDB handles,
    so each DataLoader worker opens its own read-only LMDB environments on first access.
    """

    def __init__(self, store: AqquaStore, transform: Callable[[dict[str, Any]], Any] | None = None):
        # only the five columns an item needs, scanned once (the images stay in LMDB)
        table = store._dataset.to_table(columns=["object_id", "shard", "pixel_size_um", "instrument", "label"],
                                        filter=store._filter)
        self.object_ids: list[str] = table.column("object_id").to_pylist()
        self.shards: list[int] = table.column("shard").to_pylist()
        self.pixel_sizes_um: list[float] = table.column("pixel_size_um").to_pylist()
        self.instruments: list[str] = table.column("instrument").to_pylist()
        self.labels: list[str | None] = table.column("label").to_pylist()
        self.reader = ShardReader(store.path)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.object_ids)

    def __getitem__(self, i: int) -> Any:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} objects")
        i = i % len(self)
        item = {
            "image": self.reader.get_many([self.object_ids[i]], [self.shards[i]])[0],
            "object_id": self.object_ids[i],
            "pixel_size_um": float(self.pixel_sizes_um[i]),
            "instrument": self.instruments[i],
            "label": self.labels[i],
            "index": i,
        }
        return self.transform(item) if self.transform is not None else item
