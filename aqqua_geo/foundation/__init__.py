"""Plankton foundation model: DINOv2-style SSL on packed native-resolution images.

Public entry points are re-exported lazily (importing the package does not import torch):
``load_config``, ``pretrain`` (training) and ``load_backbone``, ``embed_images`` (model core).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_config": "aqqua_geo.foundation.config",
    "pretrain": "aqqua_geo.foundation.train",
    "load_backbone": "aqqua_geo.foundation.backbone_io",
    "embed_images": "aqqua_geo.foundation.embed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aqqua_geo.foundation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
