"""The ``aqqua`` command line.

Each command group lives in its own module with a ``register(app)`` function; heavy
libraries (torch, xarray, xgboost) are imported inside the command bodies so that
``aqqua --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="aqqua",
    help="aqqua-geo: plankton images → AqQua store → foundation model → global maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command group; each owns its commands.
_COMMAND_MODULES = (
    "store_cmds",  # info, store compact|upgrade
    "ingest_cmds",  # ingest, validate
    "pretrain_cmds",  # pretrain
    "downstream_cmds",  # embed, predict, finetune, distill, benchmark, export-ecotaxa
    "map_cmds",  # map samples|fit|predict|plot
    "explore_cmds",  # explore
    "demo_cmds",  # demo
)

for _name in _COMMAND_MODULES:
    _module = importlib.import_module(f"{__name__}.{_name}")
    _module.register(app)


def main() -> None:
    """Entry point of the ``aqqua`` console script."""
    app()
