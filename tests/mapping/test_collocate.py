"""Collocation against hand-made cubes whose answers are known analytically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.mapping.collocate import FLAGS, collocate

LAT = np.arange(-89.5, 90, 1.0)
LON = np.arange(-179.5, 180, 1.0)
DEPTH = np.array([0.0, 10.0, 50.0, 100.0, 500.0])


def _linear_cube(chunked: bool = True) -> xr.Dataset:
    f = 2 * LAT[:, None, None] + 0.5 * LON[None, :, None] + 0.1 * DEPTH[None, None, :]
    ds = xr.Dataset({"f": (("lat", "lon", "depth"), f), "g": (("lat", "lon", "depth"), f.copy())},
                    coords={"lat": LAT, "lon": LON, "depth": DEPTH})
    return ds.chunk({"lat": 45, "lon": 90}) if chunked else ds


def _truth(lat, lon, depth):
    return 2 * lat + 0.5 * lon + 0.1 * depth


@settings(max_examples=25, deadline=None)
@given(st.floats(-89.5, 89.5), st.floats(-179.5, 179.5), st.floats(0, 500))
def test_linear_field_is_interpolated_exactly(lat, lon, depth):
    obs = pd.DataFrame({"lat": [lat], "lon": [lon], "depth": [depth]})
    out = collocate(obs, _linear_cube(chunked=False), method="linear", variables=["f"])
    assert out["f"].iloc[0] == pytest.approx(_truth(lat, lon, depth), abs=1e-9)
    assert out["collocation_flag"].iloc[0] == "ok"


def test_methods_per_variable_on_a_dask_cube():
    cube = _linear_cube()
    obs = pd.DataFrame({"lat": [10.25, -33.3], "lon": [20.7, -100.2], "depth": [5.0, 75.0]})
    out = collocate(obs, cube, method={"f": "linear", "g": "nearest"})
    assert out["f"].tolist() == pytest.approx([_truth(10.25, 20.7, 5), _truth(-33.3, -100.2, 75)])
    # nearest cell centres: (10.5, 20.5, 0 or 10 -> 10), (-33.5, -100.5, 50 or 100 -> 50/100 tie: 100)
    assert out["g"].iloc[0] == pytest.approx(_truth(10.5, 20.5, 10))
    assert out["collocation_flag"].tolist() == ["ok", "ok"]
    assert cube["f"].chunks is not None  # the input cube stays lazy


def test_antimeridian_linear_uses_wrapped_neighbours():
    field = np.sin(np.deg2rad(LON))[None, :] + 0 * LAT[:, None]
    cube = xr.Dataset({"s": (("lat", "lon"), field)}, coords={"lat": LAT, "lon": LON})
    obs = pd.DataFrame({"lat": [0.0, 0.0, 0.0], "lon": [179.9, -179.9, 540.0 - 0.1]})
    out = collocate(obs, cube, method="linear")
    a, b = np.sin(np.deg2rad(179.5)), np.sin(np.deg2rad(-179.5))
    assert out["s"].iloc[0] == pytest.approx(a + (b - a) * 0.4)
    assert out["s"].iloc[1] == pytest.approx(b + (a - b) * 0.4)
    assert out["s"].iloc[2] == pytest.approx(out["s"].iloc[0])  # 539.9 E == 179.9 E
    near = collocate(obs, cube, method="nearest")
    assert near["s"].tolist() == pytest.approx([a, b, a])


def test_zero_to_360_cube_is_normalised_before_matching():
    lon360 = np.arange(0.5, 360, 1.0)
    cube = xr.Dataset({"v": (("lat", "lon"), np.broadcast_to(lon360, (LAT.size, lon360.size)).copy())},
                      coords={"lat": LAT, "lon": lon360})
    out = collocate(pd.DataFrame({"lat": [0.0], "lon": [-90.2]}), cube)
    assert out["v"].iloc[0] == pytest.approx(269.5)


def test_nan_cells_flagged_then_filled_from_nearest_valid():
    lat = np.arange(-5.0, 5.1, 1.0)
    lon = np.arange(-5.0, 5.1, 1.0)
    v = np.add.outer(lat, lon * 10)
    v[5, 5] = np.nan  # the cell at (0, 0) is land
    v[5, 6] = np.nan  # so is (0, 1)
    cube = xr.Dataset({"v": (("lat", "lon"), v)}, coords={"lat": lat, "lon": lon})
    obs = pd.DataFrame({"lat": [0.3, 3.0], "lon": [0.2, 3.0]})
    out = collocate(obs, cube)
    assert out["collocation_flag"].tolist() == ["missing", "ok"]
    assert np.isnan(out["v"].iloc[0]) and len(out) == 2  # kept, not dropped
    assert out.attrs["collocation_summary"]["missing"] == 1
    filled = collocate(obs, cube, max_distance_km=200)
    assert filled["collocation_flag"].tolist() == ["nearest_valid", "ok"]
    assert filled["v"].iloc[0] == pytest.approx(v[6, 5])  # cell (1, 0), 81 km away
    assert filled["collocation_distance_km"].iloc[0] == pytest.approx(np.hypot(0.7, 0.2) * 111.195, rel=2e-3)
    too_far = collocate(obs, cube, max_distance_km=50)
    assert too_far["collocation_flag"].iloc[0] == "missing"


def test_linear_next_to_land_is_missing_not_biased():
    lat = np.arange(-2.0, 2.1, 1.0)
    v = np.ones((5, 5))
    v[2, 3] = np.nan
    cube = xr.Dataset({"v": (("lat", "lon"), v)}, coords={"lat": lat, "lon": lat})
    out = collocate(pd.DataFrame({"lat": [0.5], "lon": [0.5]}), cube, method="linear")
    assert out["collocation_flag"].iloc[0] == "missing"


def _time_cube():
    time = pd.date_range("2010-01-01", periods=24, freq="MS") + pd.Timedelta(days=14)
    lat = np.arange(-2.0, 2.1, 1.0)
    vals = np.broadcast_to(np.arange(24.0)[:, None, None], (24, 5, 5)).copy()
    vals += np.where(time.month == 7, 100.0, 0.0)[:, None, None]
    return xr.Dataset({"v": (("time", "lat", "lon"), vals)}, coords={"time": time, "lat": lat, "lon": lat})


def test_time_outside_flagged_or_filled_from_climatology():
    cube = _time_cube()
    obs = pd.DataFrame({"lat": [0.0, 0.0, 0.0], "lon": [0.0, 0.0, 0.0],
                        "datetime": pd.to_datetime(["2010-03-10", "2015-07-02", "2011-12-20"], utc=True)})
    out = collocate(obs, cube)
    assert out["v"].iloc[0] == 2.0 and out["v"].iloc[2] == 23.0
    assert out["collocation_flag"].tolist() == ["ok", "time_outside", "ok"]
    clim = collocate(obs, cube, climatology=True)
    assert clim["collocation_flag"].tolist() == ["ok", "climatology", "ok"]
    assert clim["v"].iloc[1] == pytest.approx((106.0 + 118.0) / 2)  # mean of the two Julys


def test_time_linear_interpolation():
    cube = _time_cube()
    t0, t1 = cube["time"].values[0], cube["time"].values[1]
    mid = pd.Timestamp(t0) + (pd.Timestamp(t1) - pd.Timestamp(t0)) / 4
    out = collocate(pd.DataFrame({"lat": [0.0], "lon": [0.0], "datetime": [mid]}), cube, method="linear")
    assert out["v"].iloc[0] == pytest.approx(0.25)


def test_month_cube_and_outside_grid():
    cube = _time_cube().groupby("time.month").mean("time")
    obs = pd.DataFrame({"lat": [0.0, 40.0], "lon": [1.0, 1.0],
                        "datetime": pd.to_datetime(["2030-07-01", "2030-07-01"], utc=True)})
    out = collocate(obs, cube)
    assert out["v"].iloc[0] == pytest.approx(112.0)
    assert out["collocation_flag"].tolist() == ["ok", "outside_grid"]
    assert set(out.attrs["collocation_summary"]) == set(FLAGS)


def test_depth_from_min_max_and_bad_inputs():
    cube = _linear_cube(chunked=False)
    obs = pd.DataFrame({"lat": [0.5], "lon": [0.5], "depth_min": [0.0], "depth_max": [100.0]})
    out = collocate(obs, cube, method="linear", variables=["f"])
    assert out["f"].iloc[0] == pytest.approx(_truth(0.5, 0.5, 50.0))
    with pytest.raises(KeyError, match="depth"):
        collocate(pd.DataFrame({"lat": [0.0], "lon": [0.0]}), cube)
    with pytest.raises(KeyError, match="'lon'"):
        collocate(pd.DataFrame({"lat": [0.0]}), cube)
    with pytest.raises(ValueError, match="unknown interpolation"):
        collocate(obs, cube, method="cubic")
    with pytest.raises(KeyError, match="not in cube"):
        collocate(obs, cube, variables=["nope"])
    with pytest.raises(KeyError, match="datetime"):
        collocate(pd.DataFrame({"lat": [0.0], "lon": [0.0]}), _time_cube())


def test_real_ostia_kelvin_cube(shared_data):
    from aqqua_geo.mapping.env import open_env

    cube = open_env(shared_data / "env_grids" / "ostia_monthly.nc")
    obs = pd.DataFrame({"lat": [0.0, 0.0, 20.0], "lon": [-140.0, 200.0 - 360.0, 0.0],
                        "datetime": pd.to_datetime(["2008-06-20", "2008-06-20", "2008-06-20"], utc=True)})
    out = collocate(obs, cube, method="linear")
    assert 20 < out["temperature"].iloc[0] < 32  # equatorial Pacific SST in degC, not K
    assert out["collocation_flag"].tolist() == ["ok", "ok", "outside_grid"]


def test_nearest_valid_search_wraps_the_antimeridian():
    v = np.broadcast_to(np.arange(LON.size, dtype=float), (LAT.size, LON.size)).copy()
    v[LAT == 0.5, LON == 179.5] = np.nan
    cube = xr.Dataset({"v": (("lat", "lon"), v)}, coords={"lat": LAT, "lon": LON})
    out = collocate(pd.DataFrame({"lat": [0.5], "lon": [179.9]}), cube, max_distance_km=100)
    assert out["collocation_flag"].iloc[0] == "nearest_valid"
    assert out["v"].iloc[0] == 0.0  # the column at 179.5 W, 67 km away across 180
    assert out["collocation_distance_km"].iloc[0] == pytest.approx(0.6 * 111.195 * np.cos(np.deg2rad(0.5)), rel=1e-3)


def test_nearest_valid_uses_the_observation_time_layer():
    cube = _time_cube()
    cube["v"][2, 2, 2] = np.nan  # (time 3, lat 0, lon 0)
    obs = pd.DataFrame({"lat": [0.0, 0.0], "lon": [0.0, 0.0],
                        "datetime": pd.to_datetime(["2010-03-12", "2010-04-12"], utc=True)})
    out = collocate(obs, cube, max_distance_km=150)
    assert out["collocation_flag"].tolist() == ["nearest_valid", "ok"]
    assert out["v"].tolist() == [2.0, 3.0]
