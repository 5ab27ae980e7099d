"""The store's ``manifest.json``.

Every file of the store is written through :mod:`aqqua_geo._io` (temporary name in the same
directory, fsync, :func:`os.replace`), so a reader (or a crash) sees either the old or the
new file, never half of one.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aqqua_geo._io import atomic_write_bytes
from aqqua_geo.store.schema import FORMAT, FORMAT_VERSION

MANIFEST = "manifest.json"
#: Format major versions this code reads (1: single metadata.parquet; 2: part files + index).
READABLE_MAJORS = ("1", "2")


def now_iso() -> str:
    """Current UTC time, ISO 8601, seconds."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def package_version() -> str:
    """Installed aqqua-geo version (or ``unknown`` in a bare checkout)."""
    try:
        from importlib.metadata import version

        return version("aqqua-geo")
    except Exception:  # noqa: BLE001 - not installed: still write a manifest
        return "unknown"


def new_manifest() -> dict[str, Any]:
    """An empty manifest."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": now_iso(),
        "updated_at": now_iso(),
        "package_version": package_version(),
        "counts": {"objects": 0, "rejected": 0, "duplicates": 0, "by_instrument": {}, "by_source": {}},
        "sources": [],
        "shards": [],
        "codec": {},
        "generation": 0,
        "tables": {"harmonised": [], "raw": [], "rejected": [], "duplicates": []},
    }


def read_manifest(store_dir: str | Path) -> dict[str, Any]:
    """Read ``STORE/manifest.json``; raise FileNotFoundError/ValueError with the path."""
    path = Path(store_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{store_dir}: not an AqQua store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise StoreError(f"{path}: not a readable manifest ({err}); restore it from a backup") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path}: not a manifest (a JSON {type(manifest).__name__}, expected an object)")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    major = str(manifest.get("format_version", "0")).split(".")[0]
    if major not in READABLE_MAJORS:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')} not readable by {FORMAT_VERSION}")
    return manifest


def write_manifest(store_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``STORE/manifest.json`` atomically."""
    atomic_write_bytes(Path(store_dir) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False).encode())


class StoreError(ValueError):
    """The files of a store disagree with its manifest (deleted, truncated, mixed up)."""


GENERATION_KEY = b"aqqua.generation"


def table_generation(table) -> int | None:
    """The publish generation written into a Parquet table's schema metadata (None: older store)."""
    meta = table.schema.metadata or {}
    value = meta.get(GENERATION_KEY)
    return None if value is None else int(value)


def read_parquet_once(path: str | Path):
    """Read a Parquet file through one open file (an atomic replace mid-read cannot mix two
    versions); raise :class:`StoreError` naming the file if it is not readable Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise StoreError(f"{path}: not a readable Parquet file ({err})") from None


def check_files(store_dir: str | Path, manifest: dict[str, Any], metadata=None) -> list[str]:
    """Disagreements between *manifest* and the files of the store (empty list: consistent).

    *metadata* is the already-read ``metadata.parquet`` table (or None if absent).
    """
    store_dir = Path(store_dir)
    problems: list[str] = []
    counts = manifest.get("counts", {})
    n_objects = int(counts.get("objects", 0))
    if metadata is None:
        if n_objects or manifest.get("generation"):
            problems.append(f"metadata.parquet is missing but the manifest lists {n_objects} objects")
    else:
        if metadata.num_rows != n_objects:
            problems.append(f"metadata.parquet has {metadata.num_rows} rows but the manifest lists {n_objects} objects")
        gen, want = table_generation(metadata), manifest.get("generation")
        if want is not None and gen != want:
            problems.append(f"metadata.parquet is generation {gen} but the manifest is generation {want}")
    for name, key in (("rejected.parquet", "rejected"), ("duplicates.parquet", "duplicates")):
        if int(counts.get(key, 0)) and not (store_dir / name).is_file():
            problems.append(f"{name} is missing but the manifest lists {counts[key]} {key} records")
    for shard in manifest.get("shards", []):
        path = store_dir / shard["file"]
        if shard.get("n_objects") and not path.is_file():
            problems.append(f"{shard['file']} is missing but the manifest lists {shard['n_objects']} objects in it")
    for entry, info in manifest.get("files", {}).items():
        if info.get("rows") and not (store_dir / entry).is_file():
            problems.append(f"{entry} is missing but the manifest lists {info['rows']} rows in it")
    return problems


def describe(store_dir: str | Path, problems: list[str]) -> str:
    return (f"{store_dir}: store files disagree with manifest.json: " + "; ".join(problems)
            + " (restore the missing files from a backup; nothing was read or written)")
