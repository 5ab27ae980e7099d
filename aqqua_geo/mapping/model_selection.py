"""Model selection for habitat models: spatial blocks and folds, buffers, hyper-parameter
search and scores (the verde/sklearn ``model_selection`` layer under
:class:`aqqua_geo.mapping.model.BRTEnsemble`).

Spatial-block folds keep neighbouring stations out of each other's test set (Roberts et al.
2017); a buffer drops training points within ``buffer_km`` great-circle km of any test point
(Ploton et al. 2020). :func:`spatial_block_cv` scores a whole pipeline, inner tuning included.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from aqqua_geo.mapping.sphere import EARTH_RADIUS_KM

__all__ = ["DEFAULT_GRID", "SearchResult", "log10_r2", "quantile_bins", "regression_scores", "search_hyperparameters",
           "spatial_block_cv", "spatial_block_folds", "spatial_blocks", "stratified_folds"]

DEFAULT_GRID: dict[str, list] = {
    "eta": [0.05, 0.075, 0.1],
    "max_depth": [2, 4, 6],
    "min_child_weight": [1, 3, 5],
}


# --------------------------------------------------------------------------------------------
# Spatial cross-validation
# --------------------------------------------------------------------------------------------
def spatial_blocks(lon: np.ndarray, lat: np.ndarray, block_deg: float | tuple[float, float] = 10.0
                   ) -> np.ndarray:
    """Integer id of the ``block_deg`` (lon, lat) block each point falls in."""
    dlon, dlat = (block_deg, block_deg) if np.isscalar(block_deg) else block_deg
    if dlon <= 0 or dlat <= 0:
        raise ValueError(f"block_deg must be positive, got {block_deg!r}")
    lon = np.asarray(lon, dtype="f8")
    lat = np.asarray(lat, dtype="f8")
    ix = np.floor((((lon + 180.0) % 360.0)) / dlon).astype(np.int64)
    iy = np.floor((np.clip(lat, -90, 90) + 90.0) / dlat).astype(np.int64)
    return iy * 100_000 + ix


def spatial_block_folds(
    lon: np.ndarray,
    lat: np.ndarray,
    n_splits: int = 5,
    block_deg: float | tuple[float, float] = 10.0,
    buffer_km: float = 0.0,
    random_state: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped K-fold over spatial blocks: a block is wholly in train or in test.

    With ``buffer_km > 0`` training points within that great-circle distance of any test
    point are dropped from that fold's training set (buffered CV, Ploton et al. 2020).
    """
    from sklearn.model_selection import GroupKFold

    groups = spatial_blocks(lon, lat, block_deg)
    n_groups = np.unique(groups).size
    if n_groups < n_splits:
        raise ValueError(f"only {n_groups} spatial blocks of {block_deg}° for n_splits={n_splits}")
    gkf = GroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    idx = np.arange(len(groups))
    folds = []
    for train, test in gkf.split(idx, groups=groups):
        if buffer_km > 0:
            train = _drop_within(train, test, lon, lat, buffer_km)
        folds.append((train, test))
    return folds


def _drop_within(train: np.ndarray, test: np.ndarray, lon, lat, buffer_km: float) -> np.ndarray:
    from sklearn.neighbors import BallTree

    rad = np.radians(np.column_stack([np.asarray(lat, "f8"), np.asarray(lon, "f8")]))
    tree = BallTree(rad[test], metric="haversine")
    dist, _ = tree.query(rad[train], k=1)
    return train[dist[:, 0] * EARTH_RADIUS_KM > buffer_km]


