"""BRTEnsemble and its building blocks: spatial folds, smearing, search, persistence, dask."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.mapping.model import BRTEnsemble, back_transform_log, back_transform_log1p, smearing_factor
from aqqua_geo.mapping.model_selection import (
    quantile_bins,
    regression_scores,
    spatial_block_cv,
    spatial_block_folds,
    spatial_blocks,
)
from aqqua_geo.mapping.plotting import plot_partial_dependence


def _toy(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Stations on a global scatter; y depends on x1 only (x2 is noise)."""
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-180, 180, n)
    lat = rng.uniform(-70, 70, n)
    x1 = np.cos(np.radians(lat)) * 10 + rng.normal(0, 0.5, n)
    x2 = rng.normal(0, 1, n)
    y = np.exp(0.25 * x1) + rng.normal(0, 0.3, n)
    return pd.DataFrame({"lon": lon, "lat": lat, "x1": x1, "x2": x2}), np.clip(y, 0, None)


FAST = {"params": {"eta": 0.3, "max_depth": 3}, "n_estimators": 60, "n_members": 3, "nthread": 1}


# ---- spatial folds ----------------------------------------------------------------------------
def test_spatial_blocks_hand_values():
    ids = spatial_blocks(np.array([-180.0, -170.1, 179.9, 0.0]), np.array([-90.0, 5.0, 89.9, 0.0]), 10)
    # lon -180 -> column 0, -170.1 -> 0, 179.9 -> 35, 0 -> 18; lat -90 -> row 0, 5 -> 9, 89.9 -> 17
    assert ids.tolist() == [0, 9 * 100_000 + 0, 17 * 100_000 + 35, 9 * 100_000 + 18]
    with pytest.raises(ValueError, match="block_deg"):
        spatial_blocks(np.zeros(2), np.zeros(2), 0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([5.0, 10.0, 20.0]))
def test_spatial_folds_partition_and_never_split_a_block(seed, block):
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-180, 180, 300), rng.uniform(-80, 80, 300)
    folds = spatial_block_folds(lon, lat, n_splits=4, block_deg=block, random_state=seed)
    tests = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tests), np.arange(300))  # every point tested exactly once
    blocks = spatial_blocks(lon, lat, block)
    for tr, te in folds:
        assert not set(blocks[tr]) & set(blocks[te])  # no block on both sides


def test_buffer_removes_training_points_near_test_points():
    rng = np.random.default_rng(1)
    lon, lat = rng.uniform(-60, 60, 500), rng.uniform(-60, 60, 500)
    plain = spatial_block_folds(lon, lat, 5, 10.0, 0.0, random_state=0)
    buffered = spatial_block_folds(lon, lat, 5, 10.0, 500.0, random_state=0)
    for (tr0, te0), (tr1, te1) in zip(plain, buffered):
        assert np.array_equal(te0, te1) and len(tr1) < len(tr0)
        # every kept training point is > 500 km from every test point
        la1, lo1 = np.radians(lat[tr1])[:, None], np.radians(lon[tr1])[:, None]
        la2, lo2 = np.radians(lat[te1])[None], np.radians(lon[te1])[None]
        a = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
        assert (2 * 6371.0088 * np.arcsin(np.sqrt(a))).min() > 500.0


def test_too_few_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="spatial blocks"):
        spatial_block_folds(np.array([1.0, 2.0]), np.array([1.0, 2.0]), n_splits=5)


def test_quantile_bins_are_balanced():
    bins = quantile_bins(np.arange(100.0), 10)
    assert np.bincount(bins).tolist() == [10] * 10


