"""The install files agree with each other: pyproject ranges, constraints pins, environment.yml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# Names that differ between PyPI and conda-forge.
CONDA_NAMES = {
    "lmdb": "python-lmdb",
    "blosc2": "python-blosc2",
    "matplotlib": "matplotlib-base",
    "torch": "pytorch-cpu",
    "netcdf4": "netcdf4",
    "cf-xarray": "cf_xarray",
    "dask": "dask",
    "xgboost-cpu": "py-xgboost-cpu",
}


def _pyproject_requirements() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, items in project["optional-dependencies"].items():
        reqs += [Requirement(r) for r in items if not r.startswith("aqqua-geo")]
    return reqs


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = Version(version)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_satisfy_pyproject_ranges():
    pins = _constraints()
    for req in _pyproject_requirements():
        name = _norm(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject range {req.specifier}"
        )


def test_cpu_only_pins():
    pins = _constraints()
    assert pins["torch"] == Version("2.13.0"), "torch must be the local CPU wheel 2.13.0"
    assert pins["torchvision"] == Version("0.28.0"), "torchvision must match torch 2.13.0"
    assert "xgboost" not in pins, "use xgboost-cpu, plain xgboost pulls 350 MB of NCCL"
    assert not any(name.startswith("nvidia-") for name in pins), "no CUDA packages on CPU"


def test_environment_yml_mirrors_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_norm(Requirement(p).name) for p in dep["pip"] if not p.startswith("-e")}
        else:
            conda.add(_norm(re.split(r"[<>=]", dep, maxsplit=1)[0]))
    for req in _pyproject_requirements():
        name = _norm(req.name)
        expected = _norm(CONDA_NAMES.get(name, name))
        assert expected in conda or name in pip, f"{req.name} from pyproject.toml is missing in environment.yml"
