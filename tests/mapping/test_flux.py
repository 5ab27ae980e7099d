"""Carbon export: Guidi flux, horizons, cell areas and global totals against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.mapping import flux as fx

R = fx.EARTH_RADIUS_M


def test_guidi_defaults_match_reference():
    assert (fx.GUIDI2008.A, fx.GUIDI2008.b) == (12.5, 3.81)
    assert (fx.GUIDI2008.d_min_mm, fx.GUIDI2008.d_max_mm) == (0.102, 1.5)


def test_guidi_flux_hand_computed():
    edges = [0.25, 1.0, 4.0]  # mid-points (geometric) 0.5 and 2.0 mm, widths 0.75 and 3 mm
    n = np.array([[8.0, 0.5]])  # # L-1 mm-1
    everything = fx.FluxRelation(A=12.5, b=3.81, d_min_mm=0.0, d_max_mm=np.inf)
    expected_all = 8.0 * 12.5 * 0.5**3.81 * 0.75 + 0.5 * 12.5 * 2.0**3.81 * 3.0
    assert fx.guidi_flux(n, edges, relation=everything)[0] == pytest.approx(expected_all)
    # default calibration range keeps only the 0.5 mm class
    assert fx.guidi_flux(n, edges)[0] == pytest.approx(8.0 * 12.5 * 0.5**3.81 * 0.75)
    custom = fx.FluxRelation(A=2.0, b=2.0, d_min_mm=0.0, d_max_mm=10.0)
    assert fx.guidi_flux(n, edges, relation=custom)[0] == pytest.approx(8 * 2 * 0.25 * 0.75 + 0.5 * 2 * 4 * 3)


def test_guidi_flux_xarray_keeps_other_dims_and_nan():
    edges = [0.25, 1.0, 4.0]
    da = xr.DataArray([[8.0, 0.5], [np.nan, np.nan]], dims=("depth", "size_class"), coords={"depth": [150, 200]})
    out = fx.guidi_flux(da, edges)
    assert out.dims == ("depth",) and out.attrs["units"] == "mg m-2 d-1"
    assert out.values[0] == pytest.approx(8.0 * 12.5 * 0.5**3.81 * 0.75)
    assert np.isnan(out.values[1])  # no volume -> no flux, never 0


def test_guidi_flux_bad_edges():
    with pytest.raises(ValueError, match="increasing"):
        fx.guidi_flux(np.ones(2), [1.0, 0.5, 2.0])
    with pytest.raises(ValueError, match="classes"):
        fx.guidi_flux(np.ones(3), [0.25, 1.0, 4.0])


def test_flux_at_depth_interpolates_never_extrapolates():
    assert fx.flux_at_depth([100, 200], [10.0, 20.0], 150) == pytest.approx(15.0)
    assert fx.flux_at_depth([200, 100], [20.0, 10.0], 125) == pytest.approx(12.5)
    assert math.isnan(fx.flux_at_depth([100, 200], [10.0, 20.0], 250))
    assert math.isnan(fx.flux_at_depth([100, 200], [10.0, 20.0], float("nan")))


def _profiles():
    depth = np.arange(0, 501, 50.0)
    return pd.DataFrame({
        "profile_id": np.repeat(["a", "b"], depth.size),
        "depth": np.tile(depth, 2),
        "flux_mgC_m2_d": np.concatenate([100 - 0.1 * depth, 50 - 0.05 * depth]),
    })


def test_export_flux_fixed_and_per_profile_horizons():
    prof = _profiles()
    fixed = fx.export_flux(prof, 150.0)
    assert fixed["flux_mgC_m2_d"].tolist() == pytest.approx([85.0, 42.5])
    assert set(fixed["horizon_kind"]) == {"fixed"}
    mld = fx.export_flux(prof, {"a": 30.0, "b": 420.0}, horizon_name="mld")
    assert mld["flux_mgC_m2_d"].tolist() == pytest.approx([97.0, 29.0])
    pos = pd.DataFrame({"profile_id": ["a", "b"], "zeu": [100.0, 600.0]})
    zeu = fx.export_flux(prof, "zeu", positions=pos)
    assert zeu["flux_mgC_m2_d"].iloc[0] == pytest.approx(90.0)
    assert math.isnan(zeu["flux_mgC_m2_d"].iloc[1])  # below the deepest sample


def test_export_flux_horizon_from_cube():
    lat = np.arange(-10, 11, 5.0)
    lon = np.arange(-20, 21, 5.0)
    mld = xr.DataArray(100 + 2 * lat[:, None] + 0 * lon[None, :], dims=("lat", "lon"),
                       coords={"lat": lat, "lon": lon}, name="mlotst")
    pos = pd.DataFrame({"profile_id": ["a", "b"], "lat": [2.5, -5.0], "lon": [0.0, 7.0]})
    out = fx.export_flux(_profiles(), mld, positions=pos)
    assert out["horizon_m"].tolist() == pytest.approx([105.0, 90.0])
    assert out["flux_mgC_m2_d"].tolist() == pytest.approx([100 - 10.5, 50 - 4.5])


def test_cell_area_sphere_and_band():
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(-179.5, 180, 1.0)
    area = fx.cell_area(lat, lon)
    assert float(area.sum()) == pytest.approx(4 * math.pi * R**2, rel=1e-12)
    eq = R**2 * math.radians(1.0) * (math.sin(math.radians(1.0)) - 0.0)
    assert float(area.sel(lat=0.5, lon=0.5)) == pytest.approx(eq, rel=1e-12)
    # explicit CF bounds give the same answer
    lb = np.stack([lat - 0.5, lat + 0.5], axis=1)
    np.testing.assert_allclose(fx.cell_area(lat, lon, lat_bounds=lb).values, area.values)


@settings(max_examples=30, deadline=None)
@given(st.floats(-80, 79), st.floats(0.25, 10))
def test_cell_area_of_a_band_matches_zone_formula(lat0, dlat):
    lat1 = min(lat0 + dlat, 90.0)
    a = fx.cell_area([lat0 + (lat1 - lat0) / 2], [0.0], lat_bounds=[lat0, lat1], lon_bounds=[-180, 180])
    zone = 2 * math.pi * R**2 * (math.sin(math.radians(lat1)) - math.sin(math.radians(lat0)))
    assert float(a.sum()) == pytest.approx(zone, rel=1e-9)


def test_global_total_uniform_flux_and_mask():
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(-179.5, 180, 1.0)
    f = xr.DataArray(np.ones((lat.size, lon.size)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    whole = 4 * math.pi * R**2 * 365.25 * 1e-18  # 1 mg m-2 d-1 everywhere, in Pg yr-1
    assert fx.global_total(f) == pytest.approx(whole, rel=1e-12)
    east = xr.DataArray(lon > 0, dims="lon", coords={"lon": lon}).broadcast_like(f)
    assert fx.global_total(f, ocean_mask=east) == pytest.approx(whole / 2, rel=1e-12)
    # NaN (land) cells are not ocean; time is averaged first
    g = f.where(f.lon > 0).expand_dims(time=2).copy()
    g[1] = g[1] * 3
    assert fx.global_total(g) == pytest.approx(whole / 2 * 2, rel=1e-12)
    with pytest.raises(ValueError, match="lat and lon"):
        fx.global_total(f.isel(lat=0))
