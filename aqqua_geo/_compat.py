"""Import-time compatibility fixes for the pinned CPU stack.

``torchvision==0.28.0`` on PyPI is a CUDA build; with the CPU ``torch==2.13.0`` wheel its
C++ extension cannot load and ``import torchvision`` (hence ``import timm``) fails with
``operator torchvision::nms does not exist``. Registering the two op schemas that
torchvision's meta registrations expect lets the pure-Python parts import; only
torchvision's C++ ops (nms, roi_align, io.decode_*) stay unavailable, which we never use.
Import :func:`import_timm` instead of ``import timm`` anywhere in the package.
"""

from __future__ import annotations

import functools


@functools.cache
def ensure_torchvision_importable() -> None:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - the real extension is loaded
    except (AttributeError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        # Keep a reference: the schema is dropped when the Library object is collected.
        ensure_torchvision_importable.library = lib  # type: ignore[attr-defined]


def import_timm():
    """Return the ``timm`` module, applying the torchvision shim first."""
    ensure_torchvision_importable()
    import timm

    return timm
