"""Reproduce Drago et al. 2022 (Front. Mar. Sci. 9:894372) with aqqua-geo's BRTEnsemble.

Reads ../shared/data/drago2022_uvp5_biomass (their R files: exact Copepoda split and their
cv_metrics) or, when absent, the bundled derivatives. Prints:
  (a) Copepoda test R² under their protocol (80/20 quantile-stratified split, grid search with
      early stopping and 1-SE rule, 100 resample models scored on the test set) vs theirs;
  (b) spatial-block CV R² (10° blocks, grouped 5-fold) of the same settings;
  (c) correlation of our global map with their pred_mean, and both totals in Pg C (0–200 m);
then the same for every taxon (fewer resamples, reduced grid) and the global total.
PNG maps and a JSON of all figures go to --out.

    python benchmarks/reproduce_drago2022.py [--shared ../shared/data] [--out runs/drago2022]
        [--taxa Copepoda,Rhizaria] [--n-resamples 100] [--n-resamples-other 20]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from aqqua_geo.mapping.drago2022 import (
    COPEPODA_FILE,
    FEATURES,
    LAYER_THICKNESS_M,
    POISSON_SCALE,
    _dataset_dir,
    _rename,
    open_bundled_cube_file,
    open_bundled_observations,
    open_bundled_reference_map,
    read_r,
    table_to_grid,
)

# --------------------------------------------------------------------------------------------
# Reproduction of their Copepoda model (and all taxa) with BRTEnsemble
# --------------------------------------------------------------------------------------------
#: Their settings (``1.model-fit_habitat_models.R``): Poisson on biomass × 1000, subsample 0.5,
#: ≤600 rounds with early stopping, 27-combination grid, parsimony (1-SE) choice.
PROTOCOL: dict[str, Any] = {
    "objective": "poisson",
    "label_scale": POISSON_SCALE,
    "params": {"subsample": 0.5},
    "n_estimators": 600,
    "early_stopping_rounds": 10,
    "search_rule": "1se",
    "cv": "stratified",
    "n_splits": 5,
    "resampling": "kfold",
}


#: Reduced grid for the non-Copepoda taxa of :func:`reproduce` (depth matters most).
GRID_OTHER: dict[str, list] = {"eta": [0.1], "max_depth": [2, 4, 6], "min_child_weight": [3]}


def stratified_split(y: np.ndarray, test_size: float = 0.2, n_bins: int = 10, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """80/20 train/test row indices stratified by quantile bins of *y* (their protocol)."""
    from sklearn.model_selection import train_test_split

    from aqqua_geo.mapping.model_selection import quantile_bins

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, stratify=quantile_bins(y, n_bins),
                              random_state=seed)
    return np.sort(tr), np.sort(te)


def _their_split(shared_dir: str | Path | None, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Their exact Copepoda 0–200 m split (see :func:`_their_split_from`)."""
    if shared_dir is None:
        return None
    return _their_split_from(_dataset_dir(shared_dir) / COPEPODA_FILE, n)


def _reference_map(results_path: str | Path) -> pd.DataFrame:
    """Their Copepoda map of a results file: ``lon, lat, pred_mean, pred_sd``."""
    pred = read_r(results_path)["prediction"]
    return pred[["lon", "lat", "pred_mean", "pred_sd"]].astype("f4")


