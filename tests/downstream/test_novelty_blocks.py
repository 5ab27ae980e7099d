"""Class-conditional Gaussians, column blocks, ensembles and the nested held-out-class choice."""

from __future__ import annotations

import numpy as np
import pytest

from aqqua_geo.downstream.bundle_io import load_bundle, save_bundle
from aqqua_geo.downstream.novelty import (
    NoveltyScorer,
    auroc,
    auto_candidates,
    candidate_params,
    hybrid_ensemble,
    nested_holdout_evaluation,
)


def _spread_classes(seed: int = 0, n: int = 200):
    """A tight class at 0, a wide one at (10, 0), and a novel cloud just beside the tight one."""
    rng = np.random.default_rng(seed)
    a = 0.1 * rng.normal(size=(n, 2))
    b = np.array([10.0, 0.0]) + 3.0 * rng.normal(size=(n, 2))
    novel = np.array([1.5, 0.0]) + 0.1 * rng.normal(size=(n, 2))
    return np.vstack([a, b]).astype(np.float32), np.repeat(["a", "b"], n), novel.astype(np.float32)


def test_class_conditional_gaussian_sees_what_a_shared_covariance_misses():
    x, y, novel = _spread_classes()
    x_val, _, _ = _spread_classes(seed=1)
    kw = {"centre": False, "normalise": False}
    res = {}
    for method in ("gaussian", "mahalanobis"):
        s = NoveltyScorer(method, **kw).fit(x, y)
        t = s.set_threshold(x_val)
        res[method] = (auroc(s.score(x_val), s.score(novel)), float((s.score(novel) > t).mean()))
    # shared covariance ≈ the wide class's: 1.5 from the tight class is "close"
    assert res["gaussian"][0] > 0.95 and res["gaussian"][1] > 0.9, res
    assert res["mahalanobis"][0] < 0.9, res


def test_gaussian_by_hand_one_dimension():
    x = np.array([[-1.0], [1.0], [9.0], [11.0]], np.float32)
    s = NoveltyScorer("gaussian", centre=False, normalise=False).fit(x, ["a", "a", "b", "b"])
    # each class: mean 0 / 10, variance 1 (a 1-D covariance is not shrunk): min d² + log 1
    np.testing.assert_allclose(s.score(np.array([[0.0], [2.0], [5.0]])), [0.0, 4.0, 25.0], atol=1e-6)


def test_columns_and_scale_read_only_their_block():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    x[:, 3:] *= 1000.0  # a block in other units
    y = np.repeat(["p", "q"], 60)
    s = NoveltyScorer("knn", columns=[3, None], scale=True, normalise=False).fit(x, y)
    ref = NoveltyScorer("knn", normalise=False).fit(x[:, 3:] / x[:, 3:].std(0), y)
    q = rng.normal(size=(7, 5)).astype(np.float32)
    q[:, 3:] *= 1000.0
    np.testing.assert_allclose(s.score(q), ref.score(q[:, 3:] / x[:, 3:].std(0)), rtol=1e-4)
    with pytest.raises(ValueError, match="outside features"):
        NoveltyScorer("knn", columns=[3, 9]).fit(x, y)


def test_ensemble_flags_novelty_of_either_block_and_survives_a_bundle(tmp_path):
    rng = np.random.default_rng(0)
    n = 150
    emb = rng.normal(size=(2 * n, 8)) + np.repeat([[3.0] * 8, [-3.0] * 8], n, axis=0)
    morph = rng.normal(size=(2 * n, 3)) * [1.0, 50.0, 0.01]
    x = np.hstack([emb, morph]).astype(np.float32)
    y = np.repeat(["u", "v"], n)
    # novel in the morphometrics only: ordinary embedding, 6 σ off in the second trait
    novel = np.hstack([emb[:40], morph[:40] + [0.0, 300.0, 0.0]]).astype(np.float32)
    conf = hybrid_ensemble(8, k=5)
    s = NoveltyScorer(**conf).fit(x[::2], y[::2])
    with pytest.raises(RuntimeError, match="set_threshold"):
        s.score(x[1::2])
    t = s.set_threshold(x[1::2])
    assert (s.score(novel) > t).mean() > 0.9
    emb_only = NoveltyScorer("knn", k=5, columns=[0, 8]).fit(x[::2], y[::2])
    assert auroc(emb_only.score(x[1::2]), emb_only.score(novel)) < 0.7  # the embedding cannot see it
    path = save_bundle(tmp_path / "b.aqqua", {"novelty": s})
    back = load_bundle(path)["novelty"]
    np.testing.assert_allclose(back.score(novel), s.score(novel))
    assert back.is_novel(back.score(novel)).mean() > 0.9
    with pytest.raises(ValueError, match="members"):
        NoveltyScorer("ensemble")
    with pytest.raises(ValueError, match="combine"):
        NoveltyScorer(**conf, combine="median")


