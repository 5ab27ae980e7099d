"""EcoTaxa TSV: import files (``[t]``/``[f]`` type row) and exports (all quoted, no type row,
images in category folders), from a folder or a .zip.

One record per TSV row; an object with several images (``img_rank`` > 0) gives one store
object per image, ids ``<object_id>`` for rank 0 and ``<object_id>#<rank>`` for the others.
Pixel size: ``process_pixel`` or ``acq_pixel`` (values < 1 from instruments other than IFCB/
FlowCam are EcoTaxa/UVP millimetres and are converted), else the instrument's known value
(:data:`~aqqua_geo.ingest.common.KNOWN_PIXEL_SIZE_UM`).

Besides our own required fields, rows that EcoTaxa itself refuses are rejected too (so a
store can be exported back to EcoTaxa): a category without an annotation status, a status
without a category, one category name with several ids, non-numbers in ``[f]`` columns,
an acquisition (``acq_id``) under two samples, more free columns than EcoTaxa stores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from aqqua_geo.ingest.common import (
    KNOWN_PIXEL_SIZE_UM,
    MAX_FIELD_CHARS,
    FileProblem,
    Item,
    SourceTree,
    canonical_instrument,
    decode_text_with_encoding,
    parse_date_time,
    parse_float,
    read_image,
)
from aqqua_geo.store.schema import InvalidRecord

TSV_SUFFIXES = (".tsv", ".txt")
_STATUS = {"v": "validated", "validated": "validated", "p": "predicted", "predicted": "predicted",
           "d": "dubious", "dubious": "dubious"}
# EcoTaxa's database has 30 free columns per sample / acquisition / process (t01..t30), so its
# import refuses files with more (fixture `import_issues/tsv_too_many_cols`).
FREE_COLUMN_LIMITS = {"sample": 30, "acq": 30, "process": 30}
_RESERVED = {"sample_id", "acq_id", "process_id", "acq_instrument"}
_PIXEL_UM_INSTRUMENTS = {"IFCB", "FlowCam"}  # sub-µm/µm pixels: a value < 1 is really µm


def split_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every physical line (``\\n``, ``\\r\\n`` or old-Mac ``\\r``
    endings). Only these end a row: no quote, form feed or Unicode separator does."""
    sep = "\n" if "\n" in text or "\r" not in text else "\r"
    return [(i, ln[:-1] if ln.endswith("\r") else ln) for i, ln in enumerate(text.split(sep), 1)]


