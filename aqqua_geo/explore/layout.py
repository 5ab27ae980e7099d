"""2-D layout of the embedding space (UMAP, or PCA as a fast fallback), cached on disk.

The cache sits beside the embeddings (``<embeddings>.layout/<method>-<key>.npy``) and is keyed
by a hash of the vectors, their object ids and the layout parameters, so recomputing only
happens when any of them changes. UMAP's numba JIT costs close to a minute per process: the
cache is what makes re-opening the explorer instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from aqqua_geo._io import atomic_path
from aqqua_geo.explore.embeddings import Embeddings

log = logging.getLogger(__name__)

Method = Literal["umap", "pca"]
METHODS: tuple[str, ...] = ("umap", "pca")


def layout_params(method: Method, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
                  random_state: int = 0) -> dict:
    """The parameters that define a layout (and its cache key)."""
    if method not in METHODS:
        raise ValueError(f"layout method must be one of {METHODS}, got {method!r}")
    if method == "pca":
        return {"method": "pca"}
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2, got {n_neighbors}")
    return {"method": "umap", "n_neighbors": int(n_neighbors), "min_dist": float(min_dist), "metric": metric,
            "random_state": int(random_state)}


def cache_key(emb: Embeddings, params: dict) -> str:
    """Hash of the embedding vectors + object ids + layout parameters."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(emb.vectors, dtype="<f4").tobytes())
    h.update("\0".join(emb.object_ids.tolist()).encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:20]


def cache_path(emb: Embeddings, params: dict) -> Path:
    """Where the layout of *emb* with *params* is cached."""
    return emb.path.with_name(emb.path.name + ".layout") / f"{params['method']}-{cache_key(emb, params)}.npy"


def compute_layout(vectors: np.ndarray, params: dict) -> np.ndarray:
    """Project (N, D) vectors to (N, 2) float32 with the method in *params* (no caching)."""
    x = np.asarray(vectors, dtype=np.float32)
    if params["method"] == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=0).fit_transform(x)
    else:
        import umap  # heavy import (numba): only when asked

        n_neighbors = min(params["n_neighbors"], len(x) - 1)
        reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=params["min_dist"],
                            metric=params["metric"], random_state=params["random_state"],
                            n_jobs=1,  # a seed makes UMAP single-threaded anyway: reproducible layouts
                            low_memory=True, verbose=False)
        xy = reducer.fit_transform(x)
    return np.asarray(xy, dtype=np.float32)


def get_layout(emb: Embeddings, method: Method = "umap", *, use_cache: bool = True, **kwargs) -> np.ndarray:
    """The (N, 2) layout of *emb*, read from the cache beside the embeddings or computed and cached.

    *kwargs* are UMAP parameters (``n_neighbors``, ``min_dist``, ``metric``, ``random_state``).
    An unwritable embeddings folder only disables the cache (with a warning).
    """
    params = layout_params(method, **kwargs)
    path = cache_path(emb, params)
    if use_cache and path.is_file():
        xy = np.load(path)
        if xy.shape == (len(emb), 2):
            return xy
        log.warning("ignoring layout cache %s of shape %s", path, xy.shape)
    xy = compute_layout(emb.vectors, params)
    if use_cache:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a concurrent reader never sees half a file
                np.save(f, xy)
        except OSError as err:
            log.warning("could not cache the layout in %s: %s", path.parent, err)
    return xy
