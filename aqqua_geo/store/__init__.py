"""The AqQua store: sharded LMDB of blosc2-compressed images + Parquet metadata.

See ``docs/interfaces.md`` (Store) for the layout. ``AqquaStore`` reads, ``StoreWriter``
writes (atomic, idempotent, resumable).
"""

from __future__ import annotations

from aqqua_geo.store.manifest import StoreError
from aqqua_geo.store.reader import AqquaStore
from aqqua_geo.store.schema import HARMONISED_SCHEMA, REASONS, InvalidRecord
from aqqua_geo.store.writer import StoreWriter, WriterReport

__all__ = ["AqquaStore", "StoreError", "StoreWriter", "WriterReport", "HARMONISED_SCHEMA", "REASONS", "InvalidRecord"]