def _their_split_from(results_path: str | Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Their exact Copepoda split of a results file: ``d_train``/``d_test`` row names are
    1-based positions in the Copepoda rows of ``d``."""
    res = read_r(results_path)
    tr = np.asarray(res["d_train"].index, dtype=int) - 1
    te = np.asarray(res["d_test"].index, dtype=int) - 1
    if tr.size + te.size != n or np.intersect1d(tr, te).size:
        raise ValueError(f"{COPEPODA_FILE}: d_train/d_test do not partition the {n} Copepoda rows")
    return np.sort(tr), np.sort(te)


def evaluate_taxon(
    obs: pd.DataFrame,
    taxon: str,
    cube: xr.Dataset,
    *,
    n_resamples: int = 100,
    grid: dict[str, list] | None = None,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    spatial_members: int = 10,
    block_deg: float = 10.0,
    nthread: int = 1,
    seed: int = 0,
    target: str = "biomass_sph",
    thickness_m: float = LAYER_THICKNESS_M,
    scale_factor: float = POISSON_SCALE,
    base_score: float | None = None,
    spatial_seeds: tuple[int, ...] = (0,),
) -> dict[str, Any]:
    """Their protocol for one taxon, plus spatial-block CV and a global map.

    (a) 80/20 quantile-stratified split; grid search on the training part (5-fold stratified
    CV, early stopping, 1-SE rule); ``n_resamples`` models fit on the training parts of
    repeated 5-fold splits, each scored on the test set (R², mean ± sd: their ``cv_metrics``).
    (b) spatial-block CV (``block_deg`` blocks, grouped 5-fold) of the same settings on all cells.
    (c) the ensemble refit on all cells, predicted on *cube* (``grid``), total in Pg C over a
    layer of *thickness_m*.

    *scale_factor*: their Poisson pseudo-count scale (biomass × 1000). *base_score*: xgboost's
    initial prediction; ``0.5`` is the default of R xgboost 1.x that the authors ran (xgboost ≥ 2
    estimates it from the labels instead), None keeps the installed xgboost's default. Also
    reported: test R² of log10 biomass, test R² without the largest test cell (one cell can
    carry most of the test variance) and spatial-CV R² mean ± sd over *spatial_seeds*.
    """
    from aqqua_geo.mapping.model import BRTEnsemble
    from aqqua_geo.mapping.model_selection import DEFAULT_GRID, regression_scores, spatial_block_cv
    from aqqua_geo.mapping.predict import total_pg_c

    d = obs[obs["taxon"] == taxon].reset_index(drop=True)
    if d.empty:
        raise KeyError(f"taxon {taxon!r} not in the observation table")
    X = d[["lon", "lat", *FEATURES]]
    y = d[target].to_numpy(dtype="f8")
    tr, te = split if split is not None else stratified_split(y, seed=seed)
    protocol = {**PROTOCOL, "label_scale": scale_factor,
                "params": {**PROTOCOL["params"], **({} if base_score is None else {"base_score": base_score})}}
    proto = BRTEnsemble(**protocol, search=grid or DEFAULT_GRID, n_members=n_resamples,
                        nthread=nthread, random_state=seed)
    proto.fit(X.iloc[tr], y[tr])
    ens = proto.predict_ensemble(X.iloc[te])
    member_r2 = np.array([regression_scores(y[te], p)["r2"] for p in ens])
    ens_scores = regression_scores(y[te], ens.mean(axis=0))
    from scipy.stats import pearsonr

    p_test = float(pearsonr(y[te], ens.mean(axis=0))[1]) if np.ptp(ens.mean(axis=0)) > 0 else 1.0

    from aqqua_geo.mapping.model_selection import log10_r2

    big = int(np.argmax(y[te]))
    rest = np.delete(np.arange(te.size), big)
    ens_mean = ens.mean(axis=0)
    r2_wo_big = regression_scores(y[te][rest], ens_mean[rest])["r2"]
    big_share = float((y[te][big] - y[te].mean()) ** 2 / ((y[te] - y[te].mean()) ** 2).sum())
    tuned = {**protocol, "params": {**protocol["params"], **proto.search_.best_params},
             "cv": "stratified"}
    spatial_runs = [spatial_block_cv(BRTEnsemble(**{**tuned, "resampling": "bootstrap"},
                                                 n_members=spatial_members, nthread=nthread,
                                                 random_state=s),
                                     X, y, block_deg=block_deg, random_state=s) for s in spatial_seeds]
    spatial = spatial_runs[0]
    spatial_r2 = np.array([r["r2"] for r in spatial_runs]) * 100
    full = BRTEnsemble(**tuned, n_members=n_resamples, nthread=nthread, random_state=seed).fit(X, y)
    gridded = full.grid(cube, name="biomass")
    return {
        "taxon": taxon,
        "n_cells": len(d),
        "pct_zero": float((y == 0).mean() * 100),
        "best_params": proto.search_.best_params,
        "n_rounds": proto.n_rounds_,
        "r2_test_mean": float(member_r2.mean() * 100),
        "r2_test_sd": float(member_r2.std(ddof=1) * 100) if member_r2.size > 1 else float("nan"),
        "r2_test_ensemble": ens_scores["r2"] * 100,
        "pearson_test_ensemble": ens_scores["pearson_r"],
        "pearson_p_test": p_test,  # they count a taxon in totals only if p < 0.05
        "r2_test_log10": log10_r2(y[te], ens_mean) * 100,
        "r2_test_without_largest": r2_wo_big * 100,
        "largest_test_cell_variance_share": big_share * 100,
        "r2_spatial_cv": float(spatial_r2.mean()),
        "r2_spatial_cv_sd_seeds": float(spatial_r2.std(ddof=1)) if spatial_r2.size > 1 else float("nan"),
        "r2_spatial_cv_folds": [r * 100 for r in spatial["r2_per_fold"]],
        "base_score": base_score,
        "total_pg_c": total_pg_c(gridded["biomass_mean"], thickness_m),
        "model": full,
        "map": gridded,
    }


def reproduce(
    shared_dir: str | Path | None = None,
    *,
    taxa: str | list[str] | None = "all",
    n_resamples: int = 100,
    n_resamples_other: int = 20,
    nthread: int = 1,
    out_dir: str | Path | None = None,
    grid_other: dict[str, list] | None = None,
    progress: bool = True,
    layer: str = "0_200",
    obs_path: str | Path | None = None,
    results_path: str | Path | None = None,
    thickness_m: float | None = None,
    scale_factor: float | dict[str, float] = POISSON_SCALE,
    base_score: float | None = None,
    grid: dict[str, list] | None = None,
    spatial_seeds: tuple[int, ...] = (0,),
) -> dict[str, Any]:
    """Reproduce Drago et al. 2022's Copepoda 0–200 m model, then every taxon.

    *shared_dir* (``shared/data``) gives their exact Copepoda train/test split and their
    ``cv_metrics``; without it the bundled table/reference map and our own stratified split are
    used. Other taxa use ``n_resamples_other`` resamples and *grid_other* (default: eta 0.1,
    max_depth 2/4/6, min_child_weight 3) to keep the run short on two cores.

    Returns ``{"copepoda": {...}, "taxa": DataFrame, "pngs": [...]}`` where the Copepoda entry
    holds (a) ``r2_test_mean``/``sd`` (their protocol; theirs: ``drago_r2_mean``/``sd``),
    (b) ``r2_spatial_cv``, (c) ``map_pearson_r``/``map_spearman_rho`` against their
    ``pred_mean``, and both global totals in Pg C.
    """
    from scipy.stats import pearsonr, spearmanr

    from aqqua_geo.mapping.predict import total_pg_c

    top, bottom = (float(v) for v in layer.split("_"))
    thickness = float(thickness_m) if thickness_m is not None else bottom - top
    scale = (lambda t: scale_factor.get(t, POISSON_SCALE)) if isinstance(scale_factor, dict) else (lambda t: scale_factor)
    if obs_path is None and shared_dir is not None:
        obs_path = _dataset_dir(shared_dir) / f"3.biomass_env_{layer}m.Rdata"
    if results_path is None and shared_dir is not None:
        results_path = _dataset_dir(shared_dir) / f"results/{layer}/Copepoda_world_{layer}m_without_model_full.rds"
    if obs_path is not None:
        obs = _rename(read_r(obs_path)["d"].reset_index(drop=True))
        obs["taxon"] = obs["taxon"].astype(str)
    elif layer == "0_200":
        obs = open_bundled_observations()
    else:
        raise FileNotFoundError(f"layer {layer}: give shared_dir or obs_path (only 0-200 m is bundled)")
    cube = open_bundled_cube_file()
    have_results = results_path is not None and Path(results_path).is_file()
    ref = (_reference_map(results_path) if have_results else
           open_bundled_reference_map() if layer == "0_200" else None)
    n_cop = int((obs["taxon"] == "Copepoda").sum())
    split = _their_split_from(results_path, n_cop) if have_results else None

    cop = evaluate_taxon(obs, "Copepoda", cube, n_resamples=n_resamples, split=split, grid=grid,
                         nthread=nthread, thickness_m=thickness, scale_factor=scale("Copepoda"),
                         base_score=base_score, spatial_seeds=spatial_seeds)
    if ref is None:
        raise FileNotFoundError(f"layer {layer}: their Copepoda results file {results_path} is needed")
    ref_grid = table_to_grid(ref, "pred_mean", cube)
    ours = cop["map"]["biomass_mean"]
    both = np.isfinite(ours.values) & np.isfinite(ref_grid.values)
    a, b = ours.values[both], ref_grid.values[both]
    cop.update({
        "split": "theirs (d_train/d_test)" if split is not None else "ours (stratified, seed 0)",
        "map_pearson_r": float(pearsonr(a, b)[0]),
        "map_pearson_r_log": float(pearsonr(np.log10(a), np.log10(b))[0]),
        "map_spearman_rho": float(spearmanr(a, b)[0]),
        "map_n_cells": int(both.sum()),
        "drago_total_pg_c": total_pg_c(ref_grid, thickness),
        "layer": layer, "thickness_m": thickness,
    })
    if have_results:
        cv = read_r(results_path)["cv_metrics"]
        cop["drago_r2_mean"] = float(cv["R2"].mean())
        cop["drago_r2_sd"] = float(cv["R2"].std(ddof=1))
    else:  # the figures printed in their results file (cv_metrics, 100 resamples)
        cop["drago_r2_mean"], cop["drago_r2_sd"] = 60.6, 3.7

    pngs: list[Path] = []
    if out_dir is not None:
        pngs = _plot_copepoda(cop, ref_grid, Path(out_dir), obs)

    rows = [_row(cop)]
    names = sorted(set(obs["taxon"])) if taxa == "all" else list(taxa or [])
    names = [t for t in names if t != "Copepoda"]
    iterator: Any = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="taxa", unit="taxon")
    for t in iterator:
        rows.append(_row(evaluate_taxon(obs, t, cube, n_resamples=n_resamples_other,
                                        grid=grid_other or GRID_OTHER, spatial_members=5,
                                        nthread=nthread, thickness_m=thickness, scale_factor=scale(t),
                                        base_score=base_score, spatial_seeds=spatial_seeds)))
    table = pd.DataFrame(rows).sort_values("total_pg_c", ascending=False, ignore_index=True)
    return {"copepoda": {k: v for k, v in cop.items() if k not in ("model", "map")},
            "copepoda_model": cop["model"], "copepoda_map": cop["map"], "taxa": table, "pngs": pngs}


def _row(res: dict[str, Any]) -> dict[str, Any]:
    keys = ("taxon", "n_cells", "pct_zero", "r2_test_mean", "r2_test_sd", "r2_test_ensemble",
            "r2_test_log10", "r2_test_without_largest", "largest_test_cell_variance_share",
            "pearson_p_test", "r2_spatial_cv", "r2_spatial_cv_sd_seeds", "total_pg_c", "n_rounds")
    return {k: res[k] for k in keys}


def _plot_copepoda(cop: dict[str, Any], ref_grid: xr.DataArray, out: Path, obs: pd.DataFrame
                   ) -> list[Path]:
    from aqqua_geo.mapping import plotting

    attrs = {"long_name": "Copepoda carbon biomass, 0-200 m", "units": "mg m-3"}
    ours = cop["map"]["biomass_mean"].assign_attrs(attrs)
    sd = cop["map"]["biomass_std"].assign_attrs(
        {**attrs, "long_name": "ensemble sd of Copepoda carbon biomass"})
    theirs = ref_grid.assign_attrs(attrs)
    pts = obs[obs["taxon"] == "Copepoda"]
    lo, hi = 0.1, 20.0
    return [
        plotting.plot_map(ours, out / "copepoda_aqqua.png", log=True, vmin=lo, vmax=hi,
                          title="Copepoda biomass, aqqua-geo BRTEnsemble",
                          points=(pts["lon"].to_numpy(), pts["lat"].to_numpy())),
        plotting.plot_map(theirs, out / "copepoda_drago2022.png", log=True, vmin=lo, vmax=hi,
                          title="Copepoda biomass, Drago et al. 2022 (pred_mean)"),
        plotting.plot_map(sd, out / "copepoda_aqqua_sd.png", cmap="magma",
                          title="Copepoda biomass ensemble sd, aqqua-geo"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "runs" / "drago2022"))
    p.add_argument("--taxa", default="all", help="'all', 'none' or a comma-separated list")
    p.add_argument("--n-resamples", type=int, default=100)
    p.add_argument("--n-resamples-other", type=int, default=20)
    p.add_argument("--nthread", type=int, default=1)
    p.add_argument("--min-r2", type=float, default=0.1, help="spatial-CV R² floor for the gated total")
    p.add_argument("--layer", default="0_200", help="their layer: 0_200 or 200_500 (files 3.biomass_env_<layer>m.Rdata)")
    p.add_argument("--obs-path", default=None, help="their table d for the layer (default: in --shared)")
    p.add_argument("--results-path", default=None, help="their Copepoda results .rds for the layer")
    p.add_argument("--thickness-m", type=float, default=None, help="layer thickness (default: from --layer)")
    p.add_argument("--scale-factor", type=float, default=POISSON_SCALE, help="Poisson pseudo-count scale")
    p.add_argument("--base-score", type=float, default=None,
                   help="xgboost base_score; 0.5 = R xgboost 1.x default the authors ran")
    p.add_argument("--spatial-seeds", default="0", help="seeds of the spatial-block CV (spread reported)")
    p.add_argument("--their-settings", action="store_true",
                   help="Copepoda: their chosen eta/max_depth/min_child_weight (lowest_error) instead of the grid")
    args = p.parse_args()

    import pandas as pd

    shared = args.shared if (Path(args.shared) / "drago2022_uvp5_biomass").is_dir() else None
    taxa = "all" if args.taxa == "all" else [] if args.taxa == "none" else args.taxa.split(",")
    t0 = time.perf_counter()
    grid = None
    if args.their_settings and shared:
        from aqqua_geo.mapping.drago2022 import read_r as _read

        results = args.results_path or (_dataset_dir(shared) / f"results/{args.layer}/Copepoda_world_{args.layer}m_without_model_full.rds")
        best = _read(results)["lowest_error"]
        grid = {k: [float(best[k].iloc[0])] for k in ("eta", "max_depth", "min_child_weight")}
        grid["max_depth"] = [int(grid["max_depth"][0])]
    res = reproduce(shared, taxa=taxa, n_resamples=args.n_resamples,
                    n_resamples_other=args.n_resamples_other, nthread=args.nthread, out_dir=args.out,
                    layer=args.layer, obs_path=args.obs_path, results_path=args.results_path,
                    thickness_m=args.thickness_m, scale_factor=args.scale_factor,
                    base_score=args.base_score, grid=grid,
                    spatial_seeds=tuple(int(x) for x in args.spatial_seeds.split(",")))
    wall = time.perf_counter() - t0
    c = res["copepoda"]
    print(f"\n=== Copepoda 0-200 m (data: {'shared R files' if shared else 'bundled'}; split: {c['split']}) ===")
    print(f"{'figure':52s} {'aqqua-geo':>12s} {'Drago 2022':>12s}")
    print(f"{'(a) test R2 %, mean of resample models':52s} {c['r2_test_mean']:12.1f} {c['drago_r2_mean']:12.1f}")
    print(f"{'    sd over resamples':52s} {c['r2_test_sd']:12.1f} {c['drago_r2_sd']:12.1f}")
    print(f"{'    test R2 % of the ensemble mean':52s} {c['r2_test_ensemble']:12.1f} {'-':>12s}")
    print(f"{'    test R2 % of log10 biomass (ensemble mean)':52s} {c['r2_test_log10']:12.1f} {'-':>12s}")
    print(f"{'    test R2 % without the largest test cell':52s} {c['r2_test_without_largest']:12.1f} {'-':>12s}"
          f"   (that cell: {c['largest_test_cell_variance_share']:.0f} % of the test variance)")
    print(f"{'(b) spatial-block CV R2 % (10 deg, 5 folds, pooled)':52s} {c['r2_spatial_cv']:12.1f} {'-':>12s}"
          f"   (sd over seeds {c['r2_spatial_cv_sd_seeds']:.1f})")
    print(f"    xgboost base_score: {c['base_score'] if c['base_score'] is not None else 'installed default'}; "
          f"layer {c['layer']} m, thickness {c['thickness_m']:g} m")
    folds = ", ".join(f"{r:.0f}" for r in c["r2_spatial_cv_folds"])
    print(f"{'    per fold':52s} {folds:>25s}")
    print(f"{'(c) map Pearson r vs their pred_mean':52s} {c['map_pearson_r']:12.3f} {'1':>12s}")
    print(f"{'    Pearson r of log10 maps / Spearman rho':52s} {c['map_pearson_r_log']:6.3f} / {c['map_spearman_rho']:.3f}")
    print(f"{'    global total, Pg C (0-200 m)':52s} {c['total_pg_c']:12.4f} {c['drago_total_pg_c']:12.4f}")
    print(f"    chosen: {c['best_params']}, {c['n_rounds']} rounds ({c['map_n_cells']} map cells compared)")

    table: pd.DataFrame = res["taxa"]
    if len(table) > 1:
        pd.set_option("display.width", 160)
        print("\n=== all taxa (0-200 m) ===")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        from aqqua_geo.mapping.drago2022 import HIERARCHY, additive_taxa
        from aqqua_geo.mapping.totals import additive_sum

        community = table[table["taxon"] != "Copepoda_refit"]  # a re-fit of Copepoda: not additive
        tot = dict(zip(community["taxon"], community["total_pg_c"]))
        naive = float(community["total_pg_c"].sum())
        parts = additive_taxa(list(tot))
        additive = float(sum(tot[t] for t in parts))
        ok = dict(zip(community["taxon"], community["r2_spatial_cv"] >= 100 * args.min_r2))
        gated, used = additive_sum(tot, HIERARCHY, ok)
        sig = community[community["taxon"].isin(parts) & (community["pearson_p_test"] < 0.05)]
        print(f"\nglobal zooplankton carbon 0-200 m, Pg C:\n"
              f"  every taxon added (groups and their parts: double counted) {naive:.3f} ({len(community)} taxa)\n"
              f"  hierarchy-aware (Rhizaria, Cnidaria replaced by their parts) {additive:.3f} ({len(parts)} taxa)\n"
              f"  hierarchy-aware and spatial-CV R2 >= {args.min_r2:g}             {gated:.3f} ({len(used)} taxa: {', '.join(used)})\n"
              f"  hierarchy-aware, test p < 0.05 (their rule)                 {sig['total_pg_c'].sum():.3f} ({len(sig)} taxa)")
    print(f"\nwall time {wall:.0f} s; PNGs: {[str(x) for x in res['pngs']]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "taxa.csv", index=False)
    (out / "copepoda.json").write_text(json.dumps({**c, "wall_s": wall}, indent=2, default=str))


if __name__ == "__main__":
    main()