def stratified_folds(y: np.ndarray, n_splits: int = 5, n_repeats: int = 1, n_bins: int = 10,
                     random_state: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated K-fold stratified by quantile bins of *y* (Drago et al.'s non-spatial protocol)."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    bins = quantile_bins(y, n_bins)
    rskf = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=random_state)
    return list(rskf.split(np.zeros(len(bins)), bins))


def quantile_bins(y: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Quantile bin index (0..n_bins-1) of each value; ties share a bin."""
    y = np.asarray(y, dtype="f8")
    edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, y, side="right")


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def regression_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """R² (1 − SSE/SST), RMSE, MAE, Pearson r and Spearman rho."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    y_true = np.asarray(y_true, "f8")
    y_pred = np.asarray(y_pred, "f8")
    const = np.ptp(y_pred) == 0 or np.ptp(y_true) == 0
    return {
        "r2": float(r2_score(y_true, y_pred)),
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "pearson_r": float("nan") if const else float(pearsonr(y_true, y_pred)[0]),
        "spearman_rho": float("nan") if const else float(spearmanr(y_true, y_pred)[0]),
    }


def log10_r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """R² of log10 values (1 − SSE/SST on log10 y), over the pairs where both are > 0; the
    skill measure of quantities spanning orders of magnitude (fluxes, biomass). NaN if < 2 pairs."""
    y_true = np.asarray(y_true, "f8")
    y_pred = np.asarray(y_pred, "f8")
    ok = (y_true > 0) & (y_pred > 0) & np.isfinite(y_true) & np.isfinite(y_pred)
    if ok.sum() < 2:
        return float("nan")
    a, b = np.log10(y_true[ok]), np.log10(y_pred[ok])
    sst = float(((a - a.mean()) ** 2).sum())
    return float(1.0 - ((a - b) ** 2).sum() / sst) if sst > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# Hyper-parameter search
# --------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """Outcome of :func:`search_hyperparameters`."""

    table: pd.DataFrame  # one row per combination: params, n_rounds, cv_mean, cv_std
    best_params: dict[str, Any]
    n_rounds: int
    metric: str
    rule: str = "min"
    extra: dict[str, Any] = field(default_factory=dict)


def _param_combos(grid: dict[str, Sequence], n_iter: int | None, seed: int) -> list[dict]:
    keys = list(grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    if n_iter is not None and n_iter < len(combos):
        rng = np.random.default_rng(seed)
        combos = [combos[i] for i in sorted(rng.choice(len(combos), n_iter, replace=False))]
    return combos


def search_hyperparameters(
    dtrain: Any,
    folds: list[tuple[np.ndarray, np.ndarray]],
    base_params: dict[str, Any],
    grid: dict[str, Sequence] | None = None,
    *,
    n_estimators: int = 600,
    early_stopping_rounds: int = 10,
    n_iter: int | None = None,
    rule: str = "min",
    seed: int = 0,
    progress: bool = False,
) -> SearchResult:
    """Grid (or random, ``n_iter``) search with ``xgboost.cv`` on the given folds.

    Every combination runs with early stopping; ``n_estimators`` in *grid* caps the rounds.
    ``rule="1se"`` picks the shallowest, then fewest-rounds combination whose CV error is within
    one standard error of the best (Drago et al.'s parsimony rule); ``"min"`` the best.
    """
    import xgboost as xgb

    if rule not in ("min", "1se"):
        raise ValueError(f"rule must be 'min' or '1se', got {rule!r}")
    grid = dict(DEFAULT_GRID if grid is None else grid)
    metric = base_params.get("eval_metric", "rmse")
    rows = []
    combos = _param_combos(grid, n_iter, seed)
    iterator: Iterable = combos
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(combos, desc="hyper-parameter search", unit="combo")
    for combo in iterator:
        cap = int(combo.get("n_estimators", n_estimators))
        params = {**base_params, **{k: v for k, v in combo.items() if k != "n_estimators"}}
        hist = xgb.cv(params, dtrain, num_boost_round=cap, folds=folds,
                      early_stopping_rounds=early_stopping_rounds, seed=seed, verbose_eval=False)
        best = int(np.argmin(hist[f"test-{metric}-mean"].to_numpy()))
        rows.append({**combo, "n_rounds": best + 1,
                     "cv_mean": float(hist[f"test-{metric}-mean"].iloc[best]),
                     "cv_std": float(hist[f"test-{metric}-std"].iloc[best])})
    table = pd.DataFrame(rows)
    i_best = int(table["cv_mean"].idxmin())
    if rule == "1se":
        se = table.loc[i_best, "cv_std"] / np.sqrt(len(folds))
        ok = table[table["cv_mean"] <= table.loc[i_best, "cv_mean"] + se]
        sort_by = [c for c in ("max_depth", "n_rounds") if c in ok.columns]
        i_best = int(ok.sort_values(sort_by, kind="stable").index[0])
    best = {k: _py(table.loc[i_best, k]) for k in grid if k != "n_estimators"}
    return SearchResult(table, best, int(table.loc[i_best, "n_rounds"]), metric, rule)


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def spatial_block_cv(model: Any, X: pd.DataFrame, y, *, n_splits: int = 5,
                     block_deg: float = 10.0, buffer_km: float = 0.0, random_state: int = 0
                     ) -> dict[str, Any]:
    """Honest spatial-block CV of a whole modelling pipeline: for each fold, clone *model*, fit it
    (including its own inner tuning) on the training blocks, predict the held-out blocks.

    Returns pooled out-of-fold scores, per-fold R² and the out-of-fold predictions.
    """
    from sklearn.base import clone

    y = np.asarray(y, "f8")
    folds = spatial_block_folds(X["lon"].to_numpy(), X["lat"].to_numpy(), n_splits, block_deg,
                                buffer_km, random_state)
    oof = np.full(len(y), np.nan)
    per_fold = []
    for tr, te in folds:
        m = clone(model).fit(X.iloc[tr], y[tr])
        oof[te] = m.predict(X.iloc[te])
        per_fold.append(regression_scores(y[te], oof[te])["r2"])
    ok = np.isfinite(oof)
    return {**regression_scores(y[ok], oof[ok]), "r2_per_fold": per_fold, "oof": oof,
            "n_splits": n_splits, "block_deg": block_deg, "buffer_km": buffer_km}
