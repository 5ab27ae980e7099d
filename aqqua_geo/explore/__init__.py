"""Interactive explorer of the embedding space: a 2-D map of all objects, coloured by any
metadata or prediction column, with images, scale bars, filters, selection and export.

``aqqua explore --store DIR --embeddings PATH`` serves it locally; ``--static OUT`` writes a
folder that works from disk. Python API::

    from aqqua_geo.explore import Explorer, serve, write_static
    ex = Explorer.open("STORE", "OUT/embeddings.zarr", "OUT/predictions.parquet", method="umap")
    write_static(ex, "explorer/")          # or: serve(ex, port=0)
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "Explorer": "aqqua_geo.explore.app",
    "read_embeddings": "aqqua_geo.explore.embeddings",
    "get_layout": "aqqua_geo.explore.layout",
    "ExplorerServer": "aqqua_geo.explore.server",
    "serve": "aqqua_geo.explore.server",
    "write_static": "aqqua_geo.explore.static_site",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
