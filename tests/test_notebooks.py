"""Every tutorial notebook runs top to bottom on the bundled data (executed with nbclient)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_all_tutorials_present():
    names = [nb.name[:2] for nb in NOTEBOOKS]
    assert names == ["01", "02", "03", "04", "05"], f"expected notebooks 01..05, found {names}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch):
    # Notebooks write their outputs under AQQUA_WORKDIR so that the test leaves the clone clean.
    monkeypatch.setenv("AQQUA_WORKDIR", str(tmp_path))
    monkeypatch.setenv("AQQUA_NOTEBOOK_FAST", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=dict(os.environ))
    errors = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []) if out.output_type == "error"
    ]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
