"""Novelty scores, thresholds and AUROC (hand-checked numbers)."""

from __future__ import annotations

import numpy as np
import pytest

from aqqua_geo.downstream.probes import l2_normalize
from aqqua_geo.downstream.novelty import NoveltyScorer, auroc, energy_score, leave_one_class_out


def clusters(seed=0, dim=12, n=60, n_classes=4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    x = np.concatenate([c + 0.5 * rng.normal(size=(n, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat([f"c{i}" for i in range(n_classes)], n)


def test_auroc_by_hand():
    # positives (novel) above negatives in 5 of 6 pairs
    assert auroc([0.1, 0.2, 0.3], [0.25, 0.4]) == pytest.approx(5 / 6)
    assert auroc([0, 0], [0, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])


def test_energy_by_hand():
    np.testing.assert_allclose(energy_score(np.array([[0.0, 0.0], [10.0, 0.0]])),
                               [-np.log(2), -(10 + np.log1p(np.exp(-10)))])
    assert energy_score(np.array([[0.0, 0.0]]), temperature=2.0)[0] == pytest.approx(-2 * np.log(2))


def test_knn_score_is_one_minus_kth_similarity():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = NoveltyScorer("knn", k=2).fit(train).score(np.array([[1.0, 0.0]]))
    assert s[0] == pytest.approx(1 - np.sqrt(0.5))  # 2nd neighbour is (1,1) at 45°


def test_mahalanobis_matches_explicit_formula():
    from sklearn.covariance import LedoitWolf

    x, y = clusters()
    scorer = NoveltyScorer("mahalanobis").fit(x, y)
    xn = l2_normalize(x)
    means = np.stack([xn[y == c].mean(0) for c in np.unique(y)])
    prec = LedoitWolf(assume_centered=True).fit(xn - means[np.searchsorted(np.unique(y), y)]).precision_
    q = l2_normalize(x[:5])
    expected = [min((v - m) @ prec @ (v - m) for m in means) for v in q]
    np.testing.assert_allclose(scorer.score(x[:5]), expected, rtol=1e-5)


def test_threshold_accepts_tpr_of_validation():
    x, y = clusters()
    scorer = NoveltyScorer("knn", k=5, tpr=0.9).fit(x[::2], y[::2])
    scorer.set_threshold(x[1::2])
    accepted = ~scorer.is_novel(scorer.score(x[1::2]))
    assert accepted.mean() == pytest.approx(0.9, abs=0.01)
    with pytest.raises(RuntimeError, match="threshold not set"):
        NoveltyScorer().is_novel(np.zeros(3))


def test_bad_configuration_messages():
    with pytest.raises(ValueError, match="novelty method"):
        NoveltyScorer("lof")
    with pytest.raises(ValueError, match="needs training labels"):
        NoveltyScorer("mahalanobis").fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="needs classifier logits"):
        NoveltyScorer("energy").fit(np.ones((3, 2))).score(np.ones((3, 2)))


def test_leave_one_class_out_separates_distinct_clusters():
    x, y = clusters(seed=2)
    res = leave_one_class_out(x, y, seed=0)
    assert set(res["method"]) == {"knn", "mahalanobis", "energy"}
    assert len(res) == 4 * 3
    assert res.groupby("method")["auroc"].mean().min() > 0.9
    # a held-out class that overlaps a known one is not detectable → AUROC near chance
    x2 = np.concatenate([x, x[y == "c0"] + 0.01]).astype(np.float32)
    y2 = np.concatenate([y, np.repeat("twin", (y == "c0").sum())])
    twin = leave_one_class_out(x2, y2, methods=["knn"]).set_index("held_out").loc["twin", "auroc"]
    assert twin < 0.75
