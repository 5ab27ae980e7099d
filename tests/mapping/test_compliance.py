"""CF-1.10 and ACDD-1.3 compliance (IOOS compliance-checker) of the products the demo config
writes through ``aqqua map predict``: the NetCDF written at predict time, and the Zarr store read
back with xarray and written out again.

Gate: no failed CF check at high priority ("Errors") or medium priority except the one
documented below, and no failed ACDD highly-recommended check except ``standard_name`` on
variables for which the CF table has no name (inventing one would mislead; see ``cf.PRODUCTS``).
"""

from __future__ import annotations

import json

# compliance-checker is in the dev extra the test command installs: a missing one fails, not skips.
import compliance_checker  # noqa: F401
import pytest
from typer.testing import CliRunner

from aqqua_geo.cli import app
from aqqua_geo.mapping import cf
from aqqua_geo.mapping.predict import open_product, write_netcdf
from aqqua_geo.mapping.workflow import fit_from_config, load_config

#: CF §7.1 asks a scalar coordinate's bounds to have two dimensions; CF itself gives scalar
#: coordinate bounds one (nv) dimension (§7.1, "a boundary variable of a scalar coordinate
#: variable has one dimension"): the checker's warning contradicts the text it cites.
CF_MEDIUM_ALLOWED = ("should have at least two dimensions to enclose the base case",)
TINY = ["model.n_members=2", "model.n_estimators=25", "predict.netcdf=true"]


@pytest.fixture(scope="module")
def demo_products(tmp_path_factory, no_network_module):
    out = tmp_path_factory.mktemp("cf_demo")
    sets = [f"out={out}", *TINY]
    cfg = load_config("demo", sets)
    for p in cfg["products"]:  # product-level n_estimators overrides: tiny too
        if p["model"].get("n_estimators"):
            p["model"]["n_estimators"] = 25
    fit_from_config(cfg, progress=False)
    args = [a for s in sets for a in ("--set", s)]
    r = CliRunner().invoke(app, ["map", "predict", "-c", "demo", *args])
    assert r.exit_code == 0, r.output
    via_xarray = write_netcdf(out / "maps.zarr", out / "zarr_via_xarray.nc")
    return {"netcdf": out / "maps.nc", "zarr": via_xarray, "names": [p["name"] for p in cfg["products"]],
            "kinds": {p["name"]: p["kind"] for p in cfg["products"]}}


@pytest.fixture(scope="module")
def no_network_module():
    """Fail any socket connection: the checker must use its packaged standard-name table."""
    import socket

    real = socket.socket.connect

    def refuse(self, *a, **k):
        raise OSError("network disabled in the compliance test")

    socket.socket.connect = refuse
    yield
    socket.socket.connect = real


def _check(path, tmp_path) -> dict:
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite().load_all_available_checkers()
    report = tmp_path / f"{path.stem}.json"
    ComplianceChecker.run_checker(str(path), ["cf:1.10", "acdd"], 0, "normal",
                                  output_filename=str(report), output_format="json")
    return json.loads(report.read_text())


def _failed(section: list[dict]) -> list[tuple[str, list[str]]]:
    return [(r["name"], r["msgs"]) for r in section if r["value"][0] < r["value"][1]]


@pytest.mark.parametrize("which", ["netcdf", "zarr"])
def test_products_pass_cf_and_acdd(demo_products, which, tmp_path):
    res = _check(demo_products[which], tmp_path)
    cf_res = res["cf:1.10"]
    assert _failed(cf_res["high_priorities"]) == []
    medium = [(n, [m for m in msgs if not any(a in m for a in CF_MEDIUM_ALLOWED)])
              for n, msgs in _failed(cf_res["medium_priorities"])]
    assert [x for x in medium if x[1]] == []
    no_name = {f"{n}_{s}" for n, k in demo_products["kinds"].items() for s in ("mean", "std")
               if s == "std" or "standard_name" not in cf.PRODUCTS[k]}
    for name, msgs in _failed(res["acdd"]["high_priorities"]):
        var = name.split('"')[1] if '"' in name else name
        assert msgs == ["standard_name"] and var in no_name, (name, msgs)
    # the products that have a CF name carry it
    assert "zooplankton_carbon_mean" not in no_name


