"""Drago et al. 2022 bundled derivatives and the reproduction pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from aqqua_geo.mapping import drago2022 as dr


def _protocol():
    """The reproduction protocol lives with its benchmark (benchmarks/reproduce_drago2022.py)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce_drago2022.py"
    spec = importlib.util.spec_from_file_location("reproduce_drago2022", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bundled_cube_shape_units_licence():
    ds = dr.open_bundled_cube_file()
    assert dict(ds.sizes) == {"lat": 180, "lon": 360, "bnds": 2}
    assert list(ds.data_vars) == dr.FEATURES
    assert int(np.isfinite(ds["temperature"]).sum()) == 39_698  # their ocean cells
    assert ds["temperature"].attrs["units"] == "degC" and ds["oxygen"].attrs["units"] == "umol kg-1"
    assert "standard_name" not in ds["dist_coast"].attrs  # no CF name exists: none invented
    assert "GPL-3.0" in ds.attrs["license"] and "894372" in ds.attrs["references"]
    assert "build_env_cube" in ds.attrs["history"]
    # land is NaN: the middle of Africa and of Antarctica
    assert np.isnan(ds["temperature"].sel(lat=5.5, lon=20.5)) and np.isnan(ds["salinity"].sel(lat=-85.5, lon=0.5))


def test_bundled_observations_and_reference_map():
    d = dr.open_bundled_observations()
    assert d.shape == (20_516, 23) and d["taxon"].nunique() == 23
    assert (d.groupby("taxon", observed=True).size() == 892).all()
    assert d["biomass_sph"].min() >= 0 and set(dr.FEATURES) <= set(d.columns)
    ref = dr.open_bundled_reference_map()
    assert len(ref) == 39_698 and ref["pred_mean"].gt(0).all()


def test_cell_table_community():
    cells = dr.cell_table(dr.open_bundled_observations())
    assert len(cells) == 892 and "Copepoda_refit" not in cells.columns
    taxa = [c for c in cells.columns if c[0].isupper()]
    parts = dr.additive_taxa(taxa)
    assert "Rhizaria" not in parts and "Cnidaria" not in parts and "Phaeodaria" in parts
    assert len(parts) == len(taxa) - 2
    np.testing.assert_allclose(cells["total_biomass"], cells[parts].sum(axis=1), rtol=1e-6)
    # Rhizaria is the sum of its subgroups (so adding both would double count it)
    rh = cells[list(dr.HIERARCHY["Rhizaria"])].sum(axis=1)
    assert float((cells["Rhizaria"] - rh).abs().max()) < 0.12
    assert cells["total_biomass"].sum() < 0.9 * cells[taxa].sum(axis=1).sum()
    ok = cells["total_biomass"] > 0
    assert cells.loc[ok, "shannon_biomass"].between(0, np.log(len(parts))).all()


def test_table_to_grid_places_cells():
    ds = dr.open_bundled_cube_file()
    ref = dr.open_bundled_reference_map().head(3)
    g = dr.table_to_grid(ref, "pred_mean", ds)
    assert int(np.isfinite(g).sum()) == 3
    assert float(g.sel(lat=ref["lat"].iloc[0], lon=ref["lon"].iloc[0])) == pytest.approx(
        float(ref["pred_mean"].iloc[0]))


def test_bundled_files_rebuild_identically_from_shared_data(shared_data, tmp_path):
    paths = dr.write_bundled(shared_data, tmp_path)
    import pandas as pd
    import xarray as xr

    new = xr.open_dataset(paths[0])
    old = dr.open_bundled_cube_file()
    xr.testing.assert_equal(new.drop_attrs(), old.drop_attrs())
    pd.testing.assert_frame_equal(pd.read_parquet(paths[1]), dr.open_bundled_observations())


def test_their_split_partitions_copepoda_rows(shared_data):
    tr, te = _protocol()._their_split(shared_data, 892)
    assert (len(tr), len(te)) == (710, 182)
    res = dr.read_copepoda_results(shared_data)
    d = dr.read_observations(shared_data)
    cop = d[d["taxon"] == "Copepoda"].reset_index(drop=True)
    np.testing.assert_allclose(cop["biomass_sph"].to_numpy()[tr], res["d_train"]["biomass"])


def test_stratified_split_is_stratified():
    y = np.random.default_rng(0).lognormal(size=1000)
    tr, te = _protocol().stratified_split(y)
    assert len(te) == 200 and not np.intersect1d(tr, te).size
    assert np.median(y[te]) == pytest.approx(np.median(y[tr]), rel=0.15)


@pytest.mark.slow
def test_evaluate_taxon_protocol_runs_and_beats_chance():
    obs = dr.open_bundled_observations()
    res = _protocol().evaluate_taxon(obs, "Copepoda", dr.open_bundled_cube_file(), n_resamples=5,
                            grid={"eta": [0.1], "max_depth": [2, 4], "min_child_weight": [3]},
                            spatial_members=2)
    assert res["r2_test_mean"] > 30 and np.isfinite(res["r2_spatial_cv"])
    assert 0.02 < res["total_pg_c"] < 1.0  # Pg C in 0-200 m; theirs: 0.083
    assert res["map"]["biomass_mean"].count() > 35_000
    with pytest.raises(KeyError, match="not in the observation table"):
        _protocol().evaluate_taxon(obs, "Dinosauria", dr.open_bundled_cube_file())
