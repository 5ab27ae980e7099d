"""Curated, balanced sampling of a plankton store for SSL pretraining.

Plankton pools are dominated by a few modes (detritus, one instrument, one size class);
DINOv2's curation balances web images by k-means clusters of embeddings, and Vo et al.
(2024) extend it to hierarchical k-means with balanced sampling at every level. Here the
hierarchy is **instrument → embedding clusters (coarse → fine) → image**: an image's
probability is the product, over levels, of its group's share inside the parent group,
divided by the size of its finest group. A level with balancing weight ``w`` gives each
child group a share proportional to ``count ** (1 - w)``: ``w = 1`` samples groups uniformly
(DINOv2's "uniform over clusters, then within"), ``w = 0`` keeps natural frequencies.

Without embeddings of a previous model (cold start) the cluster level is a size class:
quantiles of the physical size ``sqrt(height × width) × pixel_size_um`` within each
instrument, from store metadata alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Sampler


# -- grouping -------------------------------------------------------------------------------
def size_classes(metadata: pd.DataFrame, n_bins: int) -> np.ndarray:
    """Cold-start clusters: log-size quantile bins (µm) within each instrument."""
    size_um = np.sqrt(metadata["height"].to_numpy(float) * metadata["width"].to_numpy(float))
    size_um = size_um * metadata["pixel_size_um"].to_numpy(float)
    labels = np.zeros(len(metadata), dtype=np.int64)
    for _, rows in metadata.groupby("instrument", sort=True).indices.items():
        log_size = np.log(size_um[rows])
        edges = np.quantile(log_size, np.linspace(0, 1, n_bins + 1)[1:-1]) if n_bins > 1 else []
        labels[rows] = np.searchsorted(np.unique(edges), log_size, side="right")
    return labels


def kmeans_levels(embeddings: np.ndarray, n_clusters: Sequence[int], seed: int) -> list[np.ndarray]:
    """Hierarchical k-means cluster labels, **coarse to fine**, on L2-normalised embeddings.

    ``n_clusters`` lists the levels fine to coarse (``[1024, 64]``): the first level clusters
    the images, each next level clusters the previous level's centroids (Vo et al. 2024).
    Uses scikit-learn's ``MiniBatchKMeans`` (cosine geometry via normalisation).
    """
    from sklearn.cluster import MiniBatchKMeans

    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    fine_to_coarse: list[np.ndarray] = []
    points, image_to_point = x, np.arange(len(x))
    for level, k in enumerate(n_clusters):
        km = MiniBatchKMeans(n_clusters=int(min(k, len(points))), random_state=seed + level, n_init=3,
                             batch_size=4096)
        image_to_point = km.fit_predict(points)[image_to_point]  # image → cluster of this level
        fine_to_coarse.append(image_to_point)
        # The next level clusters this level's (normalised) centroids; images follow them.
        points = km.cluster_centers_ / np.maximum(np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-12)
    return fine_to_coarse[::-1]


def balanced_probabilities(levels: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Sampling probability of every image for hierarchical group *levels* (coarse → fine).

    ``weights[l]`` is the balancing strength of level ``l`` in [0, 1] (see module docstring).
    Groups of a level are nested in their parent path automatically.
    """
    if len(levels) != len(weights):
        raise ValueError(f"{len(levels)} grouping levels but {len(weights)} weights")
    n = len(levels[0]) if levels else 0
    if n == 0:
        raise ValueError("cannot sample from an empty store")
    prob = np.ones(n, dtype=np.float64)
    parent = np.zeros(n, dtype=np.int64)  # id of each image's group path so far
    for labels, w in zip(levels, weights):
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"curation weights must lie in [0, 1], got {w}")
        _, child = np.unique(np.stack([parent, np.asarray(labels)]), axis=1, return_inverse=True)
        child = child.reshape(-1)
        child_count = np.bincount(child)
        child_parent = np.zeros(len(child_count), dtype=np.int64)
        child_parent[child] = parent
        mass = child_count.astype(np.float64) ** (1.0 - w)
        parent_mass = np.bincount(child_parent, weights=mass)
        prob *= (mass / parent_mass[child_parent])[child]
        parent = child
    prob /= np.bincount(parent)[parent]  # uniform inside the finest group
    return prob / prob.sum()


