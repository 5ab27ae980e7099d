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
    build_reference_map,
    open_bundled_cube_file,
    open_bundled_observations,
    open_bundled_reference_map,
    read_copepoda_results,
    read_observations,
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
    """Their exact Copepoda split: ``d_train``/``d_test`` row names are 1-based positions in
    the Copepoda rows of ``d``."""
    if shared_dir is None:
        return None
    res = read_r(_dataset_dir(shared_dir) / COPEPODA_FILE)
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
) -> dict[str, Any]:
    """Their protocol for one taxon, plus spatial-block CV and a global map.

    (a) 80/20 quantile-stratified split; grid search on the training part (5-fold stratified
    CV, early stopping, 1-SE rule); ``n_resamples`` models fit on the training parts of
    repeated 5-fold splits, each scored on the test set (R², mean ± sd: their ``cv_metrics``).
    (b) spatial-block CV (``block_deg`` blocks, grouped 5-fold) of the same settings on all cells.
    (c) the ensemble refit on all cells, predicted on *cube* (``grid``), total in Pg C (0–200 m).
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
    proto = BRTEnsemble(**PROTOCOL, search=grid or DEFAULT_GRID, n_members=n_resamples,
                        nthread=nthread, random_state=seed)
    proto.fit(X.iloc[tr], y[tr])
    ens = proto.predict_ensemble(X.iloc[te])
    member_r2 = np.array([regression_scores(y[te], p)["r2"] for p in ens])
    ens_scores = regression_scores(y[te], ens.mean(axis=0))
    from scipy.stats import pearsonr

    p_test = float(pearsonr(y[te], ens.mean(axis=0))[1]) if np.ptp(ens.mean(axis=0)) > 0 else 1.0

    tuned = {**PROTOCOL, "params": {**PROTOCOL["params"], **proto.search_.best_params},
             "cv": "stratified"}
    spatial = spatial_block_cv(BRTEnsemble(**{**tuned, "resampling": "bootstrap"},
                                           n_members=spatial_members, nthread=nthread,
                                           random_state=seed),
                               X, y, block_deg=block_deg, random_state=seed)
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
        "r2_spatial_cv": spatial["r2"] * 100,
        "r2_spatial_cv_folds": [r * 100 for r in spatial["r2_per_fold"]],
        "total_pg_c": total_pg_c(gridded["biomass_mean"], LAYER_THICKNESS_M),
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

    obs = read_observations(shared_dir) if shared_dir is not None else open_bundled_observations()
    cube = open_bundled_cube_file()
    ref = build_reference_map(shared_dir) if shared_dir is not None else open_bundled_reference_map()
    n_cop = int((obs["taxon"] == "Copepoda").sum())
    split = _their_split(shared_dir, n_cop)

    cop = evaluate_taxon(obs, "Copepoda", cube, n_resamples=n_resamples, split=split,
                         nthread=nthread)
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
        "drago_total_pg_c": total_pg_c(ref_grid, LAYER_THICKNESS_M),
    })
    if shared_dir is not None:
        cv = read_copepoda_results(shared_dir)["cv_metrics"]
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
                                        nthread=nthread)))
    table = pd.DataFrame(rows).sort_values("total_pg_c", ascending=False, ignore_index=True)
    return {"copepoda": {k: v for k, v in cop.items() if k not in ("model", "map")},
            "copepoda_model": cop["model"], "copepoda_map": cop["map"], "taxa": table, "pngs": pngs}


def _row(res: dict[str, Any]) -> dict[str, Any]:
    keys = ("taxon", "n_cells", "pct_zero", "r2_test_mean", "r2_test_sd", "r2_test_ensemble",
            "pearson_p_test", "r2_spatial_cv", "total_pg_c", "n_rounds")
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
    args = p.parse_args()

    import pandas as pd

    shared = args.shared if (Path(args.shared) / "drago2022_uvp5_biomass").is_dir() else None
    taxa = "all" if args.taxa == "all" else [] if args.taxa == "none" else args.taxa.split(",")
    t0 = time.perf_counter()
    res = reproduce(shared, taxa=taxa, n_resamples=args.n_resamples,
                    n_resamples_other=args.n_resamples_other, nthread=args.nthread, out_dir=args.out)
    wall = time.perf_counter() - t0
    c = res["copepoda"]
    print(f"\n=== Copepoda 0-200 m (data: {'shared R files' if shared else 'bundled'}; split: {c['split']}) ===")
    print(f"{'figure':52s} {'aqqua-geo':>12s} {'Drago 2022':>12s}")
    print(f"{'(a) test R2 %, mean of resample models':52s} {c['r2_test_mean']:12.1f} {c['drago_r2_mean']:12.1f}")
    print(f"{'    sd over resamples':52s} {c['r2_test_sd']:12.1f} {c['drago_r2_sd']:12.1f}")
    print(f"{'    test R2 % of the ensemble mean':52s} {c['r2_test_ensemble']:12.1f} {'-':>12s}")
    print(f"{'(b) spatial-block CV R2 % (10 deg, 5 folds, pooled)':52s} {c['r2_spatial_cv']:12.1f} {'-':>12s}")
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
