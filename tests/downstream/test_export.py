"""EcoTaxa export: bundle structure against EcoTaxa's import rules, bad input, round trip."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aqqua_geo.export import ecotaxa as ex
from aqqua_geo.export.ecotaxa import ecotaxa_field_name, write_ecotaxa, write_ecotaxa_cli

PREFIXES = ("object", "sample", "acq", "process", "img")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, bundled_data):
    """A store of 9 real vignettes: UVP6 (grey PNG, 2 samples) and ZooScan m106 (JPEG)."""
    from aqqua_geo.ingest.common import decode_image  # the ingestors' decoder: grey RGB -> H×W
    from aqqua_geo.store import AqquaStore, StoreWriter

    root = tmp_path_factory.mktemp("export") / "store"
    uvp = bundled_data.path("uvp6_vignettes")
    files = [
        *sorted((uvp / "Copepoda__6666").glob("*.png"))[:3],
        *sorted((uvp / "detritus__8888").glob("*.png"))[:3],
        *sorted((bundled_data.path("ecotaxa_m106") / "import_test" / "m106_mn01_n1_sml").glob("*.jpg"))[:3],
    ]
    with StoreWriter(root, source="test", source_format="folder") as w:
        for i, f in enumerate(files):
            zooscan = f.suffix == ".jpg"
            label = None if i == 5 else ("t001" if zooscan else f.parent.name.split("__")[0])
            w.add(
                f"{'m106' if zooscan else 'uvp6'}_{f.stem}",
                decode_image(f.read_bytes(), f.name),
                {
                    "instrument": "ZooScan" if zooscan else "UVP6",
                    "sample_id": "m106_mn01_n1_sml" if zooscan else f"bats361_ctd{5 if i < 3 else 14}",
                    "datetime": "2014-04-20T04:20:00Z" if zooscan else f"2019-07-14T20:38:{40 + i:02d}Z",
                    "lat": -44.72543333333333 if zooscan else 31.6699,
                    "lon": 145.5351 if zooscan else -64.1687,
                    "depth_min": 600.0 if zooscan else 10.0 + i,
                    "depth_max": 1000.0 if zooscan else 10.0 + i,
                    "pixel_size_um": 10.6 if zooscan else 73.0,
                    "sampled_volume_l": float("nan") if zooscan else 1.1,
                    "label": label,
                    "label_status": None if label is None else "validated",
                },
            )
    return AqquaStore(root)


@pytest.fixture
def predictions(small_store):
    ids = small_store.object_ids
    n = len(ids)
    return pd.DataFrame(
        {
            "object_id": ids,
            "pred_label": ["Copepoda", "Copepoda", "detritus", "detritus", "detritus", None, "t001", "Copepoda", "fiber"],
            "pred_prob": np.linspace(0.3, 0.99, n),
            "top2_label": ["detritus"] * n,
            "top2_prob": np.linspace(0.01, 0.2, n),
            "novelty_score": np.r_[np.nan, np.linspace(0, 1, n - 1)],
            "is_novel": [False] * (n - 1) + [True],
            "carbon_ugC": np.r_[1.5, np.nan, np.full(n - 2, 0.25)],
            "carbon_group": ["copepod"] * n,
        }
    )


def read_bundle(path: Path) -> tuple[list[str], list[str], list[dict[str, str]], dict[str, bytes]]:
    """Header, type row, rows and images of an export, parsed the way EcoTaxa does."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            files = {n: z.read(n) for n in z.namelist()}
    else:
        files = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    tsvs = [n for n in files if re.fullmatch(r"ecotaxa[^/]*\.tsv", n)]
    assert len(tsvs) == 1, sorted(files)
    raw = files[tsvs[0]]
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: EcoTaxa would read latin-1 otherwise
    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig")), delimiter="\t", quotechar='"')
    header, types, *body = list(reader)
    rows = [dict(zip(header, r, strict=True)) for r in body]
    images = {n: b for n, b in files.items() if n.startswith("images/")}
    return header, types, rows, images


