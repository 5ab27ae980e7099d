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
    "poc_flux": "poc_flux",
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


#: Constant metadata for the labelled UVP6 vignettes, whose time and place were not published
#: with them (see SOURCES.md): explicit placeholders, recorded as user-supplied in ``raw/``.
#: Only their pixels, pixel size (73 µm) and labels are meaningful; they are never mapped.
UVP6_PLACEHOLDERS: dict[str, object] = {
    "datetime": "2020-01-01T00:00:00Z",
    "lat": 0.0,
    "lon": 0.0,
    "depth_min": 0.0,
    "depth_max": 0.0,
    "sample_id": "uvpec_test",
}


def uvp6_metadata():
    """The bundled UVP6 vignettes' table (``path``, ``label``, ``instrument``, ``pixel_size_um``, …)."""
    import pandas as pd

    return pd.read_csv(DATA_DIR / "uvp6_vignettes.metadata.csv", dtype=str, keep_default_na=False)


def write_uvp6_store(store_dir: str | Path, metadata=None, *, progress: bool = False) -> Path:
    """Ingest the bundled labelled UVP6 vignettes into *store_dir* with the folder ingest.

    The one builder of this store (demo, notebooks, tests, benchmarks). *metadata*: a subset of
    :func:`uvp6_metadata` rows, possibly with extra columns (kept in ``raw/``), to ingest only
    those images; ``None`` ingests all 690 files. The ``darksphere__7777`` files are byte
    copies of Copepoda vignettes with a conflicting label: ingest keeps the Copepoda copies and
    records the others in the store's duplicates table, leaving 630 objects in 8 classes.
    """
    import shutil
    import tempfile

    from aqqua_geo.ingest import ingest
    from aqqua_geo.store import AqquaStore

    src = path("uvp6_vignettes")
    if metadata is None:
        ingest(src, store_dir, fmt="folder", metadata=DATA_DIR / "uvp6_vignettes.metadata.csv",
               constants=UVP6_PLACEHOLDERS, progress=progress)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / src.name  # same source name and object ids as the full folder
            for rel in metadata["path"]:
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, folder / rel)
            table = Path(tmp) / "metadata.csv"
            metadata.to_csv(table, index=False)
            ingest(folder, store_dir, fmt="folder", metadata=table, constants=UVP6_PLACEHOLDERS, progress=progress)
    labels = set(AqquaStore(store_dir).metadata["label"])
    if "darksphere" in labels:  # the duplicate resolution kept the wrong copy
        raise RuntimeError(f"{store_dir}: darksphere copies were kept instead of the Copepoda originals")
    return Path(store_dir)
