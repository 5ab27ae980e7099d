"""Traits regressed from embeddings (e.g. ZooProcess area from frozen ViT features)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["TraitRegressor"]


class TraitRegressor:
    """Learn traits (size, biovolume, carbon, …) from embeddings: a scaled Ridge or MLP regression.

    ``kind="ridge"`` uses ``RidgeCV`` over ``alphas`` (closed form, fast, the default), ``"mlp"`` an
    ``MLPRegressor`` with early stopping. ``log_target=True`` fits ``log10(y)`` (positive, skewed
    traits such as biovolume or carbon) and :meth:`predict` returns values in the original units.
    Rows with a NaN (or, with ``log_target``, non-positive) target are ignored in :meth:`fit`.
    """

    def __init__(
        self,
        kind: str = "ridge",
        alphas: Sequence[float] = tuple(np.logspace(-3, 4, 15)),
        hidden_layer_sizes: tuple[int, ...] = (256,),
        log_target: bool = False,
        random_state: int = 0,
    ) -> None:
        if kind not in ("ridge", "mlp"):
            raise ValueError(f"TraitRegressor: kind must be 'ridge' or 'mlp', got {kind!r}")
        self.kind = kind
        self.alphas = tuple(alphas)
        self.hidden_layer_sizes = hidden_layer_sizes
        self.log_target = log_target
        self.random_state = random_state
        self.targets_: list[str] = []
        self.model_ = None

    def _y(self, y) -> tuple[np.ndarray, list[str]]:
        if isinstance(y, pd.DataFrame):
            return y.to_numpy(np.float64), [str(c) for c in y.columns]
        if isinstance(y, pd.Series):
            return y.to_numpy(np.float64)[:, None], [str(y.name or "y")]
        arr = np.asarray(y, np.float64)
        arr = arr[:, None] if arr.ndim == 1 else arr
        return arr, [f"y{i}" for i in range(arr.shape[1])]

    def _valid(self, y: np.ndarray) -> np.ndarray:
        ok = np.isfinite(y).all(axis=1)
        if self.log_target:
            ok &= (y > 0).all(axis=1)
        return ok

    def fit(self, X: np.ndarray, y) -> TraitRegressor:
        """Fit on embeddings ``X`` (N, D) and targets ``y`` (N,) / (N, k) / Series / DataFrame."""
        from sklearn.linear_model import RidgeCV
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X = np.asarray(X, np.float64)
        Y, self.targets_ = self._y(y)
        if len(X) != len(Y):
            raise ValueError(f"TraitRegressor.fit: {len(X)} embeddings but {len(Y)} targets")
        ok = self._valid(Y)
        if ok.sum() < 3:
            raise ValueError(f"TraitRegressor.fit: only {int(ok.sum())} rows with valid targets (need ≥ 3)")
        Yt = np.log10(Y[ok]) if self.log_target else Y[ok]
        if self.kind == "ridge":
            reg = RidgeCV(alphas=self.alphas)
        else:
            reg = MLPRegressor(
                hidden_layer_sizes=self.hidden_layer_sizes,
                early_stopping=ok.sum() >= 20,
                max_iter=500,
                random_state=self.random_state,
            )
        self._ymean = Yt.mean(axis=0)
        self._ystd = Yt.std(axis=0) + 1e-12
        # standardised targets: one regularisation strength suits traits of any magnitude
        self.model_ = make_pipeline(StandardScaler(), reg).fit(X[ok], (Yt - self._ymean) / self._ystd)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted traits, shape (N,) for one target, (N, k) for several, in the input units."""
        if self.model_ is None:
            raise RuntimeError("TraitRegressor.predict: call fit() first")
        pred = self.model_.predict(np.asarray(X, np.float64)).reshape(len(X), -1)
        pred = pred * self._ystd + self._ymean
        if self.log_target:
            pred = 10.0**pred
        return pred[:, 0] if pred.shape[1] == 1 else pred

    def _truth_and_prediction(self, X: np.ndarray, y) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Targets and predictions on the rows with valid targets (log10 when ``log_target``)."""
        Y, names = self._y(y)
        ok = self._valid(Y)
        pred = np.asarray(self.predict(np.asarray(X)[ok])).reshape(int(ok.sum()), -1)
        truth = Y[ok]
        if self.log_target:
            truth, pred = np.log10(truth), np.log10(pred)
        return truth, pred, names

    def score(self, X: np.ndarray, y) -> dict[str, float]:
        """R² per target (on log10 values when ``log_target``), on rows with valid targets."""
        truth, pred, names = self._truth_and_prediction(X, y)
        return dict(zip(names, _r2_per_column(truth, pred)))

    def report(self, X: np.ndarray, y) -> pd.DataFrame:
        """R², RMSE and n per target as a table (RMSE in log10 units when ``log_target``)."""
        truth, pred, names = self._truth_and_prediction(X, y)
        rmse = np.sqrt(np.mean((truth - pred) ** 2, axis=0))
        return pd.DataFrame(
            {"target": names, "r2": _r2_per_column(truth, pred), "rmse": rmse, "n": len(truth)}
        ).set_index("target")


def _r2_per_column(truth: np.ndarray, pred: np.ndarray) -> list[float]:
    from sklearn.metrics import r2_score

    return [float(r2_score(truth[:, i], pred[:, i])) for i in range(truth.shape[1])]