def split_fields(line: str) -> list[str]:
    """Tab-separated fields of one physical line.

    EcoTaxa exports enclose every field in ``"`` and its own import reads ``"`` as a quote
    character (fixture ``import_test_weird`` quotes a category ending in a tab), so a field
    that opens with ``"`` and closes with ``"`` before the next tab or the end of the line is
    unquoted (``""`` → ``"``). A quote never reaches past its line: any other quote is data,
    so a lone ``"Copepoda`` stays as written and cannot swallow the rows after it.
    """
    fields: list[str] = []
    i, n = 0, len(line)
    while True:
        if i < n and line[i] == '"':
            j, buf, closed = i + 1, [], False
            while j < n:
                c = line[j]
                if c == '"':
                    if j + 1 < n and line[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    closed = j + 1 == n or line[j + 1] == "\t"
                    break
                buf.append(c)
                j += 1
            if closed:
                fields.append("".join(buf))
                if j + 1 == n:
                    return fields
                i = j + 2
                continue
        k = line.find("\t", i)
        if k < 0:
            fields.append(line[i:])
            return fields
        fields.append(line[i:k])
        i = k + 1


def is_blank(line: str) -> bool:
    return not line.replace("\t", "").strip()


def _read_rows(tree: SourceTree, name: str):
    """``(header, types, rows, problem, encoding)`` of one TSV: ``rows`` are ``(line, fields)``
    of every non-blank data line; ``problem`` (a message) makes every row rejected."""
    disp = tree.display(name)
    text, encoding = decode_text_with_encoding(tree.read_bytes(name), disp)
    lines = [(n, ln) for n, ln in split_lines(text) if not is_blank(ln)]
    if not lines:
        raise ValueError(f"{disp}: empty file")
    header = [h.strip().lower() for h in split_fields(lines[0][1])]
    rows = [(n, split_fields(ln)) for n, ln in lines[1:]]
    types = None
    if rows and all(c.strip().lower() in ("", "[t]", "[f]") or c.startswith("[") for c in rows[0][1]) \
            and any(c.strip().lower() in ("[t]", "[f]") for c in rows[0][1]):
        types = [c.strip().lower() for c in rows[0][1]]
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{disp}: has a header but no data rows")
    problem = None
    if "object_id" not in header:
        problem = f"{disp}: line {lines[0][0]}: no object_id column (not an EcoTaxa TSV)"
    seen: dict[str, list[int]] = {}
    for i, h in enumerate(header, 1):
        if h:
            seen.setdefault(h, []).append(i)
    twice = {h: cols for h, cols in seen.items() if len(cols) > 1}
    if twice and problem is None:
        problem = f"{disp}: line {lines[0][0]}: " + "; ".join(
            f"column {h} appears {len(c)} times (columns {', '.join(map(str, c))})" for h, c in twice.items())
    for prefix, limit in FREE_COLUMN_LIMITS.items():
        free = [h for h in header if h.startswith(prefix + "_") and h not in _RESERVED]
        if len(free) > limit and problem is None:
            problem = f"{disp}: {len(free)} free {prefix}_ columns, EcoTaxa stores at most {limit}"
    return header, types, rows, problem, encoding


def _tsv_files(tree: SourceTree) -> list[str]:
    return [n for n in tree.files(TSV_SUFFIXES) if not n.split("/")[-1].startswith(".")]


def _pixel_size(row: dict[str, str], instrument: str | None, oid: str) -> tuple[float | None, str]:
    for col in ("process_pixel", "acq_pixel", "process_pixel_size_um", "acq_pixel_size"):
        value = parse_float(row.get(col), col, oid, "missing_pixel_size")
        if value is not None and not value > 0:
            raise InvalidRecord("missing_pixel_size", f"{oid}: {col}={row.get(col)!r} is not a positive pixel size "
                                "(fix the column, or give the size with --set pixel_size_um=VALUE)")
        if value is not None:
            if value < 1.0 and instrument not in _PIXEL_UM_INSTRUMENTS:
                return value * 1000.0, f"{col}={row[col]} mm"
            return value, f"{col}={row[col]} um"
    if instrument in KNOWN_PIXEL_SIZE_UM:
        value, why = KNOWN_PIXEL_SIZE_UM[instrument]
        return value, why
    return None, ""


def _instrument(row: dict[str, str]) -> str | None:
    raw = row.get("acq_instrument") or row.get("sample_instrument") or row.get("acq_instrument_name")
    if raw and raw.strip().lower() in ("epson", "perfection") or (
        "zooprocess" in (row.get("process_software") or "").lower() and not raw
    ):
        return "ZooScan"  # ZooScan = Epson Perfection scanner run by ZooProcess
    return canonical_instrument(raw)


def iter_ecotaxa(src: Any, *, existing_acq_samples: dict[str, str] | None = None) -> Iterator[Item | FileProblem]:
    """Yield an :class:`Item` per image of every EcoTaxa TSV under *src* (folder or .zip)."""
    tree = src if isinstance(src, SourceTree) else SourceTree(src)
    files = _tsv_files(tree)
    if not files:
        yield FileProblem(str(tree.src), "bad_row", f"{tree.src}: no EcoTaxa .tsv/.txt file found")
        return
    parsed: list[tuple[str, list[str], list[str] | None, list[tuple[int, list[str]]]]] = []
    for name in files:
        disp = tree.display(name)
        try:
            header, types, rows, problem, encoding = _read_rows(tree, name)
        except InvalidRecord as err:
            yield FileProblem(disp, err.reason, err.detail)
            continue
        except ValueError as err:
            reason = "bad_encoding" if "not UTF-8" in str(err) else "bad_row"
            yield FileProblem(disp, reason, str(err))
            continue
        if encoding == "latin-1":
            yield FileProblem(disp, None, f"{disp}: not UTF-8, read as Latin-1 (as EcoTaxa does without a BOM)")
        if problem is not None:  # the whole file is unusable: every row is rejected, counted
            for line, values in rows:
                raw = {f"column_{i + 1}": v for i, v in enumerate(values)}
                raw["tsv_encoding"] = encoding
                yield FileProblem(disp, "bad_row", problem, f"line {line}", raw)
            continue
        parsed.append((name, header, types, rows, encoding))
    # one category name ↔ one id in a source: the majority id wins, the others are rejected
    ids_of: dict[str, Counter] = {}
    for _, header, _, rows, _ in parsed:
        if "object_annotation_category" in header and "object_annotation_category_id" in header:
            ic, ii = header.index("object_annotation_category"), header.index("object_annotation_category_id")
            for _, r in rows:
                if max(ic, ii) < len(r) and r[ic].strip() and r[ii].strip():
                    ids_of.setdefault(r[ic].strip(), Counter())[r[ii].strip()] += 1
    majority = {name: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for name, c in ids_of.items()}
    # an object id (+ image rank) given twice in one TSV is ambiguous (EcoTaxa refuses it): every
    # occurrence is rejected. Across files the writer decides: same pixels → exists, else rejected.
    where: dict[tuple[str, str, str], list[str]] = {}
    for name, header, _, rows, _ in parsed:
        io_, ir = header.index("object_id"), header.index("img_rank") if "img_rank" in header else None
        for line, r in rows:
            key = (name, r[io_].strip() if io_ < len(r) else "",
                   (r[ir].strip() if ir is not None and ir < len(r) else "") or "0")
            if key[1]:
                where.setdefault(key, []).append(f"{tree.display(name)}:{line}")
    repeated = {k: v for k, v in where.items() if len(v) > 1}
    acq_samples = dict(existing_acq_samples or {})
    for name, header, types, rows, encoding in parsed:
        for line, values in rows:
            for item in _items(tree, name, header, types, line, values, majority, acq_samples, repeated):
                item.raw["tsv_encoding"] = encoding
                yield item


def _sampled_volume_l(row: dict[str, str], oid: str) -> float | None:
    """Volume of water behind this object's (sub)sample, in L, or None when not given.

    ``object_sampled_volume_l`` (this package's own export) wins; otherwise EcoTaxa's native
    ``sample_tot_vol`` (L) and ``acq_sub_part`` (fraction 1/sub_part imaged): V = tot_vol / sub_part,
    as EcoTaxa computes concentrations. Empty or NaN means unknown; a value that is given but not a
    positive number is an error.
    """
    own = _positive(row, "object_sampled_volume_l", oid)
    if own is not None:
        return own
    tot, sub = _positive(row, "sample_tot_vol", oid), _positive(row, "acq_sub_part", oid)
    return None if tot is None or sub is None else tot / sub


def _positive(row: dict[str, str], col: str, oid: str) -> float | None:
    value = parse_float(row.get(col), col, oid, "bad_row")
    if value is not None and not value > 0:
        raise InvalidRecord("bad_row", f"{oid}: {col} = {row.get(col)!r} is not a positive number")
    return value


def _items(tree, name, header, types, line, values, majority, acq_samples, repeated) -> Iterable[Item]:
    where = f"line {line}"
    file = tree.display(name)
    row = {h: (values[i] if i < len(values) else "") for i, h in enumerate(header)}
    oid = row.get("object_id", "").strip()
    item = Item(file=file, record=where, object_id=oid or None, fields={}, raw=dict(row))
    if len(values) > len(header):
        item.errors["row"] = InvalidRecord("bad_row", f"{file}: {where}: {len(values)} fields, header has {len(header)}")
        item.raw.update({f"column_{i + 1}": v for i, v in enumerate(values) if i >= len(header)})
        yield item
        return
    long = [(h, len(v)) for h, v in row.items() if len(v) > MAX_FIELD_CHARS]
    if long:
        item.errors["row"] = InvalidRecord("too_large", f"{file}: {where}: " + ", ".join(
            f"field {h} has {n} characters" for h, n in long) + f" (at most {MAX_FIELD_CHARS})")
        yield item
        return
    if not oid:
        item.errors["row"] = InvalidRecord("bad_row", f"{file}: {where}: object_id is empty")
        yield item
        return
    rank_key = (name, oid, (row.get("img_rank") or "").strip() or "0")
    if rank_key in repeated:
        lines = ", ".join(repeated[rank_key])
        item.errors["row"] = InvalidRecord("duplicate_object_id", f"{oid}: object id given {len(repeated[rank_key])} times ({lines})")
        yield item
        return
    try:
        _check_row(row, header, types, oid, majority, acq_samples)
        status, label = _annotation(row, oid)
    except InvalidRecord as err:
        item.errors["row"] = err
        yield item
        return
    instrument = _instrument(row)
    errors: dict[str, InvalidRecord] = {}
    try:
        pixel, pixel_src = _pixel_size(row, instrument, oid)
    except InvalidRecord as err:
        pixel, pixel_src = None, ""
        errors["pixel_size_um"] = err
    fields: dict[str, Any] = {
        "instrument": instrument, "sample_id": row.get("sample_id") or None, "label": label,
        "label_status": status, "pixel_size_um": pixel,
    }
    try:
        fields["sampled_volume_l"] = _sampled_volume_l(row, oid)
    except InvalidRecord as err:
        errors["sampled_volume_l"] = err
    try:
        fields["datetime"] = parse_date_time(row.get("object_date"), row.get("object_time"), oid)
    except InvalidRecord as err:
        errors["datetime"] = err
    for key, col, reason in (("lat", "object_lat", "bad_position"), ("lon", "object_lon", "bad_position"),
                             ("depth_min", "object_depth_min", "missing_depth"),
                             ("depth_max", "object_depth_max", "missing_depth")):
        try:
            fields[key] = parse_float(row.get(col), col, oid, reason)
        except InvalidRecord as err:
            errors[key] = err
    raw = dict(row)
    if pixel_src:
        raw["pixel_size_um_source"] = pixel_src
    rank = (row.get("img_rank") or "0").strip() or "0"
    img_name = (row.get("img_file_name") or "").strip()
    store_id = oid if rank in ("0", "") else f"{oid}#{rank}"
    item = Item(file=file, record=where, object_id=store_id, fields=fields, raw=raw, errors=errors)
    if not img_name:
        item.errors["image"] = InvalidRecord("missing_image", f"{file}: {where}: {oid}: img_file_name is empty")
    else:
        path = SourceTree.join(name, img_name)
        item.raw["image_path"] = path
        item.image = _loader(tree, path, file, where)
    yield item


def _loader(tree: SourceTree, path: str, file: str, where: str):
    def load():
        if not tree.exists(path):
            raise InvalidRecord("missing_image", f"{file}: {where}: image {path} not found")
        return read_image(tree, path)

    return load


def _check_row(row, header, types, oid, majority, acq_samples) -> None:
    if types is not None:
        for h, t in zip(header, types):
            v = row.get(h, "").strip()
            if t == "[f]" and v and v.lower() not in ("nan", "na"):
                try:
                    float(v)
                except ValueError:
                    raise InvalidRecord("bad_row", f"{oid}: column {h} is [f] but has {v!r}") from None
    cat, cid = row.get("object_annotation_category", "").strip(), row.get("object_annotation_category_id", "").strip()
    if cat and cid and majority.get(cat, cid) != cid:
        raise InvalidRecord(
            "bad_annotation", f"{oid}: category {cat!r} has id {cid} here but {majority[cat]} elsewhere in the source"
        )
    acq, sample = row.get("acq_id", "").strip(), row.get("sample_id", "").strip()
    if acq and sample:
        known = acq_samples.setdefault(acq, sample)
        if known != sample:
            raise InvalidRecord("bad_row", f"{oid}: acquisition {acq!r} is in sample {sample!r} but already in sample {known!r}")
    for col in ("object_annotation_date", "object_annotation_time"):
        if row.get(col, "").strip():
            try:
                parse_date_time(row.get("object_annotation_date") or "19700101", row.get("object_annotation_time") or "0000", oid)
            except InvalidRecord as err:
                raise InvalidRecord("bad_annotation", f"annotation {err.detail}") from None
            break


def _annotation(row: dict[str, str], oid: str) -> tuple[str, str | None]:
    """(label_status, label); the category is stripped (EcoTaxa's `import_test_weird` has `"Pilimelia\\t"`)."""
    cat = row.get("object_annotation_category", "").strip()
    cat_id = row.get("object_annotation_category_id", "").strip()
    raw_status = row.get("object_annotation_status", "").strip()
    if raw_status and raw_status.lower() not in _STATUS:
        raise InvalidRecord("bad_annotation", f"{oid}: annotation status {raw_status!r} is not V/P/D/validated/predicted/dubious")
    if (cat or cat_id) and not raw_status:
        raise InvalidRecord("bad_annotation", f"{oid}: category {cat or cat_id!r} given without an annotation status")
    if raw_status and not cat:
        raise InvalidRecord("bad_annotation", f"{oid}: status {raw_status!r} given without a category name")
    if not cat:
        return "unlabelled", None
    return _STATUS[raw_status.lower()], cat


def acq_samples_from_raw(raw_frames: Iterable[Any]) -> dict[str, str]:
    """``acq_id → sample_id`` pairs already in a store's raw tables (EcoTaxa sources)."""
    out: dict[str, str] = {}
    for df in raw_frames:
        if "acq_id" in df.columns and "sample_id" in df.columns:
            for acq, sample in zip(df["acq_id"], df["sample_id"]):
                if isinstance(acq, str) and acq and isinstance(sample, str) and sample:
                    out.setdefault(acq, sample)
    return out
