"""The three ingestors on the real bundled files."""

from __future__ import annotations

import io
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from aqqua_geo.ingest import ingest, validate
from aqqua_geo.ingest.common import decode_image, parse_date_time
from aqqua_geo.ingest.ifcb import ml_analyzed, parse_bin_id, parse_header, read_adc
from aqqua_geo.store import AqquaStore
from aqqua_geo.store.schema import InvalidRecord

from .conftest import UVP6_CONSTANTS


# ----------------------------------------------------------------------------- EcoTaxa
def test_ecotaxa_import_tsv_with_type_row(m106, tmp_path):
    rep = ingest(m106 / "import_test", tmp_path, fmt="ecotaxa", progress=False)
    # 11 rows; rows 852-854 of n1 point at image 850 under other labels: duplicates, kept once
    assert (rep.records, rep.ingested, rep.duplicates, rep.rejected) == (11, 8, 3, 0)
    s = AqquaStore(tmp_path)
    r = s.record("m106_mn01_n1_sml_822")
    assert r["instrument"] == "ZooScan" and r["pixel_size_um"] == 10.6
    assert r["label"] == "Cyclopoida" and r["label_status"] == "predicted"
    assert r["datetime"] == datetime(2014, 4, 20, 4, 20, tzinfo=timezone.utc)
    assert (r["lat"], r["lon"], r["depth_min"], r["depth_max"]) == (18.0, -24.4166666666667, 600.0, 1000.0)
    assert s.record("m106_mn01_n1_sml_409")["lat"] == pytest.approx(-44.72543333333333)
    dups = s.duplicates().set_index("object_id")
    assert set(dups.index) == {"m106_mn01_n1_sml_852", "m106_mn01_n1_sml_853", "m106_mn01_n1_sml_854"}
    assert (dups["kept_object_id"] == "m106_mn01_n1_sml_850").all() and dups["conflicting_label"].all()
    raw = s.raw("import_test").set_index("object_id")
    assert raw.loc["m106_mn01_n1_sml_853", "kept_object_id"] == "m106_mn01_n1_sml_850"
    assert raw.loc["m106_mn01_n1_sml_822", "process_pixel"] == "10.6"  # every original column kept
    assert len(raw.columns) >= 89
    img = s.get("m106_mn01_n1_sml_822")
    ref = np.asarray(Image.open(m106 / "import_test/m106_mn01_n1_sml/m106_mn01_n1_sml_822.jpg"))
    np.testing.assert_array_equal(img, ref[..., 0] if ref.ndim == 3 else ref)


def test_ecotaxa_weird_trailing_tab_and_iso_dates(m106, tmp_path):
    rep = ingest(m106 / "import_test_weird", tmp_path, fmt="ecotaxa", progress=False)
    s = AqquaStore(tmp_path)
    kept = {**{o: s.record(o)["label"] for o in s.object_ids},
            **dict(zip(s.duplicates()["object_id"], s.duplicates()["label"]))}
    assert kept["m106_mn01_n4_sml_3"] == "Pilimelia"  # "Pilimelia\t" stripped
    assert s.raw("import_test_weird").set_index("object_id").loc["m106_mn01_n4_sml_3", "object_annotation_category"] == "Pilimelia\t"
    assert rep.rejected_by_reason == {"bad_row": 1}  # acq_sub_part 'foo' in a [f] column
    assert "m106_mn01_n4_sml_4: column acq_sub_part is [f] but has 'foo'" in rep.rejections[0]["detail"]


def test_ecotaxa_export_layout_and_zip(m106, tmp_path):
    rep = ingest(m106 / "ref_exports/doi", tmp_path / "a", fmt="ecotaxa", progress=False)
    assert rep.records == 12 and rep.rejected == 0
    s = AqquaStore(tmp_path / "a")
    # object 1111 has two images (img_rank 0 and 1): ids <id> and <id>#1 (kept or duplicate)
    seen = set(s.object_ids) | set(s.duplicates()["object_id"])
    assert {"m106_mn01_n3_sml_1111", "m106_mn01_n3_sml_1111#1"} <= seen and len(seen) == 12
    assert s.record("m106_mn01_n2_sml_1081")["datetime"] == datetime(2014, 4, 20, 4, 20, tzinfo=timezone.utc)
    zpath = tmp_path / "doi.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in (m106 / "ref_exports/doi").rglob("*"):
            if p.is_file():
                z.write(p, p.relative_to(m106 / "ref_exports/doi").as_posix())
    ingest(zpath, tmp_path / "b", fmt="ecotaxa", source="doi", progress=False)
    t = AqquaStore(tmp_path / "b")
    assert t.object_ids == s.object_ids
    pd.testing.assert_frame_equal(t.metadata, s.metadata)


