"""Table schemas of the AqQua store and the validation of harmonised records.

The harmonised table (``metadata.parquet``) carries units in its Parquet schema metadata
(``aqqua.units``, a JSON object column → unit) so that any Parquet reader sees them.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

FORMAT = "aqqua"
FORMAT_VERSION = "1.0"

#: Units of the harmonised columns (stored in the Parquet schema metadata).
UNITS: dict[str, str] = {
    "datetime": "UTC",
    "lat": "degrees_north",
    "lon": "degrees_east",
    "depth_min": "m (positive down; altitude stored as negative depth)",
    "depth_max": "m (positive down; altitude stored as negative depth)",
    "pixel_size_um": "um/pixel",
    "sampled_volume_l": "L",
    "height": "pixel",
    "width": "pixel",
}

_FIELDS: list[tuple[str, pa.DataType, bool]] = [
    ("object_id", pa.string(), False),
    ("source", pa.string(), False),
    ("instrument", pa.string(), False),
    ("sample_id", pa.string(), True),
    ("datetime", pa.timestamp("us", tz="UTC"), False),
    ("lat", pa.float64(), False),
    ("lon", pa.float64(), False),
    ("depth_min", pa.float64(), False),
    ("depth_max", pa.float64(), False),
    ("pixel_size_um", pa.float64(), False),
    ("sampled_volume_l", pa.float64(), True),
    ("height", pa.int32(), False),
    ("width", pa.int32(), False),
    ("channels", pa.int8(), False),
    ("label", pa.string(), True),
    ("label_status", pa.string(), True),
    ("content_hash", pa.string(), False),
    ("shard", pa.int32(), False),
]

HARMONISED_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, typ, nullable=nullable) for name, typ, nullable in _FIELDS],
    metadata={"aqqua.units": json.dumps(UNITS), "aqqua.format_version": FORMAT_VERSION},
)

#: Harmonised fields an ingestor supplies; the writer fills the others from the pixels.
RECORD_FIELDS: tuple[str, ...] = tuple(
    n for n, _, _ in _FIELDS if n not in {"height", "width", "channels", "content_hash", "shard"}
)
LABEL_STATUSES = ("validated", "predicted", "dubious", "unlabelled")

REJECTED_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("record", pa.string()),
        ("object_id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw_json", pa.string()),  # the record's original columns, for the user to fix them
    ]
)
DUPLICATES_SCHEMA = pa.schema(
    [
        ("object_id", pa.string()),
        ("kept_object_id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("kept_label", pa.string()),
        ("conflicting_label", pa.bool_()),
    ]
)

#: Stable rejection reason codes (see docs/interfaces.md).
REASONS = (
    "missing_datetime",
    "bad_datetime",
    "missing_position",
    "bad_position",
    "missing_depth",
    "missing_pixel_size",
    "missing_image",
    "corrupt_image",
    "empty_image",
    "duplicate_object_id",
    "bad_encoding",
    "bad_row",
    "bad_annotation",
    "truncated_roi",
)


class InvalidRecord(ValueError):
    """A record that cannot enter the store; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return value is pd.NaT


def _float(record: dict, key: str, reason: str, object_id: str) -> float:
    value = record.get(key)
    if _missing(value):
        raise InvalidRecord(reason, f"{object_id}: {key} is missing")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidRecord(reason, f"{object_id}: {key}={value!r} is not a number") from None
    if not math.isfinite(out):
        raise InvalidRecord(reason, f"{object_id}: {key}={value!r} is not finite")
    return out


