"""A non-editable (wheel) install runs ``aqqua demo`` from an empty directory.

The wheel is built from this checkout and installed with ``--no-deps --target`` into a
folder placed first on ``PYTHONPATH``: the package then imports from the installed copy
(asserted), with only what the wheel ships — configs loaded by name, bundled data,
catalog — and the dependencies of the test environment. No repository path is reachable:
the demo runs in an empty temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(work / "dist"), str(ROOT)], check=True, capture_output=True, timeout=600)
    wheel = next((work / "dist").glob("aqqua_geo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("aqqua_geo/foundation/configs/tiny.yaml", "aqqua_geo/foundation/configs/cpu.yaml",
                   "aqqua_geo/foundation/configs/default.yaml", "aqqua_geo/mapping/configs/demo.yaml",
                   "aqqua_geo/downstream/carbon_groups.csv"):
        assert needed in names, f"{needed} missing from the wheel"
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return target


def _env(target: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(target), "MPLBACKEND": "Agg"}


def test_wheel_imports_from_the_installed_copy(installed, tmp_path):
    out = subprocess.run([sys.executable, "-c", "import aqqua_geo, sys; print(aqqua_geo.__file__)"],
                         cwd=tmp_path, env=_env(installed), capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith(str(installed))
    code = ("from aqqua_geo.foundation.config import load_config; from aqqua_geo.mapping.workflow import "
            "load_config as mload; print(load_config('tiny')['model']['arch'], mload('demo')['name'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.slow
def test_wheel_install_runs_the_demo_from_an_empty_directory(installed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "aqqua_geo", "demo", "--out", "demo_out",
                           "--pretrain-minutes", "0.3"], cwd=tmp_path, env=_env(installed),
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = tmp_path / "demo_out"
    for produced in ("store/manifest.json", "pretrain/backbone.pt", "inference/predictions.parquet",
                     "ecotaxa_export.zip", "samples.parquet", "maps/maps.zarr", "explorer/index.html"):
        assert (out / produced).exists(), produced
