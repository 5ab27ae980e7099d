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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import xarray as xr

from aqqua_geo._io import atomic_path
from aqqua_geo.mapping import cf

if TYPE_CHECKING:  # annotations only: BRTEnsemble.grid imports this module
    from aqqua_geo.mapping.model import BRTEnsemble

PROGRESS_SUFFIX = ".regions"  # sibling folder of region markers: the store holds only zarr files
CANONICAL_ORDER = ("time", "month", "depth", "lat", "lon")
MG_PER_PG = 1e18  # 1 Pg = 1e15 g = 1e18 mg
CLIMATOLOGY_CELL_METHODS = "time: mean within years time: mean over years"  # CF 7.4
_TIME_ENCODING = ("units", "calendar", "dtype")  # kept on time coordinates: bounds share the axis's units


def _coord_encoding(da: xr.DataArray) -> dict[str, Any]:
    """Encoding of a coordinate: no fill value; a datetime keeps its units, calendar and dtype."""
    enc: dict[str, Any] = {"_FillValue": None}
    if np.issubdtype(da.dtype, np.datetime64):
        enc.update({k: v for k, v in da.encoding.items() if k in _TIME_ENCODING})
    return enc


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
    """One mapped quantity: a fitted ensemble, its CF product kind (see ``cf.PRODUCTS``), the
    layer or horizon it describes and the skill floor it is judged against.

    *depth_m*: ``[top, bottom]`` of a layer (m) or one depth (a flux horizon): a scalar CF depth
    coordinate (with bounds for a layer). *skill_metric* (``"r2"``/``"r2_log10"``) of the
    model's spatial-CV scores is compared with *min_skill*: below it the product is flagged
    ``aqqua_skill_flag = "below_floor"`` in its attributes.
    """

    model: BRTEnsemble
    kind: str = "biomass"
    group: str = ""
    depth_m: float | Sequence[float] | None = None
    skill_metric: str = "r2"
    min_skill: float | None = None

    def skill(self) -> float | None:
        """The model's spatial-CV score named by ``skill_metric`` (None when not scored)."""
        v = (self.model.cv_scores_ or {}).get(self.skill_metric)
        return None if v is None else float(v)

    def skill_flag(self) -> str:
        """``"ok"``, ``"below_floor"`` or ``"not_scored"``."""
        v = self.skill()
        if v is None or not np.isfinite(v):
            return "not_scored"
        return "ok" if self.min_skill is None or v >= self.min_skill else "below_floor"


def _as_products(models: BRTEnsemble | Mapping[str, Any]) -> dict[str, Product]:
    if not isinstance(models, Mapping):  # one ensemble
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
        skill = _skill_attrs(prod)
        for i, stat in enumerate(("mean", "std")):
            da = stacked.isel(stat=i, drop=True)
            da.attrs = {**cf.product_attrs(prod.kind, prod.group or name, stat,
                                           n_members=len(prod.model.boosters_)), **skill}
            out[f"{name}_{stat}"] = da
        flag = extrapolation_flag(prod.model, fields)
        if flag is not None:
            flag.attrs = cf.extrapolation_attrs(prod.group or name, prod.model.features_)
            out[f"{name}_extrapolated"] = flag
    coords = {d: cube[d] for d in dims if d in cube.coords}
    clim = cube["time"].attrs.get("climatology") if "time" in coords else None
    if clim:  # a CF climatological time axis (monthly climatology): its bounds and cell methods
        if clim not in cube.variables:
            raise KeyError(f"cube time axis names climatology bounds {clim!r}, which it lacks")
        coords[clim] = cube[clim]
        for v in out.values():
            if "cell_methods" in v.attrs:
                # the checker's CF 7.4 form allows nothing after the time methods: the area
                # method moves to the comment
                v.attrs["comment"] = f"{v.attrs.get('comment', '')}; cell_methods also {v.attrs['cell_methods']}".lstrip("; ")
                v.attrs["cell_methods"] = CLIMATOLOGY_CELL_METHODS
    ds = xr.Dataset(out, coords=coords)
    return _add_depth_coords(ds, products)


