"""Monthly climatology predictors from ``shared/data/env_monthly`` on the bundled 1° grid, and
the CF climatological time axis of monthly products.

Sources (Ferret's ``ferret-datasets``, NOAA/PMEL licence, see ``env_monthly/copyright.txt``):

* ``ocean_atlas_subset.nc``: monthly ocean temperature at 19 levels 0–1000 m on a 2° grid.
  Gives ``sst_monthly`` (the 0 m level: COADS SST covers only 54 % of the 2° cells, ship tracks,
  the atlas the whole ocean) and a mixed-layer-depth proxy ``mld_monthly``: the depth where
  temperature first falls 0.2 °C below its 10 m value (de Boyer Montégut et al. 2004, JGR
  109:C12003, temperature criterion), linear between levels, the deepest valid level when the
  column never crosses it; and the static ``mld_max`` (the annual maximum: the winter mixed
  layer that sets the nutrient supply and the export horizon of Clements et al. 2023).
* ``coads_climatology.cdf``: monthly COADS ``WSPD`` → ``wind_speed_monthly`` (m s-1).

Both are 2° and 0–360° (wrapped to -180..180). Each field is interpolated linearly to the 1°
cell centres, gaps (coasts, unsampled ship-track cells) filled from the nearest valid cell, and
masked to the bundled cube's ocean cells. ``TIME`` has no CF calendar: it is read as the month
index 1..12 (the files' order).

:func:`monthly_cube` joins them with the bundled annual cube (static fields repeat over
``month``); :func:`climatology_time_axis` turns ``month`` into a CF §7.4 climatological
``time`` with ``climatology_bnds`` over the observation years.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["MONTHLY_VARIABLES", "STATIC_VARIABLES", "mld_threshold", "open_monthly_env", "monthly_cube",
           "climatology_time_axis", "CLIMATOLOGY_CELL_METHODS", "LICENSE"]

DATA_SUBDIR = "env_monthly"
ATLAS_FILE = "ocean_atlas_subset.nc"
COADS_FILE = "coads_climatology.cdf"
LICENSE = "Ferret License Agreement (NOAA/PMEL), ferret-datasets 7.6.0: ocean atlas and COADS monthly climatologies"
MLD_DELTA_T_DEGC = 0.2
MLD_REFERENCE_M = 10.0
CLIMATOLOGY_CELL_METHODS = "time: mean within years time: mean over years"

MONTHLY_VARIABLES: dict[str, dict[str, str]] = {
    "sst_monthly": {"standard_name": "sea_surface_temperature", "units": "degC",
                    "long_name": "sea surface temperature, monthly climatology (ocean atlas, 0 m)"},
    "mld_monthly": {"standard_name": "ocean_mixed_layer_thickness_defined_by_temperature", "units": "m",
                    "long_name": "mixed layer depth proxy, monthly climatology (0.2 degC below the 10 m temperature)"},
    "wind_speed_monthly": {"standard_name": "wind_speed", "units": "m s-1",
                           "long_name": "surface wind speed, monthly climatology (COADS)"},
}
STATIC_VARIABLES: dict[str, dict[str, str]] = {
    "mld_max": {"standard_name": "ocean_mixed_layer_thickness_defined_by_temperature", "units": "m",
                "long_name": "annual maximum of the monthly mixed layer depth proxy"},
    "sst_range": {"units": "degC", "long_name": "annual range (max - min) of monthly sea surface temperature"},
}


def _dir(shared: str | Path) -> Path:
    shared = Path(shared)
    d = shared / DATA_SUBDIR if (shared / DATA_SUBDIR).is_dir() else shared
    for f in (ATLAS_FILE, COADS_FILE):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f} not found (expected the env_monthly folder)")
    return d


def mld_threshold(temp: np.ndarray, depth_m: np.ndarray, delta_t: float = MLD_DELTA_T_DEGC,
                  reference_m: float = MLD_REFERENCE_M) -> np.ndarray:
    """Mixed-layer depth (m) of temperature profiles *temp* (depth on axis 0): the depth where
    T first drops *delta_t* below T(reference_m), linear between levels; the deepest valid
    level when it never does; NaN where T(reference_m) is missing."""
    t = np.asarray(temp, dtype="f8")
    z = np.asarray(depth_m, dtype="f8")
    if t.shape[0] != z.size or not np.all(np.diff(z) > 0):
        raise ValueError("temp must have increasing depth_m levels on axis 0")
    if reference_m not in z:
        raise ValueError(f"reference depth {reference_m} m is not a level of {z}")
    k0 = int(np.flatnonzero(z == reference_m)[0])
    flat = t.reshape(z.size, -1)
    target = flat[k0] - delta_t
    out = np.full(flat.shape[1], np.nan)
    valid_col = np.isfinite(flat[k0])
    below = (flat < target) & np.isfinite(flat)
    below[: k0 + 1] = False
    crossed = below.any(axis=0)
    first = np.argmax(below, axis=0)
    cols = np.flatnonzero(valid_col & crossed)
    k = first[cols]
    t_up, t_dn = flat[k - 1, cols], flat[k, cols]
    frac = np.where(np.isfinite(t_up) & (t_up != t_dn), (t_up - target[cols]) / (t_up - t_dn), 1.0)
    out[cols] = z[k - 1] + np.clip(frac, 0, 1) * (z[k] - z[k - 1])
    deep = np.flatnonzero(valid_col & ~crossed)
    last_valid = z.size - 1 - np.argmax(np.isfinite(flat[::-1, deep]), axis=0)
    out[deep] = z[last_valid]
    return out.reshape(t.shape[1:])


def _wrap(da: xr.DataArray, lon: str, lat: str) -> xr.DataArray:
    da = da.rename({lon: "lon", lat: "lat"})
    wrapped = ((da["lon"].values + 180.0) % 360.0) - 180.0
    da = da.assign_coords(lon=wrapped).sortby("lon")
    _, first = np.unique(da["lon"].values, return_index=True)
    return da.isel(lon=np.sort(first))


def _fill_nearest(a: np.ndarray) -> np.ndarray:
    """Fill NaN cells of each (lat, lon) slice from the nearest valid cell (grid index space)."""
    from scipy.ndimage import distance_transform_edt

    out = np.array(a, dtype="f8")
    for idx in np.ndindex(out.shape[:-2]):
        s = out[idx]
        miss = ~np.isfinite(s)
        if miss.all() or not miss.any():
            continue
        _, (ii, jj) = distance_transform_edt(miss, return_indices=True)
        out[idx] = s[ii, jj]
    return out


def _to_grid(da: xr.DataArray, lat: np.ndarray, lon: np.ndarray, ocean: np.ndarray) -> np.ndarray:
    """2° (month, lat, lon) field → the 1° grid: nearest-fill gaps, periodic linear interp,
    masked to *ocean*."""
    filled = da.copy(data=_fill_nearest(da.values))
    west, east = filled.isel(lon=[-1]), filled.isel(lon=[0])
    padded = xr.concat([west.assign_coords(lon=west["lon"] - 360), filled,
                        east.assign_coords(lon=east["lon"] + 360)], dim="lon")
    g = padded.interp(lat=xr.DataArray(lat, dims="lat"), lon=xr.DataArray(lon, dims="lon"),
                      kwargs={"fill_value": None}).values
    g = _fill_nearest(g)  # beyond the outermost 2° latitude centres
    return np.where(ocean[None], g, np.nan).astype("f4")


def open_monthly_env(shared: str | Path, template: xr.Dataset | None = None) -> xr.Dataset:
    """The monthly predictors (``month`` × lat × lon) and their static summaries on the grid of
    *template* (default: the bundled 1° cube; its ocean cells define the mask)."""
    from aqqua_geo.mapping.env import open_bundled_env

    d = _dir(shared)
    tpl = template if template is not None else open_bundled_env()
    lat, lon = tpl["lat"].values, tpl["lon"].values
    ocean = np.isfinite(tpl["temperature"].values) if "temperature" in tpl else np.ones((lat.size, lon.size), bool)
    with xr.open_dataset(d / ATLAS_FILE, decode_times=False) as atlas, \
            xr.open_dataset(d / COADS_FILE, decode_times=False) as coads:
        temp = _wrap(atlas["TEMP"].load(), "XAX_SUBSET", "YAX_SUBSET")
        z = temp["ZAXLEVIT19"].values
        mld = mld_threshold(np.moveaxis(temp.values, 1, 0), z)
        mld_da = temp.isel(ZAXLEVIT19=0, drop=True).copy(data=mld)
        sst_da = temp.isel(ZAXLEVIT19=0, drop=True)
        wind = _wrap(coads["WSPD"].load(), "COADSX", "COADSY")
    if temp.sizes["TIME"] != 12 or wind.sizes["TIME"] != 12:
        raise ValueError(f"{d}: expected 12 monthly steps, got {temp.sizes['TIME']} / {wind.sizes['TIME']}")
    month = np.arange(1, 13)
    fields = {"sst_monthly": _to_grid(sst_da, lat, lon, ocean),
              "mld_monthly": _to_grid(mld_da, lat, lon, ocean),
              "wind_speed_monthly": _to_grid(wind, lat, lon, ocean)}
    ds = xr.Dataset({k: (("month", "lat", "lon"), v, MONTHLY_VARIABLES[k]) for k, v in fields.items()},
                    coords={"month": ("month", month, {"long_name": "month of year", "units": "1"}),
                            "lat": tpl["lat"], "lon": tpl["lon"]})
    ds["mld_max"] = ds["mld_monthly"].max("month").assign_attrs(STATIC_VARIABLES["mld_max"])
    ds["sst_range"] = (ds["sst_monthly"].max("month") - ds["sst_monthly"].min("month")).assign_attrs(
        STATIC_VARIABLES["sst_range"])
    for v in MONTHLY_VARIABLES:
        ds[v].attrs["cell_methods"] = CLIMATOLOGY_CELL_METHODS
    ds.attrs.update(source=f"{ATLAS_FILE} and {COADS_FILE} (ferret-datasets 7.6.0), regridded by "
                           "aqqua_geo.mapping.env_monthly", license=LICENSE)
    return ds


def monthly_cube(shared: str | Path, annual: xr.Dataset | None = None) -> xr.Dataset:
    """The bundled annual cube (static over months) joined with :func:`open_monthly_env`."""
    from aqqua_geo.mapping.env import open_bundled_env

    annual = annual if annual is not None else open_bundled_env()
    monthly = open_monthly_env(shared, annual)
    return xr.merge([annual.drop_vars([v for v in ("lat_bnds", "lon_bnds") if v in annual.variables]),
                     monthly], compat="override", combine_attrs="override")


def climatology_time_axis(ds: xr.Dataset, first_year: int, last_year: int) -> xr.Dataset:
    """Replace ``month`` (1..12) by a CF climatological ``time`` axis (§7.4): mid-month dates
    of *first_year*, ``climatology_bnds`` from the first day of the month in *first_year* to
    the first day of the next month in *last_year*."""
    if "month" not in ds.dims:
        raise ValueError("climatology_time_axis needs a 'month' dimension")
    if last_year < first_year:
        raise ValueError(f"last_year {last_year} < first_year {first_year}")
    months = [int(m) for m in ds["month"].values]
    start = pd.to_datetime([f"{first_year}-{m:02d}-01" for m in months])
    mid = start + (start + pd.offsets.MonthBegin(1) - start) / 2
    end = pd.to_datetime([f"{last_year}-{m:02d}-01" for m in months]) + pd.offsets.MonthBegin(1)
    out = ds.rename({"month": "time"}).assign_coords(
        time=("time", mid.values.astype("datetime64[ns]"),
              {"standard_name": "time", "long_name": "time (monthly climatology)", "axis": "T",
               "climatology": "climatology_bnds"}))
    out = out.assign_coords(climatology_bnds=(("time", "bnds"),
                                              np.stack([start.values, end.values], axis=1).astype("datetime64[ns]")))
    for c in ("time", "climatology_bnds"):  # one encoding: the bounds share the axis's units
        out[c].encoding.update(units="days since 1970-01-01", calendar="standard", dtype="f8")
    return out