EXPECTED_ISSUES = {  # EcoTaxa's must-reject fixtures, each ingested alone
    "classif_without_state": ("bad_annotation", "given without an annotation status"),
    "predicted_but_what": ("bad_annotation", "given without a category name"),
    "duplicate_in_tsv": ("duplicate_object_id", "m106_mn01_n3_sml_1120: object id given 2 times"),
    "empty_tsv": ("bad_row", "has a header but no data rows"),
    "empty_tsv2": ("bad_row", "empty file"),
    "extra_data_without_header": ("bad_row", "line 3: 90 fields, header has 88"),
    "tsv_too_many_cols": ("bad_row", "64 free sample_ columns, EcoTaxa stores at most 30"),
    "no_relevant_file": ("bad_row", "no EcoTaxa .tsv/.txt file found"),
    "corrupted_img": ("corrupt_image", "cannot decode image"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ISSUES))
def test_ecotaxa_must_reject_fixtures(test_data, tmp_path, name):
    reason, message = EXPECTED_ISSUES[name]
    rep = ingest(test_data / "ecotaxa_import_issues" / name, tmp_path, fmt="ecotaxa", progress=False)
    assert rep.ingested == 0 and rep.rejected_by_reason[reason] >= 1
    assert any(message in r["detail"] for r in rep.rejections if r["reason"] == reason)
    rejected = AqquaStore(tmp_path).rejected()
    assert reason in set(rejected["reason"]) and len(AqquaStore(tmp_path)) == 0


def test_ecotaxa_issue_fixtures_needing_context(test_data, m106, tmp_path):
    issues = test_data / "ecotaxa_import_issues"
    rep = ingest(issues / "tsv_issues", tmp_path, fmt="ecotaxa", progress=False)
    assert rep.rejected_by_reason == {"bad_row": 2, "bad_annotation": 1, "corrupt_image": 1, "missing_image": 1}
    assert rep.ingested == 1  # the 346×225 'too_big' PNG is fine for us
    # acquisition generic_m106_mn01_n1_sml already belongs to sample m106_mn01_n1_sml
    ingest(m106 / "import_test", tmp_path, fmt="ecotaxa", progress=False)
    rep = ingest(issues / "breaking_hierarchy", tmp_path, fmt="ecotaxa", progress=False)
    assert rep.rejected_by_reason == {"bad_row": 1}
    assert "acquisition 'generic_m106_mn01_n1_sml' is in sample 'm106_mn01_n1_sml_brk'" in rep.rejections[0]["detail"]
    # detritus is 84963 twice in import_test n2: the 99999999 of no_classif_id loses
    both = tmp_path / "both"
    shutil.copytree(issues / "no_classif_id", both / "no_classif_id")
    shutil.copytree(m106 / "import_test/m106_mn01_n2_sml", both / "n2")
    rep = validate(both, fmt="ecotaxa", progress=False)
    assert rep.rejected_by_reason == {"bad_annotation": 1} and rep.ingested == 3
    assert "m106_mn01_n3_sml_1: category 'detritus' has id 99999999 here but 84963 elsewhere" in rep.rejections[0]["detail"]


# ----------------------------------------------------------------------------- IFCB
def test_ifcb_bins_with_positions_table(ifcb, ifcb_positions, tmp_path):
    rep = ingest(ifcb, tmp_path, fmt="ifcb", positions=ifcb_positions, progress=False)
    assert (rep.ingested, rep.rejected) == (19 + 6, 0)
    s = AqquaStore(tmp_path)
    v2 = s.record("D20130526T095207_IFCB013_00007")
    assert v2["datetime"] == datetime(2013, 5, 26, 9, 52, 7, tzinfo=timezone.utc)
    assert v2["pixel_size_um"] == pytest.approx(1 / 3.4) and v2["instrument"] == "IFCB"
    assert v2["lat"] == 41.325 and v2["depth_min"] == 4.0
    # ml_analyzed as pyifcb's own test expects (5.0808 ml V2, 0.0033915 ml V1)
    assert v2["sampled_volume_l"] == pytest.approx(5.080841170833334e-3)
    v1 = s.record("IFCB5_2012_028_081515_00002")
    assert v1["datetime"] == datetime(2012, 1, 28, 8, 15, 15, tzinfo=timezone.utc)
    assert v1["sampled_volume_l"] == pytest.approx(0.003391470833333334e-3)
    assert s.get("IFCB5_2012_028_081515_00002").shape == (137, 238)
    assert s.get("D20130526T095207_IFCB013_00007").shape == (34, 88)
    raw = s.raw("ifcb").set_index("object_id")
    assert raw.loc["IFCB5_2012_028_081515_00002", "roiWidth"] == "238" and raw.loc["IFCB5_2012_028_081515_00002", "position_source"] == "user table"


