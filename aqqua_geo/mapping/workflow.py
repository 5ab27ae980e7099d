"""Config-driven mapping runs (``aqqua map fit|predict|plot``): YAML → models → maps → PNGs.

A config (``aqqua_geo/mapping/configs/default.yaml`` documents every key; bare names such as
``demo`` resolve to the package's configs, then to ``./mapping/configs``) names an observation
table, an environmental cube, the ``BRTEnsemble`` settings and one or more *products* (a target
column, a row filter, a CF product kind, a layer; keys in ``configs/product.yaml``). Outputs go
under ``out``::

    OUT/models/<product>/   member_XXX.json + manifest.json   (fit)
    OUT/diagnostics/        <product>_importance.csv, _pdp.png, _cv.json
    OUT/maps.zarr (+ maps.nc)                                 (predict)
    OUT/totals.csv, totals.json                               (predict: Pg C with ensemble spread)
    OUT/png/<variable>.png                                    (plot)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from aqqua_geo import config as _config
from aqqua_geo.config import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULTS = CONFIG_DIR / "default.yaml"
PRODUCT_DEFAULTS = CONFIG_DIR / "product.yaml"
LOG_KINDS = {"biomass", "abundance", "zooplankton_carbon", "poc", "carbon_export"}

__all__ = ["ConfigError", "load_config", "resolve_config_path", "product_model_kwargs", "load_table",
           "load_cube", "prediction_cube", "fit_from_config", "predict_from_config", "plot_from_config", "drawn_products"]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def resolve_config_path(config: str | Path) -> Path:
    """A YAML path, or a bare name in the package's configs, then in ``./mapping/configs``."""
    return _config.resolve_config_path(config, "mapping")


def _check_product(i: int, product: Any) -> dict[str, Any]:
    if not isinstance(product, Mapping):
        raise ConfigError(f"products[{i}] must be a mapping of product keys, got {type(product).__name__}")
    where = f"products[{i}]" + (f" ({product['name']})" if "name" in product else "")
    try:
        p = _config.load_config(PRODUCT_DEFAULTS, dict(product))
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("config:", f"{where}:", 1)) from None
    for key in ("name", "target"):
        if not p[key]:
            raise ConfigError(f"{where}: {key!r} is required")
    if p["model"]:  # its keys must be model keys of the defaults
        try:
            _config.load_config(DEFAULTS, {"model": p["model"]})
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("config:", f"{where}:", 1)) from None
    if p["total"] not in (None, "stock", "flux"):
        raise ConfigError(f"{where}: total must be null, 'stock' or 'flux', got {p['total']!r}")
    if p["total"] == "stock" and not (isinstance(p["depth_m"], list) and len(p["depth_m"]) == 2):
        raise ConfigError(f"{where}: total 'stock' needs depth_m: [top, bottom]")
    if p["skill_metric"] not in ("r2", "r2_log10"):
        raise ConfigError(f"{where}: skill_metric must be 'r2' or 'r2_log10', got {p['skill_metric']!r}")
    p["group"] = p["group"] or p["name"]
    return p


