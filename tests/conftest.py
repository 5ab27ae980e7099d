"""Suite-wide test settings: offline, headless, deterministic, no surprise downloads."""

from __future__ import annotations

import os
from pathlib import Path

# Set before any test module imports the libraries that read them.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("COPERNICUSMARINE_HTTPS_RETRIES", "0")  # fail fast, never retry 90 s
os.environ.setdefault("COPERNICUSMARINE_HTTPS_TIMEOUT", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Folder of test-only real fixtures (tests/data)."""
    return TEST_DATA


@pytest.fixture(scope="session")
def bundled_data():
    """The package's bundled real data module (``aqqua_geo.data``)."""
    from aqqua_geo import data

    return data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the clone (CI has it); for files the package may not ship."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this clone (only needed for unshipped files)")
    return SHARED_DATA
