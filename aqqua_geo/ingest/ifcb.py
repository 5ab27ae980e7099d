"""Raw IFCB bins (``.hdr`` + ``.adc`` + ``.roi``), both ADC layouts.

* V1 ("old", IFCB1-6, 2006-2012 software): 15 ADC columns plus a trailing comma; ROI width,
  height and byte offset in columns 12, 13, 14 (1-based). Bin id ``IFCBn_YYYY_DDD_HHMMSS``.
* V2 (acquisition software 2.0+): 24 columns; ROI width, height, offset in 16, 17, 18;
  ``key: value`` header. Bin id ``DYYYYMMDDTHHMMSS_IFCBnnn``.

Each ADC row with a non-zero ROI is one image: ``height × width`` bytes at the offset
(``pyifcb`` layout), object id ``<bin>_<row:05d>`` (1-based ADC row, the IFCB convention).

Sampled volume (``ml_analyzed``, stored per image as ``sampled_volume_l`` = ml / 1000), as
computed by the IFCB community (ifcb-analysis / pyifcb):

* V2: ``ml = 0.25 ml/min × (runTime − inhibitTime) / 60`` from the header (the syringe pumps
  0.25 ml/min; inhibit time is when the instrument is busy and does not look);
* V1: ``look_time = run_time − Σ max(trigger_open[i+1] − frame_grab[i], 0.073 s) − 0.073 s``
  with ``run_time`` = last frame-grab time (times < 0 get +24 h: bins spanning midnight), and
  ``ml = look_time × 40 steps/s × 5/48000 ml/step``.

Position and depth come from the header (``gpsLatitude``/``latitude``..., ``depth``) or from a
user table (``positions=`` CSV with ``bin``, ``lat``, ``lon``, ``depth`` columns); without
them the images are rejected ``missing_position``. Pixel size: ``pixel_size_um=`` or 1/3.4 µm
(iRfcb's default ``micron_factor``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aqqua_geo.ingest.common import KNOWN_PIXEL_SIZE_UM, FileProblem, Item, SourceTree, image_cap
from aqqua_geo.store.schema import InvalidRecord

ADC_COLUMNS = {
    1: ("trigger processingEndTime fluorescenceLow fluorescenceHigh scatteringLow scatteringHigh comparatorPulse "
        "triggerOpenTime frameGrabTime roiX roiY roiWidth roiHeight startByte valveStatus").split(),
    2: ("trigger adcTime pmtA pmtB pmtC pmtD peakA peakB peakC peakD timeOfFlight grabTimeStart grabTimeEnd "
        "roiX roiY roiWidth roiHeight startByte comparatorOut startPoint signalLength status runTime inhibitTime").split(),
}
V1_RE = re.compile(r"^IFCB(\d+)_(\d{4})_(\d{3})_(\d{6})$")
V2_RE = re.compile(r"^D(\d{8}T\d{6})_IFCB(\d+)$")
_LAT_KEYS = ("gpslatitude", "latitude", "lat")
_LON_KEYS = ("gpslongitude", "longitude", "lon")
_DEPTH_KEYS = ("depth", "sampledepth", "depth_m")
FLOW_RATE_ML_MIN = 0.25
V1_MIN_PROC_TIME = 0.073
V1_ML_PER_S = 40 * 5 / 48000


@dataclass
class BinId:
    """Parsed IFCB bin id."""

    pid: str
    schema: int
    instrument: str
    datetime: datetime


def parse_bin_id(pid: str) -> BinId:
    """``D20130526T095207_IFCB013`` (V2) or ``IFCB5_2012_028_081515`` (V1) → :class:`BinId`."""
    if m := V2_RE.match(pid):
        try:
            when = datetime.strptime(m[1], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
        except ValueError as err:
            raise ValueError(f"{pid}: bin id has no valid date/time ({err})") from None
        return BinId(pid, 2, f"IFCB{int(m[2]):03d}", when)
    if m := V1_RE.match(pid):
        year, doy, hms = int(m[2]), int(m[3]), m[4]
        days = 366 if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0 else 365
        if not 1 <= doy <= days:
            raise ValueError(f"{pid}: day of year {doy} is not in 1..{days} of {year}")
        try:
            day = datetime(year, 1, 1, tzinfo=timezone.utc) + timedelta(days=doy - 1)
            when = day.replace(hour=int(hms[:2]), minute=int(hms[2:4]), second=int(hms[4:]))
        except ValueError as err:
            raise ValueError(f"{pid}: bin id has no valid date/time ({err})") from None
        return BinId(pid, 1, f"IFCB{int(m[1])}", when)
    raise ValueError(f"{pid}: not an IFCB bin id (DYYYYMMDDTHHMMSS_IFCBnnn or IFCBn_YYYY_DDD_HHMMSS)")


def parse_header(text: str) -> dict[str, str]:
    """``key: value`` lines (V2), or V1's quoted lines where a line of names is followed by
    a line of values."""
    out: dict[str, str] = {}
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith('"'):
            cells = [c.strip().strip('"').strip() for c in line.split('","')]
            if len(cells) == 1 and "=" in cells[0]:
                k, v = cells[0].split("=", 1)
                out[k.strip()] = v.strip()
            elif len(cells) == 1 and " " in cells[0] and i + 1 < len(lines) and lines[i + 1].startswith('"'):
                names = cells[0].split()
                values = [c.strip().strip('"').strip() for c in lines[i + 1].split('","')]
                if len(names) == len(values):
                    out.update(zip(names, values))
        elif ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def read_adc(text: str, schema: int, *, as_text: bool = False) -> pd.DataFrame:
    """ADC rows as a DataFrame with the schema's column names (index = 1-based ROI number);
    numbers, or the original strings if *as_text*."""
    rows = [ln.rstrip(",").split(",") for ln in text.splitlines() if ln.strip()]
    names = ADC_COLUMNS[schema]
    if not rows:
        return pd.DataFrame(columns=names, dtype=float)
    width = len(names)
    for i, r in enumerate(rows, 1):
        if len(r) < width - (1 if schema == 1 else 0) - (2 if schema == 2 else 0):
            raise ValueError(f"row {i}: {len(r)} columns, V{schema} ADC has {width}")
    df = pd.DataFrame([r[:width] + [""] * (width - len(r)) for r in rows], columns=names)
    df.index = np.arange(1, len(df) + 1)
    return df if as_text else df.apply(pd.to_numeric, errors="coerce")


def ml_analyzed(adc: pd.DataFrame, header: dict[str, str], schema: int) -> float:
    """Millilitres of sample imaged in a bin (see module docstring); NaN if unknown."""
    if schema == 2:
        try:
            run, inhibit = float(header["runTime"]), float(header["inhibitTime"])
        except (KeyError, ValueError):
            run = inhibit = float("nan")
        ml = FLOW_RATE_ML_MIN * (run - inhibit) / 60.0
        if not (ml > 0) and len(adc):  # header not filled in: use the last ADC row's counters
            last = adc.iloc[-1]
            ml = FLOW_RATE_ML_MIN * (last["runTime"] - last["inhibitTime"]) / 60.0
        return float(ml) if ml > 0 else float("nan")
    if len(adc) == 0:
        return float("nan")
    adc = adc.drop_duplicates(subset="trigger", keep="first")
    grab = adc["frameGrabTime"].to_numpy(float)
    opened = adc["triggerOpenTime"].to_numpy(float)
    grab = grab + (grab < 0) * 86400.0
    opened = opened + (opened < 0) * 86400.0
    proc = np.maximum(opened[1:] - grab[:-1], V1_MIN_PROC_TIME)
    look = grab[-1] - proc.sum() - V1_MIN_PROC_TIME
    return float(look * V1_ML_PER_S)


def load_positions(path: str | Path) -> dict[str, dict[str, float]]:
    """User table of bin positions: CSV/Parquet with ``bin`` (or ``pid``), ``lat``, ``lon``, ``depth``."""
    path = Path(path)
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"bin": str, "pid": str})
    df.columns = [c.strip().lower() for c in df.columns]
    key = "bin" if "bin" in df.columns else "pid" if "pid" in df.columns else None
    missing = [c for c in ("lat", "lon", "depth") if c not in df.columns]
    if key is None or missing:
        raise ValueError(f"{path}: positions table needs columns bin, lat, lon, depth (missing {missing or ['bin']})")
    return {str(r[key]).strip(): {"lat": r["lat"], "lon": r["lon"], "depth": r["depth"]} for _, r in df.iterrows()}


def _header_value(header: dict[str, str], keys: tuple[str, ...]) -> float | None:
    low = {k.lower(): v for k, v in header.items()}
    for k in keys:
        if k in low:
            try:
                return float(low[k])
            except ValueError:
                return None
    return None


def iter_ifcb(
    src: Any, *, positions: str | Path | dict | None = None, pixel_size_um: float | None = None
) -> Iterator[Item | FileProblem]:
    """Yield an :class:`Item` per ROI of every bin (``*.adc`` with ``.hdr``/``.roi``) under *src*."""
    tree = src if isinstance(src, SourceTree) else SourceTree(src)
    table = load_positions(positions) if isinstance(positions, (str, Path)) else (positions or {})
    adcs = tree.files((".adc",))
    if not adcs:
        yield FileProblem(str(tree.src), "bad_row", f"{tree.src}: no IFCB .adc file found")
        return
    for adc_name in adcs:
        yield from _bin_items(tree, adc_name, table, pixel_size_um)


def stitched_rois(bin_dir: str | Path) -> dict[int, np.ndarray]:
    """ROIs of an IFCB bin by ROI number (1-based ADC row), read with :func:`iter_ifcb`.

    ROIs of the same trigger are stitched into one image on their union box (gaps filled with
    the median grey of the pieces), as WHOI stitches V1 bins before measuring them with
    ifcb-analysis; the stitched image is filed under the trigger's first ROI number. ROIs
    without pixels (rejected records) are left out. The store keeps every ROI as ingested:
    this is for comparing with reference features.
    """
    rois, boxes = {}, {}
    for item in iter_ifcb(bin_dir):
        if getattr(item, "image", None) is None:
            continue
        n = int(item.raw["roi_number"])
        rois[n] = item.image()
        boxes[n] = (int(item.raw["trigger"]), int(item.raw["roiX"]), int(item.raw["roiY"]))
    out: dict[int, np.ndarray] = {}
    for n, (trig, _, _) in boxes.items():
        group = [j for j, b in boxes.items() if b[0] == trig]
        if len(group) == 1:
            out[n] = rois[n]
        elif n == group[0]:
            x0 = min(boxes[j][1] for j in group)
            y0 = min(boxes[j][2] for j in group)
            x1 = max(boxes[j][1] + rois[j].shape[1] for j in group)
            y1 = max(boxes[j][2] + rois[j].shape[0] for j in group)
            background = np.median(np.concatenate([rois[j].ravel() for j in group]))
            canvas = np.full((y1 - y0, x1 - x0), background, np.uint8)
            for j in group:
                _, xj, yj = boxes[j]
                h, w = rois[j].shape
                canvas[yj - y0 : yj - y0 + h, xj - x0 : xj - x0 + w] = rois[j]
            out[n] = canvas
    return out


def _cell_int(value: str) -> int | None:
    """A non-negative integer ADC cell (``238`` or ``238.0``), else None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f == f and f >= 0 and f == int(f) else None


