"""Alpha-diversity indices of a samples x taxa count matrix, vectorised.

Every function takes raw **counts** (individuals per taxon; concentrations are fine for the
proportion-based indices, but richness estimators need counts) as

* a numpy array ``(..., n_taxa)`` (taxa on ``axis``, default the last), or
* an ``xarray.DataArray`` with a taxon dimension ``dim`` (default ``"taxon"``); the result keeps
  the other dimensions, and dask-backed arrays stay lazy (``xr.apply_ufunc``).

Definitions (p_i = n_i / N):

* richness S = #{n_i > 0}
* Shannon H' = -sum p_i ln p_i (natural log unless ``base`` is given)
* Simpson D = sum p_i^2 (dominance); Gini-Simpson 1 - D; inverse Simpson 1/D
* Pielou J = H' / ln S (undefined, NaN, for S <= 1)
* Hill numbers qD = (sum p_i^q)^(1/(1-q)); q=0 richness, q->1 exp(H'), q=2 1/D, q=inf 1/max p
* rarefied richness (Hurlbert 1971; Heck et al. 1975): E[S_n] = sum_i 1 - C(N-N_i, n)/C(N, n),
  the binomial coefficients evaluated through log-gamma so that large N does not overflow
* Chao1 = S + f1^2 / (2 f2) (Chao 1984), bias-corrected S + f1 (f1-1) / (2 (f2+1)) when f2 = 0
  or when asked.

Samples with no individuals give NaN for every index except richness (0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import gammaln

__all__ = [
    "richness",
    "shannon",
    "simpson",
    "gini_simpson",
    "inverse_simpson",
    "pielou",
    "hill",
    "rarefied_richness",
    "chao1",
    "diversity_table",
]

ArrayLike = Any  # numpy array-like or xarray.DataArray


def _proportions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Proportions along the last axis and the totals (NaN proportions for empty samples)."""
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(total > 0, counts / np.where(total > 0, total, 1.0), np.nan)
    return p, total[..., 0]


def _check_counts(counts: np.ndarray, integer: bool = False) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    if counts.ndim == 0:
        raise ValueError("counts must have a taxon axis (got a scalar)")
    if np.isnan(counts).any():
        raise ValueError("counts contain NaN; fill absent taxa with 0")
    if (counts < 0).any():
        raise ValueError("counts must be >= 0")
    if integer and not np.allclose(counts, np.round(counts)):
        raise ValueError("this estimator needs integer counts (individuals), not concentrations")
    return counts


