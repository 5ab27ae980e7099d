"""Property test (issue 15): real EcoTaxa TSVs and IFCB bins, mutated the way careless or
hostile files are (quotes, tabs, NULs, huge fields, encodings, truncation, duplicated columns,
bad numbers, line endings). Whatever the mutation:

* every input row is one record, and ingested + already present + duplicates + rejected == records;
* the store stays readable, and holds exactly the records reported;
* a run rejected whole (``strict``) leaves the store byte for byte unchanged.

About 60 examples in all (under ~15 s on a loaded 2-core machine).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aqqua_geo.ingest import IngestError, ingest
from aqqua_geo.store import AqquaStore

from .conftest import tree_digest

TSV_SOURCES = {  # folder under aqqua_geo/data/ecotaxa_m106 → its TSV
    "import": ("import_test/m106_mn01_n2_sml", "ecotaxa_m106_mn01_n2_sml.tsv"),
    "export": ("ref_exports/doi", "ecotaxa_export_1_20210530_1122.tsv"),
}
NASTY = ['"', '""', '"x', 'x"', "\t", "\x00", "\r", "\x0c", "\u2028", "\x1c", "é", "ü\u00a0", "=cmd", "nan", "inf",
         "-1e400", "1,5", "abc", "-500", "0", "99999999999999999999", " "]


def _mutate_text(text: str, ops: list[tuple]) -> tuple[str, str]:
    """Apply *ops* to the TSV *text*; returns (text, encoding to write it with)."""
    lines = text.split("\n")
    encoding = "utf-8"
    for op in ops:
        kind = op[0]
        data = [i for i, ln in enumerate(lines) if ln.strip()]
        if not data:
            break
        row = data[op[1] % len(data)]
        cells = lines[row].split("\t")
        col = op[2] % len(cells)
        if kind == "insert":
            cell = cells[col]
            pos = op[4] % (len(cell) + 1)
            cells[col] = cell[:pos] + op[3] + cell[pos:]
        elif kind == "replace":
            cells[col] = op[3]
        elif kind == "huge":
            cells[col] = "y" * 150_000
        elif kind == "dupcol":
            for i in data:
                c = lines[i].split("\t")
                if col < len(c):
                    c.append(c[col])
                lines[i] = "\t".join(c)
            continue
        elif kind == "blank":
            lines.insert(row, "\t \t")
            continue
        elif kind == "latin1":
            encoding = "latin-1"
            cells[col] = cells[col] + "é"
        elif kind == "bom":
            encoding = "utf-8-sig"
            continue
        elif kind == "crlf":
            lines = [ln + "\r" for ln in lines]
            continue
        lines[row] = "\t".join(cells)
    return "\n".join(lines), encoding


_op = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 20), st.integers(0, 120), st.sampled_from(NASTY), st.integers(0, 40)),
    st.tuples(st.just("replace"), st.integers(0, 20), st.integers(0, 120), st.sampled_from(NASTY)),
    st.tuples(st.just("huge"), st.integers(0, 20), st.integers(0, 120)),
    st.tuples(st.just("dupcol"), st.integers(0, 20), st.integers(0, 120)),
    st.tuples(st.just("blank"), st.integers(0, 20), st.integers(0, 0)),
    st.tuples(st.just("latin1"), st.integers(0, 20), st.integers(0, 120)),
    st.tuples(st.just("bom"), st.integers(0, 0), st.integers(0, 0)),
    st.tuples(st.just("crlf"), st.integers(0, 0), st.integers(0, 0)),
)


def _input_rows(data: bytes) -> tuple[int, int]:
    """(fewest, most) records the file is: its non-blank lines after the header (and type row);
    a file without data rows is one (rejected) record."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    sep = "\n" if "\n" in text or "\r" not in text else "\r"
    n = sum(1 for ln in text.split(sep) if ln.replace("\t", "").strip())
    return max(n - 2, 1), max(n - 1, 1)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, bundled_data) -> Path:
    path = tmp_path_factory.mktemp("base") / "store"
    ingest(bundled_data.path("ecotaxa_m106") / "import_test/m106_mn01_n1_sml", path, fmt="ecotaxa", progress=False)
    return path


