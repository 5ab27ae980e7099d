"""EcoPart UVP5 "raw" particle exports -> size spectra per depth bin -> POC flux profiles.

An EcoPart raw export holds, per cast, a ``*_PAR_raw_*.tsv`` table with one row per
(1-m depth partition, particle area in pixels): ``depth imgcount area nbr greylimit1-3``
(``nbr`` particles of ``area`` px seen in the ``imgcount`` images of that metre), plus an
``*_Export_metadata_summary.tsv`` with one row per cast (position, date, calibration).

Processing follows EcoPart's own (``part_app/funcs/uvp_sample_import.py``):

* pixel area -> area in mm2 with the instrument calibration ``area_mm2 = acq_aa * area_px **
  acq_exp``, ESD = 2 sqrt(area_mm2 / pi);
* imaged volume of a depth bin = sum over its 1-m partitions of ``imgcount * acq_volimage``
  (counted once per partition, not per particle row);
* counts binned into EcoPart's 45 detailed ESD classes (:data:`ECOPART_CLASS_EDGES_MM`), by
  default in 5-m depth bins from the surface;
* the depth in the raw export already includes the instrument depth offset
  (``default_depthoffset``/``acq_depthoffset``, added by EcoPart before the 1-m partition),
  so none is added again unless ``depth_offset_m`` is given.

The number spectrum n(d) = count / volume / class width (# L-1 mm-1) feeds
:func:`aqqua_geo.mapping.flux.guidi_flux`. :func:`window_flux` pools the counts and volumes of
the bins in a depth window (e.g. 20 m around an export horizon) before applying the relation,
with the Poisson counting error and the share of the flux carried by the largest class: a
5-m bin holds a handful of > 1 mm particles, which carry most of A d^b.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from aqqua_geo.mapping.flux import (
    GUIDI2008,
    FluxRelation,
    class_weights,
    flux_at_depth,
    guidi_flux,
    guidi_flux_poisson_sd,
)

__all__ = [
    "ECOPART_CLASS_EDGES_MM",
    "EcoPartCast",
    "read_metadata",
    "read_par",
    "read_ecopart",
    "esd_mm",
    "psd",
    "flux_profile",
    "window_counts",
    "window_flux",
    "flux_summary",
    "volumes_table",
    "read_zoo",
    "plot_flux_profiles",
]

#: EcoPart's detailed particle size classes (ESD, mm): 45 classes, bounds in a 2^(1/3)
#: progression from 1 um; the last class is open-ended (upper bound 1e8 in EcoPart).
ECOPART_CLASS_EDGES_MM = np.array([
    0.001, 0.00126, 0.00159, 0.002, 0.00252, 0.00317, 0.004, 0.00504, 0.00635, 0.008,
    0.0101, 0.0127, 0.016, 0.0202, 0.0254, 0.032, 0.0403, 0.0508, 0.064, 0.0806,
    0.102, 0.128, 0.161, 0.203, 0.256, 0.323, 0.406, 0.512, 0.645, 0.813,
    1.02, 1.29, 1.63, 2.05, 2.58, 3.25, 4.1, 5.16, 6.5, 8.19,
    10.3, 13.0, 16.4, 20.6, 26.0, 1e8,
])

_PAR_COLUMNS = ("depth", "imgcount", "area", "nbr")
_ZOO_COLUMNS = ("objid", "name", "depth_including_offset", "area", "esd")
_META_REQUIRED = ("profileid", "latitude", "longitude", "sampledate", "acq_aa", "acq_exp", "acq_volimage")


@dataclass
class EcoPartCast:
    """One UVP cast: calibration, position and its raw particle table."""

    profile_id: str
    lat: float
    lon: float
    datetime: pd.Timestamp
    acq_aa: float
    acq_exp: float
    acq_volimage_l: float
    depth_offset_m: float
    par: pd.DataFrame = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read ``*_Export_metadata_summary.tsv`` (a file, or the folder that holds one)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*metadata_summary*.tsv"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one *metadata_summary*.tsv in {path}, found {len(found)}")
        path = found[0]
    meta = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in _META_REQUIRED if c not in meta.columns]
    if missing:
        raise ValueError(f"{path.name}: missing metadata column(s) {missing}")
    for col in ("latitude", "longitude", "acq_aa", "acq_exp", "acq_volimage", "acq_depthoffset",
                "default_depthoffset"):
        if col in meta.columns:
            meta[col] = pd.to_numeric(meta[col].replace("", np.nan), errors="coerce")
    meta["sampledate"] = pd.to_datetime(meta["sampledate"], utc=True, errors="coerce")
    return meta


def read_par(path: str | Path) -> pd.DataFrame:
    """Read one ``*_PAR_raw_*.tsv`` and validate it (integer counts, positive image counts)."""
    path = Path(path)
    par = pd.read_csv(path, sep="\t")
    missing = [c for c in _PAR_COLUMNS if c not in par.columns]
    if missing:
        raise ValueError(f"{path.name}: not an EcoPart PAR raw table, missing column(s) {missing}")
    bad = par[list(_PAR_COLUMNS)].isna().any(axis=1) | (par["imgcount"] <= 0) | (par["area"] <= 0) | (par["nbr"] < 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path.name}: invalid row {row + 2} (NaN, imgcount<=0, area<=0 or nbr<0): "
                         f"{par.iloc[row][list(_PAR_COLUMNS)].to_dict()}")
    per_depth = par.groupby("depth")["imgcount"].nunique()
    if (per_depth > 1).any():
        d = per_depth[per_depth > 1].index[0]
        raise ValueError(f"{path.name}: depth {d} m has several imgcount values; cannot count its volume")
    return par


def _profile_from_name(name: str) -> str | None:
    m = re.match(r"^\d{14}_(.+?)_PAR_raw", name)
    return m.group(1) if m else None


def read_ecopart(path: str | Path, depth_offset_m: float = 0.0) -> list[EcoPartCast]:
    """Read every cast of an EcoPart raw export folder that has a PAR file.

    ``depth_offset_m`` is added to the PAR depths; EcoPart has already applied the
    instrument offset to raw exports, so leave it at 0 for them.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"EcoPart export folder not found: {folder}")
    meta = read_metadata(folder)
    by_file = {}
    if "Particle filename" in meta.columns:
        by_file = {r["Particle filename"]: r for _, r in meta.iterrows()}
    by_profile = {r["profileid"]: r for _, r in meta.iterrows()}
    casts = []
    for par_path in sorted(folder.glob("*_PAR_raw_*.tsv")):
        row = by_file.get(par_path.name)
        if row is None:
            row = by_profile.get(_profile_from_name(par_path.name) or "")
        if row is None:
            raise ValueError(f"{par_path.name}: no matching cast in the metadata summary")
        par = read_par(par_path)
        if depth_offset_m:
            par = par.assign(depth=par["depth"] + depth_offset_m)
        offset = row.get("acq_depthoffset")
        if offset is None or pd.isna(offset):
            offset = row.get("default_depthoffset", np.nan)
        for col in ("acq_aa", "acq_exp", "acq_volimage"):
            if not np.isfinite(row[col]) or row[col] <= 0:
                raise ValueError(f"{par_path.name}: calibration {col}={row[col]!r} is missing or not positive")
        casts.append(EcoPartCast(
            profile_id=str(row["profileid"]), lat=float(row["latitude"]), lon=float(row["longitude"]),
            datetime=row["sampledate"], acq_aa=float(row["acq_aa"]), acq_exp=float(row["acq_exp"]),
            acq_volimage_l=float(row["acq_volimage"]), depth_offset_m=float(offset),
            par=par, meta=row.to_dict(),
        ))
    if not casts:
        raise FileNotFoundError(f"no *_PAR_raw_*.tsv file in {folder}")
    return casts


