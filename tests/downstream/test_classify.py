"""k-NN weighting, linear probe, calibration and rare-class handling (hand-checked numbers)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.downstream.classify import (
    ClassifierBundle,
    expected_calibration_error,
    fit_temperature,
    group_rare_classes,
)
from aqqua_geo.downstream.probes import KNNClassifier, LinearProbe, l2_normalize, softmax


def blobs(n_per_class=40, dim=16, n_classes=3, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 2
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres])
    y = np.repeat([f"class{i}" for i in range(n_classes)], n_per_class)
    return x.astype(np.float32), y


def test_knn_weights_are_softmax_of_similarity_over_temperature():
    # query (1,0): neighbours a (sim 1), a' (sim cos45° = 0.7071), b (sim 0)
    train = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # norms must not matter
    labels = ["a", "b", "a"]
    knn = KNNClassifier(k=3, temperature=1.0).fit(train, labels)
    p = knn.predict_proba(np.array([[5.0, 0.0]]))
    # p(b) = e^0 / (e^1 + e^0.70711 + e^0) = 1 / (2.71828 + 2.02811 + 1)
    assert p[0, 1] == pytest.approx(0.174021, abs=1e-5)
    assert p[0, 0] == pytest.approx(1 - 0.174021, abs=1e-5)
    # DINOv2's T = 0.07 makes the nearest neighbour dominate: p(b) = 1/(e^(1/.07) + e^(.7071/.07) + 1)
    p07 = KNNClassifier(k=3, temperature=0.07).fit(train, labels).predict_proba(np.array([[1.0, 0.0]]))
    assert p07[0, 1] == pytest.approx(1 / (np.exp(1 / 0.07) + np.exp(0.70711 / 0.07) + 1), rel=1e-3)
    # k = 1 → one-hot on the nearest neighbour
    assert KNNClassifier(k=1).fit(train, labels).predict(np.array([[0.1, 1.0]]))[0] == "b"


def test_knn_kneighbors_sorted_and_k_capped():
    x, y = blobs(n_per_class=5)
    knn = KNNClassifier(k=50).fit(x, y)
    sims, idx = knn.kneighbors(x[:3])
    assert sims.shape == (3, 15)  # k capped at the training size
    assert np.all(np.diff(sims, axis=1) <= 1e-7)
    assert list(idx[:, 0]) == [0, 1, 2]  # each point is its own nearest neighbour


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.floats(0.01, 5.0), st.integers(0, 10_000))
def test_knn_probabilities_are_distributions(k, temperature, seed):
    x, y = blobs(n_per_class=4, dim=5, seed=seed)
    p = KNNClassifier(k=k, temperature=temperature).fit(x, y).predict_proba(x[::3])
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)


def test_linear_probe_separates_blobs_and_roundtrips_weights():
    x, y = blobs()
    probe = LinearProbe(C=10).fit(x, y)
    assert (probe.predict(x) == y).mean() > 0.95
    # logits = standardised L2-normalised features · Wᵀ + b
    z = (l2_normalize(x) - probe.mean_) / probe.scale_
    np.testing.assert_allclose(probe.decision_function(x), z @ probe.coef_.T + probe.intercept_, rtol=1e-5, atol=1e-5)
    # a head trained elsewhere (finetune) acts on raw features
    clone = LinearProbe.from_weights(probe.coef_, probe.intercept_, probe.classes_)
    np.testing.assert_allclose(clone.predict_proba(z), probe.predict_proba(x), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearProbe().fit(x[:5], y[:5])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="2-D"):
        KNNClassifier().fit(np.zeros(4), ["a"] * 4)
    with pytest.raises(ValueError, match="NaN"):
        KNNClassifier().fit(np.full((2, 2), np.nan), ["a", "b"])
    with pytest.raises(ValueError, match="3 embeddings but 2 labels"):
        KNNClassifier().fit(np.ones((3, 2)), ["a", "b"])


def test_expected_calibration_error_by_hand():
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # one object per bin: (|1-.9| + |0-.8| + |1-.6| + |1-.7|) / 4
    assert expected_calibration_error(proba, y, n_bins=10) == pytest.approx(0.4)
    # all four in one bin: |acc 3/4 - mean conf 0.75| = 0
    assert expected_calibration_error(proba, y, n_bins=1) == pytest.approx(0.0)


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20_000, 4)) * 1.5
    y = np.array([rng.choice(4, p=p) for p in softmax(z)])
    t = fit_temperature(3.0 * z, y)  # logits three times too sharp
    assert t == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(softmax(3.0 * z), y)
    after = expected_calibration_error(softmax(3.0 * z, t), y)
    assert after < 0.02 < before


def test_bundle_calibrates_and_roundtrips(tmp_path):
    x, y = blobs(spread=1.2, seed=3)
    probe = LinearProbe(C=100).fit(x[::2], y[::2])
    bundle = ClassifierBundle(head=probe, embedding={"embed_dim": x.shape[1]})
    report = bundle.calibrate(x[1::2], y[1::2])
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    path = bundle.save(tmp_path / "clf.joblib")
    loaded = ClassifierBundle.load(path)
    np.testing.assert_allclose(loaded.predict_proba(x), bundle.predict_proba(x))
    assert loaded.temperature == bundle.temperature and loaded.embedding == {"embed_dim": x.shape[1]}
    with pytest.raises(ValueError, match="not known to the classifier"):
        bundle.calibrate(x[:2], ["nope", "class0"])
    (tmp_path / "junk.joblib").write_bytes(b"")
    with pytest.raises(Exception):
        ClassifierBundle.load(tmp_path / "junk.joblib")


def test_rare_classes_grouped_to_parent_or_excluded():
    labels = ["Copepoda"] * 12 + ["Calanidae"] * 3 + ["Oithonidae"] * 4 + ["bubble"] * 2
    parents = {"Calanidae": "Copepoda", "Oithonidae": "Copepoda"}
    new, report = group_rare_classes(labels, min_count=5, parents=parents)
    assert list(new[12:19]) == ["other_Copepoda"] * 7
    assert list(new[19:]) == [None, None]  # "other" would hold only 2 → still rare → excluded
    by = report.set_index("label")
    assert by.loc["Calanidae", "action"] == "grouped" and by.loc["bubble", "action"] == "excluded"
    assert by.loc["Copepoda", "action"] == "kept" and by.loc["Copepoda", "n"] == 12
    new, _ = group_rare_classes(labels, min_count=5, strategy="exclude")
    assert set(new[12:]) == {None}
    with pytest.raises(ValueError, match="strategy"):
        group_rare_classes(labels, strategy="merge")


class _FixedLogits:
    """A head whose logits are given (to test calibration decisions on known probabilities)."""

    kind = "knn"

    def __init__(self, logits, classes):
        self._logits = np.asarray(logits, dtype=np.float64)
        self.classes_ = np.asarray(classes)

    def decision_function(self, x):
        return self._logits[np.asarray(x, dtype=int)[:, 0]]


def _knn_like_logits(n=200, seed=0):
    """k-NN-style log vote shares: 90 % right at 0.9 confidence, 10 % wrong with p_true floored at 1e-8."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    p = np.full((n, 3), 1e-8)
    wrong = np.arange(n) < n // 10
    for i in range(n):
        if wrong[i]:
            p[i, (y[i] + 1) % 3] = 1.0
        else:
            p[i, y[i]] = 0.9
            p[i, (y[i] + 1) % 3] = 0.1
    return np.log(p), y


