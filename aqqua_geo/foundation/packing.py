"""NaViT-style "patch n' pack": native-resolution images of any aspect ratio in one batch.

Every image is cut into ``patch_size`` patches at its own size (resized down, keeping the
aspect ratio, only when it exceeds the per-image token budget; never up; padded to whole
patches by edge replication, so an image smaller than one patch becomes one patch). The patch
sequences of several images are then packed into rows of at most ``max_tokens_per_row``
tokens (greedy first-fit-decreasing) and a block-diagonal attention mask keeps images apart.

Token order. :class:`PackedBatch` keeps the real patch tokens *flat and image-major*
(image 0's patches in raster order, then image 1's, ...), which is the order of
``PlanktonViT.forward(...)["patch"]`` and of iBOT masks, whatever the row layout. The row
layout (where every image's block starts in which row) is derived for a given number of
prefix tokens (CLS + registers) by :meth:`PackedBatch.layout`; each image's block is
``[CLS, registers..., patches...]``.

Positions. Each patch knows its grid cell and the physical position (µm) of its centre
relative to the centre of the (resized, unpadded) image, which is what the physical
position embedding encodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor


def grid_size(height: int, width: int, patch_size: int, max_tokens: int | None = None) -> tuple[int, int]:
    """Patch grid ``(rows, cols)`` that :func:`pack_images` gives an ``height × width`` image.

    Use it to draw iBOT masks of the right shape before packing.
    """
    h, w = resized_size(height, width, patch_size, max_tokens)
    return math.ceil(h / patch_size), math.ceil(w / patch_size)


def resized_size(height: int, width: int, patch_size: int, max_tokens: int | None) -> tuple[int, int]:
    """Pixel size after the down-only, aspect-preserving fit into ``max_tokens`` patches."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max_tokens is None or _n_patches(height, width, patch_size) <= max_tokens:
        return height, width
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    scale = math.sqrt(max_tokens * patch_size**2 / (height * width))
    while True:
        h, w = max(1, math.floor(height * scale)), max(1, math.floor(width * scale))
        if _n_patches(h, w, patch_size) <= max_tokens:
            return h, w
        scale *= 0.99  # ceil() rounding can overshoot by a row/column of patches


def _n_patches(h: int, w: int, p: int) -> int:
    return math.ceil(h / p) * math.ceil(w / p)


@dataclass(frozen=True)
class PackedLayout:
    """Where tokens sit in the ``(n_rows, row_length)`` packed sequence for one prefix count."""

    n_prefix_tokens: int
    n_rows: int
    row_length: int
    image_row: Tensor  # (n_images,) row of each image
    image_start: Tensor  # (n_images,) first slot (its CLS) of each image in its row
    token_row: Tensor  # (T,) row of each real patch token
    token_slot: Tensor  # (T,) slot of each real patch token
    prefix_row: Tensor  # (n_images * n_prefix,) row of each prefix token, image-major
    prefix_slot: Tensor  # (n_images * n_prefix,)
    segment: Tensor  # (n_rows, row_length) image index of each slot, -1 for padding

    def attention_mask(self) -> Tensor:
        """Block-diagonal boolean mask ``(n_rows, 1, L, L)``, True where attention is allowed.

        Padding slots attend to each other only (never to, nor from, real tokens), so no
        softmax row is empty.
        """
        seg = self.segment
        return (seg[:, :, None] == seg[:, None, :]).unsqueeze(1)

    @property
    def n_slots(self) -> int:
        return self.n_rows * self.row_length

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedLayout:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)


