"""Novelty (out-of-distribution) scores for plankton embeddings, and their operating point.

Every score is *higher = more novel*. Embeddings are first centred on the training mean and
L2-normalised (``centre=True``): self-supervised ViT features share a large common component
that otherwise dominates cosine similarities.

- ``"knn"`` — one minus the cosine similarity to the k-th nearest training embedding (Sun et
  al. 2022, ICML, "Out-of-distribution detection with deep nearest neighbors"). With
  ``class_norm=True`` (the default) the distance is divided by the typical k-NN distance
  *within the nearest neighbour's class* (median over that class's training images, each
  scored against the others): a tight class (bubbles) and a diffuse one (detritus) then share
  one threshold instead of the diffuse class setting it for all.
- ``"mahalanobis"`` — minimum over classes of the squared Mahalanobis distance to the class
  mean with one shared covariance (Lee et al. 2018, NeurIPS), estimated with shrinkage
  (``shrinkage="ledoitwolf"`` or ``"oas"``; plankton classes are small relative to the
  embedding dimension).
- ``"rmd"`` — relative Mahalanobis distance (Ren et al. 2021, arXiv:2106.09022): the class
  distance minus the distance to one Gaussian fitted on all training data, which removes the
  directions where known and novel images vary alike.
- ``"vim"`` — Virtual-logit Matching (Wang et al. 2022, CVPR): ``α·‖x^{P⊥}‖ − logsumexp(logits)``,
  the norm of the feature off the principal subspace of the training features (scaled by α
  so that it matches the logits) against the energy of a multinomial logistic regression
  fitted by the scorer itself on the training features (stored as arrays).
- ``"gaussian"`` — class-conditional Gaussians, each class with its own shrunk covariance:
  ``min_c [d²_c(x) + log det Σ_c]`` (the negative best class log-likelihood, up to a constant).
  Classes of very different spread (tight bubbles, diffuse detritus) are not forced to share
  one covariance as in ``"mahalanobis"``.
- ``"ensemble"`` — several scorers, each on its own block of columns (``members``: e.g. a
  cosine k-NN on the embedding columns and a standardised k-NN / Gaussian on the morphometric
  columns of :func:`aqqua_geo.downstream.classify.hybrid_inputs`, the field's deep ⊕
  ZooProcess-style features), combined as the mean (or the maximum) of their robust z-scores. The z-scores are
  calibrated on held-out *known* images in :meth:`NoveltyScorer.set_threshold` (median and
  interquartile range of each member's scores there), so set_threshold comes before score.
- ``"energy"`` — the free energy ``E = −T·logsumexp(logits / T)`` of the *classifier's* logits
  (Liu et al. 2020, NeurIPS). Known images have low energy, so ``E`` itself is the novelty
  score (no sign flip). It needs a linear head: a k-NN head's log-probabilities have a
  constant logsumexp. On linear probes of frozen features it can rank backwards (far-away
  images get large logits); :func:`holdout_class_evaluation` measures it like the others.

Operating point. The threshold accepts a fraction ``tpr`` (default 95 %) of *held-out*
known-class images, so about ``1 − tpr`` of known images are flagged. How much of a class
never seen in training is then flagged is measured by :func:`holdout_class_evaluation`:
each labelled class in turn is removed *entirely* from training, the scorer is fitted on the
rest, the threshold is set on held-out images of the remaining classes, and the table gives
AUROC, the share of the unseen class flagged and the share of known images flagged at that
threshold. :func:`select_method` picks the method with the highest mean flagged share of
unseen classes (AUROC breaks ties) from that table; ``finish_bundle`` stores the table in the
classifier's metrics. :func:`nested_holdout_evaluation` measures that *choice* honestly: for
each class, the method (among named candidate configurations) is chosen by a held-out-class
evaluation on the other classes only, so the class that picked the method is never the one
evaluated.

All fitted state is numpy arrays, floats and strings (no pickled estimators).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from aqqua_geo.downstream.probes import l2_normalize

METHODS = ("knn", "mahalanobis", "rmd", "vim", "gaussian", "energy")
#: Scores built from other scorers' keyword dicts (``members``), so not selectable by name alone.
COMPOSITE_METHODS = ("ensemble",)
#: Methods that need only embeddings (``"energy"`` needs the classifier's logits).
EMBEDDING_METHODS = ("knn", "mahalanobis", "rmd", "vim")
SHRINKAGE = ("ledoitwolf", "oas")


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


def _covariance(centred: np.ndarray, shrinkage: str) -> np.ndarray:
    """Shrunk covariance of already-centred rows (float64)."""
    from sklearn.covariance import OAS, LedoitWolf

    est = LedoitWolf(assume_centered=True) if shrinkage == "ledoitwolf" else OAS(assume_centered=True)
    return est.fit(centred).covariance_.astype(np.float64)


def _sq_mahalanobis(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of every row of *x* to every row of *means*: (n, C)."""
    xp = x @ precision  # (n, D)
    mp = means @ precision  # (C, D)
    return (np.einsum("nd,nd->n", xp, x)[:, None] - 2.0 * xp @ means.T
            + np.einsum("cd,cd->c", mp, means)[None, :])


