"""Format 2 at scale: parallel == serial, kill and resume, commit replay, index rollback,
version-1 stores, compaction, lazy filters."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqqua_geo.ingest import ingest
from aqqua_geo.store import AqquaStore, StoreWriter
from aqqua_geo.store.commit import commit
from aqqua_geo.store.index import DedupIndex, _pack_kept, _unpack_kept
from aqqua_geo.store.maintenance import compact, upgrade
from aqqua_geo.store.writer import lock_store, unlock_store

from .conftest import UVP6_CONSTANTS

V1 = Path(__file__).parents[1] / "data" / "store_v1"


def assert_same_store(a: Path, b: Path) -> None:
    """Same objects (rows, order, every harmonised column), pixels, raw, rejections, duplicates."""
    sa, sb = AqquaStore(a), AqquaStore(b)
    pd.testing.assert_frame_equal(sa.metadata, sb.metadata)
    for name in ("raw", "rejected", "duplicates"):
        fa, fb = getattr(sa, name)(), getattr(sb, name)()
        pd.testing.assert_frame_equal(fa.reset_index(drop=True), fb.reset_index(drop=True))
    for (_, ia), (_, ib) in zip(sa.iter_chunks(200), sb.iter_chunks(200)):
        for x, y in zip(ia, ib):
            np.testing.assert_array_equal(x, y)
    assert sa.manifest["counts"] == sb.manifest["counts"]
    assert not (a / ".journal").exists() and not (b / ".journal").exists()


def _rec(**kw) -> dict:
    base = dict(instrument="UVP6", datetime="2020-01-01T10:00:00Z", lat=43.7, lon=7.3, depth_min=5.0,
                depth_max=10.0, pixel_size_um=73.0, label="a", label_status="validated")
    return {**base, **kw}


def test_parallel_ingest_equals_serial(uvp6, m106, tmp_path):
    serial, par = tmp_path / "serial", tmp_path / "par"
    for s in (serial, par):
        ingest(m106 / "import_test", s, fmt="ecotaxa", progress=False)  # appending to an existing store
    # 630 records in 7 chunks: the 60 duplicates fall across chunks, resolved in source order
    rs = ingest(uvp6, serial, fmt="folder", constants=UVP6_CONSTANTS, chunk_records=100, progress=False)
    rp = ingest(uvp6, par, fmt="folder", constants=UVP6_CONSTANTS, chunk_records=100, workers=2, progress=False)
    assert (rp.ingested, rp.duplicates, rp.exists, rp.rejected) == (rs.ingested, rs.duplicates, rs.exists, rs.rejected)
    assert rs.duplicates == 60
    assert_same_store(serial, par)
    # one chunk for everything gives the same store too (chunking is not a decision)
    one = tmp_path / "one"
    ingest(m106 / "import_test", one, fmt="ecotaxa", progress=False)
    ingest(uvp6, one, fmt="folder", constants=UVP6_CONSTANTS, chunk_records=10_000, progress=False)
    assert_same_store(serial, one)


def test_source_tree_travels_to_workers_as_listed(m106, tmp_path):
    """The client's listing is what workers read (pickled once, an archive reopened there):
    same names, same refused links, same bytes; a zipped source ingests in parallel as in series."""
    import os
    import pickle
    import zipfile

    from aqqua_geo.ingest.common import InvalidRecord, SourceTree

    folder = tmp_path / "src"
    shutil.copytree(m106 / "ref_exports/doi", folder)
    os.symlink(tmp_path / "nowhere.png", folder / "dangling.png")
    zpath = tmp_path / "doi.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in (m106 / "ref_exports/doi").rglob("*"):
            if p.is_file():
                z.write(p, p.relative_to(m106 / "ref_exports/doi").as_posix())
    for src in (folder, zpath):
        tree = SourceTree(src)
        copy = pickle.loads(pickle.dumps(tree))
        assert copy.files() == tree.files() and copy.files()
        assert all(copy.exists(n) for n in tree.files())
        name = next(n for n in tree.files() if n.endswith(".tsv"))
        assert copy.read_bytes(name) == tree.read_bytes(name)
    with pytest.raises(InvalidRecord, match="dangling symbolic link"):
        pickle.loads(pickle.dumps(SourceTree(folder))).read_bytes("dangling.png")
    serial, par = tmp_path / "serial", tmp_path / "par"
    rs = ingest(zpath, serial, fmt="ecotaxa", source="doi", chunk_records=4, progress=False)
    rp = ingest(zpath, par, fmt="ecotaxa", source="doi", chunk_records=4, workers=2, progress=False)
    assert (rp.records, rp.ingested, rp.duplicates) == (rs.records, rs.ingested, rs.duplicates)
    assert rs.records == 12 and rs.duplicates  # 12 records in 3 chunks, duplicates among them
    assert_same_store(serial, par)


def test_local_cluster_workers_start_ready_to_stage():
    """The parallel ingest's LocalCluster workers have the staging code imported at start (not
    in their first chunk), keep a user's own preloads, and run without the sampling profiler."""
    import dask
    import distributed  # noqa: F401 - its config defaults exist before the override below

    from aqqua_geo.ingest.runner import _close_client, _dask_client

    def state():
        import sys

        import dask as d

        return ("aqqua_geo.store.writer" in sys.modules, d.config.get("distributed.worker.preload"),
                d.config.get("distributed.worker.profile.enabled"))

    with dask.config.set({"distributed.worker.preload": ["json"]}):
        client, cluster = _dask_client(1, None)
    try:
        (imported, preload, profile), = client.run(state).values()
    finally:
        _close_client(client, cluster)
    assert imported and preload == ["json", "aqqua_geo.ingest.preload_worker"] and profile is False