def test_ifcb_without_positions_is_rejected(ifcb, tmp_path):
    rep = ingest(ifcb, tmp_path, fmt="ifcb", progress=False)
    assert rep.ingested == 0 and rep.rejected_by_reason == {"missing_position": 25}
    assert "has no position in its header" in rep.rejections[0]["detail"]
    # constants fix it without a table
    rep = ingest(ifcb, tmp_path, fmt="ifcb", constants={"lat": 41.3, "lon": -70.6, "depth": 4}, progress=False)
    assert rep.ingested == 25


def test_ifcb_empty_bins(test_data, tmp_path):
    rep = ingest(test_data / "ifcb_edge_empty_bins", tmp_path, fmt="ifcb", progress=False)
    assert rep.records == 0 and rep.rejected == 0
    assert sorted(rep.notes) == ["D20150411T205456_IFCB012: empty bin (0 triggers, no ROI)",
                                 "IFCB5_2017_001_033645: empty bin (0 triggers, no ROI)"]
    assert len(AqquaStore(tmp_path)) == 0


def test_ifcb_v1_header_and_adc(ifcb):
    hdr = parse_header((ifcb / "IFCB5_2012_028_081515/IFCB5_2012_028_081515.hdr").read_text())
    assert hdr["Temp"] == "11.4799732421875" and hdr["SyringeStatus"] == "0"
    adc = read_adc((ifcb / "IFCB5_2012_028_081515/IFCB5_2012_028_081515.adc").read_text(), 1)
    assert len(adc) == 7 and list(adc["roiWidth"])[:2] == [96, 238]
    assert ml_analyzed(adc.iloc[:0], hdr, 1) != ml_analyzed(adc.iloc[:0], hdr, 1)  # NaN for an empty bin
    with pytest.raises(ValueError, match="not an IFCB bin id"):
        parse_bin_id("D2013_IFCB")


# ----------------------------------------------------------------------------- folder
def test_uvp6_needs_constants_then_ingests(uvp6, tmp_path):
    rep = validate(uvp6, fmt="folder", progress=False)
    assert rep.rejected_by_reason == {"missing_datetime": 690}
    rep = ingest(uvp6, tmp_path, fmt="folder", constants=UVP6_CONSTANTS, progress=False)
    assert (rep.ingested, rep.duplicates, rep.conflicting_labels) == (630, 60, 60)
    s = AqquaStore(tmp_path)
    r = s.record("Copepoda__6666/10280918")
    assert (r["instrument"], r["pixel_size_um"], r["label"], r["label_status"]) == ("UVP6", 73.0, "Copepoda", "validated")
    assert (r["lat"], r["lon"], r["depth_min"]) == (43.68, 7.32, 50.0)
    d = s.duplicates()
    assert len(d) == 60 and set(d["label"]) == {"darksphere"} and set(d["kept_label"]) == {"Copepoda"}
    assert d["object_id"].str.replace("darksphere__7777/", "").tolist() == d["kept_object_id"].str.replace("Copepoda__6666/", "").tolist()
    raw = s.raw("uvp6_vignettes").set_index("object_id")
    assert raw.loc["Copepoda__6666/10280918", "user_set:lat"] == "43.68"
    assert raw.loc["darksphere__7777/1152272", "kept_object_id"] == "Copepoda__6666/1152272"


