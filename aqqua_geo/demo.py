"""The main job end to end on the bundled real data (``aqqua demo``).

One call runs the whole chain on a laptop CPU in minutes, each step through the same public
API a user calls in a notebook:

1. ingest the bundled EcoTaxa (ZooScan), IFCB and UVP6 samples into one AqQua store;
2. pretrain the ``tiny`` plankton ViT (DINOv2 losses) for a bounded time;
3. fit a k-NN species classifier on its embeddings, then embed + predict every image
   (classes, novelty, traits, carbon) into Zarr/Parquet;
4. benchmark the model against the morphometric random-forest baseline (leaderboard row);
5. export the predictions as an EcoTaxa import bundle;
6. aggregate per-sample concentrations, biomass and diversity;
7. compute the carbon export profile of the bundled UVP5 BATS casts (Guidi et al. 2008);
8. fit the BRT ensembles on the bundled Drago et al. (2022) UVP5 cells + WOA cube and write
   global CF Zarr + NetCDF maps and PNGs;
9. write the embedding explorer as a static page.

The bundled UVP6 vignettes carry no published sampling metadata, so the demo ingests them
with explicit placeholder constants (``aqqua_geo.data.UVP6_PLACEHOLDERS``); they serve the image model only
and never enter a map.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aqqua_geo import data


@dataclass
class DemoResult:
    """What the demo wrote: a name → path mapping plus the figures worth printing."""

    out: Path
    paths: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    leaderboard: Any = None  # pandas DataFrame of this run's leaderboard rows, best first


def run_demo(out: str | Path = "demo_out", pretrain_minutes: float = 2.0, console: Console | None = None) -> DemoResult:
    """Run the whole chain on the bundled data into *out*; returns what was written.

    *pretrain_minutes* bounds the self-supervised pretraining (the only long step). Re-running
    into the same folder starts over (the previous demo outputs are replaced).
    """
    import shutil

    console = console or Console()
    out = Path(out)
    if out.exists():
        if not (out / ".aqqua-demo").exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a previous demo output; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / ".aqqua-demo").touch()
    result = DemoResult(out=out)

    steps: list[tuple[str, Callable[[DemoResult], None]]] = [
        ("ingest bundled EcoTaxa + IFCB + UVP6 data", _ingest),
        (f"pretrain the cpu ViT ({pretrain_minutes:g} min cap)", lambda r: _pretrain(r, pretrain_minutes)),
        ("leaderboard: SSL vs random init vs morphometrics, frozen / fine-tuned / hybrid", _benchmark),
        ("best deployable classifier + embed + predict", _predict),
        ("EcoTaxa export", _export),
        ("per-sample concentrations, biomass, diversity", _samples),
        ("carbon export at BATS (UVP5 particles)", _flux),
        ("BRT ensembles → global CF maps", _maps),
        ("embedding explorer (static page)", _explorer),
    ]
    for i, (title, step) in enumerate(steps, 1):
        console.rule(f"[bold]{i}/{len(steps)} {title}")
        t0 = time.perf_counter()
        step(result)
        result.seconds[title] = time.perf_counter() - t0
    _print_summary(result, console)
    return result


# ----------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------
def _ingest(r: DemoResult) -> None:
    from aqqua_geo.ingest import ingest
    from aqqua_geo.store import AqquaStore

    store = r.out / "store"
    ecotaxa = data.path("ecotaxa_m106")
    ingest(ecotaxa / "import_test", store, fmt="ecotaxa")
    ingest(ecotaxa / "ref_exports" / "doi", store, fmt="ecotaxa")  # same images: de-duplicated
    ingest(data.path("ifcb"), store, fmt="ifcb", positions=data.DATA_DIR / "ifcb_positions.csv")
    data.write_uvp6_store(store)
    s = AqquaStore(store)
    r.paths["store"] = store
    r.figures["objects in store"] = f"{len(s)} ({', '.join(f'{k}: {v}' for k, v in s.metadata['instrument'].value_counts().items())})"
    r.figures["rejected / duplicates"] = f"{len(s.rejected())} / {len(s.duplicates())}"


def _pretrain(r: DemoResult, minutes: float) -> None:
    from aqqua_geo.foundation import load_config, pretrain

    # 300 steps take about a minute on 2 cores; the time cap bounds slower machines.
    cfg = load_config("cpu", overrides=["train.max_steps=300", f"train.max_minutes={minutes}"])
    run = pretrain(cfg, r.paths["store"], r.out / "pretrain")
    r.paths["backbone"] = run / "backbone.pt"
    r.paths["pretrain log"] = run / "log.csv"


def _benchmark(r: DemoResult) -> None:
    from aqqua_geo.downstream.benchmark import run_benchmark

    rows = run_benchmark([r.paths["backbone"]], r.paths["store"], r.out / "benchmark", names=["cpu-ssl"],
                         finetune_epochs=10)
    r.paths["leaderboard"] = r.out / "benchmark" / "leaderboard.md"
    r.leaderboard = rows.sort_values("balanced_accuracy", ascending=False)
    r.figures["leaderboard"] = "; ".join(
        f"{row.model}/{row.method}: bal.acc {row.balanced_accuracy:.3f}" for row in r.leaderboard.itertuples()
    )


def _predict(r: DemoResult) -> None:
    """Classify every image with the leaderboard's best *deployable* method, and say why."""
    from aqqua_geo.downstream.benchmark import deploy_best
    from aqqua_geo.downstream.inference import predict_store

    backbone, clf_path, why, best = deploy_best(r.leaderboard, r.out / "benchmark", r.paths["backbone"],
                                                r.paths["store"], r.out / "classifier" / "classifier.joblib",
                                                model="cpu-ssl")
    r.paths["classifier"] = clf_path
    r.figures["classifier used"] = f"{best['method']} on cpu-ssl: {why}"
    pred = predict_store(backbone, r.paths["store"], r.out / "inference", clf_path)
    r.paths["predictions"] = pred
    r.paths["embeddings"] = r.out / "inference" / "embeddings.zarr"


