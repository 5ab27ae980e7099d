"""End-to-end: the explorer page in headless Chromium, as a static folder (file://) and served."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.path import Path as PolygonPath

from aqqua_geo.explore.static_site import image_rows, write_static

from .conftest import require_chromium, wait_ready

pytestmark = pytest.mark.browser


def _max_images(explorer) -> int:
    return len(explorer) - 5  # leave a few without image to exercise the cap


@pytest.fixture(scope="module")
def static_site(pca_explorer, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "explorer"
    write_static(pca_explorer, out, max_images=_max_images(pca_explorer), progress=False)
    return out




def _canvas_rgb(page, x: float, y: float) -> str:
    """Colour actually drawn on the scatter canvas at client position (x, y)."""
    return page.evaluate("""([x, y]) => {
        const c = document.getElementById('scatter'), r = c.getBoundingClientRect();
        const d = c.getContext('2d').getImageData(Math.round(x - r.left), Math.round(y - r.top), 1, 1).data;
        return `rgb(${d[0]},${d[1]},${d[2]})`; }""", [x, y])


def _click_point(page, oid: str) -> None:
    pos = page.evaluate("(id) => aqquaExplorer.screenPosition(id)", oid)
    page.mouse.click(pos["x"], pos["y"])
    page.wait_for_function("(id) => aqquaExplorer.details.id === id && aqquaExplorer.details.record", arg=oid)


def _isolated(xy: np.ndarray, among: np.ndarray | None = None) -> int:
    """Row (of *among*, default all) farthest from its nearest neighbour: a click picks it unambiguously."""
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1)
    among = np.arange(len(xy)) if among is None else among
    return int(among[nearest[among].argmax()])


def _client_positions(page, ids: list[str]) -> np.ndarray:
    """(N, 2) client (CSS px) positions of the points *ids* on the scatter."""
    pos = page.evaluate("(ids) => ids.map((id) => aqquaExplorer.screenPosition(id))", ids)
    return np.array([[p["x"], p["y"]] for p in pos])


def _gap(values: np.ndarray, start: float, step: int, clearance: float = 2.0) -> float:
    """First whole pixel from *start* (moving by *step*) with no value within *clearance* px."""
    v = float(np.round(start))
    while np.abs(values - v).min() < clearance:
        v += step
    return v


def _distance_to_ring(p: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Distance of points *p* (N, 2) to the closed polyline *ring* (M, 2)."""
    a, b = ring, np.roll(ring, -1, axis=0)
    ab = b - a
    t = np.clip(((p[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    return np.linalg.norm(p[:, None] - (a + t[..., None] * ab), axis=-1).min(axis=1)


def _drag(page, points: list[dict]) -> None:
    page.mouse.move(points[0]["x"], points[0]["y"])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(p["x"], p["y"], steps=4)
    page.mouse.up()


def test_missing_chromium_fails_with_install_hint(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        require_chromium(tmp_path / "no-chromium")


# ---------------------------------------------------------------- static folder (file://) -------
def test_static_page_shows_all_points_and_recolours(page, static_site, pca_explorer, explore_data, screenshot):
    page.goto((static_site / "index.html").as_uri())
    wait_ready(page)
    n = len(explore_data["ids"])
    assert page.evaluate("aqquaExplorer.mode") == "static"
    assert page.evaluate("aqquaExplorer.nPoints") == n and page.evaluate("aqquaExplorer.nVisible") == n
    assert page.inner_text("#counts").startswith(f"{n} points")
    # default colouring: predicted class, one legend row per class, counts adding up
    assert page.evaluate("aqquaExplorer.colorBy") == "pred_label"
    legend = page.evaluate("aqquaExplorer.legend")
    assert {e["label"] for e in legend} == set(explore_data["pred"]["pred_label"])
    assert sum(e["n"] for e in legend) == n
    # the canvas really shows the point in its class colour
    oid = explore_data["ids"][_isolated(pca_explorer.xy)]
    pos = page.evaluate("(id) => aqquaExplorer.screenPosition(id)", oid)
    before = page.evaluate("(id) => aqquaExplorer.pixelColor(id)", oid)
    assert _canvas_rgb(page, pos["x"], pos["y"]) == before
    screenshot(page, "static_pred_label")
    # recolour through the UI by a continuous column: colour bar, new colour on the canvas
    page.select_option("#color-by", "novelty_score")
    page.wait_for_function("aqquaExplorer.colorBy === 'novelty_score'")
    assert page.evaluate("aqquaExplorer.scale")["kind"] == "number"
    assert page.locator("#legend canvas").count() == 1
    low, high = (page.evaluate("(id) => aqquaExplorer.pixelColor(id)", explore_data["ids"][k]) for k in (0, -1))
    assert low != high  # UVP6 (novelty ~0.1) vs ZooScan (~0.9) ends of viridis
    page.wait_for_timeout(50)
    after = _canvas_rgb(page, pos["x"], pos["y"])
    assert after == page.evaluate("(id) => aqquaExplorer.pixelColor(id)", oid) and after != before
    screenshot(page, "static_novelty")
    assert page.errors == []


def test_static_page_click_shows_image_metadata_and_scale_bar(page, static_site, pca_explorer, explore_data, screenshot):
    page.goto((static_site / "index.html").as_uri())
    wait_ready(page)
    exported = image_rows(len(pca_explorer), _max_images(pca_explorer))
    row = _isolated(pca_explorer.xy, among=exported)
    oid = explore_data["ids"][row]
    _click_point(page, oid)
    page.wait_for_function("aqquaExplorer.details.imageLoaded")
    meta = pca_explorer.table.iloc[row]
    img = page.evaluate("""() => { const i = document.getElementById('details-image');
        return {src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight, cw: i.clientWidth}; }""")
    assert img["src"] == f"images/{row}.png" and (img["w"], img["h"]) == (meta["width"], meta["height"])
    rows = dict(page.evaluate("""() => [...document.querySelectorAll('#details-table tr')]
        .map(tr => [tr.cells[0].textContent, tr.cells[1].textContent])"""))
    assert rows["object_id"] == oid and rows["label"] == meta["label"] and rows["pred_label"] == meta["pred_label"]
    assert rows["instrument"] == meta["instrument"] and float(rows["lat"]) == pytest.approx(meta["lat"])
    # scale bar: its length in screen px is its µm length over the displayed µm per px
    bar_um = page.evaluate("aqquaExplorer.details.scaleBarUm")
    bar_px = page.evaluate("document.getElementById('scale-bar-line').getBoundingClientRect().width")
    um_per_px = meta["pixel_size_um"] * meta["width"] / img["cw"]
    assert bar_px == pytest.approx(bar_um / um_per_px, abs=0.6)
    assert page.inner_text("#scale-bar-label") in (f"{bar_um:g} µm", f"{bar_um / 1000:g} mm")
    screenshot(page, "static_details")
    # an object whose image was not exported (beyond the cap) says so instead of a broken image
    absent = sorted(set(range(len(pca_explorer))) - set(exported.tolist()))
    page.evaluate("(id) => aqquaExplorer.show(id)", explore_data["ids"][absent[0]])
    page.wait_for_function("(id) => aqquaExplorer.details.id === id", arg=explore_data["ids"][absent[0]])
    assert "image not exported" in page.inner_text("#details-caption")
    assert page.locator("#details-image").is_hidden()
    assert page.errors == []


def test_static_page_filters_box_selection_and_csv_download(page, static_site, pca_explorer, explore_data,
                                                            screenshot, tmp_path):
    page.goto((static_site / "index.html").as_uri())
    wait_ready(page)
    t = pca_explorer.table
    n = len(t)
    # instrument filter (checkbox), then class filter (multi-select), then reset
    page.locator("#filter-instrument input[value=ZooScan]").uncheck()
    assert page.evaluate("aqquaExplorer.nVisible") == int((t["instrument"] != "ZooScan").sum())
    page.select_option("#filter-class", ["Copepoda", "detritus"])
    expected = int(((t["instrument"] != "ZooScan") & t["pred_label"].isin(["Copepoda", "detritus"])).sum())
    assert page.evaluate("aqquaExplorer.nVisible") == expected
    page.click("#reset-filters")
    assert page.evaluate("aqquaExplorer.nVisible") == n
    page.fill("#filter-date-from", "2019-03-01")
    page.dispatch_event("#filter-date-from", "change")
    assert page.evaluate("aqquaExplorer.nVisible") == int((t["datetime"] >= pd.Timestamp("2019-03-01", tz="UTC")).sum())
    page.click("#reset-filters")
    # box selection with the mouse around one predicted class's cluster (edges in gaps between points,
    # since the browser may round mouse positions to whole pixels)
    cxy = _client_positions(page, t["object_id"].tolist())
    cls = t["pred_label"].value_counts().index[0]
    pts = cxy[(t["pred_label"] == cls).to_numpy()]
    x0, y0 = _gap(cxy[:, 0], pts[:, 0].min() - 4, -1), _gap(cxy[:, 1], pts[:, 1].min() - 4, -1)
    x1, y1 = _gap(cxy[:, 0], pts[:, 0].max() + 4, 1), _gap(cxy[:, 1], pts[:, 1].max() + 4, 1)
    inside = (cxy[:, 0] > x0) & (cxy[:, 0] < x1) & (cxy[:, 1] > y0) & (cxy[:, 1] < y1)
    page.click("#mode-box")
    _drag(page, [{"x": x0, "y": y0}, {"x": x1, "y": y1}])
    want = t["object_id"][inside].tolist()
    assert page.evaluate("aqquaExplorer.nSelected") == len(want) > 0
    assert page.evaluate("aqquaExplorer.selectedIds()") == want
    screenshot(page, "static_box_selection")
    # CSV download of the selection
    with page.expect_download() as dl:
        page.click("#export-selection")
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(path)
    csv = pd.read_csv(path)
    assert csv["object_id"].tolist() == want
    assert csv["pred_label"].tolist() == t["pred_label"][inside].tolist()
    assert page.errors == []


# ---------------------------------------------------------------- served page -------------------
def test_served_page_details_lasso_and_export(page, server, pca_explorer, explore_data, screenshot):
    page.goto(server.url)
    wait_ready(page)
    t = pca_explorer.table
    assert page.evaluate("aqquaExplorer.mode") == "server" and page.evaluate("aqquaExplorer.nPoints") == len(t)
    # click → record fetched from /api/object, image from /api/image at native resolution
    row = len(t) - 1  # a ZooScan vignette
    _click_point(page, t["object_id"][row])
    page.wait_for_function("aqquaExplorer.details.imageLoaded")
    assert page.evaluate("aqquaExplorer.details.source") == "server"
    assert page.evaluate("aqquaExplorer.details.record.pixel_size_um") == pytest.approx(10.58)
    nat = page.evaluate("[document.getElementById('details-image').naturalWidth, document.getElementById('details-image').naturalHeight]")
    assert nat == [t["width"][row], t["height"][row]]
    # lasso: a triangle over the middle of the plot, drawn with the mouse
    cxy = _client_positions(page, t["object_id"].tolist())
    lo, hi = cxy.min(0), cxy.max(0)
    tri = np.array([[lo[0], hi[1]], [hi[0], hi[1]], [(lo[0] + hi[0]) / 2, lo[1]]])
    tri = tri + (tri.mean(0) - tri) * 0.25  # shrink towards the centroid
    page.click("#mode-lasso")
    ring = np.concatenate([np.linspace(tri[k], tri[(k + 1) % 3], 12, endpoint=False) for k in range(3)])
    _drag(page, [{"x": float(a), "y": float(b)} for a, b in ring])
    inside = PolygonPath(ring).contains_points(cxy)
    near_edge = _distance_to_ring(cxy, ring) < 1.0  # whole-pixel rounding of mouse positions
    got = set(page.evaluate("aqquaExplorer.selectedIds()"))
    sure_in, sure_out = set(t["object_id"][inside & ~near_edge]), set(t["object_id"][~inside & ~near_edge])
    assert len(sure_in) > 5 and sure_in <= got and not got & sure_out
    want = page.evaluate("aqquaExplorer.selectedIds()")  # row order, for the CSV check
    screenshot(page, "server_lasso")
    # export: browser download + POST to the server, which writes the CSV (and EcoTaxa when available)
    with page.expect_download():
        page.click("#export-selection")
    page.wait_for_function("aqquaExplorer.lastExport && aqquaExplorer.lastExport.server")
    result = page.evaluate("aqquaExplorer.lastExport.server")
    assert result["n"] == len(want)
    assert pd.read_csv(result["csv"])["object_id"].tolist() == want
    assert result["ecotaxa_error"] is None and result["ecotaxa"].endswith("_ecotaxa.zip")
    assert page.inner_text("#export-status").startswith("wrote ")
    assert page.errors == []
