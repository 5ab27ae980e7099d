"""Collate multi-crop samples into the packed batch that ``SSLMetaArch.forward_backward`` takes.

Batch format (docs/interfaces.md, Foundation)::

    {"global": PackedBatch,          # n_global_crops * B images, crop-major:
                                     #   [crop0 of sample 0..B-1, crop1 of sample 0..B-1, ...]
     "local": PackedBatch | None,    # n_local_crops * B images, crop-major; None without local crops
     "n_global_crops": int, "n_local_crops": int,
     "masks": BoolTensor (n_real_global_tokens,),  # iBOT mask, aligned with global patch tokens
     "batch_size": B}

Crop-major order is DINOv2's: the teacher output of global crop *c* is compared with
student outputs of the other crops of the same images by slicing B-sized chunks.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from aqqua_geo.foundation.masking import sample_masks
from aqqua_geo.foundation.packing import PackedBatch, grid_size, pack_images

# Separates the mask stream from the per-sample augmentation streams (same seed material).
_MASK_STREAM = 0x1B07


def collate_multicrop(samples: list[dict[str, Any]], cfg: dict) -> dict[str, Any]:
    """Pack the global and local crops of *samples* and draw iBOT masks for the global ones.

    *samples* are :class:`~aqqua_geo.foundation.data.MultiCropDataset` items. The masks are
    drawn from a generator seeded by the samples' ``(epoch, position)`` keys, so a batch is
    reproducible whatever process collates it.
    """
    if not samples:
        raise ValueError("collate_multicrop: empty batch")
    model = cfg["model"]
    n_global, n_local = int(cfg["crops"]["n_global_crops"]), int(cfg["crops"]["n_local_crops"])
    for s in samples:
        if len(s["global_crops"]) != n_global or len(s["local_crops"]) != n_local:
            raise ValueError(
                f"collate_multicrop: sample {s.get('index')} has {len(s['global_crops'])} global / "
                f"{len(s['local_crops'])} local crops, config says {n_global} / {n_local}"
            )
    seed_material = [int(cfg["train"]["seed"]), _MASK_STREAM] + [int(k) for s in samples for k in s["key"]]
    rng = np.random.default_rng(seed_material)

    global_crops = [s["global_crops"][c] for c in range(n_global) for s in samples]
    grids = [
        grid_size(int(c.image.shape[1]), int(c.image.shape[2]), int(model["patch_size"]),
                  int(model["max_tokens_per_image"]))
        for c in global_crops
    ]
    masks = sample_masks(grids, cfg["ibot"], rng)
    global_batch = _pack(global_crops, cfg, masks)
    local_crops = [s["local_crops"][c] for c in range(n_local) for s in samples]
    return {
        "global": global_batch,
        "local": _pack(local_crops, cfg) if local_crops else None,
        "n_global_crops": n_global,
        "n_local_crops": n_local,
        "masks": global_batch.mask,
        "batch_size": len(samples),
    }


def _pack(crops: list, cfg: dict, masks=None) -> PackedBatch:
    model = cfg["model"]
    n_prefix = 1 + int(model["num_register_tokens"])
    packed = pack_images(
        [c.image for c in crops],
        [c.pixel_size_um for c in crops],
        patch_size=int(model["patch_size"]),
        max_tokens_per_row=int(cfg["train"]["max_tokens_per_row"]),
        masks=masks,
        max_tokens_per_image=int(model["max_tokens_per_image"]),
        n_prefix_tokens=n_prefix,
    )
    return balance_rows(packed, n_prefix)


def balance_rows(packed: PackedBatch, n_prefix: int) -> PackedBatch:
    """Shorten the rows so the last one is not mostly padding.

    ``train.max_tokens_per_row`` is a memory bound, not a target: packing 800 tokens into
    rows of 256 gives rows 256/256/256/32, a quarter of the slots wasted. The fewest rows
    that can hold the batch is R = ceil(total / max_row); the row length is raised from
    ``total / R`` (never below the longest image) until first-fit-decreasing packs into R rows.
    """
    cap = packed.max_tokens_per_row
    lengths = packed.tokens_per_image + n_prefix
    total, longest = int(lengths.sum()), int(lengths.max())
    n_rows = math.ceil(total / cap)
    length = max(longest, math.ceil(total / n_rows))
    while length < cap:
        candidate = replace(packed, max_tokens_per_row=length, _layouts={})
        if candidate.layout(n_prefix).n_rows <= n_rows:
            return candidate
        length = min(cap, max(length + 1, math.ceil(length * 1.01)))
    return packed