def test_folder_with_mapped_table(uvp6, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    names = sorted((uvp6 / "fiber__9999").glob("*.png"))[:3]
    for p in names:
        shutil.copy(p, src / p.name)
    pd.DataFrame({
        "file": [p.name for p in names], "Latitude": ["10.5", "95", "10.5"], "Longitude": ["-20", "-20", "-20"],
        "when": ["2019-07-14T20:38:48Z"] * 3, "Altitude": ["300", "300", "300"], "cls": ["fiber"] * 3,
    }).to_csv(tmp_path / "table.csv", index=False)
    rep = ingest(src, tmp_path / "s", fmt="folder", metadata=tmp_path / "table.csv",
                 mapping={"lat": "Latitude", "lon": "Longitude", "datetime": "when", "altitude": "Altitude", "label": "cls"},
                 constants=["instrument=uvp6", "pixel_size_um=73"], progress=False)
    assert rep.ingested == 2 and rep.rejected_by_reason == {"bad_position": 1}
    assert f"{names[1].stem}: lat=95.0 outside -90..90" in rep.rejections[0]["detail"]
    r = AqquaStore(tmp_path / "s").record(names[0].stem)
    assert (r["depth_min"], r["instrument"], r["label"]) == (-300.0, "UVP6", "fiber")  # lake altitude → negative depth
    with pytest.raises(KeyError, match="mapping lat='nope': no such column"):
        validate(src, fmt="folder", metadata=tmp_path / "table.csv", mapping={"lat": "nope"}, progress=False)


def test_folder_skip_yields_the_same_records_after_the_skipped_positions(uvp6, tmp_path):
    """A later chunk of a parallel ingest skips the first positions without building them."""
    from aqqua_geo.ingest.folder import iter_folder

    src = tmp_path / "imgs"
    src.mkdir()
    names = sorted((uvp6 / "fiber__9999").glob("*.png"))[:5]
    for p in names:
        shutil.copy(p, src / p.name)
    pd.DataFrame({"file": [names[0].name, names[0].name, names[1].name, "absent.png"]}).to_csv(
        tmp_path / "t.csv", index=False)  # a row listed twice (a problem first) and a missing image (last)
    full = list(iter_folder(src, metadata=tmp_path / "t.csv"))
    assert len(full) == 1 + 5 + 1
    for skip in range(len(full) + 2):
        part = list(iter_folder(src, metadata=tmp_path / "t.csv", skip=skip))
        assert len(part) == len(full)
        for i, (a, b) in enumerate(zip(full, part)):
            if i >= skip:
                assert (type(a), a.file, a.record, getattr(a, "object_id", None)) == (
                    type(b), b.file, b.record, getattr(b, "object_id", None))
            else:  # skipped: image records are not built; the table's own problems still are
                assert b is None or (type(b), b.record) == (type(a), a.record)
        assert sum(b is None for b in part) == min(max(skip - 1, 0), 5)


def test_same_pixels_in_other_formats_are_duplicates(uvp6, tmp_path):
    src = tmp_path / "formats"
    src.mkdir()
    grey = Image.open(sorted((uvp6 / "bubble__5555").glob("*.png"))[0])
    grey.save(src / "a.png")
    grey.save(src / "b.tif")
    grey.convert("RGB").save(src / "c.png")  # grey stored as RGB
    grey.save(src / "d.bmp")
    (src / "e.jpg").write_bytes((src / "a.png").read_bytes())  # byte copy under another name
    rep = ingest(src, tmp_path / "s", fmt="folder", constants=UVP6_CONSTANTS + ["instrument=UVP6", "pixel_size_um=73"],
                 progress=False)
    assert (rep.ingested, rep.duplicates) == (1, 4)


# ----------------------------------------------------------------------------- parsers
@settings(max_examples=60, deadline=None)
@given(st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(2090, 12, 31)).map(lambda d: d.replace(microsecond=0)),
       st.sampled_from(["compact", "iso", "hhmm"]))
def test_parse_date_time_round_trip(when, style):
    if style == "compact":
        date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    elif style == "iso":
        date, time = when.strftime("%Y-%m-%d"), when.strftime("%H:%M:%S")
    else:  # EcoTaxa's HHMM with leading zeros dropped ("420" = 04:20)
        when = when.replace(second=0)
        date, time = when.strftime("%Y%m%d"), when.strftime("%H%M").lstrip("0") or "0"
    got = parse_date_time(date, time, "x")
    assert got == when.replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(("date", "time", "reason"), [
    ("20140433", "9920", "bad_datetime"), ("2014-13-01", "10:00", "bad_datetime"), ("", "1000", "missing_datetime"),
    ("20140101", "", "missing_datetime"), ("yesterday", "1000", "bad_datetime"), ("20140101", "25:61", "bad_datetime"),
])
def test_parse_date_time_rejects(date, time, reason):
    with pytest.raises(InvalidRecord) as e:
        parse_date_time(date, time, "obj7")
    assert e.value.reason == reason and e.value.detail.startswith("obj7: ")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 500), st.integers(0, 300), st.integers(0, 300), st.integers(0, 10**6)),
                min_size=1, max_size=20))
