"""``aqqua map fit|predict|plot`` end to end on the bundled demo config (tiny settings)."""

from __future__ import annotations

import json

import pytest
import xarray as xr
from typer.testing import CliRunner

from aqqua_geo.cli import app
from aqqua_geo.mapping.workflow import load_config


@pytest.mark.slow
def test_map_fit_predict_plot_demo(tmp_path):
    sets = ["--set", f"out={tmp_path}", "--set", "model.n_members=2", "--set", "model.n_estimators=40",
            "--set", "products=[{name: copepoda, target: Copepoda, kind: biomass, group: Copepoda},"
                     " {name: shannon, target: shannon_biomass, kind: shannon, group: zooplankton}]"]
    runner = CliRunner()
    r = runner.invoke(app, ["map", "fit", "-c", "demo", *sets])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "models" / "copepoda" / "manifest.json").read_text())
    assert len(manifest["members"]) == 2 and manifest["cv_scores"]["scheme"] == "spatial"
    assert (tmp_path / "diagnostics" / "shannon_pdp.png").stat().st_size > 10_000
    assert "permutation_r2_drop" in (tmp_path / "diagnostics" / "copepoda_importance.csv").read_text()

    r = runner.invoke(app, ["map", "predict", "-c", "demo", *sets, "--scheduler", "threads"])
    assert r.exit_code == 0, r.output
    ds = xr.open_zarr(tmp_path / "maps.zarr", consolidated=False)
    assert {"copepoda_mean", "copepoda_std", "shannon_mean", "shannon_std"} <= set(ds.data_vars)
    assert ds["shannon_mean"].attrs["units"] == "1" and ds.attrs["aqqua_complete"] == "true"
    assert json.loads(ds.attrs["aqqua_config"])["model"]["n_members"] == 2

    r = runner.invoke(app, ["map", "plot", "-c", "demo", *sets, "--projection", "PlateCarree"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "copepoda_mean.png", "copepoda_std.png", "shannon_mean.png", "shannon_std.png"]


def test_config_errors_are_one_line():
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config("no_such_config")
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config("demo", ["model.n_members"])
    with pytest.raises(KeyError, match="'products'"):
        load_config({"data": {}, "out": "x"})
    r = CliRunner().invoke(app, ["map", "fit", "-c", "no_such_config"])
    assert r.exit_code != 0 and "not found" in r.output


def test_map_samples_on_an_ingested_store(bundled_data, tmp_path):
    import pandas as pd

    from aqqua_geo.ingest import ingest
    from aqqua_geo.store import AqquaStore

    store_dir = tmp_path / "store"
    ingest(bundled_data.path("ecotaxa_m106"), store_dir, fmt="ecotaxa")
    meta = AqquaStore(store_dir).metadata
    pd.DataFrame({"object_id": meta["object_id"], "pred_label": meta["label"].fillna("unknown")}
                 ).to_parquet(tmp_path / "predictions.parquet")
    out = tmp_path / "samples.parquet"
    args = ["map", "samples", "--predictions", str(tmp_path / "predictions.parquet"),
            "--store", str(store_dir), "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out)
    assert table["n_objects"].sum() == len(meta) and "shannon" in table.columns
    bad = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "x.parquet"),
                                   "--depth-bins", "0,abc"])
    assert bad.exit_code != 0 and "comma-separated" in bad.output
    assert not (tmp_path / "x.parquet").exists()
