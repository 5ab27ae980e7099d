"""``aqqua pretrain``: DINOv2-style SSL pretraining of the plankton ViT on a store.

Runs as one process, or one process per GPU under ``torchrun`` (see
``foundation/README.md`` and ``foundation/slurm/pretrain.sbatch``).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``pretrain`` to *app*."""

    @app.command("pretrain")
    def pretrain_command(
        config: str = typer.Option(
            ..., "--config", "-c", help="Config YAML, or a name in foundation/configs (tiny, vit_s14, ...)."
        ),
        store: Path = typer.Option(..., "--store", "-s", help="AqQua store to pretrain on."),
        out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, backbone.pt, log.csv)."),
        override: list[str] = typer.Option(
            [], "--override", help="Config override key.sub=value (YAML value); repeatable."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue exactly from OUT/checkpoints/last.pt."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        """Pretrain a plankton ViT (DINO + iBOT + KoLeo) on STORE; write OUT/backbone.pt."""
        from rich.console import Console

        from aqqua_geo.foundation.config import ConfigError, load_config

        console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line
        try:
            cfg = load_config(config, override)
        except ConfigError as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2) from None
        if not (store / "manifest.json").is_file():
            console.print(f"[red]error:[/red] {store} is not an AqQua store (no manifest.json)")
            raise typer.Exit(2)

        from aqqua_geo.foundation.train import pretrain

        try:
            run = pretrain(cfg, store, out, resume=resume, progress=progress)
        except (FileExistsError, ValueError, FloatingPointError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(1) from None
        if int(os.environ.get("RANK", "0")) == 0 and (run / "log.csv").is_file():  # once per job
            _summary(run, console)


def _summary(run: Path, console) -> None:
    import pandas as pd
    from rich.table import Table

    log = pd.read_csv(run / "log.csv")
    last = log.iloc[-1]
    table = Table(title=f"pretrain: {run}", show_header=False)
    table.add_row("steps", f"{int(last['step'])}")
    table.add_row("loss (first → last)", f"{log['loss'].iloc[0]:.4f} → {last['loss']:.4f}")
    table.add_row("images/s (median)", f"{log['images_per_s'].median():.1f}")
    table.add_row("tokens/s (median)", f"{log['tokens_per_s'].median():.0f}")
    table.add_row("packing efficiency (mean)", f"{log['packing_efficiency'].mean():.3f}")
    table.add_row("backbone", str(run / "backbone.pt"))
    table.add_row("loss curve", str(run / "loss_curve.png"))
    console.print(table)
