"""Fixtures of the store/ingest tests: bundled real data and small stores built from it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

UVP6_CONSTANTS = ["datetime=2021-06-01T10:00:00Z", "lat=43.68", "lon=7.32", "depth=50"]


@pytest.fixture(scope="session")
def m106(bundled_data) -> Path:
    return bundled_data.path("ecotaxa_m106")


@pytest.fixture(scope="session")
def uvp6(bundled_data) -> Path:
    return bundled_data.path("uvp6_vignettes")


@pytest.fixture(scope="session")
def ifcb(bundled_data) -> Path:
    return bundled_data.path("ifcb")


@pytest.fixture()
def ifcb_positions(tmp_path) -> Path:
    """A user table of bin positions (the bundled bins have none in their headers)."""
    path = tmp_path / "positions.csv"
    path.write_text("bin,lat,lon,depth\nD20130526T095207_IFCB013,41.325,-70.5667,4\nIFCB5_2012_028_081515,41.325,-70.5667,4\n")
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under *root* except lock files (to assert that nothing changed)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(("-lock", ".lock"))}
