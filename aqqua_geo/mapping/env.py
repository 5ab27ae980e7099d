"""Environmental cubes: open from files, Copernicus Marine or intake, and normalise them.

Every cube leaves :func:`open_env` in the same shape, whatever its source:

* dims a subset of ``time``/``month``, ``depth``, ``lat``, ``lon``; lat ascending, lon in
  [-180, 180) ascending (0..360 inputs are wrapped and reordered), depth in metres positive
  down (``positive="up"``/elevation axes are flipped);
* variables renamed to the package's short names (the names of the bundled cube and of the
  model features: ``temperature``, ``salinity``, ``nitrate``, ``chla``, ``mld`` ...), each with a
  CF ``standard_name`` and ``units``; the source name is kept in ``attrs["source_name"]``;
  temperatures in kelvin are converted to degC;
* optionally reduced to a monthly climatology (``month`` dimension, 1..12).

Sources: ``open_env(path)`` (NetCDF or Zarr), ``open_env("copernicus:<dataset_id>")``,
``open_env("intake:<catalog.yaml or catalog name>#<entry>")`` and ``open_bundled_env()``.
Everything stays lazy (dask) until computed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as _dt
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from aqqua_geo.mapping.variables import VARIABLES  # the one variable table

PACKAGE_CATALOG = Path(__file__).resolve().parent / "catalog.yaml"

__all__ = [
    "EnvSourceError",
    "VARIABLES",
    "open_env",
    "open_bundled_env",
    "open_copernicus",
    "open_intake",
    "load_catalog",
    "default_catalog_path",
    "normalise",
    "monthly_climatology",
    "resolve_variable",
]


class EnvSourceError(RuntimeError):
    """An environmental source could not be opened (offline, no credentials, bad entry)."""


_ALIAS_TO_NAME: dict[str, str] = {a.lower(): name for name, spec in VARIABLES.items()
                                  for a in (name, *spec["aliases"])}

_COORD_ALIASES: dict[str, tuple[str, ...]] = {
    "lat": ("lat", "latitude", "nav_lat", "y", "lats", "latitude_t"),
    "lon": ("lon", "longitude", "nav_lon", "x", "lons", "long", "longitude_t"),
    "depth": ("depth", "deptht", "depthu", "depthv", "depthw", "lev", "z", "level", "olevel",
              "elevation", "altitude", "height", "pressure"),
    "time": ("time", "t", "valid_time", "time_counter"),
}
_COORD_STANDARD_NAMES = {"latitude": "lat", "longitude": "lon", "depth": "depth", "time": "time",
                         "altitude": "depth", "height": "depth"}
_AXIS_TO_COORD = {"Y": "lat", "X": "lon", "Z": "depth", "T": "time"}
_KELVIN_UNITS = {"k", "kelvin", "degk", "deg_k", "degrees_k"}

COPERNICUS_HOSTS: tuple[str, ...] = ("auth.marine.copernicus.eu", "stac.marine.copernicus.eu")
_LOGIN_HINT = (
    "log in once with `copernicusmarine login` (writes ~/.copernicusmarine/"
    ".copernicusmarine-credentials) or set COPERNICUSMARINE_SERVICE_USERNAME and "
    "COPERNICUSMARINE_SERVICE_PASSWORD; free account at https://data.marine.copernicus.eu/register"
)


# --- normalisation ---------------------------------------------------------------------------


def resolve_variable(name: str) -> str:
    """Canonical name of a variable given a canonical name, an alias or a CF standard name."""
    return _ALIAS_TO_NAME.get(name.lower(), name)


def _find_coord(ds: xr.Dataset, target: str) -> str | None:
    candidates = [c for c in list(ds.coords) + list(ds.dims) if isinstance(c, str)]
    for c in candidates:
        if c.lower() in _COORD_ALIASES[target] and c in ds.variables:
            return c
    for c in candidates:
        if c not in ds.variables:
            continue
        attrs = ds[c].attrs
        if _COORD_STANDARD_NAMES.get(str(attrs.get("standard_name", "")).lower()) == target:
            return c
        if _AXIS_TO_COORD.get(str(attrs.get("axis", "")).upper()) == target:
            return c
    return None


def _rename_coords(ds: xr.Dataset) -> tuple[xr.Dataset, bool]:
    """Rename lat/lon/depth/time coordinates; returns (ds, depth_was_up)."""
    renames: dict[str, str] = {}
    depth_up = False
    for target in ("lat", "lon", "depth", "time"):
        c = _find_coord(ds, target)
        if c is None:
            continue
        if ds[c].ndim == 0:
            continue  # scalar coordinate (e.g. the time of a snapshot): left as it is
        if ds[c].ndim != 1:
            raise ValueError(
                f"coordinate {c!r} is {ds[c].ndim}-D: curvilinear grids are not supported; "
                "regrid to a regular lat/lon grid first"
            )
        if target == "depth":
            positive = str(ds[c].attrs.get("positive", "")).lower()
            depth_up = positive == "up" or (
                positive != "down" and c.lower() in ("elevation", "altitude", "height")
            )
        if c != target:
            renames[c] = target
    if renames:
        ds = ds.rename(renames)
    return ds, depth_up


def _normalise_lon(ds: xr.Dataset) -> xr.Dataset:
    lon = ds["lon"].values.astype("f8")
    wrapped = ((lon + 180.0) % 360.0) - 180.0
    if np.array_equal(wrapped, lon) and np.all(np.diff(lon) > 0):
        return ds
    order = np.argsort(wrapped, kind="stable")
    ds = ds.isel(lon=order)  # a roll for 0..360 grids; lazy on dask arrays
    ds = ds.assign_coords(lon=("lon", wrapped[order], ds["lon"].attrs))
    _, first = np.unique(ds["lon"].values, return_index=True)  # 0 and 360 both present
    if first.size != ds.sizes["lon"]:
        ds = ds.isel(lon=np.sort(first))
    # bounds of the old axis no longer match the wrapped centres
    return ds.drop_vars([v for v in ("lon_bnds", "lon_bounds") if v in ds.variables])


def _normalise_depth(ds: xr.Dataset, depth_up: bool) -> xr.Dataset:
    depth = ds["depth"].values.astype("f8")
    if depth_up or (np.nanmax(depth) <= 0 and np.nanmin(depth) < 0):
        ds = ds.assign_coords(depth=("depth", -depth, ds["depth"].attrs))
    ds["depth"].attrs.update(standard_name="depth", units="m", positive="down", axis="Z")
    if ds.sizes["depth"] > 1 and not np.all(np.diff(ds["depth"].values) > 0):
        ds = ds.sortby("depth")
    return ds


def _canonical_var(name: str, da: xr.DataArray) -> str | None:
    canon = _ALIAS_TO_NAME.get(name.lower())
    if canon is None:
        canon = _ALIAS_TO_NAME.get(str(da.attrs.get("standard_name", "")).lower())
    return canon


def _normalise_vars(ds: xr.Dataset) -> xr.Dataset:
    spatial = {"lat", "lon"}
    drop = [v for v in ds.data_vars if not spatial & set(ds[v].dims)]  # bounds, grid mappings
    ds = ds.drop_vars(drop)
    for v in ds.data_vars:  # do not point at a grid-mapping variable that was dropped
        if ds[v].attrs.get("grid_mapping") in drop:
            ds[v].attrs.pop("grid_mapping")
    renames: dict[str, str] = {}
    for name in list(ds.data_vars):
        canon = _canonical_var(str(name), ds[name])
        if canon is None or canon in renames.values():
            continue
        if canon != name and canon in ds.data_vars:
            continue  # the canonical name is already taken by another variable
        renames[name] = canon
    ds = ds.rename(renames)
    for old, new in renames.items():
        da = ds[new]
        spec = VARIABLES[new]
        attrs = dict(da.attrs)
        attrs.setdefault("source_name", old)
        units = str(attrs.get("units", "")).strip()
        if new == "temperature" and units.lower() in _KELVIN_UNITS:
            da = da - 273.15  # lazy on dask arrays
            attrs["units_original"] = units
            units = "degC"
        if new == "salinity" and units.lower() in ("1e-3", "0.001", "psu", "pss-78", "1"):
            units = "1"
        if "standard_name" in spec:
            src_std = attrs.get("standard_name")
            if src_std and src_std != spec["standard_name"]:
                attrs.setdefault("source_standard_name", src_std)
            # keep a source standard name that names the same quantity more precisely
            if not src_std or _ALIAS_TO_NAME.get(str(src_std).lower()) != new:
                attrs["standard_name"] = spec["standard_name"]
        else:
            attrs.setdefault("long_name", spec["long_name"])
        attrs["units"] = units or spec["units"]
        ds[new] = da.assign_attrs(attrs)
    return ds


def normalise(ds: xr.Dataset, variables: Sequence[str] | None = None) -> xr.Dataset:
    """Return ``ds`` with CF names/units, lon in [-180, 180), lat ascending, depth positive down.

    ``variables`` (canonical names, aliases or CF standard names) selects data variables after
    renaming; unknown names raise ``KeyError`` listing what the cube has.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    ds, depth_up = _rename_coords(ds)
    missing = [c for c in ("lat", "lon") if c not in ds.coords]
    if missing:
        raise ValueError(f"cube has no {' / '.join(missing)} coordinate (coords: {list(ds.coords)})")
    ds = _normalise_lon(ds)
    ds["lon"].attrs.update(standard_name="longitude", units="degrees_east", axis="X")
    if ds.sizes["lat"] > 1 and ds["lat"].values[0] > ds["lat"].values[-1]:
        ds = ds.isel(lat=slice(None, None, -1))
    elif ds.sizes["lat"] > 1 and not np.all(np.diff(ds["lat"].values) > 0):
        ds = ds.sortby("lat")
    ds["lat"].attrs.update(standard_name="latitude", units="degrees_north", axis="Y")
    if "depth" in ds.coords and ds["depth"].ndim == 1 and "depth" in ds.dims:
        ds = _normalise_depth(ds, depth_up)
    elif "depth" in ds.coords and "depth" not in ds.dims:
        ds = ds.drop_vars("depth") if ds["depth"].ndim else ds  # scalar level: keep as is
    if "time" in ds.coords and "time" in ds.dims and ds.sizes["time"] > 1:
        if not np.all(np.diff(ds["time"].values.astype("datetime64[ns]").astype("i8")) > 0):
            ds = ds.sortby("time")
    ds = _normalise_vars(ds)
    if variables is not None:
        wanted = [resolve_variable(v) for v in variables]
        absent = [v for v, w in zip(variables, wanted) if w not in ds.data_vars]
        if absent:
            raise KeyError(f"variables {absent} not in cube; it has {sorted(map(str, ds.data_vars))}")
        ds = ds[wanted]
    return ds


