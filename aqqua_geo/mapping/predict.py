"""Lazy, resumable prediction of BRT ensembles on global grids → CF-compliant Zarr/NetCDF.

The cube's feature variables are broadcast, chunked with Dask and stacked per chunk inside
``xr.apply_ufunc``; each chunk yields the ensemble mean and standard deviation, so memory is
bounded by the chunk size, never the grid size. The Zarr template (metadata, coordinates) is
written first with ``compute=False``; the grid is then filled region by region with
``to_zarr(region=...)``, each finished region leaving a marker, so a killed job resumes where it
stopped (``resume=True``) and several time-limited jobs can share the work (``max_regions``).

Also here: layer-integrated carbon stocks (Pg C) of concentration maps.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import xarray as xr

from aqqua_geo.mapping import cf
from aqqua_geo.mapping.model import BRTEnsemble

PROGRESS_SUFFIX = ".regions"  # sibling folder of region markers: the store holds only zarr files
CANONICAL_ORDER = ("time", "month", "depth", "lat", "lon")
MG_PER_PG = 1e18  # 1 Pg = 1e15 g = 1e18 mg


# --------------------------------------------------------------------------------------------
# Layer totals
# --------------------------------------------------------------------------------------------
def total_pg_c(conc_mg_m3: xr.DataArray, thickness_m: float) -> float:
    """Carbon stock (Pg C) of a layer: Σ cell area × thickness × concentration (mg C m⁻³).

    Areas are spherical (``sphere.cell_area``, from ``lat_bnds``/``lon_bnds`` when present);
    NaN cells (land, no prediction) count as zero.
    """
    from aqqua_geo.mapping.sphere import cell_area

    if thickness_m <= 0:
        raise ValueError(f"thickness_m must be > 0, got {thickness_m}")
    if set(conc_mg_m3.dims) != {"lat", "lon"}:
        raise ValueError(f"total_pg_c needs a (lat, lon) field, got dims {conc_mg_m3.dims}")
    lb, lob = conc_mg_m3.coords.get("lat_bnds"), conc_mg_m3.coords.get("lon_bnds")
    area = cell_area(conc_mg_m3["lat"].values, conc_mg_m3["lon"].values,
                     None if lb is None else lb.values, None if lob is None else lob.values)
    mg = float((conc_mg_m3.fillna(0.0) * area).sum()) * thickness_m
    return mg / MG_PER_PG


# --------------------------------------------------------------------------------------------
# Lazy prediction
# --------------------------------------------------------------------------------------------
@dataclass
class Product:
    """One mapped quantity: a fitted ensemble and its CF product kind (see ``cf.PRODUCTS``)."""

    model: BRTEnsemble
    kind: str = "biomass"
    group: str = ""


def _as_products(models: BRTEnsemble | Mapping[str, Any]) -> dict[str, Product]:
    if isinstance(models, BRTEnsemble):
        return {"prediction": Product(models, "generic", "prediction")}
    out = {}
    for name, m in models.items():
        out[name] = m if isinstance(m, Product) else Product(m, "biomass", name)
    return out


def _ensemble_block(*arrays: np.ndarray, model: BRTEnsemble) -> np.ndarray:
    """apply_ufunc kernel: feature blocks of equal shape → (..., 2) [mean, std]."""
    shape = arrays[0].shape
    X = np.stack([np.asarray(a, "f4").ravel() for a in arrays], axis=1)
    ens = model.predict_matrix(X)
    out = np.empty(shape + (2,), dtype="f4")
    with np.errstate(invalid="ignore"):
        out[..., 0] = ens.mean(axis=0).reshape(shape)
        out[..., 1] = ens.std(axis=0, ddof=1 if len(ens) > 1 else 0).reshape(shape)
    return out


def predict_lazy(models: BRTEnsemble | Mapping[str, Any], cube: xr.Dataset,
                 chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    """Dask-backed dataset of ``<name>_mean`` / ``<name>_std`` for each product (nothing computed).

    Feature variables are broadcast against each other (static fields such as bathymetry repeat
    over ``time``) and rechunked with *chunks* (default: 180 × 360 cells per chunk).
    """
    products = _as_products(models)
    feats = sorted({f for p in products.values() for f in p.model.features_})
    missing = [f for f in feats if f not in cube.data_vars]
    if missing:
        raise KeyError(f"cube lacks feature variable(s) {missing}")
    fields = dict(zip(feats, xr.broadcast(*(cube[f] for f in feats))))
    # CF/COARDS order T, Z, Y, X (broadcasting may have put time last)
    dims = tuple(sorted(fields[feats[0]].dims, key=lambda d: (CANONICAL_ORDER + (d,)).index(d)))
    fields = {k: v.transpose(*dims) for k, v in fields.items()}
    spec = {d: -1 for d in dims}
    spec.update({"lat": 180, "lon": 360} if "lat" in dims and "lon" in dims else {})
    spec.update({d: 1 for d in dims if d not in ("lat", "lon")})
    spec.update(chunks or {})
    fields = {k: v.chunk({d: spec[d] for d in v.dims}) for k, v in fields.items()}
    out = {}
    for name, prod in products.items():
        stacked = xr.apply_ufunc(
            _ensemble_block, *(fields[f] for f in prod.model.features_),
            kwargs={"model": prod.model}, output_core_dims=[["stat"]], dask="parallelized",
            output_dtypes=[np.float32], dask_gufunc_kwargs={"output_sizes": {"stat": 2}})
        for i, stat in enumerate(("mean", "std")):
            da = stacked.isel(stat=i, drop=True)
            da.attrs = cf.product_attrs(prod.kind, prod.group or name, stat)
            out[f"{name}_{stat}"] = da
    coords = {d: cube[d] for d in dims if d in cube.coords}
    return xr.Dataset(out, coords=coords)


def _provenance(products: dict[str, Product], config: Mapping[str, Any] | None) -> dict[str, Any]:
    import hashlib

    cfg = json.dumps(config or {}, sort_keys=True, default=str)
    h = hashlib.sha1(("".join(p.model.config_hash() for p in products.values()) + cfg).encode())
    return {
        "aqqua_config_hash": h.hexdigest(),
        "aqqua_models": json.dumps({n: {"config_hash": p.model.config_hash(),
                                        "n_members": len(p.model.boosters_),
                                        "features": p.model.features_,
                                        "n_rounds": p.model.n_rounds_} for n, p in products.items()}),
        "aqqua_training_data": json.dumps({n: p.model.training_summary_ for n, p in products.items()},
                                          default=str),
        "aqqua_cv_scores": json.dumps({n: p.model.cv_scores_ for n, p in products.items()},
                                      default=str),
        "aqqua_config": cfg,
    }


def _regions(ds: xr.Dataset, region_dims: Mapping[str, int]) -> Iterator[dict[str, slice]]:
    """Tiles of *region_dims* sizes (multiples of the chunks) covering the grid, row-major."""
    dims = list(next(iter(ds.data_vars.values())).dims)
    steps = {d: region_dims.get(d, 1) for d in dims}
    ranges = [range(0, ds.sizes[d], steps[d]) for d in dims]
    for starts in np.ndindex(*[len(r) for r in ranges]):
        yield {d: slice(ranges[k][i], min(ranges[k][i] + steps[d], ds.sizes[d]))
               for k, (d, i) in enumerate(zip(dims, starts))}


def _region_key(region: dict[str, slice]) -> str:
    return "_".join(f"{d}{s.start}-{s.stop}" for d, s in sorted(region.items()))


def predict_to_zarr(
    models: BRTEnsemble | Mapping[str, Any],
    cube: xr.Dataset,
    out_path: str | Path,
    *,
    chunks: Mapping[str, int] | None = None,
    region_size: Mapping[str, int] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    max_regions: int | None = None,
    netcdf_path: str | Path | None = None,
    title: str = "aqqua-geo plankton habitat-model maps",
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Predict *models* over *cube* lazily and write a CF-1.10 Zarr store at *out_path*.

    Parameters
    ----------
    models : an ensemble, or ``{name: BRTEnsemble | Product}`` (one mean/std pair per name).
    chunks : dask/Zarr chunk sizes per dim (default 180 lat × 360 lon, 1 per time/depth).
    region_size : cells per written region per dim (default: one chunk row band = all lon,
        ``chunks["lat"]`` lat, 1 time/depth); must be multiples of *chunks*.
    resume : skip regions already marked done in an existing store with the same config hash.
    max_regions : stop after writing this many regions (time-limited jobs); call again to go on.
    netcdf_path : also write a compressed NetCDF copy once the Zarr store is complete.
    config : run configuration recorded in the attributes (its hash guards resuming).

    Returns the Zarr path. ``ds.attrs["aqqua_complete"]`` is ``"true"`` once every region is in.
    """
    import zarr

    products = _as_products(models)
    out_path = Path(out_path)
    ds = predict_lazy(products, cube, chunks)
    ds = cf.add_coord_attrs(ds)
    prov = _provenance(products, config)
    ds.attrs = cf.global_attrs(title, f"aqqua map predict -> {out_path.name}",
                               extra={**prov, "aqqua_complete": "false"})
    for v in ds.data_vars:
        ds[v].encoding = {"chunks": tuple(c[0] for c in ds[v].chunks)}

    markers = out_path.with_name(out_path.name + PROGRESS_SUFFIX)
    if out_path.exists():
        if overwrite:
            shutil.rmtree(out_path)
            shutil.rmtree(markers, ignore_errors=True)
        elif not resume:
            raise FileExistsError(f"{out_path} exists; pass resume=True or overwrite=True")
        else:
            old = xr.open_zarr(out_path, consolidated=False).attrs
            if old.get("aqqua_config_hash") != prov["aqqua_config_hash"]:
                raise ValueError(f"{out_path} was written with another model/config "
                                 f"(hash {old.get('aqqua_config_hash')}); use overwrite=True")
    if not out_path.exists():
        ds.to_zarr(out_path, mode="w", compute=False, consolidated=False)
    complete = xr.open_zarr(out_path, consolidated=False).attrs.get("aqqua_complete") == "true"
    if complete:
        if netcdf_path is not None:
            write_netcdf(out_path, netcdf_path)
        return out_path
    markers.mkdir(exist_ok=True)

    lat_chunk = ds.chunks["lat"][0] if "lat" in ds.chunks else 1
    rsize = {"lat": lat_chunk, "lon": ds.sizes.get("lon", 1)}
    rsize.update(region_size or {})
    regions = list(_regions(ds, rsize))
    todo = [r for r in regions if not (markers / _region_key(r)).exists()]
    if max_regions is not None:
        todo = todo[:max_regions]
    data_vars = list(ds.data_vars)
    bar = _progress(len(regions), len(regions) - len(todo), progress)
    for region in todo:
        part = ds[data_vars].isel(region).drop_vars(list(ds.coords), errors="ignore")
        part.to_zarr(out_path, region=region, mode="r+", consolidated=False)
        (markers / _region_key(region)).touch()
        bar.update(1)
    bar.close()

    done = sum((markers / _region_key(r)).exists() for r in regions)
    if done == len(regions):
        group = zarr.open_group(str(out_path), mode="r+")
        group.attrs["aqqua_complete"] = "true"
        shutil.rmtree(markers)  # completion now lives in the store's attributes
        if netcdf_path is not None:
            write_netcdf(out_path, netcdf_path)
    return out_path


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="map regions", unit="region", disable=not enabled)


def open_product(path: str | Path) -> xr.Dataset:
    """Open a product store written by :func:`predict_to_zarr`."""
    return xr.open_zarr(path, consolidated=False)


def write_netcdf(zarr_path: str | Path, netcdf_path: str | Path) -> Path:
    """Copy a finished product store to compressed NetCDF-4 (zlib level 4, float32)."""
    ds = open_product(zarr_path)
    if ds.attrs.get("aqqua_complete") != "true":
        raise ValueError(f"{zarr_path} is incomplete (aqqua_complete != 'true'); finish it first")
    enc = {v: {"zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan)} for v in ds.data_vars}
    netcdf_path = Path(netcdf_path)
    tmp = netcdf_path.with_suffix(netcdf_path.suffix + ".part")
    ds.to_netcdf(tmp, encoding=enc, engine="netcdf4")
    tmp.replace(netcdf_path)  # atomic: never a half-written .nc under the final name
    return netcdf_path
