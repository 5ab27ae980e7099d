"""Particle route: size-range options, depth-window pooling with Poisson error, and the fit of
A, b against trap fluxes (truth recovery on spectra drawn from a known relation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.mapping import ecopart as ep
from aqqua_geo.mapping import flux as fx
from aqqua_geo.mapping.flux_calibration import fit_relation, log10_flux, match_traps

EDGES = ep.ECOPART_CLASS_EDGES_MM


def test_flux_relation_options():
    g = fx.flux_relation()
    assert (g.A, g.b, g.d_min_mm, g.d_max_mm) == (12.5, 3.81, 0.102, 1.5)
    c = fx.flux_relation("clements2023", A=20.0, b=3.0)
    assert (c.A, c.b, c.d_min_mm, c.d_max_mm) == (20.0, 3.0, 0.035, 5.0)
    assert fx.flux_relation((0.2, 2.0)).d_max_mm == 2.0
    with pytest.raises(KeyError, match="unknown size range"):
        fx.flux_relation("kriest")
    with pytest.raises(ValueError, match="d_min_mm < d_max_mm"):
        fx.flux_relation((2.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        fx.flux_relation(A=-1.0)


def test_class_weights_and_poisson_sd_by_hand():
    edges = [0.25, 1.0, 4.0]  # mid-points 0.5 and 2 mm
    rel = fx.flux_relation((0.1, 3.0), A=2.0, b=2.0)
    np.testing.assert_allclose(fx.class_weights(edges, rel), [2 * 0.25, 2 * 4.0])
    # 8 and 2 particles in 4 L: F = (8*0.5 + 2*8)/4 = 5, sd = sqrt(8*0.5^2 + 2*8^2)/4
    assert float(np.asarray([8, 2]) @ fx.class_weights(edges, rel) / 4) == pytest.approx(5.0)
    assert float(fx.guidi_flux_poisson_sd([8, 2], 4.0, edges, rel)) == pytest.approx(np.sqrt(8 * 0.25 + 2 * 64) / 4)
    # the size range drops the 2 mm class
    assert fx.class_weights(edges, fx.flux_relation((0.1, 1.5)))[1] == 0.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=3, max_size=3), st.floats(0.5, 500))
def test_poisson_sd_scales_as_one_over_volume(counts, vol):
    edges = [0.2, 0.4, 0.8, 1.6]
    sd1 = fx.guidi_flux_poisson_sd(counts, vol, edges)
    sd2 = fx.guidi_flux_poisson_sd(np.asarray(counts) * 4, vol * 4, edges)
    assert sd2 == pytest.approx(sd1 / 2)  # 4x the volume and counts: half the relative error


def _cast(rows):
    par = pd.DataFrame(rows, columns=["depth", "imgcount", "area", "nbr"])
    return ep.EcoPartCast("c", 0.0, 0.0, pd.Timestamp("2020-01-01", tz="UTC"), 0.00279, 1.2236, 1.1, 1.2, par)


def test_window_flux_pools_counts_and_volumes():
    # two 5-m bins, particles of 30 px (~0.48 mm ESD) and 300 px (~1.95 mm: outside Guidi's range)
    rows = [(d, 10, 30, 3) for d in range(150, 155)] + [(d, 20, 30, 1) for d in range(155, 160)]
    rows += [(157, 20, 300, 1)]
    ds = ep.psd(_cast(rows))
    w = ep.window_flux(ds, 150, 160)
    counts, vol, nb = ep.window_counts(ds, 150, 160)
    assert nb == 2 and vol == pytest.approx((5 * 10 + 5 * 20) * 1.1)
    d = ep.esd_mm(30, 0.00279, 1.2236)
    cls = np.digitize(d, EDGES) - 1
    mid = np.sqrt(EDGES[cls] * EDGES[cls + 1])
    expected = 20 * 12.5 * mid**3.81 / vol  # 15 + 5 particles in range, pooled
    assert w["flux_mgC_m2_d"] == pytest.approx(expected)
    assert w["flux_sd_poisson"] == pytest.approx(expected / np.sqrt(20))
    assert w["n_particles"] == 20 and w["largest_class_share"] == pytest.approx(1.0)
    wide = ep.window_flux(ds, 150, 160, fx.flux_relation("clements2023"))
    assert wide["flux_mgC_m2_d"] > w["flux_mgC_m2_d"] and wide["largest_class_share"] < 1.0
    assert np.isnan(ep.window_flux(ds, 300, 320)["flux_mgC_m2_d"])
    with pytest.raises(ValueError, match="bottom_m > top_m"):
        ep.window_flux(ds, 160, 150)


def _synthetic(n, A, b, seed, noise=0.05):
    """UVP windows with power-law spectra of different slopes; trap fluxes from A d^b."""
    rng = np.random.default_rng(seed)
    mid = np.sqrt(EDGES[:-1] * EDGES[1:])
    width = np.diff(EDGES)
    slopes = rng.uniform(2.5, 4.5, n)
    vol = rng.uniform(500, 2000, n)
    lam = np.array([50.0 * (mid / 0.1) ** -s * width / 0.03 for s in slopes]) * vol[:, None] / 1000
    lam[:, mid > 30] = 0
    counts = rng.poisson(lam)
    rel = fx.flux_relation(A=A, b=b)
    true = 10 ** log10_flux(counts, vol, EDGES, rel)
    return counts, vol, true * 10 ** rng.normal(0, noise, n)


def test_fit_recovers_known_a_and_b():
    counts, vol, traps = _synthetic(40, A=40.0, b=3.2, seed=1)
    res = fit_relation(counts, vol, EDGES, traps, n_boot=50)
    assert res.fit_b and res.relation.b == pytest.approx(3.2, abs=0.15)
    assert res.relation.A == pytest.approx(40.0, rel=0.25)
    assert res.A_p2_5_p97_5[0] < 40.0 < res.A_p2_5_p97_5[1]
    assert res.rmse_log10_after < 0.08 < res.rmse_log10_before  # Guidi's default misfits these traps
    assert res.bias_log10_before < 0  # log10(Guidi / trap): the default underestimates these traps


def test_fit_with_few_pairs_fits_a_only_exactly():
    counts, vol, traps = _synthetic(2, A=30.0, b=3.81, seed=2, noise=0.0)
    res = fit_relation(counts, vol, EDGES, traps, n_boot=20)
    assert not res.fit_b and "A only" in res.note and res.relation.b == 3.81
    assert res.relation.A == pytest.approx(30.0, rel=1e-6) and res.rmse_log10_after < 1e-6
    with pytest.raises(ValueError, match="at least 3 pairs"):
        fit_relation(counts, vol, EDGES, traps, fit_b=True)
    with pytest.raises(ValueError, match="differ in length"):
        fit_relation(counts, vol, EDGES, traps[:1])


def test_match_traps_space_time_depth():
    casts = pd.DataFrame({"profile_id": ["a", "b"], "lat": [31.7, 10.0], "lon": [-64.2, 0.0],
                          "datetime": pd.to_datetime(["2019-07-14", "2019-07-14"], utc=True),
                          "horizon_m": [150.0, 150.0]})
    traps = pd.DataFrame({"lat": [31.8, 31.8, 31.8, 40.0], "lon": [-64.1, -64.1, -64.1, -64.2],
                          "depth": [150.0, 500.0, 150.0, 150.0], "poc_flux_obs": [20.0, 5.0, 30.0, 9.0],
                          "datetime": pd.to_datetime(["2019-07-20", "2019-07-20", "2018-01-01", "2019-07-14"], utc=True)})
    m = match_traps(casts, traps, max_km=50, max_days=30)
    assert m["profile_id"].tolist() == ["a"] and m["trap_poc_flux_obs"].tolist() == [20.0]
    assert m["distance_km"].iloc[0] < 20 and m["dt_days"].iloc[0] == pytest.approx(6.0)
    clim = match_traps(casts, traps, max_km=50, max_days=None)  # a climatology: any date
    assert sorted(clim["trap_poc_flux_obs"]) == [20.0, 30.0]
