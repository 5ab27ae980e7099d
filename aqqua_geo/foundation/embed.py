"""Embed variable-size plankton images with a trained backbone (packed, native resolution)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from aqqua_geo.foundation.packing import grid_size, pack_images
from aqqua_geo.foundation.vit import PlanktonViT

POOLINGS = ("cls", "pooled", "concat")


def image_to_tensor(image: np.ndarray, in_chans: int, img_mean: list[float], img_std: list[float]) -> Tensor:
    """uint8 ``H×W`` or ``H×W×C`` image -> normalised float ``(in_chans, H, W)`` tensor.

    RGB(A) images become luminance (ITU-R 601) when ``in_chans == 1``; grey images are
    repeated when ``in_chans == 3``.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image must be H×W or H×W×C with H, W > 0, got shape {np.asarray(image).shape}")
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1) / scale
    if x.shape[0] == 4:  # drop alpha
        x = x[:3]
    if in_chans == 1 and x.shape[0] == 3:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
    elif in_chans == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.shape[0] != in_chans:
        raise ValueError(f"image has {x.shape[0]} channels, the model takes {in_chans}")
    mean = torch.tensor(img_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(img_std, dtype=torch.float32).view(-1, 1, 1)
    return (x - mean) / std


def _token_batches(n_tokens: list[int], max_tokens: int, batch_size: int | None) -> list[list[int]]:
    """Indices grouped (longest first) so that each group's tokens fit ``max_tokens``."""
    order = sorted(range(len(n_tokens)), key=lambda i: -n_tokens[i])
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        full = batch_size is not None and len(current) >= batch_size
        if current and (used + n_tokens[i] > max_tokens or full):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n_tokens[i]
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def embed_images(
    model: PlanktonViT,
    images: list[np.ndarray],
    pixel_sizes_um: list[float],
    max_tokens_per_batch: int = 4096,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    pool: str = "cls",
    progress: bool = False,
) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of ``images`` (uint8, any size), in input order.

    Images are normalised with the backbone's stored ``img_mean``/``img_std``, patchified at
    native resolution (down-sized only above ``max_tokens_per_image``) and packed into
    batches of at most ``max_tokens_per_batch`` tokens (and ``batch_size`` images, if
    given). ``pool``: ``cls`` (CLS token), ``pooled`` (mean patch token) or ``concat``
    (both, ``2D`` wide, as DINOv2's linear evaluation). Deterministic (eval mode).
    """
    if len(images) != len(pixel_sizes_um):
        raise ValueError(f"embed_images: {len(images)} images but {len(pixel_sizes_um)} pixel sizes")
    if pool not in POOLINGS:
        raise ValueError(f"embed_images: pool must be one of {POOLINGS}, got {pool!r}")
    width = model.embed_dim * (2 if pool == "concat" else 1)
    if len(images) == 0:
        return np.zeros((0, width), dtype=np.float32)
    cfg = model.cfg
    p, n_prefix = model.patch_size, model.num_prefix_tokens
    row = model.max_tokens_per_image + n_prefix
    if max_tokens_per_batch < row:
        raise ValueError(f"embed_images: max_tokens_per_batch={max_tokens_per_batch} < one image's {row} tokens")
    was_training = model.training
    model.eval().to(device)
    shapes = [np.asarray(im).shape[:2] for im in images]
    n_tokens = [
        (lambda g: g[0] * g[1])(grid_size(h, w, p, model.max_tokens_per_image)) + n_prefix for h, w in shapes
    ]
    out = np.zeros((len(images), width), dtype=np.float32)
    batches = _token_batches(n_tokens, max_tokens_per_batch, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="embedding", unit="batch")
    for idx in batches:
        tensors = [image_to_tensor(images[i], model.in_chans, cfg["img_mean"], cfg["img_std"]) for i in idx]
        packed = pack_images(
            tensors, [float(pixel_sizes_um[i]) for i in idx], p, row,
            max_tokens_per_image=model.max_tokens_per_image, n_prefix_tokens=n_prefix,
        ).to(device)
        feats = model(packed)
        if pool == "concat":
            emb = torch.cat([feats["cls"], feats["pooled"]], dim=1)
        else:
            emb = feats[pool]
        out[idx] = emb.float().cpu().numpy()
    model.train(was_training)
    return out