def esd_mm(area_px: Any, acq_aa: float, acq_exp: float) -> np.ndarray:
    """ESD (mm) of particles of ``area_px`` pixels: 2 sqrt(acq_aa * area_px**acq_exp / pi)."""
    return 2.0 * np.sqrt(acq_aa * np.asarray(area_px, dtype=float) ** acq_exp / np.pi)


def psd(
    cast: EcoPartCast,
    depth_bin_m: float = 5.0,
    class_edges_mm: Any = ECOPART_CLASS_EDGES_MM,
) -> xr.Dataset:
    """Particle size distribution of a cast per depth bin.

    Returns a Dataset on (``depth`` = bin centre, ``size_class``) with ``count``,
    ``volume_l`` (imaged volume of the bin), ``concentration`` (# L-1), ``n_spectrum``
    (# L-1 mm-1; NaN for the open-ended last class) and ``biovolume`` (mm3 L-1, spheres).
    Bins with no image are dropped.
    """
    par = cast.par
    edges = np.asarray(class_edges_mm, dtype=float)
    d = esd_mm(par["area"].to_numpy(), cast.acq_aa, cast.acq_exp)
    size_idx = np.digitize(d, edges) - 1  # left-closed classes, as np.histogram
    depth_idx = np.floor(par["depth"].to_numpy(dtype=float) / depth_bin_m).astype(int)
    keep = (size_idx >= 0) & (size_idx < edges.size - 1)
    n_bins = int(depth_idx.max()) + 1
    n_cls = edges.size - 1
    counts = np.zeros((n_bins, n_cls))
    np.add.at(counts, (depth_idx[keep], size_idx[keep]), par["nbr"].to_numpy(dtype=float)[keep])
    biovol = np.zeros((n_bins, n_cls))
    np.add.at(biovol, (depth_idx[keep], size_idx[keep]),
              (par["nbr"].to_numpy(dtype=float) * np.pi / 6.0 * d**3)[keep])
    # one imgcount per 1-m partition: the volume is counted once per partition
    per_metre = par.groupby("depth", sort=True)["imgcount"].first()
    vol = np.zeros(n_bins)
    np.add.at(vol, np.floor(per_metre.index.to_numpy(dtype=float) / depth_bin_m).astype(int),
              per_metre.to_numpy(dtype=float) * cast.acq_volimage_l)
    sampled = vol > 0
    counts, biovol, vol = counts[sampled], biovol[sampled], vol[sampled]
    bins = np.flatnonzero(sampled)
    width = np.diff(edges)
    width = np.where(np.isfinite(width) & (edges[1:] < 1e7), width, np.nan)
    conc = counts / vol[:, None]
    ds = xr.Dataset(
        {
            "count": (("depth", "size_class"), counts, {"long_name": "particles counted", "units": "1"}),
            "volume_l": ("depth", vol, {"long_name": "imaged water volume", "units": "L"}),
            "concentration": (("depth", "size_class"), conc, {"long_name": "particle concentration", "units": "L-1"}),
            "n_spectrum": (("depth", "size_class"), conc / width[None, :],
                           {"long_name": "particle number spectrum", "units": "L-1 mm-1"}),
            "biovolume": (("depth", "size_class"), biovol / vol[:, None],
                          {"long_name": "particle biovolume concentration (spheres)", "units": "mm3 L-1"}),
        },
        coords={
            "depth": ("depth", (bins + 0.5) * depth_bin_m, {"standard_name": "depth", "units": "m", "positive": "down"}),
            "depth_min": ("depth", bins * depth_bin_m, {"units": "m"}),
            "depth_max": ("depth", (bins + 1) * depth_bin_m, {"units": "m"}),
            "size_class": ("size_class", np.arange(n_cls)),
            "esd_min_mm": ("size_class", edges[:-1], {"units": "mm"}),
            "esd_max_mm": ("size_class", edges[1:], {"units": "mm"}),
        },
        attrs={"profile_id": cast.profile_id, "lat": cast.lat, "lon": cast.lon,
               "datetime": str(cast.datetime), "acq_aa": cast.acq_aa, "acq_exp": cast.acq_exp,
               "acq_volimage_l": cast.acq_volimage_l, "depth_offset_m": cast.depth_offset_m},
    )
    return ds


