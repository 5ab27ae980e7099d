"""``aqqua map fit|predict|plot`` end to end on the bundled demo config (tiny settings)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from aqqua_geo.cli import app
from aqqua_geo.config import ConfigError
from aqqua_geo.mapping.workflow import drawn_products, load_config, product_model_kwargs, resolve_config_path


@pytest.mark.slow
def test_map_fit_predict_plot_demo(tmp_path):
    sets = ["--set", f"out={tmp_path}", "--set", "model.n_members=2", "--set", "model.n_estimators=40",
            "--set", "plot.draw_below_floor=true",
            "--set", "products=[{name: copepoda, target: Copepoda, kind: biomass, group: Copepoda,"
                     " depth_m: [0, 200], total: stock},"
                     " {name: shannon, target: shannon_biomass, kind: shannon, group: zooplankton},"
                     " {name: poc_flux_100m, table: 'bundled:poc_flux', query: 'target_depth == 100',"
                     " target: poc_flux_obs, kind: carbon_export, depth_m: 100, total: flux,"
                     " skill_metric: r2_log10, model: {transform: log}}]"]
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
    assert ds["poc_flux_100m_mean"].attrs["units"] == "mg m-2 d-1"
    assert set(ds["poc_flux_100m_extrapolated"].values[np.isfinite(ds["poc_flux_100m_mean"].values)]
               .ravel()) <= {0, 1}
    assert float(ds["depth_0_200m"]) == 100.0 and list(ds["depth_0_200m_bnds"].values) == [0, 200]
    totals = pd.read_csv(tmp_path / "totals.csv").set_index("product")
    assert set(totals.index) == {"copepoda", "poc_flux_100m"}
    assert totals.loc["poc_flux_100m", "units"] == "Pg C yr-1" and totals.loc["copepoda", "units"] == "Pg C"
    assert (totals["total_p2_5"] <= totals["total"]).all() and (totals["total"] <= totals["total_p97_5"]).all()

    r = runner.invoke(app, ["map", "plot", "-c", "demo", *sets, "--projection", "PlateCarree"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "copepoda_mean.png", "copepoda_std.png", "poc_flux_100m_mean.png", "poc_flux_100m_std.png",
        "shannon_mean.png", "shannon_std.png"]


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="no mapping config named 'no_such_config'"):
        load_config("no_such_config")
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config("demo", ["model.n_members"])
    with pytest.raises(ConfigError, match="'products' is empty"):
        load_config({"data": {"table": "x.parquet"}, "out": "x"})
    with pytest.raises(ConfigError, match="did you mean 'n_members'"):
        load_config("demo", ["model.n_member=3"])
    with pytest.raises(ConfigError, match=r"products\[0\] \(a\): unknown config key 'kindd'"):
        load_config("demo", ["products=[{name: a, target: b, kindd: biomass}]"])
    with pytest.raises(ConfigError, match="did you mean 'transform'"):
        load_config("demo", ["products=[{name: a, target: b, model: {transfrom: log}}]"])
    with pytest.raises(ConfigError, match="'target' is required"):
        load_config("demo", ["products=[{name: a}]"])
    r = CliRunner().invoke(app, ["map", "fit", "-c", "no_such_config"])
    assert r.exit_code != 0 and "no mapping config named" in r.output


def test_config_defaults_floats_and_product_model_overrides():
    cfg = load_config("demo", ["model.params={eta: 1e-3}", "skill.min_r2=2e-1"])
    assert cfg["model"]["params"]["eta"] == 0.001 and cfg["skill"]["min_r2"] == 0.2  # YAML 1.2
    assert cfg["predict"]["scheduler"] == "threads" and cfg["env"]["source"] == "bundled"
    flux = next(p for p in cfg["products"] if p["name"] == "poc_flux_100m")
    assert product_model_kwargs(cfg, flux)["transform"] == "log"
    zoo = next(p for p in cfg["products"] if p["name"] == "zooplankton_carbon")
    assert product_model_kwargs(cfg, zoo)["transform"] == "log1p" and zoo["group"] == "zooplankton_carbon"
    assert resolve_config_path("demo").parent.name == "configs"
    assert "aqqua_geo" in str(resolve_config_path("demo"))  # the package ships the demo config


def test_products_below_the_skill_floor_are_not_drawn():
    cfg = load_config("demo")
    ds = xr.Dataset({f"{p['name']}_mean": ((), 0.0, {"aqqua_skill_flag": "ok"}) for p in cfg["products"]})
    ds["shannon_mean"].attrs["aqqua_skill_flag"] = "below_floor"
    assert "shannon" not in drawn_products(cfg, ds) and "copepoda" in drawn_products(cfg, ds)
    cfg["plot"]["draw_below_floor"] = True
    assert "shannon" in drawn_products(cfg, ds)


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
