"""Boosted regression trees (xgboost ``hist``) for plankton abundance/biomass habitat models.

:class:`BRTEnsemble` is a verde/sklearn-style estimator: hyper-parameters are tuned by
cross-validation with early stopping (spatial blocks by default, so neighbouring stations do not
leak between folds), then ``n_members`` boosters are refit on bootstrap resamples of the rows;
their spread is the map uncertainty. Objectives: squared error (optionally on ``log1p(y)``,
back-transformed with Duan's smearing factor) and Poisson (optionally on ``y × label_scale``,
as Drago et al. 2022 did). Models save as one xgboost JSON per member plus a JSON manifest.

Folds, buffers, the hyper-parameter search and scores live in
:mod:`aqqua_geo.mapping.model_selection`; partial-dependence plots in
:mod:`aqqua_geo.mapping.plotting` (the verde split: estimator / model selection / plots).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from sklearn.base import BaseEstimator, RegressorMixin

from aqqua_geo.mapping.model_selection import (
    log10_r2,
    regression_scores,
    search_hyperparameters,
    spatial_block_folds,
    stratified_folds,
)

OBJECTIVES = {"squared_error": "reg:squarederror", "poisson": "count:poisson"}
EVAL_METRIC = {"squared_error": "rmse", "poisson": "poisson-nloglik"}
TRANSFORMS = ("none", "log1p", "log")
RESAMPLING = ("bootstrap", "kfold", "none")
COORD_COLUMNS = ("lon", "lat")
MANIFEST = "manifest.json"
FORMAT = "aqqua-brt-ensemble"


# --------------------------------------------------------------------------------------------
# Back-transform
# --------------------------------------------------------------------------------------------
def smearing_factor(residuals_log: np.ndarray) -> float:
    """Duan's (1983) smearing estimate ``mean(exp(e))`` for a model fitted on the log scale."""
    r = np.asarray(residuals_log, dtype="f8")
    if r.size == 0:
        raise ValueError("smearing_factor needs at least one residual")
    return float(np.mean(np.exp(r)))


def back_transform_log1p(pred_log: np.ndarray, smearing: float) -> np.ndarray:
    """E[y] for ``log1p(y) = f + e``: ``exp(f)·mean(exp(e)) − 1``, floored at 0."""
    return np.maximum(np.exp(np.asarray(pred_log, "f8")) * smearing - 1.0, 0.0)