def _stage(store: Path, name: str, items) -> Path:
    with StoreWriter(store, source="s", source_format="test", session=name, publish=False) as w:
        for oid, img, rec in items:
            w.add(oid, img, rec, {"orig": oid}, file="f.csv", record_name=f"line {oid}")
    return w.session_dir


def test_commit_replays_sessions_in_order_like_one_writer(tmp_path):
    """Cross-session cases: same id + same pixels (exists), same id + other pixels (rejected,
    and its in-session duplicate becomes the kept object), same pixels (duplicate of the first)."""
    a, b, c = (np.full((3, 4), v, np.uint8) for v in (1, 2, 3))
    s1 = [("x", a, _rec()), ("y", b, _rec(label="b"))]
    s2 = [("y", c, _rec()), ("z", c, _rec(label="c")), ("w", a, _rec(label="q")), ("x", a, _rec())]
    par, ser = tmp_path / "par", tmp_path / "ser"
    sessions = [_stage(par, "k0", s1), _stage(par, "k1", s2)]
    lock = lock_store(par)
    try:
        rep = commit(par, sessions)
    finally:
        unlock_store(lock)
    with StoreWriter(ser, source="s", source_format="test", session="one") as w:
        for oid, img, rec in s1 + s2:
            try:
                w.add(oid, img, rec, {"orig": oid}, file="f.csv", record_name=f"line {oid}")
            except Exception as err:  # the serial writer raises; the runner would reject it
                w.reject(file="f.csv", record=f"line {oid}", reason=err.reason,
                         detail=f"f.csv: line {oid}: {err.detail}", raw={"orig": oid}, object_id=oid)
    s = AqquaStore(par)
    assert s.object_ids == ["x", "y", "z"] and (rep.added, rep.duplicates, rep.exists) == (3, 1, 1)
    np.testing.assert_array_equal(s.get("z"), c)
    assert s.duplicates()[["object_id", "kept_object_id", "conflicting_label"]].values.tolist() == [["w", "x", True]]
    assert s.rejected()["detail"].tolist() == ["f.csv: line y: y: object id already in the store with different pixels"]
    assert_same_store(par, ser)


_KILL_PARALLEL = """
import sys, time
import aqqua_geo.ingest.folder as folder
_decode = folder.decode_image
folder.decode_image = lambda data, name: (time.sleep(0.003), _decode(data, name))[1]
from aqqua_geo.ingest import ingest
ingest(sys.argv[1], sys.argv[2], fmt="folder", constants=sys.argv[3:], batch_size=30, chunk_records=150,
       workers=2, progress=False)
"""


