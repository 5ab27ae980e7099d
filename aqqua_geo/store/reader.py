"""Reading an AqQua store: random access, pyarrow filters, chunked iteration."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from aqqua_geo.store import codec
from aqqua_geo.store.manifest import (
    StoreError,
    check_files,
    describe,
    read_manifest,
    read_parquet_once,
    table_generation,
)
from aqqua_geo.store.schema import DUPLICATES_SCHEMA, HARMONISED_SCHEMA, REJECTED_SCHEMA, to_utc
from aqqua_geo.store.shard_reader import ShardReader
from aqqua_geo.store.writer import legacy_raw_path, raw_path, shard_path

#: How long a reader waits for a publish in progress (metadata newer than the manifest).
SNAPSHOT_WAIT_S = 10.0


def read_snapshot(store_dir: str | Path) -> tuple[dict[str, Any], pa.Table]:
    """A consistent (manifest, metadata table) pair of the store at *store_dir*.

    A publish replaces ``metadata.parquet`` and then ``manifest.json``; the manifest names the
    generation written into the metadata file, so a reader that lands between the two
    replaces sees a newer metadata file and reads both again. Any other disagreement (a
    deleted or foreign file) raises :class:`StoreError` saying what is wrong.
    """
    import time

    path = Path(store_dir)
    deadline = time.monotonic() + SNAPSHOT_WAIT_S
    while True:
        manifest = read_manifest(path)
        meta_path = path / "metadata.parquet"
        try:
            table = read_parquet_once(meta_path)
        except FileNotFoundError:
            table = None
        problems = check_files(path, manifest, table)
        if table is not None:
            missing = [n for n in HARMONISED_SCHEMA.names if n not in table.column_names]
            if missing:
                problems.append(f"metadata.parquet lacks the columns {missing}")
        if not problems:
            return manifest, (table if table is not None else HARMONISED_SCHEMA.empty_table())
        gen, want = (table_generation(table) if table is not None else None), manifest.get("generation")
        publishing = gen is not None and (want is None or gen > want)
        if not publishing or time.monotonic() > deadline:
            raise StoreError(describe(path, problems))
        time.sleep(0.01)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


class AqquaStore:
    """Read-only view of an AqQua store (or of a filtered subset of it).

    >>> store = AqquaStore("STORE")
    >>> sub = store.filter(instrument="UVP6", start="2019-01-01", end="2020-01-01")
    >>> image = sub[0]; meta = sub.record(0)
    """

    def __init__(self, store_dir: str | Path, *, _table: pa.Table | None = None, _parent: AqquaStore | None = None):
        self.path = Path(store_dir)
        if _parent is not None:
            self.manifest = _parent.manifest
            self._shards = _parent._shards
        else:
            self.manifest, snapshot = read_snapshot(self.path)
            _table = snapshot if _table is None else _table
            self._shards = ShardReader(self.path)
        self.table: pa.Table = _table
        self._ids: list[str] = _table.column("object_id").to_pylist()
        self._shard_of: list[int] = _table.column("shard").to_pylist()
        self._index: dict[str, int] | None = None
        self._df: pd.DataFrame | None = None

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"AqquaStore({str(self.path)!r}, n={len(self)})"

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._id_index()

    @property
    def object_ids(self) -> list[str]:
        """Object ids, in row order."""
        return list(self._ids)

    @property
    def metadata(self) -> pd.DataFrame:
        """Harmonised metadata as a pandas DataFrame (row order = index order)."""
        if self._df is None:
            self._df = self.table.to_pandas()
        return self._df

    @property
    def units(self) -> dict[str, str]:
        """Units of the harmonised columns (from the Parquet schema metadata)."""
        import json

        return json.loads(HARMONISED_SCHEMA.metadata[b"aqqua.units"])

    def _id_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {oid: i for i, oid in enumerate(self._ids)}
        return self._index

    def _row(self, key: int | str) -> int:
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for a store of {len(self)} objects")
            return i
        try:
            return self._id_index()[key]
        except KeyError:
            raise KeyError(f"object_id {key!r} not in {self.path}") from None

    # ------------------------------------------------------------------ images
    def get(self, object_id: str) -> np.ndarray:
        """Image (uint8 H×W or H×W×C) of *object_id*."""
        i = self._row(object_id)
        return self._shards.get_many([self._ids[i]], [self._shard_of[i]])[0]

    def __getitem__(self, i: int) -> np.ndarray:
        """Image of row *i*."""
        i = self._row(int(i))
        return self._shards.get_many([self._ids[i]], [self._shard_of[i]])[0]

    def get_many(self, keys: Sequence[int | str]) -> list[np.ndarray]:
        """Images of several rows or object ids (faster than one by one)."""
        rows = [self._row(k) for k in keys]
        return self._shards.get_many([self._ids[i] for i in rows], [self._shard_of[i] for i in rows])

    def record(self, key: int | str) -> dict[str, Any]:
        """Harmonised metadata row of a row index or object id, as a dict."""
        return self.table.slice(self._row(key), 1).to_pylist()[0]

    def iter_chunks(self, chunk_size: int = 256, columns: Sequence[str] | None = None) -> Iterator[tuple[pd.DataFrame, list[np.ndarray]]]:
        """Yield ``(metadata_df, images)`` for consecutive chunks of *chunk_size* rows."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, len(self), chunk_size):
            part = self.table.slice(start, chunk_size)
            if columns is not None:
                part = part.select(list(dict.fromkeys(["object_id", *columns])))
            ids = self._ids[start : start + chunk_size]
            images = self._shards.get_many(ids, self._shard_of[start : start + chunk_size])
            yield part.to_pandas(), images

    def torch_dataset(self, transform=None):
        """A :class:`torch.utils.data.Dataset` over this view (LMDB opened lazily per worker)."""
        from aqqua_geo.store.dataset import AqquaTorchDataset

        return AqquaTorchDataset(self, transform=transform)

    # ------------------------------------------------------------------ filtering
    def filter(
        self,
        *,
        instrument: str | Iterable[str] | None = None,
        source: str | Iterable[str] | None = None,
        bbox: tuple[float, float, float, float] | None = None,
        start: Any = None,
        end: Any = None,
        depth: tuple[float, float] | None = None,
        labelled: bool | None = None,
        label: str | Iterable[str] | None = None,
        object_ids: Iterable[str] | None = None,
        columns_eq: dict[str, Any] | None = None,
        expression: pc.Expression | None = None,
    ) -> AqquaStore:
        """Subset view (same API) of the rows matching every given condition.

        ``bbox`` is ``(lon_min, lat_min, lon_max, lat_max)``; ``lon_min > lon_max`` crosses the
        antimeridian. ``start`` is inclusive, ``end`` exclusive (UTC; naive = UTC). ``depth``
        keeps objects whose depth range overlaps ``(d_min, d_max)``. ``columns_eq`` maps a
        harmonised column to a value or a list of accepted values. ``expression`` is any
        extra :mod:`pyarrow.compute` expression.
        """
        conds: list[pc.Expression] = []
        field = pc.field
        if instrument is not None:
            conds.append(field("instrument").isin(_as_list(instrument)))
        if source is not None:
            conds.append(field("source").isin(_as_list(source)))
        if label is not None:
            conds.append(field("label").isin(_as_list(label)))
        if bbox is not None:
            lon_min, lat_min, lon_max, lat_max = map(float, bbox)
            conds.append((field("lat") >= lat_min) & (field("lat") <= lat_max))
            if lon_min <= lon_max:
                conds.append((field("lon") >= lon_min) & (field("lon") <= lon_max))
            else:
                conds.append((field("lon") >= lon_min) | (field("lon") <= lon_max))
        if start is not None:
            conds.append(field("datetime") >= pa.scalar(to_utc(start).to_pydatetime(), pa.timestamp("us", tz="UTC")))
        if end is not None:
            conds.append(field("datetime") < pa.scalar(to_utc(end).to_pydatetime(), pa.timestamp("us", tz="UTC")))
        if depth is not None:
            conds.append((field("depth_max") >= float(depth[0])) & (field("depth_min") <= float(depth[1])))
        if labelled is not None:
            conds.append(field("label").is_valid() if labelled else field("label").is_null())
        if object_ids is not None:
            conds.append(field("object_id").isin(list(object_ids)))
        for col, value in (columns_eq or {}).items():
            if col not in self.table.column_names:
                raise KeyError(f"filter: unknown column {col!r}; columns are {self.table.column_names}")
            conds.append(field(col).isin(_as_list(value)))
        if expression is not None:
            conds.append(expression)
        table = self.table
        for cond in conds:
            table = table.filter(cond)
        return AqquaStore(self.path, _table=table, _parent=self)

    # ------------------------------------------------------------------ side tables
    def raw(self, source: str | None = None) -> pd.DataFrame:
        """Original columns (as strings) of *source*, or of every source with a ``source`` column."""
        sources = [source] if source is not None else [s["source"] for s in self.manifest.get("sources", [])]
        frames = []
        for s in sources:
            path = raw_path(self.path, s)
            if not path.is_file() and legacy_raw_path(self.path, s).is_file():
                path = legacy_raw_path(self.path, s)
            if not path.is_file():
                if source is not None:
                    raise KeyError(f"no raw table for source {s!r} in {self.path}")
                continue
            df = read_parquet_once(path).to_pandas()
            if source is None:
                df.insert(0, "source", s) if "source" not in df.columns else None
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["object_id", "kept_object_id"])

    def _side(self, name: str, schema: pa.Schema) -> pd.DataFrame:
        path = self.path / name
        return (read_parquet_once(path) if path.is_file() else schema.empty_table()).to_pandas()

    def rejected(self) -> pd.DataFrame:
        """Rejected records: source, file, record, object_id, reason, detail, raw_json."""
        return self._side("rejected.parquet", REJECTED_SCHEMA)

    def duplicates(self) -> pd.DataFrame:
        """Duplicate images: object_id, kept_object_id, source, label, kept_label, conflicting_label."""
        return self._side("duplicates.parquet", DUPLICATES_SCHEMA)

    def verify(self, progress: bool = False) -> list[str]:
        """Check every image of this view: it is in its shard, decodes, and has the pixels its
        ``content_hash`` says. Returns one message per bad object (empty: all good)."""
        from tqdm.auto import tqdm

        problems: list[str] = []
        hashes = self.table.column("content_hash").to_pylist()
        shards_ok: dict[int, str | None] = {}
        for i in tqdm(range(len(self)), desc="verify", unit="img", disable=not progress, mininterval=1.0):
            oid, shard = self._ids[i], int(self._shard_of[i])
            if shard not in shards_ok:
                try:
                    self._shards._env(shard)
                    shards_ok[shard] = None
                except (OSError, lmdb.Error) as err:
                    shards_ok[shard] = str(err)
                    problems.append(f"shard {shard}: {err}")
            if shards_ok[shard] is not None:
                problems.append(f"{oid}: not readable ({shard_path(self.path, shard).name} unusable)")
                continue
            try:
                image = self._shards._get(oid, shard)
            except (KeyError, ValueError, OSError) as err:
                problems.append(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
                continue
            if codec.content_hash(image) != hashes[i]:
                problems.append(f"{oid}: pixels in {shard_path(self.path, shard).name} do not match its content_hash")
        return problems

    def close(self) -> None:
        """Close the LMDB handles (they reopen on next access)."""
        self._shards.close()
