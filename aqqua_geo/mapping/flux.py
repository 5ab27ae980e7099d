"""Carbon export from particle size distributions, export horizons and global totals.

Flux from a number spectrum (Guidi et al. 2008, Deep-Sea Res. I 55:1364):

    F = sum_i n_i * A * d_i**b * dd_i          [mg C m-2 d-1]

with n_i the number spectrum in # L-1 mm-1, d_i the class mid-point ESD in mm (geometric mean
of the class bounds), dd_i the class width in mm, and by default A = 12.5, b = 3.81, applied
only where the relation was calibrated (classes whose mid-point lies in 0.102-1.5 mm ESD).
:func:`flux_relation` builds other relations: the 35 um-5 mm size range of Clements et al. 2023
(GBC, "New estimate of organic carbon export from optical measurements..."), any A and b, or a
fit against co-located trap fluxes (:mod:`aqqua_geo.mapping.flux_calibration`).
Counting noise: with c_i particles counted in V litres, F = sum_i c_i A d_i^b / V, so the
Poisson standard error is sqrt(sum_i c_i (A d_i^b / V)^2) (:func:`guidi_flux_poisson_sd`).
Totals over the globe integrate a (lat, lon) flux map over cell areas on the sphere,
A_cell = R^2 * dlon * (sin(lat_north) - sin(lat_south)), ocean cells only, in Pg C yr-1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from aqqua_geo.mapping.sphere import EARTH_RADIUS_M, cell_area

__all__ = [
    "FluxRelation",
    "GUIDI2008",
    "SIZE_RANGES_MM",
    "flux_relation",
    "class_weights",
    "guidi_flux",
    "guidi_flux_poisson_sd",
    "flux_at_depth",
    "export_flux",
    "cell_area",
    "global_total",
    "EARTH_RADIUS_M",
    "DAYS_PER_YEAR",
]

DAYS_PER_YEAR = 365.25
_MG_PER_PG = 1e18


@dataclass(frozen=True)
class FluxRelation:
    """Power-law flux per particle, F(d) = A d^b (d in mm, F in mg C m-2 d-1 per # L-1 mm-1 mm)."""

    A: float
    b: float
    d_min_mm: float
    d_max_mm: float
    reference: str = ""


#: Guidi et al. 2008 global calibration against sediment traps (UVP, 0.102-1.5 mm ESD).
GUIDI2008 = FluxRelation(A=12.5, b=3.81, d_min_mm=0.102, d_max_mm=1.5,
                         reference="Guidi et al. 2008, Deep-Sea Res. I 55:1364-1374")


#: Named ESD ranges (mm) over which A d^b is applied: Guidi et al. 2008's calibration range and
#: the 35 um-5 mm range of the sinking-particle PSD of Clements et al. 2023.
SIZE_RANGES_MM: dict[str, tuple[float, float]] = {
    "guidi2008": (0.102, 1.5),
    "clements2023": (0.035, 5.0),
}


def flux_relation(size_range: str | tuple[float, float] = "guidi2008", A: float = GUIDI2008.A,
                  b: float = GUIDI2008.b, reference: str | None = None) -> FluxRelation:
    """A flux relation with a named (:data:`SIZE_RANGES_MM`) or explicit ``(d_min_mm,
    d_max_mm)`` size range and any ``A``, ``b`` (default Guidi et al. 2008's 12.5, 3.81).

    Outside 0.102-1.5 mm, Guidi's A and b are an extrapolation (the 35 um-5 mm range is Clements
    et al.'s, not a calibration of A d^b over it): say which in *reference*.
    """
    if isinstance(size_range, str):
        if size_range not in SIZE_RANGES_MM:
            raise KeyError(f"unknown size range {size_range!r}; known: {sorted(SIZE_RANGES_MM)} or (d_min_mm, d_max_mm)")
        lo, hi = SIZE_RANGES_MM[size_range]
        name = size_range
    else:
        lo, hi = (float(v) for v in size_range)
        name = f"{lo:g}-{hi:g} mm"
    if not (0 < lo < hi):
        raise ValueError(f"size range must satisfy 0 < d_min_mm < d_max_mm, got ({lo}, {hi})")
    if not (np.isfinite(A) and A > 0 and np.isfinite(b)):
        raise ValueError(f"A must be a positive number and b finite, got A={A}, b={b}")
    ref = reference if reference is not None else f"A={A:g}, b={b:g} over {name} ESD"
    return FluxRelation(A=float(A), b=float(b), d_min_mm=lo, d_max_mm=hi, reference=ref)


def _class_geometry(edges_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.asarray(edges_mm, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0) or edges[0] <= 0:
        raise ValueError("size-class edges must be a 1-D increasing sequence of positive ESDs (mm)")
    return np.sqrt(edges[:-1] * edges[1:]), np.diff(edges)


def class_weights(edges_mm: Any, relation: FluxRelation = GUIDI2008) -> np.ndarray:
    """Flux per particle of each class, ``A d_i^b`` (mg C m-2 d-1 per particle L-1), 0 for
    classes whose mid-point is outside the relation's size range."""
    mid, _ = _class_geometry(np.asarray(edges_mm))
    keep = (mid >= relation.d_min_mm) & (mid <= relation.d_max_mm)
    return np.where(keep, relation.A * mid**relation.b, 0.0)


def guidi_flux_poisson_sd(counts: Any, volume_l: Any, edges_mm: Any,
                          relation: FluxRelation = GUIDI2008) -> np.ndarray:
    """Poisson counting standard error of the flux of *counts* (particles per class, last axis)
    seen in *volume_l* litres: ``sqrt(sum_i c_i (A d_i^b / V)^2)`` (mg C m-2 d-1)."""
    c = np.asarray(counts, dtype=float)
    v = np.asarray(volume_l, dtype=float)
    w = class_weights(edges_mm, relation)
    if c.shape[-1] != w.size:
        raise ValueError(f"counts have {c.shape[-1]} classes, edges give {w.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((c * w**2).sum(axis=-1)) / v


def guidi_flux(
    n_spectrum: Any,
    edges_mm: Any,
    relation: FluxRelation = GUIDI2008,
    size_dim: str = "size_class",
    axis: int = -1,
) -> Any:
    """Sinking POC flux (mg C m-2 d-1) from a number spectrum n(d) (# L-1 mm-1).

    ``n_spectrum`` is a numpy array with size classes on ``axis`` or an ``xarray.DataArray``
    with dimension ``size_dim``; ``edges_mm`` are the ``n_classes + 1`` ESD class bounds.
    Classes whose geometric mid-point is outside ``[relation.d_min_mm, relation.d_max_mm]``
    are left out. NaN spectra (no sampled volume) give NaN flux.
    """
    mid, width = _class_geometry(np.asarray(edges_mm))
    weight = relation.A * mid**relation.b * width
    weight = np.where((mid >= relation.d_min_mm) & (mid <= relation.d_max_mm), weight, 0.0)
    if isinstance(n_spectrum, xr.DataArray):
        if n_spectrum.sizes.get(size_dim) != mid.size:
            raise ValueError(f"{size_dim!r} has {n_spectrum.sizes.get(size_dim)} classes, edges give {mid.size}")
        w = xr.DataArray(weight, dims=size_dim)
        out = (n_spectrum * w).sum(size_dim, skipna=False)
        return out.assign_attrs(long_name="sinking particulate organic carbon flux",
                                units="mg m-2 d-1", positive="down",
                                comment=f"F = sum n A d^b dd, A={relation.A}, b={relation.b}; {relation.reference}")
    n = np.moveaxis(np.asarray(n_spectrum, dtype=float), axis, -1)
    if n.shape[-1] != mid.size:
        raise ValueError(f"spectrum has {n.shape[-1]} classes, edges give {mid.size}")
    return n @ weight


def flux_at_depth(depth_m: Any, flux: Any, horizon_m: float) -> float:
    """Flux at ``horizon_m`` by linear interpolation in a profile; NaN outside the profile."""
    d = np.asarray(depth_m, dtype=float)
    f = np.asarray(flux, dtype=float)
    ok = np.isfinite(d) & np.isfinite(f)
    d, f = d[ok], f[ok]
    if d.size == 0 or not np.isfinite(horizon_m) or horizon_m < d.min() or horizon_m > d.max():
        return float("nan")
    order = np.argsort(d)
    return float(np.interp(horizon_m, d[order], f[order]))


def export_flux(
    profiles: pd.DataFrame,
    horizon: float | str | Mapping[Any, float] | pd.Series | xr.DataArray,
    *,
    profile_col: str = "profile_id",
    depth_col: str = "depth",
    flux_col: str = "flux_mgC_m2_d",
    positions: pd.DataFrame | None = None,
    horizon_name: str | None = None,
) -> pd.DataFrame:
    """Flux of each profile at its export horizon.

    ``horizon`` is a fixed depth (m), a per-profile mapping/Series (e.g. the mixed-layer or
    euphotic depth measured at each cast), a column name of ``positions`` holding it, or a
    cube (``xarray.DataArray`` of MLD / euphotic depth on lat/lon[/time|month]) collocated at
    each profile's ``positions`` (``profile_col, lat, lon[, datetime]``).
    Returns ``profile_id, horizon_kind, horizon_m, flux_mgC_m2_d`` (NaN when the horizon is
    outside the sampled depths, never extrapolated).
    """
    for col in (profile_col, depth_col, flux_col):
        if col not in profiles.columns:
            raise KeyError(f"profiles table has no {col!r} column (columns: {list(profiles.columns)})")
    ids = pd.unique(profiles[profile_col])
    if isinstance(horizon, (int, float, np.floating, np.integer)):
        kind = horizon_name or "fixed"
        horizons = pd.Series(float(horizon), index=ids)
    elif isinstance(horizon, str):
        if positions is None or horizon not in positions.columns:
            raise KeyError(f"horizon column {horizon!r} not in positions table")
        kind = horizon_name or horizon
        horizons = positions.set_index(profile_col)[horizon].astype(float)
    elif isinstance(horizon, xr.DataArray):
        if positions is None:
            raise ValueError("a horizon cube needs the profiles' positions (profile_id, lat, lon[, datetime])")
        from aqqua_geo.mapping.collocate import collocate
        from aqqua_geo.mapping.env import resolve_variable

        name = str(horizon.name or "horizon")
        col = collocate(positions, horizon.to_dataset(name=name), method="linear")
        kind = horizon_name or name
        horizons = pd.Series(col[resolve_variable(name)].to_numpy(dtype=float),  # mlotst -> mld
                             index=positions[profile_col].to_numpy())
    else:
        kind = horizon_name or "per_profile"
        horizons = pd.Series(horizon, dtype=float)
    rows = []
    for pid, grp in profiles.groupby(profile_col, sort=False):
        h = float(horizons.get(pid, np.nan))
        rows.append({profile_col: pid, "horizon_kind": kind, "horizon_m": h,
                     flux_col: flux_at_depth(grp[depth_col], grp[flux_col], h)})
    return pd.DataFrame(rows)


def global_total(
    flux: xr.DataArray,
    ocean_mask: xr.DataArray | None = None,
    area: xr.DataArray | None = None,
) -> float:
    """Area-weighted total of a flux map (mg C m-2 d-1) in Pg C yr-1.

    Cells count only where ``ocean_mask`` (boolean or ocean fraction 0..1) says sea and the flux
    is finite; by default the ocean is where the flux is finite. Extra dims (time/month) are
    averaged first. Area from ``flux.lat_bnds``/``lon_bnds`` when present, else from centres.
    """
    if not {"lat", "lon"} <= set(flux.dims):
        raise ValueError(f"flux map needs lat and lon dims, has {flux.dims}")
    extra = [d for d in flux.dims if d not in ("lat", "lon")]
    f = flux.mean(extra) if extra else flux
    if area is None:
        lb = flux.coords.get("lat_bnds")
        lob = flux.coords.get("lon_bnds")
        area = cell_area(flux["lat"], flux["lon"],
                         None if lb is None else lb.values, None if lob is None else lob.values)
    weight = area
    if ocean_mask is not None:
        weight = weight * ocean_mask.astype(float)
    total_mg_per_day = float((f * weight).where(np.isfinite(f)).sum(skipna=True))
    return total_mg_per_day * DAYS_PER_YEAR / _MG_PER_PG
