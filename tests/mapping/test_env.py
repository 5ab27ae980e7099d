"""Environmental cubes: normalisation of real NetCDFs, intake catalogs, Copernicus (mocked + offline)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.mapping import env


def _assert_normalised(ds: xr.Dataset) -> None:
    lon, lat = ds["lon"].values, ds["lat"].values
    assert lon.min() >= -180 and lon.max() < 180 and np.all(np.diff(lon) > 0)
    assert np.all(np.diff(lat) > 0)
    if "depth" in ds.dims:
        assert ds["depth"].attrs["positive"] == "down" and np.all(np.diff(ds["depth"].values) > 0)


@pytest.mark.filterwarnings("ignore:Ambiguous reference date")  # the file's own time units
def test_hadisst_descending_lat_and_aliases(shared_data):
    raw = xr.open_dataset(shared_data / "env_grids" / "HadISST1_SST_update.nc")
    ds = env.open_env(shared_data / "env_grids" / "HadISST1_SST_update.nc")
    _assert_normalised(ds)
    t = ds["temperature"]
    assert t.attrs["source_name"] == "sst" and t.attrs["units"] == "degC"
    assert t.attrs["standard_name"] == "sea_surface_temperature"  # the more precise source name is kept
    assert float(t.sel(lat=-0.5, lon=-150.5).isel(time=0)) == float(raw["sst"].sel(lat=-0.5, lon=-150.5).isel(time=0))
    assert "time_bnds" not in ds and "aqqua_geo.mapping.env" in ds.attrs["history"]


def test_ostia_0_360_kelvin(shared_data):
    path = shared_data / "env_grids" / "ostia_monthly.nc"
    raw = xr.open_dataset(path)
    ds = env.open_env(path)
    _assert_normalised(ds)
    assert ds.sizes["lon"] == raw.sizes["longitude"]
    t = ds["temperature"]
    assert t.attrs["units"] == "degC" and t.attrs["units_original"] == "K"
    src = raw["surface_temperature"].isel(time=3, latitude=9)
    lon_src = float(raw["longitude"].values[300])  # > 180: ends up west of Greenwich
    got = float(t.isel(time=3, lat=9).sel(lon=lon_src - 360.0))
    assert got == pytest.approx(float(src.isel(longitude=300)) - 273.15, abs=1e-4)
    assert t.chunks is not None  # lazy


def test_atlantic_profiles_unordered_lon_and_depth(shared_data):
    path = shared_data / "env_grids" / "atlantic_profiles.nc"
    raw = xr.open_dataset(path)
    ds = env.open_env(path, variables=["sea_water_potential_temperature", "so"])
    _assert_normalised(ds)
    assert list(ds.data_vars) == ["temperature", "salinity"]
    assert ds["lon"].values.tolist() == [-34.5, -29.5, -24.5, -19.5, -14.5, -9.5, -4.5, 0.5]
    got = float(ds["temperature"].sel(lon=-34.5, depth=5.0).isel(lat=0))
    assert got == pytest.approx(float(raw["theta"].sel(lon=325.5, depth=5.0).isel(lat=0)) - 273.15, abs=1e-4)
    assert ds["salinity"].attrs["units"] == "1"


def _synthetic(depth_positive_up: bool = False) -> xr.Dataset:
    time = pd.date_range("2001-01-01", periods=24, freq="MS")
    depth = np.array([-0.0, -10.0, -50.0]) if depth_positive_up else np.array([0.0, 10.0, 50.0])
    lat = np.array([10.0, 0.0, -10.0])
    lon = np.array([0.0, 90.0, 180.0, 270.0])
    v = np.arange(24.0)[:, None, None, None] + np.zeros((24, 3, 3, 4))
    ds = xr.Dataset({"thetao": (("time", "depth", "latitude", "longitude"), v, {"units": "degrees_C"})},
                    coords={"time": time, "depth": depth, "latitude": lat, "longitude": lon})
    if depth_positive_up:
        ds["depth"].attrs["positive"] = "up"
    return ds


def test_depth_positive_up_is_flipped_and_climatology():
    ds = env.normalise(_synthetic(depth_positive_up=True))
    assert ds["depth"].values.tolist() == [0.0, 10.0, 50.0]
    assert ds["lon"].values.tolist() == [-180.0, -90.0, 0.0, 90.0]
    assert ds["temperature"].attrs["standard_name"] == "sea_water_temperature"
    clim = env.open_env(_synthetic(), climatology=True)
    assert clim["month"].values.tolist() == list(range(1, 13)) and "time" not in clim.dims
    assert float(clim["temperature"].sel(month=3).isel(depth=0, lat=0, lon=0)) == pytest.approx((2 + 14) / 2)
    with pytest.raises(ValueError, match="time dimension"):
        env.monthly_climatology(clim)


def test_variable_selection_and_errors(tmp_path):
    with pytest.raises(KeyError, match=r"\['chl'\] not in cube; it has \['temperature'\]"):
        env.open_env(_synthetic(), variables=["chl"])
    with pytest.raises(FileNotFoundError, match="not found"):
        env.open_env(tmp_path / "nope.nc")
    curvi = xr.Dataset({"t": (("y", "x"), np.zeros((2, 2)))},
                       coords={"lat": (("y", "x"), np.zeros((2, 2))), "lon": (("y", "x"), np.zeros((2, 2)))})
    with pytest.raises(ValueError, match="curvilinear"):
        env.normalise(curvi)


def test_zarr_path_and_intake_catalog_entry(tmp_path):
    store = tmp_path / "cube.zarr"
    _synthetic().to_zarr(store, consolidated=False)
    ds = env.open_env(store)
    assert ds["temperature"].chunks is not None
    cat = tmp_path / "cat.yaml"
    cat.write_text(
        "version: 2\nmetadata: {}\nuser_parameters: {}\naliases: {}\n"
        "data:\n  cube_data:\n    datatype: intake.readers.datatypes:Zarr\n"
        "    kwargs: {url: \"{CATALOG_DIR}/cube.zarr\"}\n    metadata: {}\n    user_parameters: {}\n"
        "entries:\n  cube:\n    reader: intake.readers.readers:XArrayDatasetReader\n"
        "    kwargs: {args: [\"{data(cube_data)}\"], engine: zarr, chunks: {}, consolidated: false}\n"
        "    metadata: {}\n    output_instance: xarray:Dataset\n    user_parameters: {}\n"
    )
    via = env.open_env(f"intake:{cat}#cube", variables=["temperature"])
    xr.testing.assert_allclose(via["temperature"], ds["temperature"])
    with pytest.raises(KeyError, match="entry 'nope' not in catalog"):
        env.open_env(f"intake:{cat}#nope")
    with pytest.raises(ValueError, match="intake:<catalog>#<entry>"):
        env.open_env(f"intake:{cat}")


def test_package_catalog_parses_and_local_entries_open():
    cat = env.load_catalog()
    assert {"bundled_env", "glorys_monthly", "oc_chl_monthly", "bgc_monthly"} <= set(cat.entries)
    assert cat.entries["glorys_monthly"].kwargs["dataset_id"] == "cmems_mod_glo_phy_my_0.083deg_P1M-m"
    assert cat.entries["bgc_monthly"].kwargs["dataset_id"] == "cmems_mod_glo_bgc_my_0.25deg_P1M-m"
    assert cat.entries["oc_chl_monthly"].kwargs["dataset_id"] == "cmems_obs-oc_glo_bgc-plankton_my_l4-multi-4km_P1M"
    for name in cat.entries:  # every entry maps its dataset's names onto canonical names
        for src, canon in cat.entries[name].metadata["variables"].items():
            assert canon in env.VARIABLES, (name, src)
    local = [n for n in cat.entries if cat.entries[n].metadata.get("provider") == "bundled"]
    for name in local:
        ds = env.open_env(f"intake:#{name}")
        _assert_normalised(ds)
    bundled = env.open_bundled_env()
    assert set(bundled.data_vars) == {"temperature", "salinity", "silicate", "phosphate", "nitrate",
                                      "oxygen", "chla", "bathymetry", "dist_coast"}
    assert bundled["nitrate"].attrs["standard_name"] == "moles_of_nitrate_per_unit_mass_in_sea_water"
    _assert_normalised(bundled)


def _fake_glorys() -> xr.Dataset:
    lat = np.array([-1.0, 0.0, 1.0])
    lon = np.array([-1.0, 0.0, 1.0])
    da = np.ones((1, 2, 3, 3))
    return xr.Dataset(
        {"thetao": (("time", "depth", "latitude", "longitude"), 15 * da, {"standard_name": "sea_water_potential_temperature", "units": "degrees_C"}),
         "so": (("time", "depth", "latitude", "longitude"), 35 * da, {"units": "1e-3"}),
         "mlotst": (("time", "latitude", "longitude"), 20 * da[:, 0], {"units": "m"})},
        coords={"time": pd.to_datetime(["2019-07-16"]), "depth": [0.5, 10.0], "latitude": lat, "longitude": lon})


def test_copernicus_mocked(monkeypatch):
    import copernicusmarine

    calls = {}

    def fake_open_dataset(**kwargs):
        calls.update(kwargs)
        import os

        calls["retries"] = os.environ.get("COPERNICUSMARINE_HTTPS_RETRIES")
        return _fake_glorys()

    monkeypatch.setattr(env, "_check_reachable", lambda *a, **k: None)
    monkeypatch.setattr(copernicusmarine, "open_dataset", fake_open_dataset)
    ds = env.open_env("copernicus:cmems_mod_glo_phy_my_0.083deg_P1M-m", minimum_latitude=-1)
    assert calls["variables"] == ["thetao", "so", "mlotst"] and calls["minimum_latitude"] == -1
    assert calls["retries"] == "0"
    assert set(ds.data_vars) == {"temperature", "salinity", "mld"}
    assert ds["mld"].attrs["standard_name"] == "ocean_mixed_layer_thickness_defined_by_sigma_theta"
    # canonical names are translated back to the dataset's names via the catalog
    env.open_copernicus("cmems_mod_glo_phy_my_0.083deg_P1M-m", variables=["temperature"])
    assert calls["variables"] == ["thetao"]
    via_intake = env.open_env("intake:#glorys_monthly")
    assert set(via_intake.data_vars) == {"temperature", "salinity", "mld"}


def test_copernicus_none_and_errors_are_explained(monkeypatch):
    import copernicusmarine

    monkeypatch.setattr(env, "_check_reachable", lambda *a, **k: None)
    monkeypatch.setattr(copernicusmarine, "open_dataset", lambda **k: None)
    with pytest.raises(env.EnvSourceError, match="no credentials found.*copernicusmarine login"):
        env.open_env("copernicus:cmems_mod_glo_bgc_my_0.25deg_P1M-m")

    def boom(**k):
        raise RuntimeError("")

    monkeypatch.setattr(copernicusmarine, "open_dataset", boom)
    with pytest.raises(env.EnvSourceError, match="'some_id' could not be opened: RuntimeError: no message"):
        env.open_copernicus("some_id", variables=["x"])


def test_copernicus_real_call_offline_fails_fast():
    t0 = time.monotonic()
    with pytest.raises(env.EnvSourceError, match="Copernicus Marine"):
        env.open_env("copernicus:cmems_mod_glo_phy_my_0.083deg_P1M-m")
    assert time.monotonic() - t0 < 10


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.floats(-360, 360), st.booleans())
def test_longitude_normalisation_property(step_deg, offset, lat_descending):
    """Any regular global grid (any origin, 0..360 or not) ends up in [-180, 180) ascending with
    every value still at its own longitude (mod 360)."""
    lon = offset + np.arange(0, 360, step_deg, dtype=float)
    lat = np.array([5.0, -5.0]) if lat_descending else np.array([-5.0, 5.0])
    vals = np.cos(np.deg2rad(lon))[None, :] * np.where(lat == 5.0, 1.0, 2.0)[:, None]
    ds = env.normalise(xr.Dataset({"v": (("lat", "lon"), vals)}, coords={"lat": lat, "lon": lon}))
    _assert_normalised(ds)
    assert ds.sizes["lon"] == lon.size
    np.testing.assert_allclose(ds["v"].sel(lat=5.0).values, np.cos(np.deg2rad(ds["lon"].values)), atol=1e-9)
    np.testing.assert_allclose(ds["v"].sel(lat=-5.0).values, 2 * np.cos(np.deg2rad(ds["lon"].values)), atol=1e-9)
