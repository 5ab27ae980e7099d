"""Fit the particle flux relation F = sum_i c_i A d_i^b / V against co-located trap fluxes.

For a set of UVP depth windows (counts per ESD class ``c_i`` in ``V`` litres, from
:func:`aqqua_geo.mapping.ecopart.window_counts`) matched to trap (or thorium) fluxes ``T``:

    log10 F(A, b) = log10 A + log10 S(b),   S(b) = sum_i c_i d_i^b / V

For a fixed b the least-squares log10 A is ``mean(log10 T - log10 S(b))`` (closed form); b is
found by minimising the profile rmse over ``b_bounds``. b is identifiable only when the matched
spectra differ in shape (slope): with fewer than ``min_pairs_for_b`` pairs, or when the profile
minimum sits on a bound, only A is fitted and the result says so. Bootstrap over the pairs gives
the spread of A and b. The errors are on the log scale because trap/UVP disagreement is
multiplicative (Guidi et al. 2008 fitted in log space too).

:func:`match_traps` pairs casts with observations within a distance, a time window and a depth
tolerance of each horizon.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from aqqua_geo.mapping.flux import GUIDI2008, FluxRelation, flux_relation
from aqqua_geo.mapping.sphere import EARTH_RADIUS_KM

__all__ = ["CalibrationResult", "fit_relation", "match_traps", "log10_flux"]


@dataclass
class CalibrationResult:
    """A fitted relation and what it changes on the pairs it was fitted to."""

    relation: FluxRelation
    fit_b: bool
    n_pairs: int
    rmse_log10_before: float
    rmse_log10_after: float
    bias_log10_before: float
    A_p2_5_p97_5: tuple[float, float]
    b_p2_5_p97_5: tuple[float, float]
    note: str = ""
    profile: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain figures (for JSON/tables)."""
        return {"A": self.relation.A, "b": self.relation.b, "d_min_mm": self.relation.d_min_mm,
                "d_max_mm": self.relation.d_max_mm, "fit_b": self.fit_b, "n_pairs": self.n_pairs,
                "rmse_log10_before": self.rmse_log10_before, "rmse_log10_after": self.rmse_log10_after,
                "bias_log10_before": self.bias_log10_before,
                "A_p2_5": self.A_p2_5_p97_5[0], "A_p97_5": self.A_p2_5_p97_5[1],
                "b_p2_5": self.b_p2_5_p97_5[0], "b_p97_5": self.b_p2_5_p97_5[1], "note": self.note}


def _mid_mm(edges_mm: np.ndarray) -> np.ndarray:
    e = np.asarray(edges_mm, dtype=float)
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0) or e[0] <= 0:
        raise ValueError("size-class edges must be a 1-D increasing sequence of positive ESDs (mm)")
    return np.sqrt(e[:-1] * e[1:])


def log10_flux(counts: np.ndarray, volume_l: np.ndarray, edges_mm: np.ndarray,
               relation: FluxRelation) -> np.ndarray:
    """log10 of F = sum_i c_i A d_i^b / V per row of *counts* (n_windows, n_classes)."""
    c = np.atleast_2d(np.asarray(counts, dtype=float))
    mid = _mid_mm(edges_mm)
    if c.shape[1] != mid.size:
        raise ValueError(f"counts have {c.shape[1]} classes, edges give {mid.size}")
    keep = (mid >= relation.d_min_mm) & (mid <= relation.d_max_mm)
    s = (c[:, keep] * mid[keep] ** relation.b).sum(axis=1) / np.asarray(volume_l, dtype=float)
    with np.errstate(divide="ignore"):
        return np.log10(relation.A * s)


