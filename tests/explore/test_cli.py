"""``aqqua explore``: static folder via CliRunner, server in a subprocess (``--port 0``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from typer.testing import CliRunner

from aqqua_geo.cli import app
from aqqua_geo.explore.points import decode_points


def _args(d, *extra) -> list[str]:
    return ["explore", "--store", str(d["store"]), "--embeddings", str(d["embeddings"]),
            "--predictions", str(d["predictions"]), "--method", "pca", *extra]


def test_cli_static_writes_a_self_contained_folder(explore_data, tmp_path):
    out = tmp_path / "site"
    result = CliRunner().invoke(app, _args(explore_data, "--static", str(out), "--max-images", "10",
                                           "--max-image-side", "32"))
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'index.html'} ({len(explore_data['ids'])} points)" in result.output
    assert sorted(p.name for p in out.iterdir()) == [".aqqua-explore", "data.js", "explorer.css", "explorer.js",
                                                     "images", "index.html"]
    assert len(list((out / "images").glob("*.png"))) == 10
    assert 'src="data.js"' in (out / "index.html").read_text()
    for name in ("index.html", "explorer.js", "explorer.css"):  # nothing fetched from the network
        assert "http://" not in (out / name).read_text() and "https://" not in (out / name).read_text()
    # re-export into the same folder replaces it; an unrelated non-empty folder is refused
    assert CliRunner().invoke(app, _args(explore_data, "--static", str(out))).exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(app, _args(explore_data, "--static", str(tmp_path / "mine")))
    assert result.exit_code == 2 and "is not an aqqua explorer export" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "tsne"], "must be one of umap, pca"),
])
def test_cli_rejects_bad_options(explore_data, tmp_path, extra, message):
    result = CliRunner().invoke(app, _args(explore_data, "--static", str(tmp_path / "s"), *extra))
    assert result.exit_code == 2 and message in result.output


def test_cli_reports_embeddings_not_in_the_store(explore_data, tmp_path):
    import numpy as np
    import zarr

    bad = tmp_path / "bad.zarr"
    g = zarr.open_group(str(bad), mode="w")
    g.create_array("embedding", data=np.ones((3, 2), dtype=np.float32))
    g.create_array("object_id", shape=(3,), dtype=str)[:] = np.array(["x", "y", "z"])
    args = _args(explore_data, "--static", str(tmp_path / "s"))
    args[args.index("--embeddings") + 1] = str(bad)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "3 embedded object_id(s) are not in the store" in result.output
    assert not (tmp_path / "s").exists()


def test_cli_server_port_zero_prints_the_url(explore_data, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "aqqua_geo", *_args(explore_data, "--port", "0",
                             "--export-dir", str(tmp_path / "exports"))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"aqqua explorer: {len(explore_data['ids'])} points at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        assert not url.endswith(":0/")
        with urllib.request.urlopen(url + "api/points", timeout=20) as r:
            header, _ = decode_points(r.read())
        assert header["object_ids"] == explore_data["ids"]
        body = json.dumps({"object_ids": explore_data["ids"][:2]}).encode()
        with urllib.request.urlopen(url, timeout=20) as r:  # the page carries the per-page token
            page = r.read().decode()
        token = json.loads(page.split("window.AQQUA_TOKEN = ", 1)[1].split(";", 1)[0])
        req = urllib.request.Request(url + "api/export", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-Aqqua-Token": token})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["n"] == 2
        assert len(list((tmp_path / "exports").glob("*.csv"))) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_server_port_in_use_is_a_clear_error(explore_data):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(app, _args(explore_data, "--port", str(port)))
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
