"""The particle route calibrated: UVP5 BATS 361 casts (July 2019) -> POC flux, and what a fit of
A (and b) against trap fluxes changes.

Prints, for each cast and horizon (150, 200 m):
  * the flux with Guidi et al. 2008's relation (A 12.5, b 3.81, 0.102-1.5 mm) three ways: linear
    interpolation between 5-m bins (the old figure), the 5-m bin alone, and the particles pooled
    over a --window-m window, with its Poisson counting error and the share of the flux in the
    largest size class;
  * the same with the 35 um-5 mm size range of Clements et al. 2023 (Guidi's A, b: extrapolated);
  * the co-located trap/thorium observations in shared/data/poc_flux_obs (space/time/depth
    windows): at BATS there are none (nearest: 476 km, 2011);
  * a fit of the relation to the trap flux given by --trap-flux at --trap-depth (default: the BATS
    sediment-trap climatology median at 150 m quoted in issue 14, 24 mg C m-2 d-1; it is not in
    shared/data, so it is an input of this script, not of the package). With two casts only A is
    identifiable; the rmse profile over b shows it. The fitted relation is then applied at 200 m.

    python benchmarks/uvp_flux_calibration.py [--shared ../shared/data] [--window-m 20]
        [--trap-flux 24 --trap-depth 150] [--out runs/uvp_flux_calibration]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--window-m", type=float, default=20.0)
    p.add_argument("--trap-flux", type=float, default=24.0, help="trap flux to calibrate against, mg C m-2 d-1")
    p.add_argument("--trap-depth", type=float, default=150.0)
    p.add_argument("--horizons", default="150,200")
    p.add_argument("--out", default=str(REPO / "runs" / "uvp_flux_calibration"))
    args = p.parse_args()

    from aqqua_geo.mapping import ecopart as ep
    from aqqua_geo.mapping import poc_flux
    from aqqua_geo.mapping.flux import GUIDI2008, flux_relation
    from aqqua_geo.mapping.flux_calibration import fit_relation, match_traps

    pd.set_option("display.width", 220)
    horizons = tuple(float(h) for h in args.horizons.split(","))
    casts = ep.read_ecopart(Path(args.shared) / "ecopart_uvp5_bats361")
    relations = {"guidi2008": GUIDI2008, "clements2023": flux_relation("clements2023")}
    tables = []
    for name, rel in relations.items():
        t = ep.flux_summary(casts, horizons, relation=rel, window_m=args.window_m)
        t.insert(0, "size_range", name)
        tables.append(t)
    tab = pd.concat(tables, ignore_index=True)
    cols = ["size_range", "profile_id", "horizon_m", "flux_mgC_m2_d", "bin_flux_mgC_m2_d",
            "window_flux_mgC_m2_d", "window_flux_sd_poisson", "window_flux_rel_sd",
            "window_volume_l", "window_n_particles", "window_largest_class_share"]
    print(f"=== UVP5 flux, mg C m-2 d-1 (interpolated / 5-m bin / {args.window_m:g}-m window ± Poisson sd) ===")
    print(tab[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))

    obs = poc_flux.read_observations(args.shared)
    windows = tab[tab["size_range"] == "guidi2008"][["profile_id", "lat", "lon", "datetime", "horizon_m"]]
    near = match_traps(windows, obs, max_km=300, max_days=None, depth_tol_m=100)
    print(f"\nco-located observations in poc_flux_obs (300 km, any date, ±100 m): {len(near)}")

    rows, profiles = [], {}
    for name, rel in relations.items():
        counts, vols = [], []
        for cast in casts:
            ds = ep.psd(cast)
            c, v, _ = ep.window_counts(ds, args.trap_depth - args.window_m / 2, args.trap_depth + args.window_m / 2)
            counts.append(c)
            vols.append(v)
        edges = ep.ECOPART_CLASS_EDGES_MM
        res = fit_relation(np.array(counts), np.array(vols), edges, np.full(len(casts), args.trap_flux),
                           size_range=name, start=rel)
        profiles[name] = res.profile
        after = ep.flux_summary(casts, horizons, relation=res.relation, window_m=args.window_m)
        before = tab[tab["size_range"] == name].reset_index(drop=True)
        rows.append({"size_range": name, **res.as_dict(),
                     **{f"before_{h:g}m": float(before.loc[before["horizon_m"] == h, "window_flux_mgC_m2_d"].median())
                        for h in horizons},
                     **{f"after_{h:g}m": float(after.loc[after["horizon_m"] == h, "window_flux_mgC_m2_d"].median())
                        for h in horizons}})
    fit = pd.DataFrame(rows)
    print(f"\n=== fit to the trap flux {args.trap_flux:g} mg C m-2 d-1 at {args.trap_depth:g} m "
          f"({len(casts)} casts, {args.window_m:g}-m windows) ===")
    print(fit.drop(columns=["note"]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for r in rows:
        print(f"  {r['size_range']}: {r['note']}")
    for name, prof in profiles.items():
        spread = prof["rmse_log10"].max() - prof["rmse_log10"].min()
        print(f"  {name}: rmse_log10 over b in [{prof['b'].min():g}, {prof['b'].max():g}] varies by {spread:.3f} "
              "(flat = b not identifiable from these pairs)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tab.to_csv(out / "uvp_flux.csv", index=False)
    fit.to_csv(out / "calibration.csv", index=False)
    (out / "calibration.json").write_text(json.dumps(rows, indent=2, default=float))
    print(f"\ntables in {out}")


if __name__ == "__main__":
    main()