def test_nested_choice_never_uses_the_evaluated_class():
    """Candidates: a score on an informative block and one on pure noise; the nested choice picks
    the informative one for every class, and the recorded inner tables never contain it."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 4)) * 4
    good = np.concatenate([c + 0.5 * rng.normal(size=(40, 4)) for c in centres])
    noise = rng.normal(size=(200, 4))
    x = np.hstack([good, noise]).astype(np.float32)
    y = np.repeat([f"c{i}" for i in range(5)], 40)
    cands = [("good", {"method": "knn", "k": 5, "columns": [0, 4], "normalise": False}),
             ("noise", {"method": "knn", "k": 5, "columns": [4, None], "normalise": False})]
    table = nested_holdout_evaluation(x, y, cands, seed=0)
    assert list(table["held_out"]) == [f"c{i}" for i in range(5)]
    assert (table["selected"] == "good").all()
    assert table["auroc"].mean() > 0.9
    assert (table["known_flagged"] <= 0.1).all()


def test_auto_candidates():
    assert auto_candidates() == ["knn", "mahalanobis", "rmd", "vim"]
    hybrid = auto_candidates(16)
    names = [c[0] for c in hybrid]
    assert {"morph_knn", "morph_gaussian", "hybrid_ensemble", "knn"} <= set(names)
    assert candidate_params(hybrid, "knn")["columns"] == [0, 16]
    assert candidate_params(hybrid, "morph_knn")["columns"] == [16, None]
    assert candidate_params(["knn"], "energy") == {"method": "energy"}
    with pytest.raises(ValueError, match="no novelty candidate"):
        candidate_params(hybrid, "nope")


def test_hybrid_bundle_auto_novelty_considers_the_morphometric_block(tmp_path):
    """``finish_bundle`` on embedding ⊕ morphometric inputs: when only the morphometrics carry the
    class structure, ``auto`` picks a morphometric-block scorer and the saved scorer reads that block."""
    import pandas as pd

    from aqqua_geo.downstream.classify import HYBRID_INPUTS, finish_bundle
    from aqqua_geo.downstream.probes import LinearProbe

    rng = np.random.default_rng(0)
    n, d = 40, 6
    centres = rng.normal(size=(5, 3)) * 5
    morph = np.concatenate([c + 0.3 * rng.normal(size=(n, 3)) for c in centres]) * [1.0, 100.0, 0.01]
    x = np.hstack([rng.normal(size=(5 * n, d)), morph]).astype(np.float32)
    y = np.repeat([f"c{i}" for i in range(5)], n)
    idx = rng.permutation(len(y))
    tr, va = np.sort(idx[:150]), np.sort(idx[150:])
    backbone = tmp_path / "backbone.pt"
    backbone.write_bytes(b"not a model: only hashed")
    report = pd.DataFrame({"label": [f"c{i}" for i in range(5)], "new_label": [f"c{i}" for i in range(5)]})
    head = LinearProbe().fit(x[tr], y[tr])
    bundle = finish_bundle(head, backbone, x, y, tr, va, report, "auto",
                           {"inputs": HYBRID_INPUTS, "backbone_dim": d})
    chosen = bundle.metrics["novelty"]["method"]
    assert chosen.startswith("morph_") or chosen == "hybrid_ensemble", chosen
    assert bundle.novelty.threshold_ is not None