def test_kill9_parallel_client_then_serial_rerun_equals_uninterrupted(uvp6, tmp_path):
    store, ref = tmp_path / "killed", tmp_path / "ref"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_PARALLEL, str(uvp6), str(store), *UVP6_CONSTANTS],
                            start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while len(list((store / ".journal").glob("*/batch-000002"))) < 2:
            assert proc.poll() is None, "ingest finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        import os

        os.killpg(proc.pid, signal.SIGKILL)  # the client and its Dask workers
        proc.wait()
    assert not (store / "manifest.json").exists()  # nothing was committed
    ingest(uvp6, store, fmt="folder", constants=UVP6_CONSTANTS, batch_size=30, chunk_records=150, progress=False)
    ingest(uvp6, ref, fmt="folder", constants=UVP6_CONSTANTS, batch_size=30, chunk_records=150, progress=False)
    assert_same_store(store, ref)
    rep = ingest(uvp6, store, fmt="folder", constants=UVP6_CONSTANTS, chunk_records=150, progress=False)
    assert rep.ingested == 0 and rep.duplicates == 0  # idempotent


def test_a_chunk_failing_after_earlier_chunks_were_merged_publishes_nothing(uvp6, m106, tmp_path, monkeypatch):
    """Chunks are merged into the commit as they are staged: a failure in chunk 3 comes after
    chunks 0-2 wrote their images and parts, yet the store stays at its last manifest, and the
    re-run ends as an uninterrupted ingest."""
    import aqqua_geo.ingest.folder as folder

    store, ref = tmp_path / "failed", tmp_path / "ref"
    for s in (store, ref):
        ingest(m106 / "import_test", s, fmt="ecotaxa", progress=False)
    before = (store / "manifest.json").read_bytes()
    decode, calls = folder.decode_image, []

    def failing(data, name):
        calls.append(name)
        if len(calls) == 350:  # in chunk 3 of 100 records
            raise RuntimeError("disk gone")
        return decode(data, name)

    monkeypatch.setattr(folder, "decode_image", failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        ingest(uvp6, store, fmt="folder", constants=UVP6_CONSTANTS, chunk_records=100, progress=False)
    assert (store / "manifest.json").read_bytes() == before
    assert any((store / "tables" / "harmonised").glob("part-00000002-*"))  # merged, not listed
    assert len(AqquaStore(store)) == len(AqquaStore(ref))
    monkeypatch.setattr(folder, "decode_image", decode)
    for s in (store, ref):
        ingest(uvp6, s, fmt="folder", constants=UVP6_CONSTANTS, chunk_records=100, progress=False)
    assert_same_store(store, ref)


def test_index_keys_of_a_commit_killed_before_its_manifest_are_rolled_back(tmp_path):
    with StoreWriter(tmp_path, source="s", source_format="test") as w:
        w.add("a", np.ones((2, 2), np.uint8), _rec())
    idx = DedupIndex(tmp_path, write=True)
    idx.stage(2, [("ghost", "ab" * 16, None, 0)], [("g2", "a")], [])  # ...and then the kill
    idx.close()
    with StoreWriter(tmp_path, source="s", source_format="test") as w:  # reconciles on open
        assert w.add("ghost", np.full((2, 2), 9, np.uint8), _rec()) == "added"
        assert w.add("g2", np.full((2, 2), 8, np.uint8), _rec()) == "added"
    assert AqquaStore(tmp_path).object_ids == ["a", "ghost", "g2"]


_ID_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=12)  # incl. surrogates


