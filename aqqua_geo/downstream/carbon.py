"""Per-object organic carbon (µg C) from image traits, with published allometric relations.

Each object's (predicted or validated) EcoTaxa category is mapped to a *carbon group* and a
*form* (cell / chain / colony) through the packaged table ``carbon_groups.csv`` (matched
case-insensitively on the category, then on its parents), and the group's relation turns its
size traits into carbon. The relations live in one table, :data:`RELATIONS` (printed by
:func:`relation_table`; the same table is in ``docs/downstream-results.md``):

::

    group           relation                  formula (paper's own form)        x range        ref   status
    diatom          mdl2000_diatom            C[pg] = 10^-0.541·V^0.811         V ≤ 3000 µm³   (1)   [V]
                    mdl2000_diatom_large      C[pg] = 10^-0.933·V^0.881         V > 3000 µm³   (1)   [V]
    dinoflagellate  mdl2000_dinoflagellate    C[pg] = 0.760·V^0.819             180–2.8e5 µm³  (1)   [P]
    protist         mdl2000_protist           C[pg] = 10^-0.665·V^0.939         (non-diatoms)  (1)   [V]
    rhizaria        mdl2000_protist_rhizaria  as protist, extrapolated to mm    —              (1)   [M]
    copepod         lhl2009_copepod           DW[µg] = 45.25·S^1.59, C = 0.4·DW  S[mm²]        (2,5) [M]
    chaetognath     lhl2009_chaetognath       DW[µg] = 23.45·S^1.19, C = 0.4·DW                (2,5) [M]
    crustacean      lhl2009_general           DW[µg] = 43.38·S^1.54, C = 0.4·DW                (2,5) [M]
    gelatinous      gelatinous_0.005mgC_mm3   C[mg] = 0.005·V[mm³]                             (3)   [M]
    metazoan        gallienne2001             C[mg] = 0.0475·V[mm³]                            (4)   [V]
    detritus        alldredge1998             POC[µg] = 0.99·Vs^0.52, Vs[mm³] spherical        (6)   [M]
    not_living      none                      NaN (bubbles, out-of-focus objects, artefacts)
    unknown / novel by size: protist below 200 µm ESD (IFCB/FlowCam cells), metazoan above

V is the ellipsoidal biovolume (``biovolume_um3``), Vs the spherical one (``biovolume_sph_um3``),
S the projected area (``area_um2``), all from :mod:`aqqua_geo.downstream.traits`. Status: [V]
coefficients read in published code (iRfcb ``vol2C_diatom``/``vol2C_lgdiatom``/``vol2C_nondiatom``;
OPC_Toolbox quoting Basedow et al. 2014), [P] read in the paper's abstract, [M] literature values
quoted from memory or from a script that itself asks for checking: confirm against the papers
before publishing numbers that rely on them.

Uncertainty: every relation carries ``log10_sd``, the scatter of one object around it, and
:func:`estimate_carbon` returns the 95 % interval ``C·10^(±1.96·log10_sd)``. None of these
scatters could be read in the papers here (status [A], assumed: 0.15 for the MDL2000 protist
relations, 0.2 for LHL2009, 0.3 for the volume relations of metazoans and aggregates, 0.5 for
gelatinous carbon density): replace them with the papers' regression statistics.

Chains and colonies are never treated as one cell: per-cell carbon ``n·f(V/n)`` when a cell
count is given (``n_cells``), else a chain is flagged ``chain_as_one_cell`` and a colony
(Trichodesmium, Phaeocystis, colonial radiolarians) is NaN and flagged ``colony``.

References
    (1) Menden-Deuer S. & Lessard E.J. 2000, Limnol. Oceanogr. 45:569–579 (MDL2000).
    (2) Lehette P. & Hernández-León S. 2009, Limnol. Oceanogr. Methods 7:304–308: dry weight from
        the projected area of subtropical/Antarctic mesozooplankton (coefficients as used in the
        GEOMAR EcoTaxa biomass script; the script itself says to check them against Table 2).
    (3) Order of magnitude of carbon per body volume of cnidarians, ctenophores and salps
        (≈ 0.5 % of wet mass at 1 mg mm⁻³), e.g. Kiørboe T. 2013, Limnol. Oceanogr. 58:1843–1850.
    (4) Gallienne C.P. et al. 2001, as used by Basedow S.L. et al. 2014 for OPC/LOPC biovolumes.
    (5) Carbon ≈ 40 % of dry weight for crustacean mesozooplankton (typical value).
    (6) Alldredge A. 1998, Deep-Sea Res. I 45:529–541 (aggregate POC vs volume).
    Size boundary: Sieburth J.McN. et al. 1978, Limnol. Oceanogr. 23:1256–1263 (micro- vs
    mesoplankton at 200 µm).

Output units: ``carbon_ugC`` in µg C per object (1 µg = 10⁶ pg = 10⁻³ mg).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

GROUPS_CSV = Path(__file__).with_name("carbon_groups.csv")

CARBON_GROUPS: tuple[str, ...] = (
    "diatom",
    "dinoflagellate",
    "protist",
    "rhizaria",
    "copepod",
    "chaetognath",
    "crustacean",
    "gelatinous",
    "metazoan",
    "detritus",
    "not_living",
    "unknown",
)

_PG_PER_UG = 1e6
_UM3_PER_MM3 = 1e9
_UM2_PER_MM2 = 1e6
_C_PER_DW = 0.4  # (5) [M]


def _power(a: float, b: float, x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x > 0, a * np.power(np.where(x > 0, x, 1.0), b), np.nan)


def mdl2000_diatom_pg(volume_um3: np.ndarray) -> np.ndarray:
    """Diatom carbon [pg C] from cell volume [µm³] (MDL2000; large-diatom relation above 3000 µm³)."""
    v = np.asarray(volume_um3, np.float64)
    return np.where(v > 3000.0, _power(10**-0.933, 0.881, v), _power(10**-0.541, 0.811, v))


def mdl2000_dinoflagellate_pg(volume_um3: np.ndarray) -> np.ndarray:
    """Dinoflagellate carbon [pg C] from cell volume [µm³] (MDL2000)."""
    return _power(0.760, 0.819, np.asarray(volume_um3, np.float64))


def mdl2000_protist_pg(volume_um3: np.ndarray) -> np.ndarray:
    """Carbon [pg C] of protists other than diatoms from cell volume [µm³] (MDL2000)."""
    return _power(10**-0.665, 0.939, np.asarray(volume_um3, np.float64))


def lhl2009_dry_weight_ug(area_mm2: np.ndarray, group: str = "general") -> np.ndarray:
    """Dry weight [µg] from projected area [mm²] (Lehette & Hernández-León 2009) [M]."""
    a, b = _LHL2009[group]
    return _power(a, b, np.asarray(area_mm2, np.float64))


_LHL2009: dict[str, tuple[float, float]] = {
    "copepod": (45.25, 1.59),
    "chaetognath": (23.45, 1.19),
    "general": (43.38, 1.54),
}


def gallienne2001_ug(volume_mm3: np.ndarray) -> np.ndarray:
    """Mesozooplankton carbon [µg C] = 0.0475 mg C mm⁻³ × body volume [mm³] (Gallienne et al. 2001)."""
    return 0.0475e3 * np.asarray(volume_mm3, np.float64)


def gelatinous_ug(volume_mm3: np.ndarray) -> np.ndarray:
    """Gelatinous zooplankton carbon [µg C] = 0.005 mg C mm⁻³ × body volume [mm³] [M]."""
    return 0.005e3 * np.asarray(volume_mm3, np.float64)


def alldredge1998_ug(volume_mm3: np.ndarray) -> np.ndarray:
    """Aggregate (marine snow) POC [µg C] = 0.99·V^0.52, V [mm³] (Alldredge 1998) [M]."""
    return _power(0.99, 0.52, np.asarray(volume_mm3, np.float64))


@dataclass(frozen=True)
class Relation:
    """One published allometric relation, in the form and units of its paper.

    ``carbon_ugC(x)`` converts the paper's output to µg C. ``x_name`` says which size trait is
    ``x`` and in which unit; ``x_range`` is the range of ``x`` the relation was fitted on (objects
    outside it are flagged ``extrapolated``); ``log10_sd`` is the 1-σ scatter (log10 units) of
    one object around the relation, used for the 95 % interval ``C·10^(±1.96·log10_sd)``.
    ``status``: [V] coefficients read in the paper or in published code, [P] in the paper's
    abstract, [M] quoted from memory or from a script that asks for checking, [A] an assumption
    of this package (no published figure found): replace it when you have the paper's value.
    """

    id: str
    group: str
    formula: str
    x_name: str  # volume_um3 | area_mm2 | volume_mm3 | sph_volume_mm3
    a: float
    b: float
    to_ugC: float  # factor from the paper's output unit to µg C (incl. C:DW where needed)
    x_range: tuple[float, float]
    log10_sd: float
    sd_status: str
    reference: str
    status: str

    def carbon_ugC(self, x: np.ndarray) -> np.ndarray:
        return self.to_ugC * _power(self.a, self.b, np.asarray(x, np.float64))


_MDL = "Menden-Deuer S. & Lessard E.J. 2000, Limnol. Oceanogr. 45:569-579"
_LHL = ("Lehette P. & Hernández-León S. 2009, Limnol. Oceanogr. Methods 7:304-308 "
        "(dry weight; C = 0.4·DW)")

#: The relations, one row each (code and docs: :func:`relation_table`).
RELATIONS: dict[str, Relation] = {r.id: r for r in (
    Relation("mdl2000_diatom", "diatom", "C[pg] = 10^-0.541·V^0.811", "volume_um3", 10**-0.541, 0.811,
             1e-6, (0.0, 3000.0), 0.15, "[A]", _MDL + ", diatoms ≤ 3000 µm³", "[V]"),
    Relation("mdl2000_diatom_large", "diatom", "C[pg] = 10^-0.933·V^0.881", "volume_um3", 10**-0.933, 0.881,
             1e-6, (3000.0, 1e8), 0.15, "[A]", _MDL + ", diatoms > 3000 µm³", "[V]"),
    Relation("mdl2000_dinoflagellate", "dinoflagellate", "C[pg] = 0.760·V^0.819", "volume_um3", 0.760, 0.819,
             1e-6, (180.0, 2.8e5), 0.15, "[A]", _MDL + " (fitted on 180-2.8e5 µm³)", "[P]"),
    Relation("mdl2000_protist", "protist", "C[pg] = 10^-0.665·V^0.939", "volume_um3", 10**-0.665, 0.939,
             1e-6, (0.0, 1e8), 0.15, "[A]", _MDL + ", protists other than diatoms", "[V]"),
    Relation("mdl2000_protist_rhizaria", "rhizaria", "C[pg] = 10^-0.665·V^0.939", "volume_um3", 10**-0.665,
             0.939, 1e-6, (0.0, 1e8), 0.3, "[A]", _MDL + ", extrapolated to mm-sized rhizarians", "[M]"),
    Relation("lhl2009_copepod", "copepod", "DW[µg] = 45.25·S^1.59", "area_mm2", 45.25, 1.59, 0.4,
             (0.01, 20.0), 0.2, "[A]", _LHL + ", copepods", "[M]"),
    Relation("lhl2009_chaetognath", "chaetognath", "DW[µg] = 23.45·S^1.19", "area_mm2", 23.45, 1.19, 0.4,
             (0.01, 50.0), 0.2, "[A]", _LHL + ", chaetognaths", "[M]"),
    Relation("lhl2009_general", "crustacean", "DW[µg] = 43.38·S^1.54", "area_mm2", 43.38, 1.54, 0.4,
             (0.01, 50.0), 0.2, "[A]", _LHL + ", general mesozooplankton", "[M]"),
    Relation("gelatinous_0.005mgC_mm3", "gelatinous", "C[mg] = 0.005·V[mm³]", "volume_mm3", 0.005, 1.0, 1e3,
             (0.0, np.inf), 0.5, "[A]", "≈0.5 % of wet mass at 1 mg mm⁻³ (Kiørboe 2013, L&O 58:1843)", "[M]"),
    Relation("gallienne2001", "metazoan", "C[mg] = 0.0475·V[mm³]", "volume_mm3", 0.0475, 1.0, 1e3,
             (0.0, np.inf), 0.3, "[A]", "Gallienne C.P. et al. 2001, as used by Basedow et al. 2014", "[V]"),
    Relation("alldredge1998", "detritus", "POC[µg] = 0.99·V^0.52", "sph_volume_mm3", 0.99, 0.52, 1.0,
             (1e-3, 1e3), 0.3, "[A]", "Alldredge A. 1998, Deep-Sea Res. I 45:529-541 (aggregates)", "[M]"),
)}

#: ESD (µm) below which an object without a usable class (unknown, novel) gets the protist
#: relation and above which the mesozooplankton one: the micro/mesoplankton boundary
#: (Sieburth et al. 1978, Limnol. Oceanogr. 23:1256). IFCB and FlowCam images are below it.
SIZE_DEFAULT_ESD_UM = 200.0


def relation_table() -> pd.DataFrame:
    """The relations as a table: group, relation, units, size range, scatter, reference."""
    rows = [{"relation": r.id, "group": r.group, "formula": r.formula, "x": r.x_name,
             "x_min": r.x_range[0], "x_max": r.x_range[1], "log10_sd": r.log10_sd, "sd_status": r.sd_status,
             "reference": r.reference, "status": r.status} for r in RELATIONS.values()]
    return pd.DataFrame(rows)


def _inputs(rel: Relation, vol_um3: np.ndarray, sph_um3: np.ndarray, area_um2: np.ndarray) -> np.ndarray:
    return {"volume_um3": vol_um3, "area_mm2": area_um2 / _UM2_PER_MM2, "volume_mm3": vol_um3 / _UM3_PER_MM3,
            "sph_volume_mm3": sph_um3 / _UM3_PER_MM3}[rel.x_name]


def _relation_ids(group: str, vol_um3: np.ndarray) -> np.ndarray:
    """Relation id per row of one group (diatoms switch relation at 3000 µm³)."""
    if group == "diatom":
        return np.where(vol_um3 > 3000.0, "mdl2000_diatom_large", "mdl2000_diatom").astype(object)
    rel = next((r.id for r in RELATIONS.values() if r.group == group), None)
    return np.full(len(vol_um3), rel if rel is not None else "none", dtype=object)


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "_", name.strip().lower())


FORMS = ("cell", "chain", "colony")


@lru_cache(maxsize=8)
def _load_full(path: str) -> dict[str, tuple[str, str]]:
    table = pd.read_csv(path, comment="#", dtype=str, skipinitialspace=True)
    if list(table.columns[:2]) != ["taxon", "carbon_group"]:
        raise ValueError(f"{path}: expected columns 'taxon,carbon_group[,form]', got {list(table.columns)}")
    bad = sorted(set(table["carbon_group"]) - set(CARBON_GROUPS))
    if bad:
        raise ValueError(f"{path}: unknown carbon group(s) {bad}; valid: {list(CARBON_GROUPS)}")
    forms = table["form"].fillna("cell") if "form" in table.columns else pd.Series("cell", index=table.index)
    badf = sorted(set(forms) - set(FORMS))
    if badf:
        raise ValueError(f"{path}: unknown form(s) {badf}; valid: {list(FORMS)}")
    return {_norm(t): (g, f) for t, g, f in zip(table["taxon"], table["carbon_group"], forms)}


@lru_cache(maxsize=8)
def _load_table(path: str) -> dict[str, str]:
    return {k: v[0] for k, v in _load_full(path).items()}


def load_carbon_groups(path: str | Path | None = None) -> dict[str, str]:
    """The name → carbon group table (normalised lower-case names); default: the packaged CSV."""
    return dict(_load_table(str(path or GROUPS_CSV)))


def _candidates(label: str, hierarchy: str | None) -> list[str]:
    """Names to look up, most specific first: the label, its '<' parents, then the hierarchy."""
    names = [label, *label.split("<")]
    if hierarchy:
        names += list(reversed(hierarchy.split(">")))
    out: list[str] = []
    for n in names:
        n = n.strip()
        if n:
            out.append(n)
    # genus or species level IFCB/EcoTaxa names ("Chaetoceros_socialis", "Calanus finmarchicus")
    out += [re.split(r"[\s_]", n)[0] for n in out if re.search(r"[\s_]", n)]
    return out


def _lookup(label: object, hierarchy: str | None, table: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
    if label is None or label is pd.NA or (isinstance(label, float) and np.isnan(label)) or str(label).strip() == "":
        return "unknown", "cell"
    for name in _candidates(str(label), hierarchy):
        hit = table.get(_norm(name))
        if hit is not None:
            return hit
    return "unknown", "cell"


def carbon_group_of(label: object, hierarchy: str | None = None, table: Mapping[str, str] | None = None) -> str:
    """Carbon group of one EcoTaxa category name (``"unknown"`` when nothing matches)."""
    full = _load_full(str(GROUPS_CSV)) if table is None else {k: (v, "cell") for k, v in table.items()}
    return _lookup(label, hierarchy, full)[0]


def form_of(label: object, hierarchy: str | None = None) -> str:
    """``cell``, ``chain`` or ``colony`` of one category, from the packaged table."""
    return _lookup(label, hierarchy, _load_full(str(GROUPS_CSV)))[1]


UNKNOWN_MODES = ("size", "fallback", "metazoan", "nan")


def estimate_carbon(
    df: pd.DataFrame,
    label_col: str = "pred_label",
    volume_col: str = "biovolume_um3",
    sph_volume_col: str = "biovolume_sph_um3",
    area_col: str = "area_um2",
    hierarchy_col: str | None = None,
    groups: str | Path | Mapping[str, str] | None = None,
    unknown: str = "size",
    *,
    esd_col: str = "esd_um",
    novel_col: str | None = "is_novel",
    novel: str = "size",
    cells_col: str | None = "n_cells",
    colonies: str = "nan",
) -> pd.DataFrame:
    """Carbon per object (µg C) with a 95 % interval, its group, relation and flag.

    Returns DataFrame[``carbon_ugC``, ``carbon_lo_ugC``, ``carbon_hi_ugC``, ``carbon_group``,
    ``carbon_relation``, ``carbon_flag``] with the index of *df*. *df* holds one row per object
    with the category in *label_col* and the traits of :func:`aqqua_geo.downstream.traits.measure`
    (µm², µm³). ``groups`` replaces the packaged name → group table (CSV path or mapping).

    Objects without a usable class:

    - *unknown* categories (nothing in the table matches): ``unknown="size"`` (default; the
      old name ``"fallback"`` means the same) picks the relation by size, the protist relation
      (MDL2000) below :data:`SIZE_DEFAULT_ESD_UM` ESD (IFCB/FlowCam-sized cells) and the
      mesozooplankton one (``gallienne2001``) above; ``"metazoan"`` always the latter; ``"nan"``
      leaves them NaN. ``carbon_flag`` is ``unknown_class``.
    - objects flagged *novel* (``novel_col``, e.g. ``is_novel`` of predictions.parquet): their
      predicted class is not trusted, so ``novel="size"`` (default) applies the same class-free
      size rule and ``novel="nan"`` leaves them NaN; ``carbon_group`` is ``unknown`` and
      ``carbon_flag`` is ``novel``.

    Chains and colonies (``form`` of ``carbon_groups.csv``): with a cell count in *cells_col*
    the relation is applied per cell, ``n · f(V / n)`` (flag ``per_cell``). Without one, a chain
    (diatom chains) gets the relation on the whole object, an underestimate by ``n^(1-b)``
    (flag ``chain_as_one_cell``), and a colony (Trichodesmium puffs/tufts, Phaeocystis,
    colonial radiolarians) is NaN with ``colonies="nan"`` (default, flag ``colony``) or the
    relation on the whole volume with ``colonies="whole"`` (flag ``colony_as_one_cell``).
    Objects outside the relation's fitted size range are flagged ``extrapolated``. Missing size
    traits give NaN carbon. The interval is ``C·10^(±1.96·log10_sd)`` of the relation
    (:data:`RELATIONS`).
    """
    if unknown not in UNKNOWN_MODES:
        raise ValueError(f"estimate_carbon: unknown must be one of {UNKNOWN_MODES}, got {unknown!r}")
    if novel not in ("size", "nan"):
        raise ValueError(f"estimate_carbon: novel must be 'size' or 'nan', got {novel!r}")
    if colonies not in ("nan", "whole"):
        raise ValueError(f"estimate_carbon: colonies must be 'nan' or 'whole', got {colonies!r}")
    required = [label_col, volume_col, area_col]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise KeyError(f"estimate_carbon: column(s) {missing} missing from the table (have {list(df.columns)})")
    if groups is None or isinstance(groups, (str, Path)):
        table = _load_full(str(groups or GROUPS_CSV))
    else:
        table = {_norm(k): (v, "cell") for k, v in groups.items()}
        bad = sorted({v for v, _ in table.values()} - set(CARBON_GROUPS))
        if bad:
            raise ValueError(f"estimate_carbon: unknown carbon group(s) {bad}; valid: {list(CARBON_GROUPS)}")

    n = len(df)
    labels = df[label_col].astype(object).where(df[label_col].notna(), None)
    hier = df[hierarchy_col] if hierarchy_col else pd.Series([None] * n, index=df.index)
    cache: dict[tuple, tuple[str, str]] = {}
    group = np.empty(n, dtype=object)
    form = np.empty(n, dtype=object)
    for i, key in enumerate(zip(labels, hier)):
        if key not in cache:
            cache[key] = _lookup(key[0], key[1] if isinstance(key[1], str) else None, table)
        group[i], form[i] = cache[key]

    def num(col: str | None, default: np.ndarray | None = None) -> np.ndarray:
        if col and col in df.columns:
            return pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        return default if default is not None else np.full(n, np.nan)

    vol = num(volume_col)
    sph = num(sph_volume_col, vol)
    area = num(area_col)
    esd = num(esd_col, np.where(vol > 0, np.cbrt(6.0 * np.where(vol > 0, vol, 1.0) / np.pi), np.nan))
    cells = num(cells_col)
    flag = np.full(n, "", dtype=object)
    flag[group == "unknown"] = "unknown_class"
    is_novel = np.zeros(n, dtype=bool)
    if novel_col and novel_col in df.columns:
        is_novel = df[novel_col].astype("boolean").fillna(False).to_numpy(dtype=bool)
        group[is_novel] = "unknown"
        form[is_novel] = "cell"
        flag[is_novel] = "novel"

    # relation group per row: unknown / novel objects by size (or metazoan, or none)
    rel_group = group.copy()
    unk = group == "unknown"
    mode = np.where(is_novel, novel, "size" if unknown == "fallback" else unknown)
    small = esd < SIZE_DEFAULT_ESD_UM
    rel_group[unk & (mode == "size") & small] = "protist"
    rel_group[unk & (mode == "size") & ~small] = "metazoan"  # NaN ESD → NaN carbon anyway
    rel_group[unk & (mode == "metazoan")] = "metazoan"
    rel_group[unk & (mode == "nan")] = "none"
    rel_group[group == "not_living"] = "none"

    per_cell = (form != "cell") & np.isfinite(cells) & (cells >= 1)
    ncell = np.where(per_cell, cells, 1.0)
    v_cell, sph_cell, a_cell = vol / ncell, sph / ncell, area / ncell
    carbon = np.full(n, np.nan)
    sd = np.full(n, np.nan)
    relation = np.full(n, "none", dtype=object)
    for g in np.unique(rel_group):
        if g == "none":
            continue
        sel = rel_group == g
        ids = _relation_ids(g, v_cell[sel])
        out_c = np.full(int(sel.sum()), np.nan)
        out_sd = np.full(int(sel.sum()), np.nan)
        flag_sel = flag[sel]
        for rid in np.unique(ids):
            r = RELATIONS[rid]
            m = ids == rid
            x = _inputs(r, v_cell[sel][m], sph_cell[sel][m], a_cell[sel][m])
            out_c[m] = r.carbon_ugC(x)
            out_sd[m] = r.log10_sd
            outside = np.isfinite(x) & ((x < r.x_range[0]) | (x > r.x_range[1]))
            flag_sel[m] = np.where(outside & (flag_sel[m] == ""), "extrapolated", flag_sel[m])
        carbon[sel], sd[sel], relation[sel], flag[sel] = out_c, out_sd, ids, flag_sel
    carbon = carbon * ncell
    chain = (form == "chain") & ~per_cell
    colony = (form == "colony") & ~per_cell
    flag[per_cell] = "per_cell"
    flag[chain] = "chain_as_one_cell"
    flag[colony] = "colony_as_one_cell" if colonies == "whole" else "colony"
    if colonies == "nan":
        carbon[colony] = np.nan
    half = 10.0 ** (1.96 * sd)
    return pd.DataFrame(
        {"carbon_ugC": carbon, "carbon_lo_ugC": carbon / half, "carbon_hi_ugC": carbon * half,
         "carbon_group": group.astype(str), "carbon_relation": relation.astype(str),
         "carbon_flag": flag.astype(str)},
        index=df.index,
    )