def flux_profile(ds: xr.Dataset, relation: FluxRelation = GUIDI2008) -> xr.DataArray:
    """POC flux (mg C m-2 d-1) of every depth bin of a :func:`psd` Dataset."""
    edges = _edges(ds)
    n = ds["n_spectrum"].fillna(0.0)  # the open-ended class has no width and is outside A d^b's range
    return guidi_flux(n, edges, relation=relation).rename("flux_mgC_m2_d")


def _edges(ds: xr.Dataset) -> np.ndarray:
    return np.append(ds["esd_min_mm"].values, ds["esd_max_mm"].values[-1])


def window_counts(ds: xr.Dataset, top_m: float, bottom_m: float) -> tuple[np.ndarray, float, int]:
    """Particles per ESD class and imaged litres summed over the depth bins whose centres lie
    in ``[top_m, bottom_m)``, and the number of bins (zeros and 0 L when none)."""
    if not bottom_m > top_m:
        raise ValueError(f"depth window must have bottom_m > top_m, got [{top_m}, {bottom_m})")
    sel = ((ds["depth"] >= top_m) & (ds["depth"] < bottom_m)).values
    counts = ds["count"].values[sel].sum(axis=0)
    return counts, float(ds["volume_l"].values[sel].sum()), int(sel.sum())


