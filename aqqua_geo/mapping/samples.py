"""Per-image predictions -> per-sample (and depth-bin) concentrations, biomass and size spectra.

Inputs are the downstream ``predictions.parquet`` (keyed by ``object_id``: ``pred_label``,
``biovolume_um3``, ``esd_um``, ``carbon_ugC``, ``carbon_group``...) and the store's harmonised
``metadata`` (``sample_id, datetime, lat, lon, depth_min, depth_max, sampled_volume_l``).

**Sampled volume.** ``sampled_volume_l`` is the volume imaged for an object's sample (layer):
every object of a sample layer carries the same value, so the volume of a layer is taken
*once* (not summed over its objects), and the volume of a depth bin is the sum over the
distinct sample layers whose mid-depth falls in it. Profiling instruments whose volume is
known per depth bin rather than per sample (UVP: images x image volume) pass it explicitly
with ``volumes=``. When any layer of a bin has no volume, an inconsistent one, or a
non-positive one, the absolute quantities of that bin (concentrations, biovolume and carbon
per m3, NBSS) are NaN and ``volume_flag`` says why; relative quantities (relative abundance,
size fractions, NBSS slope) are still computed: nothing is used silently.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["aggregate", "nbss", "fit_nbss", "VOLUME_FLAGS", "DEFAULT_NBSS_EDGES_MM3",
           "DEFAULT_SIZE_FRACTIONS_UM"]

#: ``volume_flag`` values: absolute columns are only filled for ``ok``.
VOLUME_FLAGS = ("ok", "missing", "partial", "inconsistent", "invalid", "unresolved")
#: Biovolume bins (mm3) of the normalised biomass size spectrum: octaves (x2) from ~1e-6 mm3
#: (ESD ~12 um) to 131 072 mm3 (ESD ~63 mm).
DEFAULT_NBSS_EDGES_MM3 = 2.0 ** np.arange(-20, 18)
#: ESD boundaries (um) of the size fractions reported as shares of the total biovolume.
DEFAULT_SIZE_FRACTIONS_UM = (0.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, np.inf)

_KEY = ["sample_id", "depth_min", "depth_max"]
_UM3_TO_MM3 = 1e-9
_UGC_TO_MGC = 1e-3


def _safe(name: Any) -> str:
    """Column-safe version of a class/group name ('Calanoida sp.' -> 'Calanoida_sp')."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_")
    return s or "unknown"