def check_ecotaxa_rules(header, types, rows, images):
    """The TSVFile.validate_structure / validate_content rules of ecotaxa_back."""
    assert header == [h.strip().lower() for h in header]
    assert len(set(header)) == len(header)
    for h in header:
        assert "_" in h and h.split("_")[0] in PREFIXES, h
        assert re.fullmatch(r"[a-z0-9_]+", h), h
    assert set(types) <= {"[t]", "[f]"}
    kinds = dict(zip(header, types))
    custom = [h for h in header if h.startswith("object_") and not h.startswith("object_annotation")]
    assert sum(kinds[h] == "[f]" for h in custom) <= 500 and sum(kinds[h] == "[t]" for h in custom) <= 20
    for prefix in ("sample", "acq", "process"):
        if any(h.startswith(prefix + "_") for h in header):
            assert f"{prefix}_id" in header
    acq_sample: dict[str, str] = {}
    for r in rows:
        assert r["object_id"] and r["img_file_name"] in images
        assert images[r["img_file_name"]].startswith(b"\x89PNG")
        assert -90 <= float(r["object_lat"]) <= 90 and -180 <= float(r["object_lon"]) <= 180
        assert re.fullmatch(r"\d{8}", r["object_date"]) and re.fullmatch(r"\d{6}", r["object_time"])
        assert bool(r["object_annotation_category"]) == bool(r["object_annotation_status"])
        assert r["object_annotation_status"] in ("", "predicted", "validated", "dubious", "discarded")
        for h, v in r.items():
            assert v.lower() not in ("nan", "none", "nat", "<na>"), (h, v)
            if kinds[h] == "[f]" and v:
                float(v)
        assert acq_sample.setdefault(r["acq_id"], r["sample_id"]) == r["sample_id"]
    assert len({(r["object_id"], r["img_file_name"]) for r in rows}) == len(rows)


def test_zip_bundle_follows_ecotaxa_rules(small_store, predictions, tmp_path):
    out = write_ecotaxa(small_store, predictions, tmp_path / "preds.zip")
    assert out == tmp_path / "preds.zip" and sorted(p.name for p in tmp_path.iterdir()) == ["preds.zip"]
    header, types, rows, images = read_bundle(out)
    check_ecotaxa_rules(header, types, rows, images)
    ids = list(predictions["object_id"])
    assert [r["object_id"] for r in rows] == ids[-1:] + ids[:-1]  # the novel object first
    kinds = dict(zip(header, types))
    assert kinds["object_pred_prob"] == "[f]" and kinds["object_top2_label"] == "[t]"
    assert kinds["object_carbon_ugc"] == "[f]" and kinds["object_esd_um"] == "[f]"  # traits measured
    by_id = {r["object_id"]: r for r in rows}
    first = by_id[predictions["object_id"][0]]
    assert first["object_annotation_category"] == "Copepoda" and first["object_annotation_status"] == "predicted"
    assert first["object_novelty_score"] == "" and first["object_carbon_ugc"] == "1.5"
    unlabelled = by_id[predictions["object_id"][5]]
    assert unlabelled["object_annotation_category"] == unlabelled["object_annotation_status"] == ""
    novel = by_id[predictions["object_id"][8]]
    assert novel["object_is_novel"] == "1"
    # flagged novel: unclassified for the expert, not the predicted "fiber"
    assert novel["object_annotation_category"] == novel["object_annotation_status"] == ""
    assert novel["object_top2_label"] == "detritus"  # the model's suggestions stay visible
    meta = small_store.metadata.set_index("object_id")
    for oid, r in by_id.items():
        m = meta.loc[oid]
        assert float(r["object_lat"]) == m["lat"] and float(r["object_lon"]) == m["lon"]
        assert float(r["object_depth_min"]) == m["depth_min"] and float(r["process_pixel"]) == m["pixel_size_um"]
        assert float(r["acq_pixel_size"]) == pytest.approx(m["pixel_size_um"] / 1000)
        assert float(r["object_area"]) * m["pixel_size_um"] ** 2 == pytest.approx(float(r["object_area_um2"]))
        assert r["object_date"] + r["object_time"] == m["datetime"].strftime("%Y%m%d%H%M%S")
        assert r["acq_instrument"] == m["instrument"] and r["sample_id"] == m["sample_id"]
        from PIL import Image

        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(images[r["img_file_name"]]))), small_store.get(oid))
    assert len({r["acq_id"] for r in rows}) == 3  # one per (sample, instrument, pixel size)


