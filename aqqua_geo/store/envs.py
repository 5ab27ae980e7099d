"""One LMDB environment per shard file per process.

py-lmdb refuses to open the same file twice in a process, so readers and the writer share
handles through this registry. After a fork (DataLoader workers with the ``fork`` start
method) the child closes the handles it inherited (which also clears py-lmdb's "already
open in this process" record; closing in the child releases nothing of the parent's) and
opens its own on first access: LMDB handles must not be used across a fork.

Before a shard is used, its size is checked against LMDB's own record of its last page: a
truncated file would otherwise be memory-mapped and kill the process with SIGBUS on the
first read past its end.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

_ENVS: dict[str, tuple[lmdb.Environment, bool]] = {}
_PID = os.getpid()
WRITE_MAP_SIZE = 64 << 30  # address space only (no MDB_WRITEMAP): the file grows as written


class ShardError(OSError):
    """An image shard that cannot be used safely (truncated, unreadable)."""


def _check_fork() -> None:
    global _PID
    if os.getpid() != _PID:
        _forget_inherited()


def _forget_inherited() -> None:
    """In a forked child: close the parent's handles (py-lmdb forbids reopening them otherwise)."""
    global _PID
    inherited = list(_ENVS.values())
    _ENVS.clear()
    _PID = os.getpid()
    for env, _ in inherited:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - a handle the child cannot close is simply dropped
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


def check_size(env: lmdb.Environment, path: str | Path) -> None:
    """Raise :class:`ShardError` if *path* is shorter than the pages LMDB says it holds."""
    info, psize = env.info(), env.stat()["psize"]
    need = (int(info["last_pgno"]) + 1) * int(psize)
    have = os.path.getsize(path)
    if have < need:
        raise ShardError(f"{path}: image shard is truncated ({have} bytes, LMDB needs {need}); "
                         "restore it from a backup or re-ingest its sources")


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
        except lmdb.InvalidError as err:
            raise ShardError(f"{path}: not a readable image shard ({err})") from None
        except lmdb.Error:  # read-only media: no lock file can be made
            try:
                env = lmdb.open(key, lock=False, **kwargs)
            except lmdb.Error as err:
                raise ShardError(f"{path}: not a readable image shard ({err})") from None
    try:
        check_size(env, key)
    except BaseException:
        env.close()
        raise
    _ENVS[key] = (env, write)
    return env


def close_env(path: str | Path) -> None:
    """Close and forget the handle of *path* (if open in this process)."""
    _check_fork()
    cached = _ENVS.pop(os.path.realpath(path), None)
    if cached is not None:
        cached[0].close()
