"""Export store objects and model predictions as an EcoTaxa import bundle (TSV + PNG vignettes).

The bundle follows EcoTaxa's import rules (``ecotaxa/ecotaxa_back`` ``py/BO/TSVFile.py`` and
``Mappings.py``):

* one ``ecotaxa_<name>.tsv`` (the file name must start with ``ecotaxa``), tab-separated, UTF-8 with a
  byte-order mark (EcoTaxa reads latin-1 otherwise), a header row and a ``[t]``/``[f]`` type row;
* images are PNG files referenced by ``img_file_name`` relative to the TSV, ``img_rank`` 0;
* ``object_id``, ``object_lat``/``object_lon`` (decimal degrees), ``object_date`` (YYYYMMDD),
  ``object_time`` (HHMMSS, UTC), ``object_depth_min``/``object_depth_max`` (m);
* ``object_annotation_category`` = predicted category paired with ``object_annotation_status`` =
  ``predicted`` (EcoTaxa rejects a category without a status and vice versa);
* objects flagged novel (``is_novel`` of the predictions) get **no** category and no status
  (EcoTaxa's "unclassified": unvalidated, shown apart for the expert), or the configurable
  ``novel_category`` (e.g. ``othertocheck``) with status ``predicted``, never ``validated``; their
  model suggestion stays in ``object_top1_label``…, and they come first in the TSV;
* model scores, traits and carbon as free ``object_<name>`` columns, numeric ``[f]`` (at most 500)
  or text ``[t]`` (at most 20); names lower-case ``[a-z0-9_]``;
* ``sample_id`` / ``acq_id`` / ``process_id`` with ``acq_instrument``, ``process_pixel``
  (µm per pixel, as ZooScan exports write it) and ``acq_pixel_size`` (mm per pixel, the unit of
  EcoTaxa's volume formula; with ``object_area`` in pixels). Each ``acq_id`` belongs to one sample and one pixel
  size (EcoTaxa refuses an acquisition shared by two samples);
* NaN and missing values are empty cells.

A path ending in ``.zip`` gives a zip of the bundle, anything else a directory. Both are written
to a temporary sibling first and renamed at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MAX_NUMERIC_OBJECT_FIELDS = 500  # EcoTaxa object free fields n01..n500
MAX_TEXT_OBJECT_FIELDS = 20  # t01..t20
_CHUNK = 256  # objects per read/measure batch

# Columns of the predictions table that become predefined EcoTaxa fields, not free ones.
_PREDICTION_KEYS = {"object_id", "pred_label"}
# Harmonised store columns already written as predefined fields.
_STORE_FIELDS = ("lat", "lon", "datetime", "depth_min", "depth_max", "sample_id", "instrument", "pixel_size_um")
# EcoTaxa's predefined object_* names: a free column must not take one of them.
_PREDEFINED = {
    "object_id", "object_lat", "object_lon", "object_date", "object_time", "object_link",
    "object_depth_min", "object_depth_max", "object_annotation_category", "object_annotation_category_id",
    "object_annotation_status", "object_annotation_date", "object_annotation_time",
    "object_annotation_person_name", "object_annotation_person_email", "object_annotation_hierarchy",
}


def ecotaxa_field_name(name: str, prefix: str = "object") -> str:
    """EcoTaxa column name for *name*: ``<prefix>_`` + lower-case ``[a-z0-9_]`` (e.g. ``object_esd_um``).

    ``area_px`` becomes EcoTaxa's native ``object_area`` (pixels), which with ``acq_pixel_size``
    (mm) feeds EcoTaxa's own individual-volume formula.
    """
    if prefix == "object" and name in _NATIVE_NAMES:
        return _NATIVE_NAMES[name]
    clean = re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")
    if not clean:
        raise ValueError(f"cannot make an EcoTaxa column name from {name!r}")
    out = clean if clean.startswith(f"{prefix}_") else f"{prefix}_{clean}"
    if out in _PREDEFINED:
        out = f"{prefix}_pred_{clean.removeprefix(prefix + '_')}"
    return out


_NATIVE_NAMES = {"area_px": "object_area"}


def _text(value: Any) -> str:
    """A TSV cell: empty for missing values, no tab/newline inside."""
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return re.sub(r"[\t\r\n]+", " ", str(value)).strip()


def _number(value: Any) -> str:
    if value is None or value is pd.NA:
        return ""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(x):
        return ""
    # shortest text that reads back to the same float: lossless round trips
    return repr(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _safe_file_stem(object_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", object_id).strip("._") or "object"


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.dtype != np.uint8:
        raise ValueError(f"image dtype {img.dtype} is not uint8")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _prediction_table(predictions: pd.DataFrame | None) -> pd.DataFrame | None:
    if predictions is None:
        return None
    df = predictions
    if "object_id" in df.columns:
        df = df.set_index("object_id")
    elif df.index.name != "object_id":
        raise KeyError("predictions: need an 'object_id' column or index")
    df = df.copy()
    df.index = df.index.astype(str)
    if df.index.has_duplicates:
        dup = df.index[df.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"predictions: duplicate object_id(s) {dup}")
    return df


def _free_columns(pred: pd.DataFrame | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(numeric, text) lists of (prediction column, EcoTaxa column)."""
    numeric: list[tuple[str, str]] = []
    text: list[tuple[str, str]] = []
    if pred is None:
        return numeric, text
    seen: dict[str, str] = {}
    for col in pred.columns:
        if col in _PREDICTION_KEYS:
            continue
        name = ecotaxa_field_name(col)
        if name in seen:
            raise ValueError(f"predictions: columns {seen[name]!r} and {col!r} both map to EcoTaxa column {name!r}")
        seen[name] = col
        kind = pred[col].dtype
        if pd.api.types.is_bool_dtype(kind) or pd.api.types.is_numeric_dtype(kind):
            numeric.append((col, name))
        else:
            text.append((col, name))
    return numeric, text