class NoveltyScorer:
    """Fit on training embeddings (and labels), score new ones, threshold on held-out data.

    Parameters
    ----------
    method: one of :data:`METHODS`.
    k: neighbour rank for ``"knn"``.
    tpr: fraction of held-out known-class images accepted by :attr:`threshold_`.
    temperature: energy temperature.
    centre: subtract the training mean first.
    normalise: L2-normalise (then ``"knn"`` uses cosine distance; otherwise Euclidean, e.g.
        for a few standardised morphometric features).
    class_norm: ``"knn"`` distances relative to the nearest class's own k-NN distances.
    shrinkage: covariance estimator of ``"mahalanobis"``/``"rmd"`` (``"ledoitwolf"``/``"oas"``).
    vim_dim: principal-subspace dimension of ``"vim"`` (default: half the embedding dimension).
    scale: divide the centred features by their training standard deviation (standardise; for
        morphometrics of mixed units).
    columns: ``(start, stop)`` block of input columns this scorer reads (``stop`` None = to the
        end); default all columns.
    members: for ``"ensemble"``, a list of constructor keyword dicts (each with ``method`` and
        usually ``columns``), one per member scorer.
    combine: ``"mean"`` or ``"max"`` of the members' calibrated z-scores (max: novel for any member).
    """

    def __init__(self, method: str = "knn", k: int = 10, tpr: float = 0.95, temperature: float = 1.0,
                 *, centre: bool = True, normalise: bool = True, class_norm: bool = True, shrinkage: str = "ledoitwolf",
                 vim_dim: int | None = None, scale: bool = False, columns: Sequence[int | None] | None = None,
                 members: Sequence[dict] | None = None, combine: str = "mean"):
        if method not in METHODS + COMPOSITE_METHODS:
            raise ValueError(f"novelty method must be one of {METHODS + COMPOSITE_METHODS}, got {method!r}")
        if not 0 < tpr <= 1:
            raise ValueError(f"tpr must be in (0, 1], got {tpr}")
        if shrinkage not in SHRINKAGE:
            raise ValueError(f"shrinkage must be one of {SHRINKAGE}, got {shrinkage!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.method = method
        self.k = int(k)
        self.tpr = float(tpr)
        self.temperature = float(temperature)
        self.centre = bool(centre)
        self.normalise = bool(normalise)
        self.class_norm = bool(class_norm)
        self.shrinkage = shrinkage
        self.vim_dim = None if vim_dim is None else int(vim_dim)
        self.scale = bool(scale)
        if combine not in ("mean", "max"):
            raise ValueError(f"combine must be 'mean' or 'max', got {combine!r}")
        self.combine = combine
        if columns is not None:
            if len(columns) != 2:
                raise ValueError(f"columns must be (start, stop), got {columns!r}")
            columns = [int(columns[0]), None if columns[1] is None else int(columns[1])]
        self.columns = columns
        if method == "ensemble":
            if not members:
                raise ValueError("the ensemble novelty score needs members (a list of scorer keyword dicts)")
            if any(dict(m).get("method") in ("ensemble", "energy") for m in members):
                raise ValueError("ensemble members must be embedding methods (not ensemble or energy)")
            self.members = [dict(m) for m in members]
            self.member_scorers_ = [NoveltyScorer(**{**m, "tpr": tpr}) for m in self.members]
        else:
            self.members = None
        self.threshold_: float | None = None

    # ---------------------------------------------------------------------------------------
    def _block(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (n, dim), got shape {x.shape}")
        if self.columns is None:
            return x
        lo, hi = self.columns
        if (hi if hi is not None else lo + 1) > x.shape[1] or lo < 0:
            raise ValueError(f"novelty: columns {self.columns} outside features of dimension {x.shape[1]}")
        return x[:, lo:hi]

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = self._block(x)
        if x.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"novelty: embeddings of dimension {x.shape[1]}, scorer fitted on {self.mean_.shape[0]}")
        x = x - self.mean_ if self.centre else x
        if self.scale:
            x = x / self.scale_
        return l2_normalize(x) if self.normalise else x

    def _prep_block(self, xb: np.ndarray) -> np.ndarray:
        """:meth:`_prep` of rows already restricted to :attr:`columns`."""
        cols, self.columns = self.columns, None
        try:
            return self._prep(xb)
        finally:
            self.columns = cols

    def _kth_distance(self, q: np.ndarray, exclude_self: bool = False, batch: int = 2048
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Distance to the k-th nearest training row and the nearest row's index.

        Cosine distance ``1 − cos`` on normalised features, Euclidean distance otherwise.
        With *exclude_self* (queries are the training rows) each row's own match is skipped.
        """
        train = self.train_
        k = min(self.k + (1 if exclude_self else 0), len(train))
        sq_train = np.einsum("nd,nd->n", train, train)
        kth, first = [], []
        for lo in range(0, len(q), batch):
            qb = q[lo:lo + batch]
            if self.normalise:
                d = 1.0 - qb @ train.T
            else:
                d = np.sqrt(np.maximum(np.einsum("nd,nd->n", qb, qb)[:, None] + sq_train[None] - 2.0 * qb @ train.T, 0))
            top = np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1)  # ascending distances
            kth.append(top[:, -1])
            order = np.argsort(d, axis=1, kind="stable")
            first.append(order[:, 1 if exclude_self and d.shape[1] > 1 else 0])
        return np.concatenate(kth).astype(np.float64), np.concatenate(first)

    def fit(self, x: np.ndarray, y: Sequence[str] | None = None) -> NoveltyScorer:
        """Memorise the training distribution (labels needed except for ``"knn"`` without class_norm)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"novelty: need a 2-D array of at least 2 training embeddings, got {x.shape}")
        if self.method == "ensemble":
            for member in self.member_scorers_:
                member.fit(x, y)
            self.mean_ = np.zeros(x.shape[1], np.float32)  # marks the scorer as fitted
            self.member_centre_ = self.member_spread_ = None
            return self
        x = self._block(x)
        self.mean_ = x.mean(axis=0) if self.centre else np.zeros(x.shape[1], np.float32)
        # constant columns (a trait that never varies in training) keep unit scale
        self.scale_ = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0).astype(np.float32)
        xn = self._prep(x) if self.columns is None else self._prep_block(x)
        needs_labels = self.method in ("mahalanobis", "rmd", "vim", "gaussian") or (self.method == "knn" and self.class_norm)
        if needs_labels and y is None:
            raise ValueError(f"the {self.method} novelty score needs training labels")
        if y is not None:
            y = np.asarray(y).astype(str)
            if len(y) != len(x):
                raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
            self.classes_ = np.unique(y)
            yi = np.searchsorted(self.classes_, y)
        if self.method == "knn":
            self.train_ = xn
            if self.class_norm:
                self.train_labels_ = yi
                dist, _ = self._kth_distance(xn, exclude_self=True)
                scale = np.array([np.median(dist[yi == c]) for c in range(len(self.classes_))])
                self.class_scale_ = np.maximum(scale, max(float(np.median(dist)), 1e-6) * 1e-3)
        elif self.method in ("mahalanobis", "rmd"):
            self.means_ = np.stack([xn[yi == c].mean(axis=0) for c in range(len(self.classes_))]).astype(np.float64)
            cov = _covariance(xn.astype(np.float64) - self.means_[yi], self.shrinkage)
            self.precision_ = np.linalg.pinv(cov, hermitian=True)
            if self.method == "rmd":
                self.global_mean_ = xn.mean(axis=0, dtype=np.float64)
                cov0 = _covariance(xn.astype(np.float64) - self.global_mean_, self.shrinkage)
                self.global_precision_ = np.linalg.pinv(cov0, hermitian=True)
        elif self.method == "gaussian":
            x64 = xn.astype(np.float64)
            means, precisions, logdets = [], [], []
            for c in range(len(self.classes_)):
                xc = x64[yi == c]
                mu = xc.mean(axis=0)
                # one image: no spread of its own; the pooled covariance stands in for it
                cov = _covariance(xc - mu, self.shrinkage) if len(xc) > 1 else \
                    _covariance(x64 - x64.mean(axis=0), self.shrinkage)
                eigval = np.linalg.eigvalsh(cov)
                floor = max(float(eigval.max()), 1e-12) * 1e-9  # keeps log det finite
                cov = cov + floor * np.eye(len(cov))
                means.append(mu)
                precisions.append(np.linalg.inv(cov))
                logdets.append(float(np.linalg.slogdet(cov)[1]))
            self.means_ = np.stack(means)
            self.class_precisions_ = np.stack(precisions)
            self.class_logdets_ = np.asarray(logdets)
        elif self.method == "vim":
            from sklearn.linear_model import LogisticRegression

            if len(self.classes_) < 2:
                raise ValueError("the vim novelty score needs at least two training classes")
            lr = LogisticRegression(C=1.0, max_iter=2000).fit(xn, yi)
            coef = lr.coef_ if len(self.classes_) > 2 else np.vstack([-lr.coef_, lr.coef_]) / 2
            icpt = lr.intercept_ if len(self.classes_) > 2 else np.r_[-lr.intercept_, lr.intercept_] / 2
            self.coef_, self.intercept_ = coef.astype(np.float64), icpt.astype(np.float64)
            # origin: the point where all logits vanish (−W⁺b), as in Wang et al. 2022
            self.origin_ = -np.linalg.pinv(self.coef_) @ self.intercept_
            d = xn.shape[1]
            dim = self.vim_dim if self.vim_dim is not None else max(1, d // 2)
            dim = int(min(max(dim, 1), d - 1))
            centred = xn.astype(np.float64) - self.origin_
            _, _, vt = np.linalg.svd(centred, full_matrices=True)
            self.residual_basis_ = vt[dim:].T  # (D, D - dim)
            resid = np.linalg.norm(centred @ self.residual_basis_, axis=1)
            logits = xn @ self.coef_.T + self.intercept_
            self.alpha_ = float(logits.max(axis=1).mean() / max(resid.mean(), 1e-12))
        return self

    def score(self, x: np.ndarray | None = None, logits: np.ndarray | None = None) -> np.ndarray:
        """Novelty score per row (higher = more novel)."""
        if self.method == "energy":
            if logits is None:
                raise ValueError("the energy novelty score needs classifier logits")
            return energy_score(logits, self.temperature)
        if x is None:
            raise ValueError(f"the {self.method} novelty score needs embeddings")
        if not hasattr(self, "mean_"):
            raise RuntimeError("NoveltyScorer is not fitted: call fit() first")
        if self.method == "ensemble":
            if self.member_centre_ is None:
                raise RuntimeError("ensemble novelty: call set_threshold() on held-out known images first "
                                   "(it calibrates the members' scores)")
            z = (self._member_scores(x) - self.member_centre_) / self.member_spread_
            return z.mean(axis=1) if self.combine == "mean" else z.max(axis=1)
        xn = self._prep(x)
        if self.method == "knn":
            dist, nearest = self._kth_distance(xn)
            if self.class_norm:
                dist = dist / self.class_scale_[self.train_labels_[nearest]]
            return dist
        if self.method == "gaussian":
            x64 = xn.astype(np.float64)
            d2 = np.stack([_sq_mahalanobis(x64, self.means_[c:c + 1], self.class_precisions_[c])[:, 0]
                           for c in range(len(self.means_))], axis=1)
            return (d2 + self.class_logdets_[None, :]).min(axis=1)
        if self.method in ("mahalanobis", "rmd"):
            x64 = xn.astype(np.float64)
            m = _sq_mahalanobis(x64, self.means_, self.precision_).min(axis=1)
            if self.method == "rmd":
                m = m - _sq_mahalanobis(x64, self.global_mean_[None], self.global_precision_)[:, 0]
            return m
        from scipy.special import logsumexp

        x64 = xn.astype(np.float64)
        resid = np.linalg.norm((x64 - self.origin_) @ self.residual_basis_, axis=1)
        lg = x64 @ self.coef_.T + self.intercept_
        return self.alpha_ * resid - logsumexp(lg, axis=1)

    def set_threshold(self, x_val: np.ndarray | None = None, logits_val: np.ndarray | None = None) -> float:
        """Threshold accepting a fraction :attr:`tpr` of held-out known-class images.

        For ``"ensemble"`` it first calibrates each member's scores on these images (median and
        interquartile range), which :meth:`score` needs.
        """
        if self.method == "ensemble":
            if x_val is None:
                raise ValueError("the ensemble novelty score needs embeddings")
            m = self._member_scores(x_val)
            self.member_centre_ = np.median(m, axis=0)
            q75, q25 = np.quantile(m, [0.75, 0.25], axis=0)
            self.member_spread_ = np.maximum(q75 - q25, 1e-12)
        s = self.score(x_val, logits_val)
        self.threshold_ = threshold_at(s, self.tpr)
        return self.threshold_

    def _member_scores(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([m.score(x) for m in self.member_scorers_])

    def is_novel(self, scores: np.ndarray) -> np.ndarray:
        """Boolean flag per score: above :attr:`threshold_`."""
        if self.threshold_ is None:
            raise RuntimeError("NoveltyScorer threshold not set: call set_threshold() on validation data")
        return np.asarray(scores) > self.threshold_

    def params(self) -> dict:
        """Constructor parameters (plain values), e.g. to refit the same scorer."""
        return {"method": self.method, "k": self.k, "tpr": self.tpr, "temperature": self.temperature,
                "centre": self.centre, "normalise": self.normalise, "class_norm": self.class_norm, "shrinkage": self.shrinkage,
                "vim_dim": self.vim_dim, "scale": self.scale, "columns": self.columns, "members": self.members,
                "combine": self.combine}


def threshold_at(known_scores: np.ndarray, tpr: float) -> float:
    """Score below or at which a fraction *tpr* of *known_scores* lies (flag: ``score > t``)."""
    s = np.asarray(known_scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("threshold: no known-class scores")
    return float(np.quantile(s, tpr, method="higher"))


def holdout_class_evaluation(x: np.ndarray, y: Sequence[str], methods: Sequence[str] = EMBEDDING_METHODS,
                             test_size: float = 0.3, seed: int = 0, tpr: float = 0.95,
                             scorer_kwargs: dict | None = None, logits_fn=None,
                             min_classes: int = 2) -> pd.DataFrame:
    """Each labelled class held out *entirely*: AUROC and flag rates at the operating point.

    For each class *c*: the other classes are split (stratified, seeded) into train and
    held-out known images; a scorer per method is fitted on train only; its threshold accepts
    a fraction *tpr* of the held-out known images; the row reports ``auroc`` (held-out known vs
    all images of *c*), ``novel_flagged`` (share of *c* above the threshold) and
    ``known_flagged`` (share of held-out known images above it, ≈ 1 − tpr by construction).
    Classes whose removal leaves fewer than *min_classes* known classes are skipped.
    ``logits_fn(x_train, y_train) -> callable(x) -> logits`` supplies a head for ``"energy"``
    (default: a :class:`~aqqua_geo.downstream.probes.LinearProbe`). A method may also be a
    named configuration ``(name, scorer keyword dict)``, e.g. an ensemble; *scorer_kwargs*
    apply to plain method names only.
    """
    from sklearn.model_selection import train_test_split

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(str)
    kwargs = dict(scorer_kwargs or {})
    rows = []
    for held in np.unique(y):
        known = y != held
        if len(np.unique(y[known])) < min_classes:
            continue
        xk, yk = x[known], y[known]
        x_tr, x_te, y_tr, _ = train_test_split(xk, yk, test_size=test_size, stratify=yk, random_state=seed)
        x_out = x[~known]
        head = None
        if any(_candidate(m, kwargs)[0] == "energy" for m in methods):
            if logits_fn is None:
                from aqqua_geo.downstream.probes import LinearProbe

                probe = LinearProbe().fit(x_tr, y_tr)
                head = probe.decision_function
            else:
                head = logits_fn(x_tr, y_tr)
        for method in methods:
            name, params = _candidate(method, kwargs)
            scorer = NoveltyScorer(tpr=tpr, **params).fit(x_tr, y_tr)
            t = scorer.set_threshold(x_te, head(x_te) if name == "energy" else None)
            s_in = scorer.score(x_te, head(x_te) if name == "energy" else None)
            s_out = scorer.score(x_out, head(x_out) if name == "energy" else None)
            rows.append({"held_out": held, "method": name, "n_known": len(s_in), "n_novel": len(s_out),
                         "auroc": auroc(s_in, s_out), "novel_flagged": float((s_out > t).mean()),
                         "known_flagged": float((s_in > t).mean())})
    return pd.DataFrame(rows, columns=["held_out", "method", "n_known", "n_novel", "auroc",
                                       "novel_flagged", "known_flagged"])


def _candidate(method, kwargs: dict) -> tuple[str, dict]:
    """(name, constructor kwargs) of a method name or a ``(name, kwargs)`` configuration."""
    if isinstance(method, str):
        return method, {"method": method, **kwargs}
    name, params = method
    if "method" not in params:
        raise ValueError(f"novelty configuration {name!r} has no 'method'")
    return str(name), dict(params)


def candidate_params(candidates: Sequence, name: str) -> dict:
    """Constructor kwargs of the candidate called *name* (a plain method name stands for itself)."""
    for c in candidates:
        cname, params = _candidate(c, {})
        if cname == name:
            return params
    if name in METHODS:
        return {"method": name}
    raise ValueError(f"no novelty candidate named {name!r}")


def nested_holdout_evaluation(x: np.ndarray, y: Sequence[str], candidates: Sequence, test_size: float = 0.3,
                              seed: int = 0, tpr: float = 0.95, min_classes: int = 3) -> pd.DataFrame:
    """Held-out-class evaluation of *choosing* a novelty method, without using the evaluated class.

    For each class *c*: on the other classes only, :func:`holdout_class_evaluation` of every
    candidate (method names or ``(name, kwargs)`` configurations) and :func:`select_method`
    choose one; it is then fitted on a train split of the other classes, thresholded at *tpr*
    of their held-out images, and evaluated on *c*. Rows: ``held_out``, ``selected``, ``auroc``,
    ``novel_flagged``, ``known_flagged``. Classes whose removal leaves fewer than *min_classes*
    known classes (the inner evaluation needs ≥ 2 after its own hold-out) are skipped.
    """
    from sklearn.model_selection import train_test_split

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(str)
    rows = []
    for held in np.unique(y):
        known = y != held
        if len(np.unique(y[known])) < min_classes:
            continue
        inner = holdout_class_evaluation(x[known], y[known], methods=candidates, test_size=test_size,
                                         seed=seed, tpr=tpr)
        chosen = select_method(inner)
        params = candidate_params(candidates, chosen)
        x_tr, x_te, y_tr, _ = train_test_split(x[known], y[known], test_size=test_size, stratify=y[known],
                                               random_state=seed)
        scorer = NoveltyScorer(tpr=tpr, **params).fit(x_tr, y_tr)
        t = scorer.set_threshold(x_te)
        s_in, s_out = scorer.score(x_te), scorer.score(x[~known])
        rows.append({"held_out": held, "selected": chosen, "n_known": len(s_in), "n_novel": len(s_out),
                     "auroc": auroc(s_in, s_out), "novel_flagged": float((s_out > t).mean()),
                     "known_flagged": float((s_in > t).mean())})
    return pd.DataFrame(rows, columns=["held_out", "selected", "n_known", "n_novel", "auroc", "novel_flagged",
                                       "known_flagged"])


def auto_candidates(embedding_dim: int | None = None, k: int = 10) -> list:
    """Candidates of ``novelty="auto"``: the embedding methods, and with morphometric columns
    after the first *embedding_dim* (hybrid inputs) also the morphometric scorers and the
    :func:`hybrid_ensemble` (``benchmarks/novelty_holdout.py``: on the bundled UVP6 classes the
    standardised morphometric k-NN ranks unseen classes better than any embedding score of the
    small pretrained backbone)."""
    cands: list = list(EMBEDDING_METHODS)
    if embedding_dim is None:
        return cands
    d = int(embedding_dim)
    morph = {"columns": [d, None], "scale": True, "normalise": False}
    return [(m, {"method": m, "k": k, "columns": [0, d]}) for m in EMBEDDING_METHODS] + [
        ("morph_knn", {"method": "knn", "k": k, **morph}),
        ("morph_mahalanobis", {"method": "mahalanobis", **morph}),
        ("morph_gaussian", {"method": "gaussian", **morph}),
        ("hybrid_ensemble", hybrid_ensemble(d, k)),
    ]


def hybrid_ensemble(embedding_dim: int, k: int = 10) -> dict:
    """Ensemble configuration for embedding ⊕ morphometric inputs (first *embedding_dim* columns
    the embedding): cosine class-normalised k-NN on the embedding, standardised Euclidean
    class-normalised k-NN and class-conditional shrunk Gaussian on the morphometrics."""
    d = int(embedding_dim)
    return {"method": "ensemble", "members": [
        {"method": "knn", "k": k, "columns": [0, d]},
        {"method": "knn", "k": k, "columns": [d, None], "scale": True, "normalise": False},
        {"method": "gaussian", "columns": [d, None], "scale": True, "normalise": False},
    ]}


def leave_one_class_out(x: np.ndarray, y: Sequence[str], methods: Sequence[str] = ("knn", "mahalanobis", "energy"),
                        test_size: float = 0.3, seed: int = 0, k: int = 10, tpr: float = 0.95) -> pd.DataFrame:
    """Backwards-compatible wrapper of :func:`holdout_class_evaluation` (adds ``novel_detected``)."""
    res = holdout_class_evaluation(x, y, methods=methods, test_size=test_size, seed=seed, tpr=tpr,
                                   scorer_kwargs={"k": k})
    res["novel_detected"] = res["novel_flagged"]
    return res


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and worst AUROC / flagged shares per method of a :func:`holdout_class_evaluation` table."""
    g = table.groupby("method")
    return pd.DataFrame({"auroc_mean": g["auroc"].mean(), "auroc_min": g["auroc"].min(),
                         "novel_flagged_mean": g["novel_flagged"].mean(),
                         "novel_flagged_min": g["novel_flagged"].min(),
                         "known_flagged_mean": g["known_flagged"].mean()})


def select_method(table: pd.DataFrame) -> str:
    """Method with the highest mean share of unseen classes flagged (then mean AUROC)."""
    if table.empty:
        raise ValueError("select_method: empty held-out-class table")
    s = summarise(table).sort_values(["novel_flagged_mean", "auroc_mean"], ascending=False)
    return str(s.index[0])
