"""``aqqua explore``: the interactive embedding explorer (local server or static folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``explore`` to *app*."""
    app.command("explore")(explore)


def explore(
    store: Path = typer.Option(..., "--store", exists=True, file_okay=False, help="AqQua store directory."),
    embeddings: Path = typer.Option(..., "--embeddings", exists=True, help="embeddings.zarr (embedding, object_id)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", exists=True, dir_okay=False,
                                               help="predictions.parquet keyed by object_id."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port of the local server; 0 picks a free one."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (keep local unless you mean it)."),
    static: Optional[Path] = typer.Option(None, "--static", file_okay=False,
                                          help="Write a self-contained HTML folder here instead of serving."),
    method: str = typer.Option("umap", "--method", help="2-D layout: umap, or pca (fast, linear)."),
    n_neighbors: int = typer.Option(15, "--n-neighbors", min=2, help="UMAP neighbourhood size."),
    min_dist: float = typer.Option(0.1, "--min-dist", min=0.0, help="UMAP minimum distance."),
    max_images: int = typer.Option(5000, "--max-images", min=0, help="Static mode: most images exported."),
    max_image_side: int = typer.Option(1024, "--max-image-side", min=16, help="Static mode: longest image side (px)."),
    export_dir: Path = typer.Option(Path("explore_exports"), "--export-dir", file_okay=False,
                                    help="Server mode: where selection exports (CSV, EcoTaxa) are written."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
    allow_host: Optional[list[str]] = typer.Option(None, "--allow-host",
                                                   help="Server mode: another host name the page is reached by "
                                                        "(Host header; local names are always allowed)."),
) -> None:
    """Explore the embedding space: 2-D map of all objects, their images, metadata and predictions."""
    from aqqua_geo.explore.app import Explorer
    from aqqua_geo.explore.layout import METHODS

    if method not in METHODS:
        raise typer.BadParameter(f"must be one of {', '.join(METHODS)}", param_hint="--method")
    kwargs = {"n_neighbors": n_neighbors, "min_dist": min_dist} if method == "umap" else {}
    typer.echo(f"computing the {method} layout (cached beside {embeddings.name})…", err=True)
    try:
        ex = Explorer.open(store, embeddings, predictions, method=method, **kwargs)
    except (ValueError, KeyError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if static is not None:
        from aqqua_geo.explore.static_site import write_static

        try:
            index = write_static(ex, static, max_images=max_images, max_image_side=max_image_side)
        except FileExistsError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote {index} ({len(ex)} points); open it in a browser (works from disk)")
        if open_browser:
            import webbrowser

            webbrowser.open(index.resolve().as_uri())
        return

    from aqqua_geo.explore.server import serve

    def ready(url: str) -> None:
        typer.echo(f"aqqua explorer: {len(ex)} points at {url}  (Ctrl-C to stop)")
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    try:
        serve(ex, host=host, port=port, export_dir=export_dir, on_ready=ready, allowed_hosts=allow_host or ())
    except OSError as err:  # port taken, host not local…
        typer.echo(f"error: cannot listen on {host}:{port} ({err.strerror or err}); try --port 0", err=True)
        raise typer.Exit(2) from None
