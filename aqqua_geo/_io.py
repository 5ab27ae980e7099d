"""Shared file jobs: atomic writes and file fingerprints.

Every file the package writes for a user (store tables, checkpoints, classifier bundles,
leaderboards, exports, layout caches) goes through :func:`atomic_path`: it is written under a
temporary name in the destination's directory, flushed to disk and moved into place with
:func:`os.replace`, so a reader, or a kill at any instant, sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_parquet",
           "file_sha256", "fsync_dir"]


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry to disk (best effort: some filesystems refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside *path*; on success it replaces *path* atomically.

    Use it around any writer that takes a file name (``torch.save``, ``joblib.dump``,
    ``DataFrame.to_csv``, ``zipfile.ZipFile``, ONNX export). On an exception the temporary
    file is removed and *path* is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write *data* to *path* atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write *text* to *path* atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_parquet(path: str | Path, table, compression: str = "zstd") -> None:
    """Write a ``pyarrow.Table`` (or a pandas DataFrame) to *path* as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)


def file_sha256(path: str | Path, n_bytes: int | None = 1 << 20) -> str:
    """Short fingerprint of a file: SHA-256 of its size and first *n_bytes* (all if None).

    The default (first MiB) is fast on multi-GB checkpoints and is what classifier bundles
    and prediction tables record to tie themselves to the backbone they were made with.
    """
    path = Path(path)
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        if n_bytes is None:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(n_bytes))
    return h.hexdigest()[:16]
