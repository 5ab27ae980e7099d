"""One LMDB environment per shard file per process.

py-lmdb refuses to open the same file twice in a process, so readers and the writer share
handles through this registry; after a fork (DataLoader workers) every handle is dropped and
reopened, because LMDB handles must not cross a fork.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

_ENVS: dict[str, tuple[lmdb.Environment, bool]] = {}
_PID = os.getpid()
WRITE_MAP_SIZE = 64 << 30  # address space only (no MDB_WRITEMAP): the file grows as written


def _check_fork() -> None:
    global _PID
    if os.getpid() != _PID:
        _ENVS.clear()  # the parent's handles are unusable here; do not close them
        _PID = os.getpid()


def open_env(path: str | Path, *, write: bool = False) -> lmdb.Environment:
    """The process's environment for shard *path* (opened writable if *write*)."""
    _check_fork()
    key = os.path.realpath(path)
    cached = _ENVS.get(key)
    if cached is not None and (cached[1] or not write):
        return cached[0]
    if cached is not None:  # upgrade a read-only handle for the writer
        cached[0].close()
    if write:
        env = lmdb.open(key, subdir=False, map_size=WRITE_MAP_SIZE, readahead=False, meminit=False, max_readers=512)
    else:
        if not os.path.isfile(key):
            raise FileNotFoundError(f"{path}: image shard missing from the store")
        kwargs = dict(subdir=False, readonly=True, readahead=False, max_readers=512)
        try:
            env = lmdb.open(key, lock=True, **kwargs)
        except lmdb.Error:  # read-only media: no lock file can be made
            env = lmdb.open(key, lock=False, **kwargs)
    _ENVS[key] = (env, write)
    return env


def close_env(path: str | Path) -> None:
    """Close and forget the handle of *path* (if open in this process)."""
    _check_fork()
    cached = _ENVS.pop(os.path.realpath(path), None)
    if cached is not None:
        cached[0].close()
