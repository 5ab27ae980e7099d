"""Issue 15: hostile or careless input. Every record of the input is accounted for
(ingested + already present + duplicates + rejected == records == input rows), one bad record
never aborts a run, a run that fails leaves nothing behind, and the store on disk refuses to
be read or written when its files disagree with its manifest."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from aqqua_geo.ingest import ingest, validate
from aqqua_geo.store import AqquaStore
from aqqua_geo.store.envs import close_env
from aqqua_geo.store.manifest import StoreError

from .conftest import UVP6_CONSTANTS, tree_digest

N2 = "import_test/m106_mn01_n2_sml"
N2_TSV = "ecotaxa_m106_mn01_n2_sml.tsv"
FOLDER_SET = UVP6_CONSTANTS + ["instrument=UVP6", "pixel_size_um=73"]


def _accounted(rep) -> None:
    assert rep.records == rep.ingested + rep.exists + rep.duplicates + rep.rejected, rep.summary()


def _n2(m106: Path, tmp: Path) -> Path:
    src = tmp / "src"
    shutil.copytree(m106 / N2, src)
    return src


def _rows(tsv: Path, encoding: str = "utf-8") -> tuple[list[str], list[str], list[list[str]]]:
    lines = tsv.read_text(encoding=encoding).split("\n")
    lines = [ln for ln in lines if ln.strip()]
    return lines[0].split("\t"), lines[1].split("\t"), [ln.split("\t") for ln in lines[2:]]


def _write(tsv: Path, header, types, rows, encoding: str = "utf-8") -> None:
    tsv.write_bytes(("\n".join("\t".join(r) for r in [header, types, *rows]) + "\n").encode(encoding))


def _set(tsv: Path, row: int, column: str, value: str) -> None:
    header, types, rows = _rows(tsv)
    rows[row][header.index(column)] = value
    _write(tsv, header, types, rows)


def _big_table(m106: Path, tmp: Path, n: int = 5) -> tuple[Path, list[str]]:
    """The n2 import table with *n* data rows (rows copied under new ids, same images)."""
    src = _n2(m106, tmp)
    header, types, rows = _rows(src / N2_TSV)
    io_ = header.index("object_id")
    out = []
    for i in range(n):
        r = list(rows[i % len(rows)])
        r[io_] = f"obj_{i}"
        out.append(r)
    _write(src / N2_TSV, header, types, out)
    return src, header


# ---------------------------------------------------------------------------- silent loss
def test_lone_quote_does_not_swallow_rows(m106, tmp_path):
    src, header = _big_table(m106, tmp_path, 5)
    _set(src / N2_TSV, 1, "object_annotation_category", '"Copepoda')
    rep = ingest(src, tmp_path / "s", fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert rep.records == 5  # was 2: csv swallowed rows 3-5 into one quoted field
    s = AqquaStore(tmp_path / "s")
    labels = {**dict(zip(s.object_ids, s.metadata["label"])), **dict(zip(s.duplicates()["object_id"], s.duplicates()["label"]))}
    assert labels["obj_1"] == '"Copepoda' and set(labels) == {f"obj_{i}" for i in range(5)}


def test_quoted_fields_stay_on_their_line(m106, tmp_path):
    src, header = _big_table(m106, tmp_path, 4)
    _set(src / N2_TSV, 0, "object_annotation_category", '"multi')  # opens a quote...
    _set(src / N2_TSV, 2, "object_annotation_category", 'line"')   # ...that "closes" two lines later
    rep = validate(src, fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert rep.records == 4 and rep.rejected == 0


def test_huge_field_rejects_only_its_record(m106, tmp_path):
    src, header = _big_table(m106, tmp_path, 3)
    _set(src / N2_TSV, 1, "object_link", "x" * 200_000)
    rep = ingest(src, tmp_path / "s", fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert rep.rejected_by_reason == {"too_large": 1} and rep.ingested + rep.duplicates == 2
    assert "line 4: field object_link has 200000 characters" in rep.rejections[0]["detail"]


def test_long_object_id_is_rejected_in_validate_and_ingest_alike(m106, tmp_path):
    src, _ = _big_table(m106, tmp_path, 3)
    _set(src / N2_TSV, 0, "object_id", "x" * 2000)
    val = validate(src, fmt="ecotaxa", progress=False)
    rep = ingest(src, tmp_path / "s", fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert val.rejected_by_reason == rep.rejected_by_reason == {"too_large": 1}
    assert (val.ingested + val.duplicates) == (rep.ingested + rep.duplicates) == 2


def test_image_too_large_rejects_only_its_record(uvp6, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for p in sorted((uvp6 / "fiber__9999").glob("*.png"))[:2]:
        shutil.copy(p, src / p.name)
    Image.new("RGB", (8000, 8000), (1, 2, 3)).save(src / "huge.png")
    rep = ingest(src, tmp_path / "s", fmt="folder", constants=FOLDER_SET, progress=False)
    _accounted(rep)
    assert rep.ingested == 2 and rep.rejected_by_reason == {"too_large": 1}
    assert "huge.png: image of 8000×8000 px × 3 channel(s) is larger" in rep.rejections[0]["detail"]


def test_png_decompression_bomb_header_is_rejected_before_decoding(tmp_path):
    from aqqua_geo.ingest.common import decode_image
    from aqqua_geo.store.schema import InvalidRecord

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    with pytest.raises(InvalidRecord) as err:
        decode_image(png, "bomb.png")
    assert err.value.reason == "too_large"


@pytest.mark.parametrize("value", ["-500", "abc"])
def test_ifcb_bad_start_byte_rejects_one_roi(ifcb, ifcb_positions, tmp_path, value):
    src = tmp_path / "bin"
    shutil.copytree(ifcb / "D20130526T095207_IFCB013", src)
    adc = src / "D20130526T095207_IFCB013.adc"
    lines = adc.read_text().splitlines()
    roi_rows = [i for i, ln in enumerate(lines) if int(ln.split(",")[15]) > 0]
    cells = lines[roi_rows[0]].split(",")
    cells[17] = value
    lines[roi_rows[0]] = ",".join(cells)
    adc.write_text("\n".join(lines) + "\n")
    rep = ingest(src, tmp_path / "s", fmt="ifcb", positions=ifcb_positions, progress=False)
    _accounted(rep)
    assert (rep.records, rep.ingested, rep.rejected_by_reason) == (19, 18, {"bad_row": 1})  # was 0 of 19
    assert f"startByte={value!r} is not a non-negative integer" in rep.rejections[0]["detail"]


# ---------------------------------------------------------------------------- counting
def test_latin1_table_is_accepted_and_its_encoding_recorded(m106, tmp_path):
    src = _n2(m106, tmp_path)
    header, types, rows = _rows(src / N2_TSV)
    rows[0][header.index("object_annotation_person_name")] = "Agustín Núñez"
    _write(src / N2_TSV, header, types, rows, encoding="latin-1")
    rep = ingest(src, tmp_path / "s", fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert rep.rejected == 0 and rep.records == 3  # was: 1 bad_encoding rejection for 3 rows
    assert any("read as Latin-1" in n for n in rep.notes)
    raw = AqquaStore(tmp_path / "s").raw().set_index("object_id")
    assert raw.loc["m106_mn01_n2_sml_1", "object_annotation_person_name"] == "Agustín Núñez"
    assert set(raw["tsv_encoding"]) == {"latin-1"}


def test_utf8_with_and_without_bom(m106, tmp_path):
    for bom, enc in ((b"", "utf-8"), (b"\xef\xbb\xbf", "utf-8-sig")):
        src = tmp_path / f"src{len(bom)}"
        shutil.copytree(m106 / N2, src)
        header, types, rows = _rows(src / N2_TSV)
        rows[0][header.index("object_annotation_person_name")] = "Agustín"
        _write(src / N2_TSV, header, types, rows)
        (src / N2_TSV).write_bytes(bom + (src / N2_TSV).read_bytes())
        rep = ingest(src, tmp_path / f"s{len(bom)}", fmt="ecotaxa", progress=False)
        raw = AqquaStore(tmp_path / f"s{len(bom)}").raw().set_index("object_id")
        assert rep.rejected == 0 and raw.loc["m106_mn01_n2_sml_1", "object_annotation_person_name"] == "Agustín"
        assert set(raw["tsv_encoding"]) == {enc} and "object_id" in raw.index.name


def test_missing_roi_is_counted_per_image(ifcb, ifcb_positions, tmp_path):
    src = tmp_path / "bin"
    shutil.copytree(ifcb / "D20130526T095207_IFCB013", src)
    (src / "D20130526T095207_IFCB013.roi").unlink()
    rep = ingest(src, tmp_path / "s", fmt="ifcb", positions=ifcb_positions, progress=False)
    _accounted(rep)
    assert rep.records == 19 and rep.rejected_by_reason == {"missing_image": 19}  # was records 0, rejected 1


def test_every_reason_of_a_record_is_reported(uvp6, tmp_path):
    src = tmp_path / "vpr"
    src.mkdir()
    png = sorted((uvp6 / "fiber__9999").glob("*.png"))[0]
    shutil.copy(png, src / "a.png")
    pd.DataFrame({"path": ["a.png"], "lat": ["10"], "lon": ["20"], "depth": ["5"], "instrument": ["VPR"]}).to_csv(
        tmp_path / "vpr.csv", index=False)
    rep = validate(src, fmt="folder", metadata=tmp_path / "vpr.csv", progress=False)
    _accounted(rep)
    detail = rep.rejections[0]["detail"]
    assert "date/time is missing" in detail and "pixel_size_um is missing" in detail  # both, in one run
    assert rep.rejections[0]["reasons"] == "missing_datetime,missing_pixel_size"
    assert "--set pixel_size_um=VALUE" in detail  # says how to fix it


def test_cli_exits_nonzero_when_nothing_was_ingested(ifcb, tmp_path):
    import typer

    from aqqua_geo.cli import ingest_cmds

    app = typer.Typer()
    ingest_cmds.register(app)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["ingest", str(ifcb), "-f", "ifcb", "-s", str(tmp_path / "s")])
    assert res.exit_code == 1 and "nothing was ingested" in res.output  # was 0


# ---------------------------------------------------------------------------- values
def test_fractional_seconds_are_accepted(m106, tmp_path):
    src = _n2(m106, tmp_path)
    _set(src / N2_TSV, 0, "object_time", "020139.315")
    rep = ingest(src, tmp_path / "s", fmt="ecotaxa", progress=False)
    assert rep.rejected == 0
    when = AqquaStore(tmp_path / "s").record("m106_mn01_n2_sml_1")["datetime"]
    assert (when.hour, when.minute, when.second, when.microsecond) == (2, 1, 39, 315000)


def test_lon_0_360_is_converted_with_a_note(m106, tmp_path):
    src = _n2(m106, tmp_path)
    _set(src / N2_TSV, 0, "object_lon", "200")
    rep = ingest(src, tmp_path / "s", fmt="ecotaxa", progress=False)
    s = AqquaStore(tmp_path / "s")
    assert s.record("m106_mn01_n2_sml_1")["lon"] == -160.0
    assert any("0..360" in n for n in rep.notes)  # not silent any more
    assert "lon=200 (0..360) stored as -160" in s.raw().set_index("object_id").loc["m106_mn01_n2_sml_1", "aqqua_warnings"]


@pytest.mark.parametrize(("column", "value", "reason", "message"), [
    ("object_depth_min", "900", "bad_depth", "depth_min=900 is deeper than depth_max=600"),
    ("process_pixel", "0", "missing_pixel_size", "process_pixel='0' is not a positive pixel size"),
    ("process_pixel", "-3", "missing_pixel_size", "process_pixel='-3' is not a positive pixel size"),
    ("object_date", "20990101", "bad_datetime", "is in the future"),
])
def test_inconsistent_values_are_rejected(m106, tmp_path, column, value, reason, message):
    src = _n2(m106, tmp_path)
    _set(src / N2_TSV, 0, column, value)
    rep = validate(src, fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert rep.rejected_by_reason == {reason: 1} and message in rep.rejections[0]["detail"]


def test_folder_pixel_size_zero_and_negative_volume_are_rejected(uvp6, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    names = sorted((uvp6 / "fiber__9999").glob("*.png"))[:2]
    for p in names:
        shutil.copy(p, src / p.name)
    pd.DataFrame({"path": [p.name for p in names], "pixel_size_um": ["0", "73"], "sampled_volume_l": ["1", "-2"]}).to_csv(
        tmp_path / "t.csv", index=False)
    rep = validate(src, fmt="folder", metadata=tmp_path / "t.csv", constants=UVP6_CONSTANTS + ["instrument=UVP6"],
                   progress=False)
    _accounted(rep)
    assert rep.rejected_by_reason == {"missing_pixel_size": 1, "bad_row": 1}
    assert any("sampled_volume_l=-2.0 is not a positive number" in r["detail"] for r in rep.rejections)


def test_ifcb_day_of_year_400_is_rejected(ifcb, ifcb_positions, tmp_path):
    src = tmp_path / "bin"
    src.mkdir()
    for p in (ifcb / "IFCB5_2012_028_081515").iterdir():
        shutil.copy(p, src / p.name.replace("_028_", "_400_"))
    rep = validate(src, fmt="ifcb", constants={"lat": 41, "lon": -70, "depth": 4}, progress=False)
    _accounted(rep)
    assert rep.ingested == 0 and rep.records == 6 and rep.rejected_by_reason == {"bad_datetime": 6}
    assert "day of year 400 is not in 1..366 of 2012" in rep.rejections[0]["detail"]


def test_duplicated_column_rejects_every_row(m106, tmp_path):
    src = _n2(m106, tmp_path)
    header, types, rows = _rows(src / N2_TSV)
    header.append("object_lat")
    types.append("[f]")
    for r in rows:
        r.append("-50")
    _write(src / N2_TSV, header, types, rows)
    rep = validate(src, fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert rep.records == 3 and rep.rejected_by_reason == {"bad_row": 3}
    assert "column object_lat appears 2 times (columns 2, " in rep.rejections[0]["detail"]
    # the same in a folder table
    img = tmp_path / "imgs"
    img.mkdir()
    shutil.copy(next((m106 / N2).glob("*.jpg")), img / "a.jpg")
    (tmp_path / "t.csv").write_text("path,lat,lat\na.jpg,10,20\n")
    rep = validate(img, fmt="folder", metadata=tmp_path / "t.csv", constants=FOLDER_SET, progress=False)
    assert rep.rejected_by_reason == {"bad_row": 1} and "column(s) lat given twice" in rep.rejections[0]["detail"]


# ---------------------------------------------------------------------------- zip bombs
def test_zip_entry_over_the_cap_is_not_inflated(m106, tmp_path, monkeypatch):
    import aqqua_geo.ingest.common as common

    monkeypatch.setattr(common, "MAX_FILE_BYTES", 2 << 20)
    monkeypatch.setattr(common, "MAX_IMAGE_BYTES", 1 << 20)
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in (m106 / N2).iterdir():
            z.write(p, p.name)
        with z.open("bomb.tsv", "w") as fh:
            for _ in range(8):
                fh.write(b"\0" * (1 << 20))  # 8 MB of zeros, ~8 kB compressed
    rep = validate(zpath, fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert rep.rejected_by_reason["too_large"] == 1 and rep.ingested + rep.duplicates == 3
    assert "bomb.tsv: 8388608 bytes (decompressed)" in " ".join(r["detail"] for r in rep.rejections)


# ---------------------------------------------------------------------------- folder ingest
def test_folder_symlinks_dot_names_and_dot_source(uvp6, tmp_path, monkeypatch):
    src = tmp_path / "imgs"
    src.mkdir()
    pngs = sorted((uvp6 / "fiber__9999").glob("*.png"))
    shutil.copy(pngs[0], src / ".a.png")
    outside = tmp_path / "secret.png"
    shutil.copy(pngs[1], outside)
    (src / "link.png").symlink_to(outside)
    (src / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    pd.DataFrame({"path": ["./.a.png", "link.png"], "label": ["dot", "link"]}).to_csv(tmp_path / "t.csv", index=False)
    rep = validate(src, fmt="folder", metadata=tmp_path / "t.csv", constants=FOLDER_SET, progress=False)
    _accounted(rep)
    assert rep.records == 3 and rep.ingested == 1 and rep.rejected_by_reason == {"missing_image": 2}
    details = " ".join(r["detail"] for r in rep.rejections)
    assert "outside" in details and "dangling symbolic link" in details
    monkeypatch.chdir(src)  # `aqqua ingest .`: the source is named after the folder
    rep = ingest(".", tmp_path / "s", fmt="folder", metadata=tmp_path / "t.csv", constants=FOLDER_SET,
                 follow_symlinks=True, progress=False)
    assert rep.source == "imgs" and rep.ingested == 2 and rep.rejected == 1
    assert set(AqquaStore(tmp_path / "s").metadata["label"]) == {"dot", "link"}


def test_similar_source_names_keep_separate_raw_tables(uvp6, tmp_path):
    pngs = sorted((uvp6 / "fiber__9999").glob("*.png"))
    store = tmp_path / "s"
    for i, name in enumerate(("cruise/1", "cruise_1")):
        src = tmp_path / f"src{i}"
        src.mkdir()
        shutil.copy(pngs[i], src / f"img{i}.png")
        ingest(src, store, fmt="folder", source=name, constants=FOLDER_SET, progress=False)
    s = AqquaStore(store)
    assert s.raw("cruise/1")["object_id"].tolist() == ["img0"]
    assert s.raw("cruise_1")["object_id"].tolist() == ["img1"]


def test_failed_run_leaves_no_journal_or_phantom_source(uvp6, m106, tmp_path):
    new = tmp_path / "new"
    with pytest.raises(KeyError):
        ingest(uvp6, new, fmt="folder", mapping={"lat": "nope"}, metadata=uvp6.parent / "uvp6_vignettes.metadata.csv",
               progress=False)
    assert not new.exists()
    store = tmp_path / "s"
    ingest(m106 / N2, store, fmt="ecotaxa", progress=False)
    before = tree_digest(store)
    with pytest.raises(KeyError):
        ingest(uvp6, store, fmt="folder", mapping={"lat": "nope"}, metadata=uvp6.parent / "uvp6_vignettes.metadata.csv",
               progress=False)
    assert tree_digest(store) == before and not (store / ".journal").exists()
    assert [e["source"] for e in AqquaStore(store).manifest["sources"]] == ["m106_mn01_n2_sml"]


# ---------------------------------------------------------------------------- store on disk
@pytest.fixture()
def store(m106, tmp_path) -> Path:
    path = tmp_path / "store"
    ingest(m106 / "import_test", path, fmt="ecotaxa", progress=False)
    return path


def _part(store: Path, kind: str) -> Path:
    """The first part file of table *kind* listed by the manifest."""
    return store / json.loads((store / "manifest.json").read_text())["tables"][kind][0]["file"]


def test_deleted_metadata_refuses_to_open_or_write(store, m106):
    part = _part(store, "harmonised")
    part.unlink()
    with pytest.raises(StoreError, match=f"{part.name} is missing but the manifest lists 8 rows"):
        AqquaStore(store)  # was: "0 objects", rc 0
    before = tree_digest(store)
    with pytest.raises(StoreError, match=f"{part.name} is missing"):
        ingest(m106 / "ref_exports/doi", store, fmt="ecotaxa", progress=False)  # was: published the new source only
    assert tree_digest(store) == before


def test_deleted_raw_table_refuses_to_write(store, m106):
    part = _part(store, "raw")
    part.unlink()
    with pytest.raises(StoreError, match=f"tables/raw/{part.name} is missing"):
        ingest(m106 / "ref_exports/doi", store, fmt="ecotaxa", progress=False)


def test_readers_see_consistent_snapshots_during_publishes(store, uvp6, tmp_path):
    pngs = sorted((uvp6 / "fiber__9999").glob("*.png"))
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                s = AqquaStore(store)
                if len(s.object_ids) != s.manifest["counts"]["objects"]:  # the rows of the parts it lists
                    errors.append(f"{len(s.object_ids)} rows vs manifest {s.manifest['counts']['objects']}")
            except Exception as err:  # noqa: BLE001
                errors.append(repr(err))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(6):
            src = tmp_path / f"p{i}"
            src.mkdir()
            shutil.copy(pngs[i], src / f"x{i}.png")
            ingest(src, store, fmt="folder", constants=FOLDER_SET, progress=False)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert len(AqquaStore(store)) == 8 + 6


_READ_ONE = "import sys; from aqqua_geo.store import AqquaStore; s = AqquaStore(sys.argv[1]); [s[i] for i in range(len(s))]"


def test_truncated_shard_is_a_clear_error_not_sigbus(store):
    shard = store / "images" / "shard-0000.lmdb"
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    res = subprocess.run([sys.executable, "-c", _READ_ONE, str(store)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, (res.returncode, res.stderr[-500:])  # was -7 (SIGBUS, "Bus error", 135)
    assert "image shard is truncated" in res.stderr
    import typer

    from aqqua_geo.cli import store_cmds

    app = typer.Typer()
    store_cmds.register(app)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["info", str(store)])
    assert res.exit_code == 1 and "PROBLEM" in res.output and "truncated" in res.output  # was: healthy


def test_info_check_verifies_every_blob(store):
    import lmdb
    import typer

    from aqqua_geo.cli import store_cmds

    app = typer.Typer()
    store_cmds.register(app)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["info", str(store), "--check"])
    assert res.exit_code == 0 and "check: 8/8 images verified" in res.output
    victim = AqquaStore(store).object_ids[2]
    close_env(store / "images" / "shard-0000.lmdb")  # this process's reader handle
    env = lmdb.open(str(store / "images" / "shard-0000.lmdb"), subdir=False)
    with env.begin(write=True) as txn:
        blob = bytearray(txn.get(victim.encode()))
        blob[20:40] = b"\xff" * 20
        txn.put(victim.encode(), bytes(blob))
    env.close()
    res = CliRunner().invoke(app, ["info", str(store), "--check"])
    assert res.exit_code == 1 and victim in res.output


def test_torch_dataset_and_reader_are_fork_safe(store):
    import multiprocessing

    import torch

    s = AqquaStore(store)
    first = s[0]  # the parent reads an image: LMDB is open in this process
    ds = s.torch_dataset()
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                         multiprocessing_context=multiprocessing.get_context("fork"))
    got = {item["object_id"]: item["image"] for item in loader}
    assert len(got) == len(s)
    np.testing.assert_array_equal(np.asarray(got[s.object_ids[0]]), first)
    assert s[1] is not None  # the parent still reads


def test_decode_error_names_the_object(store):
    import lmdb

    s = AqquaStore(store)
    victim = s.object_ids[0]
    s.close()
    close_env(store / "images" / "shard-0000.lmdb")  # this process's reader handle
    env = lmdb.open(str(store / "images" / "shard-0000.lmdb"), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(victim.encode(), b"AQ" + b"\x01\x02" + b"\x00" * 20)
    env.close()
    with pytest.raises(StoreError, match=f"{victim}: image in .*shard-0000.lmdb"):
        AqquaStore(store).get(victim)


@pytest.mark.parametrize("damage", ["manifest_json", "manifest_list", "metadata_garbage", "metadata_columns"])
def test_damaged_store_files_are_clear_errors(store, damage):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if damage == "manifest_json":
        (store / "manifest.json").write_text('{"format": "aqqua", ')
    elif damage == "manifest_list":
        (store / "manifest.json").write_text("[1, 2]")
    elif damage == "metadata_garbage":
        _part(store, "harmonised").write_bytes(b"PAR1 not really")
    else:
        pq.write_table(pa.table({"x": list(range(8))}), _part(store, "harmonised"))
    with pytest.raises(StoreError, match="manifest|part-"):
        AqquaStore(store)


def test_corrupt_zip_member_rejects_its_record_only(m106, tmp_path):
    zpath = tmp_path / "src.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as z:
        for p in sorted((m106 / N2).iterdir()):
            z.write(p, p.name)
    data = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as z:
        info = z.getinfo("m106_mn01_n2_sml_1081.jpg")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 100:start + 140] = b"\x00" * 40  # bad CRC
    zpath.write_bytes(bytes(data))
    rep = validate(zpath, fmt="ecotaxa", progress=False)
    _accounted(rep)
    assert rep.rejected_by_reason == {"corrupt_image": 1} and "cannot be read from the archive" in rep.rejections[0]["detail"]


def test_any_decoder_error_is_one_corrupt_record(uvp6, tmp_path, monkeypatch):
    from aqqua_geo.ingest import common

    src = tmp_path / "imgs"
    src.mkdir()
    for p in sorted((uvp6 / "fiber__9999").glob("*.png"))[:2]:
        shutil.copy(p, src / p.name)
    real_open = common.Image.open
    calls = []

    def flaky(fp, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise EOFError("crafted file")
        return real_open(fp, *a, **k)

    monkeypatch.setattr(common.Image, "open", flaky)
    rep = validate(src, fmt="folder", constants=FOLDER_SET, progress=False)
    _accounted(rep)
    assert rep.rejected_by_reason == {"corrupt_image": 1} and rep.ingested == 1