def _log_s(c: np.ndarray, v: np.ndarray, mid: np.ndarray, b: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log10((c * mid**b).sum(axis=1) / v)


def _fit(c, v, mid, log_t, b0, fit_b, b_bounds) -> tuple[float, float, float]:
    """(log10 A, b, rmse) of the least-squares fit."""
    def rmse_at(b: float) -> tuple[float, float]:
        r = log_t - _log_s(c, v, mid, b)
        log_a = float(r.mean())
        return log_a, float(np.sqrt(np.mean((r - log_a) ** 2)))

    if fit_b:
        res = minimize_scalar(lambda b: rmse_at(b)[1], bounds=b_bounds, method="bounded",
                              options={"xatol": 1e-4})
        b = float(res.x)
    else:
        b = float(b0)
    log_a, rmse = rmse_at(b)
    return log_a, b, rmse


def fit_relation(
    counts: Any,
    volume_l: Any,
    edges_mm: Any,
    target_flux: Any,
    *,
    size_range: str | tuple[float, float] = "guidi2008",
    start: FluxRelation = GUIDI2008,
    fit_b: bool | None = None,
    b_bounds: tuple[float, float] = (2.0, 5.0),
    min_pairs_for_b: int = 5,
    n_boot: int = 200,
    seed: int = 0,
) -> CalibrationResult:
    """Fit A (and b) of F = A sum_i c_i d_i^b / V to *target_flux* (mg C m-2 d-1) on the log scale.

    *counts*: (n_pairs, n_classes) particles per ESD class in each UVP window, *volume_l*: the
    imaged volume of each window, *edges_mm*: the ``n_classes + 1`` class bounds. ``fit_b=None``
    fits b when there are at least *min_pairs_for_b* pairs (else A only, b kept at
    ``start.b``). ``rmse_log10_before`` is *start*'s misfit on the same pairs.
    """
    c = np.atleast_2d(np.asarray(counts, dtype=float))
    v = np.asarray(volume_l, dtype=float).ravel()
    t = np.asarray(target_flux, dtype=float).ravel()
    mid = _mid_mm(np.asarray(edges_mm))
    if c.shape[1] != mid.size:
        raise ValueError(f"counts have {c.shape[1]} classes, edges give {mid.size}")
    if not (len(c) == len(v) == len(t)):
        raise ValueError(f"counts ({len(c)}), volume_l ({len(v)}) and target_flux ({len(t)}) differ in length")
    rel0 = flux_relation(size_range, A=start.A, b=start.b)
    keep = (mid >= rel0.d_min_mm) & (mid <= rel0.d_max_mm)
    ok = (v > 0) & (t > 0) & np.isfinite(t) & ((c[:, keep]).sum(axis=1) > 0)
    if ok.sum() < 1:
        raise ValueError("no usable pair (positive volume, positive target flux, particles in range)")
    c, v, t = c[ok][:, keep], v[ok], t[ok]
    mid = mid[keep]
    n = len(t)
    fit_b = (n >= min_pairs_for_b) if fit_b is None else bool(fit_b)
    if fit_b and n < 3:
        raise ValueError(f"fitting b needs at least 3 pairs, got {n}")
    log_t = np.log10(t)
    before = log_t - (np.log10(rel0.A) + _log_s(c, v, mid, rel0.b))
    log_a, b, rmse = _fit(c, v, mid, log_t, rel0.b, fit_b, b_bounds)
    note = ""
    if fit_b and min(abs(b - b_bounds[0]), abs(b - b_bounds[1])) < 1e-2:
        note = f"b ran to its bound {b:.2f}: not constrained by these pairs; A fitted with b={rel0.b:g} instead"
        fit_b = False
        log_a, b, rmse = _fit(c, v, mid, log_t, rel0.b, False, b_bounds)
    elif not fit_b:
        note = f"A only (b fixed at {rel0.b:g}): {n} pair(s) cannot constrain the spectral weighting b"
    rng = np.random.default_rng(seed)
    boot_a, boot_b = [], []
    for _ in range(n_boot if n > 1 else 0):
        i = rng.integers(0, n, n)
        if fit_b and np.unique(i).size < 3:
            continue
        la, bb, _ = _fit(c[i], v[i], mid, log_t[i], rel0.b, fit_b, b_bounds)
        boot_a.append(10**la)
        boot_b.append(bb)
    a_ci = tuple(np.percentile(boot_a, [2.5, 97.5])) if boot_a else (np.nan, np.nan)
    b_ci = tuple(np.percentile(boot_b, [2.5, 97.5])) if boot_b and fit_b else (b, b)
    grid = np.linspace(*b_bounds, 31)
    profile = pd.DataFrame({"b": grid, "rmse_log10": [_fit(c, v, mid, log_t, g, False, b_bounds)[2] for g in grid]})
    rel = flux_relation((rel0.d_min_mm, rel0.d_max_mm), A=float(10**log_a), b=b,
                        reference=f"fitted to {n} trap/UVP pair(s) ({'A and b' if fit_b else 'A only'}), "
                                  f"{rel0.d_min_mm:g}-{rel0.d_max_mm:g} mm ESD")
    return CalibrationResult(
        relation=rel, fit_b=fit_b, n_pairs=n,
        rmse_log10_before=float(np.sqrt(np.mean(before**2))), rmse_log10_after=rmse,
        bias_log10_before=float(-before.mean()),  # log10(start / target), pred - obs
        A_p2_5_p97_5=(float(a_ci[0]), float(a_ci[1])), b_p2_5_p97_5=(float(b_ci[0]), float(b_ci[1])),
        note=note, profile=profile)


def match_traps(casts: pd.DataFrame, traps: pd.DataFrame, *, max_km: float = 100.0,
                max_days: float | None = 30.0, depth_tol_m: float = 25.0,
                horizon_col: str = "horizon_m") -> pd.DataFrame:
    """Pairs of UVP windows and flux observations close in space, time and depth.

    *casts*: ``profile_id, lat, lon, datetime, <horizon_col>`` (one row per window);
    *traps*: ``lat, lon, depth, poc_flux_obs`` and ``datetime`` (NaT: undated, matched only when
    ``max_days`` is None, i.e. a climatology). Returns the cast rows joined with the trap rows
    (``trap_*`` columns), ``distance_km`` and ``dt_days``.
    """
    for col in ("lat", "lon", "datetime", horizon_col):
        if col not in casts.columns:
            raise KeyError(f"casts table has no {col!r} column")
    for col in ("lat", "lon", "depth", "poc_flux_obs"):
        if col not in traps.columns:
            raise KeyError(f"trap table has no {col!r} column")
    from sklearn.metrics.pairwise import haversine_distances

    rows = []
    dist_all = haversine_distances(np.deg2rad(casts[["lat", "lon"]].to_numpy(float)),
                                   np.deg2rad(traps[["lat", "lon"]].to_numpy(float))) * EARTH_RADIUS_KM
    t_time = pd.to_datetime(traps["datetime"], utc=True) if "datetime" in traps else pd.Series(pd.NaT, index=traps.index)
    for k, (_, c) in enumerate(casts.iterrows()):
        dist = dist_all[k]
        dt = (t_time - pd.Timestamp(c["datetime"])).dt.total_seconds().abs().to_numpy() / 86400.0
        sel = (dist <= max_km) & (np.abs(traps["depth"].to_numpy(float) - float(c[horizon_col])) <= depth_tol_m)
        if max_days is not None:
            sel &= np.nan_to_num(dt, nan=np.inf) <= max_days
        for j in np.flatnonzero(sel):
            tr = traps.iloc[j]
            rows.append({**c.to_dict(), **{f"trap_{k}": tr[k] for k in traps.columns},
                         "distance_km": float(dist[j]), "dt_days": float(dt[j])})
    return pd.DataFrame(rows)
