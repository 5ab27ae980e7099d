"""Novelty / out-of-distribution scores for plankton embeddings.

Three scores, higher = more novel:

- ``"knn"`` — one minus the cosine similarity to the k-th nearest training embedding
  (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors").
- ``"mahalanobis"`` — minimum over classes of the squared Mahalanobis distance to the class
  mean, with one covariance shared by all classes (Lee et al. 2018) estimated with
  Ledoit-Wolf shrinkage (plankton classes are small relative to the embedding dimension).
- ``"energy"`` — the free energy ``−T·logsumexp(logits / T)`` of a classifier's logits
  (Liu et al. 2020); needs logits at scoring time.

The decision threshold is set on in-distribution validation data so that a chosen fraction
(default 95 %, "95 % TPR") of known-class images is accepted. :func:`leave_one_class_out`
evaluates the score with AUROC, holding each class out in turn as the "novel" one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from aqqua_geo.downstream.probes import KNNClassifier, LinearProbe, l2_normalize

METHODS = ("knn", "mahalanobis", "energy")


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Free energy ``−T·logsumexp(logits/T)`` per row (higher = more novel)."""
    from scipy.special import logsumexp

    return -temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """AUROC of separating novel (*scores_out*, positives) from known (*scores_in*)."""
    from sklearn.metrics import roc_auc_score

    scores_in, scores_out = np.asarray(scores_in), np.asarray(scores_out)
    if len(scores_in) == 0 or len(scores_out) == 0:
        raise ValueError("AUROC needs at least one in-distribution and one novel score")
    y = np.r_[np.zeros(len(scores_in)), np.ones(len(scores_out))]
    return float(roc_auc_score(y, np.r_[scores_in, scores_out]))


class NoveltyScorer:
    """Fit on training embeddings (and labels), score new ones, threshold on validation data.

    Parameters
    ----------
    method: ``"knn"``, ``"mahalanobis"`` or ``"energy"``.
    k: neighbour rank for ``"knn"``.
    tpr: fraction of in-distribution validation images accepted by :attr:`threshold_`.
    temperature: energy temperature.
    """

    def __init__(self, method: str = "knn", k: int = 10, tpr: float = 0.95, temperature: float = 1.0):
        if method not in METHODS:
            raise ValueError(f"novelty method must be one of {METHODS}, got {method!r}")
        if not 0 < tpr <= 1:
            raise ValueError(f"tpr must be in (0, 1], got {tpr}")
        self.method = method
        self.k = int(k)
        self.tpr = float(tpr)
        self.temperature = float(temperature)
        self.threshold_: float | None = None

    def fit(self, x: np.ndarray, y: Sequence[str] | None = None) -> NoveltyScorer:
        """Memorise the training distribution (labels required for ``"mahalanobis"``)."""
        x = l2_normalize(x)
        if self.method == "knn":
            self._knn = KNNClassifier(k=self.k).fit(x, np.zeros(len(x), dtype=int))
        elif self.method == "mahalanobis":
            from sklearn.covariance import LedoitWolf

            if y is None:
                raise ValueError("the Mahalanobis novelty score needs training labels")
            y = np.asarray(y)
            self.classes_ = np.unique(y)
            self.means_ = np.stack([x[y == c].mean(axis=0) for c in self.classes_])
            centred = x - self.means_[np.searchsorted(self.classes_, y)]
            self.precision_ = LedoitWolf(assume_centered=True).fit(centred).precision_.astype(np.float64)
        return self

    def score(self, x: np.ndarray | None = None, logits: np.ndarray | None = None) -> np.ndarray:
        """Novelty score per row (higher = more novel)."""
        if self.method == "energy":
            if logits is None:
                raise ValueError("the energy novelty score needs classifier logits")
            return energy_score(logits, self.temperature)
        if x is None:
            raise ValueError(f"the {self.method} novelty score needs embeddings")
        x = l2_normalize(x)
        if self.method == "knn":
            sims, _ = self._knn.kneighbors(x, self.k)
            return 1.0 - sims[:, -1].astype(np.float64)
        d = x[:, None, :].astype(np.float64) - self.means_[None]  # (n, C, D)
        m = np.einsum("ncd,de,nce->nc", d, self.precision_, d)
        return m.min(axis=1)

    def set_threshold(self, x_val: np.ndarray | None = None, logits_val: np.ndarray | None = None) -> float:
        """Threshold accepting a fraction :attr:`tpr` of in-distribution validation images."""
        s = self.score(x_val, logits_val)
        self.threshold_ = float(np.quantile(s, self.tpr, method="higher"))
        return self.threshold_

    def is_novel(self, scores: np.ndarray) -> np.ndarray:
        if self.threshold_ is None:
            raise RuntimeError("NoveltyScorer threshold not set: call set_threshold() on validation data")
        return np.asarray(scores) > self.threshold_


def leave_one_class_out(x: np.ndarray, y: Sequence[str], methods: Sequence[str] = METHODS,
                        test_size: float = 0.3, seed: int = 0, k: int = 10,
                        tpr: float = 0.95) -> pd.DataFrame:
    """AUROC (and FPR at the validation threshold) with each class held out as novel.

    For each class *c*: the other classes are split (stratified, seeded) into train and test;
    scorers are fitted on train (energy uses a :class:`LinearProbe` trained on it), the
    threshold is set on the known-class test split (which therefore has TPR ≈ *tpr*), and
    AUROC compares that split against every image of *c*.
    """
    from sklearn.model_selection import train_test_split

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    rows = []
    for held in np.unique(y):
        known = y != held
        if len(np.unique(y[known])) < 2:
            continue
        xk, yk = x[known], y[known]
        x_tr, x_te, y_tr, _ = train_test_split(xk, yk, test_size=test_size, stratify=yk, random_state=seed)
        x_out = x[~known]
        probe = LinearProbe().fit(x_tr, y_tr) if "energy" in methods else None
        for method in methods:
            scorer = NoveltyScorer(method, k=k, tpr=tpr).fit(x_tr, y_tr)
            lg_te = probe.decision_function(x_te) if probe is not None else None
            lg_out = probe.decision_function(x_out) if probe is not None else None
            s_in = scorer.score(x_te, lg_te)
            s_out = scorer.score(x_out, lg_out)
            scorer.threshold_ = float(np.quantile(s_in, tpr, method="higher"))
            rows.append({"held_out": held, "method": method, "n_known": len(s_in), "n_novel": len(s_out),
                         "auroc": auroc(s_in, s_out),
                         "novel_detected": float(scorer.is_novel(s_out).mean())})
    return pd.DataFrame(rows)
