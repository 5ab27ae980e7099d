"""Image blobs of the store: a small self-describing header + a compressed payload.

Plankton vignettes are small (tens to hundreds of pixels a side), grey and mostly uniform
background, where PNG's prediction + entropy coding beats a general-purpose byte compressor
run on raw pixels. ``benchmarks/store_io.py`` measures every setting below on real UVP6,
ZooScan, IFCB and FlowCam vignettes (its codec table; figures in README's data-format
section). What it found, and why the codecs are what they are:

* ``zstd`` (default): rows predicted from the row above (PNG's "Up" filter, residuals mod 256)
  then a zstd level-15 frame: ~0.97x the PNG bytes (the blobs; the whole store is ~1.25x, LMDB
  pages and tables included), ~20-25 µs decode — store random reads ~3.5-3.9x faster than
  reading PNG files. A zstd dictionary trained on 2000 other images of the benchmark saves
  only 3 % more (0.938x with 64 KiB, 2026-12-04), so none is used. Written with the
  ``zstandard`` package rather than blosc2's ZSTD because blosc2 creates a zstd context per
  small chunk (measured: ~30 µs decode for the same frame; its SHUFFLE(typesize=width)+
  BYTEDELTA vertical predictor reached only 1.02x PNG at ZSTD-9).
* ``lz4hc``: blosc2 LZ4HC-6 on raw pixels: ~1.45x the PNG bytes, ~11 µs decode, 5-10x faster
  encode — for scratch stores where ingest speed matters more than bytes. Predictors do not
  help LZ4 (its literals are not entropy-coded).

Blob layout, version 2 (16-byte header, little-endian): magic ``AQ``, version, ndim, three
2-byte dims, container (1 = blosc2 chunk, 2 = zstd frame), predictor (0 = none, 1 = up),
4-byte payload length. Version-1 blobs (10-byte header + blosc2 chunk, stores written before
2026-12) stay readable. One codec thread: for blobs this small, thread start-up costs more
than the work.
"""

from __future__ import annotations

import hashlib
import struct
import threading

import blosc2
import numpy as np
import zstandard

MAGIC = b"AQ"
_HEADER_V1 = struct.Struct("<2sBBHHH")  # magic, version, ndim, dim0, dim1, dim2
_HEADER = struct.Struct("<2sBBHHHBBI")  # v2: + container, predictor, payload bytes
CODEC_VERSION = 2
_BLOSC2, _ZSTD = 1, 2
_NO_PREDICTOR, _UP = 0, 1
#: Settings a writer may use (the blob is self-describing: a reader decodes any of them).
CODECS: dict[str, dict] = {
    "zstd": {"container": "zstd", "predictor": "up", "clevel": 15},
    "lz4hc": {"container": "blosc2", "predictor": "none", "codec": blosc2.Codec.LZ4HC, "clevel": 6},
}
DEFAULT_CODEC = "zstd"
_CONTAINERS = {"blosc2": _BLOSC2, "zstd": _ZSTD}
_PREDICTORS = {"none": _NO_PREDICTOR, "up": _UP}

blosc2.set_nthreads(1)
_local = threading.local()  # zstandard (de)compressors are not thread-safe: one per thread


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
    return cache[level]


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def codec_info(name: str) -> dict:
    """JSON-able description of codec *name* (for the manifest); KeyError if unknown."""
    spec = CODECS[name]
    library = {"blosc2": "blosc2", "zstd": "zstandard"}[spec["container"]]
    return {"library": library, "name": name, "codec": spec["codec"].name if "codec" in spec else "ZSTD",
            "clevel": spec["clevel"], "predictor": spec["predictor"], "typesize": 1, "version": CODEC_VERSION}