def monthly_climatology(ds: xr.Dataset) -> xr.Dataset:
    """Mean over years for each calendar month: ``time`` -> ``month`` (1..12)."""
    if "time" not in ds.dims:
        raise ValueError("a monthly climatology needs a time dimension; this cube has none")
    clim = ds.groupby("time.month").mean("time", keep_attrs=True)
    clim["month"].attrs.update(long_name="month of year", units="1")
    for v in clim.data_vars:
        clim[v].attrs["cell_methods"] = "time: mean within years time: mean over years"
    t = ds["time"].values
    clim.attrs["climatology_period"] = f"{np.datetime_as_string(t.min(), 'D')}/{np.datetime_as_string(t.max(), 'D')}"
    return clim


def _add_history(ds: xr.Dataset, what: str) -> xr.Dataset:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{now}: aqqua_geo.mapping.env {what}"
    old = ds.attrs.get("history", "")
    ds.attrs["history"] = f"{old}\n{line}" if old else line
    return ds


# --- sources -----------------------------------------------------------------------------------


def _zarr_is_consolidated(path: Path) -> bool:
    """Whether a Zarr store has consolidated metadata (v2 ``.zmetadata`` or v3 ``zarr.json``)."""
    if (path / ".zmetadata").exists():
        return True
    meta = path / "zarr.json"
    if meta.exists():
        import json

        return json.loads(meta.read_text()).get("consolidated_metadata") is not None
    return False