def test_temperature_that_raises_ece_is_not_kept():
    logits, y = _knn_like_logits()
    classes = np.array(["a", "b", "c"])
    bundle = ClassifierBundle(head=_FixedLogits(logits, classes))
    rep = bundle.calibrate(np.arange(len(y))[:, None], classes[y])
    assert rep["temperature_fitted"] > 2  # the NLL fit flattens the floored vote shares ...
    assert rep["ece_fitted"] > rep["ece_before"]  # ... which raises the calibration error
    assert not rep["kept"] and bundle.temperature == 1.0 and rep["ece_after"] == rep["ece_before"]
    assert bundle.metrics["calibration"]["table"][1]["candidate"] == "fitted"
    # ECE by hand: 180 rows at confidence 0.9 all right, 20 at confidence 1.0 all wrong
    assert rep["ece_before"] == pytest.approx(0.9 * 0.1 + 0.1 * 1.0, rel=1e-6)


def test_temperature_that_lowers_ece_is_kept():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(400, 4))
    y = np.array([rng.choice(4, p=softmax(z[i : i + 1])[0]) for i in range(400)])  # calibrated at T=1
    classes = np.array(["a", "b", "c", "d"])
    bundle = ClassifierBundle(head=_FixedLogits(4.0 * z, classes))  # 4x overconfident
    rep = bundle.calibrate(np.arange(400)[:, None], classes[y])
    assert rep["kept"] and rep["ece_after"] < rep["ece_before"]
    assert bundle.temperature == pytest.approx(rep["temperature_fitted"]) and 2.5 < bundle.temperature < 6