# ---- formulas ------------------------------------------------------------------------------
def test_smearing_hand_computed():
    # residuals ln(2) and ln(0.5): mean(exp(e)) = (2 + 0.5) / 2 = 1.25
    assert smearing_factor(np.log([2.0, 0.5])) == pytest.approx(1.25)
    # f = ln(4): exp(f) * 1.25 - 1 = 4
    assert back_transform_log1p(np.array([np.log(4.0)]), 1.25)[0] == pytest.approx(4.0)
    assert back_transform_log1p(np.array([-5.0]), 1.0)[0] == 0.0  # floored at 0
    with pytest.raises(ValueError, match="at least one residual"):
        smearing_factor(np.array([]))


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 1.5), st.floats(-2, 3))
def test_smearing_recovers_lognormal_mean(sigma, mu):
    """E[exp(mu + e)] for e ~ N(0, s²) is exp(mu + s²/2); Duan's estimate converges to it."""
    e = np.random.default_rng(0).normal(0, sigma, 200_000)
    est = np.exp(mu) * smearing_factor(e)
    assert est == pytest.approx(np.exp(mu + sigma**2 / 2), rel=0.02)


def test_regression_scores_hand_values():
    s = regression_scores(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 5.0]))
    # SSE = 1, SST = 5 -> R² = 0.8 ; RMSE = sqrt(1/4) ; MAE = 1/4
    assert s["r2"] == pytest.approx(0.8) and s["rmse"] == pytest.approx(0.5)
    assert s["mae"] == pytest.approx(0.25)


# ---- estimator ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, msg", [
    ({"objective": "gamma"}, "objective must be"),
    ({"transform": "sqrt"}, "transform must be"),
    ({"objective": "poisson", "transform": "log1p"}, "only applies"),
    ({"cv": "random"}, "cv must be"),
    ({"resampling": "jackknife"}, "resampling must be"),
    ({"n_members": 0}, "n_members"),
])
def test_bad_configuration_messages(bad, msg):
    X, y = _toy(60)
    with pytest.raises(ValueError, match=msg):
        BRTEnsemble(**bad).fit(X, y)


def test_bad_inputs_messages():
    X, y = _toy(60)
    with pytest.raises(KeyError, match="lon"):
        BRTEnsemble(**FAST).fit(X.drop(columns=["lon"]), y)
    with pytest.raises(ValueError, match="non-finite"):
        BRTEnsemble(**FAST).fit(X, np.where(np.arange(60) == 3, np.nan, y))
    with pytest.raises(ValueError, match="non-negative"):
        BRTEnsemble(objective="poisson", **FAST).fit(X, y - 10)
    with pytest.raises(RuntimeError, match="not fitted"):
        BRTEnsemble().predict(X)
    model = BRTEnsemble(**FAST).fit(X, y)
    with pytest.raises(KeyError, match="x2"):
        model.predict(X.drop(columns=["x2"]))


@pytest.mark.parametrize("kw", [
    {"objective": "squared_error"},
    {"objective": "squared_error", "transform": "log1p"},
    {"objective": "poisson", "label_scale": 100.0},
])
def test_objectives_fit_informative_signal(kw):
    X, y = _toy()
    model = BRTEnsemble(**kw, **FAST).fit(X, y)
    assert model.score(X, y) > 0.8
    assert model.cv_scores_["scheme"] == "spatial" and model.cv_scores_["r2"] > 0.5
    ens = model.predict_ensemble(X)
    assert ens.shape == (3, len(X)) and np.allclose(ens.mean(0), model.predict(X))
    assert (ens.std(0) > 0).any()  # members differ (bootstrap)
    imp = model.feature_importance()
    assert imp.sum() == pytest.approx(1.0) and imp.index[0] == "x1"


def test_search_picks_from_grid_with_early_stopping():
    X, y = _toy(300)
    grid = {"eta": [0.05, 0.3], "max_depth": [1, 3], "n_estimators": [40, 200]}
    model = BRTEnsemble(search=grid, n_members=2, nthread=1).fit(X, y)
    table = model.search_.table
    assert len(table) == 8 and (table["n_rounds"] <= table["n_estimators"]).all()
    assert model.search_.best_params["eta"] in (0.05, 0.3)
    assert model.cv_scores_["r2"] > 0.5
    rnd = BRTEnsemble(search=grid, n_iter=3, n_members=1, nthread=1).fit(X, y)
    assert len(rnd.search_.table) == 3