@settings(max_examples=300, deadline=None)
@given(object_id=_ID_TEXT, label=st.one_of(st.none(), _ID_TEXT))
def test_kept_values_are_the_json_every_index_so_far_holds(object_id, label):
    """The fast path writes json.dumps' bytes exactly, so old and new indexes hold one format."""
    expected = json.dumps([object_id, label], ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert _pack_kept(object_id, label) == expected
    assert _unpack_kept(_pack_kept(object_id, label)) == (object_id, label)


def test_stage_writes_every_key_and_its_pending_entry(tmp_path):
    idx = DedupIndex(tmp_path, write=True)
    kept = [(f"o{i}", f"{i:032x}", None if i % 2 else 'say "hi"', i % 3) for i in (5, 1, 3)]
    idx.stage(1, kept, [("d1", "o1"), ("o5", "o3")], [b"r" * 16])  # a later id pair wins
    assert idx.kept(f"{1:032x}") == ("o1", None) and idx.kept(f"{5:032x}") == ("o5", None)
    assert idx.lookup_id("o3") == ("K", f"{3:032x}", 0)
    assert idx.lookup_id("d1") == ("D", "", "o1") and idx.lookup_id("o5") == ("D", "", "o3")
    assert idx.has_rejection(b"r" * 16)
    with idx.env.begin(db=idx.db["pending"]) as txn:
        assert txn.stat(idx.db["pending"])["entries"] == 3 + 4 + 1  # 3 hashes, 4 distinct ids, 1 rejection
    idx.reconcile(0)  # never committed: everything staged is rolled back
    assert idx.kept(f"{1:032x}") is None and not idx.has_rejection(b"r" * 16)
    with pytest.raises(KeyError):
        idx.lookup_id("d1")


def test_version1_store_reads_and_upgrades(m106, tmp_path):
    store = tmp_path / "v1"
    shutil.copytree(V1, store)
    v1 = AqquaStore(store)
    assert v1.manifest["format_version"] == "1.0" and len(v1) == 8 and len(v1.duplicates()) == 3
    assert v1.verify() == []  # every image decodes to its content hash
    before = (v1.metadata, v1.raw(), v1.duplicates(), v1.rejected(), [v1.get(o) for o in v1.object_ids])
    with pytest.raises(ValueError, match="aqqua store upgrade"):
        ingest(m106 / "ref_exports/doi", store, fmt="ecotaxa", progress=False)
    assert upgrade(store) and not upgrade(store)
    v2 = AqquaStore(store)
    assert v2.manifest["format_version"] == "2.0"
    pd.testing.assert_frame_equal(v2.metadata, before[0])
    for x, y in zip((v2.raw(), v2.duplicates(), v2.rejected()), before[1:4]):
        pd.testing.assert_frame_equal(x, y)
    for oid, img in zip(v2.object_ids, before[4]):
        np.testing.assert_array_equal(v2.get(oid), img)
    # the upgraded store de-duplicates against its old content through the new index
    rep = ingest(m106 / "import_test", store, fmt="ecotaxa", progress=False)
    assert (rep.ingested, rep.duplicates, rep.exists) == (0, 0, 11)


def test_compact_merges_parts_without_changing_content(uvp6, tmp_path):
    store, ref = tmp_path / "s", tmp_path / "ref"
    pngs = sorted((uvp6 / "fiber__9999").glob("*.png"))[:5]
    for s in (store, ref):
        for i, png in enumerate(pngs):
            src = tmp_path / f"src{i}"
            src.mkdir(exist_ok=True)
            shutil.copy(png, src / f"x{i}.png")
            rep = ingest(src, s, fmt="folder", constants=[*UVP6_CONSTANTS, "instrument=UVP6", "pixel_size_um=73"],
                         progress=False)
            assert rep.ingested == 1
    summary = compact(store)
    assert summary["harmonised"] == (5, 1) and summary["raw"] == (5, 5)  # raw parts: one per source
    m = json.loads((store / "manifest.json").read_text())
    assert all((store / p["file"]).is_file() for p in m["tables"]["harmonised"])
    assert len(list((store / "tables" / "harmonised").glob("*.parquet"))) == 1  # replaced parts deleted
    assert_same_store(store, ref)


def test_filters_are_lazy_and_cross_the_date_line(tmp_path):
    lons = [179.5, -179.5, 0.0, 170.0]
    with StoreWriter(tmp_path, source="s", source_format="test") as w:
        for i, lon in enumerate(lons):
            w.add(f"o{i}", np.full((2, 2), i, np.uint8), _rec(lon=lon, datetime=f"2020-0{i + 1}-01T00:00:00Z",
                                                              depth_min=10.0 * i, depth_max=10.0 * i + 5))
    s = AqquaStore(tmp_path)
    view = s.filter(bbox=(175, -90, -175, 90))
    assert view._keys is None and len(view) == 2 and view._keys is None  # counted by a scan, not loaded
    assert view.object_ids == ["o0", "o1"] and view.get("o1")[0, 0] == 1
    with pytest.raises(KeyError):
        view.get("o2")
    assert s.filter(start="2020-02-01", end="2020-04-01", depth=(16, 25)).object_ids == ["o2"]
    assert s.filter(bbox=(175, -90, -175, 90)).filter(end="2020-02-01").object_ids == ["o0"]
    assert s.metadata_columns(["lon"])["lon"].tolist() == lons
    assert "o3" in s and "nope" not in s and s.record("o3")["lon"] == 170.0
