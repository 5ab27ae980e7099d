"""Read ``embeddings.zarr`` (written by ``aqqua_geo.downstream.inference.predict_store``).

Layout (docs/interfaces.md): array ``embedding`` (N, D) float32 and array ``object_id`` (N,).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Embeddings:
    """Embedding vectors and the object ids they belong to, in file order."""

    path: Path
    object_ids: np.ndarray  # (N,) str
    vectors: np.ndarray  # (N, D) float32

    def __len__(self) -> int:
        return len(self.object_ids)


def read_embeddings(path: str | Path) -> Embeddings:
    """Load the ``embedding`` and ``object_id`` arrays of an ``embeddings.zarr`` group."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings not found: {path}")
    try:
        group = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError):  # zarr's GroupNotFoundError is both
        raise ValueError(f"{path}: not a Zarr group; expected embeddings.zarr with arrays 'embedding' and 'object_id'") from None
    try:
        if "chunk_done" in group:  # predict_store's resume bookkeeping
            done = np.asarray(group["chunk_done"][:])
            if not done.all():
                raise ValueError(f"{path}: embeddings are incomplete ({int(done.sum())}/{done.size} chunks done); "
                                 "finish `aqqua embed` first")
        vectors = np.asarray(group["embedding"][:], dtype=np.float32)
        ids = np.array(np.asarray(group["object_id"][:]).tolist(), dtype=str)  # StringDType → <U
    except KeyError as err:
        raise ValueError(f"{path}: embeddings.zarr must hold arrays 'embedding' and 'object_id' ({err})") from None
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(
            f"{path}: 'embedding' must be (N, D) with N == len(object_id); got {vectors.shape} and {ids.shape}"
        )
    if len(vectors) < 3:
        raise ValueError(f"{path}: need at least 3 embeddings to draw a map, got {len(vectors)}")
    if not np.isfinite(vectors).all():
        bad = ids[~np.isfinite(vectors).all(axis=1)][:3].tolist()
        raise ValueError(f"{path}: non-finite embedding values for object_id {bad}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate object_id values in 'object_id'")
    return Embeddings(path=path, object_ids=ids, vectors=vectors)
