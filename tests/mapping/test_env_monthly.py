"""Monthly climatology predictors (ocean atlas, COADS) and the CF climatological time axis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.mapping import env_monthly as em

Z = np.array([0, 10, 20, 30, 50, 75, 100, 125, 150, 200.0])


def test_mld_threshold_by_hand():
    # mixed to 40 m: 20 degC, then 0.1 degC per m colder
    t = np.where(Z <= 40, 20.0, 20.0 - 0.1 * (Z - 40))
    # crosses 19.8 between 30 m (20.0) and 50 m (19.0): 30 + 0.2 / 1.0 * 20 = 34 m
    assert em.mld_threshold(t[:, None], Z)[0] == pytest.approx(34.0)
    # never crosses: the deepest valid level
    assert em.mld_threshold(np.full((Z.size, 1), 5.0), Z)[0] == 200.0
    col = np.full(Z.size, 5.0)
    col[-3:] = np.nan
    assert em.mld_threshold(col[:, None], Z)[0] == 100.0
    # no 10 m value: NaN
    col = t.copy()
    col[1] = np.nan
    assert np.isnan(em.mld_threshold(col[:, None], Z)[0])
    with pytest.raises(ValueError, match="reference depth"):
        em.mld_threshold(t[:, None], Z, reference_m=15.0)


@settings(max_examples=30, deadline=None)
@given(st.floats(12, 180), st.floats(0.01, 0.5))
def test_mld_threshold_recovers_a_linear_thermocline(mld_true, grad):
    z = np.arange(0, 1001, 5.0)
    t = np.where(z <= mld_true, 15.0, 15.0 - grad * (z - mld_true))
    got = em.mld_threshold(t[:, None], z)[0]
    assert got == pytest.approx(mld_true + 0.2 / grad, abs=5.0 + 1e-9) or got == 1000.0


def test_monthly_cube_on_the_bundled_grid(shared_data):
    ds = em.monthly_cube(shared_data)
    assert ds.sizes["month"] == 12 and ds.sizes["lat"] == 180 and ds.sizes["lon"] == 360
    ocean = np.isfinite(ds["temperature"].values)
    for v in em.MONTHLY_VARIABLES:
        assert ds[v].dims == ("month", "lat", "lon")
        # every ocean cell has a value, land none
        assert np.isfinite(ds[v].values[:, ocean]).all() and not np.isfinite(ds[v].values[:, ~ocean]).any()
        assert ds[v].attrs["cell_methods"] == em.CLIMATOLOGY_CELL_METHODS
    # the annual mean of the monthly SST tracks the bundled 0-200 m temperature
    r = np.corrcoef(ds["sst_monthly"].mean("month").values[ocean], ds["temperature"].values[ocean])[0, 1]
    assert r > 0.95
    bats = ds.sel(lat=31.5, lon=-64.5)
    assert float(bats["mld_monthly"].sel(month=2)) > 3 * float(bats["mld_monthly"].sel(month=8))  # winter mixing
    assert float(bats["sst_monthly"].sel(month=8)) > float(bats["sst_monthly"].sel(month=2)) + 4
    assert (ds["mld_max"].values[ocean] >= ds["mld_monthly"].values[:, ocean].max(axis=0) - 1e-3).all()
    with pytest.raises(FileNotFoundError, match="env_monthly"):
        em.open_monthly_env(shared_data / "poc_flux_obs")


def test_climatology_time_axis():
    ds = xr.Dataset({"x": (("month", "lat"), np.ones((12, 2)))},
                    coords={"month": np.arange(1, 13), "lat": [0.5, 1.5]})
    out = em.climatology_time_axis(ds, 1990, 2019)
    assert "month" not in out.dims and out.sizes["time"] == 12
    assert out["time"].attrs["climatology"] == "climatology_bnds"
    t = pd.DatetimeIndex(out["time"].values)
    assert t[0] == pd.Timestamp("1990-01-16 12:00") and t[1] == pd.Timestamp("1990-02-15")
    b = out["climatology_bnds"].values
    assert pd.Timestamp(b[0, 0]) == pd.Timestamp("1990-01-01") and pd.Timestamp(b[0, 1]) == pd.Timestamp("2019-02-01")
    assert pd.Timestamp(b[11, 1]) == pd.Timestamp("2020-01-01")
    with pytest.raises(ValueError, match="month"):
        em.climatology_time_axis(ds.isel(month=0), 1990, 2019)
    with pytest.raises(ValueError, match="last_year"):
        em.climatology_time_axis(ds, 2000, 1990)