def _schema_guess(pid: str, lines: list[str]) -> int:
    if pid.startswith("D") or (lines and len(lines[0].split(",")) >= 20):
        return 2
    return 1


def _adc_rows(text: str, schema: int) -> tuple[list[tuple[int, list[str]]], pd.DataFrame]:
    """``(row number, cells)`` of every non-empty ADC line, and the numeric table of them."""
    names = ADC_COLUMNS[schema]
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    rows = [(i, ln.rstrip(",").split(",")) for i, ln in enumerate((ln for ln in lines if ln.strip()), 1)]
    padded = [r[: len(names)] + [""] * (len(names) - len(r)) for _, r in rows]
    table = pd.DataFrame(padded, columns=names) if padded else pd.DataFrame(columns=names, dtype=float)
    table.index = np.arange(1, len(table) + 1)
    return rows, table.apply(pd.to_numeric, errors="coerce")


def _bin_items(tree: SourceTree, adc_name: str, table: dict, pixel_size_um: float | None) -> Iterator[Item | FileProblem]:
    """One item per ADC row with a ROI. A problem of the whole bin (its id, a missing or
    unreadable .hdr/.roi) rejects each of its ROIs, so that counts stay per image."""
    stem = adc_name[: -len(".adc")]
    pid = stem.split("/")[-1]
    disp = tree.display(adc_name)
    try:
        adc_text = tree.read_bytes(adc_name).decode("latin-1")  # numbers: any byte decodes, bad cells are caught below
    except InvalidRecord as err:
        yield FileProblem(disp, err.reason, err.detail)
        return
    bin_problem: InvalidRecord | None = None
    try:
        bid = parse_bin_id(pid)
        schema = bid.schema
    except ValueError as err:
        bid, schema = None, _schema_guess(pid, [ln for ln in adc_text.splitlines() if ln.strip()])
        bin_problem = InvalidRecord("bad_datetime", f"{disp}: {err}")
    rows, adc = _adc_rows(adc_text, schema)
    names = ADC_COLUMNS[schema]
    min_cols = len(names) - (1 if schema == 1 else 0) - (2 if schema == 2 else 0)
    records = []
    for n, cells in rows:
        text = dict(zip(names, cells[: len(names)] + [""] * (len(names) - len(cells))))
        w, h, start = (_cell_int(text[k]) for k in ("roiWidth", "roiHeight", "startByte"))
        if len(cells) >= min_cols and w is not None and h is not None and (w == 0 or h == 0):
            continue  # a trigger without an image
        problem = None
        if len(cells) < min_cols:
            problem = InvalidRecord("bad_row", f"{disp}: row {n}: {len(cells)} columns, V{schema} ADC has {len(names)}")
        elif w is None or h is None or start is None:
            bad = [f"{k}={text[k]!r}" for k, v in (("roiWidth", w), ("roiHeight", h), ("startByte", start)) if v is None]
            problem = InvalidRecord("bad_row", f"{disp}: row {n}: {', '.join(bad)} is not a non-negative integer")
        elif w * h > image_cap():
            problem = InvalidRecord("too_large", f"{disp}: row {n}: ROI of {w}×{h} px is larger than the store takes")
        records.append((n, text, w, h, start, problem))
    if not records:
        yield FileProblem(disp, None, f"{pid}: empty bin ({len(rows)} triggers, no ROI)")
        return
    header: dict[str, str] = {}
    if bin_problem is None:
        for ext in (".hdr", ".roi"):
            if not tree.exists(stem + ext):
                bin_problem = InvalidRecord("missing_image" if ext == ".roi" else "bad_row",
                                            f"{tree.display(stem + ext)}: missing (bin {pid})")
                break
    if bin_problem is None:
        try:
            raw_hdr = tree.read_bytes(stem + ".hdr")
            try:
                hdr_text = raw_hdr.decode("utf-8")
            except UnicodeDecodeError:
                hdr_text = raw_hdr.decode("latin-1")
            header = parse_header(hdr_text)
        except InvalidRecord as err:
            bin_problem = err
    roi_name = stem + ".roi"
    roi_size = tree.size(roi_name) if tree.exists(roi_name) else 0
    ml = ml_analyzed(adc, header, schema) if bin_problem is None else float("nan")
    pos = table.get(pid, {})
    lat = pos.get("lat", _header_value(header, _LAT_KEYS))
    lon = pos.get("lon", _header_value(header, _LON_KEYS))
    depth = pos.get("depth", _header_value(header, _DEPTH_KEYS))
    pixel, pixel_src = (pixel_size_um, "user") if pixel_size_um else KNOWN_PIXEL_SIZE_UM["IFCB"]
    roi_bytes: list[bytes] = []  # read once per bin, lazily

    def roi_data() -> bytes:
        if not roi_bytes:
            roi_bytes.append(tree.read_bytes(roi_name))
        return roi_bytes[0]

    hdr_raw = {f"hdr_{k}": v for k, v in header.items()}
    for n, text, w, h, start, problem in records:
        oid = f"{pid}_{int(n):05d}"
        raw = dict(text)  # the ADC row as written
        raw.update(hdr_raw, bin=pid, roi_number=str(int(n)), ml_analyzed=repr(ml), pixel_size_um_source=pixel_src,
                   position_source="user table" if pid in table else "header" if lat is not None else "none")
        fields = {
            "instrument": "IFCB", "sample_id": pid, "datetime": bid.datetime if bid else None, "lat": lat, "lon": lon,
            "depth_min": depth, "depth_max": depth, "pixel_size_um": pixel,
            "sampled_volume_l": ml / 1000.0 if ml == ml else None,
            "label": None, "label_status": "unlabelled",
        }
        item = Item(file=disp, record=f"ROI {int(n)}", object_id=oid, fields=fields, raw=raw)
        if bin_problem is not None or problem is not None:
            item.errors["row"] = bin_problem or problem
            yield item
            continue
        if lat is None or lon is None:
            item.errors["lat"] = InvalidRecord(
                "missing_position", f"{oid}: bin {pid} has no position in its header; give a positions table (--positions CSV: bin,lat,lon,depth)"
            )
        elif depth is None:
            item.errors["depth_min"] = InvalidRecord("missing_depth", f"{oid}: bin {pid} has no depth; give a positions table (--positions)")
        if start + w * h > roi_size:
            item.errors["image"] = InvalidRecord(
                "truncated_roi", f"{tree.display(roi_name)}: ROI {int(n)} needs bytes {start}..{start + w * h} but the file has {roi_size}"
            )
        else:
            item.image = (lambda s=start, w=w, h=h: np.frombuffer(roi_data(), np.uint8, count=w * h, offset=s).reshape(h, w).copy())
        yield item
