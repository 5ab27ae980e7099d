"""Reading an AqQua store lazily: pyarrow.dataset scans with push-down, LMDB random access.

Nothing loads every row unless asked: ``len`` of the whole store is the manifest's count,
``filter`` only builds an expression, ``len`` of a view and ``metadata_columns`` scan only the
columns and row groups needed, ``get(object_id)`` asks the on-disk index for the shard.
``metadata``/``table``/``object_ids``/positional access load (only) what they return.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from aqqua_geo.store import codec
from aqqua_geo.store.index import DedupIndex
from aqqua_geo.store.layout import shard_path
from aqqua_geo.store.manifest import StoreError, describe, read_manifest
from aqqua_geo.store.schema import HARMONISED_SCHEMA, to_utc
from aqqua_geo.store.shard_reader import ShardReader
from aqqua_geo.store.tables import Tables


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


def open_tables(path: Path) -> tuple[dict[str, Any], Tables]:
    """The manifest and its tables; StoreError naming what is wrong if files are missing."""
    manifest = read_manifest(path)
    tables = Tables(path, manifest)
    problems = tables.problems()
    if problems:  # a compaction may have replaced parts since the manifest was read: once more
        manifest = read_manifest(path)
        tables = Tables(path, manifest)
        problems = tables.problems()
    if not problems:
        tables.dataset("harmonised")  # a foreign or damaged version-1 metadata file fails here
    if problems:
        raise StoreError(describe(path, problems))
    return manifest, tables


class AqquaStore:
    """Read-only view of an AqQua store (or of a filtered subset of it).

    >>> store = AqquaStore("STORE")
    >>> sub = store.filter(instrument="UVP6", start="2019-01-01", end="2020-01-01")
    >>> len(sub); image = sub[0]; meta = sub.record(0)
    """

    def __init__(self, store_dir: str | Path, *, _parent: AqquaStore | None = None,
                 _filter: pc.Expression | None = None):
        self.path = Path(store_dir)
        if _parent is not None:
            self.manifest, self._tables, self._shards = _parent.manifest, _parent._tables, _parent._shards
        else:
            self.manifest, self._tables = open_tables(self.path)
            self._shards = ShardReader(self.path)
        self._filter = _filter
        self._dataset = self._tables.dataset("harmonised")
        self._n: int | None = None
        self._keys: tuple[list[str], list[int]] | None = None
        self._pos: dict[str, int] | None = None
        self._table: pa.Table | None = None
        self._df: pd.DataFrame | None = None
        self._index: DedupIndex | None | bool = None

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        if self._n is None:
            if self._filter is None and not self._tables.version1:
                self._n = int(self.manifest.get("counts", {}).get("objects", 0))
            else:
                self._n = self._dataset.count_rows(filter=self._filter)
        return self._n

    def __repr__(self) -> str:
        return f"AqquaStore({str(self.path)!r}, n={len(self)})"

    def __contains__(self, object_id: object) -> bool:
        if not isinstance(object_id, str):
            return False
        if self._filter is None and self._idx() is not None:
            try:
                return self._idx().lookup_id(object_id)[0] == "K"
            except KeyError:
                return False
        return object_id in self._positions()

    @property
    def table(self) -> pa.Table:
        """The view's harmonised rows as a pyarrow Table (loads them all)."""
        if self._table is None:
            self._table = self._dataset.to_table(filter=self._filter).cast(HARMONISED_SCHEMA)
        return self._table

    @property
    def object_ids(self) -> list[str]:
        """Object ids, in row order (loads this one column)."""
        return list(self._key_lists()[0])

    @property
    def metadata(self) -> pd.DataFrame:
        """Harmonised metadata as a pandas DataFrame (row order = index order; loads all rows)."""
        if self._df is None:
            self._df = self.table.to_pandas()
        return self._df

    def metadata_columns(self, columns: Sequence[str]) -> pd.DataFrame:
        """Only *columns* of the view's rows (a column scan with push-down of the filter)."""
        unknown = [c for c in columns if c not in HARMONISED_SCHEMA.names]
        if unknown:
            raise KeyError(f"unknown columns {unknown}; columns are {HARMONISED_SCHEMA.names}")
        return self._dataset.to_table(columns=list(columns), filter=self._filter).to_pandas()

    @property
    def units(self) -> dict[str, str]:
        """Units of the harmonised columns (from the Parquet schema metadata)."""
        return json.loads(HARMONISED_SCHEMA.metadata[b"aqqua.units"])

    def _idx(self) -> DedupIndex | None:
        if self._index is None:
            try:
                self._index = DedupIndex(self.path) if not self._tables.version1 else False
            except (FileNotFoundError, lmdb.Error):
                self._index = False
        return self._index or None

    def _key_lists(self) -> tuple[list[str], list[int]]:
        if self._keys is None:
            t = self._dataset.to_table(columns=["object_id", "shard"], filter=self._filter)
            self._keys = (t.column("object_id").to_pylist(), t.column("shard").to_pylist())
        return self._keys

    def _positions(self) -> dict[str, int]:
        if self._pos is None:
            self._pos = {oid: i for i, oid in enumerate(self._key_lists()[0])}
        return self._pos

    def _row(self, key: int | str) -> int:
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for a store of {len(self)} objects")
            return i
        try:
            return self._positions()[key]
        except KeyError:
            raise KeyError(f"object_id {key!r} not in {self.path}") from None

    def _shard_of_id(self, object_id: str) -> int:
        """Shard of *object_id* through the on-disk index (no table read) or the view's keys."""
        if self._filter is None and self._idx() is not None:
            try:
                kind, _, shard = self._idx().lookup_id(object_id)
            except KeyError:
                kind = None
            if kind != "K":
                raise KeyError(f"object_id {object_id!r} not in {self.path}")
            return int(shard)
        return self._key_lists()[1][self._row(object_id)]

    def _locate(self, key: int | str) -> tuple[str, int]:
        if isinstance(key, str):
            return key, self._shard_of_id(key)
        ids, shards = self._key_lists()
        i = self._row(key)
        return ids[i], shards[i]

    # ------------------------------------------------------------------ images
    def get(self, object_id: str) -> np.ndarray:
        """Image (uint8 H×W or H×W×C) of *object_id*."""
        oid, shard = self._locate(str(object_id))
        return self._shards.get_many([oid], [shard])[0]

    def __getitem__(self, i: int) -> np.ndarray:
        """Image of row *i*."""
        oid, shard = self._locate(int(i))
        return self._shards.get_many([oid], [shard])[0]

    def get_many(self, keys: Sequence[int | str]) -> list[np.ndarray]:
        """Images of several rows or object ids (faster than one by one)."""
        located = [self._locate(k) for k in keys]
        return self._shards.get_many([o for o, _ in located], [s for _, s in located])

    def record(self, key: int | str) -> dict[str, Any]:
        """Harmonised metadata row of a row index or object id, as a dict."""
        oid = key if isinstance(key, str) else self._locate(key)[0]
        if isinstance(key, str):
            self._shard_of_id(key)  # KeyError if not in this view
        cond = pc.field("object_id") == oid
        rows = self._dataset.to_table(filter=cond if self._filter is None else cond & self._filter)
        return rows.cast(HARMONISED_SCHEMA).slice(0, 1).to_pylist()[0]

    def iter_chunks(self, chunk_size: int = 256, columns: Sequence[str] | None = None
                    ) -> Iterator[tuple[pd.DataFrame, list[np.ndarray]]]:
        """Yield ``(metadata_df, images)`` for consecutive chunks of *chunk_size* rows (a
        streaming scan: memory O(chunk))."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        cols = None if columns is None else list(dict.fromkeys(["object_id", *columns, "shard"]))
        pending: list[pa.RecordBatch] = []
        n = 0

        def emit(table: pa.Table):
            images = self._shards.get_many(table.column("object_id").to_pylist(), table.column("shard").to_pylist())
            if columns is not None:
                table = table.select(list(dict.fromkeys(["object_id", *columns])))
            return table.to_pandas(), images

        for batch in self._dataset.to_batches(columns=cols, filter=self._filter, batch_size=chunk_size,
                                              use_threads=False):
            pending.append(batch)
            n += batch.num_rows
            while n >= chunk_size:
                table = pa.Table.from_batches(pending)
                yield emit(table.slice(0, chunk_size))
                rest = table.slice(chunk_size)
                pending, n = rest.to_batches(), rest.num_rows
        if n:
            yield emit(pa.Table.from_batches(pending))

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
        """Subset view (same API) of the rows matching every given condition (lazy: pushed down
        into the Parquet scan when the view is read).

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
            if col not in HARMONISED_SCHEMA.names:
                raise KeyError(f"filter: unknown column {col!r}; columns are {HARMONISED_SCHEMA.names}")
            conds.append(field(col).isin(_as_list(value)))
        if expression is not None:
            conds.append(expression)
        combined = self._filter
        for cond in conds:
            combined = cond if combined is None else combined & cond
        return AqquaStore(self.path, _parent=self, _filter=combined)

    # ------------------------------------------------------------------ side tables
    def raw(self, source: str | None = None) -> pd.DataFrame:
        """Original columns (as strings) of *source*, or of every source with a ``source`` column."""
        sources = [source] if source is not None else list(dict.fromkeys(
            [s["source"] for s in self.manifest.get("sources", [])]))
        frames = []
        for s in sources:
            if not self._tables.parts("raw", s):
                if source is not None:
                    raise KeyError(f"no raw table for source {s!r} in {self.path}")
                continue
            df = self._tables.read("raw", s).to_pandas()
            if source is None and "source" not in df.columns:
                df.insert(0, "source", s)
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["object_id", "kept_object_id"])

    def rejected(self) -> pd.DataFrame:
        """Rejected records: source, file, record, object_id, reason, detail, raw_json."""
        return self._tables.read("rejected").to_pandas()

    def duplicates(self) -> pd.DataFrame:
        """Duplicate images: object_id, kept_object_id, source, label, kept_label, conflicting_label."""
        return self._tables.read("duplicates").to_pandas()

    def verify(self, progress: bool = False) -> list[str]:
        """Check every image of this view: it is in its shard, decodes, and has the pixels its
        ``content_hash`` says. Returns one message per bad object (empty: all good)."""
        from tqdm.auto import tqdm

        problems: list[str] = []
        shards_ok: dict[int, str | None] = {}
        bar = tqdm(total=len(self), desc="verify", unit="img", disable=not progress, mininterval=1.0)
        for batch in self._dataset.to_batches(columns=["object_id", "shard", "content_hash"], filter=self._filter,
                                              use_threads=False):
            d = batch.to_pydict()
            for oid, shard, digest in zip(d["object_id"], d["shard"], d["content_hash"]):
                bar.update(1)
                shard = int(shard)
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
                if codec.content_hash(image) != digest:
                    problems.append(f"{oid}: pixels in {shard_path(self.path, shard).name} do not match its content_hash")
        bar.close()
        return problems

    def close(self) -> None:
        """Close the LMDB handles (they reopen on next access)."""
        self._shards.close()
        if self._index:
            self._index.close()
        self._index = None
