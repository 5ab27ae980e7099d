"""Table schemas of the AqQua store and the validation of harmonised records.

The harmonised table (``metadata.parquet``) carries units in its Parquet schema metadata
(``aqqua.units``, a JSON object column → unit) so that any Parquet reader sees them.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa

FORMAT = "aqqua"
FORMAT_VERSION = "2.0"

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
    "bad_depth",
    "too_large",
)

#: Longest object id the store accepts (UTF-8 bytes; an LMDB key must fit in a leaf page).
MAX_OBJECT_ID_BYTES = 1024
#: Records dated later than now + this are rejected (clock or typing errors).
FUTURE_SLACK = pd.Timedelta(days=2)


class InvalidRecord(ValueError):
    """A record that cannot enter the store; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str, reasons: tuple[str, ...] | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.reasons = tuple(reasons) if reasons else (reason,)

    def __reduce__(self):  # pickles with its reason (a Dask worker raises it, the client reads it)
        return type(self), (self.reason, self.detail, self.reasons)

    @classmethod
    def combine(cls, problems: list[InvalidRecord]) -> InvalidRecord:
        """One error carrying every problem of a record: the first reason, all details."""
        if len(problems) == 1:
            return problems[0]
        reasons = tuple(dict.fromkeys(r for p in problems for r in p.reasons))
        detail = "; ".join(dict.fromkeys(p.detail for p in problems))
        return cls(problems[0].reason, detail, reasons)


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


def check_object_id(object_id: str) -> None:
    """Raise :class:`InvalidRecord` for an id the store cannot hold (empty, NUL, too long)."""
    if not str(object_id).strip() or "\0" in str(object_id):
        raise InvalidRecord("bad_row", f"object_id {str(object_id)[:80]!r} is empty or contains a NUL character")
    n = len(str(object_id).encode("utf-8", "surrogatepass"))
    if n > MAX_OBJECT_ID_BYTES:
        raise InvalidRecord("too_large", f"object_id {str(object_id)[:40]!r}... is {n} bytes long "
                                         f"(the store takes at most {MAX_OBJECT_ID_BYTES})")


