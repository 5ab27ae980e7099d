"""The explorer's HTTP API (stdlib server in a background thread)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aqqua_geo.explore.points import decode_points


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def _post(url: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Aqqua-Token"] = token
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_port_zero_picks_a_free_port(server):
    assert server.server_address[1] > 0 and server.url.startswith("http://127.0.0.1:")


def test_page_and_assets(server):
    status, ctype, body = _get(server.url)
    assert status == 200 and ctype.startswith("text/html")
    assert b'window.AQQUA_MODE = "server"' in body and b"/static/explorer.js" in body
    status, ctype, body = _get(server.url + "static/explorer.js")
    assert status == 200 and b"window.aqquaExplorer" in body
    assert _get(server.url + "static/../server.py")[0] == 404


def test_points_endpoint_serves_every_point_in_order(server, pca_explorer, explore_data):
    status, ctype, body = _get(server.url + "api/points")
    assert status == 200 and ctype == "application/octet-stream"
    header, cols = decode_points(body)
    assert header["object_ids"] == explore_data["ids"] and header["layout"] == "pca"
    np.testing.assert_array_equal(cols["x"], pca_explorer.xy[:, 0])


def test_object_and_image_endpoints(server, pca_explorer, explore_data):
    oid = explore_data["ids"][-1]  # a ZooScan object, with an id that needs no quoting
    status, _, body = _get(server.url + "api/object?id=" + oid)
    rec = json.loads(body)
    assert status == 200 and rec["object_id"] == oid and rec["instrument"] == "ZooScan"
    status, ctype, body = _get(server.url + "api/image?id=" + oid)
    assert status == 200 and ctype == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), pca_explorer.store.get(oid))


@pytest.mark.parametrize(("path", "code", "message"), [
    ("api/object?id=ghost", 404, "unknown object_id 'ghost'"),
    ("api/image?id=ghost", 404, "unknown object_id 'ghost'"),
    ("api/image", 400, "missing query parameter 'id'"),
    ("api/nothing", 404, "no such endpoint: /api/nothing"),
])
def test_errors_are_json_with_a_message(server, path, code, message):
    status, ctype, body = _get(server.url + path)
    assert status == code and ctype == "application/json" and json.loads(body)["error"] == message


def test_coastlines_endpoint(server):
    status, _, body = _get(server.url + "api/coastlines")
    rings = json.loads(body)["rings"]
    assert status == 200 and len(rings) > 50
    lons, lats = np.concatenate([r[0::2] for r in rings]), np.concatenate([r[1::2] for r in rings])
    assert lons.min() >= -180 and lons.max() <= 180 and lats.min() >= -90 and lats.max() <= 90


def test_export_endpoint_writes_the_selected_ids(server, explore_data):
    ids = explore_data["ids"][3:9]
    status, result = _post(server.url + "api/export", json.dumps({"object_ids": ids}).encode(), server.token)
    assert status == 200 and result["n"] == 6 and result["ecotaxa_error"] is None
    assert pd.read_csv(result["csv"])["object_id"].tolist() == ids
    # the EcoTaxa import bundle beside it: TSV (header + [t]/[f] type row) + one image per object
    with zipfile.ZipFile(result["ecotaxa"]) as zf:
        tsv = [n for n in zf.namelist() if n.endswith(".tsv")]
        table = pd.read_csv(zf.open(tsv[0]), sep="\t", skiprows=[1], encoding="utf-8-sig")
        assert table["object_id"].tolist() == ids
        assert len([n for n in zf.namelist() if n.startswith("images/")]) == 6


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "export failed: Expecting property name"),
    (b'{"ids": []}', "export failed: object_ids"),
    (b'{"object_ids": [1, 2]}', "export failed: 'object_ids' must be a list of strings"),
    (b'{"object_ids": ["ghost"]}', "export failed: unknown object_id 'ghost'"),
    (b'{"object_ids": []}', "export failed: empty selection"),
])
def test_export_endpoint_rejects_bad_requests(server, body, message):
    before = sorted(server.export_dir.glob("*"))
    status, result = _post(server.url + "api/export", body, server.token)
    assert status == 400 and result["error"].startswith(message)
    assert sorted(server.export_dir.glob("*")) == before
