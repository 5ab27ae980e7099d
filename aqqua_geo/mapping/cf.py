"""CF-1.10 attribute tables for the environmental cube and the mapping products.

Standard names are used only where the CF standard-name table has one (CMIP6 Omon/Oyr names
for carbon products, CCHDO/WOA names for nutrients). Quantities without one (diversity indices,
distance to coast, taxon-resolved biomass) get ``long_name`` + ``units`` only: inventing
standard names would mislead ESM users.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np
import xarray as xr

from aqqua_geo.mapping.variables import bundled_cube_attrs, drago_columns

CONVENTIONS = "CF-1.10 ACDD-1.3"

#: Bundled 1° environmental cube: name -> attributes (Drago et al. 2022 WOA-derived predictors),
#: derived from the one variable table :data:`aqqua_geo.mapping.variables.VARIABLES`.
ENV_VARIABLES: dict[str, dict[str, str]] = {
    name: bundled_cube_attrs(name) for name in drago_columns().values()
}

#: Mapping products: kind -> attributes. ``{group}`` is filled with the taxon/group name.
PRODUCTS: dict[str, dict[str, str]] = {
    # Taxon-resolved carbon biomass has no CF name; total zooplankton carbon does (as mass).
    "biomass": {"long_name": "{group} carbon biomass", "units": "mg m-3"},
    # CMIP6 zooc is a *mole* concentration; ours is mass of carbon: no standard name claimed.
    "zooplankton_carbon": {
        "long_name": "zooplankton carbon biomass",
        "units": "mg m-3",
        "comment": "CMIP6 zooc (mol m-3) = value / 12.011e3",
    },
    "abundance": {"long_name": "{group} abundance", "units": "m-3"},
    "poc": {
        "standard_name": "mass_concentration_of_particulate_organic_matter_expressed_as_carbon_in_sea_water",
        "long_name": "particulate organic carbon",
        "units": "mg m-3",
    },
    # CMIP6 epc100 is the *mole* flux (sinking_mole_flux_of_..., mol m-2 s-1).
    "carbon_export": {
        "long_name": "sinking particulate organic carbon flux",
        "units": "mg m-2 d-1",
        "positive": "down",
        "comment": "CMIP6 epc100 (mol m-2 s-1) = value / 12.011e3 / 86400",
    },
    "richness": {"long_name": "{group} taxonomic richness (Hill q=0)", "units": "1"},
    "shannon": {"long_name": "{group} Shannon diversity H' (natural log)", "units": "1"},
    "hill": {"long_name": "{group} Hill number", "units": "1"},
    "generic": {"long_name": "{group}", "units": "1"},
}

LAT_ATTRS = {
    "standard_name": "latitude",
    "long_name": "latitude",
    "units": "degrees_north",
    "axis": "Y",
    "bounds": "lat_bnds",
}
LON_ATTRS = {
    "standard_name": "longitude",
    "long_name": "longitude",
    "units": "degrees_east",
    "axis": "X",
    "bounds": "lon_bnds",
}
TIME_ATTRS = {"standard_name": "time", "axis": "T"}
DEPTH_ATTRS = {"standard_name": "depth", "units": "m", "positive": "down", "axis": "Z"}


def product_attrs(kind: str, group: str = "", statistic: str = "mean") -> dict[str, str]:
    """Attributes of one product variable.

    *statistic* ``"mean"`` keeps the standard name; ``"std"`` drops it (the ensemble spread is
    not the quantity the standard name describes) and says so in ``long_name``/``cell_methods``.
    """
    if kind not in PRODUCTS:
        raise KeyError(f"unknown product kind {kind!r}; known: {sorted(PRODUCTS)}")
    attrs = {k: v.format(group=group).strip() for k, v in PRODUCTS[kind].items()}
    if statistic == "mean":
        attrs["cell_methods"] = "area: mean where sea realization: mean"
    elif statistic == "std":
        attrs.pop("standard_name", None)
        attrs["long_name"] = f"ensemble standard deviation of {attrs['long_name']}"
        attrs["cell_methods"] = "area: mean where sea realization: standard_deviation"
    else:
        raise ValueError(f"statistic must be 'mean' or 'std', got {statistic!r}")
    return attrs


def cell_bounds(centres: np.ndarray) -> np.ndarray:
    """(n, 2) bounds of regularly spaced cell *centres* (CF ``bounds`` variable)."""
    centres = np.asarray(centres, dtype="f8")
    if centres.size < 2:
        raise ValueError("cell_bounds needs at least two centres to infer the spacing")
    half = np.diff(centres).mean() / 2.0
    return np.stack([centres - half, centres + half], axis=1)


def add_coord_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Give lat/lon (and time/depth if present) CF attributes and lat/lon bounds variables."""
    ds = ds.copy()
    for name, attrs in (("lat", LAT_ATTRS), ("lon", LON_ATTRS)):
        if name in ds.coords:
            ds[name].attrs.update(attrs)
            ds[f"{name}_bnds"] = ((name, "bnds"), cell_bounds(ds[name].values))
            ds = ds.set_coords(f"{name}_bnds")
    if "time" in ds.coords:
        ds["time"].attrs.update(TIME_ATTRS)
    if "depth" in ds.coords:
        ds["depth"].attrs.update(DEPTH_ATTRS)
    return ds


def global_attrs(
    title: str,
    history: str,
    *,
    source: str = "aqqua-geo",
    license: str = "",
    references: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """CF/ACDD global attributes; *history* is a ``"<timestamp>: <what>"`` line."""
    from aqqua_geo import __version__

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs: dict[str, Any] = {
        "Conventions": CONVENTIONS,
        "title": title,
        "history": f"{now}: {history}",
        "source": source,
        "date_created": now,
        "product_version": __version__,
        "geospatial_lat_units": "degrees_north",
        "geospatial_lon_units": "degrees_east",
    }
    if license:
        attrs["license"] = license
    if references:
        attrs["references"] = references
    attrs.update(extra or {})
    return attrs