def curation_probabilities(
    metadata: pd.DataFrame, curation: dict, seed: int = 0, embeddings: np.ndarray | None = None
) -> np.ndarray:
    """Per-image sampling probabilities from the ``curation`` config block.

    ``embeddings`` (N, D) aligned with *metadata* rows switch the cluster level from size
    classes (cold start) to hierarchical k-means.
    """
    weights = curation["weights"]
    unknown = set(weights) - {"instrument", "cluster"}
    if unknown:
        raise ValueError(f"curation.weights: unknown keys {sorted(unknown)} (valid: instrument, cluster)")
    levels = [pd.factorize(metadata["instrument"].fillna("unknown"), sort=True)[0]]
    level_weights = [float(weights.get("instrument", 0.0))]
    if embeddings is not None:
        if len(embeddings) != len(metadata):
            raise ValueError(f"curation embeddings have {len(embeddings)} rows, the store has {len(metadata)}")
        clusters = kmeans_levels(embeddings, curation["n_clusters"], seed)
    else:
        clusters = [size_classes(metadata, int(curation["size_bins"]))]
    levels += clusters
    level_weights += [float(weights.get("cluster", 0.0))] * len(clusters)
    return balanced_probabilities(levels, level_weights)


def load_embeddings(path: str | Path, object_ids: Sequence[str]) -> np.ndarray:
    """Embeddings aligned with *object_ids*: a ``.npy`` (N, D) in store order, or an
    ``embeddings.zarr`` written by ``predict_store`` (arrays ``embedding`` and ``object_id``)."""
    path = Path(path)
    if path.suffix == ".npy":
        emb = np.load(path)
        if len(emb) != len(object_ids):
            raise ValueError(f"{path}: {len(emb)} rows but the store has {len(object_ids)} objects")
        return emb
    from aqqua_geo.foundation.embed import read_embeddings

    ids, emb = read_embeddings(path)
    row = {str(oid): i for i, oid in enumerate(ids)}
    missing = [oid for oid in object_ids if oid not in row]
    if missing:
        raise ValueError(f"{path}: no embedding for {len(missing)} store objects (e.g. {missing[0]!r})")
    return emb[[row[oid] for oid in object_ids]]


# -- sampler --------------------------------------------------------------------------------
class BalancedSampler(Sampler):
    """Weighted sampling with replacement, sharded over DDP ranks, resumable mid-epoch.

    Yields ``(index, epoch, position)`` keys: the dataset seeds each sample's augmentations
    from ``(seed, epoch, position)``, so a sample is the same whatever the DataLoader worker
    layout and after a resume. Epoch *e* draws ``num_samples`` indices from
    ``numpy.random.default_rng([seed, e])``; rank *r* takes positions ``r, r + W, ...``.
    """

    def __init__(
        self, probabilities: np.ndarray, num_samples: int | None = None, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 1 or len(p) == 0 or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise ValueError("BalancedSampler: probabilities must be a non-empty, non-negative 1-D array")
        if not 0 <= rank < world_size:
            raise ValueError(f"BalancedSampler: rank {rank} outside world of size {world_size}")
        self.probabilities = p / p.sum()
        self.num_samples = int(num_samples or len(p))
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.per_rank = self.num_samples // self.world_size
        if self.per_rank == 0:
            raise ValueError(f"BalancedSampler: {self.num_samples} samples for {self.world_size} ranks")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Next iteration yields epoch *epoch* from this rank's position *start* on."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"BalancedSampler: start {start} outside [0, {self.per_rank}]")
        self.epoch, self.start = int(epoch), int(start)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """All ``num_samples`` draws of *epoch* (every rank), in position order."""
        rng = np.random.default_rng([self.seed, epoch])
        return rng.choice(len(self.probabilities), size=self.num_samples, replace=True, p=self.probabilities)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        draws = self.epoch_indices(self.epoch)
        for k in range(self.start, self.per_rank):
            position = k * self.world_size + self.rank
            yield int(draws[position]), self.epoch, position

    def __len__(self) -> int:
        return self.per_rank - self.start

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed,
                "num_samples": self.num_samples, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_samples", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"BalancedSampler: checkpoint has {key}={state[key]}, this run {getattr(self, key)}; "
                    "resuming would not continue the same sample stream"
                )
        self.set_epoch(state["epoch"], state["start"])


def effective_num_groups(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Exp-entropy of the sampled group distribution (= number of groups when balanced)."""
    mass = pd.Series(probabilities).groupby(np.asarray(labels)).sum().to_numpy()
    mass = mass[mass > 0]
    return float(math.exp(-(mass * np.log(mass)).sum()))
