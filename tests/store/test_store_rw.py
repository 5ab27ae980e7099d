"""StoreWriter / AqquaStore: round trips, filters, append, dedup, journal resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aqqua_geo.store import HARMONISED_SCHEMA, AqquaStore, InvalidRecord, StoreWriter, codec


def _rec(**kw) -> dict:
    base = dict(instrument="UVP6", datetime="2020-01-01T10:00:00Z", lat=43.7, lon=7.3, depth_min=5.0,
                depth_max=10.0, pixel_size_um=73.0, label="Copepoda", label_status="validated")
    base.update(kw)
    return base


def _write(store: Path, source: str, items, **kw) -> StoreWriter:
    with StoreWriter(store, source=source, source_format="test", source_path="mem", **kw) as w:
        for oid, img, rec in items:
            w.add(oid, img, rec, {"orig_id": oid, "note": "é"})
    return w


shapes = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.integers(1, 20), st.integers(1, 20), st.sampled_from([1, 3, 4])),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            arrays(np.uint8, shapes),
            st.floats(-90, 90), st.floats(-180, 180), st.floats(0, 6000),
            st.floats(0.1, 200), st.one_of(st.none(), st.text(min_size=1, max_size=12)),
            st.datetimes(min_value=pd.Timestamp("1950-01-01").to_pydatetime(),
                         max_value=pd.Timestamp("2025-01-01").to_pydatetime()),  # future dates are rejected
        ),
        min_size=1, max_size=8,
    )
)
def test_store_round_trip(tmp_path_factory, items):
    store = tmp_path_factory.mktemp("s")
    expected = {}
    with StoreWriter(store, source="hyp", source_format="test") as w:
        for i, (img, lat, lon, depth, px, label, when) in enumerate(items):
            rec = _rec(lat=lat, lon=lon, depth_min=depth, depth_max=depth, pixel_size_um=px, label=label,
                       label_status=None, datetime=when)
            if w.add(f"id{i}", img, rec, {"k": str(i)}) == "added":
                expected[f"id{i}"] = (img, rec)
    s = AqquaStore(store)
    assert sorted(s.object_ids) == sorted(expected)
    for oid, (img, rec) in expected.items():
        np.testing.assert_array_equal(s.get(oid), img)
        row = s.record(oid)
        assert row["lat"] == rec["lat"] and row["lon"] == rec["lon"] and row["pixel_size_um"] == rec["pixel_size_um"]
        assert row["label"] == (rec["label"] if rec["label"] and rec["label"].strip() else None)
        assert row["datetime"].replace(tzinfo=None) == pd.Timestamp(rec["datetime"]).floor("us").to_pydatetime()
        assert (row["height"], row["width"]) == img.shape[:2]


def test_layout_schema_units_and_manifest(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (10 + i, 12), dtype=np.uint8) for i in range(5)]
    _write(tmp_path, "src", [(f"o{i}", im, _rec()) for i, im in enumerate(imgs)])
    assert (tmp_path / "images" / "shard-0000.lmdb").is_file()
    assert not (tmp_path / ".journal").exists()
    m = json.loads((tmp_path / "manifest.json").read_text())
    parts = m["tables"]["harmonised"]
    assert [p["rows"] for p in parts] == [5] and parts[0]["file"].startswith("tables/harmonised/part-")
    schema = pq.read_schema(tmp_path / parts[0]["file"])
    assert schema.remove_metadata() == HARMONISED_SCHEMA.remove_metadata()
    units = json.loads(schema.metadata[b"aqqua.units"])
    assert units["pixel_size_um"] == "um/pixel" and units["sampled_volume_l"] == "L"
    assert m["format"] == "aqqua" and m["format_version"] == "2.0" and m["generation"] == 1
    assert m["counts"]["objects"] == 5 and m["counts"]["by_instrument"] == {"UVP6": 5}
    assert m["sources"][0]["source"] == "src" and m["sources"][0]["n_ingested"] == 5
    raw = pd.read_parquet(tmp_path / m["tables"]["raw"][0]["file"])
    assert list(raw["note"]) == ["é"] * 5 and (raw["object_id"] == raw["kept_object_id"]).all()
    s = AqquaStore(tmp_path)
    assert len(s) == 5 and s[1].shape == (11, 12) and s[-1].shape == (14, 12)
    np.testing.assert_array_equal(s.get_many(["o3", 0])[0], imgs[3])
    with pytest.raises(KeyError, match="'nope' not in"):
        s.get("nope")
    with pytest.raises(IndexError, match="out of range"):
        s[5]


def test_filters_and_chunks(tmp_path):
    items = []
    for i in range(12):
        rec = _rec(instrument="IFCB" if i % 3 == 0 else "UVP6", lat=-60 + 10 * i, lon=-175 + 30 * i,
                   datetime=f"20{10 + i}-06-01T00:00:00", depth_min=10 * i, depth_max=10 * i + 5,
                   label=None if i % 4 == 0 else "x", label_status=None)
        items.append((f"o{i:02d}", np.full((4, 4), i, np.uint8), rec))
    _write(tmp_path, "src", items)
    s = AqquaStore(tmp_path)
    assert len(s.filter(instrument="IFCB")) == 4
    assert len(s.filter(instrument=["IFCB", "UVP6"])) == 12
    assert s.filter(start="2015-01-01", end="2017-01-01").object_ids == ["o05", "o06"]
    assert s.filter(bbox=(-180, -60, 0, 0)).object_ids == ["o00", "o01", "o02", "o03", "o04", "o05"]
    # antimeridian-crossing box: lon >= 170 or lon <= -150
    assert s.filter(bbox=(170, -90, -150, 90)).object_ids == ["o00"]
    assert len(s.filter(labelled=True)) == 9 and len(s.filter(labelled=False)) == 3
    assert s.filter(depth=(42, 52)).object_ids == ["o04", "o05"]
    sub = s.filter(instrument="UVP6", labelled=True, columns_eq={"source": "src"})
    assert len(sub) == 6 and sub[0].max() == 1 and sub.record(0)["object_id"] == "o01"
    with pytest.raises(KeyError, match="unknown column"):
        s.filter(columns_eq={"nope": 1})
    chunks = list(sub.iter_chunks(chunk_size=4, columns=["lat"]))
    assert [len(df) for df, _ in chunks] == [4, 2]
    assert list(chunks[0][0].columns) == ["object_id", "lat"]
    assert [int(im[0, 0]) for _, ims in chunks for im in ims] == [1, 2, 5, 7, 10, 11]


def test_torch_dataset_workers(tmp_path):
    import torch

    _write(tmp_path, "src", [(f"o{i}", np.full((3, 5), i, np.uint8), _rec(label=str(i))) for i in range(6)])
    ds = AqquaStore(tmp_path).filter(label=["1", "2", "3"]).torch_dataset(transform=lambda d: {**d, "t": 1})
    assert len(ds) == 3
    item = ds[0]
    assert item["object_id"] == "o1" and item["image"].shape == (3, 5) and item["pixel_size_um"] == 73.0
    assert item["instrument"] == "UVP6" and item["label"] == "1" and item["index"] == 0 and item["t"] == 1
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=list)
    got = sorted(int(it["image"][0, 0]) for batch in loader for it in batch)
    assert got == [1, 2, 3]


def test_duplicates_exists_and_conflicting_ids(tmp_path):
    img = np.arange(30, dtype=np.uint8).reshape(5, 6)
    with StoreWriter(tmp_path, source="a", source_format="test") as w:
        assert w.add("k", img, _rec(label="Copepoda"), {}) == "added"
        assert w.add("d", img.copy(), _rec(label="darksphere"), {"n": "1"}) == "duplicate"
        assert w.add("k", img, _rec(), {}) == "exists"
        with pytest.raises(InvalidRecord, match="k: object id already in the store with different pixels") as e:
            w.add("k", img + 1, _rec(), {})
        assert e.value.reason == "duplicate_object_id"
    s = AqquaStore(tmp_path)
    assert s.object_ids == ["k"]
    d = s.duplicates()
    assert d.to_dict("records") == [{"object_id": "d", "kept_object_id": "k", "source": "a", "label": "darksphere",
                                     "kept_label": "Copepoda", "conflicting_label": True}]
    raw = s.raw("a").set_index("object_id")
    assert raw.loc["d", "kept_object_id"] == "k" and raw.loc["d", "n"] == "1"


@pytest.mark.parametrize(
    ("field", "value", "reason", "message"),
    [
        ("datetime", None, "missing_datetime", "o: date/time is missing"),
        ("datetime", "2020-13-45", "bad_datetime", "o: datetime='2020-13-45'"),
        ("lat", 91.0, "bad_position", "o: lat=91.0 outside -90..90"),
        ("lon", -200.0, "bad_position", "o: lon=-200.0 outside -180..180"),
        ("lat", None, "missing_position", "o: lat is missing"),
        ("depth_min", "", "missing_depth", "o: depth_min is missing"),
        ("pixel_size_um", 0, "missing_pixel_size", "o: pixel_size_um=0.0 must be > 0"),
        ("label_status", "guessed", "bad_annotation", "o: label_status='guessed'"),
    ],
)
def test_invalid_records_leave_store_unchanged(tmp_path, field, value, reason, message):
    _write(tmp_path, "a", [("ok", np.ones((2, 2), np.uint8), _rec())])
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.parquet")}
    with StoreWriter(tmp_path, source="a", source_format="test") as w:
        with pytest.raises(InvalidRecord, match=message) as e:
            w.add("o", np.zeros((2, 2), np.uint8), _rec(**{field: value}), {})
        assert e.value.reason == reason
    assert AqquaStore(tmp_path).object_ids == ["ok"]
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.parquet")} == before


def test_lon_0_360_is_wrapped(tmp_path):
    _write(tmp_path, "a", [("o", np.ones((2, 2), np.uint8), _rec(lon=350.0))])
    assert AqquaStore(tmp_path).record("o")["lon"] == pytest.approx(-10.0)


def test_append_second_source(tmp_path):
    _write(tmp_path, "first", [("a1", np.ones((2, 3), np.uint8), _rec())])
    _write(tmp_path, "second", [("b1", np.full((4, 3, 3), 7, np.uint8), _rec(instrument="ZooScan"))])
    s = AqquaStore(tmp_path)
    assert s.object_ids == ["a1", "b1"] and s.get("b1").shape == (4, 3, 3)
    assert [x["source"] for x in s.manifest["sources"]] == ["first", "second"]
    assert s.manifest["counts"]["by_source"] == {"first": 1, "second": 1}
    assert set(s.raw()["source"]) == {"first", "second"}


def test_journal_resume_after_crash(tmp_path):
    """A writer that dies after some batches leaves a journal; the next run completes it."""
    imgs = [np.full((3, 3), i, np.uint8) for i in range(10)]
    w = StoreWriter(tmp_path, source="a", source_format="test", batch_size=3)
    w.open()
    for i in range(7):
        w.add(f"o{i}", imgs[i], _rec(), {})
    w._release()  # simulated crash: no close(); batches 1-2 committed, o6 only buffered
    assert not (tmp_path / "metadata.parquet").exists() and (tmp_path / ".journal").is_dir()
    with StoreWriter(tmp_path, source="a", source_format="test", batch_size=3) as w2:
        results = [w2.add(f"o{i}", imgs[i], _rec(), {}) for i in range(10)]
    assert results == ["exists"] * 6 + ["added"] * 4
    _write(tmp_path / "ref", "a", [(f"o{i}", imgs[i], _rec()) for i in range(10)])
    a, b = AqquaStore(tmp_path), AqquaStore(tmp_path / "ref")
    assert a.object_ids == b.object_ids
    cols = [c for c in a.metadata.columns]
    pd.testing.assert_frame_equal(a.metadata[cols], b.metadata[cols])
    assert all((a[i] == b[i]).all() for i in range(10))


def test_second_writer_is_refused(tmp_path):
    with StoreWriter(tmp_path, source="a", source_format="test"):
        with pytest.raises(RuntimeError, match="another process is writing"):
            StoreWriter(tmp_path, source="b", source_format="test").open()


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an AqQua store"):
        AqquaStore(tmp_path)


def test_shards_roll_over(tmp_path):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (40, 40), dtype=np.uint8) for _ in range(9)]
    _write(tmp_path, "a", [(f"o{i}", im, _rec()) for i, im in enumerate(imgs)], batch_size=3, shard_max_bytes=1)
    s = AqquaStore(tmp_path)
    assert sorted(set(s.metadata["shard"])) == [0, 1, 2]
    assert [x["n_objects"] for x in s.manifest["shards"]] == [3, 3, 3]
    assert all((s.get(f"o{i}") == imgs[i]).all() for i in range(9))
    assert [len(ims) for _, ims in s.iter_chunks(chunk_size=4)] == [4, 4, 1]


def test_large_images_are_segmented_in_leaf_pages(tmp_path):
    import lmdb

    rng = np.random.default_rng(2)
    imgs = {f"o{i}": rng.integers(0, 255, shape, dtype=np.uint8)
            for i, shape in enumerate([(3, 3), (45, 45), (46, 46), (300, 200), (64, 64, 3)])}
    _write(tmp_path, "a", [(k, v, _rec()) for k, v in imgs.items()])
    s = AqquaStore(tmp_path)
    for k, v in imgs.items():
        np.testing.assert_array_equal(s.get(k), v)
    assert [im.shape for _, ims in s.iter_chunks(chunk_size=10) for im in ims] == [v.shape for v in imgs.values()]
    s.close()
    env = lmdb.open(str(tmp_path / "images" / "shard-0000.lmdb"), subdir=False, readonly=True, lock=False)
    try:
        stat = env.stat()
    finally:
        env.close()
    assert stat["overflow_pages"] == 0 and stat["entries"] > len(imgs)  # 60 KB image → ~30 segments


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=60).filter(lambda s: "\0" not in s),
       arrays(np.uint8, st.tuples(st.integers(1, 120), st.integers(1, 120))))
def test_segments_reassemble_in_key_order(object_id, image):
    from aqqua_geo.store import segments

    key, blob = object_id.encode(), codec.encode(image)
    parts = segments.split(key, blob)
    assert [k for k, _ in parts] == sorted(k for k, _ in parts) and parts[0][0] == key
    assert all(len(k) + len(v) + 8 <= 2038 for k, v in parts)  # every node fits a 4 KiB leaf page
    txn = dict(parts)
    np.testing.assert_array_equal(codec.decode(segments.read(txn, key)), image)
