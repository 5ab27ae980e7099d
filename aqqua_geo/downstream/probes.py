"""Heads on frozen embeddings: DINOv2's k-NN evaluation and a linear probe.

- :class:`KNNClassifier` — DINOv2's k-NN evaluation (``dinov2/eval/knn.py``): cosine
  similarity on L2-normalised features, softmax(sim / T) over the top-k neighbours (T = 0.07)
  summed as one-hot votes.
- :class:`LinearProbe` — multinomial logistic regression on frozen features (scikit-learn),
  stored as plain weights so that a torch-trained head (from
  :func:`aqqua_geo.downstream.finetune.finetune`) is the same object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["KNNClassifier", "LinearProbe", "check_features", "l2_normalize", "softmax"]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of *x* scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_features(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_objects, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf values")
    return x


# --------------------------------------------------------------------------------------------
# k-NN (DINOv2 protocol)
# --------------------------------------------------------------------------------------------
class KNNClassifier:
    """Temperature-weighted k-NN on cosine similarity (DINOv2 k-NN eval).

    ``predict_proba`` returns, per query, ``sum_j softmax(s_j / T) * onehot(y_j)`` over its k
    most similar training embeddings: rows sum to one. ``decision_function`` returns the log
    of those probabilities (finite floor), so calibration and energy scores can treat it as
    logits.
    """

    kind = "knn"

    def __init__(self, k: int = 20, temperature: float = 0.07, batch_size: int = 4096):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.k = int(k)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)

    def fit(self, x: np.ndarray, y: Sequence[str]) -> KNNClassifier:
        x = check_features(x)
        y = np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
        self.classes_ = np.unique(y)
        self.train_features_ = l2_normalize(x)
        self.train_labels_ = np.searchsorted(self.classes_, y)
        return self

    def kneighbors(self, x: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities (descending) and indices of the *k* nearest training rows."""
        k = min(k or self.k, len(self.train_features_))
        q = l2_normalize(check_features(x))
        sims, idx = [], []
        for start in range(0, len(q), self.batch_size):
            s = q[start : start + self.batch_size] @ self.train_features_.T
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            ps = np.take_along_axis(s, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            sims.append(np.take_along_axis(ps, order, axis=1))
            idx.append(np.take_along_axis(part, order, axis=1))
        return np.concatenate(sims), np.concatenate(idx)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        sims, idx = self.kneighbors(x)
        w = softmax(sims, self.temperature)  # (n, k)
        proba = np.zeros((len(sims), len(self.classes_)), dtype=np.float64)
        np.add.at(proba, (np.arange(len(sims))[:, None], self.train_labels_[idx]), w)
        return proba

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self.predict_proba(x), 1e-8))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]


# --------------------------------------------------------------------------------------------
# linear probe
# --------------------------------------------------------------------------------------------
class LinearProbe:
    """Multinomial logistic regression on frozen features (L2-normalised, then standardised).

    Stored as plain arrays (``mean_``, ``scale_``, ``coef_`` (n_classes, dim), ``intercept_``)
    so a torch-trained head (:meth:`from_weights`) behaves identically. Standardising matters
    for SSL features, whose useful variation can sit in a small part of each dimension's range;
    ``class_weight="balanced"`` counters the heavy class imbalance of plankton data.
    """

    kind = "linear"

    def __init__(self, C: float = 1.0, max_iter: int = 3000, class_weight: str | None = "balanced",
                 normalize: bool = True):
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.normalize = normalize

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = check_features(x)
        x = l2_normalize(x) if self.normalize else x
        return (x - self.mean_) / self.scale_

    def fit(self, x: np.ndarray, y: Sequence[str]) -> LinearProbe:
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"a linear probe needs at least 2 classes, got {list(classes)}")
        x = check_features(x)
        xn = l2_normalize(x) if self.normalize else x
        self.mean_ = xn.mean(axis=0)
        self.scale_ = np.maximum(xn.std(axis=0), 1e-6).astype(np.float32)
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)
        clf.fit(self._prep(x), y)
        self.classes_ = clf.classes_
        coef, intercept = clf.coef_, clf.intercept_
        if len(self.classes_) == 2:  # sklearn's binary head → symmetric two-logit form
            coef = np.vstack([-coef[0] / 2, coef[0] / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = intercept.astype(np.float32)
        return self

    @classmethod
    def from_weights(cls, coef: np.ndarray, intercept: np.ndarray, classes: Sequence[str],
                     mean: np.ndarray | None = None, scale: np.ndarray | None = None,
                     normalize: bool = False) -> LinearProbe:
        """A probe whose head was trained elsewhere (e.g. by :func:`finetune`).

        *mean*/*scale* standardise the (raw, unless *normalize*) features first, e.g. the
        running statistics of a BatchNorm in front of a torch linear head.
        """
        probe = cls(normalize=normalize)
        probe.coef_ = np.asarray(coef, dtype=np.float32)
        probe.intercept_ = np.asarray(intercept, dtype=np.float32)
        probe.classes_ = np.asarray(classes)
        dim = probe.coef_.shape[1]
        probe.mean_ = np.zeros(dim, np.float32) if mean is None else np.asarray(mean, np.float32)
        probe.scale_ = np.ones(dim, np.float32) if scale is None else np.asarray(scale, np.float32)
        if probe.coef_.shape[0] != len(probe.classes_):
            raise ValueError(f"head has {probe.coef_.shape[0]} outputs for {len(classes)} classes")
        return probe

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return self._prep(x) @ self.coef_.T + self.intercept_

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(x).argmax(axis=1)]