def _open_path(path: Path, chunks: Any) -> xr.Dataset:
    if not path.exists():
        raise FileNotFoundError(f"environmental cube not found: {path}")
    is_zarr = path.suffix == ".zarr" or (path.is_dir() and ((path / "zarr.json").exists()
                                                           or (path / ".zgroup").exists()))
    if is_zarr:
        return xr.open_zarr(path, chunks=chunks, consolidated=_zarr_is_consolidated(path))
    if path.is_dir():
        raise ValueError(f"{path} is a directory but not a Zarr store")
    return xr.open_dataset(path, chunks=chunks)


def open_env(
    source: str | Path | xr.Dataset,
    variables: Sequence[str] | None = None,
    climatology: bool = False,
    chunks: Any = None,
    **kwargs: Any,
) -> xr.Dataset:
    """Open and normalise an environmental cube.

    ``source``: an ``xarray.Dataset``; a NetCDF/Zarr path; ``"copernicus:<dataset_id>"``
    (``kwargs`` go to ``copernicusmarine.open_dataset``: subsetting bounds, dates...);
    ``"intake:<catalog>#<entry>"`` where ``<catalog>`` is a YAML path or empty for the package
    catalog (``aqqua_geo/mapping/catalog.yaml``); ``"bundled"`` for :func:`open_bundled_env`.
    ``climatology=True`` returns the monthly climatology (``month`` dimension).
    ``chunks`` defaults to the on-disk chunking (``{}``), so reads stay lazy.
    """
    chunks = {} if chunks is None else chunks
    if isinstance(source, xr.Dataset):
        ds, what = source, "normalise(Dataset)"
    elif isinstance(source, str) and source.startswith("copernicus:"):
        dataset_id = source.split(":", 1)[1]
        ds, what = open_copernicus(dataset_id, variables=variables, raw=True, **kwargs), source
    elif isinstance(source, str) and source.startswith("intake:"):
        ds, what = open_intake(source.split(":", 1)[1], raw=True, **kwargs), source
    elif isinstance(source, str) and source == "bundled":
        return open_bundled_env(variables=variables)
    else:
        ds, what = _open_path(Path(source), chunks), f"open_env({source})"
    ds = normalise(ds, variables)
    if climatology:
        ds = monthly_climatology(ds)
        what += " + monthly climatology"
    return _add_history(ds, what)


