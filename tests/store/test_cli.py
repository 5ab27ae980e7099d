"""``aqqua ingest`` / ``validate`` / ``info`` through typer's CliRunner."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from aqqua_geo.cli import ingest_cmds, store_cmds

from .conftest import UVP6_CONSTANTS


def _app() -> typer.Typer:
    app = typer.Typer()
    ingest_cmds.register(app)
    store_cmds.register(app)
    return app


def test_ingest_then_info(uvp6, m106, tmp_path):
    runner, app = CliRunner(), _app()
    store = tmp_path / "store"
    sets = [a for c in UVP6_CONSTANTS for a in ("--set", c)]
    res = runner.invoke(app, ["ingest", str(uvp6), "--format", "folder", "--store", str(store), *sets])
    assert res.exit_code == 0, res.output
    assert "ingested: 630" in res.output and "duplicates: 60 (60 with a conflicting label)" in res.output
    res = runner.invoke(app, ["ingest", str(m106 / "import_test"), "-f", "ecotaxa", "-s", str(store)])
    assert res.exit_code == 0 and "ingested: 8" in res.output
    res = runner.invoke(app, ["info", str(store)])
    assert res.exit_code == 0, res.output
    assert "638 objects, 63 duplicates" in res.output
    assert "by instrument: UVP6 630, ZooScan 8" in res.output
    assert "dates: 2014-04-20T04:20:00+00:00 .. 2021-06-01T10:00:00+00:00" in res.output
    assert "labels: 638/638 labelled (100.0 %)" in res.output
    info = json.loads(runner.invoke(app, ["info", str(store), "--json"]).output)
    assert info["by_source"] == {"import_test": 8, "uvp6_vignettes": 630}
    assert info["lat_range"] == [-44.72543333333333, 43.68]


def test_validate_reports_reasons_and_writes_nothing(test_data, tmp_path):
    runner, app = CliRunner(), _app()
    src = test_data / "ecotaxa_import_issues" / "tsv_issues"
    res = runner.invoke(app, ["validate", str(src), "--format", "ecotaxa", "--show", "1"])
    assert res.exit_code == 0, res.output
    assert "(dry run)" in res.output and "would ingest: 1" in res.output
    assert "rejected missing_image: 1" in res.output and "m106_mn01_n3_sml_1081.jpg2 not found" in res.output
    assert "rejected corrupt_image: 1" in res.output
    assert not any(tmp_path.iterdir())


def test_cli_errors_are_one_line(ifcb, tmp_path):
    runner, app = CliRunner(), _app()
    res = runner.invoke(app, ["ingest", str(ifcb), "-f", "ifcb", "-s", str(tmp_path / "s"), "--strict"])
    assert res.exit_code == 1
    assert res.output.strip().count("\n") == 0 and "has no position in its header" in res.output
    assert not (tmp_path / "s").exists()
    res = runner.invoke(app, ["validate", str(ifcb), "-f", "ifcb", "--set", "colour=blue"])
    assert res.exit_code == 1 and "--set colour: unknown field" in res.output
    res = runner.invoke(app, ["info", str(tmp_path)])
    assert res.exit_code == 1 and "not an AqQua store" in res.output
    res = runner.invoke(app, ["validate", str(ifcb), "-f", "nope"])
    assert res.exit_code == 1 and "format 'nope'" in res.output