def test_zarr_store_is_consolidated_and_has_coverage(demo_products):
    ds = open_product(demo_products["zarr"].with_name("maps.zarr"))
    import zarr

    assert zarr.open_consolidated(str(demo_products["zarr"].with_name("maps.zarr"))) is not None
    for key in ("summary", "keywords", "license", "institution", "geospatial_lat_min",
                "geospatial_vertical_max", "time_coverage_start", "standard_name_vocabulary"):
        assert ds.attrs.get(key) not in (None, ""), key
    assert "GPL-3.0" in ds.attrs["license"]
    assert ds["poc_flux_100m_mean"].attrs["units"] == "mg m-2 d-1"
    assert float(ds["depth_1000m"]) == 1000.0 and ds["depth_0_200m"].attrs["bounds"] == "depth_0_200m_bnds"


@pytest.fixture(scope="module")
def monthly_products(tmp_path_factory, no_network_module, shared_data):
    """The monthly-climatology export product (poc_flux_monthly recipe, 100 m only, tiny)."""
    from pathlib import Path

    out = tmp_path_factory.mktemp("cf_monthly")
    recipe = Path(__file__).resolve().parents[2] / "mapping" / "configs" / "poc_flux_monthly.yaml"
    sets = [f"out={out}", f"env.source=env_monthly:{shared_data}", *TINY]
    cfg = load_config(recipe, sets)
    cfg["products"] = cfg["products"][:1]
    fit_from_config(cfg, progress=False)
    from aqqua_geo.mapping.workflow import predict_from_config

    predict_from_config(cfg, progress=False)
    return {"netcdf": out / "maps.nc", "zarr": write_netcdf(out / "maps.zarr", out / "zarr_via_xarray.nc"),
            "out": out}


@pytest.mark.parametrize("which", ["netcdf", "zarr"])
def test_monthly_climatology_product_passes_cf_and_acdd(monthly_products, which, tmp_path):
    res = _check(monthly_products[which], tmp_path)
    cf_res = res["cf:1.10"]
    assert _failed(cf_res["high_priorities"]) == []
    medium = [(n, [m for m in msgs if not any(a in m for a in CF_MEDIUM_ALLOWED)])
              for n, msgs in _failed(cf_res["medium_priorities"])]
    assert [x for x in medium if x[1]] == []
    for name, msgs in _failed(res["acdd"]["high_priorities"]):
        assert msgs == ["standard_name"] and "poc_flux_100m" in name, (name, msgs)


def test_monthly_product_has_a_climatological_time_axis(monthly_products):
    import numpy as np
    import pandas as pd
    import xarray as xr

    ds = xr.open_dataset(monthly_products["netcdf"])
    assert ds.sizes["time"] == 12 and "month" not in ds.dims
    assert ds["time"].attrs["climatology"] == "climatology_bnds"
    b = pd.DatetimeIndex(ds["climatology_bnds"].values[:, 0])
    assert b[0] == pd.Timestamp("1976-01-01") and b[-1] == pd.Timestamp("1976-12-01")
    assert pd.Timestamp(ds["climatology_bnds"].values[-1, 1]) == pd.Timestamp("2023-01-01")
    m = ds["poc_flux_100m_mean"]
    assert m.dims == ("time", "lat", "lon") and "time: mean within years time: mean over years" in m.attrs["cell_methods"]
    assert "Monthly climatology" in ds.attrs["comment"]
    # the seasonal cycle is in the map: months differ
    assert float(np.nanmean(np.nanstd(m.values, axis=0))) > 0
    tot = pd.read_csv(monthly_products["out"] / "totals.csv")
    assert tot["product"].tolist() == ["poc_flux_100m"] and tot["total"].iloc[0] > 0
