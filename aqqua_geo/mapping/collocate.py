"""Match observations (lat, lon[, depth][, datetime]) to an environmental cube.

Values are read with xarray vectorised (pointwise) indexing, ``sel(..., method="nearest")`` or
``interp(..., method="linear")`` with ``xr.DataArray`` indexers along an ``obs`` dimension, so a
dask-chunked cube is only read where needed and every variable is computed in one pass.

* **Antimeridian**: a global cube is padded with one wrapped column on each side, so linear
  interpolation between 179.5 E and 179.5 W (and nearest look-ups near +-180) are exact.
* **Depth**: observations shallower than the first level take the first level (surface
  fields apply at 0 m); deeper than the last level + half a level spacing are flagged.
* **Time**: outside the cube's coverage (+- half a time step by default) is flagged, or filled
  from the cube's monthly climatology when ``climatology=True``; cubes with a ``month`` dim are
  matched on the observation's month.
* **Land / missing cells** are flagged ``missing``, or, with ``max_distance_km``, filled from the
  nearest valid cell within that great-circle distance (flag ``nearest_valid``, distance kept).

Nothing is dropped: every observation comes back with a ``collocation_flag``
(``ok, nearest_valid, climatology, missing, depth_outside, time_outside, outside_grid``) and
the counts are in ``df.attrs["collocation_summary"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from aqqua_geo.mapping.env import monthly_climatology, normalise, resolve_variable
from aqqua_geo.mapping.sphere import EARTH_RADIUS_KM, KM_PER_DEG

__all__ = ["collocate", "collocation_summary", "FLAGS"]

#: Flags in order of precedence (an observation gets the first that applies).
FLAGS = ("outside_grid", "time_outside", "depth_outside", "missing", "nearest_valid", "climatology", "ok")
_METHODS = ("nearest", "linear")


def _spacing(values: np.ndarray) -> float:
    return float(np.median(np.diff(values))) if values.size > 1 else np.inf


def _is_global(lon: np.ndarray) -> bool:
    if lon.size < 2:
        return False
    step = _spacing(lon)
    return bool(np.isclose(lon[-1] - lon[0] + step, 360.0, atol=step * 0.01))


def _pad_antimeridian(ds: xr.Dataset) -> xr.Dataset:
    """Add wrapped copies of the last/first lon columns at -180/+180 for global grids."""
    lon = ds["lon"].values
    if not _is_global(lon):
        return ds
    west = ds.isel(lon=[-1]).assign_coords(lon=[lon[-1] - 360.0])
    east = ds.isel(lon=[0]).assign_coords(lon=[lon[0] + 360.0])
    return xr.concat([west, ds, east], dim="lon", data_vars="all", coords="minimal", compat="override")


def _obs_depth(obs: pd.DataFrame, depth_col: str) -> np.ndarray | None:
    if depth_col in obs.columns:
        return obs[depth_col].to_numpy(dtype=float)
    if {"depth_min", "depth_max"} <= set(obs.columns):
        return ((obs["depth_min"] + obs["depth_max"]) / 2.0).to_numpy(dtype=float)
    return None


def collocate(
    obs: pd.DataFrame,
    cube: xr.Dataset,
    method: str | Mapping[str, str] = "nearest",
    variables: Sequence[str] | None = None,
    *,
    lat_col: str = "lat",
    lon_col: str = "lon",
    depth_col: str = "depth",
    time_col: str = "datetime",
    time_tolerance: pd.Timedelta | str | None = None,
    climatology: bool = False,
    max_distance_km: float | None = None,
) -> pd.DataFrame:
    """Return ``obs`` with one column per cube variable and a ``collocation_flag`` column.

    ``method`` is ``"nearest"``/``"linear"`` for all variables or a ``{variable: method}``
    mapping (others default to nearest). Depth comes from ``depth_col`` or the mid-point of
    ``depth_min``/``depth_max``; time from ``time_col``. ``time_tolerance`` defaults to half
    the cube's time step. See the module docstring for the flags.
    """
    for col in (lat_col, lon_col):
        if col not in obs.columns:
            raise KeyError(f"observations have no {col!r} column (columns: {list(obs.columns)})")
    cube = normalise(cube)
    names = [resolve_variable(v) for v in (variables or list(cube.data_vars))]
    absent = [v for v in names if v not in cube.data_vars]
    if absent:
        raise KeyError(f"variables {absent} not in cube; it has {sorted(map(str, cube.data_vars))}")
    methods = {v: (method if isinstance(method, str) else "nearest") for v in names}
    if not isinstance(method, str):
        for v, m in method.items():
            if resolve_variable(v) not in methods:
                raise KeyError(f"method given for {v!r}, which is not collocated ({names})")
            methods[resolve_variable(v)] = m
    bad = {v: m for v, m in methods.items() if m not in _METHODS}
    if bad:
        raise ValueError(f"unknown interpolation method(s) {bad}; use 'nearest' or 'linear'")

    n = len(obs)
    lat = obs[lat_col].to_numpy(dtype=float)
    lon = ((obs[lon_col].to_numpy(dtype=float) + 180.0) % 360.0) - 180.0
    if np.any(np.abs(lat[np.isfinite(lat)]) > 90):
        raise ValueError(f"{lat_col} values outside [-90, 90]")
    flags = np.full(n, "ok", dtype=object)
    padded = _pad_antimeridian(cube[names])

    # horizontal coverage (half a cell beyond the outer centres)
    glat, glon = cube["lat"].values, padded["lon"].values
    hl, hn = _spacing(glat) / 2 if glat.size > 1 else 0.5, _spacing(glon) / 2 if glon.size > 1 else 0.5
    inside = (lat >= glat[0] - hl) & (lat <= glat[-1] + hl) & (lon >= glon[0] - hn) & (lon <= glon[-1] + hn)
    inside &= np.isfinite(lat) & np.isfinite(lon)
    flags[~inside] = "outside_grid"
    q_lat = np.clip(np.nan_to_num(lat), glat[0], glat[-1])
    q_lon = np.clip(np.nan_to_num(lon), glon[0], glon[-1])
    indexers: dict[str, np.ndarray] = {"lat": q_lat, "lon": q_lon}

    if "depth" in cube.dims:
        d = _obs_depth(obs, depth_col)
        if d is None:
            raise KeyError(f"cube has a depth axis: observations need {depth_col!r} or depth_min/depth_max")
        gd = cube["depth"].values
        half = _spacing(gd) / 2 if gd.size > 1 else np.inf
        deep = ~(d <= gd[-1] + half)  # NaN depth also counts as outside
        flags[(flags == "ok") & deep] = "depth_outside"
        indexers["depth"] = np.clip(np.nan_to_num(d), gd[0], gd[-1])

    clim_obs = np.zeros(n, dtype=bool)
    if "time" in cube.dims:
        if time_col not in obs.columns:
            raise KeyError(f"cube has a time axis: observations need a {time_col!r} column")
        t = pd.to_datetime(obs[time_col], utc=True).dt.tz_convert(None).to_numpy("datetime64[ns]")
        gt = cube["time"].values.astype("datetime64[ns]")
        tol = (pd.Timedelta(time_tolerance).to_timedelta64() if time_tolerance is not None
               else (np.median(np.diff(gt)) / 2 if gt.size > 1 else np.timedelta64(0, "ns")))
        out_t = np.isnat(t) | (t < gt[0] - tol) | (t > gt[-1] + tol)
        if climatology:
            clim_obs = out_t & (flags == "ok") & ~np.isnat(t)
            flags[out_t & ~clim_obs & (flags == "ok")] = "time_outside"
        else:
            flags[out_t & (flags == "ok")] = "time_outside"
        safe_t = np.where(np.isnat(t), gt[0], t)
        # match on float seconds: interp cannot mix datetime64 resolutions (us cube, ns obs)
        indexers["time"] = np.clip(safe_t, gt[0], gt[-1]).astype("int64") / 1e9
        padded = padded.assign_coords(time=gt.astype("int64") / 1e9)
        obs_month = pd.DatetimeIndex(safe_t).month.to_numpy()
    elif "month" in cube.dims:
        if time_col not in obs.columns:
            raise KeyError(f"cube has a month axis: observations need a {time_col!r} column")
        t = pd.to_datetime(obs[time_col], utc=True)
        obs_month = t.dt.month.to_numpy(dtype=float)
        flags[np.isnan(obs_month) & (flags == "ok")] = "time_outside"
        indexers["month"] = np.nan_to_num(obs_month, nan=1.0).astype(int)

    def _lookup(ds: xr.Dataset, idx: Mapping[str, np.ndarray]) -> dict[str, xr.DataArray]:
        out = {}
        for m in _METHODS:
            vs = [v for v in names if methods[v] == m]
            if not vs:
                continue
            ix = {k: xr.DataArray(val, dims="obs") for k, val in idx.items() if k in ds.dims}
            sub = ds[vs]
            if m == "nearest":
                res = sub.sel(ix, method="nearest")
            else:
                exact = {k: v for k, v in ix.items() if k == "month"}  # months are categories
                res = (sub.sel(exact) if exact else sub).interp(
                    {k: v for k, v in ix.items() if k not in exact}, method="linear")
            out.update({v: res[v] for v in vs})
        return out

    lazy = _lookup(padded, indexers)
    if clim_obs.any():
        clim = _pad_antimeridian(monthly_climatology(cube[names]))
        cidx = {k: v for k, v in indexers.items() if k != "time"}
        cidx["month"] = obs_month
        lazy_clim = _lookup(clim, cidx)
        (values, values_clim) = dask.compute(lazy, lazy_clim)
    else:
        (values,) = dask.compute(lazy)
        values_clim = {}

    result = obs.copy()
    any_nan = np.zeros(n, dtype=bool)
    cols: dict[str, np.ndarray] = {}
    for v in names:
        arr = np.asarray(values[v].values, dtype=float)
        if v in values_clim:
            arr = np.where(clim_obs, np.asarray(values_clim[v].values, dtype=float), arr)
        arr[flags != "ok"] = np.nan  # never report a value read outside the cube
        any_nan |= np.isnan(arr) & (flags == "ok")
        cols[v] = arr

    distance = np.full(n, np.nan)
    if max_distance_km is not None and any_nan.any():
        filled = _fill_nearest_valid(cube[names], cols, any_nan, lat, lon, indexers, obs_month
                                     if ("month" in cube.dims or clim_obs.any()) else None,
                                     clim_obs, max_distance_km)
        for v, (arr, dist) in filled.items():
            cols[v] = arr
            distance = np.fmax(distance, dist)
        any_nan = np.zeros(n, dtype=bool)
        for v in names:
            any_nan |= np.isnan(cols[v]) & (flags == "ok")
        flags[(flags == "ok") & ~any_nan & np.isfinite(distance)] = "nearest_valid"
    flags[any_nan] = "missing"
    flags[(flags == "ok") & clim_obs] = "climatology"
    for v in names:
        result[v] = cols[v]
    result["collocation_flag"] = pd.Categorical(flags, categories=list(FLAGS))
    if max_distance_km is not None:
        result["collocation_distance_km"] = distance
    result.attrs["collocation_summary"] = collocation_summary(result)
    return result


def _fill_nearest_valid(
    cube: xr.Dataset,
    cols: dict[str, np.ndarray],
    need: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    indexers: Mapping[str, np.ndarray],
    obs_month: np.ndarray | None,
    clim_obs: np.ndarray,
    max_km: float,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fill NaN values from the nearest valid cell within ``max_km`` (great circle, per variable).

    Observations are grouped by the (time or month, depth) layer they read; each layer is
    loaded once, restricted to the latitudes within reach, and searched with a haversine
    BallTree (so the search wraps across the antimeridian).
    """
    from sklearn.neighbors import BallTree

    clim = monthly_climatology(cube) if clim_obs.any() else None
    out = {v: (cols[v].copy(), np.full(len(lat), np.nan)) for v in cube.data_vars}
    idx = np.flatnonzero(need)
    layer_keys = []
    for i in idx:
        src_is_clim = bool(clim_obs[i])
        src = clim if src_is_clim else cube
        key: list[Any] = [src_is_clim]
        if "time" in src.dims:
            key.append(int(np.abs(src["time"].values.astype("datetime64[ns]").astype("int64") / 1e9
                                  - indexers["time"][i]).argmin()))
        if "month" in src.dims and obs_month is not None:
            key.append(int(obs_month[i]))
        if "depth" in src.dims:
            key.append(int(np.abs(src["depth"].values - indexers["depth"][i]).argmin()))
        layer_keys.append(tuple(key))
    reach_deg = max_km / KM_PER_DEG
    for key in dict.fromkeys(layer_keys):
        members = idx[[k == key for k in layer_keys]]
        src = clim if key[0] else cube
        sel: dict[str, Any] = {}
        pos = 1
        for dim in ("time", "month", "depth"):
            if dim in src.dims and (dim != "month" or obs_month is not None):
                sel[dim] = key[pos] if dim != "month" else int(np.flatnonzero(src["month"].values == key[pos])[0])
                pos += 1
        layer = src.isel(sel)
        lo, hi = lat[members].min() - reach_deg, lat[members].max() + reach_deg
        layer = layer.sel(lat=slice(lo, hi)).compute()
        glat, glon = np.meshgrid(layer["lat"].values, layer["lon"].values, indexing="ij")
        query = np.deg2rad(np.c_[lat[members], lon[members]])
        for v in cube.data_vars:
            todo = ~np.isfinite(cols[v][members])
            if not todo.any():
                continue
            vals = layer[v].transpose("lat", "lon").values
            valid = np.isfinite(vals)
            if not valid.any():
                continue
            tree = BallTree(np.deg2rad(np.c_[glat[valid], glon[valid]]), metric="haversine")
            dist, nearest = tree.query(query[todo], k=1)
            dist_km = dist[:, 0] * EARTH_RADIUS_KM
            ok = dist_km <= max_km
            target = members[todo][ok]
            out[v][0][target] = vals[valid][nearest[ok, 0]]
            out[v][1][target] = dist_km[ok]
    return out


def collocation_summary(df: pd.DataFrame) -> dict[str, int]:
    """Counts of each ``collocation_flag`` value (all flags listed, zeros included)."""
    counts = pd.Series(df["collocation_flag"]).value_counts()
    return {f: int(counts.get(f, 0)) for f in FLAGS}
