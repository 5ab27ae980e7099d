"""Config-driven mapping runs (``aqqua map fit|predict|plot``): YAML → models → maps → PNGs.

A config (``mapping/configs/*.yaml``) names an observation table, an environmental cube, the
``BRTEnsemble`` settings and one or more *products* (a target column, a row filter and a CF
product kind). Outputs go under ``out``::

    OUT/models/<product>/   member_XXX.json + manifest.json   (fit)
    OUT/diagnostics/        <product>_importance.csv, _pdp.png, _cv.json
    OUT/maps.zarr (+ maps.nc)                                 (predict)
    OUT/png/<variable>.png                                    (plot)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import xarray as xr
import yaml

REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "mapping" / "configs"
LOG_KINDS = {"biomass", "abundance", "zooplankton_carbon", "poc", "carbon_export"}


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def resolve_config_path(config: str | Path) -> Path:
    """A path, or a bare name of a file in the repository's ``mapping/configs``."""
    p = Path(config)
    if p.is_file():
        return p
    named = REPO_CONFIG_DIR / f"{config}.yaml"
    if named.is_file():
        return named
    raise FileNotFoundError(f"config {config!r} not found (nor {named})")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key.sub=value")
    key, value = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def load_config(config: str | Path | dict, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Load a mapping config and apply ``a.b.c=value`` overrides (values parsed as YAML)."""
    if isinstance(config, dict):
        cfg = copy.deepcopy(config)
    else:
        path = resolve_config_path(config)
        cfg = yaml.safe_load(path.read_text()) or {}
        cfg.setdefault("_path", str(path))
    for item in overrides:
        keys, value = _parse_override(item)
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {k!r} is not a mapping in the config")
        node[keys[-1]] = value
    for key in ("data", "products", "out"):
        if key not in cfg:
            raise KeyError(f"mapping config lacks required key {key!r}")
    if not cfg["products"]:
        raise ValueError("mapping config: 'products' is empty")
    return cfg


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def load_table(spec: str) -> pd.DataFrame:
    """Observation table: ``bundled:drago2022`` (Drago's cell × taxon table),
    ``bundled:drago2022_cells`` (one row per cell: taxon biomasses, total, Shannon) or a
    Parquet/CSV path."""
    from aqqua_geo.mapping import drago2022

    if spec == "bundled:drago2022":
        return drago2022.open_bundled_observations()
    if spec == "bundled:drago2022_cells":
        return drago2022.cell_table(drago2022.open_bundled_observations())
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"observation table {spec!r} not found")
    return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)


def load_cube(env: dict[str, Any] | None) -> xr.Dataset:
    """The environmental cube: ``source: bundled`` or any ``mapping.env.open_env`` source."""
    from aqqua_geo.mapping import env as menv

    env = env or {"source": "bundled"}
    variables = env.get("variables")
    if env.get("source", "bundled") == "bundled":
        return menv.open_bundled_env(variables)
    return menv.open_env(env["source"], variables=variables,
                         climatology=bool(env.get("climatology", False)))


def _training_frame(cfg: dict[str, Any], product: dict[str, Any], cube: xr.Dataset
                    ) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    df = load_table(cfg["data"]["table"])
    query = product.get("query", cfg["data"].get("query"))
    if query:
        df = df.query(query)
    target = product["target"]
    if target not in df.columns:
        raise KeyError(f"product {product['name']!r}: target column {target!r} not in the table")
    features = list(cfg["data"].get("features") or [v for v in cube.data_vars])
    missing = [f for f in features if f not in df.columns]
    if missing:  # collocate the samples with the cube for the absent predictors
        from aqqua_geo.mapping.collocate import collocate

        df = collocate(df.drop(columns=[c for c in features if c in df.columns]), cube,
                       variables=features)  # rows without values are dropped below
    df = df.dropna(subset=[target, *features]).reset_index(drop=True)
    if df.empty:
        raise ValueError(f"product {product['name']!r}: no rows left after filtering")
    return df[["lon", "lat", *features]], df[target], features


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------
def fit_from_config(cfg: dict[str, Any], progress: bool = True) -> dict[str, Path]:
    """Fit one ``BRTEnsemble`` per product; save models and diagnostics."""
    from aqqua_geo.mapping.model import BRTEnsemble
    from aqqua_geo.mapping.plotting import plot_partial_dependence

    out = Path(cfg["out"])
    cube = load_cube(cfg.get("env"))
    saved = {}
    for product in cfg["products"]:
        name = product["name"]
        X, y, features = _training_frame(cfg, product, cube)
        model = BRTEnsemble(**(cfg.get("model") or {}), features=features, progress=progress)
        model.fit(X, y)
        saved[name] = model.save(out / "models" / name)
        diag = out / "diagnostics"
        diag.mkdir(parents=True, exist_ok=True)
        imp = pd.concat([model.feature_importance("gain"),
                         model.permutation_importance(X, y, n_repeats=3)["mean"]
                         .rename("permutation_r2_drop")], axis=1)
        imp.to_csv(diag / f"{name}_importance.csv")
        plot_partial_dependence(model, X, diag / f"{name}_pdp.png", units=product.get("units", ""))
        (diag / f"{name}_cv.json").write_text(json.dumps(
            {"cv": model.cv_scores_, "n_rounds": model.n_rounds_,
             "best_params": model.search_.best_params,
             "search": model.search_.table.to_dict("records")}, indent=2, default=str))
        if progress:
            cv = model.cv_scores_
            print(f"{name}: n={len(y)} {cv['scheme']} CV R2={cv['r2']:.3f} "
                  f"rounds={model.n_rounds_} -> {saved[name]}")
    return saved


def predict_from_config(cfg: dict[str, Any], scheduler: str | None = None,
                        progress: bool = True, max_regions: int | None = None,
                        overwrite: bool = False) -> Path:
    """Predict every fitted product on the cube into ``OUT/maps.zarr`` (resumable)."""
    from aqqua_geo.mapping.dask_utils import dask_session
    from aqqua_geo.mapping.model import BRTEnsemble
    from aqqua_geo.mapping.predict import Product, predict_to_zarr

    out = Path(cfg["out"])
    pcfg = dict(cfg.get("predict") or {})
    products = {}
    for p in cfg["products"]:
        model = BRTEnsemble.load(out / "models" / p["name"])
        products[p["name"]] = Product(model, p.get("kind", "biomass"), p.get("group", p["name"]))
    cube = load_cube(cfg.get("env"))
    # only what changes the numbers goes into the resume guard (not the scheduler, not titles)
    run_cfg = {"env": cfg.get("env"), "products": cfg["products"], "data": cfg["data"],
               "model": cfg.get("model"), "chunks": pcfg.get("chunks"),
               "region_size": pcfg.get("region_size")}
    with dask_session(scheduler or pcfg.get("scheduler"), progress=progress,
                      n_workers=pcfg.get("n_workers"),
                      threads_per_worker=pcfg.get("threads_per_worker")):
        return predict_to_zarr(
            products, cube, out / "maps.zarr", chunks=pcfg.get("chunks"),
            region_size=pcfg.get("region_size"), netcdf_path=out / "maps.nc" if pcfg.get("netcdf") else None,
            title=cfg.get("title", f"aqqua-geo maps: {cfg.get('name', out.name)}"),
            config=run_cfg, progress=progress, max_regions=max_regions, overwrite=overwrite)


def plot_from_config(cfg: dict[str, Any], projection: str | None = None) -> list[Path]:
    """One PNG per product variable of ``OUT/maps.zarr`` (log colour scale for stocks)."""
    from aqqua_geo.mapping.plotting import plot_products
    from aqqua_geo.mapping.predict import open_product

    out = Path(cfg["out"])
    ds = open_product(out / "maps.zarr")
    log_vars = tuple(f"{p['name']}_mean" for p in cfg["products"]
                     if p.get("kind", "biomass") in LOG_KINDS)
    return plot_products(ds, out / "png", projection=projection or
                         (cfg.get("plot") or {}).get("projection", "Robinson"), log_vars=log_vars)
