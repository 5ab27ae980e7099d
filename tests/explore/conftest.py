"""Fixtures of the explorer tests: a small real-image store, embeddings, predictions, Chromium.

The store holds real bundled vignettes (UVP6 from ecotaxa/uvpec, ZooScan from EcoTaxa M106)
with sampling metadata invented for the test (positions spread over the ocean, one date per
sample). Embeddings are class centroids plus noise, so a layout clusters by class.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aqqua_geo.explore.server import ExplorerServer

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "explore"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UVP6_PER_CLASS = 16
EMBED_DIM = 24


def _vignettes(bundled_data) -> list[tuple[str, str, np.ndarray, float, str]]:
    """(object_id, instrument, image, pixel_size_um, label) of real bundled images."""
    out = []
    root = bundled_data.path("uvp6_vignettes")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = folder.name.split("__")[0]
        for png in sorted(folder.glob("*.png"))[:UVP6_PER_CLASS]:
            out.append((f"uvp6_{label}_{png.stem}", "UVP6", np.asarray(Image.open(png).convert("L")), 73.0, label))
    for jpg in sorted(bundled_data.path("ecotaxa_m106").glob("import_test/*/*.jpg")):
        out.append((f"zooscan_{jpg.stem}", "ZooScan", np.asarray(Image.open(jpg).convert("L")), 10.58, "Copepoda"))
    return out


@pytest.fixture(scope="session")
def explore_data(tmp_path_factory, bundled_data) -> dict:
    """A store + embeddings.zarr + predictions.parquet; returns their paths and the ids."""
    import zarr

    from aqqua_geo.store import StoreWriter

    root = tmp_path_factory.mktemp("explore")
    store_dir = root / "store"
    rng = np.random.default_rng(7)
    kept = []
    with StoreWriter(store_dir, source="explore_test", source_format="folder", source_path="bundled") as w:
        for k, (oid, instrument, image, px, label) in enumerate(_vignettes(bundled_data)):
            sample = k // 20
            record = {"source": "explore_test", "instrument": instrument, "sample_id": f"s{sample:02d}",
                      "datetime": pd.Timestamp("2019-01-01", tz="UTC") + pd.Timedelta(days=30 * sample),
                      "lat": float(-60 + 11 * sample % 120), "lon": float(-170 + 37 * sample % 340),
                      "depth_min": float(10 * sample), "depth_max": float(10 * sample + 5),
                      "pixel_size_um": px, "sampled_volume_l": 1.0, "label": label, "label_status": "validated"}
            if w.add(oid, image, record, raw={"file": oid}) == "added":
                kept.append((oid, label))
    ids = np.array([oid for oid, _ in kept])
    labels = np.array([lab for _, lab in kept])
    classes = sorted(set(labels))
    centroids = rng.normal(size=(len(classes), EMBED_DIM)) * 4
    vectors = (centroids[[classes.index(lab) for lab in labels]] + rng.normal(size=(len(ids), EMBED_DIM)))
    emb_path = root / "embeddings.zarr"
    g = zarr.open_group(str(emb_path), mode="w")
    g.create_array("embedding", data=vectors.astype(np.float32), chunks=(64, EMBED_DIM))
    g.create_array("object_id", shape=ids.shape, chunks=(64,), dtype=str)[:] = ids  # as predict_store writes it
    # predictions: mostly right, a few confusions; novelty high for the ZooScan objects
    pred = labels.copy()
    flip = rng.random(len(ids)) < 0.1
    pred[flip] = rng.choice(classes, size=flip.sum())
    predictions = pd.DataFrame({
        "object_id": ids, "pred_label": pred, "pred_prob": rng.uniform(0.4, 1.0, len(ids)),
        "novelty_score": np.where(np.char.startswith(ids.astype(str), "zooscan"), 0.9, 0.1) + rng.uniform(0, 0.05, len(ids)),
        "is_novel": np.char.startswith(ids.astype(str), "zooscan"),
        "esd_um": rng.uniform(300, 2000, len(ids)), "carbon_ugC": rng.lognormal(0, 1, len(ids)),
    })
    pred_path = root / "predictions.parquet"
    predictions.to_parquet(pred_path)
    return {"root": root, "store": store_dir, "embeddings": emb_path, "predictions": pred_path,
            "ids": ids.tolist(), "labels": labels.tolist(), "pred": predictions}


@pytest.fixture(scope="session")
def pca_explorer(explore_data):
    """An :class:`Explorer` with the (fast) PCA layout."""
    from aqqua_geo.explore.app import Explorer

    return Explorer.open(explore_data["store"], explore_data["embeddings"], explore_data["predictions"],
                         method="pca", use_cache=False)


def require_chromium(path: Path) -> None:
    """Fail (never skip) when the browser is missing: CI must install it."""
    if not path.exists():
        pytest.fail(f"{path} is missing: the explorer's browser tests need Debian's Chromium; "
                    "install it with `apt-get install -y chromium` (never `playwright install`)", pytrace=False)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    require_chromium(CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page (1400×850) that records console errors in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 850}, accept_downloads=True)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda err: pg.errors.append(str(err)))
    pg.on("console", lambda msg: pg.errors.append(msg.text) if msg.type == "error" else None)
    yield pg
    context.close()


@pytest.fixture
def screenshot(tmp_path):
    """``screenshot(page, name)``: save a PNG under tmp_path and copy it to artifacts/explore/."""
    def take(pg, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        pg.screenshot(path=str(path))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, ARTIFACTS / path.name)
        return path

    return take


def wait_ready(pg) -> None:
    """Wait until the explorer reports ready (or fail with its load error)."""
    pg.wait_for_function("window.aqquaExplorer && (window.aqquaExplorer.ready || window.aqquaExplorer.error)",
                         timeout=30_000)
    err = pg.evaluate("window.aqquaExplorer.error")
    assert err is None, f"explorer failed to load: {err}"


@pytest.fixture(scope="module")
def server(pca_explorer, tmp_path_factory):
    srv = ExplorerServer(pca_explorer, tmp_path_factory.mktemp("exports"), port=0)
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()