def _skill_attrs(prod: Product) -> dict[str, Any]:
    v = prod.skill()
    attrs: dict[str, Any] = {"aqqua_skill_metric": f"spatial-block CV {prod.skill_metric}",
                             "aqqua_skill_flag": prod.skill_flag()}
    if v is not None:
        attrs["aqqua_skill"] = float(v)
    if prod.min_skill is not None:
        attrs["aqqua_skill_floor"] = float(prod.min_skill)
    return attrs


def extrapolation_flag(model: BRTEnsemble, fields: Mapping[str, xr.DataArray]) -> xr.DataArray | None:
    """1 where any predictor lies outside the range it had in the training data, 0 inside,
    -1 where a predictor is missing (land); None for models saved without training ranges."""
    lo = model.training_summary_.get("feature_min")
    hi = model.training_summary_.get("feature_max")
    if lo is None or hi is None:
        return None
    outside = None
    valid = None
    for f, a, b in zip(model.features_, lo, hi):
        x = fields[f]
        o = (x < a) | (x > b)
        outside = o if outside is None else outside | o
        v = np.isfinite(x)
        valid = v if valid is None else valid & v
    return xr.where(valid, outside.astype("i1"), -1).astype("i1")


def _depth_name(depth_m: Any) -> str:
    if isinstance(depth_m, (list, tuple)):
        return f"depth_{depth_m[0]:g}_{depth_m[1]:g}m".replace(".", "p")
    return f"depth_{float(depth_m):g}m".replace(".", "p")