def _export(r: DemoResult) -> None:
    import pandas as pd

    from aqqua_geo.export.ecotaxa import write_ecotaxa
    from aqqua_geo.store import AqquaStore

    path = write_ecotaxa(AqquaStore(r.paths["store"]), pd.read_parquet(r.paths["predictions"]), r.out / "ecotaxa_export.zip")
    r.paths["EcoTaxa export"] = path


def _samples(r: DemoResult) -> None:
    import pandas as pd

    from aqqua_geo.mapping.samples import aggregate
    from aqqua_geo.store import AqquaStore

    meta = AqquaStore(r.paths["store"]).metadata
    meta = meta[meta["instrument"] != "UVP6"]  # placeholder positions: never mapped
    pred = pd.read_parquet(r.paths["predictions"])
    table = aggregate(pred[pred["object_id"].isin(meta["object_id"])], meta, diversity=True)
    path = r.out / "samples.parquet"
    table.to_parquet(path)
    r.paths["per-sample table"] = path
    r.figures["samples aggregated"] = str(len(table))


def _flux(r: DemoResult) -> None:
    from aqqua_geo.mapping.ecopart import flux_summary, plot_flux_profiles, read_ecopart

    out = r.out / "flux"
    out.mkdir()
    casts = read_ecopart(data.path("ecopart_bats361"))
    summary = flux_summary(casts)
    summary.to_csv(out / "bats361_flux_summary.csv", index=False)
    plot_flux_profiles(casts, out / "bats361_flux_profiles.png")
    r.paths["BATS flux"] = out
    at200 = summary[summary["horizon_m"] == 200.0]
    r.figures["BATS POC flux at 200 m (mg C m-2 d-1)"] = ", ".join(
        f"{row.profile_id}: {row.flux_mgC_m2_d:.1f}" for row in at200.itertuples()
    )


def _maps(r: DemoResult) -> None:
    import pandas as pd

    from aqqua_geo.mapping.poc_flux import PUBLISHED_RANGE_100M_PG_C_YR
    from aqqua_geo.mapping.workflow import fit_from_config, load_config, plot_from_config, predict_from_config

    cfg = load_config("demo", [f"out={r.out / 'maps'}", "predict.netcdf=true"])
    fit_from_config(cfg)
    zarr_path = predict_from_config(cfg, scheduler="threads")
    pngs = plot_from_config(cfg)
    r.paths["maps (Zarr)"] = zarr_path
    r.paths["maps (NetCDF)"] = zarr_path.with_suffix(".nc")
    r.paths["maps (PNG)"] = pngs[0].parent if pngs else r.out / "maps"
    r.paths["map totals"] = r.out / "maps" / "totals.csv"
    totals = pd.read_csv(r.out / "maps" / "totals.csv").set_index("product")
    lo, hi = PUBLISHED_RANGE_100M_PG_C_YR
    for name, row in totals.iterrows():
        gate = "" if row["skill_flag"] == "ok" else f", {row['skill_flag']}: not summed, not drawn"
        label = f"{name} total ({row['units']})"
        value = (f"{row['total']:.3g} ± {row['total_sd']:.2g} (spatial-CV {row['skill_metric']} "
                 f"{row['skill']:.2f}{gate}; {100 * row['extrapolated_total_fraction']:.0f} % in extrapolated cells)")
        if name == "poc_flux_100m":
            value += f"; published range {lo}-{hi}"
        r.figures[label] = value


def _explorer(r: DemoResult) -> None:
    from aqqua_geo.explore.app import Explorer
    from aqqua_geo.explore.static_site import write_static

    explorer = Explorer.open(r.paths["store"], r.paths["embeddings"], r.paths["predictions"])
    r.paths["explorer"] = write_static(explorer, r.out / "explorer")


def _print_summary(r: DemoResult, console: Console) -> None:
    table = Table(title=f"aqqua demo — outputs in {r.out}")
    table.add_column("output")
    table.add_column("path")
    for name, path in r.paths.items():
        table.add_row(name, str(path))
    console.print(table)
    figures = Table(title="figures")
    figures.add_column("what")
    figures.add_column("value")
    for name, value in r.figures.items():
        figures.add_row(name, str(value))
    console.print(figures)
    console.print(f"total {sum(r.seconds.values()) / 60:.1f} min")
