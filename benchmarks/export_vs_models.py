"""POC export at 100 m and 1000 m: aqqua-geo's BRT ensembles vs 22 published models, on the
same trap and thorium observations (github.com/ThelmaPana/POC_flux_database, GPL-3.0).

Fixed protocol (the `poc_flux` recipe, mapping/configs/poc_flux.yaml; nothing here is tuned to
these data): log flux, squared error, Duan smearing; eta 0.05, max_depth 4, min_child_weight 5,
subsample 0.8, <= 800 rounds with early stopping on an inner spatial CV; predictors = the
bundled WOA-type 1° cube (0-200 m temperature, salinity, nutrients, oxygen, chl a, bathymetry,
distance to coast), collocated at the nearest valid cell within 200 km.

Prints, per target depth and per method (all / trap / thorium):
  (1) out-of-block skill: every observation predicted by a model that never saw its 10° block
      (grouped 5-fold over 10° blocks, 100 km buffer; inner tuning inside each fold), repeated
      over --seeds; R²_log10, rmse_log10, bias_log10 (pred - obs), Spearman rho, vs each
      published model's matched estimate on the same rows (rows where that model has a value);
  (2) map correlation (Pearson r of log10 fluxes) of the full-data map with each published grid;
  (3) global totals (Pg C yr-1, ocean cells, ensemble spread) next to the published integrals;
  (4) where the map disagrees most with the median published observation-based grid (10° bands).

    python benchmarks/export_vs_models.py [--shared ../shared/data] [--seeds 0,1,2] [--out runs/export_vs_models]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
METHODS = {"all": None, "trap": "sediment trap", "thorium": "Thorium"}


def method_masks(d: pd.DataFrame):
    """``(label, row mask)`` of every observation method of :data:`METHODS` present in *d*."""
    for label, method in METHODS.items():
        sel = np.ones(len(d), bool) if method is None else (d["method"] == method).to_numpy()
        if sel.any():
            yield label, sel


def scores(obs: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R² of log10 values, rmse and bias of log10, Spearman rho (pairs with both > 0)."""
    from scipy.stats import spearmanr

    from aqqua_geo.mapping.model_selection import log10_r2

    ok = (obs > 0) & (pred > 0) & np.isfinite(obs) & np.isfinite(pred)
    a, b = np.log10(obs[ok]), np.log10(pred[ok])
    return {"n": int(ok.sum()), "r2_log10": log10_r2(obs[ok], pred[ok]),
            "rmse_log10": float(np.sqrt(np.mean((a - b) ** 2))), "bias_log10": float(np.mean(b - a)),
            "spearman": float(spearmanr(a, b)[0])}


def frame(cfg: dict, product: dict, cube, obs: pd.DataFrame) -> pd.DataFrame:
    """Observations of one target depth with collocated predictors (rows kept in table order)."""
    from aqqua_geo.mapping.collocate import collocate

    features = cfg["data"]["features"]
    d = obs.query(product["query"]).reset_index(drop=True)
    d = collocate(d, cube, variables=features, max_distance_km=cfg["data"]["max_distance_km"])
    return d


