"""Global totals of mapped products, with ensemble spread, skill gating and extrapolation share.

* ``stock``: carbon stock of a concentration (mg C m⁻³) over a layer, Pg C;
* ``flux``: carbon flux (mg C m⁻² d⁻¹) through a horizon, Pg C yr⁻¹.

Each ensemble member is integrated on its own, so the total has a spread (sd and 2.5–97.5 %
range over members); ocean cells only (cells where every predictor is defined). The share of
area and of the total in cells flagged as extrapolated (a predictor outside its training range)
is reported beside it. A product whose spatial-CV skill is below the floor is reported but left
out of sums (:func:`additive_sum`), and so is a group whose parts are summed too (hierarchy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from aqqua_geo.mapping.flux import DAYS_PER_YEAR
from aqqua_geo.mapping.sphere import cell_area

MG_PER_PG = 1e18

__all__ = ["member_totals", "product_total", "totals_table", "additive_sum", "write_totals"]


def _fields(model: Any, cube: xr.Dataset) -> tuple[np.ndarray, tuple[int, ...], dict[str, xr.DataArray]]:
    missing = [f for f in model.features_ if f not in cube.data_vars]
    if missing:
        raise KeyError(f"cube lacks feature variable(s) {missing}")
    fields = dict(zip(model.features_, xr.broadcast(*(cube[f] for f in model.features_))))
    first = fields[model.features_[0]].transpose(..., "lat", "lon")
    fields = {k: v.transpose(*first.dims) for k, v in fields.items()}
    Xm = np.column_stack([np.asarray(v.values, "f4").ravel() for v in fields.values()])
    return Xm, first.shape, fields


def member_totals(model: Any, cube: xr.Dataset, total: str, thickness_m: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-member totals, the mean map and the cell areas of the cells used.

    Returns ``(totals[n_members], mean_field[n_cells], area[n_cells])`` where fields are the
    (flattened, extra dims averaged) (lat, lon) grid. *total* is ``"stock"`` (needs
    *thickness_m*; Pg C) or ``"flux"`` (Pg C yr⁻¹).
    """
    if total not in ("stock", "flux"):
        raise ValueError(f"total must be 'stock' or 'flux', got {total!r}")
    if total == "stock" and not (thickness_m and thickness_m > 0):
        raise ValueError(f"a stock needs thickness_m > 0, got {thickness_m}")
    Xm, shape, _ = _fields(model, cube)
    ens = model.predict_matrix(Xm).astype("f8").reshape((-1, *shape))
    if ens.ndim > 3:  # time/month/...: average over the extra dims first
        ens = ens.reshape(ens.shape[0], -1, shape[-2], shape[-1]).mean(axis=1)
    lb, lob = cube.coords.get("lat_bnds"), cube.coords.get("lon_bnds")
    area = cell_area(cube["lat"].values, cube["lon"].values,
                     None if lb is None else lb.values, None if lob is None else lob.values).values
    members = ens.reshape(ens.shape[0], -1)
    a = area.ravel()
    factor = (thickness_m if total == "stock" else DAYS_PER_YEAR) / MG_PER_PG
    totals = np.nansum(members * a, axis=1) * factor
    with np.errstate(invalid="ignore"):  # land: every member NaN
        mean = np.where(np.isfinite(members).any(axis=0), np.nansum(members, axis=0) / len(members), np.nan)
    return totals, mean, a


def product_total(model: Any, cube: xr.Dataset, total: str, depth_m: Any,
                  extrapolated: np.ndarray | None = None) -> dict[str, float]:
    """Total of one product with its ensemble spread and extrapolated share.

    *extrapolated*: boolean flag per (lat, lon) cell (flattened), or None to compute it from
    the model's training ranges.
    """
    thickness = float(depth_m[1]) - float(depth_m[0]) if isinstance(depth_m, (list, tuple)) else None
    totals, mean, area = member_totals(model, cube, total, thickness)
    ocean = np.isfinite(mean)
    if extrapolated is None:
        extrapolated = _extrapolated(model, cube)
    ext = extrapolated & ocean if extrapolated is not None else np.zeros_like(ocean)
    contrib = np.where(ocean, mean * area, 0.0)
    return {
        "total": float(totals.mean()),
        "total_sd": float(totals.std(ddof=1)) if totals.size > 1 else float("nan"),
        "total_p2_5": float(np.percentile(totals, 2.5)),
        "total_p97_5": float(np.percentile(totals, 97.5)),
        "n_members": int(totals.size),
        "ocean_area_km2": float(area[ocean].sum() / 1e6),
        "extrapolated_area_fraction": float(area[ext].sum() / area[ocean].sum()) if ocean.any() else float("nan"),
        "extrapolated_total_fraction": float(contrib[ext].sum() / contrib.sum()) if contrib.sum() else float("nan"),
    }


def _extrapolated(model: Any, cube: xr.Dataset) -> np.ndarray | None:
    from aqqua_geo.mapping.predict import extrapolation_flag

    _, _, fields = _fields(model, cube)
    flag = extrapolation_flag(model, fields)
    if flag is None:
        return None
    extra = [d for d in flag.dims if d not in ("lat", "lon")]
    return np.asarray((flag == 1).any(extra) if extra else flag == 1).ravel()


def totals_table(products_cfg: Sequence[Mapping[str, Any]], products: Mapping[str, Any],
                 cube: xr.Dataset) -> pd.DataFrame:
    """One row per product with a ``total`` (``stock``/``flux``): total, spread, units, skill,
    its flag and whether it enters sums (skill at/above the floor and ``in_totals``)."""
    rows = []
    for p in products_cfg:
        if not p.get("total"):
            continue
        prod = products[p["name"]]
        t = product_total(prod.model, cube, p["total"], p["depth_m"])
        flag = prod.skill_flag()
        rows.append({
            "product": p["name"], "kind": p["kind"], "total_type": p["total"],
            "units": "Pg C" if p["total"] == "stock" else "Pg C yr-1",
            "depth_m": json.dumps(p["depth_m"]), **t,
            "skill_metric": p["skill_metric"], "skill": prod.skill(), "skill_flag": flag,
            "summed": bool(p.get("in_totals", True) and flag == "ok"),
        })
    return pd.DataFrame(rows)


def additive_sum(totals: Mapping[str, float], hierarchy: Mapping[str, Sequence[str]],
                 skill_ok: Mapping[str, bool] | None = None) -> tuple[float, list[str]]:
    """Sum of *totals* that never adds a group to its parts and skips failed skill.

    *hierarchy* maps a group to its parts (e.g. Drago et al.'s ``Rhizaria`` → its six
    subgroups). A group is left out when any of its parts is summed; a part that fails the
    skill gate is left out too (its group then stays out: summing it would count the part).
    Returns ``(sum, names summed)``.
    """
    ok = {k: (skill_ok or {}).get(k, True) for k in totals}
    parts_of = {g: [p for p in parts if p in totals] for g, parts in hierarchy.items()}
    used = []
    for name in totals:
        if not ok[name]:
            continue
        if parts_of.get(name):  # a group whose parts are (some of) the products
            continue
        used.append(name)
    return float(sum(totals[n] for n in used)), used


def write_totals(table: pd.DataFrame, out_dir: str | Path) -> Path:
    """``OUT/totals.csv`` and ``OUT/totals.json`` (the same table)."""
    from aqqua_geo._io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "totals.csv", table.to_csv(index=False))
    atomic_write_text(out / "totals.json", table.to_json(orient="records", indent=2))
    return out / "totals.csv"