def test_kfold_resampling_members_fit_training_parts():
    X, y = _toy(200)
    model = BRTEnsemble(resampling="kfold", n_splits=5, n_members=10, cv="stratified",
                        params={"eta": 0.3}, n_estimators=30, nthread=1).fit(X, y)
    assert len(model.boosters_) == 10


def test_permutation_importance_and_pdp(tmp_path):
    X, y = _toy(300)
    model = BRTEnsemble(**FAST).fit(X, y)
    perm = model.permutation_importance(X, y, n_repeats=2)
    assert perm.index[0] == "x1" and perm.loc["x1", "mean"] > 10 * abs(perm.loc["x2", "mean"])
    pd_x1 = model.partial_dependence(X, "x1", grid_resolution=10)
    assert pd_x1["partial_dependence"].is_monotonic_increasing or \
        np.corrcoef(pd_x1["x1"], pd_x1["partial_dependence"])[0, 1] > 0.9
    png = plot_partial_dependence(model, X, tmp_path / "pdp.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_save_load_roundtrip(tmp_path):
    X, y = _toy(200)
    model = BRTEnsemble(transform="log1p", **FAST).fit(X, y)
    model.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["features"] == ["x1", "x2"] and len(manifest["members"]) == 3
    assert manifest["config"]["transform"] == "log1p" and manifest["cv_scores"]["r2"] > 0
    back = BRTEnsemble.load(tmp_path / "m")
    assert np.array_equal(back.predict_ensemble(X), model.predict_ensemble(X))
    assert back.config_hash() == model.config_hash()
    with pytest.raises(FileNotFoundError, match="not a saved BRTEnsemble"):
        BRTEnsemble.load(tmp_path)


def test_nan_features_give_nan_predictions():
    X, y = _toy(100)
    model = BRTEnsemble(**FAST).fit(X, y)
    Xn = X.copy()
    Xn.loc[0, "x1"] = np.nan
    pred = model.predict(Xn)
    assert np.isnan(pred[0]) and np.isfinite(pred[1:]).all()


def test_spatial_block_cv_is_nested_and_lower_than_training_fit():
    X, y = _toy(300)
    res = spatial_block_cv(BRTEnsemble(**FAST), X, y, n_splits=4)
    assert len(res["r2_per_fold"]) == 4 and np.isfinite(res["oof"]).all()
    assert res["r2"] < BRTEnsemble(**FAST).fit(X, y).score(X, y)


def test_dask_path_with_in_process_client():
    import dask.dataframe as dd
    from distributed import Client

    X, y = _toy(400)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        Xd = dd.from_pandas(X, npartitions=2)
        yd = dd.from_pandas(pd.Series(y, name="y"), npartitions=2)
        model = BRTEnsemble(n_estimators=40, n_members=2, params={"eta": 0.3, "max_depth": 3},
                            nthread=1, transform="log1p").fit_dask(Xd, yd, client=client)
    assert len(model.boosters_) == 2 and model.features_ == ["x1", "x2"]
    assert model.score(X, y) > 0.8 and all(s > 1.0 for s in model.smearing_)


def test_log_transform_smearing_recovers_the_mean_of_a_lognormal_target():
    """transform='log' (fluxes: y > 0): exp(f) * mean(exp(e)) is unbiased where exp(f) is not."""
    rng = np.random.default_rng(3)
    n = 600
    X = pd.DataFrame({"lon": rng.uniform(-180, 180, n), "lat": rng.uniform(-60, 60, n),
                      "x1": rng.uniform(0, 1, n)})
    y = np.exp(1.0 + 2.0 * X["x1"].to_numpy() + rng.normal(0, 0.8, n))
    model = BRTEnsemble(**{**FAST, "transform": "log"}).fit(X, y)
    assert 1.2 < np.mean(model.smearing_) < 1.6  # exp(0.8**2 / 2) = 1.38
    assert abs(model.predict(X).mean() / y.mean() - 1) < 0.15
    np.testing.assert_allclose(back_transform_log(np.log([2.0, 4.0]), 1.5), [3.0, 6.0])
    with pytest.raises(ValueError, match="y > 0"):
        BRTEnsemble(**{**FAST, "transform": "log"}).fit(X, np.zeros(n))
