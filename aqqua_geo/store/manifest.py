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


def describe(store_dir: str | Path, problems: list[str]) -> str:
    return (f"{store_dir}: store files disagree with manifest.json: " + "; ".join(problems)
            + " (restore the missing files from a backup; nothing was read or written)")
