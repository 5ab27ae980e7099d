"""CF attribute tables and coordinate helpers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from aqqua_geo.mapping import cf

# Standard names this package claims; each checked against the CF standard-name table by hand
# (nutrients/oxygen: the per-mass names CCHDO uses for umol/kg; others: CMIP/CMEMS usage).
CHECKED_STANDARD_NAMES = {
    "sea_water_temperature", "sea_water_practical_salinity",
    "moles_of_silicate_per_unit_mass_in_sea_water", "moles_of_phosphate_per_unit_mass_in_sea_water",
    "moles_of_nitrate_per_unit_mass_in_sea_water", "moles_of_oxygen_per_unit_mass_in_sea_water",
    "mass_concentration_of_chlorophyll_a_in_sea_water", "sea_floor_depth_below_sea_surface",
    "mass_concentration_of_particulate_organic_matter_expressed_as_carbon_in_sea_water",
}


def test_every_claimed_standard_name_is_a_checked_one():
    claimed = {a["standard_name"] for a in (*cf.ENV_VARIABLES.values(), *cf.PRODUCTS.values())
               if "standard_name" in a}
    assert claimed <= CHECKED_STANDARD_NAMES
    for table in (cf.ENV_VARIABLES, cf.PRODUCTS):
        for name, attrs in table.items():
            assert attrs.get("units") and attrs.get("long_name"), name


def test_product_attrs_mean_and_std():
    mean = cf.product_attrs("poc", statistic="mean")
    assert mean["standard_name"].startswith("mass_concentration_of_particulate_organic_matter")
    assert mean["units"] == "mg m-3" and "realization: mean" in mean["cell_methods"]
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
