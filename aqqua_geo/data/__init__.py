"""Small real public plankton data bundled with the package (see SOURCES.md).

Used by ``aqqua demo``, the notebooks and the tests, so that a fresh clone works offline.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent

_DATASETS = {
    "ecotaxa_m106": "ecotaxa_m106",
    "uvp6_vignettes": "uvp6_vignettes",
    "ifcb": "ifcb",
    "ecopart_bats361": "ecopart_bats361",
    "natural_earth": "natural_earth",
    "ne_110m_admin_0_countries": "ne_110m_admin_0_countries",
    "env": "env",
    "drago2022": "drago2022",
}


def path(name: str) -> Path:
    """Return the folder of the bundled dataset *name* (one of ``available()``)."""
    try:
        return DATA_DIR / _DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown bundled dataset {name!r}; available: {sorted(_DATASETS)}") from None


def available() -> list[str]:
    """Names of the bundled datasets."""
    return sorted(_DATASETS)
