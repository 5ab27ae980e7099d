"""Diversity indices: hand-computed values and the identities between them (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aqqua_geo.mapping import diversity as dv

# samples x taxa, at least one individual per sample
counts_strategy = arrays(
    dtype=np.int64,
    shape=st.tuples(st.integers(1, 5), st.integers(1, 8)),
    elements=st.integers(0, 60),
).filter(lambda a: (a.sum(axis=1) > 0).all())


def test_hand_computed_values():
    c = np.array([[2, 1, 1, 0]])  # p = 1/2, 1/4, 1/4
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert dv.richness(c)[0] == 3
    assert dv.shannon(c)[0] == pytest.approx(h)
    assert dv.shannon(c, base=2)[0] == pytest.approx(1.5)
    assert dv.simpson(c)[0] == pytest.approx(0.375)
    assert dv.gini_simpson(c)[0] == pytest.approx(0.625)
    assert dv.inverse_simpson(c)[0] == pytest.approx(1 / 0.375)
    assert dv.pielou(c)[0] == pytest.approx(h / math.log(3))
    # Hill q=3: (sum p^3)^(1/(1-3)) = (1/8 + 2/64)^(-1/2)
    assert dv.hill(c, 3)[0] == pytest.approx((0.125 + 2 / 64) ** -0.5)
    assert dv.hill(c, np.inf)[0] == pytest.approx(2.0)
    # rarefied to n=2 from N=4: taxon i missed with prob C(4-N_i,2)/C(4,2)
    expected = (1 - 1 / 6) + 2 * (1 - 3 / 6)
    assert dv.rarefied_richness(c, 2)[0] == pytest.approx(expected)
    # f1=2, f2=1 -> classic Chao1 = 3 + 4/2
    assert dv.chao1(c)[0] == pytest.approx(5.0)
    assert dv.chao1(c, bias_corrected=True)[0] == pytest.approx(3 + 2 * 1 / (2 * 2))
    # no doubletons -> bias-corrected form: 3 + 3*2/2
    assert dv.chao1(np.array([[1, 1, 1]]))[0] == pytest.approx(6.0)


def test_empty_and_single_taxon_samples():
    c = np.array([[0, 0, 0], [5, 0, 0]])
    assert dv.richness(c).tolist() == [0, 1]
    sh = dv.shannon(c)
    assert np.isnan(sh[0]) and sh[1] == 0.0
    assert np.isnan(dv.pielou(c)).all()  # undefined for S <= 1
    assert np.isnan(dv.hill(c, 2)[0]) and dv.hill(c, 2)[1] == 1.0
    assert np.isnan(dv.rarefied_richness(c, 6)).all()  # N < n: no extrapolation


@settings(max_examples=60, deadline=None)
@given(counts_strategy)
def test_hill_identities(c):
    q = [0, 0.5, 1, 2, 3, np.inf]
    h = dv.hill(c, q)
    np.testing.assert_allclose(h[:, 0], dv.richness(c))
    np.testing.assert_allclose(h[:, 2], np.exp(dv.shannon(c)), rtol=1e-10)
    p = c / c.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(h[:, 3], 1.0 / (p**2).sum(axis=1), rtol=1e-10)
    np.testing.assert_allclose(h[:, 3], dv.inverse_simpson(c), rtol=1e-10)
    # non-increasing in q, bounded by richness and by 1
    assert (np.diff(h, axis=1) <= 1e-9 * h[:, :-1]).all()
    assert (h >= 1 - 1e-12).all()
    # q -> 1 is continuous
    np.testing.assert_allclose(dv.hill(c, 1 + 1e-7), h[:, 2], rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(counts_strategy)
def test_rarefaction_identities(c):
    n_tot = c.sum(axis=1)
    s = dv.richness(c)
    for i, (row, n) in enumerate(zip(c, n_tot)):
        np.testing.assert_allclose(dv.rarefied_richness(row[None], int(n)), [s[i]], rtol=1e-9)
        np.testing.assert_allclose(dv.rarefied_richness(row[None], 1), [1.0], rtol=1e-9)
        if n >= 2:
            r2 = dv.rarefied_richness(row[None], 2)[0]
            assert 1.0 - 1e-9 <= r2 <= min(2, s[i]) + 1e-9
    # Chao1 never below observed richness; evenness within [0, 1]
    assert (dv.chao1(c) >= s - 1e-12).all()
    j = dv.pielou(c)
    ok = ~np.isnan(j)
    assert ((j[ok] >= -1e-12) & (j[ok] <= 1 + 1e-12)).all()


def test_rarefaction_large_counts_do_not_overflow():
    c = np.array([[10**6, 10**6, 1]])
    r = dv.rarefied_richness(c, 10**5)[0]
    assert 2.0 < r < 2.1 and np.isfinite(r)


def test_xarray_lazy_and_axis_argument():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 20, size=(6, 5))
    da = xr.DataArray(c, dims=("sample", "taxon")).chunk({"sample": 3})
    lazy = dv.hill(da, [0, 1, 2])
    assert lazy.chunks is not None  # still dask-backed
    np.testing.assert_allclose(lazy.compute().values, dv.hill(c, [0, 1, 2]))
    np.testing.assert_allclose(dv.shannon(da).values, dv.shannon(c.T, axis=0))
    assert dv.richness(da).dims == ("sample",)


def test_diversity_table_columns():
    t = dv.diversity_table(np.array([[2, 1, 1, 0], [4, 4, 0, 0]]), rarefy_to=2)
    assert {"richness", "shannon", "gini_simpson", "pielou", "chao1", "hill_q0", "hill_q1",
            "hill_q2", "rarefied_richness_2"} <= set(t.columns)
    assert t["hill_q0"].tolist() == [3, 2]


@pytest.mark.parametrize(
    ("bad", "msg"),
    [(np.array([[1, -1]]), ">= 0"), (np.array([[1, np.nan]]), "NaN"), (np.array(3), "taxon axis")],
)
def test_bad_counts(bad, msg):
    with pytest.raises(ValueError, match=msg):
        dv.shannon(bad)


def test_integer_only_estimators_reject_concentrations():
    with pytest.raises(ValueError, match="integer counts"):
        dv.chao1(np.array([[0.5, 2.0]]))
    with pytest.raises(ValueError, match="positive integer"):
        dv.rarefied_richness(np.array([[1, 2]]), 0)
    with pytest.raises(ValueError, match="taxon dimension"):
        dv.richness(xr.DataArray(np.ones((2, 2)), dims=("a", "b")))
