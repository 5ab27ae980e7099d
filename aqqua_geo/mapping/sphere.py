"""The one sphere of the mapping code: Earth radius, great-circle distances, cell areas.

Every distance (spatial-CV buffers, nearest-valid collocation) and every area (global totals)
uses the IUGG mean Earth radius below, so km, degrees and m² agree across the package.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["EARTH_RADIUS_M", "EARTH_RADIUS_KM", "KM_PER_DEG", "cell_area"]

#: Mean Earth radius (IUGG R1, m).
EARTH_RADIUS_M = 6_371_008.8
EARTH_RADIUS_KM = EARTH_RADIUS_M / 1000.0
#: Great-circle km per degree of arc on that sphere (111.195 km).
KM_PER_DEG = EARTH_RADIUS_KM * np.pi / 180.0


def _bounds(centres: np.ndarray, lo: float, hi: float) -> np.ndarray:
    c = np.asarray(centres, dtype=float)
    if c.size == 1:
        raise ValueError("cannot infer cell bounds from a single centre; pass the bounds")
    mid = (c[:-1] + c[1:]) / 2.0
    return np.clip(np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]]), lo, hi)


def cell_area(
    lat: Any,
    lon: Any,
    lat_bounds: Any | None = None,
    lon_bounds: Any | None = None,
    radius: float = EARTH_RADIUS_M,
) -> xr.DataArray:
    """Area (m2) of each (lat, lon) cell of a regular grid on the sphere.

    ``A = R² · Δlon · (sin φ_north − sin φ_south)``. Bounds default to mid-points between
    centres (the outermost ones mirrored and clipped to ±90°). ``lat_bounds``/``lon_bounds``
    are ``n + 1`` edges or ``(n, 2)`` CF bounds.
    """
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)

    def _edges(b: Any, centres: np.ndarray, lo: float, hi: float) -> np.ndarray:
        if b is None:
            return _bounds(centres, lo, hi)
        b = np.asarray(b, dtype=float)
        return np.concatenate([b[:, 0], b[-1:, 1]]) if b.ndim == 2 else b

    lat_e = _edges(lat_bounds, lat, -90.0, 90.0)
    lon_e = _edges(lon_bounds, lon, -np.inf, np.inf)
    band = np.abs(np.diff(np.sin(np.deg2rad(lat_e))))
    dlon = np.abs(np.deg2rad(np.diff(lon_e)))
    area = radius**2 * np.outer(band, dlon)
    return xr.DataArray(area, dims=("lat", "lon"), coords={"lat": lat, "lon": lon}, name="cell_area",
                        attrs={"standard_name": "cell_area", "units": "m2"})