def test_read_adc_v2_round_trip(rows):
    text = "\n".join(",".join(["%d" % t, "0.5"] + ["0"] * 11 + ["1", "2", str(w), str(h), str(o)] + ["0"] * 4 + ["10.0", "1.0"])
                     for t, w, h, o in rows)
    adc = read_adc(text, 2)
    assert list(adc["roiWidth"]) == [w for _, w, _, _ in rows] and list(adc["startByte"]) == [o for *_, o in rows]
    assert list(adc.index) == list(range(1, len(rows) + 1))


def test_decode_image_cases():
    buf = io.BytesIO()
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), "x.png").shape == (3, 4)
    with pytest.raises(InvalidRecord, match="x.png: image file is empty"):
        decode_image(b"", "x.png")
    with pytest.raises(InvalidRecord, match="x.png: cannot decode image") as e:
        decode_image(buf.getvalue()[:-30], "x.png")
    assert e.value.reason == "corrupt_image"


def test_ifcb_position_from_header(ifcb, tmp_path):
    src = tmp_path / "bin"
    shutil.copytree(ifcb / "D20130526T095207_IFCB013", src)
    hdr = src / "D20130526T095207_IFCB013.hdr"
    hdr.write_text(hdr.read_text() + "gpsLatitude: 41.3250\ngpsLongitude: -70.5667\ndepth: 4.5\n")
    rep = ingest(src, tmp_path / "s", fmt="ifcb", pixel_size_um=0.3, progress=False)
    assert rep.ingested == 19
    r = AqquaStore(tmp_path / "s").record(0)
    assert (r["lat"], r["lon"], r["depth_min"], r["pixel_size_um"]) == (41.325, -70.5667, 4.5, 0.3)


def test_ecotaxa_uvp_pixel_in_mm(m106, tmp_path):
    src = tmp_path / "uvp"
    shutil.copytree(m106 / "import_test/m106_mn01_n2_sml", src)
    tsv = src / "ecotaxa_m106_mn01_n2_sml.tsv"
    text = tsv.read_text().replace("\t10.6\t", "\t0.094\t").replace("\tepson\t", "\tuvp5hd\t")
    tsv.write_text(text)
    ingest(src, tmp_path / "s", fmt="ecotaxa", progress=False)
    r = AqquaStore(tmp_path / "s").record(0)
    assert r["instrument"] == "UVP5" and r["pixel_size_um"] == pytest.approx(94.0)
    raw = AqquaStore(tmp_path / "s").raw()
    assert raw["pixel_size_um_source"].iloc[0] == "process_pixel=0.094 mm"


def _with_columns(tsv: Path, columns: dict[str, list[str]]) -> None:
    """Append [f] columns (one value per data row) to an EcoTaxa import TSV in place."""
    lines = tsv.read_text(encoding="utf-8").splitlines()
    header, types, rows = lines[0], lines[1], lines[2:]
    header += "".join(f"\t{name}" for name in columns)
    types += "\t[f]" * len(columns)
    rows = [row + "".join(f"\t{values[i]}" for values in columns.values()) for i, row in enumerate(rows)]
    tsv.write_text("\n".join([header, types, *rows]) + "\n", encoding="utf-8")


def test_ecotaxa_sampled_volume_from_tot_vol_and_sub_part(m106, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(m106 / "import_test" / "m106_mn01_n2_sml", src)
    tsv = next(src.glob("*.tsv"))
    n = len(tsv.read_text(encoding="utf-8").splitlines()) - 2
    # EcoTaxa: sample_tot_vol in L, 1/acq_sub_part of it imaged -> V = tot_vol / sub_part
    _with_columns(tsv, {"sample_tot_vol": ["2500"] * n, "acq_sub_part": ["8"] * (n - 1) + ["0"]})
    rep = ingest(src, tmp_path / "store", fmt="ecotaxa", progress=False)
    meta = AqquaStore(tmp_path / "store").metadata
    assert (meta["sampled_volume_l"] == 2500 / 8).all() and len(meta) == n - 1
    assert rep.rejected_by_reason == {"bad_row": 1}
    assert "acq_sub_part = '0' is not a positive number" in rep.rejections[0]["detail"]