def _check(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 numpy array, got {getattr(image, 'dtype', type(image))}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image must be H×W or H×W×C (C in 1,3,4), got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if max(image.shape) > 0xFFFF:
        raise ValueError(f"image side > 65535 pixels (shape {image.shape})")
    return np.ascontiguousarray(image)


def _predict_up(image: np.ndarray) -> np.ndarray:
    """Residuals of each row against the row above (mod 256); the first row is kept."""
    residual = image.copy()
    residual[1:] -= image[:-1]
    return residual


def encode(image: np.ndarray, codec: str = DEFAULT_CODEC) -> bytes:
    """Compress a uint8 H×W or H×W×C array to a self-describing blob."""
    image = _check(image)
    try:
        spec = CODECS[codec]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; use one of {sorted(CODECS)}") from None
    pixels = _predict_up(image) if spec["predictor"] == "up" else image
    if spec["container"] == "zstd":
        payload = _zstd_compressor(spec["clevel"]).compress(pixels.data)
    else:
        payload = blosc2.compress2(pixels, typesize=1, codec=spec["codec"], clevel=spec["clevel"],
                                   filters=[blosc2.Filter.NOFILTER], filters_meta=[0])
    shape = image.shape + (0,) * (3 - image.ndim)
    header = _HEADER.pack(MAGIC, CODEC_VERSION, image.ndim, *shape, _CONTAINERS[spec["container"]],
                          _PREDICTORS[spec["predictor"]], len(payload))
    return header + payload


def _version(blob: bytes | memoryview) -> int:
    magic, version = _HEADER_V1.unpack_from(blob)[:2]
    if magic != MAGIC or version not in (1, CODEC_VERSION):
        raise ValueError(f"not an aqqua image blob (magic={magic!r}, version={version})")
    return version


def decode(blob: bytes | memoryview) -> np.ndarray:
    """Inverse of :func:`encode`, for blobs of every version (returns a writable array)."""
    if _version(blob) == 1:
        _, _, ndim, d0, d1, d2 = _HEADER_V1.unpack_from(blob)
        out = np.empty((d0, d1, d2)[:ndim], dtype=np.uint8)
        blosc2.decompress2(memoryview(blob)[_HEADER_V1.size :], dst=out)
        return out
    _, _, ndim, d0, d1, d2, container, predictor, length = _HEADER.unpack_from(blob)
    shape = (d0, d1, d2)[:ndim]
    payload = memoryview(blob)[_HEADER.size : _HEADER.size + length]
    if len(payload) != length:
        raise ValueError(f"truncated image blob ({len(payload)} of {length} payload bytes)")
    if container == _ZSTD:
        try:
            raw = bytearray(_zstd_decompressor().decompress(payload))
        except zstandard.ZstdError as err:
            raise ValueError(f"damaged image blob payload ({err})") from None
        if len(raw) != int(np.prod(shape)):
            raise ValueError(f"image blob holds {len(raw)} bytes, its header says shape {shape}")
        out = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    elif container == _BLOSC2:
        out = np.empty(shape, dtype=np.uint8)
        blosc2.decompress2(payload, dst=out)
    else:
        raise ValueError(f"image blob with unknown container {container}")
    if predictor == _UP:
        np.add.accumulate(out, axis=0, dtype=np.uint8, out=out)  # undoes the row differences (mod 256)
    elif predictor != _NO_PREDICTOR:
        raise ValueError(f"image blob with unknown predictor {predictor}")
    return out


def blob_size(blob: bytes | memoryview) -> int:
    """Total length of the blob whose first bytes are *blob* (header + payload)."""
    if _version(blob) == 1:
        return _HEADER_V1.size + blosc2.get_cbuffer_sizes(memoryview(blob)[_HEADER_V1.size : _HEADER_V1.size + 32])[1]
    return _HEADER.size + _HEADER.unpack_from(blob)[-1]


def content_hash(image: np.ndarray) -> str:
    """Hash of the decoded pixels and shape (same picture as PNG/TIFF/lossless copy → same hash)."""
    image = _check(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(image.shape).encode())
    h.update(image.tobytes())
    return h.hexdigest()
