"""The one table of environmental variables the mapping code knows.

Each canonical name (the model-feature name: ``temperature``, ``nitrate``, ``mld`` …) has its
CF ``standard_name`` and ``units`` as a normalised cube carries them, a ``long_name``, the
source names recognised as it (``aliases``), and where relevant:

* ``per_mass``: the standard name and units of the per-mass form (µmol kg⁻¹, as WOA and
  CCHDO tabulate nutrients and oxygen; the bundled cube is in that form);
* ``drago_column``: the column of Drago et al. (2022)'s table that holds it;
* ``layer_mean``: the bundled cube holds its 0–200 m layer mean.

Everything else is derived from here: the normaliser's alias lookup
(:mod:`aqqua_geo.mapping.env`), the bundled cube's attributes (``cf.ENV_VARIABLES``), Drago's
predictor renaming (``drago2022.PREDICTORS``) and the catalog's standard names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VARIABLES", "bundled_cube_attrs", "drago_columns"]

VARIABLES: dict[str, dict[str, Any]] = {
    "temperature": {
        "standard_name": "sea_water_temperature",
        "units": "degC",
        "long_name": "sea water temperature",
        "drago_column": "mean.temperature",
        "layer_mean": True,
        "aliases": ("sst", "analysed_sst", "thetao", "temp", "temperature", "t_an", "t_mn", "theta",
                    "to", "tos", "votemper", "surface_temperature", "sea_surface_temperature",
                    "sea_water_temperature", "sea_water_potential_temperature",
                    "sea_water_conservative_temperature", "mean.temperature"),
    },
    "salinity": {
        "standard_name": "sea_water_practical_salinity",
        "units": "1",
        "long_name": "practical salinity",
        "drago_column": "mean.salinity",
        "layer_mean": True,
        "aliases": ("so", "sos", "sal", "salt", "psal", "salinity", "s_an", "s_mn", "vosaline",
                    "sea_water_salinity", "sea_water_practical_salinity", "sea_surface_salinity",
                    "mean.salinity"),
    },
    "silicate": {
        "standard_name": "mole_concentration_of_silicate_in_sea_water",
        "units": "mmol m-3",
        "long_name": "silicate",
        "per_mass": {"standard_name": "moles_of_silicate_per_unit_mass_in_sea_water", "units": "umol kg-1"},
        "drago_column": "mean.silicate",
        "layer_mean": True,
        "aliases": ("si", "sio4", "silicate", "i_an", "i_mn", "mean.silicate",
                    "mole_concentration_of_silicate_in_sea_water",
                    "moles_of_silicate_per_unit_mass_in_sea_water"),
    },
    "phosphate": {
        "standard_name": "mole_concentration_of_phosphate_in_sea_water",
        "units": "mmol m-3",
        "long_name": "phosphate",
        "per_mass": {"standard_name": "moles_of_phosphate_per_unit_mass_in_sea_water", "units": "umol kg-1"},
        "drago_column": "mean.phosphate",
        "layer_mean": True,
        "aliases": ("po4", "phosphate", "p_an", "p_mn", "mean.phosphate",
                    "mole_concentration_of_phosphate_in_sea_water",
                    "moles_of_phosphate_per_unit_mass_in_sea_water"),
    },
    "nitrate": {
        "standard_name": "mole_concentration_of_nitrate_in_sea_water",
        "units": "mmol m-3",
        "long_name": "nitrate",
        "per_mass": {"standard_name": "moles_of_nitrate_per_unit_mass_in_sea_water", "units": "umol kg-1"},
        "drago_column": "mean.nitrate",
        "layer_mean": True,
        "aliases": ("no3", "nitrate", "n_an", "n_mn", "mean.nitrate",
                    "mole_concentration_of_nitrate_in_sea_water",
                    "moles_of_nitrate_per_unit_mass_in_sea_water"),
    },
    "oxygen": {
        "standard_name": "mole_concentration_of_dissolved_molecular_oxygen_in_sea_water",
        "units": "mmol m-3",
        "long_name": "dissolved oxygen",
        "per_mass": {"standard_name": "moles_of_oxygen_per_unit_mass_in_sea_water", "units": "umol kg-1"},
        "drago_column": "mean.oxygen",
        "layer_mean": True,
        "aliases": ("o2", "oxygen", "o_an", "o_mn", "doxy", "mean.oxygen",
                    "mole_concentration_of_dissolved_molecular_oxygen_in_sea_water",
                    "moles_of_oxygen_per_unit_mass_in_sea_water"),
    },
    "chla": {
        "standard_name": "mass_concentration_of_chlorophyll_a_in_sea_water",
        "units": "mg m-3",
        "long_name": "chlorophyll a concentration",
        "drago_column": "mean.chla",
        "aliases": ("chl", "chla", "CHL", "chlor_a", "chl_a", "chlorophyll", "mean.chla",
                    "mass_concentration_of_chlorophyll_a_in_sea_water"),
    },
    "bathymetry": {
        "standard_name": "sea_floor_depth_below_sea_surface",
        "units": "m",
        "long_name": "sea floor depth (cell mean)",
        "positive": "down",
        "drago_column": "bathymetry",
        "aliases": ("bathymetry", "deptho", "sea_floor_depth_below_sea_surface",
                    "sea_floor_depth_below_geoid"),
    },
    "dist_coast": {
        "long_name": "distance to the nearest coast",
        "units": "km",
        "drago_column": "dist",
        "aliases": ("dist_coast", "dist", "distance_to_coast"),
    },
    "mld": {
        "standard_name": "ocean_mixed_layer_thickness_defined_by_sigma_theta",
        "units": "m",
        "long_name": "mixed layer depth",
        "aliases": ("mlotst", "mld", "mlp", "somxl010", "mixed_layer_depth",
                    "ocean_mixed_layer_thickness_defined_by_sigma_theta",
                    "ocean_mixed_layer_thickness"),
    },
    "npp": {
        "standard_name": "net_primary_production_of_biomass_expressed_as_carbon_per_unit_volume_in_sea_water",
        "units": "mg m-3 d-1",
        "long_name": "net primary production",
        "aliases": ("nppv", "npp", "pp",
                    "net_primary_production_of_biomass_expressed_as_carbon_per_unit_volume_in_sea_water"),
    },
    "zeu": {
        "long_name": "euphotic depth",
        "units": "m",
        "aliases": ("zeu", "zeu_lee", "euphotic_depth"),
    },
}


def bundled_cube_attrs(name: str, layer: str = "0-200 m") -> dict[str, str]:
    """CF attributes of variable *name* as the bundled WOA-type cube stores it (per-mass
    nutrients in µmol kg⁻¹, layer means named in ``long_name``)."""
    spec = VARIABLES[name]
    form = spec.get("per_mass", spec)
    attrs: dict[str, str] = {}
    if "standard_name" in form:
        attrs["standard_name"] = form["standard_name"]
    attrs["long_name"] = spec["long_name"] + (f", {layer} layer" if spec.get("layer_mean") else "")
    attrs["units"] = form["units"]
    if "positive" in spec:
        attrs["positive"] = spec["positive"]
    return attrs


def drago_columns() -> dict[str, str]:
    """Drago et al. (2022) predictor column → canonical name, in the table's order."""
    return {spec["drago_column"]: name for name, spec in VARIABLES.items() if "drago_column" in spec}