def out_of_block(cfg: dict, product: dict, d: pd.DataFrame, seeds: list[int], n_members: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-block predictions, one row per seed (NaN where predictors are missing): the
    smeared mean (what the maps and totals use) and the median ``exp(f)`` (log-scale point
    estimate). Each fold refits the whole pipeline (inner spatial CV, early stopping)."""
    from sklearn.base import clone

    from aqqua_geo.mapping.model import BRTEnsemble
    from aqqua_geo.mapping.model_selection import spatial_block_folds
    from aqqua_geo.mapping.workflow import product_model_kwargs

    features = cfg["data"]["features"]
    ok = d[features].notna().all(axis=1).to_numpy()
    X = d.loc[ok, ["lon", "lat", *features]].reset_index(drop=True)
    y = d.loc[ok, product["target"]].to_numpy("f8")
    kw = product_model_kwargs(cfg, product)
    mean = np.full((len(seeds), len(d)), np.nan)
    median = np.full((len(seeds), len(d)), np.nan)
    rows = np.flatnonzero(ok)
    for i, seed in enumerate(seeds):
        model = BRTEnsemble(**{**kw, "n_members": n_members, "random_state": seed}, features=features)
        for tr, te in spatial_block_folds(X["lon"].to_numpy(), X["lat"].to_numpy(), kw["n_splits"],
                                          kw["block_deg"], kw["buffer_km"], seed):
            m = clone(model).fit(X.iloc[tr], y[tr])
            mean[i, rows[te]] = m.predict(X.iloc[te])
            median[i, rows[te]] = m.predict_median(X.iloc[te])
    return mean, median


def skill_table(d: pd.DataFrame, matched: pd.DataFrame, oof: np.ndarray, oof_median: np.ndarray
                ) -> pd.DataFrame:
    """Ours (mean ± sd over seeds; smeared mean and median estimate) vs each published model,
    on that model's rows (``ours_*_same_rows``: our median estimate on exactly those rows)."""
    m = matched.set_index("id").reindex(d["id"])
    models = [c for c in matched.columns if c not in
              ("id", "method", "lon", "lat", "depth", "target_depth", "poc_flux_obs")]
    obs = d["poc_flux_obs"].to_numpy("f8")
    rows = []
    for label, sel in method_masks(d):
        for what, preds in (("aqqua-geo median exp(f)", oof_median), ("aqqua-geo mean (smeared)", oof)):
            ours = [scores(obs[sel], o[sel]) for o in preds]
            rows.append({"method": label, "model": what, "n": ours[0]["n"],
                         **{k: float(np.mean([s[k] for s in ours])) for k in ("r2_log10", "rmse_log10", "bias_log10", "spearman")},
                         "r2_log10_sd_seeds": float(np.std([s["r2_log10"] for s in ours], ddof=1)) if len(ours) > 1 else np.nan,
                         "ours_r2_log10_same_rows": np.nan, "ours_rmse_log10_same_rows": np.nan})
        for name in models:
            pub = m[name].to_numpy("f8")
            rows_m = sel & np.isfinite(pub) & (pub > 0)
            if rows_m.sum() < 10:
                continue
            s = scores(obs[rows_m], pub[rows_m])
            same = [scores(obs[rows_m], o[rows_m]) for o in oof_median]
            rows.append({"method": label, "model": name, **s, "r2_log10_sd_seeds": np.nan,
                         "ours_r2_log10_same_rows": float(np.mean([x["r2_log10"] for x in same])),
                         "ours_rmse_log10_same_rows": float(np.mean([x["rmse_log10"] for x in same]))})
    return pd.DataFrame(rows)


def baseline_rows(config: str, name: str, d: pd.DataFrame, seeds: list[int], n_members: int,
                  ours_median: np.ndarray) -> pd.DataFrame:
    """The control: the baseline recipe's product *name*, out of block on the same rows, folds
    and seeds; ``r2_log10_paired_gain`` is ours minus baseline per seed (mean, and how many seeds
    gained in ``n_seeds_gained``)."""
    from aqqua_geo.mapping.workflow import load_config, load_cube

    bcfg = load_config(config)
    product = next(p for p in bcfg["products"] if p["name"] == name)
    cube = load_cube(bcfg["env"])
    db = frame(bcfg, product, cube, d.drop(columns=[c for c in d.columns if c not in
                                                      ("id", "method", "lon", "lat", "depth", "target_depth",
                                                       "poc_flux_obs", "datetime", "duration")]))
    _, med = out_of_block(bcfg, product, db, seeds, n_members)
    obs = d["poc_flux_obs"].to_numpy("f8")
    rows = []
    for label, sel in method_masks(d):
        base = [scores(obs[sel], o[sel]) for o in med]
        ours = [scores(obs[sel], o[sel]) for o in ours_median]
        gain = np.array([a["r2_log10"] - b["r2_log10"] for a, b in zip(ours, base)])
        rows.append({"method": label, "model": f"baseline {bcfg['name']} median exp(f)", "n": base[0]["n"],
                     **{k: float(np.mean([s[k] for s in base])) for k in ("r2_log10", "rmse_log10", "bias_log10", "spearman")},
                     "r2_log10_sd_seeds": float(np.std([s["r2_log10"] for s in base], ddof=1)) if len(base) > 1 else np.nan,
                     "r2_log10_paired_gain": float(gain.mean()), "n_seeds_gained": int((gain > 0).sum())})
    return pd.DataFrame(rows)


def grid_correlations(mean_map, grids: pd.DataFrame, depth: float) -> pd.DataFrame:
    """Pearson r of log10 flux, our map vs each published grid, on the published cells."""
    from scipy.stats import pearsonr

    rows = []
    g = grids[(grids["depth"] == depth) & grids["poc_flux"].notna()]
    for name, sub in g.groupby("model", observed=True):
        ours = mean_map.sel(lat=xr_da(sub["lat"]), lon=xr_da(sub["lon"]), method="nearest").values
        pub = sub["poc_flux"].to_numpy("f8")
        ok = np.isfinite(ours) & (ours > 0) & (pub > 0)
        if ok.sum() < 100:
            continue
        rows.append({"model": str(name), "n_cells": int(ok.sum()),
                     "pearson_log10": float(pearsonr(np.log10(ours[ok]), np.log10(pub[ok]))[0])})
    return pd.DataFrame(rows)


def xr_da(s: pd.Series):
    import xarray as xr

    return xr.DataArray(s.to_numpy("f8"), dims="cell")


def disagreement(mean_map, grids: pd.DataFrame, depth: float) -> pd.DataFrame:
    """Mean log10(ours / median of the published observation-based grids) per 10° band."""
    g = grids[(grids["depth"] == depth) & grids["poc_flux"].notna() & (grids["poc_flux"] > 0)].copy()
    g["ours"] = mean_map.sel(lat=xr_da(g["lat"]), lon=xr_da(g["lon"]), method="nearest").values
    g["cell"] = list(zip(np.floor(g["lat"]), np.floor(g["lon"])))
    med = g.groupby("cell").agg(pub=("poc_flux", "median"), ours=("ours", "first"), lat=("lat", "first"))
    med = med[np.isfinite(med["ours"]) & (med["ours"] > 0)]
    med["log_ratio"] = np.log10(med["ours"] / med["pub"])
    med["band"] = (np.floor(med["lat"] / 10) * 10).astype(int)
    return med.groupby("band")["log_ratio"].agg(["mean", "count"]).rename(
        columns={"mean": "mean_log10_ours_over_median_published", "count": "n_cells"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--config", default=str(REPO / "mapping" / "configs" / "poc_flux.yaml"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cv-members", type=int, default=5, help="ensemble members inside each CV fold")
    p.add_argument("--map-members", type=int, default=10, help="members of the full-data map")
    p.add_argument("--out", default=str(REPO / "runs" / "export_vs_models"))
    p.add_argument("--baseline-config", default=None,
                   help="a second recipe scored out of block on the same rows and seeds (the control), "
                        "e.g. mapping/configs/poc_flux.yaml beside poc_flux_monthly.yaml")
    args = p.parse_args()

    from aqqua_geo.mapping import poc_flux
    from aqqua_geo.mapping.model import BRTEnsemble
    from aqqua_geo.mapping.totals import product_total
    from aqqua_geo.mapping.workflow import load_config, load_cube, product_model_kwargs

    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = load_config(args.config)
    cube = load_cube(cfg["env"])
    obs = poc_flux.read_observations(args.shared)
    integrals = poc_flux.read_integrals(args.shared)
    grids = poc_flux.read_obs_grids(args.shared)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 200)
    summary = {}
    for product in cfg["products"]:
        depth = float(product["depth_m"])
        d = frame(cfg, product, cube, obs)
        matched = poc_flux.read_matched(args.shared, depth)
        d = d.dropna(subset=cfg["data"]["features"]).reset_index(drop=True)  # e.g. undated rows (monthly)
        oof, oof_median = out_of_block(cfg, product, d, seeds, args.cv_members)
        table = skill_table(d, matched, oof, oof_median)
        if args.baseline_config:
            table = pd.concat([table, baseline_rows(args.baseline_config, product["name"], d, seeds,
                                                    args.cv_members, oof_median)], ignore_index=True)
        table.to_csv(out / f"skill_{int(depth)}m.csv", index=False)
        print(f"\n=== POC flux at {depth:g} m: out-of-block skill (10° blocks, 100 km buffer, seeds {seeds}) ===")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

        ok = d[cfg["data"]["features"]].notna().all(axis=1)
        kw = {**product_model_kwargs(cfg, product), "n_members": args.map_members}
        full = BRTEnsemble(**kw, features=cfg["data"]["features"]).fit(
            d.loc[ok, ["lon", "lat", *cfg["data"]["features"]]], d.loc[ok, product["target"]])
        mean_map = full.grid(cube, name="f")["f_mean"]
        if "month" in mean_map.dims:  # a monthly climatology: compare its annual mean
            mean_map = mean_map.mean("month")
        corr = grid_correlations(mean_map, grids, depth)
        corr.to_csv(out / f"map_correlation_{int(depth)}m.csv", index=False)
        print(f"\n--- map correlation (Pearson r, log10) with the published grids at {depth:g} m ---")
        print(corr.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

        tot = product_total(full, cube, "flux", depth)
        pub = integrals[integrals["depth"] == depth][["model", "type", "poc_flux_int"]]
        print(f"\n--- global total at {depth:g} m, Pg C yr-1 ---")
        print(f"aqqua-geo: {tot['total']:.2f} ± {tot['total_sd']:.2f} (members 2.5-97.5 %: "
              f"{tot['total_p2_5']:.2f}-{tot['total_p97_5']:.2f}); extrapolated cells: "
              f"{100 * tot['extrapolated_area_fraction']:.1f} % of the ocean area, "
              f"{100 * tot['extrapolated_total_fraction']:.1f} % of the total")
        print(pub.sort_values("poc_flux_int").to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(f"published range: {pub['poc_flux_int'].min():.2f}-{pub['poc_flux_int'].max():.2f}")

        dis = disagreement(mean_map, grids, depth)
        worst = dis.reindex(dis["mean_log10_ours_over_median_published"].abs().sort_values(ascending=False).index)
        print(f"\n--- where the map disagrees most with the median published obs-based grid ({depth:g} m) ---")
        print(worst.head(5).to_string(float_format=lambda v: f"{v:+.2f}"))
        summary[product["name"]] = {"skill": table.to_dict("records"), "map_correlation": corr.to_dict("records"),
                                    "total": tot, "published": pub.to_dict("records"),
                                    "disagreement_by_band": dis.reset_index().to_dict("records")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; tables in {out}")


if __name__ == "__main__":
    main()
