"""Living vs non-living categories: the bundled table, EcoTaxa parents and hierarchies."""

from __future__ import annotations

import pytest

from aqqua_geo.downstream.taxonomy import is_living, living_mask, load_taxonomy


@pytest.mark.parametrize("label,hierarchy,living", [
    ("Copepoda", None, True), ("Acantharea", None, True), ("Trichodesmium", None, True),
    ("detritus", None, False), ("fiber<detritus", None, False), ("bubble", None, False),
    ("badfocus<artefact", None, False), ("darksphere", None, False), ("Detritus", None, False),
    ("feces", None, False), ("t001", None, False), ("unknown", None, False),
    ("x", "not-living>artefact>x", False), ("Calanus", "living>Eukaryota>Metazoa>Copepoda", True),
    ("dead<Copepoda", None, False), (None, None, False), ("", None, False),
])
def test_living_lookup(label, hierarchy, living):
    assert is_living(label, hierarchy) is living


def test_bundled_uvp6_classes(bundled_data):
    names = sorted(p.name.split("__")[0] for p in bundled_data.path("uvp6_vignettes").iterdir() if p.is_dir())
    living = dict(zip(names, living_mask(names)))
    assert [n for n, v in living.items() if v] == ["Acantharea", "Aulacanthidae", "Aulosphaeridae", "Copepoda"]


def test_custom_table_and_bad_table(tmp_path):
    assert living_mask(["Copepoda", "Acantharea"], taxonomy={"Acantharea": False}).tolist() == [True, False]
    bad = tmp_path / "t.csv"
    bad.write_text("name,living,kind\nbubble,maybe,artefact\n")
    with pytest.raises(ValueError, match="living must be true/false"):
        load_taxonomy(bad)
    with pytest.raises(ValueError, match="labels but"):
        living_mask(["a"], hierarchies=[None, None])
