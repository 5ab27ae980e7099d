"""Global POC flux observations (sediment traps, thorium) at ~100 m and ~1000 m, and the
published models matched to them (github.com/ThelmaPana/POC_flux_database, GPL-3.0).

The package bundles the observation table (``aqqua_geo/data/poc_flux/observations.parquet``,
built by :func:`write_bundled` from ``shared/data/poc_flux_obs``) so that the export products
of ``aqqua map`` and ``aqqua demo`` run offline; the matched model estimates, their global grids
and integrals are read from the shared folder by ``benchmarks/export_vs_models.py``.

Units: fluxes in mg C m⁻² d⁻¹, integrals in Pg C yr⁻¹, depth in m (positive down).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["LICENSE", "CITATION", "SOURCE_COMMIT", "TARGET_DEPTHS_M", "PUBLISHED_RANGE_100M_PG_C_YR",
           "read_observations", "write_bundled", "open_bundled_observations", "read_matched",
           "read_integrals", "read_obs_grids"]

LICENSE = "GPL-3.0 (derived from github.com/ThelmaPana/POC_flux_database)"
CITATION = ("Global POC flux database (sediment traps and 234Th), as compiled and matched to 22 "
            "published models in github.com/ThelmaPana/POC_flux_database")
SOURCE_COMMIT = "8f5892ca43f12f75c9804cceff8995ca6565968a"
DATA_SUBDIR = "poc_flux_obs"
TARGET_DEPTHS_M = (100.0, 1000.0)
#: The published global totals at 100 m span this range (``03.poc_flux_int.csv``, Pg C yr⁻¹:
#: Henson 2012 3.24 … Laws 2011/20XX 17.79).
PUBLISHED_RANGE_100M_PG_C_YR = (3.2, 17.8)
_COLUMNS = ["id", "method", "lon", "lat", "depth", "target_depth", "poc_flux_obs", "datetime",
            "duration"]


def _dir(shared: str | Path) -> Path:
    shared = Path(shared)
    d = shared / DATA_SUBDIR if (shared / DATA_SUBDIR).is_dir() else shared
    if not (d / "02.obs_flux_targ.parquet").is_file():
        raise FileNotFoundError(f"{d / '02.obs_flux_targ.parquet'} not found (expected the poc_flux_obs folder)")
    return d


def read_observations(shared: str | Path) -> pd.DataFrame:
    """The observation table ``02.obs_flux_targ``: ``id, method, lon, lat, depth, target_depth,
    poc_flux_obs`` (mg C m⁻² d⁻¹), ``datetime`` (UTC; NaT when undated), ``duration`` (d)."""
    d = pd.read_parquet(_dir(shared) / "02.obs_flux_targ.parquet")
    d = d.rename(columns={"converted_date": "datetime"})
    d["method"] = d["method"].astype(str)
    return d[_COLUMNS].reset_index(drop=True)


def write_bundled(shared: str | Path, data_dir: str | Path | None = None) -> Path:
    """(Re)write ``poc_flux/observations.parquet`` from the shared folder (values unchanged)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aqqua_geo import data as bundled

    root = Path(data_dir) if data_dir is not None else bundled.DATA_DIR
    out = root / "poc_flux" / "observations.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(read_observations(shared), preserve_index=False)
    meta = {b"license": LICENSE.encode(), b"source_commit": SOURCE_COMMIT.encode(),
            b"derived_by": b"aqqua_geo.mapping.poc_flux.write_bundled",
            b"units": b"poc_flux_obs: mg C m-2 d-1; depth, target_depth: m; duration: d"}
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **meta}), out,
                   compression="zstd", compression_level=19)
    return out


def open_bundled_observations() -> pd.DataFrame:
    """The bundled observation table (4 369 rows; no access to ``shared/data`` needed)."""
    from aqqua_geo import data as bundled

    return pd.read_parquet(bundled.path("poc_flux") / "observations.parquet")


def read_matched(shared: str | Path, target_depth_m: float) -> pd.DataFrame:
    """``06.poc_flux_match_<depth>.csv``: observations plus one column per published model
    (its flux in the observation's cell, mg C m⁻² d⁻¹; NaN where it has none)."""
    depth = int(target_depth_m)
    if float(depth) not in TARGET_DEPTHS_M:
        raise ValueError(f"target_depth_m must be one of {TARGET_DEPTHS_M}, got {target_depth_m}")
    return pd.read_csv(_dir(shared) / f"06.poc_flux_match_{depth}.csv", dtype={"id": str})


def read_integrals(shared: str | Path) -> pd.DataFrame:
    """``03.poc_flux_int.csv``: ``model, depth, type, poc_flux_int`` (Pg C yr⁻¹)."""
    d = pd.read_csv(_dir(shared) / "03.poc_flux_int.csv")
    d["model"] = d["model"].str.replace("\u2212", "-")  # FESOM−REcoM: a Unicode minus
    return d


def read_obs_grids(shared: str | Path) -> pd.DataFrame:
    """``00.g_obs_flux``: global grids of the 9 observation-based algorithms (``lon, lat, depth,
    poc_flux, model``)."""
    return pd.read_parquet(_dir(shared) / "00.g_obs_flux.parquet")