def _bundled_env_file() -> Path:
    from aqqua_geo import data

    folder = data.path("env")
    files = sorted(list(folder.glob("*.nc")) + list(folder.glob("*.zarr")))
    if len(files) != 1:
        raise FileNotFoundError(
            f"expected exactly one bundled cube (*.nc or *.zarr) in {folder}, found {[f.name for f in files]}"
        )
    return files[0]


def open_bundled_env(variables: Sequence[str] | None = None) -> xr.Dataset:
    """The shipped global 1° cube (Drago et al. 2022 WOA-derived 0-200 m predictors), normalised.

    Variables: ``temperature, salinity, silicate, phosphate, nitrate, oxygen, chla, bathymetry,
    dist_coast`` on (lat, lon), NaN on land. See ``aqqua_geo/data/SOURCES.md``.
    """
    path = _bundled_env_file()
    ds = normalise(_open_path(path, chunks={}), variables)
    return _add_history(ds, f"open_bundled_env({path.name})")


# --- Copernicus Marine ---------------------------------------------------------------------


def _check_reachable(host: str, port: int = 443, timeout: float = 3.0) -> None:
    """Raise ``EnvSourceError`` unless ``host`` resolves and accepts TCP within ``timeout`` s."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:  # getaddrinfo has no timeout of its own: run it in a thread we can abandon
        infos = pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise EnvSourceError(f"Copernicus Marine unreachable: DNS lookup of {host} timed out after {timeout:g} s (offline?)") from None
    except OSError as exc:
        raise EnvSourceError(f"Copernicus Marine unreachable: cannot resolve {host} ({exc}; offline?)") from None
    finally:
        pool.shutdown(wait=False)
    family, socktype, proto, _, addr = infos[0]
    try:
        with socket.socket(family, socktype, proto) as s:
            s.settimeout(timeout)
            s.connect(addr)
    except OSError as exc:
        raise EnvSourceError(f"Copernicus Marine unreachable: no TCP connection to {host}:{port} ({exc})") from None


@contextlib.contextmanager
def _env_vars(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def open_copernicus(
    dataset_id: str,
    variables: Sequence[str] | None = None,
    *,
    connect_timeout: float = 3.0,
    raw: bool = False,
    **subset: Any,
) -> xr.Dataset:
    """Lazily open a Copernicus Marine ARCO dataset with ``copernicusmarine.open_dataset``.

    ``variables`` are the dataset's own names (``thetao``, ``no3``...) or canonical names; when
    omitted, the package catalog's entry for ``dataset_id`` supplies them. ``subset`` passes
    bounds/dates (``minimum_longitude``, ``start_datetime``...). Fails within ~``connect_timeout``
    seconds when offline (reachability check, no toolbox retries) and raises with login
    instructions when the toolbox finds no credentials (it then returns ``None``).
    Returns the normalised cube unless ``raw``.
    """
    if variables is None:
        variables = _catalog_variables(dataset_id)
    src_vars = _copernicus_names(dataset_id, variables) if variables else None
    for host in COPERNICUS_HOSTS:
        _check_reachable(host, timeout=connect_timeout)
    import copernicusmarine

    try:
        with _env_vars(COPERNICUSMARINE_HTTPS_RETRIES="0",
                       COPERNICUSMARINE_HTTPS_TIMEOUT=os.environ.get("COPERNICUSMARINE_HTTPS_TIMEOUT", "30")):
            ds = copernicusmarine.open_dataset(dataset_id=dataset_id, variables=src_vars, **subset)
    except Exception as exc:  # the toolbox raises many types, some with empty messages
        raise EnvSourceError(
            f"Copernicus Marine dataset {dataset_id!r} could not be opened: "
            f"{type(exc).__name__}: {str(exc) or 'no message'}; check the dataset id and credentials ({_LOGIN_HINT})"
        ) from exc
    if ds is None:
        raise EnvSourceError(f"Copernicus Marine returned nothing for {dataset_id!r}: no credentials found; {_LOGIN_HINT}")
    if raw:
        return ds
    ds = normalise(ds, [resolve_variable(v) for v in src_vars] if src_vars else None)
    return _add_history(ds, f"open_copernicus({dataset_id})")


def _copernicus_names(dataset_id: str, variables: Sequence[str]) -> list[str]:
    """Translate canonical names to the dataset's names using the catalog entry's metadata."""
    mapping = {}
    entry = _catalog_entry_for(dataset_id)
    if entry is not None:
        mapping = {v: k for k, v in entry.metadata.get("variables", {}).items()}
    return [mapping.get(v, v) for v in variables]


# --- intake catalogs -------------------------------------------------------------------------


def default_catalog_path() -> Path:
    """The catalog :func:`open_env` reads: ``$AQQUA_CATALOG``, else the package's own
    ``aqqua_geo/mapping/catalog.yaml`` (the repository's ``catalogs/aqqua.yaml`` is its
    user-facing copy)."""
    env = os.environ.get("AQQUA_CATALOG")
    return Path(env) if env else PACKAGE_CATALOG


def load_catalog(path: str | Path | None = None) -> Any:
    """Load an intake 2 catalog (the package catalog by default)."""
    import intake

    path = Path(path) if path else default_catalog_path()
    if not path.is_file():
        raise FileNotFoundError(f"intake catalog not found: {path} (set AQQUA_CATALOG to point at one)")
    return intake.from_yaml_file(str(path))


def _catalog_entry_for(dataset_id: str) -> Any:
    try:
        cat = load_catalog()
    except FileNotFoundError:
        return None
    for name in cat.entries:
        entry = cat.entries[name]
        if entry.kwargs.get("dataset_id") == dataset_id:
            return entry
    return None


def _catalog_variables(dataset_id: str) -> list[str] | None:
    entry = _catalog_entry_for(dataset_id)
    return list(entry.kwargs.get("variables") or []) or None if entry is not None else None


def open_intake(spec: str, variables: Sequence[str] | None = None, raw: bool = False, **kwargs: Any) -> xr.Dataset:
    """Read ``"<catalog>#<entry>"`` (empty catalog = package catalog) and normalise it."""
    cat_path, sep, entry = spec.rpartition("#")
    if not sep or not entry:
        raise ValueError(f"intake source must be 'intake:<catalog>#<entry>', got 'intake:{spec}'")
    cat = load_catalog(cat_path or None)
    if entry not in cat.entries:
        raise KeyError(f"entry {entry!r} not in catalog {cat_path or default_catalog_path()}; entries: {sorted(cat.entries)}")
    try:
        ds = cat[entry].read(**kwargs)
    except EnvSourceError:
        raise
    except Exception as exc:
        raise EnvSourceError(f"intake entry {entry!r} could not be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"intake entry {entry!r} produced {type(ds).__name__}, not an xarray.Dataset")
    if raw:
        return ds
    return _add_history(normalise(ds, variables), f"open_intake({spec})")