@dataclass
class PackedBatch:
    """Patch tokens of several variable-size images, ready for :class:`~.vit.PlanktonViT`.

    Build with :func:`pack_images`. All tensors live on one device (:meth:`to`).
    """

    patches: Tensor  # (T, C*p*p) flattened pixel patches, image-major, raster order
    image_index: Tensor  # (T,) long: image of each token
    grid_yx: Tensor  # (T, 2) long: patch row / column in its image grid
    grid_hw: Tensor  # (n_images, 2) long: patch grid of each image
    centre_px: Tensor  # (n_images, 2) float: image centre in padded-pixel coordinates
    pixel_size_yx_um: Tensor  # (n_images, 2) float64: µm per pixel after any resize
    patch_size: int
    in_chans: int
    max_tokens_per_row: int
    mask: Tensor | None = None  # (T,) bool iBOT mask, if given to pack_images
    n_prefix_tokens: int = 1  # prefix tokens per image assumed by the efficiency figures
    _layouts: dict = field(default_factory=dict, repr=False, compare=False)

    # -- sizes -------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return int(self.grid_hw.shape[0])

    @property
    def n_tokens(self) -> int:
        """Real patch tokens (no prefix tokens, no padding)."""
        return int(self.patches.shape[0])

    @property
    def tokens_per_image(self) -> Tensor:
        return self.grid_hw[:, 0] * self.grid_hw[:, 1]

    @property
    def device(self) -> torch.device:
        return self.patches.device

    # -- geometry ----------------------------------------------------------------------
    def patch_centres_um(self) -> Tensor:
        """(T, 2) float64 physical (y, x) centre of every patch, µm from the image centre."""
        centre_px = (self.grid_yx.to(torch.float64) + 0.5) * self.patch_size
        offset_px = centre_px - self.centre_px.to(torch.float64)[self.image_index]
        return offset_px * self.pixel_size_yx_um.to(torch.float64)[self.image_index]

    # -- layout ------------------------------------------------------------------------
    def layout(self, n_prefix_tokens: int = 1, single_row: bool = False) -> PackedLayout:
        """Row layout with ``n_prefix_tokens`` (CLS + registers) per image; cached.

        ``single_row``: every image in one row (no padding at all), for block-sparse attention,
        whose cost is Σ lᵢ² whatever the row length; dense attention needs bounded rows.
        """
        key = (n_prefix_tokens, single_row) if single_row else n_prefix_tokens
        if key not in self._layouts:
            cap = None if not single_row else int(self.tokens_per_image.sum()) + n_prefix_tokens * self.n_images
            self._layouts[key] = _first_fit_decreasing(self, n_prefix_tokens, cap)
        return self._layouts[key]

    @property
    def efficiency(self) -> float:
        """Real tokens (patches + prefix tokens) / all slots of the packed rows."""
        n_real = self.n_tokens + self.n_prefix_tokens * self.n_images
        return n_real / self.layout(self.n_prefix_tokens).n_slots

    @property
    def padded_efficiency(self) -> float:
        """The same ratio if every image were padded to the longest image (one per row)."""
        longest = int(self.tokens_per_image.max()) + self.n_prefix_tokens
        return (self.n_tokens + self.n_prefix_tokens * self.n_images) / (longest * self.n_images)

    # -- devices -----------------------------------------------------------------------
    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """Copy to ``device``, with the layouts already computed (e.g. in a DataLoader worker)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        layouts = {k: v.to(device, non_blocking=non_blocking) for k, v in self._layouts.items()}
        return replace(self, **moved, _layouts=layouts)

    def pin_memory(self) -> PackedBatch:
        """Pinned-memory copy (DataLoader ``pin_memory=True`` calls this)."""
        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **pinned, _layouts=dict(self._layouts))


def pack_images(
    images: list[Tensor],
    pixel_sizes_um: list[float],
    patch_size: int,
    max_tokens_per_row: int,
    masks: list[Tensor] | None = None,
    max_tokens_per_image: int | None = None,
    n_prefix_tokens: int = 1,
) -> PackedBatch:
    """Patchify ``images`` at native resolution and pack them into token rows.

    Args:
        images: float tensors ``(C, H, W)`` (already normalised), all with the same ``C``.
        pixel_sizes_um: µm per pixel of each image.
        patch_size: patch side in pixels.
        max_tokens_per_row: token budget of a packed row, prefix tokens included.
        masks: optional iBOT masks, one bool ``(h, w)`` per image on its patch grid
            (:func:`grid_size`); flattened image-major into ``PackedBatch.mask``.
        max_tokens_per_image: patch budget of one image (the model's
            ``max_tokens_per_image``); larger images are resized down, keeping the aspect
            ratio. Defaults to what fits a row next to the prefix tokens.
        n_prefix_tokens: CLS + register tokens per image (``PlanktonViT.num_prefix_tokens``);
            only used for the row budget and the efficiency figures; a model with another
            count re-lays the rows out itself.

    Returns:
        PackedBatch with the real tokens in image-major order.
    """
    if len(images) == 0:
        raise ValueError("pack_images: no images given")
    if len(pixel_sizes_um) != len(images):
        raise ValueError(f"pack_images: {len(images)} images but {len(pixel_sizes_um)} pixel sizes")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"pack_images: {len(images)} images but {len(masks)} masks")
    if patch_size < 1:
        raise ValueError(f"pack_images: patch_size must be >= 1, got {patch_size}")
    budget = max_tokens_per_row - n_prefix_tokens
    if max_tokens_per_image is not None:
        budget = min(budget, max_tokens_per_image)
    if budget < 1:
        raise ValueError(f"pack_images: max_tokens_per_row={max_tokens_per_row} leaves no room for a patch")
    in_chans = int(images[0].shape[0])
    p = patch_size

    patches, grid_hw, centres, pix = [], [], [], []
    for i, (img, px_um) in enumerate(zip(images, pixel_sizes_um)):
        if img.ndim != 3 or img.shape[0] != in_chans:
            raise ValueError(f"pack_images: image {i} has shape {tuple(img.shape)}, expected ({in_chans}, H, W)")
        if not (px_um > 0 and math.isfinite(px_um)):
            raise ValueError(f"pack_images: image {i} has invalid pixel size {px_um!r} µm")
        h0, w0 = int(img.shape[1]), int(img.shape[2])
        h, w = resized_size(h0, w0, p, budget)
        x = img.unsqueeze(0).float()
        if (h, w) != (h0, w0):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        gh, gw = math.ceil(h / p), math.ceil(w / p)
        pad_h, pad_w = gh * p - h, gw * p - w
        top, left = pad_h // 2, pad_w // 2  # centred padding keeps the grid symmetric about the object
        if pad_h or pad_w:
            x = F.pad(x, (left, pad_w - left, top, pad_h - top), mode="replicate")
        # (1, C, gh*p, gw*p) -> (gh*gw, C*p*p), channel-major inside a patch (= Conv2d weight order)
        x = x.reshape(in_chans, gh, p, gw, p).permute(1, 3, 0, 2, 4).reshape(gh * gw, in_chans * p * p)
        patches.append(x)
        grid_hw.append((gh, gw))
        centres.append((top + h / 2, left + w / 2))
        pix.append((px_um * h0 / h, px_um * w0 / w))

    grid = torch.tensor(grid_hw, dtype=torch.long)
    counts = grid[:, 0] * grid[:, 1]
    image_index = torch.repeat_interleave(torch.arange(len(images)), counts)
    grid_yx = torch.cat([_raster(gh, gw) for gh, gw in grid_hw])
    flat_mask = None
    if masks is not None:
        for i, (m, (gh, gw)) in enumerate(zip(masks, grid_hw)):
            if tuple(m.shape) != (gh, gw):
                raise ValueError(f"pack_images: mask {i} has shape {tuple(m.shape)}, image grid is ({gh}, {gw})")
        flat_mask = torch.cat([m.reshape(-1).bool() for m in masks])
    device = images[0].device
    batch = PackedBatch(
        patches=torch.cat(patches).to(device),
        image_index=image_index.to(device),
        grid_yx=grid_yx.to(device),
        grid_hw=grid.to(device),
        centre_px=torch.tensor(centres, dtype=torch.float64, device=device),
        pixel_size_yx_um=torch.tensor(pix, dtype=torch.float64, device=device),
        patch_size=p,
        in_chans=in_chans,
        max_tokens_per_row=max_tokens_per_row,
        mask=None if flat_mask is None else flat_mask.to(device),
        n_prefix_tokens=n_prefix_tokens,
    )
    batch.layout(n_prefix_tokens)  # bin-pack now: in the DataLoader worker, not the training loop
    return batch


def concat_packed(batches: list[PackedBatch]) -> PackedBatch:
    """One PackedBatch holding the images of ``batches`` in order (e.g. global + local crops).

    Lets a model see all crops in one forward call (one DDP forward per step), and small
    crops fill the gaps left in the rows of large ones. Masks are kept (False where absent).
    """
    if not batches:
        raise ValueError("concat_packed: no batches given")
    first = batches[0]
    for b in batches[1:]:
        if (b.patch_size, b.in_chans) != (first.patch_size, first.in_chans):
            raise ValueError("concat_packed: batches differ in patch_size or in_chans")
    offsets = torch.cumsum(torch.tensor([0] + [b.n_images for b in batches[:-1]]), 0).tolist()
    any_mask = any(b.mask is not None for b in batches)
    return PackedBatch(
        patches=torch.cat([b.patches for b in batches]),
        image_index=torch.cat([b.image_index + off for b, off in zip(batches, offsets)]),
        grid_yx=torch.cat([b.grid_yx for b in batches]),
        grid_hw=torch.cat([b.grid_hw for b in batches]),
        centre_px=torch.cat([b.centre_px for b in batches]),
        pixel_size_yx_um=torch.cat([b.pixel_size_yx_um for b in batches]),
        patch_size=first.patch_size,
        in_chans=first.in_chans,
        max_tokens_per_row=max(b.max_tokens_per_row for b in batches),
        mask=torch.cat([
            b.mask if b.mask is not None else torch.zeros(b.n_tokens, dtype=torch.bool, device=b.device)
            for b in batches
        ]) if any_mask else None,
        n_prefix_tokens=first.n_prefix_tokens,
    )


def _raster(gh: int, gw: int) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)


def _first_fit_decreasing(batch: PackedBatch, n_prefix: int, cap: int | None = None) -> PackedLayout:
    """Greedy FFD bin packing of image blocks (prefix + patches) into rows of *cap* slots."""
    lengths = (batch.tokens_per_image.cpu() + n_prefix).tolist()
    cap = cap or batch.max_tokens_per_row
    if max(lengths) > cap:
        # A model with more prefix tokens than the packer assumed: widen rows rather than fail.
        cap = max(lengths)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    fill: list[int] = []
    row_of = [0] * len(lengths)
    start_of = [0] * len(lengths)
    for i in order:
        for r, used in enumerate(fill):
            if used + lengths[i] <= cap:
                row_of[i], start_of[i] = r, used
                fill[r] += lengths[i]
                break
        else:
            row_of[i], start_of[i] = len(fill), 0
            fill.append(lengths[i])
    device = batch.device
    image_row = torch.tensor(row_of, dtype=torch.long, device=device)
    image_start = torch.tensor(start_of, dtype=torch.long, device=device)
    n_rows, row_length = len(fill), max(fill)

    counts = batch.tokens_per_image
    first_token = torch.cumsum(counts, 0) - counts
    local = torch.arange(batch.n_tokens, device=device) - first_token[batch.image_index]
    token_row = image_row[batch.image_index]
    token_slot = image_start[batch.image_index] + n_prefix + local
    prefix_row = image_row.repeat_interleave(n_prefix)
    prefix_slot = (image_start[:, None] + torch.arange(n_prefix, device=device)).reshape(-1)

    segment = torch.full((n_rows, row_length), -1, dtype=torch.long, device=device)
    segment[token_row, token_slot] = batch.image_index
    segment[prefix_row, prefix_slot] = torch.arange(batch.n_images, device=device).repeat_interleave(n_prefix)
    return PackedLayout(
        n_prefix_tokens=n_prefix,
        n_rows=n_rows,
        row_length=row_length,
        image_row=image_row,
        image_start=image_start,
        token_row=token_row,
        token_slot=token_slot,
        prefix_row=prefix_row,
        prefix_slot=prefix_slot,
        segment=segment,
    )