def load_config(config: str | Path | Mapping, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Load a mapping config (defaults ← file, name or mapping ← ``a.b=value`` overrides).

    Unknown keys, in the config and in each product, are :class:`ConfigError` (a
    ``ValueError``) with a did-you-mean hint; values are YAML 1.2.
    """
    cfg = _config.load_config(DEFAULTS, config, overrides, kind="mapping")
    if not cfg["data"]["table"] and not all(isinstance(p, Mapping) and p.get("table")
                                            for p in cfg["products"] or []):
        raise ConfigError("mapping config: data.table (or a table per product) is required")
    if not cfg["products"]:
        raise ConfigError("mapping config: 'products' is empty")
    if not isinstance(cfg["products"], list):
        raise ConfigError("mapping config: 'products' must be a list of mappings")
    cfg["products"] = [_check_product(i, p) for i, p in enumerate(cfg["products"])]
    names = [p["name"] for p in cfg["products"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"mapping config: product names repeat: {names}")
    return cfg


def product_model_kwargs(cfg: Mapping[str, Any], product: Mapping[str, Any]) -> dict[str, Any]:
    """``BRTEnsemble`` keyword arguments of *product*: the config's ``model`` with the
    product's ``model`` values in their place."""
    return {**cfg["model"], **(product.get("model") or {})}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def load_table(spec: str) -> pd.DataFrame:
    """Observation table: ``bundled:drago2022`` (Drago's cell × taxon table),
    ``bundled:drago2022_cells`` (one row per cell: taxon biomasses, hierarchy-aware total,
    Shannon), ``bundled:poc_flux`` (trap/thorium POC fluxes at 100 and 1000 m) or a
    Parquet/CSV path."""
    from aqqua_geo.mapping import drago2022, poc_flux

    if spec == "bundled:drago2022":
        return drago2022.open_bundled_observations()
    if spec == "bundled:drago2022_cells":
        return drago2022.cell_table(drago2022.open_bundled_observations())
    if spec == "bundled:poc_flux":
        return poc_flux.open_bundled_observations()
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"observation table {spec!r} not found")
    return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)


def load_cube(env: Mapping[str, Any]) -> xr.Dataset:
    """The environmental cube of the config's ``env`` section: any ``open_env`` source, or
    ``env_monthly:<shared/data or its env_monthly folder>`` for the bundled annual cube joined
    with the monthly climatologies (``month`` dimension; :mod:`aqqua_geo.mapping.env_monthly`)."""
    from aqqua_geo.mapping.env import open_env

    source = env["source"]
    if isinstance(source, str) and source.startswith("env_monthly:"):
        from aqqua_geo.mapping.env_monthly import monthly_cube

        cube = monthly_cube(source.split(":", 1)[1])
        return cube[env["variables"]] if env["variables"] else cube
    return open_env(source, variables=env["variables"], climatology=bool(env["climatology"]))


def prediction_cube(cfg: Mapping[str, Any], cube: xr.Dataset) -> xr.Dataset:
    """The cube products are predicted on: a ``month`` axis becomes a CF climatological time
    axis over the years of the observations (``time_coverage_*``)."""
    if "month" not in cube.dims:
        return cube
    from aqqua_geo.mapping.env_monthly import climatology_time_axis

    start, end = _time_coverage(cfg)
    if not (start and end):
        raise ConfigError("a monthly product needs the observation years: set time_coverage_start/end "
                          "or give the table a datetime column")
    return climatology_time_axis(cube, int(start[:4]), int(end[:4]))


