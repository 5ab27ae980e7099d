"""Where things live in a store (paths, journal names, the writer lock): shared by the
writer, the committer, the tables and the readers."""

from __future__ import annotations

import fcntl
import hashlib
import re
from pathlib import Path
from typing import Any

JOURNAL = ".journal"
SHARD_NAME = "shard-{:04d}.lmdb"
DEFAULT_SHARD_BYTES = 4 << 30
SESSION_IMAGES = "images.lmdb"
#: journal-only columns of staged rows: order in the session, where the record came from
SEQ, FILE, RECORD, RAW_JSON = "_seq", "_file", "_record", "_raw_json"
_SESSION_MAP_SIZE = 64 << 30


def shard_path(store_dir: str | Path, shard: int) -> Path:
    """Path of LMDB shard number *shard*."""
    return Path(store_dir) / "images" / SHARD_NAME.format(shard)


def raw_path(store_dir: str | Path, source: str) -> Path:
    """Where a version-1 store keeps the raw table of *source* (file-name-safe, one per name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source).lstrip(".") or "_"
    if safe != source:
        safe += "-" + hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return Path(store_dir) / "raw" / (safe + ".parquet")


def legacy_raw_path(store_dir: str | Path, source: str) -> Path:
    """Where stores written before 1.0.x kept the raw table of *source*."""
    return Path(store_dir) / "raw" / (re.sub(r"[^A-Za-z0-9._-]+", "_", source) + ".parquet")


def session_name(source: str, chunk: int = 0) -> str:
    """Journal folder name of chunk *chunk* of *source* (stable across re-runs: resume)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source).lstrip(".")[:80] or "_"
    tag = hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{safe}-{tag}-{chunk:06d}"


def committed_tokens(manifest: dict[str, Any]) -> set[str]:
    """Session tokens of the last commit (a journal left with one of them is already in)."""
    return set(manifest.get("commit", {}).get("sessions", []))


def lock_store(store_dir: Path):
    """Take the store's exclusive writer lock (one committer at a time); RuntimeError if held."""
    store_dir.mkdir(parents=True, exist_ok=True)
    fh = open(store_dir / ".lock", "a+")  # noqa: SIM115 - held until unlock_store
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RuntimeError(f"{store_dir}: another process is writing to this store") from None
    return fh


def unlock_store(fh) -> None:
    fcntl.flock(fh, fcntl.LOCK_UN)
    fh.close()