def _check_free_columns(numeric: list, text: list) -> None:
    if len(numeric) > MAX_NUMERIC_OBJECT_FIELDS:
        raise ValueError(f"predictions: {len(numeric)} numeric columns, EcoTaxa takes at most {MAX_NUMERIC_OBJECT_FIELDS}")
    if len(text) > MAX_TEXT_OBJECT_FIELDS:
        raise ValueError(f"predictions: {len(text)} text columns, EcoTaxa takes at most {MAX_TEXT_OBJECT_FIELDS}")


def _is_novel(values: pd.Series) -> bool:
    flag = values.get("is_novel")
    return flag is not None and flag is not pd.NA and not (isinstance(flag, float) and math.isnan(flag)) and bool(flag)


def _annotation(meta_row: pd.Series, values: pd.Series, store_labels: bool, status: str,
                novel_category: str | None = None) -> tuple[str, str]:
    """(category, status) of one row; both empty or both set, as EcoTaxa requires."""
    if not store_labels:
        if _is_novel(values):
            category = _text(novel_category)
            return category, "predicted" if category else ""
        category = _text(values.get("pred_label"))
        return category, status if category else ""
    category = _text(meta_row["label"])
    st = _text(meta_row["label_status"]) or "validated"
    if category and st in ("predicted", "validated", "dubious"):
        return category, st
    return "", ""


def _acquisition_ids(meta: pd.DataFrame) -> pd.Series:
    """One acquisition per (sample, instrument, pixel size); ids readable and unique per sample."""
    sample = meta["_sample"]
    instrument = meta["instrument"].fillna("unknown").astype(str)
    base = sample + "_" + instrument.str.replace(r"[^A-Za-z0-9]+", "", regex=True)
    n_px = meta.groupby(base)["pixel_size_um"].transform("nunique")
    px = meta["pixel_size_um"].map(lambda v: format(float(v), ".6g"))
    return base.where(n_px <= 1, base + "_px" + px)


