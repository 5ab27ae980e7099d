"""How blobs sit in LMDB: one value per object, split into leaf-sized segments when large.

LMDB keeps a value inside its B-tree leaf pages only while key + value fit in half a page
(~2 KB with 4 KiB pages); a bigger value takes whole "overflow" pages, wasting half a page per
image on average. On the benchmark's vignettes the LMDB file was 1.38x the blob bytes that way,
1.24x with segments. So a blob larger than a leaf node is stored as segments: the first under
the object id itself, the next ones under ``object_id + b"\0" + <2-byte index>`` (these sort
right after the object id, so a batch written in key order is appended and fills its pages).
The blob header gives the total length, so a reader knows when it has every segment.
"""

from __future__ import annotations

import struct

from aqqua_geo.store import codec

_NODE_HEADER = 8  # LMDB's per-node header in a leaf page
_PAGE_HEADER = 16
_INDEX = 2  # LMDB's per-node slot in the page index
MAX_SEGMENTS = 0xFFFF


def segment_size(key: bytes, page_size: int = 4096) -> int:
    """Largest value that stays in a leaf page under a continuation key of *key*
    (LMDB's ``me_nodemax`` = (page − header) / 2 − index slot, minus node header and key)."""
    return (page_size - _PAGE_HEADER) // 2 - _INDEX - _NODE_HEADER - (len(key) + 3)


def check_fits(key: bytes, blob_len: int, page_size: int = 4096) -> None:
    """Raise ValueError if a blob of *blob_len* bytes under *key* cannot be stored."""
    size = segment_size(key, page_size)
    if size < 256:
        raise ValueError(f"object id of {len(key)} bytes is too long for the store (max ~1700)")
    if -(-blob_len // size) > MAX_SEGMENTS:
        raise ValueError(f"compressed image of {blob_len} bytes is too large for the store "
                         f"(at most {MAX_SEGMENTS * size} bytes)")


def split(key: bytes, blob: bytes, page_size: int = 4096) -> list[tuple[bytes, bytes]]:
    """``[(key, segment), ...]`` for one blob, in key order."""
    size = segment_size(key, page_size)
    if size < 256:
        raise ValueError(f"object id of {len(key)} bytes is too long for the store (max ~1700)")
    if len(blob) <= size:
        return [(key, blob)]
    n = -(-len(blob) // size)
    if n > MAX_SEGMENTS:
        raise ValueError(f"{key!r}: image blob of {len(blob)} bytes is too large")
    return [(key if i == 0 else key + b"\0" + struct.pack(">H", i), blob[i * size : (i + 1) * size]) for i in range(n)]


def read(txn, key: bytes) -> bytes | memoryview | None:
    """The whole blob of *key* (None if absent)."""
    first = txn.get(key)
    if first is None:
        return None
    total = codec.blob_size(first)
    if len(first) >= total:
        return first
    parts = [bytes(first)]
    got, i = len(first), 1
    while got < total:
        part = txn.get(key + b"\0" + struct.pack(">H", i))
        if part is None:
            raise KeyError(f"{key.decode(errors='replace')}: segment {i} missing ({got} of {total} bytes)")
        parts.append(bytes(part))
        got += len(part)
        i += 1
    return b"".join(parts)