def window_flux(ds: xr.Dataset, top_m: float, bottom_m: float,
                relation: FluxRelation = GUIDI2008) -> dict[str, float]:
    """Flux of the particles pooled over the depth bins whose centres lie in ``[top_m,
    bottom_m)``: counts and imaged volumes are summed first (the count-weighted mean, not a
    mean of noisy per-bin fluxes).

    Returns ``flux_mgC_m2_d``, ``flux_sd_poisson`` (counting error), ``flux_rel_sd``,
    ``volume_l``, ``n_particles`` (in the relation's size range), ``largest_class_share`` (of
    the flux) and ``n_bins``; NaN flux when no bin lies in the window.
    """
    counts, vol, n_bins = window_counts(ds, top_m, bottom_m)
    if n_bins == 0:
        return {"flux_mgC_m2_d": np.nan, "flux_sd_poisson": np.nan, "flux_rel_sd": np.nan,
                "volume_l": 0.0, "n_particles": 0, "largest_class_share": np.nan, "n_bins": 0}
    w = class_weights(_edges(ds), relation)
    contrib = counts * w / vol
    flux = float(contrib.sum())
    sd = float(guidi_flux_poisson_sd(counts, vol, _edges(ds), relation))
    return {"flux_mgC_m2_d": flux, "flux_sd_poisson": sd,
            "flux_rel_sd": sd / flux if flux > 0 else np.nan, "volume_l": vol,
            "n_particles": int(counts[w > 0].sum()),
            "largest_class_share": float(contrib.max() / flux) if flux > 0 else np.nan,
            "n_bins": n_bins}


