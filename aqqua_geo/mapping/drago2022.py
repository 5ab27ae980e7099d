"""Drago et al. (2022) global UVP5 zooplankton biomass: data readers, bundled derivatives, the
taxon hierarchy of their table. Their modelling protocol and its reproduction live with the
benchmark (``benchmarks/reproduce_drago2022.py``), not in the package.

Drago L. et al. 2022, "Global distribution of zooplankton biomass estimated by in situ imaging
and machine learning", Front. Mar. Sci. 9:894372; data and R code:
github.com/dlaetitia/Global_zooplankton_biomass_distribution (GPL-3.0).

Their R files (``shared/data/drago2022_uvp5_biomass``) are read with the pure-Python ``rdata``
package. The bundled derivatives (``aqqua_geo/data/env`` and ``aqqua_geo/data/drago2022``)
are rebuilt by :func:`write_bundled`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from aqqua_geo.mapping import cf
from aqqua_geo.mapping.variables import drago_columns

LICENSE = "GPL-3.0 (derived from github.com/dlaetitia/Global_zooplankton_biomass_distribution)"
CITATION = (
    "Drago L. et al. (2022) Global distribution of zooplankton biomass estimated by in situ "
    "imaging and machine learning. Front. Mar. Sci. 9:894372. doi:10.3389/fmars.2022.894372"
)
SOURCE_COMMIT = "1cee11f1864f75e4f9df18106853d759b130f532"
DATA_SUBDIR = "drago2022_uvp5_biomass"
OBS_FILE = "3.biomass_env_0_200m.Rdata"
COPEPODA_FILE = "results/0_200/Copepoda_world_0_200m_without_model_full.rds"

#: Drago's predictor column -> this package's cube variable name (derived from the one
#: variable table, :data:`aqqua_geo.mapping.variables.VARIABLES`; attributes in ``cf``).
PREDICTORS: dict[str, str] = drago_columns()
#: The features their Copepoda model used (``d_train`` columns), in cube names.
FEATURES: list[str] = list(PREDICTORS.values())
#: Their count scaling for the Poisson objective (``scale_factor`` in the results file).
POISSON_SCALE = 1000.0
LAYER_THICKNESS_M = 200.0


def _dataset_dir(shared_dir: str | Path) -> Path:
    shared_dir = Path(shared_dir)
    d = shared_dir / DATA_SUBDIR if (shared_dir / DATA_SUBDIR).is_dir() else shared_dir
    if not (d / OBS_FILE).is_file():
        raise FileNotFoundError(f"{d / OBS_FILE} not found (expected the Drago 2022 folder)")
    return d


def read_r(path: str | Path) -> Any:
    """Read an ``.Rdata``/``.rds`` file into Python objects (pandas for data frames)."""
    import rdata

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"R data file not found: {path}")
    with warnings.catch_warnings():  # "Missing constructor for R class tbl_df": harmless
        warnings.simplefilter("ignore", UserWarning)
        return rdata.conversion.convert(rdata.parser.parse_file(path))


def _rename(df: pd.DataFrame) -> pd.DataFrame:
    names = dict(PREDICTORS)
    for col in df.columns:
        if col.startswith("sd."):
            names[col] = PREDICTORS.get("mean." + col[3:], col[3:]) + "_sd"
        elif col.startswith("mean.") and col not in names:
            names[col] = col[5:]
    return df.rename(columns=names)


def read_observations(shared_dir: str | Path) -> pd.DataFrame:
    """Their table ``d``: one row per 1° cell × taxon, 0–200 m (20 516 rows).

    Columns: ``lon, lat, taxon, biomass_sph, biomass_ell`` (mg C m⁻³) and predictors renamed to
    cube names (``temperature``…, ``<var>_sd`` for their ``sd.`` columns, ``AOU``).
    """
    d = read_r(_dataset_dir(shared_dir) / OBS_FILE)["d"]
    d = _rename(d.reset_index(drop=True))
    d["taxon"] = d["taxon"].astype(str)
    return d


def read_copepoda_results(shared_dir: str | Path) -> dict[str, Any]:
    """Their fitted Copepoda outputs: ``d_train``/``d_test``, ``lowest_error``, ``cv_metrics``,
    ``prediction`` (global map with predictors, renamed to cube names)."""
    res = read_r(_dataset_dir(shared_dir) / COPEPODA_FILE)
    out = {str(k): v for k, v in res.items()}
    for key in ("d_train", "d_test", "prediction"):
        out[key] = _rename(out[key].reset_index(drop=True))
    return out


def build_env_cube(shared_dir: str | Path) -> xr.Dataset:
    """Global 1° environmental cube from Drago's Copepoda ``prediction`` table.

    The table lists 39 698 ocean cells (WOA 2005–2017 predictors for the 0–200 m layer, chl a,
    bathymetry, distance to coast). Cells are placed on the full 180 × 360 grid of cell centres
    (−89.5…89.5, −179.5…179.5); absent cells (land, ice) are NaN.
    """
    pred = read_copepoda_results(shared_dir)["prediction"]
    lat = np.arange(-89.5, 90.0, 1.0)
    lon = np.arange(-179.5, 180.0, 1.0)
    ilat = np.rint(pred["lat"].to_numpy() + 89.5).astype(int)
    ilon = np.rint(pred["lon"].to_numpy() + 179.5).astype(int)
    if not (np.allclose(lat[ilat], pred["lat"]) and np.allclose(lon[ilon], pred["lon"])):
        raise ValueError(f"{COPEPODA_FILE}: prediction cells are not on the 1° centre grid")
    data_vars = {}
    for name in FEATURES:
        grid = np.full((lat.size, lon.size), np.nan, dtype="f4")
        grid[ilat, ilon] = pred[name].to_numpy(dtype="f4")
        data_vars[name] = (("lat", "lon"), grid, dict(cf.ENV_VARIABLES[name]))
    ds = xr.Dataset(data_vars, coords={"lat": lat, "lon": lon})
    for name, drago_name in ((v, k) for k, v in PREDICTORS.items()):
        ds[name].attrs["source_name"] = drago_name
    ds = cf.add_coord_attrs(ds)
    ds.attrs = cf.global_attrs(
        "Global 1-degree environmental predictors of zooplankton biomass (0-200 m)",
        "derived by aqqua_geo.mapping.drago2022.build_env_cube from the 'prediction' table of "
        f"{COPEPODA_FILE} (Drago et al. 2022, commit {SOURCE_COMMIT})",
        source="World Ocean Atlas 2005-2017 climatology, chl a, bathymetry and distance to coast "
        "as tabulated by Drago et al. 2022",
        license=LICENSE,
        references=CITATION,
        extra={"comment": "NaN where Drago et al. 2022 give no prediction cell (land, ice, gaps)"},
    )
    return ds


def build_observation_table(shared_dir: str | Path) -> pd.DataFrame:
    """Table ``d`` with compact dtypes for bundling (float32 predictors, categorical taxon)."""
    d = read_observations(shared_dir)
    floats = [c for c in d.columns if c not in ("lon", "lat", "taxon", "biomass_sph", "biomass_ell")]
    d[floats] = d[floats].astype("f4")
    d["taxon"] = d["taxon"].astype("category")
    return d


def build_reference_map(shared_dir: str | Path) -> pd.DataFrame:
    """Their Copepoda global map: ``lon, lat, pred_mean, pred_sd`` (mg C m⁻³)."""
    pred = read_copepoda_results(shared_dir)["prediction"]
    return pred[["lon", "lat", "pred_mean", "pred_sd"]].astype("f4")


#: Groups of Drago et al.'s table that are sums of other taxa of the same table: ``Rhizaria``
#: equals its six subgroups (max difference 0.11 mg C m⁻³ over the 892 cells) and ``Cnidaria``
#: tracks its three parts (r = 0.998). A total adds the parts, never a group and its parts.
HIERARCHY: dict[str, tuple[str, ...]] = {
    "Rhizaria": ("Acantharea", "Collodaria_colonial", "Collodaria_others", "Foraminifera",
                 "Phaeodaria", "Rhizaria_others"),
    "Cnidaria": ("Cnidaria_others", "Hydrozoa_others", "Siphonophorae"),
}
#: A re-fit of Copepoda in their table, not a taxon.
NOT_A_TAXON = ("Copepoda_refit",)


def additive_taxa(taxa: list[str]) -> list[str]:
    """The taxa of *taxa* that add up to the community: groups of :data:`HIERARCHY` whose parts
    are present are dropped, and so is ``Copepoda_refit``."""
    present = set(taxa)
    groups = {g for g, parts in HIERARCHY.items() if g in present and present & set(parts)}
    return [t for t in taxa if t not in groups and t not in NOT_A_TAXON]


def cell_table(obs: pd.DataFrame, target: str = "biomass_sph") -> pd.DataFrame:
    """One row per 1° cell: predictors, ``<taxon>`` biomass columns, ``total_biomass`` and the
    Shannon index of the biomass composition (``shannon_biomass``, natural log).

    The total and the Shannon index use :func:`additive_taxa` only (``Rhizaria`` and
    ``Cnidaria`` are sums of their subgroups: adding both double counts 19 % of the carbon);
    the group columns stay in the table as targets of their own. ``Copepoda_refit``
    duplicates Copepoda and is left out.
    """
    from aqqua_geo.mapping.diversity import shannon

    keep = obs[~obs["taxon"].isin(NOT_A_TAXON)]
    wide = keep.pivot_table(index=["lon", "lat"], columns="taxon", values=target,
                            observed=True, aggfunc="first")
    wide.columns = [str(c) for c in wide.columns]
    env = keep.drop_duplicates(["lon", "lat"]).set_index(["lon", "lat"])[FEATURES]
    out = env.join(wide)
    biomass = wide[additive_taxa(list(wide.columns))].to_numpy(dtype="f8")
    out["total_biomass"] = biomass.sum(axis=1)
    out["shannon_biomass"] = shannon(biomass)
    return out.reset_index()


def table_to_grid(df: pd.DataFrame, column: str, template: xr.Dataset) -> xr.DataArray:
    """Place a per-cell table column (``lon``, ``lat`` 1° centres) on *template*'s grid (NaN
    elsewhere)."""
    grid = np.full((template.sizes["lat"], template.sizes["lon"]), np.nan, dtype="f8")
    ilat = np.searchsorted(template["lat"].values, df["lat"].to_numpy())
    ilon = np.searchsorted(template["lon"].values, df["lon"].to_numpy())
    grid[ilat, ilon] = df[column].to_numpy(dtype="f8")
    return xr.DataArray(grid, coords={"lat": template["lat"], "lon": template["lon"]},
                        dims=("lat", "lon"), name=column)


def write_bundled(shared_dir: str | Path, data_dir: str | Path | None = None) -> list[Path]:
    """(Re)write the bundled derivatives: ``env/drago2022_env_1deg.nc``,
    ``drago2022/observations_0_200m.parquet``, ``drago2022/copepoda_pred_0_200m.parquet``."""
    from aqqua_geo import data as bundled

    root = Path(data_dir) if data_dir is not None else bundled.DATA_DIR
    (root / "env").mkdir(parents=True, exist_ok=True)
    (root / "drago2022").mkdir(parents=True, exist_ok=True)
    cube = build_env_cube(shared_dir)
    nc = root / "env" / "drago2022_env_1deg.nc"
    enc = {v: {"zlib": True, "complevel": 9, "shuffle": True, "_FillValue": np.float32(np.nan)}
           for v in cube.data_vars}
    cube.to_netcdf(nc, encoding=enc, engine="netcdf4")
    meta = {b"license": LICENSE.encode(), b"citation": CITATION.encode(),
            b"derived_by": b"aqqua_geo.mapping.drago2022.write_bundled",
            b"units": b"biomass_sph, biomass_ell: mg C m-3; predictors: see aqqua_geo.mapping.cf"}
    paths = [nc]
    for name, df in (("observations_0_200m", build_observation_table(shared_dir)),
                     ("copepoda_pred_0_200m", build_reference_map(shared_dir))):
        path = root / "drago2022" / f"{name}.parquet"
        _write_parquet(df, path, meta)
        paths.append(path)
    return paths


def _write_parquet(df: pd.DataFrame, path: Path, meta: dict[bytes, bytes]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    pq.write_table(table, path, compression="zstd", compression_level=19)


def open_bundled_observations() -> pd.DataFrame:
    """The bundled table ``d`` (20 516 rows; no access to ``shared/data`` needed)."""
    from aqqua_geo import data as bundled

    return pd.read_parquet(bundled.path("drago2022") / "observations_0_200m.parquet")


def open_bundled_reference_map() -> pd.DataFrame:
    """The bundled Drago Copepoda map (``lon, lat, pred_mean, pred_sd``)."""
    from aqqua_geo import data as bundled

    return pd.read_parquet(bundled.path("drago2022") / "copepoda_pred_0_200m.parquet")


def open_bundled_cube_file() -> xr.Dataset:
    """The bundled 1° cube as written (the data engineer's ``open_bundled_env`` normalises it)."""
    from aqqua_geo import data as bundled

    return xr.open_dataset(bundled.path("env") / "drago2022_env_1deg.nc")