def training_frame(cfg: Mapping[str, Any], product: Mapping[str, Any], cube: xr.Dataset
                   ) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """``(X with lon/lat + features, y, features)`` of one product; predictors absent from the
    table are collocated from *cube* (nearest cell, filled within ``data.max_distance_km``)."""
    df = load_table(product["table"] or cfg["data"]["table"])
    query = product["query"] or cfg["data"]["query"]
    if query:
        df = df.query(query)
    target = product["target"]
    if target not in df.columns:
        raise KeyError(f"product {product['name']!r}: target column {target!r} not in the table")
    features = list(cfg["data"]["features"] or [v for v in cube.data_vars])
    missing = [f for f in features if f not in df.columns]
    if missing:  # collocate the samples with the cube for the absent predictors
        from aqqua_geo.mapping.collocate import collocate

        df = collocate(df.drop(columns=[c for c in features if c in df.columns]), cube,
                       variables=features, max_distance_km=cfg["data"]["max_distance_km"])
    df = df.dropna(subset=[target, *features]).reset_index(drop=True)
    if df.empty:
        raise ValueError(f"product {product['name']!r}: no rows left after filtering")
    return df[["lon", "lat", *features]], df[target], features


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------
def fit_from_config(cfg: Mapping[str, Any], progress: bool = True) -> dict[str, Path]:
    """Fit one ``BRTEnsemble`` per product; save models and diagnostics."""
    from aqqua_geo.mapping.model import BRTEnsemble
    from aqqua_geo.mapping.plotting import plot_partial_dependence

    out = Path(cfg["out"])
    cube = load_cube(cfg["env"])
    saved = {}
    for product in cfg["products"]:
        name = product["name"]
        X, y, features = training_frame(cfg, product, cube)
        model = BRTEnsemble(**product_model_kwargs(cfg, product), features=features, progress=progress)
        model.fit(X, y)
        saved[name] = model.save(out / "models" / name)
        diag = out / "diagnostics"
        diag.mkdir(parents=True, exist_ok=True)
        imp = pd.concat([model.feature_importance("gain"),
                         model.permutation_importance(X, y, n_repeats=3)["mean"]
                         .rename("permutation_r2_drop")], axis=1)
        imp.to_csv(diag / f"{name}_importance.csv")
        plot_partial_dependence(model, X, diag / f"{name}_pdp.png", units=product["units"])
        (diag / f"{name}_cv.json").write_text(json.dumps(
            {"cv": model.cv_scores_, "n_rounds": model.n_rounds_,
             "best_params": model.search_.best_params,
             "search": model.search_.table.to_dict("records")}, indent=2, default=str))
        if progress:
            cv = model.cv_scores_
            print(f"{name}: n={len(y)} {cv['scheme']} CV R2={cv['r2']:.3f} "
                  f"R2_log10={cv.get('r2_log10', float('nan')):.3f} "
                  f"rounds={model.n_rounds_} -> {saved[name]}")
    return saved