def write_ecotaxa(
    store,
    predictions_df: pd.DataFrame | None,
    out_zip_or_dir: str | Path,
    object_ids: Sequence[str] | None = None,
    *,
    add_traits: bool = True,
    status: str = "predicted",
    novel_category: str | None = None,
    novel_first: bool = True,
    progress: bool = False,
) -> Path:
    """Write an EcoTaxa import bundle of store objects with their predictions; return its path.

    ``store``: an :class:`aqqua_geo.store.AqquaStore` (or its directory). ``predictions_df``: the
    ``predictions.parquet`` table (``object_id`` column or index; ``pred_label`` becomes the
    category, other columns ``object_<name>`` fields), or ``None`` to export the store's own labels
    with their status. ``object_ids``: the objects to export, in order (default: those with a
    prediction, or the whole store). With ``add_traits`` the morphometric traits of
    :mod:`aqqua_geo.downstream.traits` missing from the predictions are measured and added.
    Objects with ``is_novel`` true are exported unclassified (no category, no status), or as
    *novel_category* with status ``predicted``; with *novel_first* they are written first.
    """
    from aqqua_geo.store import AqquaStore

    if status not in ("predicted", "validated", "dubious"):
        raise ValueError(f"write_ecotaxa: status must be predicted, validated or dubious, got {status!r}")
    store = store if isinstance(store, AqquaStore) else AqquaStore(store)
    pred = _prediction_table(predictions_df)
    store_labels = pred is None  # categories from the store itself (pred may later hold traits only)
    out = Path(out_zip_or_dir)
    as_zip = out.suffix.lower() == ".zip"

    if object_ids is None:
        ids = list(pred.index) if pred is not None else list(store.object_ids)
    else:
        ids = [str(i) for i in object_ids]
    if not ids:
        raise ValueError("write_ecotaxa: no objects to export")
    if len(set(ids)) != len(ids):
        raise ValueError("write_ecotaxa: object_ids has duplicates")
    if pred is not None and novel_first and "is_novel" in pred.columns:
        flags = pred["is_novel"].reindex(ids).astype("boolean").fillna(False).to_numpy(dtype=bool)
        ids = [i for i, f in zip(ids, flags) if f] + [i for i, f in zip(ids, flags) if not f]
    known = set(store.object_ids)
    missing = [i for i in ids if i not in known]
    if missing:
        raise KeyError(f"write_ecotaxa: {len(missing)} object_id(s) not in store {store.path}: {missing[:5]}")

    meta = store.metadata.set_index("object_id").loc[ids].reset_index()
    meta["_sample"] = meta["sample_id"].where(meta["sample_id"].notna(), meta["source"]).astype(str)
    meta["_acq"] = _acquisition_ids(meta).to_numpy()
    if pred is not None:
        pred = pred.reindex(ids)
    trait_cols: list[str] = []
    if add_traits:
        from aqqua_geo.downstream.traits import TRAIT_KEYS

        trait_cols = [k for k in TRAIT_KEYS if pred is None or k not in pred.columns]
    numeric, text = _free_columns(pred)
    numeric += [(k, ecotaxa_field_name(k)) for k in trait_cols]
    _check_free_columns(numeric, text)

    header = [
        ("img_file_name", "[t]"), ("img_rank", "[f]"), ("object_id", "[t]"),
        ("object_lat", "[f]"), ("object_lon", "[f]"), ("object_date", "[t]"), ("object_time", "[t]"),
        ("object_depth_min", "[f]"), ("object_depth_max", "[f]"),
        ("object_annotation_category", "[t]"), ("object_annotation_status", "[t]"),
        ("object_pixel_size_um", "[f]"), ("object_sampled_volume_l", "[f]"),
        *[(name, "[f]") for _, name in numeric],
        *[(name, "[t]") for _, name in text],
        ("sample_id", "[t]"), ("sample_source", "[t]"),
        ("acq_id", "[t]"), ("acq_instrument", "[t]"), ("acq_pixel_size", "[f]"),
        ("process_id", "[t]"), ("process_pixel", "[f]"), ("process_software", "[t]"),
    ]
    from aqqua_geo import __version__

    software = f"aqqua-geo {__version__}"
    tsv_name = f"ecotaxa_{_safe_file_stem(out.stem if as_zip else out.name)}.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), desc="EcoTaxa export", unit="obj")
    try:
        (tmp / "images").mkdir()
        used: set[str] = set()
        with open(tmp / tsv_name, "w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            writer.writerow([h for h, _ in header])
            writer.writerow([t for _, t in header])
            # chunks bound memory: images and traits of one chunk at a time
            for lo in range(0, len(ids), _CHUNK):
                hi = min(lo + _CHUNK, len(ids))
                images = store.get_many(ids[lo:hi])
                values = pred.iloc[lo:hi] if pred is not None else pd.DataFrame(index=ids[lo:hi])
                if trait_cols:
                    from aqqua_geo.downstream.traits import measure_many

                    traits = measure_many(images, meta["pixel_size_um"].to_numpy()[lo:hi],
                                          instruments=meta["instrument"].tolist()[lo:hi])[trait_cols]
                    values = pd.concat([values.reset_index(drop=True), traits], axis=1)
                for j, image in enumerate(images):
                    i = lo + j
                    oid, m, v = ids[i], meta.iloc[i], values.iloc[j]
                    stem = _safe_file_stem(oid)
                    fname, k = f"{stem}.png", 1
                    while fname.lower() in used:
                        fname, k = f"{stem}_{k}.png", k + 1
                    used.add(fname.lower())
                    (tmp / "images" / fname).write_bytes(_png_bytes(image))
                    category, row_status = _annotation(m, v, store_labels, status, novel_category)
                    when = pd.Timestamp(m["datetime"])
                    when = when.tz_convert("UTC") if when.tzinfo is not None else when
                    writer.writerow(
                        [
                            f"images/{fname}", "0", oid,
                            _number(m["lat"]), _number(m["lon"]),
                            "" if pd.isna(when) else when.strftime("%Y%m%d"),
                            "" if pd.isna(when) else when.strftime("%H%M%S"),
                            _number(m["depth_min"]), _number(m["depth_max"]),
                            category, row_status,
                            _number(m["pixel_size_um"]), _number(m["sampled_volume_l"]),
                            *[_number(v[c]) for c, _ in numeric],
                            *[_text(v[c]) for c, _ in text],
                            m["_sample"], _text(m["source"]),
                            m["_acq"], _text(m["instrument"]), _number(m["pixel_size_um"] / 1000.0),
                            m["_acq"], _number(m["pixel_size_um"]), software,
                        ]
                    )
                if bar is not None:
                    bar.update(hi - lo)
        if as_zip:
            tmp_zip = out.with_name(f".{out.name}.tmp")
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(tmp / tsv_name, tsv_name)
                for png in sorted((tmp / "images").iterdir()):
                    zf.write(png, f"images/{png.name}", compress_type=zipfile.ZIP_STORED)  # PNG: already deflated
            os.replace(tmp_zip, out)
            shutil.rmtree(tmp)
        else:
            if out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if as_zip:
            out.with_name(f".{out.name}.tmp").unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return out


def read_object_ids(ids_csv: str | Path) -> list[str]:
    """Object ids from a CSV: its ``object_id`` column, or its first column."""
    table = pd.read_csv(ids_csv, dtype=str)
    if table.empty:
        raise ValueError(f"{ids_csv}: no object ids")
    col = "object_id" if "object_id" in table.columns else table.columns[0]
    return table[col].dropna().str.strip().tolist()


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions table from Parquet (``predictions.parquet``) or CSV/TSV."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: predictions file not found")
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return pd.read_csv(path, sep="\t" if path.suffix.lower() != ".csv" else ",")
    raise ValueError(f"{path}: predictions must be .parquet, .csv or .tsv")


def write_ecotaxa_cli(
    store_dir: str | Path,
    predictions_path: str | Path | None,
    out: str | Path,
    ids_csv: str | Path | None = None,
    novel_category: str | None = None,
) -> Path:
    """Body of ``aqqua export-ecotaxa --store DIR --predictions P --out OUT.zip [--ids CSV]``."""
    predictions = read_predictions(predictions_path) if predictions_path else None
    ids = read_object_ids(ids_csv) if ids_csv else None
    return write_ecotaxa(store_dir, predictions, out, object_ids=ids, novel_category=novel_category, progress=True)
