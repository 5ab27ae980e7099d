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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "runs" / "drago2022"))
    p.add_argument("--taxa", default="all", help="'all', 'none' or a comma-separated list")
    p.add_argument("--n-resamples", type=int, default=100)
    p.add_argument("--n-resamples-other", type=int, default=20)
    p.add_argument("--nthread", type=int, default=1)
    args = p.parse_args()

    import pandas as pd

    from aqqua_geo.mapping.drago2022 import reproduce

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
        community = table[table["taxon"] != "Copepoda_refit"]  # a re-fit of Copepoda: not additive
        sig = community[community["pearson_p_test"] < 0.05]
        print(f"\nglobal zooplankton carbon 0-200 m (without Copepoda_refit): "
              f"{community['total_pg_c'].sum():.3f} Pg C ({len(community)} taxa), "
              f"{sig['total_pg_c'].sum():.3f} Pg C ({len(sig)} taxa with test p < 0.05, their rule)")
    print(f"\nwall time {wall:.0f} s; PNGs: {[str(x) for x in res['pngs']]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "taxa.csv", index=False)
    (out / "copepoda.json").write_text(json.dumps({**c, "wall_s": wall}, indent=2, default=str))


if __name__ == "__main__":
    main()
