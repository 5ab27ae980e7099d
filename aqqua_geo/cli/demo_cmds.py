"""``aqqua demo``: the main job end to end on the bundled real data (see aqqua_geo.demo)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Output folder (replaced if it is a previous demo)."),
    pretrain_minutes: float = typer.Option(2.0, min=0.05, help="Time cap of the self-supervised pretraining."),
) -> None:
    """Ingest → pretrain → predict → benchmark → EcoTaxa export → samples → maps → explorer."""
    from aqqua_geo.demo import run_demo

    run_demo(out, pretrain_minutes=pretrain_minutes)


def register(app: typer.Typer) -> None:
    """Add this module's commands to *app*."""
    app.command("demo")(demo)
