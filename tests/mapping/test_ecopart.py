"""EcoPart UVP5 raw exports -> PSD -> flux, on hand-made casts and the real BATS 361 casts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aqqua_geo.mapping import ecopart as ep

AA, EXP = 0.00279, 1.2236


def _cast(par: pd.DataFrame) -> ep.EcoPartCast:
    return ep.EcoPartCast(profile_id="t", lat=0.0, lon=0.0, datetime=pd.Timestamp("2020-01-01", tz="UTC"),
                          acq_aa=AA, acq_exp=EXP, acq_volimage_l=1.1, depth_offset_m=1.2, par=par)


def _area_for_esd(d_mm: float) -> float:
    return (np.pi * (d_mm / 2) ** 2 / AA) ** (1 / EXP)


def test_esd_from_calibration():
    assert ep.esd_mm(1, AA, EXP) == pytest.approx(2 * np.sqrt(AA / np.pi))
    assert ep.esd_mm(_area_for_esd(0.5), AA, EXP) == pytest.approx(0.5)


def test_class_edges_are_ecopart_detailed_classes():
    e = ep.ECOPART_CLASS_EDGES_MM
    assert e.size == 46 and e[20] == 0.102 and e[34] == 2.58 and e[-1] == 1e8
    assert np.allclose(e[1:-1] / e[:-2], 2 ** (1 / 3), rtol=0.02)  # 2^(1/3) progression


def test_psd_hand_computed_volume_counted_once_per_metre():
    a05 = _area_for_esd(0.57)  # inside class [0.512, 0.645)
    par = pd.DataFrame({
        "depth": [150, 150, 151, 157],
        "imgcount": [10, 10, 20, 5],
        "area": [a05, a05, a05, a05],
        "nbr": [3, 1, 2, 7],
    })
    ds = ep.psd(_cast(par))
    assert ds["depth"].values.tolist() == [152.5, 157.5]
    assert ds["volume_l"].values.tolist() == pytest.approx([30 * 1.1, 5 * 1.1])  # not 40 imgs
    k = int(np.searchsorted(ep.ECOPART_CLASS_EDGES_MM, 0.57)) - 1
    assert ds["count"].values[0, k] == 6 and ds["count"].values.sum() == 13
    width = 0.645 - 0.512
    assert ds["n_spectrum"].values[0, k] == pytest.approx(6 / 33 / width)
    assert ds["biovolume"].values[0, k] == pytest.approx(6 * np.pi / 6 * 0.57**3 / 33)
    f = ep.flux_profile(ds)
    mid = np.sqrt(0.512 * 0.645)
    assert float(f[0]) == pytest.approx(6 / 33 / width * 12.5 * mid**3.81 * width)


def test_real_bats_casts(bundled_data):
    folder = bundled_data.path("ecopart_bats361")
    casts = ep.read_ecopart(folder)
    assert [c.profile_id for c in casts] == ["bats361_ctd5", "bats361_ctd14"]
    c5 = casts[0]
    assert (c5.lat, c5.lon, c5.acq_aa, c5.acq_exp, c5.acq_volimage_l) == (32.159, -64.5006, AA, EXP, 1.1)
    assert c5.depth_offset_m == pytest.approx(1.2)  # recorded, already applied by EcoPart
    ds = ep.psd(c5)
    # volume of the 150-155 m bin straight from the raw table
    metres = c5.par[(c5.par.depth >= 150) & (c5.par.depth < 155)].groupby("depth").imgcount.first()
    assert float(ds["volume_l"].sel(depth=152.5)) == pytest.approx(metres.sum() * 1.1)
    # binned Guidi flux agrees with the per-particle sum A d^b over the same volume
    sel = c5.par[(c5.par.depth >= 150) & (c5.par.depth < 155)]
    d = ep.esd_mm(sel.area, AA, EXP)
    direct = (sel.nbr * 12.5 * d**3.81)[(d >= 0.102) & (d <= 1.63)].sum() / (metres.sum() * 1.1)
    binned = float(ep.flux_profile(ds).sel(depth=152.5))
    assert binned == pytest.approx(direct, rel=0.1)
    summary = ep.flux_summary(casts)
    assert len(summary) == 4 and summary["flux_mgC_m2_d"].between(0.5, 10).all()


def test_bad_par_files(tmp_path):
    bad = tmp_path / "x_PAR_raw_1.tsv"
    bad.write_text("depth\timgcount\tnbr\n1\t2\t3\n")
    with pytest.raises(ValueError, match=r"x_PAR_raw_1.tsv: .*missing column.*area"):
        ep.read_par(bad)
    bad.write_text("depth\timgcount\tarea\tnbr\n1\t2\t3\t4\n1\t5\t3\t4\n")
    with pytest.raises(ValueError, match="several imgcount"):
        ep.read_par(bad)
    bad.write_text("depth\timgcount\tarea\tnbr\n1\t0\t3\t4\n")
    with pytest.raises(ValueError, match="invalid row 2"):
        ep.read_par(bad)
    with pytest.raises(FileNotFoundError, match="metadata_summary"):
        ep.read_ecopart(tmp_path)


def test_zoo_vignettes_aggregate_with_par_volumes(bundled_data, tmp_path):
    from aqqua_geo.mapping.samples import aggregate

    folder = bundled_data.path("ecopart_bats361")
    cast = ep.read_ecopart(folder)[0]
    pred, meta = ep.read_zoo(cast, next(folder.glob("*ctd5_ZOO_raw*.tsv")))
    assert len(pred) == 480 and pred["object_id"].is_unique
    assert pred["esd_um"].iloc[0] == pytest.approx(11.0558127830827 * 0.092 * 1000)
    vols = ep.volumes_table(cast)
    out = aggregate(pred, meta, depth_bins=np.arange(0, 601, 100), volumes=vols)
    assert out["n_objects"].sum() == 480 and set(out["volume_flag"]) == {"ok"}
    top = out.iloc[0]
    v = vols[(vols.depth_min + vols.depth_max) / 2 < 100]["volume_l"].sum()
    assert top["sampled_volume_l"] == pytest.approx(v)
    n_top = int(((meta.depth_min >= 0) & (meta.depth_min < 100)).sum())
    assert top["conc_total_m3"] == pytest.approx(n_top / (v / 1000))
    png = ep.plot_flux_profiles([cast], tmp_path / "flux.png")
    assert png.stat().st_size > 5000