def to_utc(value: Any) -> pd.Timestamp:
    """Parse *value* to a UTC timestamp (naive values are taken as UTC); raise ValueError."""
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    ts = pd.Timestamp(value)
    if ts is pd.NaT:
        raise ValueError("NaT")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def check_record(object_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise one harmonised *record*; raise :class:`InvalidRecord`.

    Returns a new dict with exactly :data:`RECORD_FIELDS` (``object_id`` from the argument).
    """
    if _missing(record.get("datetime")):
        raise InvalidRecord("missing_datetime", f"{object_id}: date/time is missing")
    try:
        when = to_utc(record["datetime"])
    except (TypeError, ValueError, OverflowError) as err:
        raise InvalidRecord("bad_datetime", f"{object_id}: datetime={record['datetime']!r} ({err})") from None
    if not (1900 <= when.year <= 2100):
        raise InvalidRecord("bad_datetime", f"{object_id}: datetime {when.isoformat()} outside 1900-2100")
    lat = _float(record, "lat", "missing_position", object_id)
    lon = _float(record, "lon", "missing_position", object_id)
    if not -90.0 <= lat <= 90.0:
        raise InvalidRecord("bad_position", f"{object_id}: lat={lat} outside -90..90")
    if not -180.0 <= lon <= 180.0:
        if 180.0 < lon <= 360.0:
            lon -= 360.0  # 0..360 longitudes are common in ocean data; store -180..180
        else:
            raise InvalidRecord("bad_position", f"{object_id}: lon={lon} outside -180..180")
    depth_min = _float(record, "depth_min", "missing_depth", object_id)
    depth_max = record.get("depth_max")
    depth_max = depth_min if _missing(depth_max) else _float(record, "depth_max", "missing_depth", object_id)
    if depth_max < depth_min:
        depth_min, depth_max = depth_max, depth_min
    pixel = _float(record, "pixel_size_um", "missing_pixel_size", object_id)
    if pixel <= 0:
        raise InvalidRecord("missing_pixel_size", f"{object_id}: pixel_size_um={pixel} must be > 0")
    volume = record.get("sampled_volume_l")
    volume = float("nan") if _missing(volume) else float(volume)
    status = record.get("label_status")
    label = record.get("label")
    label = None if _missing(label) else str(label)
    status = None if _missing(status) else str(status)
    if status is not None and status not in LABEL_STATUSES:
        raise InvalidRecord("bad_annotation", f"{object_id}: label_status={status!r} not in {LABEL_STATUSES}")
    if _missing(record.get("instrument")):
        raise InvalidRecord("bad_row", f"{object_id}: instrument is missing")
    sample = record.get("sample_id")
    return {
        "object_id": object_id,
        "source": str(record["source"]),
        "instrument": str(record["instrument"]),
        "sample_id": None if _missing(sample) else str(sample),
        "datetime": when,
        "lat": lat,
        "lon": lon,
        "depth_min": depth_min,
        "depth_max": depth_max,
        "pixel_size_um": pixel,
        "sampled_volume_l": volume,
        "label": label,
        "label_status": status if status is not None else (None if label is None else "validated"),
    }


def metadata_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Build a harmonised :class:`pyarrow.Table` (with units) from row dicts."""
    cols = {name: [r.get(name) for r in rows] for name in HARMONISED_SCHEMA.names}
    cols["datetime"] = [None if v is None else pd.Timestamp(v).to_pydatetime() for v in cols["datetime"]]
    return pa.Table.from_pydict(cols, schema=HARMONISED_SCHEMA)


def empty_metadata() -> pa.Table:
    """An empty harmonised table."""
    return HARMONISED_SCHEMA.empty_table()


def raw_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Every original column as string, plus ``object_id`` and ``kept_object_id``."""
    keys: dict[str, None] = {"object_id": None, "kept_object_id": None}
    for r in rows:
        keys.update(dict.fromkeys(r))
    cols = {k: [None if r.get(k) is None else str(r.get(k)) for r in rows] for k in keys}
    return pa.table(cols, schema=pa.schema([(k, pa.string()) for k in keys]))


def as_numpy_meta(table: pa.Table) -> pd.DataFrame:
    """Harmonised table → pandas with nullable strings as object and UTC datetimes."""
    df = table.to_pandas()
    for col in ("height", "width", "shard"):
        df[col] = df[col].astype(np.int32)
    return df
