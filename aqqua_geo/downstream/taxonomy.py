"""Living vs non-living EcoTaxa categories, from the bundled editable table ``taxonomy.csv``.

EcoTaxa files every category under one of two roots: ``living`` (organisms) and
``not-living`` (``artefact``: ``badfocus``, ``bubble``, ...; ``detritus``: ``fiber``, ``feces``,
...). Diversity indices and taxon concentrations must count organisms only; detritus stays
available as a particle class (POC, marine snow). :func:`is_living` looks a category up in the
table (its own name, then its EcoTaxa parents, most specific first; a hierarchy whose root is
``living``/``not-living`` decides by itself). Names that the table does not know are living
taxa: edit or replace the table (``taxonomy=`` arguments) for project-specific categories.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

TAXONOMY_CSV = Path(__file__).with_name("taxonomy.csv")
_TEMPORARY = re.compile(r"t\d{3,}")
KINDS = ("taxon", "artefact", "detritus", "other")


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "_", str(name).strip().lower())


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, tuple[bool, str]]:
    table = pd.read_csv(path, comment="#", dtype=str, skipinitialspace=True).fillna("")
    missing = {"name", "living", "kind"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)} (need name, living, kind)")
    out: dict[str, tuple[bool, str]] = {}
    for row in table.itertuples():
        flag = row.living.strip().lower()
        if flag not in ("true", "false"):
            raise ValueError(f"{path}: living must be true/false, got {row.living!r} for {row.name!r}")
        if row.kind not in KINDS:
            raise ValueError(f"{path}: kind must be one of {KINDS}, got {row.kind!r} for {row.name!r}")
        out[_norm(row.name)] = (flag == "true", row.kind)
    return out


def load_taxonomy(taxonomy: str | Path | Mapping[str, bool] | None = None) -> dict[str, tuple[bool, str]]:
    """``{normalised name: (living, kind)}`` from a CSV path, a ``{name: living}`` mapping or the bundled table."""
    if taxonomy is None or isinstance(taxonomy, (str, Path)):
        return dict(_load(str(taxonomy or TAXONOMY_CSV)))
    return {_norm(k): (bool(v), "taxon" if v else "other") for k, v in taxonomy.items()}


def _candidates(label: str, hierarchy: str | None) -> list[str]:
    names = [label, *label.split("<")]  # the category itself, then its parents
    if hierarchy:
        names += list(reversed(hierarchy.split(">")))
    return [n.strip() for n in names if n and n.strip()]


def classify_category(label: object, hierarchy: str | None = None,
                      taxonomy: Mapping[str, tuple[bool, str]] | None = None) -> tuple[bool, str]:
    """``(living, kind)`` of one category; unknown names are ``(True, "taxon")``.

    A missing label (None/NaN/empty) is ``(False, "other")``: it is not a taxon.
    """
    if label is None or (isinstance(label, float) and np.isnan(label)) or str(label).strip() == "" \
            or label is pd.NA:
        return False, "other"
    table = taxonomy if taxonomy is not None else _load(str(TAXONOMY_CSV))
    root = _norm(hierarchy.split(">")[0]) if hierarchy else None
    if root == "living":
        return True, "taxon"
    for name in _candidates(str(label), hierarchy):
        hit = table.get(_norm(name))
        if hit is not None:
            return hit
    if root in ("not-living", "not_living"):
        return False, "other"
    if _TEMPORARY.fullmatch(_norm(str(label))):
        return False, "other"  # EcoTaxa temporary categories t001, t002, ...: not yet a taxon
    return True, "taxon"


def is_living(label: object, hierarchy: str | None = None,
              taxonomy: str | Path | Mapping[str, bool] | None = None) -> bool:
    """Whether *label* is an organism (a taxon for diversity and taxon concentrations)."""
    table = load_taxonomy(taxonomy) if taxonomy is not None else None
    return classify_category(label, hierarchy, table)[0]


def living_mask(labels: Iterable[object], hierarchies: Iterable[str | None] | None = None,
                taxonomy: str | Path | Mapping[str, bool] | None = None) -> np.ndarray:
    """Boolean array: :func:`is_living` of every label (looked up once per distinct value)."""
    labels = list(labels)
    hier = list(hierarchies) if hierarchies is not None else [None] * len(labels)
    if len(hier) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(hier)} hierarchies")
    table = load_taxonomy(taxonomy)
    cache: dict[tuple, bool] = {}
    out = np.empty(len(labels), dtype=bool)
    for i, key in enumerate(zip(labels, hier)):
        k = (None if key[0] is pd.NA else key[0], key[1] if isinstance(key[1], str) else None)
        if k not in cache:
            cache[k] = classify_category(k[0], k[1], table)[0]
        out[i] = cache[k]
    return out