def _apply(
    core: Callable[..., np.ndarray],
    counts: ArrayLike,
    axis: int,
    dim: str,
    integer: bool = False,
    extra_dim: tuple[str, np.ndarray] | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``core`` (working on the last axis) over numpy or xarray input."""
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a hard dependency of the mapping extra
        xr = None
    if xr is not None and isinstance(counts, xr.DataArray):
        if dim not in counts.dims:
            raise ValueError(f"taxon dimension {dim!r} not in DataArray dims {counts.dims}")

        def _wrapped(a: np.ndarray) -> np.ndarray:
            return core(_check_counts(a, integer), **kwargs)

        out_dims = [[extra_dim[0]]] if extra_dim else [[]]
        res = xr.apply_ufunc(
            _wrapped,
            counts,
            input_core_dims=[[dim]],
            output_core_dims=out_dims,
            dask="parallelized",
            output_dtypes=[float],
            dask_gufunc_kwargs={"output_sizes": {extra_dim[0]: len(extra_dim[1])}} if extra_dim else None,
        )
        if extra_dim:
            res = res.assign_coords({extra_dim[0]: extra_dim[1]})
        return res
    arr = np.asarray(counts, dtype=float)
    if arr.ndim == 0:
        raise ValueError("counts must have a taxon axis (got a scalar)")
    arr = _check_counts(np.moveaxis(arr, axis, -1), integer)
    return core(arr, **kwargs)


# --- core kernels (taxa on the last axis, validated float input) --------------------------


def _richness(c: np.ndarray) -> np.ndarray:
    return (c > 0).sum(axis=-1).astype(float)


def _shannon(c: np.ndarray, base: float | None = None) -> np.ndarray:
    p, _ = _proportions(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = 0.0 - terms.sum(axis=-1)  # 0.0 - x turns -0.0 into 0.0 for single-taxon samples
    h = np.where(np.isnan(p).all(axis=-1), np.nan, h)
    return h / np.log(base) if base is not None else h


def _simpson(c: np.ndarray) -> np.ndarray:
    p, _ = _proportions(c)
    return (p**2).sum(axis=-1)


def _hill(c: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hill numbers for each order in ``q``; output (..., len(q))."""
    p, _ = _proportions(c)
    out = np.empty(p.shape[:-1] + (q.size,), dtype=float)
    present = p > 0
    for k, qk in enumerate(q):
        if np.isclose(qk, 1.0):
            val = np.exp(_shannon(c))
        elif np.isinf(qk):
            val = 1.0 / np.max(p, axis=-1)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                powered = np.where(present, np.where(present, p, 1.0) ** qk, 0.0)
                val = powered.sum(axis=-1) ** (1.0 / (1.0 - qk))
        out[..., k] = np.where(np.isnan(p).all(axis=-1), np.nan, val)
    return out


def _rarefied(c: np.ndarray, n: float) -> np.ndarray:
    total = c.sum(axis=-1, keepdims=True)
    # log C(N - N_i, n) - log C(N, n); the term is 0 when N - N_i < n (taxon surely drawn).
    rest = total - c
    with np.errstate(invalid="ignore"):
        log_ratio = (
            gammaln(rest + 1) - gammaln(rest - n + 1) - gammaln(total + 1) + gammaln(total - n + 1)
        )
    miss = np.where(rest >= n, np.exp(log_ratio), 0.0)
    e_s = np.where(c > 0, 1.0 - miss, 0.0).sum(axis=-1)
    return np.where(total[..., 0] >= n, e_s, np.nan)


def _chao1(c: np.ndarray, bias_corrected: bool = False) -> np.ndarray:
    s = _richness(c)
    f1 = (np.round(c) == 1).sum(axis=-1).astype(float)
    f2 = (np.round(c) == 2).sum(axis=-1).astype(float)
    corrected = s + f1 * (f1 - 1) / (2.0 * (f2 + 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        classic = s + f1**2 / (2.0 * f2)
    use_classic = (~np.asarray(bias_corrected)) & (f2 > 0)
    out = np.where(use_classic, classic, corrected)
    return np.where(c.sum(axis=-1) > 0, out, np.nan)


# --- public API ---------------------------------------------------------------------------


def richness(counts: ArrayLike, axis: int = -1, dim: str = "taxon") -> Any:
    """Observed richness S: the number of taxa with a count > 0."""
    return _apply(_richness, counts, axis, dim)


def shannon(counts: ArrayLike, base: float | None = None, axis: int = -1, dim: str = "taxon") -> Any:
    """Shannon entropy H' = -sum p ln p (log ``base`` if given, natural log by default)."""
    return _apply(_shannon, counts, axis, dim, base=base)


def simpson(counts: ArrayLike, axis: int = -1, dim: str = "taxon") -> Any:
    """Simpson's dominance D = sum p^2 (probability two draws with replacement match)."""
    return _apply(_simpson, counts, axis, dim)


def gini_simpson(counts: ArrayLike, axis: int = -1, dim: str = "taxon") -> Any:
    """Gini-Simpson index 1 - sum p^2."""
    return 1.0 - simpson(counts, axis=axis, dim=dim)


def inverse_simpson(counts: ArrayLike, axis: int = -1, dim: str = "taxon") -> Any:
    """Inverse Simpson 1 / sum p^2 (= Hill number of order 2)."""
    return 1.0 / simpson(counts, axis=axis, dim=dim)


def pielou(counts: ArrayLike, axis: int = -1, dim: str = "taxon") -> Any:
    """Pielou's evenness J = H' / ln S; NaN where S <= 1 (evenness is undefined)."""

    def _core(c: np.ndarray) -> np.ndarray:
        s = _richness(c)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(s > 1, _shannon(c) / np.log(np.where(s > 1, s, 2.0)), np.nan)

    return _apply(_core, counts, axis, dim)


def hill(counts: ArrayLike, q: float | Sequence[float] = (0, 1, 2), axis: int = -1, dim: str = "taxon") -> Any:
    """Hill numbers (effective numbers of taxa) of order ``q`` (any q >= 0, ``np.inf`` allowed).

    A scalar ``q`` returns one value per sample; a sequence adds a trailing axis (numpy) or a
    ``q`` dimension (xarray) in the order given.
    """
    q_arr = np.atleast_1d(np.asarray(q, dtype=float))
    if (q_arr < 0).any():
        raise ValueError(f"Hill orders must be >= 0, got {q_arr.tolist()}")
    scalar = np.ndim(q) == 0
    try:
        import xarray as xr

        is_xr = isinstance(counts, xr.DataArray)
    except ImportError:  # pragma: no cover
        is_xr = False
    if is_xr:
        res = _apply(_hill, counts, axis, dim, extra_dim=("q", q_arr), q=q_arr)
        return res.isel(q=0, drop=True) if scalar else res
    res = _apply(_hill, counts, axis, dim, q=q_arr)
    return res[..., 0] if scalar else res


def rarefied_richness(counts: ArrayLike, n: int, axis: int = -1, dim: str = "taxon") -> Any:
    """Expected richness in a random subsample of ``n`` individuals (Hurlbert/Heck formula).

    Samples with fewer than ``n`` individuals give NaN (rarefaction cannot extrapolate).
    Needs integer counts.
    """
    if n < 1 or int(n) != n:
        raise ValueError(f"rarefaction size n must be a positive integer, got {n!r}")
    return _apply(_rarefied, counts, axis, dim, integer=True, n=float(n))


def chao1(counts: ArrayLike, bias_corrected: bool = False, axis: int = -1, dim: str = "taxon") -> Any:
    """Chao1 lower-bound richness estimate from singletons (f1) and doubletons (f2).

    Classic form S + f1^2/(2 f2); the bias-corrected form S + f1(f1-1)/(2(f2+1)) is used when
    ``bias_corrected`` or when f2 = 0 (as scikit-bio does). Needs integer counts.
    """
    return _apply(_chao1, counts, axis, dim, integer=True, bias_corrected=bias_corrected)


def diversity_table(
    counts: pd.DataFrame | np.ndarray,
    q: Sequence[float] = (0, 1, 2),
    rarefy_to: int | None = None,
    index: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """All indices for a samples x taxa table, one row per sample.

    ``counts`` is a DataFrame (rows = samples, columns = taxa) or a 2-D array. Columns:
    ``n_individuals, richness, shannon, simpson, gini_simpson, inverse_simpson, pielou,
    chao1, hill_q<q>...`` and ``rarefied_richness_<n>`` when ``rarefy_to`` is given.
    """
    if isinstance(counts, pd.DataFrame):
        index = counts.index if index is None else index
        arr = counts.to_numpy(dtype=float)
    else:
        arr = np.asarray(counts, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"counts must be 2-D (samples x taxa), got shape {arr.shape}")
    integer = np.allclose(arr, np.round(arr))
    out: dict[str, np.ndarray] = {
        "n_individuals": arr.sum(axis=1),
        "richness": richness(arr),
        "shannon": shannon(arr),
        "simpson": simpson(arr),
        "gini_simpson": gini_simpson(arr),
        "inverse_simpson": inverse_simpson(arr),
        "pielou": pielou(arr),
        "chao1": chao1(arr) if integer else np.full(arr.shape[0], np.nan),
    }
    hills = hill(arr, q=list(q))
    for k, qk in enumerate(q):
        out[f"hill_q{qk:g}"] = hills[:, k]
    if rarefy_to is not None:
        out[f"rarefied_richness_{rarefy_to}"] = (
            rarefied_richness(arr, rarefy_to) if integer else np.full(arr.shape[0], np.nan)
        )
    return pd.DataFrame(out, index=index)