def _check_run(src: Path, fmt: str, base_store: Path, work: Path, **opts) -> None:
    store = work / "store"
    shutil.copytree(base_store, store)
    before, n_before = tree_digest(store), len(AqquaStore(store))
    try:
        ingest(src, store, fmt=fmt, strict=True, progress=False, **opts)
        strict_ok = True
    except IngestError:
        strict_ok = False
        assert tree_digest(store) == before, "a run rejected whole changed the store"
    if strict_ok:  # nothing to reject: start again from the base store
        shutil.rmtree(store)
        shutil.copytree(base_store, store)
    rep = ingest(src, store, fmt=fmt, source="mutated", progress=False, **opts)
    assert rep.records == rep.ingested + rep.exists + rep.duplicates + rep.rejected, rep.summary()
    assert strict_ok == (rep.rejected == 0)
    s = AqquaStore(store)  # readable, and holds what was reported
    assert len(s) == n_before + rep.ingested
    rejected = s.rejected()
    assert int((rejected["source"] == "mutated").sum()) == rep.rejected
    assert int((s.duplicates()["source"] == "mutated").sum()) == rep.duplicates
    for oid in s.filter(source="mutated").object_ids[:3]:
        assert s.get(oid).size > 0
    return rep


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(sorted(TSV_SOURCES)), ops=st.lists(_op, min_size=1, max_size=4),
       truncate=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_mutated_ecotaxa_tsv_loses_nothing(bundled_data, base_store, tmp_path_factory, which, ops, truncate):
    folder, name = TSV_SOURCES[which]
    work = tmp_path_factory.mktemp("tsv")
    src = work / "src"
    shutil.copytree(bundled_data.path("ecotaxa_m106") / folder, src)
    text, encoding = _mutate_text((src / name).read_text(encoding="utf-8"), ops)
    data = text.encode(encoding, errors="replace")
    if truncate is not None:
        data = data[: int(len(data) * truncate)]
    (src / name).write_bytes(data)
    rep = _check_run(src, "ecotaxa", base_store, work)
    low, high = _input_rows(data)
    assert low <= rep.records <= high, (rep.records, low, high, rep.summary())


_adc_op = st.one_of(
    st.tuples(st.just("cell"), st.integers(0, 30), st.integers(0, 30), st.sampled_from(NASTY)),
    st.tuples(st.just("truncate_adc"), st.floats(0.0, 1.0)),
    st.tuples(st.just("truncate_roi"), st.floats(0.0, 1.0)),
    st.tuples(st.just("drop"), st.sampled_from([".roi", ".hdr"])),
    st.tuples(st.just("hdr_garbage"), st.binary(min_size=1, max_size=40)),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["IFCB5_2012_028_081515", "D20130526T095207_IFCB013"]),
       ops=st.lists(_adc_op, min_size=1, max_size=3))
def test_mutated_ifcb_bin_loses_nothing(bundled_data, base_store, tmp_path_factory, which, ops):
    work = tmp_path_factory.mktemp("bin")
    src = work / "src"
    shutil.copytree(bundled_data.path("ifcb") / which, src)
    adc, roi, hdr = (src / f"{which}{ext}" for ext in (".adc", ".roi", ".hdr"))
    for op in ops:
        if op[0] == "cell" and adc.exists():
            lines = adc.read_text(encoding="latin-1").split("\n")
            if lines:
                i = op[1] % len(lines)
                cells = lines[i].split(",")
                cells[op[2] % len(cells)] = op[3]
                lines[i] = ",".join(cells)
                adc.write_bytes("\n".join(lines).encode("latin-1", errors="replace"))
        elif op[0] == "truncate_adc":
            adc.write_bytes(adc.read_bytes()[: int(adc.stat().st_size * op[1])])
        elif op[0] == "truncate_roi" and roi.exists():
            roi.write_bytes(roi.read_bytes()[: int(roi.stat().st_size * op[1])])
        elif op[0] == "drop":
            (src / f"{which}{op[1]}").unlink(missing_ok=True)
        elif op[0] == "hdr_garbage" and hdr.exists():
            hdr.write_bytes(hdr.read_bytes() + op[1])
    n_lines = sum(1 for ln in adc.read_bytes().split(b"\n") if ln.strip())
    rep = _check_run(src, "ifcb", base_store, work, constants={"lat": 41.3, "lon": -70.6, "depth": 4})
    assert rep.records <= n_lines  # one record per ADC row with an image, at most
