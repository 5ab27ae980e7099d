"""Explorer data model: embeddings reader, layout cache, point payload, records, images, export."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from aqqua_geo.explore.embeddings import read_embeddings
from aqqua_geo.explore.images import to_png
from aqqua_geo.explore.layout import cache_path, get_layout, layout_params
from aqqua_geo.explore.points import build_table, decode_points, encode_points
from aqqua_geo.explore.static_site import image_rows


def _write_zarr(path, vectors, ids):
    g = zarr.open_group(str(path), mode="w")
    g.create_array("embedding", data=np.asarray(vectors, dtype=np.float32))
    g.create_array("object_id", shape=(len(ids),), dtype=str)[:] = np.asarray(ids, dtype=str)
    return path


# ---------------------------------------------------------------- embeddings ---------------------
def test_read_embeddings_matches_what_was_written(explore_data):
    emb = read_embeddings(explore_data["embeddings"])
    assert emb.object_ids.tolist() == explore_data["ids"]
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (len(explore_data["ids"]), 24)


@pytest.mark.parametrize(("vectors", "ids", "message"), [
    (np.ones((4, 3)), ["a", "b", "c"], "N == len(object_id)"),
    (np.ones((3, 3)), ["a", "a", "b"], "duplicate object_id"),
    (np.array([[1, 2], [np.nan, 1], [0, 0]]), ["a", "b", "c"], "non-finite embedding values for object_id ['b']"),
    (np.ones((2, 3)), ["a", "b"], "at least 3 embeddings"),
])
def test_read_embeddings_rejects_bad_files(tmp_path, vectors, ids, message):
    path = _write_zarr(tmp_path / "e.zarr", vectors, ids)
    with pytest.raises(ValueError, match="e.zarr") as err:
        read_embeddings(path)
    assert message in str(err.value)


def test_read_embeddings_refuses_unfinished_predict_store_output(tmp_path):
    path = _write_zarr(tmp_path / "e.zarr", np.ones((3, 2)), ["a", "b", "c"])
    zarr.open_group(str(path), mode="a").create_array("chunk_done", data=np.array([True, False]))
    with pytest.raises(ValueError, match=r"incomplete \(1/2 chunks done\)"):
        read_embeddings(path)


def test_read_embeddings_missing_path_or_not_zarr(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        read_embeddings(tmp_path / "nope.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="folder: not a Zarr group; expected embeddings.zarr"):
        read_embeddings(tmp_path / "folder")


# ---------------------------------------------------------------- layout cache -------------------
def test_pca_layout_is_cached_beside_the_embeddings_and_keyed_by_content(tmp_path):
    rng = np.random.default_rng(0)
    path = _write_zarr(tmp_path / "e.zarr", rng.normal(size=(50, 8)), [f"o{i}" for i in range(50)])
    emb = read_embeddings(path)
    xy = get_layout(emb, "pca")
    cached = cache_path(emb, layout_params("pca"))
    assert cached.parent == tmp_path / "e.zarr.layout" and cached.is_file()
    np.testing.assert_array_equal(np.load(cached), xy)
    # a cache hit returns the stored array (prove it by planting a marker value)
    planted = xy.copy()
    planted[0] = 123.0
    np.save(cached, planted)
    assert get_layout(emb, "pca")[0, 0] == 123.0
    # other data → other key
    path2 = _write_zarr(tmp_path / "f.zarr", rng.normal(size=(50, 8)), [f"o{i}" for i in range(50)])
    assert cache_path(read_embeddings(path2), layout_params("pca")).name != cached.name
    # other params → other key
    assert cache_path(emb, layout_params("umap", n_neighbors=5)) != cache_path(emb, layout_params("umap", n_neighbors=6))


def test_layout_params_reject_unknown_method():
    with pytest.raises(ValueError, match="layout method must be one of"):
        layout_params("tsne")


# ---------------------------------------------------------------- points payload -----------------
_cells = st.one_of(st.none(), st.sampled_from(["UVP6", "IFCB", "Copé,poda", ""]))


@settings(max_examples=30, deadline=None)
@given(cats=st.lists(_cells, min_size=1, max_size=40),
       nums=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=False, width=32), st.none()), min_size=40, max_size=40))
def test_payload_round_trips_categories_and_numbers(cats, nums):
    n = len(cats)
    table = pd.DataFrame({"object_id": [f"id{i}" for i in range(n)], "x": np.arange(n, dtype=np.float32),
                          "y": -np.arange(n, dtype=np.float32), "label": cats,
                          "score": pd.array(nums[:n], dtype="Float64"),
                          "datetime": pd.date_range("2020-01-01", periods=n, freq="h", tz="UTC")})
    header, cols = decode_points(encode_points(table, {"title": "t"}))
    assert header["n"] == n and header["object_ids"] == table["object_id"].tolist() and header["title"] == "t"
    spec = {c["name"]: c for c in header["columns"]}
    cat = spec["label"]["categories"]
    decoded = [cat[c] if c < len(cat) else None for c in cols["label"]]
    assert decoded == cats
    expected = np.array([np.nan if v is None else v for v in nums[:n]], dtype=np.float32)
    np.testing.assert_array_equal(cols["score"], expected)
    ms = table["datetime"].astype("int64").to_numpy() // 1000  # µs → ms
    np.testing.assert_array_equal(cols["datetime"], ms.astype(np.float64))


def test_payload_of_predictions_without_a_classifier(pca_explorer):
    """predict_store without classifier: all-missing nullable string/boolean columns."""
    meta = pca_explorer.store.metadata
    ids = meta["object_id"].to_numpy()[:4]
    pred = pd.DataFrame({"object_id": pd.Series(ids, dtype="string"),
                         "pred_label": pd.Series([None] * 4, dtype="string"),
                         "is_novel": pd.Series([pd.NA, True, False, pd.NA], dtype="boolean"),
                         "novelty_score": np.nan})
    table = build_table(meta, ids, np.zeros((4, 2)), pred)
    header, cols = decode_points(encode_points(table))
    spec = {c["name"]: c for c in header["columns"]}
    assert spec["pred_label"]["categories"] == [] and cols["pred_label"].tolist() == [0, 0, 0, 0]
    assert spec["is_novel"]["categories"] == ["False", "True"] and cols["is_novel"].tolist() == [2, 1, 0, 2]
    assert spec["novelty_score"]["kind"] == "number" and "min" not in spec["novelty_score"]


def test_payload_uses_wider_codes_for_many_categories():
    n = 300
    table = pd.DataFrame({"object_id": [f"id{i}" for i in range(n)], "x": np.zeros(n), "y": np.zeros(n),
                          "sample_id": [f"s{i}" for i in range(n)]})
    header, cols = decode_points(encode_points(table))
    assert header["columns"][2]["dtype"] == "u16" and cols["sample_id"].max() == 299


def test_decode_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="bad magic"):
        decode_points(b"PNG\0....")


def test_build_table_joins_in_embedding_order(explore_data, pca_explorer):
    t = pca_explorer.table
    assert t["object_id"].tolist() == explore_data["ids"]
    pred = explore_data["pred"].set_index("object_id")
    assert (t["pred_label"].to_numpy() == pred.loc[t["object_id"], "pred_label"].to_numpy()).all()
    assert (t["depth_m"] == (t["depth_min"] + t["depth_max"]) / 2).all()
    assert not {"content_hash", "shard"} & set(t.columns)


def test_build_table_refuses_embeddings_of_objects_not_in_the_store(pca_explorer):
    meta = pca_explorer.store.metadata
    with pytest.raises(ValueError, match=r"1 embedded object_id\(s\) are not in the store, e.g. 'ghost'"):
        build_table(meta, np.array([meta["object_id"].iloc[0], "ghost"]), np.zeros((2, 2)))


def test_predictions_covering_a_subset_leave_nan(pca_explorer):
    meta = pca_explorer.store.metadata
    ids = meta["object_id"].to_numpy()[:3]
    pred = pd.DataFrame({"object_id": ids[:1], "pred_label": ["x"], "label": ["clash"]})
    t = build_table(meta, ids, np.zeros((3, 2)), pred)
    assert t["pred_label"].isna().tolist() == [False, True, True] and t["pred_label"].iloc[0] == "x"
    assert t["label"].iloc[0] == meta["label"].iloc[0] and t["label_pred"].iloc[0] == "clash"  # store label kept


# ---------------------------------------------------------------- records, images, export --------
def test_record_and_image_of_an_object(explore_data, pca_explorer):
    oid = explore_data["ids"][5]
    rec = pca_explorer.record(oid)
    assert rec["object_id"] == oid and rec["label"] == explore_data["labels"][5]
    assert rec["datetime"].startswith("2019-01-01") and isinstance(rec["lat"], float)
    png = Image.open(io.BytesIO(pca_explorer.image_png(oid)))
    np.testing.assert_array_equal(np.asarray(png), pca_explorer.store.get(oid))  # native resolution, lossless
    with pytest.raises(KeyError, match="unknown object_id 'nope'"):
        pca_explorer.record("nope")


def test_to_png_caps_size_and_reports_scale():
    img = np.random.default_rng(0).integers(0, 255, size=(300, 120, 3), dtype=np.uint8)
    png, scale = to_png(img, max_side=100)
    assert Image.open(io.BytesIO(png)).size == (40, 100) and scale == pytest.approx(1 / 3)
    png, scale = to_png(img)
    assert Image.open(io.BytesIO(png)).size == (120, 300) and scale == 1.0
    with pytest.raises(ValueError, match="uint8"):
        to_png(img.astype(np.float32))


def test_static_image_rows_are_capped_and_deterministic():
    assert image_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    rows = image_rows(1000, 30)
    assert len(rows) == 30 and len(set(rows)) == 30 and rows.tolist() == sorted(rows.tolist())
    assert image_rows(1000, 30).tolist() == rows.tolist()


def test_export_selection_writes_csv_of_the_selected_ids(explore_data, pca_explorer, tmp_path):
    ids = explore_data["ids"][10:14]
    result = pca_explorer.export_selection(ids, tmp_path / "exp")
    df = pd.read_csv(result["csv"])
    assert result["n"] == 4 and df["object_id"].tolist() == ids
    assert df.columns.tolist() == ["object_id", "sample_id", "instrument", "label", "pred_label"]
    # a second export under the same name never overwrites the first
    first = pca_explorer.export_selection(ids, tmp_path / "exp", name="sel")["csv"]
    second = pca_explorer.export_selection(ids[:1], tmp_path / "exp", name="sel")["csv"]
    assert first.endswith("sel.csv") and second.endswith("sel-2.csv") and len(pd.read_csv(first)) == 4


@pytest.mark.parametrize(("ids", "name", "message"), [
    ([], None, "empty selection"),
    (["a", "a"], None, "duplicate object_ids"),
    (["ghost"], None, "unknown object_id 'ghost'"),
    (None, "../escape", "export name '../escape' must match"),
])
def test_export_selection_bad_input_writes_nothing(explore_data, pca_explorer, tmp_path, ids, name, message):
    ids = explore_data["ids"][:2] if ids is None else ids
    with pytest.raises((ValueError, KeyError), match=message.replace("(", r"\(").replace(")", r"\)")):
        pca_explorer.export_selection(ids, tmp_path / "exp", name=name)
    assert not (tmp_path / "exp").exists()
