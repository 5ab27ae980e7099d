"""The explorer's data model, shared by the local server and the static export."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aqqua_geo._io import atomic_path
from aqqua_geo.explore.embeddings import Embeddings, read_embeddings
from aqqua_geo.explore.images import to_png
from aqqua_geo.explore.layout import Method, get_layout
from aqqua_geo.explore.points import EXPORT_COLUMNS, build_table, check_ids_in_store, encode_points, read_predictions

log = logging.getLogger(__name__)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,120}")


def _json_value(v: Any) -> Any:
    """A table cell as a JSON-safe value (NaN/NaT → None, timestamps → ISO 8601)."""
    if v is None or v is pd.NaT:
        return None
    if isinstance(v, (pd.Timestamp, dt.datetime)):
        return v.isoformat()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v if isinstance(v, (int, str)) else str(v)


@dataclass
class Explorer:
    """A store, its embeddings (+ predictions) and their 2-D layout, ready to be shown.

    Build with :meth:`open`; ``table`` holds one row per embedded object in embedding order.
    """

    store: Any  # aqqua_geo.store.AqquaStore (or a filtered view)
    embeddings: Embeddings
    predictions: pd.DataFrame | None
    xy: np.ndarray
    method: str
    title: str = "aqqua explorer"
    _row: dict[str, int] = field(init=False, repr=False)
    _read_lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._row = {oid: i for i, oid in enumerate(self.embeddings.object_ids.tolist())}
        self.table  # join now: embeddings of objects missing from the store fail here, clearly

    @classmethod
    def open(cls, store_dir: str | Path, embeddings_path: str | Path, predictions_path: str | Path | None = None,
             method: Method = "umap", use_cache: bool = True, **layout_kwargs) -> "Explorer":
        """Open the store, read the embeddings (+ predictions) and get their layout (cached)."""
        from aqqua_geo.store import AqquaStore

        store = AqquaStore(store_dir)
        emb = read_embeddings(embeddings_path)
        pred = read_predictions(predictions_path) if predictions_path is not None else None
        check_ids_in_store(store.metadata, emb.object_ids)  # before a long UMAP, not after
        xy = get_layout(emb, method, use_cache=use_cache, **layout_kwargs)
        return cls(store=store, embeddings=emb, predictions=pred, xy=xy, method=method,
                   title=f"aqqua explorer — {Path(store_dir).name}")

    def __len__(self) -> int:
        return len(self.embeddings)

    @cached_property
    def table(self) -> pd.DataFrame:
        """Per-point table: ``object_id, x, y``, store metadata, ``depth_m`` and predictions."""
        return build_table(self.store.metadata, self.embeddings.object_ids, self.xy, self.predictions)

    def points_payload(self, extra_header: dict | None = None) -> bytes:
        """The binary point payload of the page (see :mod:`aqqua_geo.explore.points`)."""
        header = {"title": self.title, "layout": self.method}
        header.update(extra_header or {})
        return encode_points(self.table, header)

    @cached_property
    def payload(self) -> bytes:
        """The point payload served by ``/api/points`` (computed once)."""
        return self.points_payload()

    def row(self, object_id: str) -> int:
        """Row of *object_id* in the table; KeyError with a clear message if unknown."""
        try:
            return self._row[object_id]
        except KeyError:
            raise KeyError(f"unknown object_id {object_id!r}") from None

    def record(self, object_id: str) -> dict:
        """Metadata and predictions of one object as a JSON-safe dict."""
        row = self.table.iloc[self.row(object_id)]
        return {k: _json_value(v) for k, v in row.items()}

    def image_png(self, object_id: str, max_side: int | None = None) -> bytes:
        """The object's image from the store as PNG (native resolution unless *max_side*)."""
        self.row(object_id)
        with self._read_lock:  # server threads must not race to open the LMDB shards
            image = self.store.get(object_id)
        png, _ = to_png(image, max_side=max_side)
        return png

    def selection_frame(self, object_ids: list[str]) -> pd.DataFrame:
        """The selection-CSV rows (``object_id`` + :data:`EXPORT_COLUMNS`) of *object_ids*."""
        rows = [self.row(str(oid)) for oid in object_ids]
        cols = ["object_id", *[c for c in EXPORT_COLUMNS if c in self.table.columns]]
        return self.table.iloc[rows][cols].reset_index(drop=True)

    def export_selection(self, object_ids: list[str], out_dir: str | Path, name: str | None = None) -> dict:
        """Write the selection as CSV and as an EcoTaxa import archive (``<csv stem>_ecotaxa.zip``,
        via :func:`aqqua_geo.export.ecotaxa.write_ecotaxa`). Returns ``{"n", "csv", "ecotaxa",
        "ecotaxa_error"}`` (paths as str; if EcoTaxa fails the CSV is kept and the error reported)."""
        if not object_ids:
            raise ValueError("empty selection: nothing to export")
        if len(set(object_ids)) != len(object_ids):
            raise ValueError("selection has duplicate object_ids")
        if name is not None and not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"export name {name!r} must match {_SAFE_NAME.pattern}")
        frame = self.selection_frame(object_ids)  # validates every id before writing anything
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = name or f"selection-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{len(frame)}"
        csv_path = _free_path(out_dir / f"{stem}.csv")
        with atomic_path(csv_path) as tmp:
            neutralise_formulas(frame).to_csv(tmp, index=False)
        result: dict[str, Any] = {"n": len(frame), "csv": str(csv_path), "ecotaxa": None, "ecotaxa_error": None}
        from aqqua_geo.export.ecotaxa import write_ecotaxa

        ecotaxa_path = _free_path(out_dir / f"{csv_path.stem}_ecotaxa.zip")
        try:
            write_ecotaxa(self.store, self.predictions, ecotaxa_path, object_ids=frame["object_id"].tolist())
            result["ecotaxa"] = str(ecotaxa_path)
        except Exception as err:  # the CSV is still useful; report why EcoTaxa failed
            log.exception("EcoTaxa export of %d objects failed", len(frame))
            result["ecotaxa_error"] = f"{type(err).__name__}: {err}"
        return result


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of *frame* whose text cells cannot run as spreadsheet formulas.

    A text cell starting with ``= + - @`` (or tab / carriage return, or their full-width
    forms) is prefixed with an apostrophe, as OWASP recommends against CSV injection:
    spreadsheets then show it as text. Numbers are not touched (``-24.4`` stays a number).
    """
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            values = ["'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v for v in out[col]]
            out[col] = pd.Series(values, index=out.index, dtype=out[col].dtype)
    return out


def _free_path(path: Path) -> Path:
    """*path*, or *path* with ``-2``, ``-3``… before the suffix if it exists."""
    candidate, i = path, 1
    while candidate.exists():
        i += 1
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
    return candidate
