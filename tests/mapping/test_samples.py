"""Per-sample aggregation: concentrations, biomass, NBSS and the sampled-volume rules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.mapping.samples import aggregate, fit_nbss, nbss


def _tables():
    meta = pd.DataFrame({
        "object_id": list("abcdefg"),
        "sample_id": ["s1"] * 4 + ["s2"] * 2 + ["s3"],
        "datetime": pd.to_datetime(["2020-01-01"] * 7, utc=True),
        "lat": [10.0] * 4 + [20.0] * 2 + [30.0],
        "lon": [179.5, -179.5, 179.5, -179.5, 0.0, 0.0, 5.0],
        "depth_min": [0.0, 0.0, 100.0, 100.0, 0.0, 0.0, 0.0],
        "depth_max": [50.0, 50.0, 200.0, 200.0, 10.0, 10.0, 10.0],
        "sampled_volume_l": [100.0, 100.0, 300.0, 300.0, np.nan, np.nan, 50.0],
    })
    pred = pd.DataFrame({
        "object_id": list("abcdefg"),
        "pred_label": ["Copepoda", "Copepoda", "Rhizaria", "Copepoda", "Copepoda", "Rhizaria", "Copepoda"],
        "biovolume_um3": [1e9, 2e9, 4e9, 8e8, 1e9, 1e9, np.nan],
        "esd_um": [1200.0, 1500.0, 2000.0, 1100.0, 1200.0, 1200.0, np.nan],
        "carbon_ugC": [10.0, 20.0, 30.0, 5.0, 1.0, 1.0, 2.0],
    })
    return pred, meta


def test_hand_computed_layers():
    pred, meta = _tables()
    out = aggregate(pred, meta).set_index(["sample_id", "depth_min"])
    s1 = out.loc[("s1", 0.0)]
    # 2 copepods in 100 L (counted once, not 2 x 100 L) -> 20 ind m-3
    assert s1["sampled_volume_l"] == 100.0 and s1["volume_flag"] == "ok"
    assert s1["conc_Copepoda_m3"] == pytest.approx(20.0)
    assert s1["biovolume_mm3_m3"] == pytest.approx((1 + 2) / 0.1)  # 3 mm3 in 0.1 m3
    assert s1["carbon_mgC_m3"] == pytest.approx(30e-3 / 0.1)
    assert s1["lon"] == pytest.approx(-180.0)  # circular mean across the antimeridian
    deep = out.loc[("s1", 100.0)]
    assert deep["rel_Rhizaria"] == 0.5 and deep["conc_Rhizaria_m3"] == pytest.approx(1 / 0.3)
    assert deep["frac_biovol_2000_5000um"] == pytest.approx(4 / 4.8)
    assert deep["carbon_Rhizaria_mgC_m3"] == pytest.approx(0.03 / 0.3)


def test_missing_volume_keeps_relative_flags_absolute():
    pred, meta = _tables()
    s2 = aggregate(pred, meta).set_index("sample_id").loc["s2"]
    assert s2["volume_flag"] == "missing"
    assert s2["rel_Copepoda"] == 0.5 and s2["n_objects"] == 2  # kept for relative measures
    for col in ("conc_Copepoda_m3", "conc_total_m3", "biovolume_mm3_m3", "carbon_mgC_m3", "nbss_intercept"):
        assert math.isnan(s2[col]), col  # never silently computed


def test_partial_and_inconsistent_volumes_are_flagged():
    pred, meta = _tables()
    meta.loc[meta.object_id == "c", "sampled_volume_l"] = 250.0  # same layer, two volumes
    binned = aggregate(pred, meta, depth_bins=[0, 100, 500]).set_index(["sample_id", "depth_min"])
    assert binned.loc[("s1", 100.0), "volume_flag"] == "inconsistent"
    pred2, meta2 = _tables()
    meta2 = pd.concat([meta2, meta2.iloc[[0]].assign(object_id="h", depth_min=50.0, depth_max=60.0,
                                                     sampled_volume_l=np.nan)])
    pred2 = pd.concat([pred2, pred2.iloc[[0]].assign(object_id="h")])
    binned = aggregate(pred2, meta2, depth_bins=[0, 100, 500]).set_index(["sample_id", "depth_min"])
    row = binned.loc[("s1", 0.0)]
    assert row["volume_flag"] == "partial" and math.isnan(row["conc_total_m3"]) and row["n_objects"] == 3


def test_depth_bins_sum_distinct_layers_once():
    pred, meta = _tables()
    extra = meta.iloc[[0, 1]].assign(object_id=["x", "y"], depth_min=50.0, depth_max=100.0, sampled_volume_l=150.0)
    meta = pd.concat([meta, extra])
    pred = pd.concat([pred, pred.iloc[[0, 1]].assign(object_id=["x", "y"])])
    out = aggregate(pred, meta, depth_bins=[0, 100, 500]).set_index(["sample_id", "depth_min"])
    assert out.loc[("s1", 0.0), "sampled_volume_l"] == 250.0  # 100 L (0-50) + 150 L (50-100)
    assert out.loc[("s1", 0.0), "conc_total_m3"] == pytest.approx(4 / 0.25)


def test_point_depth_profile_needs_per_bin_volumes():
    meta = pd.DataFrame({"object_id": ["a", "b", "c"], "sample_id": "cast", "lat": 0.0, "lon": 0.0,
                         "datetime": pd.Timestamp("2020-01-01", tz="UTC"),
                         "depth_min": [3.0, 7.0, 12.0], "depth_max": [3.0, 7.0, 12.0], "sampled_volume_l": 500.0})
    pred = pd.DataFrame({"object_id": ["a", "b", "c"], "pred_label": "Copepoda"})
    whole = aggregate(pred, meta)
    assert len(whole) == 1 and whole["sampled_volume_l"].iloc[0] == 500.0  # per sample, once
    assert (whole["depth_min"].iloc[0], whole["depth_max"].iloc[0]) == (3.0, 12.0)
    binned = aggregate(pred, meta, depth_bins=[0, 10, 20])
    assert set(binned["volume_flag"]) == {"unresolved"}  # a cast volume cannot be split by depth
    vols = pd.DataFrame({"sample_id": "cast", "depth_min": [0.0, 5.0, 10.0, 15.0],
                         "depth_max": [5.0, 10.0, 15.0, 20.0], "volume_l": [10.0, 20.0, 40.0, 80.0]})
    v = aggregate(pred, meta, volumes=vols)
    assert v["n_objects"].tolist() == [1, 1, 1, 0]  # imaged bins without objects are zeros
    assert v["conc_total_m3"].tolist() == pytest.approx([100.0, 50.0, 25.0, 0.0])
    vb = aggregate(pred, meta, depth_bins=[0, 10, 20], volumes=vols)
    assert vb["conc_total_m3"].tolist() == pytest.approx([2 / 0.03, 1 / 0.12])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.floats(1.0, 1e4))
def test_volume_counted_once_per_layer(n_per_layer, volume):
    rows = []
    for k, n in enumerate(n_per_layer):
        rows += [{"object_id": f"{k}-{i}", "sample_id": "s", "depth_min": 10.0 * k, "depth_max": 10.0 * k + 10,
                  "sampled_volume_l": volume, "pred_label": "A"} for i in range(n)]
    df = pd.DataFrame(rows)
    out = aggregate(df[["object_id", "pred_label"]], df.drop(columns="pred_label"),
                    depth_bins=[0, 1000])
    assert out["sampled_volume_l"].iloc[0] == pytest.approx(volume * len(n_per_layer))
    assert out["conc_A_m3"].iloc[0] == pytest.approx(sum(n_per_layer) / (volume * len(n_per_layer) / 1000))


def test_nbss_power_law_is_recovered_exactly():
    k_max = 4
    rows = []
    for k in range(k_max + 1):  # 2^(K-k) objects of 1.5 * 2^k mm3 -> NBSS proportional to v^-1
        rows += [{"object_id": f"{k}-{i}", "biovolume_um3": 1.5 * 2.0**k * 1e9, "pred_label": "A"}
                 for i in range(2 ** (k_max - k))]
    pred = pd.DataFrame(rows)
    meta = pd.DataFrame({"object_id": pred.object_id, "sample_id": "s", "depth_min": 0.0, "depth_max": 10.0,
                         "sampled_volume_l": 1000.0})
    out = aggregate(pred, meta)
    assert out["nbss_slope"].iloc[0] == pytest.approx(-1.0)
    assert out["nbss_intercept"].iloc[0] == pytest.approx(math.log10(1.5 * 2**k_max * math.sqrt(2)))
    assert out["nbss_r2"].iloc[0] == pytest.approx(1.0) and out["nbss_n_bins"].iloc[0] == k_max + 1
    long = nbss(pred, meta).query("n > 0")
    assert long["n"].tolist() == [16, 8, 4, 2, 1]
    assert long["nbss_m3"].tolist() == pytest.approx([1.5 * 2 ** (k_max - k) for k in range(k_max + 1)])


def test_fit_nbss_needs_three_bins_from_peak():
    assert math.isnan(fit_nbss(np.array([1.0, 2.0]), np.array([1.0, 0.5]))[0])
    slope, *_ = fit_nbss(np.array([1.0, 2, 4, 8]), np.array([0.1, 8.0, 4.0, 2.0]))  # rising bin ignored
    assert slope == pytest.approx(-1.0)


def test_bad_inputs():
    pred, meta = _tables()
    with pytest.raises(ValueError, match="1 predicted object.*no metadata.*'zz'"):
        aggregate(pd.concat([pred, pred.iloc[[0]].assign(object_id="zz")]), meta)
    with pytest.raises(KeyError, match="group column 'taxon'"):
        aggregate(pred, meta, group_col="taxon")
    with pytest.raises(ValueError, match="increasing"):
        aggregate(pred, meta, depth_bins=[100, 0])
    with pytest.raises(KeyError, match="volume_l"):
        aggregate(pred, meta, volumes=pd.DataFrame({"sample_id": ["s1"]}))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = aggregate(pred, meta, depth_bins=[0, 100])
    assert any("outside the depth bins" in str(x.message) for x in w)
    assert out["n_objects"].sum() == 5


def test_diversity_columns_match_counts():
    pred, meta = _tables()
    out = aggregate(pred, meta, diversity=True, rarefy_to=2).set_index(["sample_id", "depth_min"])
    row = out.loc[("s1", 100.0)]  # one copepod, one rhizarian
    assert row["richness"] == 2 and row["shannon"] == pytest.approx(math.log(2))
    assert row["hill_q2"] == pytest.approx(2.0) and row["rarefied_richness_2"] == pytest.approx(1.0 + 1.0)
    assert out.loc[("s3", 0.0), "richness"] == 1


def test_store_directory_as_metadata(bundled_data, tmp_path):
    from aqqua_geo.ingest import ingest
    from aqqua_geo.store import AqquaStore

    store_dir = tmp_path / "store"
    ingest(bundled_data.path("ecotaxa_m106"), store_dir, fmt="ecotaxa")
    meta = AqquaStore(store_dir).metadata
    pred = pd.DataFrame({"object_id": meta["object_id"], "pred_label": meta["label"].fillna("unknown")})
    out = aggregate(pred, store_dir, diversity=True)
    assert out["n_objects"].sum() == len(meta)
    assert set(out["sample_id"]) == set(meta["sample_id"])
    # samples n1 and n2 of the M106 fixture have no sampled volume: relative measures only,
    # flagged; n4 has sample_tot_vol 400 L / acq_sub_part 4 = 100 L behind its one kept object
    flags = out.reset_index().set_index("sample_id")
    assert (flags.loc[["m106_mn01_n1_sml", "m106_mn01_n2_sml"], "volume_flag"] == "missing").all()
    assert flags.loc[["m106_mn01_n1_sml", "m106_mn01_n2_sml"], "conc_total_m3"].isna().all()
    assert flags.loc["m106_mn01_n4_sml", "volume_flag"] == "ok"
    assert flags.loc["m106_mn01_n4_sml", "conc_total_m3"] == pytest.approx(1 / 100 * 1000)
    assert out[[c for c in out.columns if c.startswith("rel_")]].sum(axis=1).to_numpy() == pytest.approx(1.0)
    assert out["richness"].ge(1).all()
    with pytest.raises(TypeError, match="AqquaStore or a store path"):
        aggregate(pred, 42)
