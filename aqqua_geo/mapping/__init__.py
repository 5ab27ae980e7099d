"""Geospatial half of aqqua-geo: per-sample aggregation, diversity, carbon export,
environmental cubes, collocation, habitat models and gridded products.

Import from the submodules (``from aqqua_geo.mapping.env import open_env``); the names below
are re-exported lazily so that ``import aqqua_geo.mapping`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "aggregate": "aqqua_geo.mapping.samples",
    "open_env": "aqqua_geo.mapping.env",
    "open_bundled_env": "aqqua_geo.mapping.env",
    "collocate": "aqqua_geo.mapping.collocate",
    "guidi_flux": "aqqua_geo.mapping.flux",
    "read_ecopart": "aqqua_geo.mapping.ecopart",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aqqua_geo.mapping' has no attribute {name!r}")
