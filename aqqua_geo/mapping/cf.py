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

CONVENTIONS = "CF-1.10, ACDD-1.3"
#: The standard-name table every claimed name was checked against (compliance-checker's copy).
STANDARD_NAME_VOCABULARY = "CF Standard Name Table v93"
KEYWORDS_BY_KIND = {
    "biomass": "zooplankton, biomass, carbon", "zooplankton_carbon": "zooplankton, biomass, carbon",
    "abundance": "plankton, abundance", "poc": "particulate organic carbon",
    "carbon_export": "carbon export, biological carbon pump, particulate organic carbon flux",
    "zooc": "zooplankton, carbon", "epc": "carbon export, particulate organic carbon flux",
    "richness": "biodiversity", "shannon": "biodiversity", "hill": "biodiversity", "generic": "",
}

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
        "standard_name": "mass_concentration_of_zooplankton_expressed_as_carbon_in_sea_water",
        "long_name": "zooplankton carbon biomass",
        "units": "mg m-3",
        "comment": "CMIP6 zooc (mol m-3) = value / 12.011e3",
    },
    "abundance": {"long_name": "{group} abundance", "units": "m-3"},
    # CF has only the mole concentration of POC (mole_concentration_of_particulate_organic_
    # matter_expressed_as_carbon_in_sea_water, mol m-3): the mass form carries no standard name.
    "poc": {
        "long_name": "particulate organic carbon",
        "units": "mg m-3",
        "comment": "mole_concentration_of_particulate_organic_matter_expressed_as_carbon_in_sea_water (mol m-3) = value / 12.011e3",
    },
    # CF has only the *mole* flux (sinking_mole_flux_of_..., CMIP6 epc100, mol m-2 s-1): a mass
    # flux in mg m-2 d-1 cannot carry it (see "epc" for the CMIP6-style variable).
    "carbon_export": {
        "long_name": "sinking particulate organic carbon flux",
        "units": "mg m-2 d-1",
        "positive": "down",
        "comment": "CMIP6 epc100 (mol m-2 s-1) = value / 12.011e3 / 86400",
    },
    # CMIP6-style variables for Earth-system modellers (Omon names, SI mole units).
    "zooc": {
        "standard_name": "mole_concentration_of_zooplankton_expressed_as_carbon_in_sea_water",
        "long_name": "zooplankton carbon concentration",
        "units": "mol m-3",
    },
    "epc": {
        "standard_name": "sinking_mole_flux_of_particulate_organic_matter_expressed_as_carbon_in_sea_water",
        "long_name": "downward flux of particulate organic carbon",
        "units": "mol m-2 s-1",
        "positive": "down",
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


def product_attrs(kind: str, group: str = "", statistic: str = "mean", n_members: int | None = None
                  ) -> dict[str, str]:
    """Attributes of one product variable.

    *statistic* ``"mean"`` keeps the standard name; ``"std"`` drops it (the ensemble spread is
    not the quantity the standard name describes) and says so in ``long_name``. The ensemble
    statistic is described in ``comment`` (CF ``cell_methods`` may only name dimensions or
    standard names, and the members are no dimension of the product).
    """
    if kind not in PRODUCTS:
        raise KeyError(f"unknown product kind {kind!r}; known: {sorted(PRODUCTS)}")
    attrs = {k: v.format(group=group).strip() for k, v in PRODUCTS[kind].items()}
    members = f"{n_members} " if n_members else ""
    if statistic == "mean":
        what = f"mean over the {members}members of a bootstrap ensemble of boosted regression trees"
    elif statistic == "std":
        attrs.pop("standard_name", None)
        attrs["long_name"] = f"ensemble standard deviation of {attrs['long_name']}"
        what = f"standard deviation over the {members}members of a bootstrap ensemble of boosted regression trees"
    else:
        raise ValueError(f"statistic must be 'mean' or 'std', got {statistic!r}")
    attrs["cell_methods"] = "area: mean where sea"
    attrs["comment"] = f"{what}; {attrs['comment']}" if "comment" in attrs else what
    attrs["coverage_content_type"] = "modelResult"
    return attrs


def extrapolation_attrs(group: str, features: list[str]) -> dict[str, Any]:
    """Attributes of a product's extrapolation flag (a CF flag variable)."""
    return {
        "long_name": f"{group}: predictor outside its training range",
        "flag_values": np.array([0, 1], dtype="i1"),
        "flag_meanings": "within_training_range outside_training_range",
        "coverage_content_type": "qualityInformation",
        "comment": "1 where any of " + ", ".join(features) + " lies outside the [min, max] it had "
                   "in the observations the model was fitted to; -1 (fill) where no prediction",
    }


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
    attrs["standard_name_vocabulary"] = STANDARD_NAME_VOCABULARY
    if license:
        attrs["license"] = license
    if references:
        attrs["references"] = references
    attrs.update(extra or {})
    return attrs


def acdd_attrs(*, summary: str, kinds: list[str], institution: str, license: str,
               time_coverage: tuple[str | None, str | None] = (None, None)) -> dict[str, str]:
    """ACDD-1.3 discovery attributes of a product set (summary, keywords, licence, creator)."""
    words = ["plankton", "ocean", "habitat model", "boosted regression trees", "UVP"]
    for k in kinds:
        words += [w.strip() for w in KEYWORDS_BY_KIND.get(k, "").split(",") if w.strip()]
    keywords = ", ".join(dict.fromkeys(words))
    extra = {}
    if time_coverage[0] and time_coverage[1]:
        extra = {"time_coverage_start": time_coverage[0], "time_coverage_end": time_coverage[1]}
    return {
        **extra,
        "comment": "Annual climatology of the observation period (time_coverage_*); each variable "
                   "describes the layer or horizon of its depth coordinate",
        "summary": summary,
        "keywords": keywords,
        "license": license,
        "institution": institution,
        "creator_name": institution,
        "creator_type": "group",
        "creator_url": "https://github.com/aqqua-geo",
        "creator_email": "aqqua-geo@users.noreply.github.com",
        "publisher_name": institution,
        "publisher_url": "https://github.com/aqqua-geo",
        "publisher_email": "aqqua-geo@users.noreply.github.com",
        "project": "aqqua-geo",
        "processing_level": "L4 model output (statistical habitat model of in situ observations)",
        "id": "aqqua-geo-maps",
        "naming_authority": "org.github.aqqua-geo",
        "acknowledgment": "Observations and predictors as cited in `references` and `source`",
        "cdm_data_type": "Grid",
    }


def coverage_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """ACDD geospatial (and vertical, when depth coordinates exist) coverage of *ds*: extents
    of the cell centres, the bounding polygon (WKT, EPSG:4326) and the resolution."""
    attrs: dict[str, Any] = {}
    if "lat" in ds.coords and "lon" in ds.coords and ds.sizes.get("lat", 0) > 1 and ds.sizes.get("lon", 0) > 1:
        la, lo = ds["lat"].values, ds["lon"].values
        s_, n_, w_, e_ = float(la.min()), float(la.max()), float(lo.min()), float(lo.max())
        attrs.update(
            geospatial_lat_min=s_, geospatial_lat_max=n_, geospatial_lon_min=w_, geospatial_lon_max=e_,
            geospatial_lat_resolution=f"{float(abs(np.diff(la).mean())):g} degree",
            geospatial_lon_resolution=f"{float(abs(np.diff(lo).mean())):g} degree",
            geospatial_bounds=f"POLYGON (({w_:g} {s_:g}, {e_:g} {s_:g}, {e_:g} {n_:g}, {w_:g} {n_:g}, {w_:g} {s_:g}))",
            geospatial_bounds_crs="EPSG:4326")
    depths = [float(v) for c in ds.coords if str(c).startswith("depth") and not str(c).endswith("_bnds")
              for v in np.atleast_1d(ds[c].values)]
    if depths:
        attrs.update(geospatial_vertical_min=min(depths), geospatial_vertical_max=max(depths),
                     geospatial_vertical_units="m", geospatial_vertical_positive="down",
                     geospatial_bounds_vertical_crs="EPSG:5831")  # depth below mean sea level
    return attrs
