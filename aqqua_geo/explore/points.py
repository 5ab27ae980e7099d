"""The per-point table of the explorer and its compact binary encoding for the page.

The page receives every point's layout position and all metadata/prediction columns as
typed arrays (categorical columns dictionary-encoded into uint8/16/32 codes, numbers as
float32, datetimes as float64 ms since the epoch), so 100k points cost a few MB and decode
without parsing JSON per point. The same bytes are served by ``/api/points`` and embedded
(base64) in the static page.

Binary layout: ``b"AQXP"``, uint32 LE header length, UTF-8 JSON header padded to 8 bytes,
then one 8-byte aligned buffer per column at ``header["columns"][i]["offset"]``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd

MAGIC = b"AQXP"
# Store columns that carry no meaning for a person looking at organisms.
HIDDEN_COLUMNS = ("content_hash", "shard")
# Columns of the selection CSV (those present), after object_id; same in server and static mode.
EXPORT_COLUMNS = ("sample_id", "instrument", "label", "pred_label")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read ``predictions.parquet`` (keyed by ``object_id``), checking the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions not found: {path}")
    df = pd.read_parquet(path)
    if "object_id" not in df.columns:
        raise ValueError(f"{path}: predictions must have an 'object_id' column")
    dup = df["object_id"][df["object_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: duplicate object_id in predictions, e.g. {dup.iloc[0]!r}")
    return df


def check_ids_in_store(metadata: pd.DataFrame, object_ids: np.ndarray) -> None:
    """Raise ValueError if some embedded *object_ids* are not rows of the store's *metadata*."""
    missing = pd.Index(np.asarray(object_ids).astype(str)).difference(metadata["object_id"])
    if len(missing):
        raise ValueError(f"{len(missing)} embedded object_id(s) are not in the store, e.g. {missing[0]!r}")


def build_table(metadata: pd.DataFrame, object_ids: np.ndarray, xy: np.ndarray,
                predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per embedded object, in embedding order: ``object_id, x, y``, store metadata
    (plus ``depth_m``, the middle of the sampled depth range) and prediction columns.

    Every embedded object must exist in the store; predictions may cover a subset (NaN elsewhere).
    """
    check_ids_in_store(metadata, object_ids)
    meta = metadata.drop(columns=[c for c in HIDDEN_COLUMNS if c in metadata.columns]).set_index("object_id")
    ids = pd.Index(np.asarray(object_ids).astype(str), name="object_id")
    table = meta.reindex(ids)
    if {"depth_min", "depth_max"} <= set(table.columns):
        table["depth_m"] = (table["depth_min"].astype(float) + table["depth_max"].astype(float)) / 2
    if predictions is not None:
        pred = predictions.set_index("object_id")
        clash = pred.columns.intersection(table.columns)
        pred = pred.rename(columns={c: f"{c}_pred" for c in clash})  # store columns keep their names
        table = table.join(pred.reindex(ids))
    table.insert(0, "x", xy[:, 0].astype(np.float32))
    table.insert(1, "y", xy[:, 1].astype(np.float32))
    return table.reset_index()


def _code_dtype(n_codes: int) -> tuple[str, type]:
    if n_codes <= 0xFF:
        return "u8", np.uint8
    if n_codes <= 0xFFFF:
        return "u16", np.uint16
    return "u32", np.uint32


def _encode_column(name: str, s: pd.Series) -> tuple[dict, np.ndarray]:
    """Column spec + typed array; categorical codes use ``len(categories)`` for missing."""
    if pd.api.types.is_datetime64_any_dtype(s):
        t = pd.to_datetime(s, utc=True)
        ms = (t.dt.tz_convert("UTC").dt.tz_localize(None) - pd.Timestamp(0)) / pd.Timedelta(milliseconds=1)
        arr = ms.to_numpy(dtype=np.float64, na_value=np.nan)
        return {"name": name, "kind": "datetime", "dtype": "f64"}, arr
    if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
        values = s.astype("object").where(s.notna(), None)
        values = values.map(lambda v: v if v is None else str(v))
        codes, cats = pd.factorize(values, sort=True)  # -1 for missing
        dtype_name, dtype = _code_dtype(len(cats) + 1)
        codes = np.where(codes < 0, len(cats), codes).astype(dtype)
        return {"name": name, "kind": "category", "dtype": dtype_name, "categories": [str(c) for c in cats]}, codes
    arr = s.to_numpy(dtype=np.float64, na_value=np.nan)
    return {"name": name, "kind": "number", "dtype": "f32"}, arr.astype(np.float32)


def encode_points(table: pd.DataFrame, extra_header: dict | None = None) -> bytes:
    """Encode *table* (from :func:`build_table`) into the page's binary point format."""
    header: dict = {"n": len(table), "object_ids": table["object_id"].astype(str).tolist(), "columns": [],
                    "export_columns": [c for c in EXPORT_COLUMNS if c in table.columns]}
    header.update(extra_header or {})
    buffers = []
    offset = 0
    for name in table.columns:
        if name == "object_id":
            continue
        spec, arr = _encode_column(name, table[name])
        finite = arr[np.isfinite(arr)] if spec["kind"] != "category" else None
        if finite is not None and len(finite):
            spec["min"], spec["max"] = float(finite.min()), float(finite.max())
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        spec["offset"] = offset
        header["columns"].append(spec)
        buffers.append(raw + b"\0" * (-len(raw) % 8))
        offset += len(buffers[-1])
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    head += b" " * (-(len(head) + 8) % 8)
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(buffers)


def decode_points(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Inverse of :func:`encode_points` (used by tests and tools): header and column arrays."""
    if blob[:4] != MAGIC:
        raise ValueError("not an aqqua explorer point payload (bad magic)")
    (n_head,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[8:8 + n_head])
    base = 8 + n_head
    dtypes = {"u8": "<u1", "u16": "<u2", "u32": "<u4", "f32": "<f4", "f64": "<f8"}
    cols = {}
    for spec in header["columns"]:
        dt = np.dtype(dtypes[spec["dtype"]])
        cols[spec["name"]] = np.frombuffer(blob, dtype=dt, count=header["n"], offset=base + spec["offset"])
    return header, cols
