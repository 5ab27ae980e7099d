"""The classic EcoTaxa approach: handcrafted morphometric features + a balanced random forest.

EcoTaxa's historical classifier is a random forest on ZooProcess features (size, shape, grey
levels). :class:`MorphometricRandomForest` rebuilds it from this package's pieces: the traits of
:func:`aqqua_geo.downstream.traits.segment_and_measure` (orientation excluded: it carries no class
information), a 16-bin grey-level histogram and quartiles of the object's pixels, and the seven
Hu moment invariants of the object mask and of its grey levels (log-scaled). It is the baseline
that the foundation-model classifiers are compared against on the leaderboard.

Example::

    rf = MorphometricRandomForest().fit(images, pixel_sizes_um, labels)
    rf.predict(new_images, new_pixel_sizes_um)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from aqqua_geo.downstream.traits import TRAIT_KEYS, segment_and_measure, to_grey

_N_HIST = 16
_TRAIT_FEATURES = tuple(k for k in TRAIT_KEYS if k != "orientation_deg")
FEATURE_NAMES: tuple[str, ...] = (
    *_TRAIT_FEATURES,
    *(f"hist_{i:02d}" for i in range(_N_HIST)),
    "q25_grey",
    "q75_grey",
    *(f"hu_{i}" for i in range(1, 8)),
    *(f"hu_grey_{i}" for i in range(1, 8)),
)


def _log_hu(hu: np.ndarray) -> np.ndarray:
    """Signed log10 of Hu moments: they span tens of orders of magnitude."""
    hu = np.asarray(hu, np.float64)
    out = np.zeros_like(hu)
    nz = hu != 0
    out[nz] = -np.sign(hu[nz]) * np.log10(np.abs(hu[nz]))
    return out


def image_features(image: np.ndarray, pixel_size_um: float, method: str | float = "otsu") -> np.ndarray:
    """Feature vector of one image, in the order of :data:`FEATURE_NAMES` (NaN where undefined)."""
    from skimage.measure import moments_central, moments_hu, moments_normalized

    traits, obj = segment_and_measure(image, pixel_size_um, method=method)
    feats = np.full(len(FEATURE_NAMES), np.nan)
    feats[: len(_TRAIT_FEATURES)] = [traits[k] for k in _TRAIT_FEATURES]
    if not obj.any():
        return feats
    grey = to_grey(image)
    vals = grey[obj]
    i = len(_TRAIT_FEATURES)
    hist, _ = np.histogram(vals, bins=_N_HIST, range=(0.0, 256.0))
    feats[i : i + _N_HIST] = hist / vals.size
    i += _N_HIST
    feats[i : i + 2] = np.percentile(vals, [25, 75])
    i += 2
    r0, c0 = np.min(np.nonzero(obj), axis=1)
    r1, c1 = np.max(np.nonzero(obj), axis=1) + 1
    crop = obj[r0:r1, c0:c1].astype(np.float64)
    for weights in (crop, crop * grey[r0:r1, c0:c1]):
        if weights.sum() > 0:
            mu = moments_central(weights, order=3)
            feats[i : i + 7] = _log_hu(moments_hu(moments_normalized(mu, order=3)))
        i += 7
    return feats


#: types a saved forest may hold besides skops' defaults (scikit-learn's own tree internals)
_TRUSTED_FOREST_TYPES = frozenset({"sklearn.tree._tree.Tree", "numpy.dtype", "numpy.ndarray"})


class MorphometricRandomForest:
    """Random forest (balanced class weights) on morphometric features of segmented images.

    Parameters follow :class:`sklearn.ensemble.RandomForestClassifier`; ``method`` is the
    segmentation threshold of :func:`aqqua_geo.downstream.traits.segment`. Missing features
    (an image without object, an unknown pixel size) are NaN, which scikit-learn's forests split on.
    """

    def __init__(
        self,
        n_estimators: int = 300,
        max_features: str | float = "sqrt",
        min_samples_leaf: int = 1,
        class_weight: str | dict | None = "balanced",
        method: str | float = "otsu",
        n_jobs: int = 1,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.class_weight = class_weight
        self.method = method
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.model_ = None

    @property
    def classes_(self) -> np.ndarray:
        """Class labels, in the column order of :meth:`predict_proba`."""
        self._check_fitted("classes_")
        return self.model_.classes_

    @property
    def feature_names_(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    def features(
        self, images: Sequence[np.ndarray], pixel_sizes: Sequence[float] | float, progress: bool = False
    ) -> pd.DataFrame:
        """Feature table (one row per image, columns :data:`FEATURE_NAMES`)."""
        n = len(images)
        sizes = [float(pixel_sizes)] * n if np.isscalar(pixel_sizes) else [float(p) for p in pixel_sizes]
        if len(sizes) != n:
            raise ValueError(f"MorphometricRandomForest: {n} images but {len(sizes)} pixel sizes")
        it = range(n)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="morphometric features", unit="img")
        rows = [image_features(images[i], sizes[i], self.method) for i in it]
        return pd.DataFrame(np.vstack(rows) if rows else np.empty((0, len(FEATURE_NAMES))), columns=FEATURE_NAMES)

    def fit(
        self, images: Sequence[np.ndarray], pixel_sizes: Sequence[float] | float, labels: Sequence[str]
    ) -> MorphometricRandomForest:
        """Compute features and fit the forest."""
        if len(labels) != len(images):
            raise ValueError(f"MorphometricRandomForest.fit: {len(images)} images but {len(labels)} labels")
        return self.fit_features(self.features(images, pixel_sizes), labels)

    def fit_features(self, X: pd.DataFrame | np.ndarray, labels: Sequence[str]) -> MorphometricRandomForest:
        """Fit on a precomputed :meth:`features` table (reuse one table for several splits)."""
        from sklearn.ensemble import RandomForestClassifier

        y = np.asarray(labels, dtype=object)
        if len(np.unique(y)) < 2:
            raise ValueError("MorphometricRandomForest.fit: need at least 2 classes")
        self.model_ = RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_features=self.max_features,
            min_samples_leaf=self.min_samples_leaf,
            class_weight=self.class_weight,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        ).fit(np.asarray(X, np.float64), y.astype(str))
        return self

    def predict_proba_features(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        self._check_fitted("predict_proba")
        return self.model_.predict_proba(np.asarray(X, np.float64))

    def predict_proba(self, images: Sequence[np.ndarray], pixel_sizes: Sequence[float] | float) -> np.ndarray:
        """Class probabilities (N, n_classes), columns in :attr:`classes_` order."""
        return self.predict_proba_features(self.features(images, pixel_sizes))

    def predict(self, images: Sequence[np.ndarray], pixel_sizes: Sequence[float] | float) -> np.ndarray:
        """Most probable class per image."""
        return self.classes_[np.argmax(self.predict_proba(images, pixel_sizes), axis=1)]

    def feature_importances(self) -> pd.Series:
        """Impurity-based importance per feature, largest first."""
        self._check_fitted("feature_importances")
        return pd.Series(self.model_.feature_importances_, index=FEATURE_NAMES).sort_values(ascending=False)

    def save(self, path: str | Path) -> Path:
        """Write the fitted model with ``skops.io`` (no pickle: loading runs no code)."""
        import skops.io as sio

        from aqqua_geo._io import atomic_path

        self._check_fitted("save")
        path = Path(path)
        params = {k: v for k, v in vars(self).items() if k != "model_"}
        with atomic_path(path) as tmp:
            sio.dump({"format": "aqqua-morphometric-rf", "params": params, "model": self.model_}, tmp)
        return path

    @staticmethod
    def load(path: str | Path) -> MorphometricRandomForest:
        """Read a :meth:`save` file; types outside scikit-learn's forest and numpy are refused."""
        import skops.io as sio

        path = Path(path)
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as err:  # noqa: BLE001 - a pickle, a zip of something else, a truncated file
            raise TypeError(f"{path}: not a MorphometricRandomForest file written by save() ({err})") from None
        unknown = [t for t in untrusted if t not in _TRUSTED_FOREST_TYPES]
        if unknown:
            raise TypeError(f"{path}: refused, it holds types outside the trusted list: {unknown}")
        obj = sio.load(path, trusted=list(untrusted))
        if not isinstance(obj, dict) or obj.get("format") != "aqqua-morphometric-rf":
            raise TypeError(f"{path}: not a MorphometricRandomForest (got {type(obj).__name__})")
        rf = MorphometricRandomForest()
        vars(rf).update(obj["params"])
        rf.model_ = obj["model"]
        return rf

    def _check_fitted(self, what: str) -> None:
        if self.model_ is None:
            raise RuntimeError(f"MorphometricRandomForest.{what}: call fit() first")


def chance_accuracy(labels: Sequence[str]) -> float:
    """Accuracy of always predicting the majority class (the 'chance' level of an imbalanced set)."""
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return float(counts.max() / counts.sum()) if counts.size else math.nan
