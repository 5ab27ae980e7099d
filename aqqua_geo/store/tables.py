"""The store's tables as Parquet datasets of immutable part files listed by the manifest.

``manifest["tables"][kind]`` (kind = harmonised | raw | rejected | duplicates) is a list of
``{"file", "rows", "bytes", "sha256"}`` (raw parts also name their ``source``), in row order.
A part file is written once under a new name and never changed; only a manifest that lists
it makes it visible, so a commit costs O(batch), and readers scan the parts lazily through
:mod:`pyarrow.dataset` with predicate push-down.

Why plain parts + a JSON manifest rather than Delta Lake (``deltalake``) or Iceberg
(``pyiceberg``): the store already needs its own commit point for the LMDB shards and the
de-duplication index (neither table format can commit those atomically with a table), so a
table format would add a second, independent commit log to keep in step with the first; one
ingest commit here is a few part files plus one manifest replace, and concurrent writers are
handled by per-session journals merged by a single committer (see :mod:`.commit`). Neither
package is installable in this project's environment today, so the comparison is by design,
not by a timed run.

Version-1 stores (one ``metadata.parquet``, ``raw/<source>.parquet``, ``rejected.parquet``,
``duplicates.parquet``) are read through :func:`v1_listing`, which lists those files as parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from aqqua_geo._io import atomic_write_bytes
from aqqua_geo.store.schema import DUPLICATES_SCHEMA, HARMONISED_SCHEMA, REJECTED_SCHEMA

KINDS = ("harmonised", "raw", "rejected", "duplicates")
SCHEMAS: dict[str, pa.Schema | None] = {"harmonised": HARMONISED_SCHEMA, "raw": None,
                                        "rejected": REJECTED_SCHEMA, "duplicates": DUPLICATES_SCHEMA}
#: Rows per Parquet row group in a part (push-down skips whole row groups).
ROW_GROUP = 64 * 1024


def part_name(kind: str, generation: int, n: int) -> str:
    """Relative path of part *n* written by commit *generation* (deterministic: a re-run of a
    killed commit writes the same names)."""
    return f"tables/{kind}/part-{generation:08d}-{n:05d}.parquet"


def write_part(store_dir: Path, rel: str, table: pa.Table, **extra: Any) -> dict[str, Any]:
    """Write *table* to ``store_dir/rel`` atomically; return its manifest entry."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP)
    data = sink.getvalue().to_pybytes()
    atomic_write_bytes(store_dir / rel, data)
    return {"file": rel, "rows": table.num_rows, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), **extra}


def v1_listing(store_dir: Path, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The part listing of a version-1 store (its four kinds of single files)."""
    from aqqua_geo.store.layout import legacy_raw_path, raw_path

    def one(name: str, rows: int) -> list[dict[str, Any]]:
        return [{"file": name, "rows": rows}] if (store_dir / name).is_file() or rows else []

    counts = manifest.get("counts", {})
    raw = []
    for entry in manifest.get("sources", []):
        for path in (raw_path(store_dir, entry["source"]), legacy_raw_path(store_dir, entry["source"])):
            if path.is_file():
                rel = path.relative_to(store_dir).as_posix()
                raw.append({"file": rel, "rows": manifest.get("files", {}).get(rel, {}).get("rows"),
                            "source": entry["source"]})
                break
    return {"harmonised": one("metadata.parquet", int(counts.get("objects", 0))), "raw": raw,
            "rejected": one("rejected.parquet", int(counts.get("rejected", 0))),
            "duplicates": one("duplicates.parquet", int(counts.get("duplicates", 0)))}


class Tables:
    """The committed parts of one manifest; lazy datasets over them."""

    def __init__(self, store_dir: str | Path, manifest: dict[str, Any]):
        self.store_dir = Path(store_dir)
        self.version1 = "tables" not in manifest
        self.listing = v1_listing(self.store_dir, manifest) if self.version1 else manifest["tables"]

    def parts(self, kind: str, source: str | None = None) -> list[dict[str, Any]]:
        parts = self.listing.get(kind, [])
        return [p for p in parts if source is None or p.get("source") == source]

    def problems(self) -> list[str]:
        """Listed parts that are missing or not of the listed size (cheap: no read)."""
        out = []
        for kind in KINDS:
            for p in self.parts(kind):
                path = self.store_dir / p["file"]
                if not path.is_file():
                    if p.get("rows") or not self.version1:
                        out.append(f"{p['file']} is missing but the manifest lists {p.get('rows')} rows in it")
                elif p.get("bytes") is not None and path.stat().st_size != p["bytes"]:
                    out.append(f"{p['file']} has {path.stat().st_size} bytes but the manifest lists {p['bytes']}")
        return out

    def dataset(self, kind: str, source: str | None = None) -> pads.Dataset:
        """A :class:`pyarrow.dataset.Dataset` over the parts of *kind* (row order = listing order)."""
        files = [str(self.store_dir / p["file"]) for p in self.parts(kind, source)
                 if (self.store_dir / p["file"]).is_file()]
        schema = SCHEMAS[kind]
        if kind == "harmonised" and self.version1 and files:
            schema = _v1_harmonised_schema(files[0])
        if not files:
            return pads.dataset(pa.table({}) if schema is None else schema.empty_table())
        if schema is None:  # raw parts differ in columns: all strings, unified
            schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
        return pads.dataset(files, schema=schema, format="parquet")

    def dataset_of(self, files: list[str], kind: str) -> pads.Dataset:
        """A dataset over some listed part files of *kind*."""
        paths = [str(self.store_dir / f) for f in files]
        schema = SCHEMAS[kind] or pa.unify_schemas([pq.read_schema(f) for f in paths], promote_options="permissive")
        return pads.dataset(paths, schema=schema, format="parquet")

    def entry(self, rel: str, source: str | None = None) -> dict[str, Any]:
        """Manifest entry of an existing file (rows, bytes, sha256): used by ``upgrade``."""
        path = self.store_dir / rel
        data = path.read_bytes()
        entry = {"file": rel, "rows": pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows, "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}
        return {**entry, "source": source} if source is not None else entry

    def scan(self, kind: str, columns: list[str] | None = None, filter=None,
             batch_size: int = 64 * 1024) -> Iterator[pa.RecordBatch]:
        """Record batches of *kind* in row order (only *columns*, only rows matching *filter*)."""
        yield from self.dataset(kind).to_batches(columns=columns, filter=filter, batch_size=batch_size,
                                                 use_threads=False)

    def read(self, kind: str, source: str | None = None) -> pa.Table:
        """The whole table of *kind* (asked for: loads every row)."""
        table = self.dataset(kind, source).to_table(use_threads=False)
        schema = SCHEMAS[kind]
        return table if schema is None else table.select(schema.names).cast(schema)


def _v1_harmonised_schema(path: str) -> pa.Schema:
    """A version-1 metadata file's schema must hold the harmonised columns (else StoreError)."""
    from aqqua_geo.store.manifest import StoreError

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise StoreError(f"{path}: not a readable Parquet file ({err})") from None
    missing = [n for n in HARMONISED_SCHEMA.names if n not in schema.names]
    if missing:
        raise StoreError(f"{path}: metadata.parquet lacks the columns {missing}")
    return HARMONISED_SCHEMA