def _add_depth_coords(ds: xr.Dataset, products: Mapping[str, Product]) -> xr.Dataset:
    """A scalar CF depth coordinate per layer/horizon (bounds for layers), named by each
    product variable's ``coordinates`` encoding."""
    for name, prod in products.items():
        if prod.depth_m is None:
            continue
        cname = _depth_name(prod.depth_m)
        if cname not in ds.coords:
            layer = isinstance(prod.depth_m, (list, tuple))
            value = (float(prod.depth_m[0]) + float(prod.depth_m[1])) / 2 if layer else float(prod.depth_m)
            attrs = {"standard_name": "depth", "long_name": "depth below sea surface", "units": "m",
                     "positive": "down", "axis": "Z"}
            if layer:
                attrs["bounds"] = f"{cname}_bnds"
                ds = ds.assign_coords({f"{cname}_bnds": ("bnds", np.asarray(prod.depth_m, "f8"))})
            ds = ds.assign_coords({cname: ((), value, attrs)})
        for v in (f"{name}_mean", f"{name}_std", f"{name}_extrapolated"):
            if v in ds:
                ds[v].attrs["aqqua_depth_coordinate"] = cname
    return ds


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
    extra_attrs: Mapping[str, Any] | None = None,
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
    extra_attrs : more global attributes (ACDD summary, keywords, licence ...).

    The template is written under a temporary name and renamed into place, so a store under
    *out_path* always has its full metadata: a job killed at any moment can be resumed. The
    finished store's metadata are consolidated.

    Returns the Zarr path. ``ds.attrs["aqqua_complete"]`` is ``"true"`` once every region is in.
    """
    import zarr

    products = _as_products(models)
    out_path = Path(out_path)
    ds = predict_lazy(products, cube, chunks)
    ds = cf.add_coord_attrs(ds)
    prov = _provenance(products, config)
    ds.attrs = cf.global_attrs(title, f"aqqua map predict -> {out_path.name}",
                               extra={**cf.coverage_attrs(ds), **dict(extra_attrs or {}), **prov,
                                      "aqqua_complete": "false"})
    for v in ds.data_vars:
        enc: dict[str, Any] = {"chunks": tuple(c[0] for c in ds[v].chunks),
                               "coordinates": ds[v].attrs.pop("aqqua_depth_coordinate", None)}
        if ds[v].dtype == np.int8:
            enc["_FillValue"] = np.int8(-1)
        ds[v].encoding = enc
    for c in ds.coords:  # coordinates and bounds never hold missing values
        ds[c].encoding = _coord_encoding(ds[c])

    markers = out_path.with_name(out_path.name + PROGRESS_SUFFIX)
    if out_path.exists():
        if overwrite:
            shutil.rmtree(out_path)
            shutil.rmtree(markers, ignore_errors=True)
        elif not resume:
            raise FileExistsError(f"{out_path} exists; pass resume=True or overwrite=True")
        else:
            old = open_product(out_path).attrs
            if old.get("aqqua_config_hash") != prov["aqqua_config_hash"]:
                raise ValueError(f"{out_path} was written with another model/config "
                                 f"(hash {old.get('aqqua_config_hash')}); use overwrite=True")
    if not out_path.exists():
        _write_template(ds, out_path)
    complete = open_product(out_path).attrs.get("aqqua_complete") == "true"
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
        _consolidate(out_path)
        shutil.rmtree(markers)  # completion now lives in the store's attributes
        if netcdf_path is not None:
            write_netcdf(out_path, netcdf_path)
    return out_path


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="map regions", unit="region", disable=not enabled)


def _write_template(ds: xr.Dataset, out_path: Path) -> None:
    """Metadata and coordinates of the store, written under a temporary name, then renamed:
    *out_path* never exists half-written (a kill leaves only ``<out>.template-*``, removed by
    the next call)."""
    for stale in out_path.parent.glob(f"{out_path.name}.template-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_path.with_name(f"{out_path.name}.template-{os.getpid()}")
    ds.to_zarr(tmp, mode="w", compute=False, consolidated=False)
    _rename(tmp, out_path)


def _rename(src: Path, dst: Path) -> None:
    """Atomic rename of a finished template into place (a seam for the kill tests)."""
    os.replace(src, dst)


def _consolidate(path: Path) -> None:
    import warnings

    import zarr

    with warnings.catch_warnings():  # zarr 3: consolidated metadata are not yet in the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def open_product(path: str | Path) -> xr.Dataset:
    """Open a product store written by :func:`predict_to_zarr` (consolidated once complete)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "failed to open consolidated": in progress
        return xr.open_zarr(path, consolidated=None)


def write_netcdf(zarr_path: str | Path, netcdf_path: str | Path) -> Path:
    """Copy a finished product store to compressed NetCDF-4 (zlib level 4, float32)."""
    ds = open_product(zarr_path)
    if ds.attrs.get("aqqua_complete") != "true":
        raise ValueError(f"{zarr_path} is incomplete (aqqua_complete != 'true'); finish it first")
    enc: dict[str, dict[str, Any]] = {}
    for v in ds.data_vars:
        enc[v] = {"zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan), "dtype": "f4"}
        if "flag_values" in ds[v].attrs:  # extrapolation flags: int8, -1 = no prediction
            enc[v] = {"zlib": True, "complevel": 4, "_FillValue": np.int8(-1), "dtype": "i1"}
            ds[v].attrs["flag_values"] = np.asarray(ds[v].attrs["flag_values"], dtype="i1")
        # the per-variable `coordinates` (scalar depth) travel in attrs: encodings are replaced
        coords = ds[v].encoding.pop("coordinates", None)
        if coords:
            ds[v].attrs["coordinates"] = coords
    for c in ds.coords:
        enc[c] = _coord_encoding(ds[c])
    netcdf_path = Path(netcdf_path)
    with atomic_path(netcdf_path) as tmp:  # never a half-written .nc under the final name
        ds.to_netcdf(tmp, encoding=enc, engine="netcdf4")
    return netcdf_path
