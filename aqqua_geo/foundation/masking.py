"""iBOT block masking (BEiT-style) on each global crop's own patch grid.

Follows DINOv2's recipe (``dinov2/data/masking.py`` + ``collate.py``), rewritten for
variable grids: crops have any aspect ratio, so the number of masked patches and the
largest block are computed per crop from its own (h, w) grid.

* A fraction ``mask_sample_probability`` of the global crops in a batch is masked.
* The masked crops take ratios from evenly spaced bins over ``mask_ratio_min_max``
  (one uniform draw inside each bin), so every batch spans the whole ratio range.
* Each mask is grown from rectangular blocks of at least ``mask_min_block_patches``
  patches, aspect ratio log-uniform in ``mask_block_aspect``, until the target count.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def block_mask(
    grid: tuple[int, int],
    n_masked: int,
    rng: np.random.Generator,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> np.ndarray:
    """Boolean (h, w) mask with about *n_masked* patches set, grown in rectangular blocks.

    Blocks that would add nothing new are redrawn a few times; the result never exceeds
    *n_masked* and reaches it unless the grid is too small for the block constraints, in
    which case single random patches fill the remainder.
    """
    h, w = grid
    n_masked = min(int(n_masked), h * w)
    mask = np.zeros((h, w), dtype=bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    failures = 0
    while mask.sum() < n_masked and failures < 10:
        remaining = n_masked - int(mask.sum())
        max_block = max(min_block, remaining)
        added = 0
        for _ in range(10):
            target = rng.uniform(min(min_block, remaining), max_block)
            ratio = math.exp(rng.uniform(*log_aspect))
            bh = int(round(math.sqrt(target * ratio)))
            bw = int(round(math.sqrt(target / ratio)))
            if not (0 < bh <= h and 0 < bw <= w):
                continue
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            block = mask[top : top + bh, left : left + bw]
            new = int(bh * bw - block.sum())
            if 0 < new <= remaining:
                block[:] = True
                added = new
                break
        failures = 0 if added else failures + 1
    # Tiny grids (e.g. 2×3) cannot always host a legal block: finish with single patches.
    short = n_masked - int(mask.sum())
    if short > 0:
        free = np.flatnonzero(~mask.ravel())
        mask.ravel()[rng.choice(free, size=short, replace=False)] = True
    return mask


def sample_masks(
    grids: list[tuple[int, int]], ibot_cfg: dict, rng: np.random.Generator
) -> list[torch.Tensor]:
    """One bool (h, w) mask per global crop; a shuffled subset is masked, the rest all-False."""
    n = len(grids)
    n_masked_crops = int(round(n * float(ibot_cfg["mask_sample_probability"])))
    lo, hi = (float(v) for v in ibot_cfg["mask_ratio_min_max"])
    edges = np.linspace(lo, hi, n_masked_crops + 1)
    order = rng.permutation(n)
    masks = [torch.zeros(g, dtype=torch.bool) for g in grids]
    aspect = tuple(float(v) for v in ibot_cfg["mask_block_aspect"])
    min_block = int(ibot_cfg["mask_min_block_patches"])
    for k in range(n_masked_crops):
        i = int(order[k])
        h, w = grids[i]
        ratio = rng.uniform(edges[k], edges[k + 1])
        m = block_mask((h, w), int(round(ratio * h * w)), rng, min_block=min_block, aspect=aspect)
        masks[i] = torch.from_numpy(m)
    return masks