def flux_summary(
    casts: list[EcoPartCast],
    horizons_m: tuple[float, ...] = (150.0, 200.0),
    depth_bin_m: float = 5.0,
    relation: FluxRelation = GUIDI2008,
    window_m: float | None = None,
) -> pd.DataFrame:
    """Per cast and horizon: flux interpolated between bin centres and the flux of the bin
    starting at the horizon, with the imaged volume behind it. With *window_m*, also the
    flux of the particles pooled in ``[h - window_m/2, h + window_m/2)`` (``window_*``
    columns: flux, Poisson sd, relative sd, volume, particles, largest-class share)."""
    rows = []
    for cast in casts:
        ds = psd(cast, depth_bin_m=depth_bin_m)
        f = flux_profile(ds, relation)
        for h in horizons_m:
            in_bin = (ds["depth_min"] <= h) & (ds["depth_max"] > h)
            row = {
                "profile_id": cast.profile_id, "lat": cast.lat, "lon": cast.lon, "datetime": cast.datetime,
                "horizon_m": h,
                "flux_mgC_m2_d": flux_at_depth(ds["depth"].values, f.values, h),
                "bin_flux_mgC_m2_d": float(f.where(in_bin, drop=True).values[0]) if bool(in_bin.any()) else np.nan,
                "bin_volume_l": float(ds["volume_l"].where(in_bin, drop=True).values[0]) if bool(in_bin.any()) else np.nan,
            }
            if window_m is not None:
                win = window_flux(ds, h - window_m / 2, h + window_m / 2, relation)
                row.update({f"window_{k}": v for k, v in win.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def volumes_table(cast: EcoPartCast, depth_bin_m: float = 5.0) -> pd.DataFrame:
    """Imaged volume per depth bin (``sample_id, depth_min, depth_max, volume_l``), the
    ``volumes=`` argument of :func:`aqqua_geo.mapping.samples.aggregate` for this cast."""
    ds = psd(cast, depth_bin_m=depth_bin_m)
    return pd.DataFrame({"sample_id": cast.profile_id, "depth_min": ds["depth_min"].values,
                         "depth_max": ds["depth_max"].values, "volume_l": ds["volume_l"].values})


def read_zoo(cast: EcoPartCast, path: str | Path, pixel_size_mm: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a cast's ``*_ZOO_raw_*.tsv`` (one row per vignette, ZooProcess features in pixels)
    as a (predictions, metadata) pair in the package's column conventions.

    The vignettes' labels become ``pred_label``; ``esd_um`` / ``biovolume_um3`` (sphere) use
    ``acq_pixel`` (mm per pixel) from the metadata summary unless ``pixel_size_mm`` is given.
    Depths are ``depth_including_offset`` (point depths: pair with :func:`volumes_table`).
    """
    path = Path(path)
    zoo = pd.read_csv(path, sep="\t")
    missing = [c for c in _ZOO_COLUMNS if c not in zoo.columns]
    if missing:
        raise ValueError(f"{path.name}: not an EcoPart ZOO raw table, missing column(s) {missing}")
    px = pixel_size_mm if pixel_size_mm is not None else float(cast.meta.get("acq_pixel", np.nan))
    if not np.isfinite(px) or px <= 0:
        raise ValueError(f"{path.name}: no pixel size (acq_pixel) for cast {cast.profile_id}; pass pixel_size_mm")
    esd_um = zoo["esd"].to_numpy(dtype=float) * px * 1000.0
    oid = zoo["objid"].astype(str)
    pred = pd.DataFrame({"object_id": oid, "pred_label": zoo["name"].astype(str),
                         "esd_um": esd_um, "biovolume_um3": np.pi / 6.0 * esd_um**3,
                         "area_um2": zoo["area"].to_numpy(dtype=float) * (px * 1000.0) ** 2})
    depth = zoo["depth_including_offset"].to_numpy(dtype=float)
    meta = pd.DataFrame({"object_id": oid, "sample_id": cast.profile_id, "instrument": "UVP5",
                         "datetime": cast.datetime, "lat": cast.lat, "lon": cast.lon,
                         "depth_min": depth, "depth_max": depth, "sampled_volume_l": np.nan})
    return pred, meta


def plot_flux_profiles(casts: list[EcoPartCast], path: str | Path, relation: FluxRelation = GUIDI2008,
                       depth_bin_m: float = 5.0, horizons_m: tuple[float, ...] = (150.0, 200.0)) -> Path:
    """PNG of each cast's flux profile (mg C m-2 d-1 vs depth) with the export horizons marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.5, 6), dpi=120)
    for cast in casts:
        f = flux_profile(psd(cast, depth_bin_m=depth_bin_m), relation)
        ax.plot(f.values, f["depth"].values, label=f"{cast.profile_id} ({cast.datetime:%Y-%m-%d})")
    for h in horizons_m:
        ax.axhline(h, color="0.6", lw=0.8, ls="--")
    ax.invert_yaxis()
    ax.set_xlabel("POC flux (mg C m$^{-2}$ d$^{-1}$)")
    ax.set_ylabel("depth (m)")
    ax.set_title(f"UVP5 flux, A={relation.A}, b={relation.b}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
