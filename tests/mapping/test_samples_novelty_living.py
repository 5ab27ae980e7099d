"""aggregate(): novel objects counted apart; diversity and taxon totals over living taxa only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from aqqua_geo.mapping.samples import aggregate


def _one_sample(labels, novel):
    n = len(labels)
    ids = [f"o{i}" for i in range(n)]
    meta = pd.DataFrame({"object_id": ids, "sample_id": ["s"] * n,
                         "datetime": pd.to_datetime(["2020-01-01"] * n, utc=True), "lat": [0.0] * n,
                         "lon": [0.0] * n, "depth_min": [0.0] * n, "depth_max": [10.0] * n,
                         "sampled_volume_l": [500.0] * n})
    pred = pd.DataFrame({"object_id": ids, "pred_label": labels, "is_novel": novel,
                         "biovolume_um3": np.full(n, 1e9), "esd_um": np.full(n, 1200.0),
                         "carbon_ugC": np.arange(1.0, n + 1)})
    return pred, meta


def test_novel_objects_are_counted_apart_and_leave_taxa():
    labels = ["Copepoda", "Copepoda", "Copepoda", "Acantharea", "detritus", "bubble"]
    novel = [False, False, True, False, False, True]
    out = aggregate(*_one_sample(labels, novel), diversity=True).iloc[0]
    assert out["n_novel"] == 2 and out["rel_novel"] == pytest.approx(2 / 6)
    assert out["conc_novel_m3"] == pytest.approx(2 / 0.5)
    assert out["carbon_novel_mgC_m3"] == pytest.approx((3 + 6) * 1e-3 / 0.5)
    assert out["biovolume_novel_mm3_m3"] == pytest.approx(2 * 1.0 / 0.5)
    # the flagged copepod is no longer a copepod; the flagged bubble no longer a bubble
    assert out["n_Copepoda"] == 2 and out.get("n_bubble", 0) == 0
    assert out["carbon_Copepoda_mgC_m3"] == pytest.approx((1 + 2) * 1e-3 / 0.5)
    # totals describe every imaged object
    assert out["n_objects"] == 6 and out["carbon_mgC_m3"] == pytest.approx(21e-3 / 0.5)
    # living taxa: 2 copepods + 1 acantharian; detritus (and the unflagged nothing) non-living
    assert out["n_living"] == 3 and out["n_nonliving"] == 1
    assert out["conc_living_m3"] == pytest.approx(3 / 0.5)
    assert out["richness"] == 2
    assert out["shannon"] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))


def test_diversity_leaves_non_living_out_unless_asked():
    labels = ["Copepoda", "Acantharea", "detritus", "fiber<detritus", "bubble", "badfocus<artefact"]
    pred, meta = _one_sample(labels, [False] * 6)
    living = aggregate(pred, meta, diversity=True)
    everything = aggregate(pred, meta, diversity=True, diversity_nonliving=True)
    assert living["richness"].iloc[0] == 2 and everything["richness"].iloc[0] == 6
    assert living["shannon"].iloc[0] == pytest.approx(math.log(2))
    assert everything["shannon"].iloc[0] == pytest.approx(math.log(6))
    assert sorted(living.attrs["nonliving_groups"]) == sorted(["detritus", "fiber<detritus", "bubble",
                                                               "badfocus<artefact"])
    assert "n_detritus" in living.columns  # detritus stays available for particle work


def test_custom_taxonomy_and_missing_novelty_column():
    pred, meta = _one_sample(["Copepoda", "Acantharea", "Copepoda"], [False] * 3)
    out = aggregate(pred.drop(columns="is_novel"), meta, diversity=True,
                    taxonomy={"Acantharea": False}).iloc[0]
    assert out["n_novel"] == 0 and out["richness"] == 1 and out["n_living"] == 2


def test_nullable_novelty_flags_count_as_not_novel():
    pred, meta = _one_sample(["Copepoda", "Copepoda"], [True, False])
    pred["is_novel"] = pd.array([pd.NA, True], dtype="boolean")
    out = aggregate(pred, meta).iloc[0]
    assert out["n_novel"] == 1 and out["n_Copepoda"] == 1
