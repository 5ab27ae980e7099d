"""PNG maps of gridded products with cartopy, drawn fully offline.

cartopy downloads Natural Earth shapefiles at draw time; offline that fails in ``savefig``.
The package ships 110m land/coastline shapefiles in cartopy's folder layout
(``aqqua_geo/data/natural_earth``, derived from the bundled admin-0 countries by
:func:`build_natural_earth`) and :func:`use_offline_natural_earth` points
``cartopy.config["pre_existing_data_dir"]`` at them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    import pandas as pd

PROJECTIONS = ("Robinson", "PlateCarree")


def _ne_dir() -> Path:
    from aqqua_geo import data

    return data.path("natural_earth")


def build_natural_earth(out_dir: str | Path | None = None) -> list[Path]:
    """Write ``shapefiles/natural_earth/physical/ne_110m_{land,coastline}.shp``.

    Land = union of the 177 bundled 110m admin-0 country polygons; coastline = its boundary.
    """
    import geopandas as gpd
    import shapely

    from aqqua_geo import data

    src = data.path("ne_110m_admin_0_countries") / "ne_110m_admin_0_countries.shp"
    countries = gpd.read_file(src)
    land = shapely.union_all(shapely.make_valid(countries.geometry.values))
    polys = [g for g in getattr(land, "geoms", [land]) if g.geom_type == "Polygon"]
    root = Path(out_dir) if out_dir is not None else _ne_dir()
    phys = root / "shapefiles" / "natural_earth" / "physical"
    phys.mkdir(parents=True, exist_ok=True)
    crs = countries.crs or "EPSG:4326"
    land_gdf = gpd.GeoDataFrame({"featurecla": ["Land"] * len(polys)}, geometry=polys, crs=crs)
    lines = [p.exterior for p in polys] + [r for p in polys for r in p.interiors]
    coast = gpd.GeoDataFrame({"featurecla": ["Coastline"] * len(lines)},
                             geometry=[shapely.LineString(r.coords) for r in lines], crs=crs)
    paths = [phys / "ne_110m_land.shp", phys / "ne_110m_coastline.shp"]
    land_gdf.to_file(paths[0], engine="pyogrio")
    coast.to_file(paths[1], engine="pyogrio")
    return paths


def use_offline_natural_earth() -> Path:
    """Point cartopy at the bundled shapefiles (idempotent); returns the folder."""
    import cartopy

    folder = _ne_dir()
    if not (folder / "shapefiles/natural_earth/physical/ne_110m_coastline.shp").is_file():
        raise FileNotFoundError(f"bundled coastlines missing under {folder}; run build_natural_earth()")
    cartopy.config["pre_existing_data_dir"] = str(folder)
    return folder


def _label(da: xr.DataArray) -> str:
    name = da.attrs.get("long_name", da.name or "")
    units = da.attrs.get("units")
    return f"{name} [{units}]" if units else str(name)


def log_ticks(vmin: float, vmax: float, max_ticks: int = 8) -> list[float]:
    """Readable ticks for a log colour bar: 1-2-5 per decade, thinned to decades (and then
    every other decade) until at most *max_ticks* remain."""
    if not (vmin > 0 and vmax > vmin):
        raise ValueError(f"log ticks need 0 < vmin < vmax, got {vmin}, {vmax}")
    decades = range(int(np.floor(np.log10(vmin))), int(np.ceil(np.log10(vmax))) + 1)
    for subs, step in (((1, 2, 5), 1), ((1,), 1), ((1,), 2), ((1,), 3)):
        ticks = [m * 10.0**k for k in decades[::step] for m in subs if vmin <= m * 10.0**k <= vmax * (1 + 1e-9)]
        if 2 <= len(ticks) <= max_ticks:
            return ticks
    return [vmin, vmax]


def plot_map(
    da: xr.DataArray,
    path: str | Path,
    *,
    projection: str = "Robinson",
    cmap: str = "viridis",
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    points: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Save a global PNG map of a 2-D (lat, lon) field with coastlines and a units colour bar.

    *log* uses a logarithmic colour scale (biomass spans orders of magnitude); *points* =
    (lon, lat) overlays sampling stations.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import cartopy.crs as ccrs
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    extra = [d for d in da.dims if d not in ("lat", "lon")]
    if extra:
        raise ValueError(f"plot_map needs a (lat, lon) field; {da.name!r} also has dims {extra}")
    use_offline_natural_earth()
    values = np.asarray(da.transpose("lat", "lon").values, dtype="f8")
    finite = values[np.isfinite(values)]
    norm = None
    if log:
        pos = finite[finite > 0]
        lo = vmin if vmin is not None else (np.percentile(pos, 1) if pos.size else 1e-3)
        hi = vmax if vmax is not None else (np.percentile(pos, 99) if pos.size else 1.0)
        norm = mcolors.LogNorm(vmin=lo, vmax=max(hi, lo * 10))
        values = np.where(values > 0, values, np.nan)
        vmin = vmax = None
    elif finite.size and vmin is None and vmax is None:
        vmin, vmax = np.percentile(finite, [1, 99])

    fig = plt.figure(figsize=(9, 4.8))
    ax = fig.add_subplot(1, 1, 1, projection=getattr(ccrs, projection)())
    ax.set_global()
    mesh = ax.pcolormesh(da["lon"].values, da["lat"].values, values, transform=ccrs.PlateCarree(),
                         cmap=cmap, norm=norm, vmin=vmin, vmax=vmax, shading="auto")
    ax.coastlines(resolution="110m", linewidth=0.5)
    if points is not None:
        ax.scatter(points[0], points[1], s=2, c="k", transform=ccrs.PlateCarree(), label="samples")
    cbar = fig.colorbar(mesh, ax=ax, orientation="horizontal", pad=0.05, fraction=0.05,
                        label=_label(da))
    if norm is not None:  # log scale: 1-2-5 ticks (or decades) in plain numbers, no overlap
        ticks = log_ticks(norm.vmin, norm.vmax)
        cbar.set_ticks(ticks)
        cbar.set_ticklabels([f"{t:g}" for t in ticks])
        cbar.ax.minorticks_off()
    ax.set_title(title or str(da.attrs.get("long_name", da.name)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_products(ds: xr.Dataset, out_dir: str | Path, *, projection: str = "Robinson",
                  log_vars: tuple[str, ...] = ()) -> list[Path]:
    """One PNG per 2-D variable of *ds* (``*_std`` drawn with a sequential palette).

    Extra dims (time, depth) are reduced to their first index with a note in the title.
    """
    out = []
    for name, da in ds.data_vars.items():
        if not {"lat", "lon"} <= set(da.dims):
            continue
        title = str(da.attrs.get("long_name", name))
        for dim in [d for d in da.dims if d not in ("lat", "lon")]:
            title += f" ({dim}={da[dim].values[0]})"
            da = da.isel({dim: 0})
        log = name in log_vars or name.removesuffix("_mean") in log_vars
        cmap = "magma" if name.endswith("_std") else "viridis"
        out.append(plot_map(da, Path(out_dir) / f"{name}.png", projection=projection,
                            cmap=cmap, log=log, title=title))
    return out


def plot_partial_dependence(model: Any, X: "pd.DataFrame", path: str | Path,
                            features: Sequence[str] | None = None, units: str = "") -> Path:
    """PNG of partial-dependence curves of a fitted ``BRTEnsemble`` (one panel per feature,
    most important first), with a decile rug showing where the data support the curve."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    feats = list(features or model.feature_importance().index)
    ncol = min(3, len(feats))
    nrow = int(np.ceil(len(feats) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    for ax, f in zip(axes.ravel(), feats):
        pd_ = model.partial_dependence(X, f)
        ax.plot(pd_[f], pd_["partial_dependence"], color="C0")
        deciles = X[f].quantile(np.linspace(0.1, 0.9, 9)).to_numpy()  # rug: data support
        ax.plot(deciles, np.full(9, ax.get_ylim()[0]), "|k", markersize=8)
        ax.set_xlabel(f)
        ax.set_ylabel(f"partial dependence{f' [{units}]' if units else ''}")
    for ax in axes.ravel()[len(feats):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
