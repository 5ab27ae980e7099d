"""Carbon: each relation against hand-computed values, the category table, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.downstream.carbon import CARBON_GROUPS, alldredge1998_ug, carbon_group_of, estimate_carbon, gallienne2001_ug, lhl2009_dry_weight_ug, load_carbon_groups, mdl2000_diatom_pg, mdl2000_dinoflagellate_pg, mdl2000_protist_pg


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
    assert list(out.columns) == ["carbon_ugC", "carbon_group", "carbon_relation"]
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
        "t001": ("unknown", "gallienne2001", 95.0),  # documented fallback
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
    with pytest.raises(ValueError, match="unknown must be 'fallback' or 'nan'"):
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
