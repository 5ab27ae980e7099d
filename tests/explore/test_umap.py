"""The UMAP path, computed once (numba's JIT costs most of a minute per process)."""

from __future__ import annotations

import numpy as np
import pytest

from aqqua_geo.explore import layout as layout_mod
from aqqua_geo.explore.app import Explorer
from aqqua_geo.explore.layout import cache_path, layout_params
from aqqua_geo.explore.static_site import write_static

from .conftest import wait_ready

pytestmark = pytest.mark.slow
UMAP_KW = {"n_neighbors": 10, "min_dist": 0.1}


@pytest.fixture(scope="module")
def umap_explorer(explore_data):
    return Explorer.open(explore_data["store"], explore_data["embeddings"], explore_data["predictions"],
                         method="umap", **UMAP_KW)


def test_umap_layout_keeps_classes_together_and_is_cached(umap_explorer, explore_data, monkeypatch):
    xy = umap_explorer.xy
    assert xy.shape == (len(explore_data["ids"]), 2) and np.isfinite(xy).all()
    # neighbours in the 2-D map share the (embedding-defining) label far above chance
    labels = np.array(explore_data["labels"])
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    knn = np.argsort(d, axis=1)[:, :5]
    agreement = (labels[knn] == labels[:, None]).mean()
    chance = sum((labels == c).mean() ** 2 for c in set(labels))
    assert agreement > 0.8 > 3 * chance
    # cached beside the embeddings; reopening never recomputes
    path = cache_path(umap_explorer.embeddings, layout_params("umap", **UMAP_KW))
    assert path.parent.name == "embeddings.zarr.layout" and path.is_file()

    def no_compute(*_a, **_k):
        raise AssertionError("layout recomputed despite the cache")

    monkeypatch.setattr(layout_mod, "compute_layout", no_compute)
    again = Explorer.open(explore_data["store"], explore_data["embeddings"], method="umap", **UMAP_KW)
    np.testing.assert_array_equal(again.xy, xy)


@pytest.mark.browser
def test_umap_static_page(umap_explorer, page, tmp_path, screenshot):
    index = write_static(umap_explorer, tmp_path / "site", progress=False)
    page.goto(index.as_uri())
    wait_ready(page)
    assert page.evaluate("aqquaExplorer.nPoints") == len(umap_explorer)
    first = str(umap_explorer.embeddings.object_ids[0])
    assert page.evaluate("(id) => aqquaExplorer.layout(id)", first) == pytest.approx(umap_explorer.xy[0].tolist())
    screenshot(page, "umap_static")
    assert page.errors == []
