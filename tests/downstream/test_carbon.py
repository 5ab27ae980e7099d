"""Carbon: each relation against hand-computed values, the category table, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.downstream.carbon import (
    CARBON_GROUPS,
    alldredge1998_ug,
    carbon_group_of,
    estimate_carbon,
    gallienne2001_ug,
    lhl2009_dry_weight_ug,
    load_carbon_groups,
    mdl2000_diatom_pg,
    mdl2000_dinoflagellate_pg,
    mdl2000_protist_pg,
)


def test_menden_deuer_lessard_relations_in_their_published_log_form():
    # MDL2000 publish log10 C = log10 a + b·log10 V; check our power-law coefficients against them.
    assert mdl2000_diatom_pg(1000.0) == pytest.approx(10 ** (-0.541 + 0.811 * 3), rel=1e-3)
    assert mdl2000_diatom_pg(1e4) == pytest.approx(10 ** (-0.933 + 0.881 * 4), rel=1e-3)  # > 3000 µm³
    assert mdl2000_protist_pg(1e4) == pytest.approx(10 ** (-0.665 + 0.939 * 4), rel=1e-3)
    # iRfcb's documented example: vol2C_nondiatom(c(5000, 10000)) = 643.1804, 1233.1048 pg
    np.testing.assert_allclose(mdl2000_protist_pg(np.array([5000.0, 1e4])), [643.1804, 1233.1048], rtol=1e-4)
    assert mdl2000_dinoflagellate_pg(2000.0) == pytest.approx(0.760 * 2000**0.819, rel=1e-12)
    assert math.isnan(mdl2000_protist_pg(0.0)) and math.isnan(mdl2000_diatom_pg(-1.0))


def test_metazoan_and_detritus_relations_by_hand():
    # Lehette & Hernández-León 2009: DW = a·S^b (S in mm², DW in µg)
    assert lhl2009_dry_weight_ug(1.0, "copepod") == pytest.approx(45.25)
    assert lhl2009_dry_weight_ug(2.0, "copepod") == pytest.approx(45.25 * 2**1.59)
    assert lhl2009_dry_weight_ug(0.5, "chaetognath") == pytest.approx(23.45 * 0.5**1.19)
    assert lhl2009_dry_weight_ug(3.0, "general") == pytest.approx(43.38 * 3**1.54)
    assert gallienne2001_ug(2.0) == pytest.approx(95.0)  # 0.0475 mg C mm⁻³ × 2 mm³ = 0.095 mg
    assert alldredge1998_ug(1.0) == pytest.approx(0.99)
    assert alldredge1998_ug(8.0) == pytest.approx(0.99 * 8**0.52)


def _table(labels, volume_um3=1e9, area_um2=1e6, sph_um3=None):
    n = len(labels)
    return pd.DataFrame(
        {
            "pred_label": labels,
            "biovolume_um3": np.broadcast_to(volume_um3, n).astype(float),
            "biovolume_sph_um3": np.broadcast_to(sph_um3 if sph_um3 is not None else volume_um3, n).astype(float),
            "area_um2": np.broadcast_to(area_um2, n).astype(float),
        },
        index=[f"obj{i}" for i in range(n)],
    )


def test_estimate_carbon_per_group_in_ugC():
    df = _table(
        ["Copepoda", "Chaetognatha", "Euphausiacea", "Acantharea", "Chaetoceros", "Ceratium", "ciliate",
         "detritus", "Salpida", "Appendicularia", "bubble", "t001"],
        volume_um3=2e9,  # 2 mm³
        area_um2=1.5e6,  # 1.5 mm²
        sph_um3=1e9,  # 1 mm³
    )
    out = estimate_carbon(df)
    assert list(out.columns) == ["carbon_ugC", "carbon_lo_ugC", "carbon_hi_ugC", "carbon_group",
                                 "carbon_relation", "carbon_flag"]
    assert out.index.equals(df.index)
    expected = {
        "Copepoda": ("copepod", "lhl2009_copepod", 0.4 * 45.25 * 1.5**1.59),
        "Chaetognatha": ("chaetognath", "lhl2009_chaetognath", 0.4 * 23.45 * 1.5**1.19),
        "Euphausiacea": ("crustacean", "lhl2009_general", 0.4 * 43.38 * 1.5**1.54),
        "Acantharea": ("rhizaria", "mdl2000_protist_rhizaria", 10**-0.665 * 2e9**0.939 * 1e-6),
        "Chaetoceros": ("diatom", "mdl2000_diatom_large", 10**-0.933 * 2e9**0.881 * 1e-6),
        "Ceratium": ("dinoflagellate", "mdl2000_dinoflagellate", 0.760 * 2e9**0.819 * 1e-6),
        "ciliate": ("protist", "mdl2000_protist", 10**-0.665 * 2e9**0.939 * 1e-6),
        "detritus": ("detritus", "alldredge1998", 0.99),  # spherical volume 1 mm³
        "Salpida": ("gelatinous", "gelatinous_0.005mgC_mm3", 10.0),  # 0.005 mg/mm³ × 2 mm³
        "Appendicularia": ("metazoan", "gallienne2001", 95.0),
        "t001": ("unknown", "gallienne2001", 95.0),  # size rule: ESD of 2 mm³ ≈ 1.56 mm → metazoan
    }
    for (_, row), label in zip(out.iterrows(), df["pred_label"]):
        if label == "bubble":
            assert row.carbon_group == "not_living" and row.carbon_relation == "none"
            assert math.isnan(row.carbon_ugC)
            continue
        group, relation, value = expected[label]
        assert (row.carbon_group, row.carbon_relation) == (group, relation), label
        assert row.carbon_ugC == pytest.approx(value, rel=1e-6), label
    # the unknown fallback can be switched off
    assert math.isnan(estimate_carbon(_table(["t001"]), unknown="nan")["carbon_ugC"].iloc[0])


def test_small_diatoms_use_the_all_sizes_relation():
    out = estimate_carbon(_table(["Guinardia_delicatula", "Guinardia_delicatula"], volume_um3=np.array([800.0, 5000.0])))
    assert list(out["carbon_relation"]) == ["mdl2000_diatom", "mdl2000_diatom_large"]
    assert out["carbon_ugC"].iloc[0] == pytest.approx(10**-0.541 * 800**0.811 * 1e-6)


@pytest.mark.parametrize(
    "label,hierarchy,group",
    [
        ("Copepoda", None, "copepod"),
        ("copepoda", None, "copepod"),
        ("Oncaea<Oncaeidae", None, "copepod"),  # EcoTaxa display name: parent after '<'
        ("dead<Copepoda", None, "copepod"),  # carcasses are still organic carbon
        ("fiber<detritus", None, "detritus"),
        ("badfocus<artefact", None, "not_living"),
        ("Chaetoceros_socialis", None, "diatom"),  # genus of an IFCB species name
        ("Calanus finmarchicus", None, "unknown"),  # genus not in the table …
        ("Calanus finmarchicus", "living>Eukaryota>Metazoa>Arthropoda>Crustacea>Copepoda>Calanoida", "copepod"),
        ("other_Biota", None, "unknown"),
        ("", None, "unknown"),
        (None, None, "unknown"),
        (float("nan"), None, "unknown"),
    ],
)
def test_category_to_group(label, hierarchy, group):
    assert carbon_group_of(label, hierarchy) == group


def test_bundled_uvp6_classes_are_all_mapped(bundled_data):
    folders = sorted(p.name.split("__")[0] for p in bundled_data.path("uvp6_vignettes").iterdir() if p.is_dir())
    groups = {name: carbon_group_of(name) for name in folders}
    assert groups == {
        "Acantharea": "rhizaria",
        "Aulacanthidae": "rhizaria",
        "Aulosphaeridae": "rhizaria",
        "Copepoda": "copepod",
        "badfocus": "not_living",
        "bubble": "not_living",
        "darksphere": "not_living",
        "detritus": "detritus",
        "fiber": "detritus",
    }


def test_packaged_table_is_valid():
    table = load_carbon_groups()
    assert len(table) > 100
    assert set(table.values()) <= set(CARBON_GROUPS) - {"unknown"}


def test_custom_group_table_and_hierarchy_column():
    df = _table(["Foo", "Bar"]).assign(hier=["living>Copepoda>Foo", "living>Bar"])
    out = estimate_carbon(df, groups={"foo": "diatom"})
    assert list(out["carbon_group"]) == ["diatom", "unknown"]
    out = estimate_carbon(df, hierarchy_col="hier")
    assert list(out["carbon_group"]) == ["copepod", "unknown"]


def test_nan_traits_give_nan_carbon():
    df = _table(["Copepoda", "ciliate", "detritus"], volume_um3=np.nan, area_um2=np.nan)
    assert estimate_carbon(df)["carbon_ugC"].isna().all()


def test_bad_input_messages():
    with pytest.raises(KeyError, match=r"column\(s\) \['biovolume_um3'\] missing"):
        estimate_carbon(pd.DataFrame({"pred_label": ["x"], "area_um2": [1.0]}))
    with pytest.raises(ValueError, match=r"unknown carbon group\(s\) \['fish'\]"):
        estimate_carbon(_table(["x"]), groups={"x": "fish"})
    with pytest.raises(ValueError, match="unknown must be one of"):
        estimate_carbon(_table(["x"]), unknown="zero")


def test_bad_group_csv(tmp_path):
    bad = tmp_path / "groups.csv"
    bad.write_text("taxon,carbon_group\nCopepoda,copepods\n")
    with pytest.raises(ValueError, match=r"groups.csv: unknown carbon group\(s\) \['copepods'\]"):
        estimate_carbon(_table(["Copepoda"]), groups=bad)


@settings(max_examples=40, deadline=None)
@given(
    label=st.sampled_from(["Copepoda", "Chaetognatha", "Euphausiacea", "Acantharea", "Chaetoceros",
                           "Ceratium", "ciliate", "detritus", "Salpida", "Appendicularia", "t001"]),
    size=st.floats(1e-3, 1e3),
    factor=st.floats(1.01, 100.0),
)
def test_carbon_increases_with_size(label, size, factor):
    small = _table([label], volume_um3=size * 1e6, area_um2=size * 1e4)
    large = _table([label], volume_um3=size * 1e6 * factor, area_um2=size * 1e4 * factor)
    c_small = estimate_carbon(small)["carbon_ugC"].iloc[0]
    c_large = estimate_carbon(large)["carbon_ugC"].iloc[0]
    assert 0 < c_small < c_large


# --- one test per relation, against the paper's own coefficients -------------------------------
# x is the relation's input in the paper's unit; expected is µg C written out from the paper's
# coefficients (pg → µg: 1e-6; LHL2009 dry weight × 0.4; mg → µg: 1e3).
PAPER_VALUES = {
    "mdl2000_diatom": (1000.0, 10 ** (-0.541 + 0.811 * math.log10(1000.0)) * 1e-6),
    "mdl2000_diatom_large": (5.0e4, 10 ** (-0.933 + 0.881 * math.log10(5.0e4)) * 1e-6),
    "mdl2000_dinoflagellate": (2.0e4, 0.760 * 2.0e4**0.819 * 1e-6),
    "mdl2000_protist": (5000.0, 643.1804e-6),  # iRfcb vol2C_nondiatom(5000) = 643.1804 pg
    "mdl2000_protist_rhizaria": (1.0e6, 10 ** (-0.665 + 0.939 * 6.0) * 1e-6),
    "lhl2009_copepod": (0.8, 0.4 * 45.25 * 0.8**1.59),
    "lhl2009_chaetognath": (2.5, 0.4 * 23.45 * 2.5**1.19),
    "lhl2009_general": (1.2, 0.4 * 43.38 * 1.2**1.54),
    "gelatinous_0.005mgC_mm3": (40.0, 0.005 * 40.0 * 1e3),
    "gallienne2001": (3.0, 0.0475 * 3.0 * 1e3),
    "alldredge1998": (0.5, 0.99 * 0.5**0.52),
}


def test_every_relation_has_a_paper_value():
    from aqqua_geo.downstream.carbon import RELATIONS

    assert set(PAPER_VALUES) == set(RELATIONS)


@pytest.mark.parametrize("rid", sorted(PAPER_VALUES))
def test_relation_against_paper_coefficients(rid):
    from aqqua_geo.downstream.carbon import RELATIONS

    x, expected = PAPER_VALUES[rid]
    assert RELATIONS[rid].carbon_ugC(x) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("rid", sorted(PAPER_VALUES))
def test_relation_through_estimate_carbon(rid):
    """The same value through estimate_carbon, from traits in µm units."""
    from aqqua_geo.downstream.carbon import RELATIONS

    r = RELATIONS[rid]
    x, expected = PAPER_VALUES[rid]
    label = {"diatom": "Thalassiosira", "dinoflagellate": "Ceratium", "protist": "ciliate", "rhizaria": "Acantharea",
             "copepod": "Copepoda", "chaetognath": "Chaetognatha", "crustacean": "Euphausiacea",
             "gelatinous": "Salpida", "metazoan": "Appendicularia", "detritus": "detritus"}[r.group]
    vol = {"volume_um3": x, "volume_mm3": x * 1e9}.get(r.x_name, 1e6)
    df = pd.DataFrame({"pred_label": [label], "biovolume_um3": [vol],
                       "biovolume_sph_um3": [x * 1e9 if r.x_name == "sph_volume_mm3" else vol],
                       "area_um2": [x * 1e6 if r.x_name == "area_mm2" else 1.0],
                       "esd_um": [1000.0]})
    out = estimate_carbon(df).iloc[0]
    assert out.carbon_relation == rid
    assert out.carbon_ugC == pytest.approx(expected, rel=1e-4)
    # 95 % interval from the relation's scatter, symmetric in log10
    half = 10 ** (1.96 * r.log10_sd)
    assert out.carbon_lo_ugC == pytest.approx(expected / half, rel=1e-4)
    assert out.carbon_hi_ugC == pytest.approx(expected * half, rel=1e-4)


def test_relation_table_lists_reference_units_and_range():
    from aqqua_geo.downstream.carbon import relation_table

    t = relation_table().set_index("relation")
    assert t.loc["mdl2000_dinoflagellate", "x_min"] == 180.0 and t.loc["mdl2000_dinoflagellate", "x_max"] == 2.8e5
    assert "Menden-Deuer" in t.loc["mdl2000_protist", "reference"]
    assert "Lehette" in t.loc["lhl2009_copepod", "reference"]
    assert "Alldredge" in t.loc["alldredge1998", "reference"]
    assert (t["log10_sd"] > 0).all() and t["status"].isin(["[V]", "[P]", "[M]"]).all()


def test_unlabelled_ifcb_sized_cells_get_the_protist_relation():
    """An unknown 20 µm cell is a protist, a 2 mm unknown object mesozooplankton (no metazoan fallback)."""
    df = pd.DataFrame({"pred_label": [None, "t001"], "biovolume_um3": [4000.0, 4e9], "area_um2": [300.0, 3e6],
                       "esd_um": [19.7, 1970.0]})
    out = estimate_carbon(df)
    assert list(out["carbon_relation"]) == ["mdl2000_protist", "gallienne2001"]
    assert out["carbon_ugC"].iloc[0] == pytest.approx(10 ** (-0.665 + 0.939 * math.log10(4000.0)) * 1e-6)
    assert (out["carbon_flag"] == "unknown_class").all()
    assert estimate_carbon(df, unknown="metazoan")["carbon_relation"].tolist() == ["gallienne2001"] * 2


def test_novel_objects_get_the_class_free_relation_or_nan():
    df = pd.DataFrame({"pred_label": ["Copepoda", "Copepoda"], "biovolume_um3": [2e9, 2e9],
                       "area_um2": [1.5e6, 1.5e6], "esd_um": [1500.0, 1500.0], "is_novel": [True, False]})
    out = estimate_carbon(df)
    assert list(out["carbon_group"]) == ["unknown", "copepod"]
    assert list(out["carbon_relation"]) == ["gallienne2001", "lhl2009_copepod"]
    assert list(out["carbon_flag"]) == ["novel", ""]
    nan = estimate_carbon(df, novel="nan")
    assert math.isnan(nan["carbon_ugC"].iloc[0]) and nan["carbon_ugC"].iloc[1] > 0


def test_colonies_are_not_one_cell_and_chains_are_flagged():
    df = pd.DataFrame({"pred_label": ["Trichodesmium", "Trichodesmium", "Chaetoceros", "Chaetoceros"],
                       "biovolume_um3": [1e9, 1e9, 6000.0, 6000.0], "area_um2": [1e6, 1e6, 800.0, 800.0],
                       "esd_um": [1200.0, 1200.0, 30.0, 30.0], "n_cells": [np.nan, 2000.0, np.nan, 3.0]})
    out = estimate_carbon(df)
    assert math.isnan(out["carbon_ugC"].iloc[0]) and out["carbon_flag"].iloc[0] == "colony"
    # per cell: 2000 cells of 5e5 µm³ each
    assert out["carbon_ugC"].iloc[1] == pytest.approx(2000 * 10 ** (-0.665 + 0.939 * math.log10(5e5)) * 1e-6)
    assert out["carbon_flag"].iloc[1] == "per_cell"
    assert out["carbon_flag"].iloc[2] == "chain_as_one_cell"
    assert out["carbon_ugC"].iloc[2] == pytest.approx(10 ** (-0.933 + 0.881 * math.log10(6000.0)) * 1e-6)
    # 3 cells of 2000 µm³: small-diatom relation per cell, more carbon than the chain as one cell
    assert out["carbon_ugC"].iloc[3] == pytest.approx(3 * 10 ** (-0.541 + 0.811 * math.log10(2000.0)) * 1e-6)
    assert out["carbon_ugC"].iloc[3] > out["carbon_ugC"].iloc[2]
    whole = estimate_carbon(df, colonies="whole")
    assert whole["carbon_flag"].iloc[0] == "colony_as_one_cell" and whole["carbon_ugC"].iloc[0] > 0


def test_extrapolation_is_flagged():
    df = _table(["Ceratium", "Ceratium"], volume_um3=np.array([100.0, 5e4]))
    assert list(estimate_carbon(df)["carbon_flag"]) == ["extrapolated", ""]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), v=st.floats(10.0, 1e7))
def test_per_cell_carbon_is_n_times_one_cell(n, v):
    """n·f(V/n) for chains: equals n single cells of volume V/n (any relation, any n)."""
    one = estimate_carbon(pd.DataFrame({"pred_label": ["Skeletonema"], "biovolume_um3": [v / n],
                                        "area_um2": [1.0], "esd_um": [10.0], "n_cells": [1.0]}))
    chain = estimate_carbon(pd.DataFrame({"pred_label": ["Skeletonema"], "biovolume_um3": [v],
                                          "area_um2": [1.0], "esd_um": [10.0], "n_cells": [float(n)]}))
    assert chain["carbon_ugC"].iloc[0] == pytest.approx(n * one["carbon_ugC"].iloc[0], rel=1e-9)
