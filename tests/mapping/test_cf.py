"""CF attribute tables and coordinate helpers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from aqqua_geo.mapping import cf


def _cf_standard_names() -> set[str]:
    """The standard-name table compliance-checker ships (the version cf.STANDARD_NAME_VOCABULARY names)."""
    import re
    from importlib.resources import files

    xml = (files("compliance_checker") / "data" / "cf-standard-name-table.xml").read_text()
    version = re.search(r"<version_number>(\d+)</version_number>", xml).group(1)
    assert cf.STANDARD_NAME_VOCABULARY.endswith(f"v{version}")
    return set(re.findall(r'<entry id="([^"]+)"', xml)) | set(re.findall(r'<alias id="([^"]+)"', xml))


def test_every_claimed_standard_name_is_in_the_cf_table():
    import compliance_checker  # noqa: F401 - the dev extra installs it: fail, never skip
    names = _cf_standard_names()
    claimed = {a["standard_name"] for a in (*cf.ENV_VARIABLES.values(), *cf.PRODUCTS.values())
               if "standard_name" in a}
    assert "mass_concentration_of_zooplankton_expressed_as_carbon_in_sea_water" in claimed
    assert claimed <= names, claimed - names
    for table in (cf.ENV_VARIABLES, cf.PRODUCTS):
        for name, attrs in table.items():
            assert attrs.get("units") and attrs.get("long_name"), name


def test_product_attrs_mean_and_std():
    mean = cf.product_attrs("poc", statistic="mean")
    assert "standard_name" not in mean  # CF has the mole concentration of POC only
    zc = cf.product_attrs("zooplankton_carbon", statistic="mean", n_members=8)
    assert zc["standard_name"] == "mass_concentration_of_zooplankton_expressed_as_carbon_in_sea_water"
    assert zc["comment"].startswith("mean over the 8 members")
    assert mean["units"] == "mg m-3" and mean["cell_methods"] == "area: mean where sea"
    assert "realization" not in mean["cell_methods"] and "bootstrap ensemble" in mean["comment"]
    std = cf.product_attrs("biomass", "Copepoda", "std")
    assert "standard_name" not in std and std["long_name"].startswith("ensemble standard deviation")
    assert "Copepoda" in std["long_name"]
    assert cf.product_attrs("shannon", "UVP5")["units"] == "1"  # diversity: no standard name
    assert "standard_name" not in cf.product_attrs("shannon")
    with pytest.raises(KeyError, match="unknown product kind"):
        cf.product_attrs("chlorophyll")
    with pytest.raises(ValueError, match="statistic"):
        cf.product_attrs("poc", statistic="median")


def test_cell_bounds_and_coord_attrs():
    b = cf.cell_bounds(np.array([-89.5, -88.5, -87.5]))
    np.testing.assert_allclose(b, [[-90, -89], [-89, -88], [-88, -87]])
    with pytest.raises(ValueError, match="two centres"):
        cf.cell_bounds(np.array([0.0]))
    ds = xr.Dataset(coords={"lat": [0.5, 1.5], "lon": [10.5, 11.5, 12.5], "depth": [5.0]})
    out = cf.add_coord_attrs(ds)
    assert out["lat"].attrs["units"] == "degrees_north" and out["lon"].attrs["axis"] == "X"
    assert out["depth"].attrs["positive"] == "down" and out["lon_bnds"].shape == (3, 2)


def test_global_attrs_have_history_and_conventions():
    a = cf.global_attrs("t", "did something", license="GPL-3.0", extra={"k": 1})
    assert a["Conventions"].startswith("CF-1.10") and a["history"].endswith(": did something")
    assert a["license"] == "GPL-3.0" and a["k"] == 1
