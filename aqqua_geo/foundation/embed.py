"""Embed plankton images with a backbone: in memory (packed, native resolution) or a whole store.

``embed_images`` embeds a list of uint8 images; ``forward_images`` is its differentiable
twin for fine-tuning and distillation. ``embed_store`` writes ``OUT/embeddings.zarr``
(Zarr v3, consolidated metadata):

- ``embedding`` (N, D) float32, chunked by object (``chunk_size`` objects × D per chunk),
- ``object_id`` (N,) strings, in store row order,
- ``chunk_done`` (n_chunks,) bool, one Zarr chunk per embedding chunk, set after that chunk
  is written: a killed run resumes at the first chunk not marked done.

The group attribute ``aqqua_fingerprint`` (backbone hash, store ids hash, chunk size,
dimension) guards resumption: re-running into an output of another model or store is refused
unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aqqua_geo._io import file_sha256
from aqqua_geo.foundation.packing import grid_size, pack_images
from aqqua_geo.foundation.vit import PlanktonViT
from aqqua_geo.imaging import model_input

POOLINGS = ("cls", "pooled", "concat")
EMBEDDINGS = "embeddings.zarr"


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
        tensors = [model_input(images[i], model.in_chans, cfg["img_mean"], cfg["img_std"]) for i in idx]
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


def forward_images(model, images: Sequence[np.ndarray], pixel_sizes_um: Sequence[float], device) -> dict:
    """Differentiable ``model(packed)`` on uint8 images (same preprocessing as ``embed_images``)."""
    cfg = model.cfg
    tensors = [model_input(im, model.in_chans, cfg["img_mean"], cfg["img_std"]) for im in images]
    packed = pack_images(tensors, [float(p) for p in pixel_sizes_um], model.patch_size,
                         model.max_tokens_per_image + model.num_prefix_tokens,
                         max_tokens_per_image=model.max_tokens_per_image,
                         n_prefix_tokens=model.num_prefix_tokens).to(device)
    return model(packed)


def _ids_digest(object_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(object_ids).encode()).hexdigest()[:16]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled)


def _open_or_create_embeddings(path: Path, fingerprint: dict[str, Any], object_ids: list[str],
                               dim: int, chunk_size: int, overwrite: bool):
    import zarr

    if path.exists() and overwrite:
        shutil.rmtree(path)
    if path.exists():
        group = zarr.open_group(path, mode="r+")
        found = group.attrs.get("aqqua_fingerprint")
        if found is None:  # killed while creating the arrays (the fingerprint is written last)
            shutil.rmtree(path)
            return _open_or_create_embeddings(path, fingerprint, object_ids, dim, chunk_size, overwrite)
        if found != fingerprint:
            raise ValueError(
                f"{path} holds embeddings of another model/store/chunking ({found}); "
                "use another --out or overwrite=True (--overwrite)"
            )
        return group
    n = len(object_ids)
    n_chunks = -(-n // chunk_size)
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("embedding", shape=(n, dim), chunks=(chunk_size, dim), dtype="float32",
                       fill_value=np.nan)
    ids = group.create_array("object_id", shape=(n,), chunks=(chunk_size,), dtype=str)
    ids[:] = np.asarray(object_ids, dtype=str)
    group.create_array("chunk_done", shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False)
    group.attrs["aqqua_fingerprint"] = fingerprint
    return group


def embed_store(model_path: str | Path, store_dir: str | Path, out_dir: str | Path, *,
                chunk_size: int = 256, max_tokens_per_batch: int = 4096, device: str = "cpu",
                overwrite: bool = False, progress: bool = True) -> Path:
    """Embed every image of a store into ``OUT/embeddings.zarr``; resumable; returns its path.

    Images are fed to the backbone through :func:`~aqqua_geo.foundation.embed.embed_images`,
    which packs native-resolution images into rows of at most *max_tokens_per_batch* tokens.
    """
    import torch
    import zarr

    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.store import AqquaStore

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    store = AqquaStore(store_dir)
    if len(store) == 0:
        raise ValueError(f"store {store_dir} holds no objects to embed")
    model = load_backbone(model_path, device=device)
    ids = store.object_ids
    pixel_sizes = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)
    fingerprint = {"backbone_sha256": file_sha256(model_path), "object_ids_sha256": _ids_digest(ids),
                   "n_objects": len(ids), "chunk_size": chunk_size, "embed_dim": model.embed_dim}
    out = Path(out_dir) / EMBEDDINGS
    out.parent.mkdir(parents=True, exist_ok=True)
    group = _open_or_create_embeddings(out, fingerprint, ids, model.embed_dim, chunk_size, overwrite)
    emb, done = group["embedding"], group["chunk_done"]
    todo = np.flatnonzero(~done[:])
    with _progress(len(ids), "embed", progress) as bar, torch.inference_mode():
        bar.update(len(ids) - sum(min(chunk_size, len(ids) - c * chunk_size) for c in todo))
        for c in todo:
            lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(ids))
            images = store.get_many(range(lo, hi))
            emb[lo:hi] = embed_images(model, images, list(pixel_sizes[lo:hi]),
                                      max_tokens_per_batch=max_tokens_per_batch, device=device)
            done[c] = True  # only after the chunk's data is on disk
            bar.update(hi - lo)
    group.attrs["complete"] = True
    with warnings.catch_warnings():  # consolidated metadata is a zarr-python v3 extension: fine here
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(out)
    return out


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(object_ids, embeddings)`` of a complete ``embeddings.zarr``."""
    import zarr

    group = zarr.open_group(path, mode="r")
    if not group.attrs.get("complete"):
        raise ValueError(f"{path} is incomplete: re-run `aqqua embed` to finish it")
    return np.asarray(group["object_id"][:]), np.asarray(group["embedding"][:])
