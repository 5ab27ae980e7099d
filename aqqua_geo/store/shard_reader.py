"""Per-process reader of the store's LMDB image shards (fork-safe, picklable)."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from aqqua_geo.store import codec, segments
from aqqua_geo.store.envs import close_env, open_env
from aqqua_geo.store.layout import shard_path
from aqqua_geo.store.manifest import StoreError


class ShardReader:
    """Reads images from the shards of one store; picklable (LMDB handles are per process)."""

    def __init__(self, store_dir: str | Path):
        self.store_dir = Path(store_dir)
        self._envs: dict[int, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"store_dir": self.store_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store_dir"])

    def _env(self, shard: int, refresh: bool = False):
        if refresh or os.getpid() != self._pid:
            self._envs, self._pid = {}, os.getpid()
        env = self._envs.get(shard)
        if env is None:
            env = self._envs[shard] = open_env(shard_path(self.store_dir, shard))
        return env

    def get_many(self, object_ids: Sequence[str], shards: Sequence[int]) -> list[np.ndarray]:
        """Decode the images of *object_ids* (one read transaction per shard)."""
        if len(object_ids) == 1:  # the random-access path: keep it short
            return [self._get(object_ids[0], int(shards[0]))]
        out: list[np.ndarray | None] = [None] * len(object_ids)
        by_shard: dict[int, list[int]] = {}
        for i, s in enumerate(shards):
            by_shard.setdefault(int(s), []).append(i)
        for shard, idx in by_shard.items():
            with self._begin(shard) as txn:
                for i in idx:
                    out[i] = self._decode(txn, object_ids[i], shard)
        return out  # type: ignore[return-value]

    def _begin(self, shard: int):
        try:
            return self._env(shard).begin(buffers=True)
        except lmdb.Error:  # handle closed by a writer in this process: reopen
            return self._env(shard, refresh=True).begin(buffers=True)

    def _get(self, object_id: str, shard: int) -> np.ndarray:
        with self._begin(shard) as txn:
            return self._decode(txn, object_id, shard)

    def _decode(self, txn, object_id: str, shard: int) -> np.ndarray:
        try:
            blob = segments.read(txn, object_id.encode("utf-8"))
        except (KeyError, ValueError, struct.error) as err:
            raise StoreError(f"{object_id}: image in {shard_path(self.store_dir, shard)} is damaged ({err})") from None
        if blob is None:
            raise KeyError(f"{object_id}: in metadata but not in {shard_path(self.store_dir, shard)}")
        try:
            return codec.decode(blob)
        except Exception as err:  # noqa: BLE001 - codec/struct errors: name the object
            raise StoreError(f"{object_id}: image in {shard_path(self.store_dir, shard)} cannot be decoded "
                             f"({type(err).__name__}: {err})") from None

    def close(self) -> None:
        """Close this store's shard handles in this process."""
        for path in (self.store_dir / "images").glob("shard-*.lmdb"):
            close_env(path)