def test_chunked_export_is_identical(small_store, predictions, tmp_path, monkeypatch):
    whole = read_bundle(write_ecotaxa(small_store, predictions, tmp_path / "whole"))
    monkeypatch.setattr(ex, "_CHUNK", 4)  # 9 objects -> chunks of 4, 4, 1
    chunked = read_bundle(write_ecotaxa(small_store, predictions, tmp_path / "chunked"))
    assert chunked == whole


def test_directory_export_of_store_labels_and_subset(small_store, tmp_path):
    ids = small_store.object_ids[::-1][:4]
    out = write_ecotaxa(small_store.path, None, tmp_path / "bundle", object_ids=ids, add_traits=False)
    assert (out / "ecotaxa_bundle.tsv").is_file()
    header, types, rows, images = read_bundle(out)
    check_ecotaxa_rules(header, types, rows, images)
    assert [r["object_id"] for r in rows] == ids and len(images) == 4
    assert not any(h.startswith("object_esd") for h in header)
    meta = small_store.metadata.set_index("object_id")
    for r in rows:
        label = meta.loc[r["object_id"], "label"]
        label = label if isinstance(label, str) else None
        assert r["object_annotation_category"] == (label or "")
        assert r["object_annotation_status"] == ("validated" if label else "")
    # writing again replaces the bundle; store labels are kept when traits are added
    write_ecotaxa(small_store, None, out, object_ids=ids[:2])
    header, _, rows, _ = read_bundle(out)
    assert len(rows) == 2 and "object_esd_um" in header
    assert [r["object_annotation_category"] for r in rows] == [meta.loc[i, "label"] for i in ids[:2]]


def test_cli_body_reads_parquet_and_ids(small_store, predictions, tmp_path):
    predictions.to_parquet(tmp_path / "predictions.parquet")
    pd.DataFrame({"object_id": predictions["object_id"][:3]}).to_csv(tmp_path / "ids.csv", index=False)
    out = write_ecotaxa_cli(small_store.path, tmp_path / "predictions.parquet", tmp_path / "o.zip", tmp_path / "ids.csv")
    rows = read_bundle(out)[2]
    assert [r["object_id"] for r in rows] == list(predictions["object_id"][:3])
    with pytest.raises(FileNotFoundError, match="nope.parquet: predictions file not found"):
        write_ecotaxa_cli(small_store.path, tmp_path / "nope.parquet", tmp_path / "x.zip")


def test_bad_input_writes_nothing(small_store, predictions, tmp_path, monkeypatch):
    with pytest.raises(KeyError, match=r"1 object_id\(s\) not in store .*\['ghost'\]"):
        write_ecotaxa(small_store, predictions, tmp_path / "a.zip", object_ids=["ghost", small_store.object_ids[0]])
    with pytest.raises(KeyError, match="need an 'object_id' column or index"):
        write_ecotaxa(small_store, predictions.reset_index(drop=True).drop(columns="object_id"), tmp_path / "a.zip")
    with pytest.raises(ValueError, match="duplicate object_id"):
        write_ecotaxa(small_store, pd.concat([predictions, predictions]), tmp_path / "a.zip")
    clash = predictions.assign(**{"Pred Prob": 1.0})
    with pytest.raises(ValueError, match="both map to EcoTaxa column 'object_pred_prob'"):
        write_ecotaxa(small_store, clash, tmp_path / "a.zip")
    wide = predictions.join(pd.DataFrame(np.zeros((len(predictions), 501)), columns=[f"e{i}" for i in range(501)]))
    with pytest.raises(ValueError, match="501|502|503|50[0-9] numeric columns, EcoTaxa takes at most 500"):
        write_ecotaxa(small_store, wide, tmp_path / "a.zip", add_traits=False)
    with pytest.raises(ValueError, match="status must be"):
        write_ecotaxa(small_store, predictions, tmp_path / "a.zip", status="validatd")

    calls = {"n": 0}
    real = ex._png_bytes

    def failing(image):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full")
        return real(image)

    monkeypatch.setattr(ex, "_png_bytes", failing)
    for target in ("b.zip", "bdir"):
        calls["n"] = 0
        with pytest.raises(OSError, match="disk full"):
            write_ecotaxa(small_store, predictions, tmp_path / target, add_traits=False)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary left


