"""Crash safety, idempotence and bad input: clear one-line errors, nothing half-written."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aqqua_geo.ingest import IngestError, ingest
from aqqua_geo.store import AqquaStore

from .conftest import UVP6_CONSTANTS, tree_digest

N2 = "import_test/m106_mn01_n2_sml"
N2_TSV = "ecotaxa_m106_mn01_n2_sml.tsv"


def _same_store(a: Path, b: Path) -> None:
    sa, sb = AqquaStore(a), AqquaStore(b)
    assert sa.object_ids == sb.object_ids
    pd.testing.assert_frame_equal(sa.metadata, sb.metadata)
    for name in ("raw", "rejected", "duplicates"):
        fa = sa.raw() if name == "raw" else getattr(sa, name)()
        fb = sb.raw() if name == "raw" else getattr(sb, name)()
        pd.testing.assert_frame_equal(fa.reset_index(drop=True), fb.reset_index(drop=True))
    for oid in sa.object_ids:
        np.testing.assert_array_equal(sa.get(oid), sb.get(oid))
    assert sa.manifest["counts"] == sb.manifest["counts"]
    assert not (a / ".journal").exists() and not (b / ".journal").exists()


_KILLABLE = """
import sys, time
import aqqua_geo.ingest.folder as folder
_decode = folder.decode_image
folder.decode_image = lambda data, name: (time.sleep(0.004), _decode(data, name))[1]  # slow enough to be killed
from aqqua_geo.ingest import ingest
ingest(sys.argv[1], sys.argv[2], fmt="folder", constants=sys.argv[3:], batch_size=40, progress=False)
"""


def test_kill9_mid_ingest_then_resume_equals_uninterrupted(uvp6, m106, tmp_path):
    store, ref = tmp_path / "killed", tmp_path / "ref"
    for s in (store, ref):
        ingest(m106 / N2, s, fmt="ecotaxa", progress=False)  # an existing store to append to
    before = AqquaStore(store).object_ids
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(uvp6), str(store), *UVP6_CONSTANTS])
    deadline = time.monotonic() + 60
    while not list((store / ".journal").glob("*/batch-000003")):
        assert proc.poll() is None, "ingest finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # killed mid-way: the published store is still the old one, readable and consistent
    assert AqquaStore(store).object_ids == before
    assert (store / ".journal").is_dir()
    rep = ingest(uvp6, store, fmt="folder", constants=UVP6_CONSTANTS, batch_size=40, progress=False)
    ref_rep = ingest(uvp6, ref, fmt="folder", constants=UVP6_CONSTANTS, batch_size=40, progress=False)
    # the resumed run makes visible what the uninterrupted one does (staged records count as ingested)
    assert (rep.ingested, rep.duplicates, rep.rejected) == (ref_rep.ingested, ref_rep.duplicates, ref_rep.rejected)
    _same_store(store, ref)


def test_rerun_is_idempotent(m106, uvp6, tmp_path):
    ingest(m106 / "import_test", tmp_path / "a", fmt="ecotaxa", progress=False)
    ingest(m106 / "import_test", tmp_path / "b", fmt="ecotaxa", progress=False)
    first = tree_digest(tmp_path / "a")
    rep = ingest(m106 / "import_test", tmp_path / "a", fmt="ecotaxa", progress=False)
    assert (rep.ingested, rep.exists, rep.duplicates) == (0, 11, 0)
    _same_store(tmp_path / "a", tmp_path / "b")
    second = tree_digest(tmp_path / "a")
    changed = {k for k in first if first[k] != second.get(k)}
    assert changed <= {"manifest.json"}  # only the updated_at stamps


def _edit(tsv: Path, row: int, col: str, value: str) -> None:
    with open(tsv, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    rows[row + 2][rows[0].index(col)] = value  # +2: header and [t]/[f] type row
    with open(tsv, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter="\t", lineterminator="\n").writerows(rows)


def _n2(m106: Path, tmp: Path) -> Path:
    src = tmp / "src"
    shutil.copytree(m106 / N2, src)
    return src


def bad_date(m106, tmp):
    src = _n2(m106, tmp)
    _edit(src / N2_TSV, 0, "object_date", "20140431")
    return src, "ecotaxa", {}, "bad_datetime", f"{src / N2_TSV}: line 3: m106_mn01_n2_sml_1: date/time '20140431' '420' is not valid"


def bad_lat(m106, tmp):
    src = _n2(m106, tmp)
    _edit(src / N2_TSV, 1, "object_lat", "118.0")
    return src, "ecotaxa", {}, "bad_position", f"{src / N2_TSV}: line 4: m106_mn01_n2_sml_1081: lat=118.0 outside -90..90"


def bad_lon(m106, tmp):
    src = _n2(m106, tmp)
    _edit(src / N2_TSV, 1, "object_lon", "-181")
    return src, "ecotaxa", {}, "bad_position", "m106_mn01_n2_sml_1081: lon=-181.0 outside -180..180"


def not_utf8(m106, tmp):
    # a table without a BOM that is not UTF-8 is read as Latin-1 (as EcoTaxa does); one that
    # starts with a UTF-8 BOM and then is not UTF-8 is refused
    src = _n2(m106, tmp)
    data = b"\xef\xbb\xbf" + (src / N2_TSV).read_bytes().replace(b"detritus", b"d\xe9tritus", 1)
    (src / N2_TSV).write_bytes(data)
    return src, "ecotaxa", {}, "bad_encoding", f"{src / N2_TSV}: line 3: starts with a UTF-8 BOM but is not UTF-8 (byte 0xe9"


def duplicate_ids(m106, tmp):
    src = _n2(m106, tmp)
    _edit(src / N2_TSV, 1, "object_id", "m106_mn01_n2_sml_1")
    return src, "ecotaxa", {}, "duplicate_object_id", "m106_mn01_n2_sml_1: object id given 2 times"


def missing_image(m106, tmp):
    src = _n2(m106, tmp)
    (src / "m106_mn01_n2_sml_1081.jpg").unlink()
    return src, "ecotaxa", {}, "missing_image", f"{src / N2_TSV}: line 4: image m106_mn01_n2_sml_1081.jpg not found"


def truncated_image(m106, tmp):
    src = _n2(m106, tmp)
    p = src / "m106_mn01_n2_sml_1081.jpg"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return src, "ecotaxa", {}, "corrupt_image", f"{src / 'm106_mn01_n2_sml_1081.jpg'}: cannot decode image"


def empty_image(m106, tmp):
    src = _n2(m106, tmp)
    (src / "m106_mn01_n2_sml_1081.jpg").write_bytes(b"")
    return src, "ecotaxa", {}, "empty_image", f"{src / 'm106_mn01_n2_sml_1081.jpg'}: image file is empty (0 bytes)"


def empty_tsv(m106, tmp):
    src = _n2(m106, tmp)
    (src / N2_TSV).write_bytes(b"")
    return src, "ecotaxa", {}, "bad_row", f"{src / N2_TSV}: empty file"


def truncated_roi(m106, tmp):
    bins = Path(m106).parent / "ifcb" / "IFCB5_2012_028_081515"
    src = tmp / "bins"
    shutil.copytree(bins, src)
    roi = src / "IFCB5_2012_028_081515.roi"
    roi.write_bytes(roi.read_bytes()[:50000])
    pos = tmp / "pos.csv"
    pos.write_text("bin,lat,lon,depth\nIFCB5_2012_028_081515,41.325,-70.5667,4\n")
    return (src, "ifcb", {"positions": pos}, "truncated_roi",
            f"{roi}: ROI 3 needs bytes 36927..52407 but the file has 50000")


def id_clash(m106, tmp):
    src = tmp / "src"
    shutil.copytree(m106 / "import_test/m106_mn01_n1_sml", src)  # already in the store...
    shutil.copy(m106 / N2 / "m106_mn01_n2_sml_1.jpg", src / "m106_mn01_n1_sml_821.jpg")  # ...but other pixels
    return src, "ecotaxa", {}, "duplicate_object_id", "m106_mn01_n1_sml_821: object id already in the store with different pixels"


BAD = [id_clash, bad_date, bad_lat, bad_lon, not_utf8, duplicate_ids, missing_image, truncated_image, empty_image, empty_tsv,
       truncated_roi]


@pytest.mark.parametrize("case", BAD, ids=[f.__name__ for f in BAD])
def test_bad_input(case, m106, tmp_path):
    store = tmp_path / "store"
    ingest(m106 / "import_test/m106_mn01_n1_sml", store, fmt="ecotaxa", progress=False)
    src, fmt, opts, reason, message = case(m106, tmp_path)
    before = tree_digest(store)
    # strict: a one-line error naming file and record, and the store is byte-for-byte unchanged
    with pytest.raises(IngestError) as err:
        ingest(src, store, fmt=fmt, strict=True, progress=False, **opts)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert tree_digest(store) == before
    # default: the record is rejected with its reason and message, nothing of it is stored
    ids_before = AqquaStore(store).object_ids
    rep = ingest(src, store, fmt=fmt, progress=False, **opts)
    assert rep.rejected_by_reason[reason] >= 1
    rejected = AqquaStore(store).rejected()
    assert any(message in d for d in rejected.loc[rejected["reason"] == reason, "detail"])
    bad_ids = set(rejected["object_id"].dropna())
    assert not bad_ids & set(AqquaStore(store).object_ids) - set(ids_before)
