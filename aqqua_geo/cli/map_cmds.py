"""``aqqua map samples|fit|predict|plot``: habitat models and gridded products from YAML configs
(``mapping/configs/*.yaml``; see ``mapping/README.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from aqqua_geo._io import atomic_path

map_app = typer.Typer(help="Habitat-model maps: per-sample tables, BRT ensembles, CF Zarr maps, PNGs.",
                      no_args_is_help=True)

CONFIG_HELP = "YAML config (path, or a name in mapping/configs, e.g. demo, drago_copepoda)"
SET_HELP = "override a config value, e.g. --set model.n_members=20 (repeatable)"
SCHED_HELP = "dask: address of a running scheduler (tcp://host:8786), 'local' (LocalCluster) or 'threads' (default)"



def _config(config: str, overrides: Optional[List[str]]) -> dict:
    from aqqua_geo.mapping.workflow import load_config

    try:
        return load_config(config, overrides or [])
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config/--set") from None


@map_app.command("samples")
def samples_cmd(
    predictions: Path = typer.Option(..., "--predictions", exists=True, help="predictions.parquet"),
    store: Path = typer.Option(..., "--store", exists=True, file_okay=False, help="AqQua store"),
    out: Path = typer.Option(..., "--out", help="per-sample table to write (.parquet)"),
    group_col: str = typer.Option("pred_label", help="class/group column (pred_label, carbon_group...)"),
    depth_bins: Optional[str] = typer.Option(None, help="depth edges in m, e.g. 0,200,500"),
    diversity: bool = typer.Option(True, help="append diversity indices per sample"),
) -> None:
    """Per-sample concentrations/biomass (+ diversity) from object predictions and a store."""
    import pandas as pd

    from aqqua_geo.mapping.samples import aggregate

    try:
        bins = [float(v) for v in depth_bins.split(",")] if depth_bins else None
    except ValueError:
        raise typer.BadParameter(f"not a comma-separated list of numbers: {depth_bins!r}",
                                 param_hint="--depth-bins") from None
    table = aggregate(pd.read_parquet(predictions), str(store), depth_bins=bins,
                      group_col=group_col, diversity=diversity)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp)
    typer.echo(f"{len(table)} samples -> {out}")


@map_app.command("fit")
def fit_cmd(
    config: str = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", "--override", help=SET_HELP),
) -> None:
    """Fit one BRT ensemble per product (spatial-block CV, early stopping, bootstrap members)."""
    from aqqua_geo.mapping.workflow import fit_from_config

    fit_from_config(_config(config, set_))


@map_app.command("predict")
def predict_cmd(
    config: str = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", "--override", help=SET_HELP),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHED_HELP),
    max_regions: Optional[int] = typer.Option(None, help="write at most N regions, then stop (resume later)"),
    overwrite: bool = typer.Option(False, help="discard an existing OUT/maps.zarr instead of resuming"),
) -> None:
    """Predict the fitted ensembles on the cube into OUT/maps.zarr (lazy, resumable, CF)."""
    from aqqua_geo.mapping.workflow import predict_from_config

    path = predict_from_config(_config(config, set_), scheduler=scheduler, max_regions=max_regions,
                               overwrite=overwrite)
    typer.echo(f"maps -> {path}")


@map_app.command("plot")
def plot_cmd(
    config: str = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", "--override", help=SET_HELP),
    projection: Optional[str] = typer.Option(None, help="Robinson or PlateCarree"),
) -> None:
    """PNG maps (coastlines offline, colour bars with units) of OUT/maps.zarr."""
    from aqqua_geo.mapping.workflow import plot_from_config

    for p in plot_from_config(_config(config, set_), projection=projection):
        typer.echo(str(p))


def register(app: typer.Typer) -> None:
    """Add the ``map`` command group to *app*."""
    app.add_typer(map_app, name="map")