def back_transform_log(pred_log: np.ndarray, smearing: float) -> np.ndarray:
    """E[y] for ``log(y) = f + e``: ``exp(f)·mean(exp(e))`` (Duan 1983)."""
    return np.exp(np.asarray(pred_log, "f8")) * smearing


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------
class BRTEnsemble(RegressorMixin, BaseEstimator):
    """Bootstrap ensemble of xgboost boosted regression trees (verde/sklearn-style).

    Parameters
    ----------
    objective : ``"squared_error"`` or ``"poisson"``.
    transform : ``"none"``, ``"log1p"`` or ``"log"`` (squared error only; Duan smearing
        back-transform; ``"log"`` for strictly positive targets such as fluxes).
    label_scale : multiply *y* before fitting (Poisson on pseudo-counts, e.g. 1000 as in
        Drago et al. 2022); predictions are divided back.
    params : xgboost parameters (``eta``, ``max_depth``, ``min_child_weight``, ``subsample`` …).
    n_estimators : maximum boosting rounds; early stopping on CV picks the actual number.
    search : hyper-parameter grid (dict of lists) or ``None`` (use *params*); ``n_iter`` turns
        it into a random search; ``search_rule`` ``"min"`` or ``"1se"``.
    cv : ``"spatial"`` (grouped K-fold over ``block_deg`` blocks, ``buffer_km``) or
        ``"stratified"`` (quantile-stratified K-fold); needs ``lon``/``lat`` columns in X for
        spatial folds (they are not used as features unless listed in *features*).
    n_members : ensemble size. ``resampling="bootstrap"``: each member fits a bootstrap sample
        of the rows; ``"kfold"``: members fit the training parts of repeated quantile-stratified
        ``n_splits``-fold splits (Drago et al.'s 5 × 20 = 100 resamples); ``"none"``: all rows,
        different seeds (spread from ``subsample`` only).
    nthread : xgboost threads per booster. 1 by default: for habitat-model tables (10²–10⁵ rows)
        threads barely help and OpenMP spin-waiting on a busy machine makes 2 threads up to
        100× slower; grid prediction gets its parallelism from Dask chunks instead.
    """

    def __init__(
        self,
        objective: str = "squared_error",
        transform: str = "none",
        label_scale: float = 1.0,
        params: dict[str, Any] | None = None,
        n_estimators: int = 600,
        early_stopping_rounds: int = 10,
        search: dict[str, Sequence] | None = None,
        n_iter: int | None = None,
        search_rule: str = "min",
        cv: str = "spatial",
        n_splits: int = 5,
        block_deg: float = 10.0,
        buffer_km: float = 0.0,
        n_members: int = 10,
        resampling: str = "bootstrap",
        features: Sequence[str] | None = None,
        nthread: int = 1,
        random_state: int = 0,
        progress: bool = False,
    ) -> None:
        self.objective = objective
        self.transform = transform
        self.label_scale = label_scale
        self.params = params
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.search = search
        self.n_iter = n_iter
        self.search_rule = search_rule
        self.cv = cv
        self.n_splits = n_splits
        self.block_deg = block_deg
        self.buffer_km = buffer_km
        self.n_members = n_members
        self.resampling = resampling
        self.features = features
        self.nthread = nthread
        self.random_state = random_state
        self.progress = progress

    # ---- configuration ---------------------------------------------------------------------
    def _check_config(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.transform in ("log1p", "log") and self.objective != "squared_error":
            raise ValueError(f"transform={self.transform!r} only applies to objective='squared_error'")
        if self.cv not in ("spatial", "stratified"):
            raise ValueError(f"cv must be 'spatial' or 'stratified', got {self.cv!r}")
        if self.resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {self.resampling!r}")
        if self.n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {self.n_members}")
        if self.label_scale <= 0:
            raise ValueError(f"label_scale must be > 0, got {self.label_scale}")

    def _xgb_params(self) -> dict[str, Any]:
        base = {"eta": 0.1, "max_depth": 4, "min_child_weight": 1, "subsample": 0.8}
        return {**base, **(self.params or {}),
                "objective": OBJECTIVES[self.objective],
                "eval_metric": EVAL_METRIC[self.objective],
                "tree_method": "hist", "nthread": self.nthread, "seed": self.random_state}

    def _features_of(self, X: pd.DataFrame) -> list[str]:
        if self.features is not None:
            return list(self.features)
        return [c for c in X.columns if c not in COORD_COLUMNS]

    def _matrix(self, X: pd.DataFrame | np.ndarray, features: list[str]) -> np.ndarray:
        if isinstance(X, np.ndarray):
            if X.ndim != 2 or X.shape[1] != len(features):
                raise ValueError(f"X array must be (n, {len(features)}) for features {features}")
            return X.astype("f4", copy=False)
        missing = [f for f in features if f not in X.columns]
        if missing:
            raise KeyError(f"X lacks feature column(s) {missing}; model features: {features}")
        return X[features].to_numpy(dtype="f4")

    def _encode_y(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype="f8")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"y has {int((~np.isfinite(y)).sum())} non-finite value(s)")
        if self.objective == "poisson" and (y < 0).any():
            raise ValueError("objective='poisson' needs non-negative y")
        if self.transform == "log1p":
            if (y <= -1).any():
                raise ValueError("transform='log1p' needs y > -1")
            return np.log1p(y)
        if self.transform == "log":
            if (y <= 0).any():
                raise ValueError("transform='log' needs y > 0")
            return np.log(y)
        return y * self.label_scale

    def _folds(self, X: pd.DataFrame, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.cv == "spatial":
            if not isinstance(X, pd.DataFrame) or not set(COORD_COLUMNS) <= set(X.columns):
                raise KeyError("cv='spatial' needs 'lon' and 'lat' columns in X")
            return spatial_block_folds(X["lon"].to_numpy(), X["lat"].to_numpy(), self.n_splits,
                                       self.block_deg, self.buffer_km, self.random_state)
        return stratified_folds(y, self.n_splits, random_state=self.random_state)

    # ---- fitting ---------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Sequence[float], sample_weight: np.ndarray | None = None
            ) -> "BRTEnsemble":
        """Tune (CV + early stopping) then fit ``n_members`` bootstrap boosters."""
        import xgboost as xgb

        self._check_config()
        features = self._features_of(X)
        Xm = self._matrix(X, features)
        y_raw = np.asarray(y, dtype="f8")
        if len(y_raw) != len(Xm):
            raise ValueError(f"X has {len(Xm)} rows but y has {len(y_raw)}")
        yt = self._encode_y(y_raw)
        params = self._xgb_params()
        dall = xgb.DMatrix(Xm, label=yt, weight=sample_weight, feature_names=features)
        folds = self._folds(X, y_raw)
        grid = self.search if self.search is not None else {
            k: [params[k]] for k in ("eta", "max_depth", "min_child_weight")}
        self.search_ = search_hyperparameters(
            dall, folds, params, grid, n_estimators=self.n_estimators,
            early_stopping_rounds=self.early_stopping_rounds, n_iter=self.n_iter,
            rule=self.search_rule, seed=self.random_state, progress=self.progress)
        self.best_params_ = {**params, **self.search_.best_params}
        self.n_rounds_ = self.search_.n_rounds
        self.features_ = features
        self._fit_members(Xm, yt, sample_weight)
        self.cv_scores_ = self._cv_scores(X, Xm, y_raw, yt, folds, sample_weight)
        self.training_summary_ = {
            "n_samples": int(len(y_raw)), "y_mean": float(y_raw.mean()), "y_min": float(y_raw.min()),
            "y_max": float(y_raw.max()), "features": features,
            "feature_min": [float(v) for v in np.nanmin(Xm, axis=0)],
            "feature_max": [float(v) for v in np.nanmax(Xm, axis=0)],
            "data_sha1": hashlib.sha1(np.ascontiguousarray(Xm).tobytes() + yt.tobytes()).hexdigest()}
        return self

    def _train_one(self, Xm, yt, w, seed: int, rows: np.ndarray | None) -> Any:
        import xgboost as xgb

        if rows is not None:
            Xm, yt = Xm[rows], yt[rows]
            w = None if w is None else np.asarray(w)[rows]
        d = xgb.DMatrix(Xm, label=yt, weight=w, feature_names=self.features_)
        return xgb.train({**self.best_params_, "seed": seed}, d, num_boost_round=self.n_rounds_)

    def _fit_members(self, Xm: np.ndarray, yt: np.ndarray, w: np.ndarray | None) -> None:
        self.boosters_, self.smearing_ = [], []
        member_rows = self._member_rows(yt)
        members: Iterable = enumerate(member_rows)
        if self.progress:
            from tqdm.auto import tqdm

            members = tqdm(members, total=len(member_rows), desc=f"{self.resampling} members",
                           unit="model")
        for i, rows in members:
            booster = self._train_one(Xm, yt, w, self.random_state + i, rows)
            self.boosters_.append(booster)
            self.smearing_.append(self._smearing(booster, Xm, yt, rows))

    def _member_rows(self, yt: np.ndarray) -> list[np.ndarray | None]:
        n = len(yt)
        if self.resampling == "bootstrap":
            rng = np.random.default_rng(self.random_state)
            return [rng.integers(0, n, n) for _ in range(self.n_members)]
        if self.resampling == "kfold":
            repeats = int(np.ceil(self.n_members / self.n_splits))
            folds = stratified_folds(yt, self.n_splits, repeats, random_state=self.random_state)
            return [tr for tr, _ in folds[: self.n_members]]
        return [None] * self.n_members

    def _smearing(self, booster, Xm, yt, rows) -> float:
        if self.transform not in ("log1p", "log"):
            return 1.0
        sel = slice(None) if rows is None else rows
        fitted = booster.inplace_predict(Xm[sel])
        return smearing_factor(yt[sel] - fitted)

    def _cv_scores(self, X, Xm, y_raw, yt, folds, w) -> dict[str, Any]:
        """Out-of-fold predictions of one booster per fold with the chosen settings."""
        oof = np.full(len(y_raw), np.nan)
        per_fold = []
        for k, (tr, te) in enumerate(folds):
            b = self._train_one(Xm, yt, w, self.random_state + 1000 + k, tr)
            s = self._smearing(b, Xm, yt, tr)
            oof[te] = self._decode(b.inplace_predict(Xm[te]), s)
            per_fold.append(regression_scores(y_raw[te], oof[te])["r2"])
        ok = np.isfinite(oof)
        self.oof_ = oof
        return {"scheme": self.cv, "n_splits": len(folds), "block_deg": self.block_deg,
                "buffer_km": self.buffer_km, **regression_scores(y_raw[ok], oof[ok]),
                "r2_log10": log10_r2(y_raw[ok], oof[ok]), "r2_per_fold": per_fold}

    def fit_dask(self, X, y, client=None, features: Sequence[str] | None = None) -> "BRTEnsemble":
        """Fit members with ``xgboost.dask.DaskXGBRegressor`` on dask collections.

        For data that do not fit one machine: no CV search (use :meth:`fit` on a sample to tune
        and pass its ``best_params_``/``n_rounds_`` as *params*/``n_estimators``). Each member
        trains on a per-partition bootstrap (``sample(frac=1, replace=True)``); ``resampling``
        other than ``"bootstrap"`` uses all rows.
        """
        from xgboost import dask as dxgb

        self._check_config()
        self.features_ = list(features or self._features_of(X))
        params = self._xgb_params()
        self.best_params_ = params
        self.n_rounds_ = int(self.n_estimators)
        Xf = X[self.features_].astype("f4")
        yt = y.map_partitions(
            lambda s: pd.Series(self._encode_y(s.to_numpy()), index=s.index, name=s.name),
            meta=(y.name, "f8"))
        both = Xf.assign(__y__=yt)
        self.boosters_, self.smearing_ = [], []
        kw = {k: v for k, v in params.items() if k not in ("eta", "seed", "nthread", "objective")}
        for i in range(self.n_members):
            part = both.sample(frac=1.0, replace=True, random_state=self.random_state + i) \
                if self.resampling == "bootstrap" else both
            reg = dxgb.DaskXGBRegressor(
                n_estimators=self.n_rounds_, learning_rate=params["eta"], objective=params["objective"],
                random_state=self.random_state + i, n_jobs=self.nthread, **kw)
            if client is not None:
                reg.client = client
            reg.fit(part[self.features_], part["__y__"])
            booster = reg.get_booster()
            booster.feature_names = self.features_
            self.boosters_.append(booster)
            self.smearing_.append(1.0 if self.transform not in ("log1p", "log") else
                                  self._dask_smearing(booster, part))
        self.cv_scores_ = {}
        self.training_summary_ = {"n_samples": int(len(X)), "features": self.features_, "dask": True}
        return self

    def _dask_smearing(self, booster, part) -> float:
        import dask

        def block(df):
            r = df["__y__"].to_numpy() - booster.inplace_predict(df[self.features_].to_numpy("f4"))
            return pd.DataFrame({"s": [np.exp(r).sum()], "n": [len(r)]})

        tot = part.map_partitions(block, meta={"s": "f8", "n": "i8"}).sum()
        s, n = dask.compute(tot["s"], tot["n"])
        return float(s / n)

    # ---- prediction ------------------------------------------------------------------------
    def _decode(self, raw: np.ndarray, smearing: float) -> np.ndarray:
        if self.transform == "log1p":
            return back_transform_log1p(raw, smearing)
        if self.transform == "log":
            return back_transform_log(raw, smearing)
        return np.asarray(raw, dtype="f8") / self.label_scale

    def _check_fitted(self) -> None:
        if not getattr(self, "boosters_", None):
            raise RuntimeError("BRTEnsemble is not fitted; call fit() or BRTEnsemble.load()")

    def predict_matrix(self, Xm: np.ndarray) -> np.ndarray:
        """Member predictions ``(n_members, n)`` for a float feature matrix in ``features_``
        order; rows with a NaN feature give NaN (no extrapolation into masked cells)."""
        self._check_fitted()
        Xm = np.asarray(Xm, dtype="f4")
        out = np.full((len(self.boosters_), len(Xm)), np.nan, dtype="f4")
        ok = np.isfinite(Xm).all(axis=1)
        if ok.any():
            Xo = np.ascontiguousarray(Xm[ok])
            for i, (b, s) in enumerate(zip(self.boosters_, self.smearing_)):
                out[i, ok] = self._decode(b.inplace_predict(Xo), s)
        return out

    def predict_ensemble(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Predictions of every member, shape ``(n_members, n)``, original units."""
        self._check_fitted()
        return self.predict_matrix(self._matrix(X, self.features_))

    def predict_median(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Ensemble mean of the members' *median* estimates: for ``transform="log"`` that is
        ``exp(f)`` without the smearing factor (the right point estimate for log-scale scores;
        :meth:`predict`, with smearing, is the mean to integrate). Other transforms: as predict."""
        self._check_fitted()
        if self.transform != "log":
            return self.predict(X)
        Xm = self._matrix(X, self.features_)
        raw = np.stack([b.inplace_predict(np.ascontiguousarray(Xm)) for b in self.boosters_])
        return np.exp(raw.astype("f8")).mean(axis=0)

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Ensemble-mean prediction (original units)."""
        return self.predict_ensemble(X).mean(axis=0).astype("f8")

    def grid(self, cube: xr.Dataset, name: str | None = None) -> xr.Dataset:
        """Predict on every cell of *cube* (in memory): ``<name>_mean``, ``<name>_std``.

        The same path as :func:`aqqua_geo.mapping.predict.predict_lazy` (which large cubes should
        use with :func:`~aqqua_geo.mapping.predict.predict_to_zarr`), computed at once.
        """
        from aqqua_geo.mapping.predict import Product, predict_lazy

        self._check_fitted()
        lazy = predict_lazy({name or "prediction": Product(self, "generic", name or "prediction")}, cube)
        out = lazy.compute()
        if name is None:
            out = out.rename({"prediction_mean": "mean", "prediction_std": "std"})
        return out

    # ---- interpretation --------------------------------------------------------------------
    def feature_importance(self, kind: str = "gain") -> pd.Series:
        """Mean xgboost importance (``gain``, ``total_gain``, ``weight``, ``cover``) over members,
        normalised to sum to 1."""
        self._check_fitted()
        tab = pd.DataFrame([b.get_score(importance_type=kind) for b in self.boosters_])
        imp = tab.reindex(columns=self.features_).fillna(0.0).mean()
        return (imp / imp.sum()).sort_values(ascending=False).rename(f"{kind}_importance")

    def permutation_importance(self, X: pd.DataFrame, y, n_repeats: int = 5) -> pd.DataFrame:
        """Drop in R² when each feature is permuted (sklearn ``permutation_importance``)."""
        from sklearn.inspection import permutation_importance

        self._check_fitted()
        r = permutation_importance(self, X[self.features_].astype("f8"), np.asarray(y, "f8"), n_repeats=n_repeats,
                                   random_state=self.random_state, n_jobs=1)
        return pd.DataFrame({"mean": r.importances_mean, "std": r.importances_std},
                            index=self.features_).sort_values("mean", ascending=False)

    def partial_dependence(self, X: pd.DataFrame, feature: str, grid_resolution: int = 30
                           ) -> pd.DataFrame:
        """Partial dependence (mean ensemble prediction) over a percentile grid of *feature*."""
        from sklearn.inspection import partial_dependence

        self._check_fitted()
        # float64 columns: sklearn assigns float64 grid values into X (pandas 3 refuses float32)
        r = partial_dependence(self, X[self.features_].astype("f8"), [feature], grid_resolution=grid_resolution,
                               kind="average", method="brute")
        return pd.DataFrame({feature: r["grid_values"][0], "partial_dependence": r["average"][0]})

    # ---- persistence -----------------------------------------------------------------------
    def config_hash(self) -> str:
        """SHA-1 of the JSON config (parameters, features, rounds), for provenance."""
        blob = json.dumps({"params": _jsonable(self.get_params()),
                           "features": getattr(self, "features_", None),
                           "n_rounds": getattr(self, "n_rounds_", None)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write ``member_XXX.json`` (xgboost JSON) per member and ``manifest.json``."""
        from aqqua_geo import __version__

        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        names = []
        for i, b in enumerate(self.boosters_):
            names.append(f"member_{i:03d}.json")
            b.save_model(d / names[-1])
        manifest = {
            "format": FORMAT, "format_version": 1, "package_version": __version__,
            "config": _jsonable(self.get_params()), "features": self.features_,
            "best_params": _jsonable(self.best_params_), "n_rounds": self.n_rounds_,
            "smearing": self.smearing_, "members": names, "config_hash": self.config_hash(),
            "cv_scores": _jsonable(getattr(self, "cv_scores_", {})),
            "search": _jsonable(self.search_.table.to_dict("records")) if hasattr(self, "search_") else None,
            "training": _jsonable(getattr(self, "training_summary_", {})),
        }
        (d / MANIFEST).write_text(json.dumps(manifest, indent=2))  # written last: marks complete
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "BRTEnsemble":
        """Load a model written by :meth:`save`."""
        import xgboost as xgb

        d = Path(directory)
        if not (d / MANIFEST).is_file():
            raise FileNotFoundError(f"{d / MANIFEST} not found: not a saved BRTEnsemble")
        m = json.loads((d / MANIFEST).read_text())
        if m.get("format") != FORMAT:
            raise ValueError(f"{d / MANIFEST}: format {m.get('format')!r} is not {FORMAT!r}")
        model = cls(**m["config"])
        model.features_ = m["features"]
        model.best_params_ = m["best_params"]
        model.n_rounds_ = m["n_rounds"]
        model.smearing_ = [float(s) for s in m["smearing"]]
        model.cv_scores_ = m.get("cv_scores") or {}
        model.training_summary_ = m.get("training") or {}
        model.boosters_ = []
        for name in m["members"]:
            b = xgb.Booster()
            b.load_model(d / name)
            model.boosters_.append(b)
        return model


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