@given(st.text(min_size=1, max_size=40).filter(lambda s: re.search(r"[A-Za-z0-9]", s)))
def test_field_names_are_valid(name):
    out = ecotaxa_field_name(name)
    assert re.fullmatch(r"object_[a-z0-9_]+", out)
    assert out not in ex._PREDEFINED


def test_field_names_examples():
    assert ecotaxa_field_name("esd_um") == "object_esd_um"
    assert ecotaxa_field_name("carbon_ugC") == "object_carbon_ugc"
    assert ecotaxa_field_name("Top-1 prob") == "object_top_1_prob"
    assert ecotaxa_field_name("id") == "object_pred_id"  # would shadow the predefined object_id
    assert ecotaxa_field_name("area_px") == "object_area"  # EcoTaxa's native area (pixels)
    with pytest.raises(ValueError, match="cannot make an EcoTaxa column name"):
        ecotaxa_field_name("  ")


def test_round_trip_through_the_ecotaxa_ingestor(small_store, predictions, tmp_path):
    """Export, then ingest the bundle with the project's EcoTaxa ingestor into a new store."""
    from aqqua_geo.ingest import ingest
    from aqqua_geo.store import AqquaStore

    bundle = write_ecotaxa(small_store, predictions, tmp_path / "bundle.zip")
    report = ingest(bundle, tmp_path / "again", fmt="ecotaxa")
    again = AqquaStore(tmp_path / "again")
    assert sorted(again.object_ids) == sorted(small_store.object_ids)
    before = small_store.metadata.set_index("object_id")
    after = again.metadata.set_index("object_id")
    pred = predictions.set_index("object_id")
    for oid in small_store.object_ids:
        np.testing.assert_array_equal(again.get(oid), small_store.get(oid))
        b, a = before.loc[oid], after.loc[oid]
        for col in ("lat", "lon", "depth_min", "depth_max", "pixel_size_um"):
            assert a[col] == pytest.approx(b[col], rel=1e-12), (oid, col)
        assert a["datetime"] == b["datetime"]
        assert a["sample_id"] == b["sample_id"] and a["instrument"] == b["instrument"]
        expected = pred.loc[oid, "pred_label"]
        expected = expected if isinstance(expected, str) and not pred.loc[oid, "is_novel"] else None
        assert (a["label"] if isinstance(a["label"], str) else None) == expected
        assert a["label_status"] == ("predicted" if expected else "unlabelled")
    assert report is not None


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_numbers_round_trip_exactly(x):
    cell = ex._number(x)
    if x != x or x in (float("inf"), float("-inf")):
        assert cell == ""
    else:
        assert float(cell) == x and "\t" not in cell


@given(st.text())
def test_text_cells_never_break_the_tsv(value):
    cell = ex._text(value)
    assert not set(cell) & {"\t", "\n", "\r"} and cell == cell.strip()


def test_novel_objects_take_a_configurable_unvalidated_category(small_store, predictions, tmp_path):
    out = write_ecotaxa(small_store, predictions, tmp_path / "dir", status="validated",
                        novel_category="othertocheck", novel_first=False)
    header, types, rows, images = read_bundle(out)
    check_ecotaxa_rules(header, types, rows, images)
    assert [r["object_id"] for r in rows] == list(predictions["object_id"])
    novel = rows[-1]
    assert novel["object_annotation_category"] == "othertocheck"
    assert novel["object_annotation_status"] == "predicted"  # never validated by the model
    assert rows[0]["object_annotation_status"] == "validated"
