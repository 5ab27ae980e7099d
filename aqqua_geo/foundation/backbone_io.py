"""Backbone files: :func:`save_backbone` / :func:`load_backbone` (aqqua files and public checkpoints)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from aqqua_geo._io import atomic_path
from aqqua_geo.foundation.vit import PlanktonViT

__all__ = ["load_backbone", "save_backbone"]


def save_backbone(model: PlanktonViT, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"model_cfg", "state_dict", "package_version", **extra}`` atomically to ``path``."""
    from aqqua_geo import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model_cfg": copy.deepcopy(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "package_version": __version__,
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_backbone(path: str | os.PathLike, device: str | torch.device = "cpu", in_chans: int = 1) -> PlanktonViT:
    """Load a backbone in eval mode on ``device``.

    *path*: a file written by :func:`save_backbone`, or a public checkpoint (official DINOv2,
    timm ViT; see :mod:`~aqqua_geo.foundation.pretrained`), converted for *in_chans* input
    channels. Every file is read with ``torch.load(weights_only=True)``: no code runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone file not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True) if path.suffix != ".safetensors" else None
    if not isinstance(payload, dict) or "model_cfg" not in payload or "state_dict" not in payload:
        from aqqua_geo.foundation.pretrained import load_pretrained_backbone

        try:
            return load_pretrained_backbone(path, in_chans=in_chans, device=device)
        except (ValueError, NotImplementedError) as err:
            raise ValueError(f"{path}: neither an aqqua backbone file (model_cfg + state_dict) nor a "
                             f"recognised public checkpoint: {err}") from None
    model = PlanktonViT(payload["model_cfg"])
    model.grad_checkpointing = False
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()