def record_problems(object_id: str, record: dict[str, Any], skip: set[str] | frozenset = frozenset(),
                    warnings: list[str] | None = None) -> tuple[dict[str, Any], list[InvalidRecord]]:
    """Validate and normalise one harmonised *record*: ``(row, problems)``.

    Every problem is reported (not only the first). Fields in *skip* already have a problem
    found by the ingestor and are not checked again. *warnings* (if given) receives notes
    about values that were changed (0..360 longitudes).
    """
    problems: list[InvalidRecord] = []
    row: dict[str, Any] = {"object_id": object_id}

    def attempt(key, fn):
        if key in skip:
            return None
        try:
            return fn()
        except InvalidRecord as err:
            problems.append(err)
            return None

    try:
        check_object_id(object_id)
    except InvalidRecord as err:
        problems.append(err)

    def when():
        if _missing(record.get("datetime")):
            raise InvalidRecord("missing_datetime", f"{object_id}: date/time is missing (give a date and time "
                                                    "column, or --set datetime=YYYY-MM-DDTHH:MM:SSZ)")
        try:
            ts = to_utc(record["datetime"])
        except (TypeError, ValueError, OverflowError) as err:
            raise InvalidRecord("bad_datetime", f"{object_id}: datetime={record['datetime']!r} ({err})") from None
        if not (1900 <= ts.year <= 2100):
            raise InvalidRecord("bad_datetime", f"{object_id}: datetime {ts.isoformat()} outside 1900-2100")
        if ts > pd.Timestamp.now(tz="UTC") + FUTURE_SLACK:
            raise InvalidRecord("bad_datetime", f"{object_id}: datetime {ts.isoformat()} is in the future")
        return ts

    row["datetime"] = attempt("datetime", when)

    def lat():
        v = _float(record, "lat", "missing_position", object_id)
        if not -90.0 <= v <= 90.0:
            raise InvalidRecord("bad_position", f"{object_id}: lat={v} outside -90..90")
        return v

    def lon():
        v = _float(record, "lon", "missing_position", object_id)
        if not -180.0 <= v <= 180.0:
            if 180.0 < v <= 360.0:
                if warnings is not None:
                    warnings.append(f"lon={v:g} (0..360) stored as {v - 360.0:g} (-180..180)")
                v -= 360.0  # 0..360 longitudes are common in ocean data; store -180..180
            else:
                raise InvalidRecord("bad_position", f"{object_id}: lon={v} outside -180..180")
        return v

    row["lat"] = attempt("lat", lat)
    row["lon"] = attempt("lon", lon)
    dmin = attempt("depth_min", lambda: _float(record, "depth_min", "missing_depth", object_id))

    def dmax():
        if _missing(record.get("depth_max")):
            return dmin
        return _float(record, "depth_max", "missing_depth", object_id)

    dmax_v = attempt("depth_max", dmax)
    if dmin is not None and dmax_v is not None and dmax_v < dmin:
        problems.append(InvalidRecord("bad_depth", f"{object_id}: depth_min={dmin:g} is deeper than depth_max={dmax_v:g} "
                                                   "(depth is positive down; check the columns)"))
    row["depth_min"], row["depth_max"] = dmin, dmax_v

    def pixel():
        if _missing(record.get("pixel_size_um")):
            raise InvalidRecord("missing_pixel_size", f"{object_id}: pixel_size_um is missing: give the instrument's "
                                "µm per pixel with --set pixel_size_um=VALUE (or a pixel-size column such as "
                                "process_pixel / acq_pixel / pixel_size_um)")
        v = _float(record, "pixel_size_um", "missing_pixel_size", object_id)
        if v <= 0:
            raise InvalidRecord("missing_pixel_size", f"{object_id}: pixel_size_um={v} must be > 0")
        return v

    row["pixel_size_um"] = attempt("pixel_size_um", pixel)

    def volume():
        v = record.get("sampled_volume_l")
        if _missing(v):
            return float("nan")
        try:
            out = float(v)
        except (TypeError, ValueError):
            raise InvalidRecord("bad_row", f"{object_id}: sampled_volume_l={v!r} is not a number") from None
        if math.isnan(out):
            return out
        if not (math.isfinite(out) and out > 0):
            raise InvalidRecord("bad_row", f"{object_id}: sampled_volume_l={v!r} is not a positive number")
        return out

    row["sampled_volume_l"] = attempt("sampled_volume_l", volume)
    status = record.get("label_status")
    label = record.get("label")
    label = None if _missing(label) else str(label)
    status = None if _missing(status) else str(status)
    if status is not None and status not in LABEL_STATUSES and "label_status" not in skip:
        problems.append(InvalidRecord("bad_annotation", f"{object_id}: label_status={status!r} not in {LABEL_STATUSES}"))
    if _missing(record.get("instrument")) and "instrument" not in skip:
        problems.append(InvalidRecord("bad_row", f"{object_id}: instrument is missing (give an instrument column "
                                                 "or --set instrument=NAME)"))
    sample = record.get("sample_id")
    row.update({
        "source": str(record.get("source")),
        "instrument": None if _missing(record.get("instrument")) else str(record["instrument"]),
        "sample_id": None if _missing(sample) else str(sample),
        "label": label,
        "label_status": status if status is not None else (None if label is None else "validated"),
    })
    return {k: row[k] for k in ("object_id", *RECORD_FIELDS[1:])}, problems


def check_record(object_id: str, record: dict[str, Any], warnings: list[str] | None = None) -> dict[str, Any]:
    """Validate and normalise one harmonised *record*; raise :class:`InvalidRecord` (with every
    problem of the record in its detail).

    Returns a new dict with exactly :data:`RECORD_FIELDS` (``object_id`` from the argument).
    """
    row, problems = record_problems(object_id, record, warnings=warnings)
    if problems:
        raise InvalidRecord.combine(problems)
    return row


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