def _products(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from aqqua_geo.mapping.model import BRTEnsemble
    from aqqua_geo.mapping.predict import Product

    out = Path(cfg["out"])
    return {p["name"]: Product(BRTEnsemble.load(out / "models" / p["name"]), p["kind"], p["group"],
                               depth_m=p["depth_m"], skill_metric=p["skill_metric"],
                               min_skill=cfg["skill"]["min_r2"])
            for p in cfg["products"]}


def _summary(cfg: Mapping[str, Any]) -> str:
    names = ", ".join(f"{p['name']} ({p['kind']})" for p in cfg["products"])
    return cfg["summary"] or (
        f"Global gridded habitat-model products: {names}. Each is the mean and standard deviation "
        "of a bootstrap ensemble of boosted regression trees (xgboost) fitted to in situ "
        "observations against environmental predictors, with spatial-block cross-validated "
        "skill and an extrapolation flag in the attributes.")


def predict_from_config(cfg: Mapping[str, Any], scheduler: str | None = None,
                        progress: bool = True, max_regions: int | None = None,
                        overwrite: bool = False) -> Path:
    """Predict every fitted product on the cube into ``OUT/maps.zarr`` (resumable), then write
    the global totals (``OUT/totals.csv``/``.json``) once the store is complete."""
    from aqqua_geo.mapping import cf
    from aqqua_geo.mapping.dask_utils import dask_session
    from aqqua_geo.mapping.predict import predict_to_zarr

    out = Path(cfg["out"])
    pcfg = cfg["predict"]
    products = _products(cfg)
    cube = prediction_cube(cfg, load_cube(cfg["env"]))
    # only what changes the numbers goes into the resume guard (not the scheduler, not titles)
    run_cfg = {"env": cfg["env"], "products": cfg["products"], "data": cfg["data"],
               "model": cfg["model"], "chunks": pcfg["chunks"], "region_size": pcfg["region_size"],
               "skill": cfg["skill"]}
    attrs = cf.acdd_attrs(summary=_summary(cfg), kinds=[p["kind"] for p in cfg["products"]],
                          institution=cfg["institution"], license=cfg["license"] or _licence(cfg),
                          time_coverage=_time_coverage(cfg))
    if "time" in cube.dims:
        attrs["comment"] = ("Monthly climatology of the observation period (time is a CF climatological "
                            "axis, climatology_bnds); each variable describes the layer or horizon of "
                            "its depth coordinate")
    with dask_session(scheduler or pcfg["scheduler"], progress=progress,
                      n_workers=pcfg["n_workers"], threads_per_worker=pcfg["threads_per_worker"]):
        path = predict_to_zarr(
            products, cube, out / "maps.zarr", chunks=pcfg["chunks"],
            region_size=pcfg["region_size"], netcdf_path=out / "maps.nc" if pcfg["netcdf"] else None,
            title=cfg["title"] or f"aqqua-geo maps: {cfg['name'] or out.name}",
            config=run_cfg, progress=progress, max_regions=max_regions, overwrite=overwrite,
            extra_attrs=attrs)
    from aqqua_geo.mapping.predict import open_product

    if open_product(path).attrs.get("aqqua_complete") == "true":
        from aqqua_geo.mapping.totals import totals_table, write_totals

        write_totals(totals_table(cfg["products"], products, cube), out)
    return path


def _time_coverage(cfg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The config's time_coverage_start/end, else the date range of the tables' ``datetime``."""
    if cfg["time_coverage_start"] and cfg["time_coverage_end"]:
        return str(cfg["time_coverage_start"]), str(cfg["time_coverage_end"])
    dates = []
    for spec in {p["table"] or cfg["data"]["table"] for p in cfg["products"]}:
        df = load_table(spec)
        if "datetime" in df.columns:
            t = pd.to_datetime(df["datetime"], utc=True).dropna()
            dates += [t.min(), t.max()] if len(t) else []
    if not dates:
        return None, None
    return min(dates).strftime("%Y-%m-%d"), max(dates).strftime("%Y-%m-%d")


def _licence(cfg: Mapping[str, Any]) -> str:
    from aqqua_geo.mapping import drago2022, poc_flux

    tables = {p["table"] or cfg["data"]["table"] for p in cfg["products"]}
    parts = []
    source = str(cfg["env"]["source"])
    if any("drago2022" in str(t) for t in tables) or source == "bundled" or source.startswith("env_monthly:"):
        parts.append(drago2022.LICENSE)
    if source.startswith("env_monthly:"):
        from aqqua_geo.mapping.env_monthly import LICENSE as monthly_licence

        parts.append(monthly_licence)
    if any("poc_flux" in str(t) for t in tables):
        parts.append(poc_flux.LICENSE)
    return "; ".join(parts) or "see the input data licences"


def drawn_products(cfg: Mapping[str, Any], ds: xr.Dataset) -> list[str]:
    """Names of the products to draw: skill at or above the floor (from the attributes the
    store carries), unless the product's ``draw`` or ``plot.draw_below_floor`` says otherwise."""
    names = []
    for p in cfg["products"]:
        var = f"{p['name']}_mean"
        if var not in ds or p["draw"] is False:
            continue
        passes = ds[var].attrs.get("aqqua_skill_flag", "ok") == "ok"
        if p["draw"] or passes or cfg["plot"]["draw_below_floor"]:
            names.append(p["name"])
    return names


def plot_from_config(cfg: Mapping[str, Any], projection: str | None = None) -> list[Path]:
    """One PNG per drawn product variable of ``OUT/maps.zarr`` (log colour scale for stocks
    and fluxes); products below the skill floor are not drawn unless asked."""
    from aqqua_geo.mapping.plotting import plot_products
    from aqqua_geo.mapping.predict import open_product

    out = Path(cfg["out"])
    ds = open_product(out / "maps.zarr")
    names = drawn_products(cfg, ds)
    keep = [v for v in ds.data_vars if any(v == f"{n}_mean" or v == f"{n}_std" for n in names)]
    log_vars = tuple(f"{p['name']}_mean" for p in cfg["products"] if p["kind"] in LOG_KINDS)
    return plot_products(ds[keep], out / "png", projection=projection or cfg["plot"]["projection"],
                         log_vars=log_vars)