def _join(predictions: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    for name, df in (("predictions", predictions), ("metadata", metadata)):
        if "object_id" not in df.columns:
            raise KeyError(f"{name} table has no 'object_id' column")
    need = ["object_id", "depth_min", "depth_max"]
    missing = [c for c in need if c not in metadata.columns]
    if missing:
        raise KeyError(f"metadata lacks column(s) {missing}")
    pred = predictions.drop(columns=[c for c in predictions.columns
                                     if c in metadata.columns and c != "object_id"])
    df = pred.merge(metadata, on="object_id", how="left", indicator=True, validate="one_to_one")
    orphans = df["_merge"] == "left_only"
    if orphans.any():
        ids = df.loc[orphans, "object_id"].head(3).tolist()
        raise ValueError(f"{int(orphans.sum())} predicted object(s) have no metadata row, e.g. {ids}")
    df = df.drop(columns="_merge")
    if "sample_id" not in df.columns:
        df["sample_id"] = pd.NA
    unnamed = df["sample_id"].isna()
    if unnamed.any():  # no sample id: one sample per (source, time, position)
        parts = [df.get(c, pd.Series("", index=df.index)).astype(str)
                 for c in ("source", "datetime", "lat", "lon")]
        df.loc[unnamed, "sample_id"] = ("unnamed:" + parts[0] + "|" + parts[1] + "|" + parts[2] + "|" + parts[3])[unnamed]
    return df


def _edges_bins(mid: np.ndarray, depth_bins: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    edges = np.asarray(depth_bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError("depth_bins must be an increasing sequence of at least two depths (m)")
    idx = np.searchsorted(edges, mid, side="right") - 1
    inside = (idx >= 0) & (idx < edges.size - 1)
    safe = np.clip(idx, 0, edges.size - 2)
    return np.where(inside, edges[safe], np.nan), np.where(inside, edges[safe + 1], np.nan), inside


def _volume_layers(volumes: pd.DataFrame) -> pd.DataFrame:
    miss = [c for c in ("sample_id", "depth_min", "depth_max", "volume_l") if c not in volumes.columns]
    if miss:
        raise KeyError(f"volumes table lacks column(s) {miss}")
    return volumes[["sample_id", "depth_min", "depth_max", "volume_l"]].astype(
        {"depth_min": float, "depth_max": float, "volume_l": float})


def _assign_bins(df: pd.DataFrame, depth_bins: Sequence[float] | None,
                 volumes: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``bin_min``/``bin_max`` (the output rows) and ``_unit`` (the volume unit) per object.

    A *volume unit* is what one ``sampled_volume_l`` value describes: a sample layer
    (``depth_min < depth_max``), or the whole sample when all its objects have point depths
    (a profile whose volume is per sample, not per depth).
    """
    df = df.copy()
    df["_mid"] = ((df["depth_min"] + df["depth_max"]) / 2.0).astype(float)
    point = (df["depth_min"] == df["depth_max"]).groupby(df["sample_id"]).transform("all")
    layer_key = df["sample_id"].astype(str) + "|" + df["depth_min"].astype(str) + "|" + df["depth_max"].astype(str)
    df["_unit"] = np.where(point, df["sample_id"].astype(str) + "|sample", layer_key)
    if depth_bins is not None:
        lo, hi, inside = _edges_bins(df["_mid"].to_numpy(), depth_bins)
        df["bin_min"], df["bin_max"] = lo, hi
    elif volumes is not None:  # the rows are the layers of the volumes table
        layers = _volume_layers(volumes).sort_values("depth_min")
        left = df.reset_index().sort_values("_mid")
        m = pd.merge_asof(left, layers.rename(columns={"depth_min": "bin_min", "depth_max": "bin_max"}),
                          left_on="_mid", right_on="bin_min", by="sample_id", direction="backward")
        m = m.set_index("index").loc[df.index]
        inside = (m["_mid"] < m["bin_max"]).to_numpy()
        df["bin_min"], df["bin_max"] = m["bin_min"].to_numpy(), m["bin_max"].to_numpy()
    else:  # each sample's own layers; point-depth samples form one row spanning their depths
        smin = df.groupby("sample_id")["depth_min"].transform("min")
        smax = df.groupby("sample_id")["depth_max"].transform("max")
        df["bin_min"] = np.where(point, smin, df["depth_min"])
        df["bin_max"] = np.where(point, smax, df["depth_max"])
        inside = np.ones(len(df), dtype=bool)
    if not np.all(inside):
        warnings.warn(f"{int((~inside).sum())} object(s) lie outside the depth bins and are not aggregated",
                      stacklevel=3)
        df = df.loc[inside]
    return df


def _bin_volumes(df: pd.DataFrame, volume_col: str, volumes: pd.DataFrame | None,
                 depth_bins: Sequence[float] | None) -> pd.DataFrame:
    """``sampled_volume_l`` and ``volume_flag`` per output row (sample_id, bin_min, bin_max)."""
    keys = ["sample_id", "bin_min", "bin_max"]
    if volumes is not None:
        layers = _volume_layers(volumes)
        if depth_bins is not None:
            lo, hi, inside = _edges_bins(((layers["depth_min"] + layers["depth_max"]) / 2).to_numpy(), depth_bins)
            layers = layers.assign(bin_min=lo, bin_max=hi).loc[inside]
        else:
            layers = layers.assign(bin_min=layers["depth_min"], bin_max=layers["depth_max"])
        flag = np.select([layers["volume_l"].isna(), layers["volume_l"] <= 0], ["missing", "invalid"], "ok")
        pairs = layers.assign(_vol=layers["volume_l"], _flag=flag)[keys + ["_vol", "_flag"]]
    else:
        vol = (df[volume_col] if volume_col in df.columns else pd.Series(np.nan, index=df.index)).astype(float)
        g = df.assign(_v=vol).groupby("_unit")["_v"]
        rows_per_unit = df[["_unit", "bin_min", "bin_max"]].drop_duplicates().groupby("_unit").size()
        units = pd.DataFrame({"_vol": g.max(), "_n": g.nunique(), "_nan": vol.isna().groupby(df["_unit"]).any(),
                              "_nbins": rows_per_unit})
        units["_flag"] = np.select(
            [units["_vol"].isna(), (units["_n"] > 1) | units["_nan"], units["_vol"] <= 0, units["_nbins"] > 1],
            ["missing", "inconsistent", "invalid", "unresolved"], default="ok")
        # one volume per (unit, row): a unit is counted once in every row it falls in
        pairs = df[keys + ["_unit"]].drop_duplicates().join(units[["_vol", "_flag"]], on="_unit")

    # combine the units of each row: any problem wins, in this order of severity
    g = pairs.assign(**{f"_{f}": pairs["_flag"] == f for f in ("ok", "missing", "invalid", "inconsistent", "unresolved")}
                     ).groupby(keys, dropna=False)
    out = g["_vol"].sum(min_count=1).rename("sampled_volume_l").reset_index()
    has = {f: g[f"_{f}"].any().to_numpy() for f in ("ok", "missing", "invalid", "inconsistent", "unresolved")}
    out["volume_flag"] = np.select(
        [has["unresolved"], has["inconsistent"], has["invalid"], has["missing"] & ~has["ok"], has["missing"]],
        ["unresolved", "inconsistent", "invalid", "missing", "partial"], default="ok")
    out.loc[out["volume_flag"] != "ok", "sampled_volume_l"] = np.nan
    return out


def fit_nbss(bin_mid_mm3: np.ndarray, values: np.ndarray, min_bins: int = 3) -> tuple[float, float, float, int]:
    """Least-squares line log10(NBSS) ~ log10(biovolume) from the spectrum's peak onwards.

    Bins below the peak are under-sampled by imaging instruments and are left out, as are
    empty bins. Returns ``(slope, intercept, r2, n_bins)``; NaNs with fewer than ``min_bins``.
    """
    x = np.asarray(bin_mid_mm3, dtype=float)
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < min_bins:
        return np.nan, np.nan, np.nan, int(ok.sum())
    start = int(np.nanargmax(np.where(ok, y, -np.inf)))
    use = ok & (np.arange(y.size) >= start)
    if use.sum() < min_bins:
        return np.nan, np.nan, np.nan, int(use.sum())
    lx, ly = np.log10(x[use]), np.log10(y[use])
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    ss_tot = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - (resid**2).sum() / ss_tot if ss_tot > 0 else np.nan
    return float(slope), float(intercept), float(r2), int(use.sum())


def _spectra(df: pd.DataFrame, edges_mm3: np.ndarray, biovolume_col: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Biovolume per (bin key, size class): returns (matrix, keys)."""
    bv = df[biovolume_col].to_numpy(dtype=float) * _UM3_TO_MM3
    cls = np.searchsorted(edges_mm3, bv, side="right") - 1
    ok = np.isfinite(bv) & (cls >= 0) & (cls < edges_mm3.size - 1)
    keys = df[["sample_id", "bin_min", "bin_max"]].drop_duplicates().reset_index(drop=True)
    row = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(df[["sample_id", "bin_min", "bin_max"]]))
    mat = np.zeros((len(keys), edges_mm3.size - 1))
    np.add.at(mat, (row[ok], cls[ok]), bv[ok])
    return mat, keys


def _metadata_frame(metadata: Any) -> pd.DataFrame:
    """Accept a metadata DataFrame, an ``AqquaStore`` or the path of a store directory."""
    if isinstance(metadata, pd.DataFrame):
        return metadata
    if isinstance(metadata, (str, Path)):
        from aqqua_geo.store import AqquaStore

        return AqquaStore(metadata).metadata
    if hasattr(metadata, "metadata") and isinstance(metadata.metadata, pd.DataFrame):
        return metadata.metadata
    raise TypeError(f"metadata must be a DataFrame, an AqquaStore or a store path, not {type(metadata).__name__}")


def aggregate(
    predictions: pd.DataFrame,
    metadata: pd.DataFrame | Any,
    depth_bins: Sequence[float] | None = None,
    group_col: str = "pred_label",
    *,
    diversity: bool = False,
    rarefy_to: int | None = None,
    volume_col: str = "sampled_volume_l",
    volumes: pd.DataFrame | None = None,
    groups: Sequence[str] | None = None,
    biovolume_col: str = "biovolume_um3",
    carbon_col: str = "carbon_ugC",
    esd_col: str = "esd_um",
    nbss_edges_mm3: Sequence[float] = DEFAULT_NBSS_EDGES_MM3,
    size_fractions_um: Sequence[float] = DEFAULT_SIZE_FRACTIONS_UM,
    novel_col: str | None = "is_novel",
    taxonomy: Any = None,
    diversity_nonliving: bool = False,
) -> pd.DataFrame:
    """One row per sample and depth bin.

    ``depth_bins``: depth edges in m (objects binned by the mid-depth of their layer), or None
    to keep each sample's own layers. ``group_col``: the class/group column (``pred_label``,
    ``carbon_group``...); ``groups`` restricts/orders the groups reported (others still count
    in the totals). ``volumes``: explicit volumes (``sample_id, depth_min, depth_max,
    volume_l``) overriding ``sampled_volume_l``.

    Columns: ``sample_id, depth_min, depth_max, datetime, lat, lon, n_objects,
    sampled_volume_l, volume_flag``; per group ``n_<g>, rel_<g>, conc_<g>_m3,
    biovolume_<g>_mm3_m3, carbon_<g>_mgC_m3``; totals ``conc_total_m3, biovolume_mm3_m3,
    carbon_mgC_m3``; ``frac_biovol_<lo>_<hi>um`` size fractions; ``nbss_slope,
    nbss_intercept, nbss_r2, nbss_n_bins``. ``metadata`` may also be an ``AqquaStore`` or a
    store path. ``diversity=True`` appends the :func:`aqqua_geo.mapping.diversity.diversity_table`
    indices of the per-group counts (``richness, shannon, simpson, gini_simpson,
    inverse_simpson, pielou, chao1, hill_q0/1/2`` and ``rarefied_richness_<n>`` with
    ``rarefy_to``).

    **Novel objects.** Objects whose ``novel_col`` (default ``is_novel`` of
    ``predictions.parquet``) is true were flagged as unlike any training class: their predicted
    class is not trusted. They are counted apart (``n_novel, rel_novel, conc_novel_m3,
    biovolume_novel_mm3_m3, carbon_novel_mgC_m3``), left out of every per-group column and of
    diversity, and still counted in the totals (``n_objects``, ``conc_total_m3``, total
    biovolume and carbon, size spectra), which describe all imaged particles.

    **Living taxa only.** Each group is looked up in the living/non-living table
    (:mod:`aqqua_geo.downstream.taxonomy`, bundled ``taxonomy.csv`` or *taxonomy*). Non-living
    categories (detritus, fiber, bubble, badfocus, ...) keep their per-group columns (detritus
    is needed for particle/POC work) but are no taxa: they are summed in ``n_nonliving,
    conc_nonliving_m3`` and left out of diversity; ``n_living, conc_living_m3`` sum the living
    taxa (novel objects excluded). ``out.attrs["living_groups"]`` and
    ``out.attrs["nonliving_groups"]`` list them. ``diversity_nonliving=True`` computes the
    indices over every group instead (only to compare with the old behaviour).
    """
    df = _assign_bins(_join(predictions, _metadata_frame(metadata)), depth_bins, volumes)
    if group_col not in df.columns:
        raise KeyError(f"group column {group_col!r} not in predictions/metadata")
    vols = _bin_volumes(df, volume_col, volumes, depth_bins)
    keys = ["sample_id", "bin_min", "bin_max"]
    g = df.groupby(keys, dropna=False, sort=True)
    out = pd.DataFrame({"n_objects": g.size()})
    if "datetime" in df.columns:
        out["datetime"] = g["datetime"].min()
    for c in ("lat",):
        if c in df.columns:
            out[c] = g[c].mean()
    if "lon" in df.columns:  # circular mean: samples straddling the antimeridian
        rad = np.deg2rad(df["lon"].astype(float))
        s = df.assign(_s=np.sin(rad), _c=np.cos(rad)).groupby(keys, dropna=False, sort=True)
        mean_lon = np.rad2deg(np.arctan2(s["_s"].mean(), s["_c"].mean()))
        out["lon"] = ((mean_lon + 180.0) % 360.0) - 180.0
    for c in ("instrument", "source"):
        if c in df.columns:
            out[c] = g[c].first()
    if volumes is not None:  # bins imaged without any object are true zeros: keep them
        vols = vols[vols["sample_id"].isin(df["sample_id"].unique())]
        out = out.reset_index().merge(vols, on=keys, how="outer").sort_values(keys, ignore_index=True)
        out["n_objects"] = out["n_objects"].fillna(0).astype(int)
        for c in ("lat", "lon", "datetime", "instrument", "source"):
            if c in out.columns:  # a sample's position for its empty bins
                out[c] = out.groupby("sample_id")[c].transform("first")
    else:
        out = out.reset_index().merge(vols, on=keys, how="left")
    out["volume_flag"] = out["volume_flag"].fillna("missing")
    v_m3 = np.where(out["volume_flag"] == "ok", out["sampled_volume_l"] / 1000.0, np.nan)

    labels = df[group_col].astype("string").fillna("unlabelled")
    if novel_col is not None and novel_col in df.columns:
        novel = df[novel_col].astype("boolean").fillna(False).to_numpy(dtype=bool)
    else:
        novel = np.zeros(len(df), dtype=bool)
    known = pd.Series(~novel, index=df.index)
    all_groups = sorted(labels[known].unique()) if groups is None else list(groups)
    from aqqua_geo.downstream.taxonomy import living_mask

    living = dict(zip(all_groups, living_mask(all_groups, taxonomy=taxonomy)))
    living["unlabelled"] = False
    idx = pd.MultiIndex.from_frame(out[keys])
    has_bv = biovolume_col in df.columns
    has_c = carbon_col in df.columns
    per = {}
    for grp in all_groups:
        m = (labels == grp) & known
        sub = df.loc[m].groupby(keys, dropna=False)
        n = sub.size().reindex(idx, fill_value=0).to_numpy(dtype=float)
        name = _safe(grp)
        per[f"n_{name}"] = n
        per[f"rel_{name}"] = np.where(out["n_objects"] > 0, n / out["n_objects"], np.nan)
        per[f"conc_{name}_m3"] = n / v_m3
        if has_bv:
            bvs = sub[biovolume_col].sum(min_count=1).reindex(idx).fillna(0).to_numpy(dtype=float)
            per[f"biovolume_{name}_mm3_m3"] = bvs * _UM3_TO_MM3 / v_m3
        if has_c:
            cs = sub[carbon_col].sum(min_count=1).reindex(idx).fillna(0).to_numpy(dtype=float)
            per[f"carbon_{name}_mgC_m3"] = cs * _UGC_TO_MGC / v_m3
    sums = {}
    for part, mask in (("novel", pd.Series(novel, index=df.index)),
                       ("living", known & labels.map(lambda g: living.get(g, True)).astype(bool)),
                       ("nonliving", known & ~labels.map(lambda g: living.get(g, True)).astype(bool))):
        sub = df.loc[mask].groupby(keys, dropna=False)
        n = sub.size().reindex(idx, fill_value=0).to_numpy(dtype=float)
        sums[f"n_{part}"] = n.astype(int)
        if part == "novel":
            tot = out["n_objects"].to_numpy(dtype=float)
            sums["rel_novel"] = np.where(tot > 0, n / np.where(tot > 0, tot, 1.0), np.nan)
        sums[f"conc_{part}_m3"] = n / v_m3
        if part == "novel" and has_bv:
            bvs = sub[biovolume_col].sum(min_count=1).reindex(idx).fillna(0).to_numpy(dtype=float)
            sums["biovolume_novel_mm3_m3"] = bvs * _UM3_TO_MM3 / v_m3
        if part == "novel" and has_c:
            cs = sub[carbon_col].sum(min_count=1).reindex(idx).fillna(0).to_numpy(dtype=float)
            sums["carbon_novel_mgC_m3"] = cs * _UGC_TO_MGC / v_m3
    clash = sorted(set(per) & set(sums))
    if clash:
        raise ValueError(f"group name(s) collide with the novel/living summary columns: {clash}")
    out = pd.concat([out, pd.DataFrame(per, index=out.index), pd.DataFrame(sums, index=out.index)], axis=1)
    out["conc_total_m3"] = out["n_objects"] / v_m3
    if has_bv:
        tot = g[biovolume_col].sum().reindex(idx).fillna(0).to_numpy(dtype=float)
        out["biovolume_mm3_m3"] = tot * _UM3_TO_MM3 / v_m3
        out["n_missing_biovolume"] = (df[biovolume_col].isna().groupby([df[k] for k in keys]).sum()
                                      .reindex(idx).fillna(0).to_numpy(dtype=int))
    if has_c:
        tot = g[carbon_col].sum().reindex(idx).fillna(0).to_numpy(dtype=float)
        out["carbon_mgC_m3"] = tot * _UGC_TO_MGC / v_m3
        out["n_missing_carbon"] = (df[carbon_col].isna().groupby([df[k] for k in keys]).sum()
                                   .reindex(idx).fillna(0).to_numpy(dtype=int))
    if has_bv and esd_col in df.columns:
        fr = np.asarray(size_fractions_um, dtype=float)
        esd = df[esd_col].to_numpy(dtype=float)
        total_bv = g[biovolume_col].sum().reindex(idx).fillna(0).to_numpy(dtype=float)
        for lo, hi in zip(fr[:-1], fr[1:]):
            m = (esd >= lo) & (esd < hi)
            part = df.loc[m].groupby(keys, dropna=False)[biovolume_col].sum().reindex(idx).fillna(0).to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"frac_biovol_{lo:g}_{hi:g}um"] = np.where(total_bv > 0, part / total_bv, np.nan)
    if has_bv:
        edges = np.asarray(nbss_edges_mm3, dtype=float)
        mat, mkeys = _spectra(df, edges, biovolume_col)
        pos = pd.MultiIndex.from_frame(mkeys).get_indexer(idx)
        mat = np.where((pos >= 0)[:, None], mat[np.clip(pos, 0, None)], 0.0)  # empty bins: zeros
        mid = np.sqrt(edges[:-1] * edges[1:])
        dens = mat / np.diff(edges)[None, :]  # mm3 per mm3 of size class (per sample)
        fits = [fit_nbss(mid, row) for row in dens]
        out["nbss_slope"] = [f[0] for f in fits]  # volume-independent: a log-shift only
        out["nbss_intercept"] = np.array([f[1] for f in fits]) - np.log10(v_m3)
        out["nbss_r2"] = [f[2] for f in fits]
        out["nbss_n_bins"] = [f[3] for f in fits]
    if diversity:
        from aqqua_geo.mapping.diversity import diversity_table

        taxa = [gname for gname in all_groups if diversity_nonliving or living.get(gname, True)]
        counts = out[[f"n_{_safe(gname)}" for gname in taxa]].to_numpy(dtype=float).reshape(len(out), len(taxa))
        div = diversity_table(counts, rarefy_to=rarefy_to, index=out.index).drop(columns="n_individuals")
        out = pd.concat([out, div], axis=1)
    out = out.rename(columns={"bin_min": "depth_min", "bin_max": "depth_max"})
    out.attrs["living_groups"] = [g for g in all_groups if living.get(g, True)]
    out.attrs["nonliving_groups"] = [g for g in all_groups if not living.get(g, True)]
    return out


def nbss(
    predictions: pd.DataFrame,
    metadata: pd.DataFrame,
    depth_bins: Sequence[float] | None = None,
    *,
    volume_col: str = "sampled_volume_l",
    volumes: pd.DataFrame | None = None,
    biovolume_col: str = "biovolume_um3",
    edges_mm3: Sequence[float] = DEFAULT_NBSS_EDGES_MM3,
) -> pd.DataFrame:
    """Normalised biomass size spectrum in long form, one row per sample, depth bin and size bin.

    ``nbss_m3`` = biovolume in the bin (mm3) / bin width (mm3) / sampled volume (m3), in m-3;
    NaN where the volume is not usable (see ``volume_flag``). Empty size bins are kept (0).
    """
    df = _assign_bins(_join(predictions, _metadata_frame(metadata)), depth_bins, volumes)
    if biovolume_col not in df.columns:
        raise KeyError(f"biovolume column {biovolume_col!r} not in predictions")
    edges = np.asarray(edges_mm3, dtype=float)
    mat, keys = _spectra(df, edges, biovolume_col)
    counts_bv = df[biovolume_col].to_numpy(dtype=float) * _UM3_TO_MM3
    cls = np.searchsorted(edges, counts_bv, side="right") - 1
    ok = np.isfinite(counts_bv) & (cls >= 0) & (cls < edges.size - 1)
    row = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(df[["sample_id", "bin_min", "bin_max"]]))
    n = np.zeros_like(mat)
    np.add.at(n, (row[ok], cls[ok]), 1.0)
    vols = _bin_volumes(df, volume_col, volumes, depth_bins)
    keys = keys.merge(vols, on=["sample_id", "bin_min", "bin_max"], how="left")
    v_m3 = np.where(keys["volume_flag"] == "ok", keys["sampled_volume_l"] / 1000.0, np.nan)
    k = edges.size - 1
    long = keys.loc[keys.index.repeat(k)].reset_index(drop=True)
    long["bin_min_mm3"] = np.tile(edges[:-1], len(keys))
    long["bin_max_mm3"] = np.tile(edges[1:], len(keys))
    long["bin_mid_mm3"] = np.sqrt(long["bin_min_mm3"] * long["bin_max_mm3"])
    long["n"] = n.ravel()
    long["biovolume_mm3"] = mat.ravel()
    long["nbss_m3"] = (mat / np.diff(edges)[None, :] / v_m3[:, None]).ravel()
    return long.rename(columns={"bin_min": "depth_min", "bin_max": "depth_max"})
