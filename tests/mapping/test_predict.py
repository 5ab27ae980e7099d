"""Lazy CF Zarr prediction: equality with in-memory gridding, region resume, attributes, totals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.mapping import predict as P
from aqqua_geo.mapping.model import BRTEnsemble

R = 6_371_008.8


def _cube(nlat: int = 36, nlon: int = 72, ntime: int | None = None) -> xr.Dataset:
    lat = np.linspace(-87.5, 87.5, nlat)
    lon = np.linspace(-177.5, 177.5, nlon)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    temp = 28 * np.cos(np.radians(la)) - 2 + 2 * np.sin(np.radians(2 * lo))
    depth = 4000 + 1000 * np.sin(np.radians(lo))
    temp[(la > 20) & (la < 50) & (lo > 0) & (lo < 40)] = np.nan  # "land"
    ds = xr.Dataset({"temperature": (("lat", "lon"), temp), "bathymetry": (("lat", "lon"), depth)},
                    coords={"lat": lat, "lon": lon})
    if ntime:
        t = xr.DataArray(np.arange(ntime, dtype=float), dims="time", coords={"time": np.arange(ntime)})
        ds["temperature"] = ds["temperature"] + t  # warming each step; bathymetry stays static
    return ds


@pytest.fixture(scope="module")
def model() -> BRTEnsemble:
    rng = np.random.default_rng(0)
    n = 300
    X = pd.DataFrame({"lon": rng.uniform(-180, 180, n), "lat": rng.uniform(-80, 80, n),
                      "temperature": rng.uniform(-2, 30, n), "bathymetry": rng.uniform(3000, 5000, n)})
    y = np.exp(0.1 * X["temperature"]) + rng.normal(0, 0.2, n).clip(-0.5)
    return BRTEnsemble(params={"eta": 0.3, "max_depth": 3}, n_estimators=50, n_members=3,
                       nthread=1).fit(X, y.clip(0))


# ---- totals ------------------------------------------------------------------------------------
def test_total_pg_c_uniform_globe_hand_computed():
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(-179.5, 180, 1.0)
    ones = xr.DataArray(np.ones((180, 360)), coords={"lat": lat, "lon": lon}, dims=("lat", "lon"))
    # 1 mg C m-3 over the whole sphere, 200 m thick: 4πR² · 200 mg = 1.0203e17 mg = 0.10203 Pg
    assert P.total_pg_c(ones, 200.0) == pytest.approx(4 * np.pi * R**2 * 200 / 1e18, rel=1e-9)
    # one cell 0–1°N at 5 mg C m-3: R²·(π/180)·(sin 1° − sin 0°) m² · 200 m · 5 mg
    one = ones * np.nan
    one[90, 0] = 5.0  # lat centre 0.5
    cell = R**2 * np.radians(1) * np.sin(np.radians(1.0))
    assert P.total_pg_c(one, 200.0) == pytest.approx(cell * 200 * 5 / 1e18, rel=1e-9)
    with pytest.raises(ValueError, match="thickness_m"):
        P.total_pg_c(ones, 0)


# ---- lazy prediction ---------------------------------------------------------------------------
def test_predict_lazy_matches_grid_and_stays_lazy(model):
    cube = _cube()
    lazy = P.predict_lazy({"b": model}, cube, chunks={"lat": 12, "lon": 24})
    assert lazy["b_mean"].chunks is not None  # nothing computed yet
    ref = model.grid(cube, "b")
    np.testing.assert_allclose(lazy["b_mean"].values, ref["b_mean"].values, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(lazy["b_std"].values, ref["b_std"].values, rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    assert np.isnan(lazy["b_mean"].sel(lat=37.5, lon=17.5, method="nearest"))  # masked land


def test_missing_feature_is_named(model):
    with pytest.raises(KeyError, match="bathymetry"):
        P.predict_lazy(model, _cube().drop_vars("bathymetry"))


def test_zarr_cf_attributes_and_provenance(model, tmp_path):
    out = P.predict_to_zarr({"copepoda": P.Product(model, "biomass", "Copepoda")}, _cube(),
                            tmp_path / "m.zarr", chunks={"lat": 12, "lon": 36},
                            netcdf_path=tmp_path / "m.nc", progress=False, config={"a": 1})
    ds = P.open_product(out)
    assert ds.attrs["Conventions"].startswith("CF-1.10") and ds.attrs["aqqua_complete"] == "true"
    assert "aqqua map predict" in ds.attrs["history"] and len(ds.attrs["aqqua_config_hash"]) == 40
    assert '"n_members": 3' in ds.attrs["aqqua_models"] and "r2" in ds.attrs["aqqua_cv_scores"]
    assert ds["lat"].attrs["units"] == "degrees_north" and ds["lat"].attrs["axis"] == "Y"
    assert ds["lon"].attrs["bounds"] == "lon_bnds" and ds["lon_bnds"].shape == (72, 2)
    m = ds["copepoda_mean"].attrs
    assert m["units"] == "mg m-3" and m["long_name"] == "Copepoda carbon biomass"
    assert "standard_name" not in ds["copepoda_std"].attrs
    assert "standard deviation" in ds["copepoda_std"].attrs["long_name"]
    nc = xr.open_dataset(tmp_path / "m.nc")
    np.testing.assert_array_equal(nc["copepoda_mean"].values, ds["copepoda_mean"].values)
    assert not (tmp_path / "m.zarr.regions").exists()  # markers removed once complete


def test_resume_after_partial_run_equals_uninterrupted(model, tmp_path):
    cube = _cube(ntime=3)
    kw = {"chunks": {"lat": 12, "lon": 72}, "progress": False}
    full = P.open_product(P.predict_to_zarr(model, cube, tmp_path / "full.zarr", **kw)).load()
    assert full.sizes == {"time": 3, "lat": 36, "lon": 72, "bnds": 2}

    part = tmp_path / "part.zarr"
    P.predict_to_zarr(model, cube, part, max_regions=4, **kw)  # 9 regions: stop after 4
    first = P.open_product(part)
    assert first.attrs["aqqua_complete"] == "false"
    assert len(list((tmp_path / "part.zarr.regions").iterdir())) == 4
    assert np.isnan(first["prediction_mean"].isel(time=2).values).all()  # not written yet
    P.predict_to_zarr(model, cube, part, **kw)  # resume
    xr.testing.assert_identical(P.open_product(part).load().drop_attrs(),
                                full.drop_attrs())


def test_resume_after_crash_midway(model, tmp_path, monkeypatch):
    cube = _cube()
    kw = {"chunks": {"lat": 9, "lon": 72}, "progress": False}
    ref = P.open_product(P.predict_to_zarr(model, cube, tmp_path / "ref.zarr", **kw)).load()
    calls = {"n": 0}
    real = xr.Dataset.to_zarr

    def flaky(self, *a, **k):  # the 3rd region write dies like a killed job
        if k.get("region") is not None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("killed")
        return real(self, *a, **k)

    monkeypatch.setattr(xr.Dataset, "to_zarr", flaky)
    with pytest.raises(KeyboardInterrupt):
        P.predict_to_zarr(model, cube, tmp_path / "x.zarr", **kw)
    assert len(list((tmp_path / "x.zarr.regions").iterdir())) == 2
    monkeypatch.setattr(xr.Dataset, "to_zarr", real)
    P.predict_to_zarr(model, cube, tmp_path / "x.zarr", **kw)
    xr.testing.assert_identical(P.open_product(tmp_path / "x.zarr").load().drop_attrs(),
                                ref.drop_attrs())


def test_resume_refuses_other_config_and_can_overwrite(model, tmp_path):
    cube = _cube()
    P.predict_to_zarr(model, cube, tmp_path / "m.zarr", progress=False, config={"v": 1},
                      max_regions=1, chunks={"lat": 12})
    with pytest.raises(ValueError, match="another model/config"):
        P.predict_to_zarr(model, cube, tmp_path / "m.zarr", progress=False, config={"v": 2})
    with pytest.raises(FileExistsError, match="resume=True or overwrite=True"):
        P.predict_to_zarr(model, cube, tmp_path / "m.zarr", progress=False, resume=False)
    P.predict_to_zarr(model, cube, tmp_path / "m.zarr", progress=False, config={"v": 2},
                      overwrite=True)
    assert P.open_product(tmp_path / "m.zarr").attrs["aqqua_complete"] == "true"


def test_netcdf_refuses_incomplete_store(model, tmp_path):
    P.predict_to_zarr(model, _cube(), tmp_path / "m.zarr", progress=False, max_regions=1,
                      chunks={"lat": 12})
    with pytest.raises(ValueError, match="incomplete"):
        P.write_netcdf(tmp_path / "m.zarr", tmp_path / "m.nc")
    assert not (tmp_path / "m.nc").exists() and not (tmp_path / "m.nc.part").exists()


def test_predict_to_zarr_on_a_distributed_cluster_equals_threads(model, tmp_path):
    from aqqua_geo.mapping.dask_utils import dask_session

    cube = _cube()
    kw = {"chunks": {"lat": 12, "lon": 36}, "progress": False}
    with dask_session("threads", progress=False):
        ref = P.open_product(P.predict_to_zarr(model, cube, tmp_path / "t.zarr", **kw)).load()
    with dask_session("local", processes=False, n_workers=1, threads_per_worker=2, progress=False) as client:
        assert client is not None
        out = P.predict_to_zarr(model, cube, tmp_path / "d.zarr", **kw)
    xr.testing.assert_identical(P.open_product(out).load().drop_attrs(), ref.drop_attrs())


@settings(max_examples=20, deadline=None)
@given(st.floats(0.1, 1000.0), st.floats(1.0, 500.0))
def test_total_pg_c_is_linear_in_concentration_and_thickness(scale, thickness):
    lat = np.arange(-89.5, 90, 1.0)
    lon = np.arange(-179.5, 180, 1.0)
    conc = xr.DataArray(np.cos(np.radians(lat))[:, None] * np.ones(360), coords={"lat": lat, "lon": lon},
                        dims=("lat", "lon"))
    base = P.total_pg_c(conc, 1.0)
    assert P.total_pg_c(conc * scale, thickness) == pytest.approx(base * scale * thickness, rel=1e-9)


def test_dask_session_connects_to_an_existing_scheduler_address():
    from distributed import LocalCluster

    from aqqua_geo.mapping.dask_utils import dask_session

    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as cl:
        with dask_session(cl.scheduler_address, progress=False) as client:
            assert client.scheduler.address == cl.scheduler_address
            assert client.submit(sum, [1, 2]).result() == 3


def test_kill_right_after_the_store_appears_is_resumable(model, tmp_path, monkeypatch):
    """The template is written under a temporary name and renamed: a job killed while writing
    it leaves no half-written store, and a kill just after the rename resumes to the same maps."""
    cube = _cube()
    kw = {"chunks": {"lat": 12, "lon": 72}, "progress": False}
    ref = P.open_product(P.predict_to_zarr(model, cube, tmp_path / "ref.zarr", **kw)).load()
    real_replace = P._rename

    def die_before_rename(src, dst):  # killed while the template is being written
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(P, "_rename", die_before_rename)
    with pytest.raises(KeyboardInterrupt):
        P.predict_to_zarr(model, cube, tmp_path / "m.zarr", **kw)
    assert not (tmp_path / "m.zarr").exists() and list(tmp_path.glob("m.zarr.template-*"))

    def die_after_rename(src, dst):  # killed right after maps.zarr appears
        real_replace(src, dst)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(P, "_rename", die_after_rename)
    with pytest.raises(KeyboardInterrupt):
        P.predict_to_zarr(model, cube, tmp_path / "m.zarr", **kw)
    assert (tmp_path / "m.zarr").exists() and P.open_product(tmp_path / "m.zarr").attrs["aqqua_complete"] == "false"
    monkeypatch.setattr(P, "_rename", real_replace)
    P.predict_to_zarr(model, cube, tmp_path / "m.zarr", **kw)
    assert not list(tmp_path.glob("m.zarr.template-*"))
    xr.testing.assert_identical(P.open_product(tmp_path / "m.zarr").load().drop_attrs(), ref.drop_attrs())


def test_extrapolation_flag_marks_cells_outside_the_training_range(model):
    ds = P.predict_lazy({"p": P.Product(model, "generic", "p")}, _cube()).compute()
    flag = ds["p_extrapolated"].values
    t = _cube()["temperature"].values
    lo, hi = model.training_summary_["feature_min"][0], model.training_summary_["feature_max"][0]
    outside_t = (t < lo) | (t > hi)
    assert set(np.unique(flag)) <= {-1, 0, 1}
    assert (flag[np.isnan(t)] == -1).all() and (flag[outside_t] == 1).all()
    assert flag[np.isfinite(t) & ~outside_t].min() >= 0
