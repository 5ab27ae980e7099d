"""A folder of images + an optional metadata table (CSV or Parquet).

The table links rows to images by a relative-path column (default ``path``, also ``file``,
``filename``, ``img_file_name``); ``mapping`` renames table columns to harmonised fields
(``{"lat": "Latitude", "datetime": "time_utc"}``); ``date``+``time`` columns are accepted in
place of ``datetime``, ``altitude`` (lakes) in place of depth (stored as negative depth).
Images without a table row are still read; what the table does not say comes from the
user's constants (``--set``, applied by the runner) or the record is rejected.
Object ids: the ``object_id`` column, else the image path relative to the folder without
its suffix (``Copepoda__6666/10280918``), unique within a folder by construction.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from aqqua_geo.ingest import common
from aqqua_geo.ingest.common import (
    IMAGE_SUFFIXES,
    FileProblem,
    Item,
    SourceTree,
    canonical_instrument,
    decode_image,
    decode_text_with_encoding,
    image_cap,
    normalise_path,
    parse_date_time,
    parse_float,
)
from aqqua_geo.store.schema import InvalidRecord

PATH_COLUMNS = ("path", "file", "filename", "file_name", "img_file_name", "image")
_ALIASES = {
    "lat": ("lat", "latitude", "object_lat"),
    "lon": ("lon", "longitude", "object_lon"),
    "depth_min": ("depth_min", "object_depth_min", "depth"),
    "depth_max": ("depth_max", "object_depth_max", "depth"),
    "altitude": ("altitude",),
    "datetime": ("datetime", "timestamp"),
    "date": ("date", "object_date"),
    "time": ("time", "object_time"),
    "pixel_size_um": ("pixel_size_um",),
    "instrument": ("instrument",),
    "sample_id": ("sample_id", "sample"),
    "sampled_volume_l": ("sampled_volume_l",),
    "label": ("label", "category", "object_annotation_category"),
    "label_status": ("label_status",),
    "object_id": ("object_id",),
}


def default_metadata_path(src: Path) -> Path | None:
    """``<folder>.metadata.csv`` beside the folder, or ``metadata.csv``/``.parquet`` inside."""
    for cand in (src.with_name(src.name + ".metadata.csv"), src / "metadata.csv", src / "metadata.parquet"):
        if cand.is_file():
            return cand
    return None


def read_table(path: str | Path) -> pd.DataFrame:
    """A metadata table as strings (CSV, TSV or Parquet).

    Text tables are UTF-8 (with or without BOM) or else Latin-1 (``df.attrs["encoding"]``);
    TSV/TXT are tab-separated without quoting (as EcoTaxa writes them). Column names given
    twice are listed in ``df.attrs["duplicate_columns"]`` (pandas would rename them).
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata table not found")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path).astype("string").astype(object).where(lambda d: d.notna(), None)
        df.attrs.update(encoding="parquet", duplicate_columns=[])
        return df
    data = path.read_bytes()
    if len(data) > common.MAX_FILE_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes, more than the {common.MAX_FILE_BYTES} bytes a metadata table may have")
    text, encoding = decode_text_with_encoding(data, str(path))
    tsv = path.suffix in (".tsv", ".txt")
    sep = "\t" if tsv else ","
    first = text.split("\n", 1)[0].rstrip("\r")
    header = first.split("\t") if tsv else next(csv.reader([first]), [])
    low = [h.strip().lower() for h in header]
    dup = sorted({h for h in low if h and low.count(h) > 1})
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                         quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, engine="python" if tsv else "c")
    except (pd.errors.ParserError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable {'TSV' if tsv else 'CSV'} table ({err})") from None
    df.attrs.update(encoding=encoding, duplicate_columns=dup)
    return df


def _resolve(columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """Harmonised field → table column."""
    out: dict[str, str] = {}
    low = {c.lower(): c for c in columns}
    for key, aliases in _ALIASES.items():
        if key in mapping:
            if mapping[key] not in columns:
                raise KeyError(f"mapping {key}={mapping[key]!r}: no such column; columns are {columns}")
            out[key] = mapping[key]
            continue
        for a in aliases:
            if a in low:
                out[key] = low[a]
                break
    unknown = set(mapping) - set(_ALIASES) - {"path"}
    if unknown:
        raise KeyError(f"mapping: unknown field(s) {sorted(unknown)}; fields are {sorted(_ALIASES)} and path")
    return out


def iter_folder(
    src: Any, *, metadata: str | Path | None = None, mapping: dict[str, str] | None = None, skip: int = 0
) -> Iterator[Item | FileProblem | None]:
    """Yield an :class:`Item` per image under *src* (with its table row, if any).

    *skip*: the caller discards the first *skip* values (a later chunk of a parallel ingest),
    so image records among them are yielded as ``None`` without being built: a chunk's scan
    then costs O(files) list steps, not O(files) record parses (~26 µs each).
    """
    tree = src if isinstance(src, SourceTree) else SourceTree(src)
    mapping = dict(mapping or {})
    table_path = Path(metadata) if metadata else (default_metadata_path(tree.src) if tree.src.is_dir() else None)
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    cols: dict[str, str] = {}
    table_name = str(table_path) if table_path else ""
    n_yielded = 0
    if table_path is not None:
        df = read_table(table_path)
        cols = _resolve(list(df.columns), mapping)
        path_col = mapping.get("path") or next((c for c in df.columns if c.lower() in PATH_COLUMNS), None)
        if path_col is None:
            raise KeyError(f"{table_path}: no image path column (one of {PATH_COLUMNS}, or mapping path=...)")
        dup_cols = df.attrs.get("duplicate_columns") or []
        if df.attrs.get("encoding") == "latin-1":
            n_yielded += 1
            yield FileProblem(table_name, None, f"{table_path}: not UTF-8, read as Latin-1")
        for i, rec in enumerate(df.to_dict("records")):
            rec = {k: ("" if v is None else str(v)) for k, v in rec.items()}
            if dup_cols:  # which of two same-named columns is meant? refuse rather than guess
                n_yielded += 1
                yield FileProblem(table_name, "bad_row", f"{table_path}: row {i + 2}: column(s) {', '.join(dup_cols)} "
                                  "given twice in the header", f"row {i + 2}", rec)
                continue
            rel = normalise_path(rec[path_col])
            if rel in rows:
                n_yielded += 1
                yield FileProblem(table_name, "duplicate_object_id", f"{table_path}: row {i + 2}: image {rel} listed twice",
                                  f"row {i + 2}", rec)
                continue
            rows[rel] = (i + 2, rec)
    images = tree.files(IMAGE_SUFFIXES)
    if table_path is not None:
        try:
            here = table_path.resolve().relative_to(tree.src.resolve()).as_posix()
        except ValueError:
            here = None
        images = [n for n in images if n != here]
    for rel in images:
        line, rec = rows.pop(rel, (None, {}))
        n_yielded += 1
        if n_yielded <= skip:
            yield None
            continue
        yield _item(tree, rel, rec, cols, table_name if line else tree.display(rel), f"row {line}" if line else rel)
    for rel, (line, rec) in rows.items():  # table rows whose image is absent
        yield Item(file=table_name, record=f"row {line}", object_id=rec.get(cols.get("object_id", ""), "") or _default_id(rel),
                   fields={}, raw=rec,
                   errors={"image": InvalidRecord("missing_image", f"{table_name}: row {line}: image {tree.display(rel)} not found")})


def _default_id(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def _item(tree: SourceTree, rel: str, rec: dict[str, str], cols: dict[str, str], file: str, where: str) -> Item:
    get = lambda key: (rec.get(cols[key]) or None) if key in cols else None  # noqa: E731
    oid = get("object_id") or _default_id(rel)
    fields: dict[str, Any] = {}
    errors: dict[str, InvalidRecord] = {}
    if get("datetime"):
        fields["datetime"] = get("datetime")
    elif get("date") or get("time"):
        try:
            fields["datetime"] = parse_date_time(get("date"), get("time"), oid)
        except InvalidRecord as err:
            errors["datetime"] = err
    for key, reason in (("lat", "bad_position"), ("lon", "bad_position"), ("depth_min", "missing_depth"),
                        ("depth_max", "missing_depth"), ("pixel_size_um", "missing_pixel_size"),
                        ("sampled_volume_l", "bad_row"), ("altitude", "missing_depth")):
        try:
            value = parse_float(get(key), cols.get(key, key), oid, reason)
        except InvalidRecord as err:
            errors[key] = err
            continue
        if value is not None:
            fields[key] = value
    if "altitude" in fields:  # lakes: altitude above the reference level = negative depth
        fields["depth_min"] = fields["depth_max"] = -fields.pop("altitude")
    for key in ("sample_id", "label", "label_status"):
        if get(key):
            fields[key] = get(key).strip()
    if get("instrument"):
        fields["instrument"] = canonical_instrument(get("instrument"))
    raw = {**rec, "relative_path": rel}
    return Item(file=file, record=where, object_id=oid, fields=fields, raw=raw, errors=errors,
                image=lambda: decode_image(tree.read_bytes(rel, limit=image_cap()), tree.display(rel)))
