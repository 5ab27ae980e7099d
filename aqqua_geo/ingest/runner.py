"""Drive an ingestor into a store (:func:`ingest`) or dry-run it (:func:`validate`)."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aqqua_geo.ingest.common import FileProblem, Item, SourceTree, canonical_instrument
from aqqua_geo.store import codec, segments
from aqqua_geo.store.schema import InvalidRecord, check_record, record_problems, to_utc

FORMATS = ("ecotaxa", "ifcb", "folder")
_FLOAT_KEYS = ("lat", "lon", "depth", "depth_min", "depth_max", "altitude", "pixel_size_um", "sampled_volume_l")
SETTABLE = (*_FLOAT_KEYS, "datetime", "instrument", "sample_id", "label", "label_status")
_ERROR_ORDER = ("row", "image", "datetime", "lat", "lon", "depth_min", "depth_max", "pixel_size_um")


class IngestError(RuntimeError):
    """Raised in strict mode for the first record that would be rejected."""


@dataclass
class IngestReport:
    """What an ingest (or a dry run) did; ``summary()`` gives the text printed by the CLI."""

    source: str
    fmt: str
    src: str
    store_dir: str | None
    dry_run: bool = False
    records: int = 0
    ingested: int = 0
    exists: int = 0
    duplicates: int = 0
    conflicting_labels: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    rejections: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warning_counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    # n_* spellings, as in the manifest's per-source counts
    n_ingested = property(lambda self: self.ingested)
    n_duplicates = property(lambda self: self.duplicates)
    n_rejected = property(lambda self: self.rejected)
    n_exists = property(lambda self: self.exists)

    def summary(self, max_examples: int = 5) -> str:
        """Human-readable summary: counts, rejections by reason (with examples), notes."""
        verb = "would ingest" if self.dry_run else "ingested"
        lines = [
            f"{self.fmt} source {self.source!r} from {self.src}" + (f" -> {self.store_dir}" if self.store_dir else " (dry run)"),
            f"  records: {self.records}  {verb}: {self.ingested}  already present: {self.exists}  "
            f"duplicates: {self.duplicates} ({self.conflicting_labels} with a conflicting label)  "
            f"rejected: {self.rejected}  [{self.seconds:.1f} s]",
        ]
        for reason, n in sorted(self.rejected_by_reason.items()):
            lines.append(f"  rejected {reason}: {n}")
            for r in [r for r in self.rejections if r["reason"] == reason][:max_examples]:
                lines.append(f"    - {r['detail']}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def parse_constants(pairs: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """User constants (``["instrument=UVP6", "pixel_size_um=73"]`` or a dict) → typed values."""
    if not pairs:
        return {}
    items = dict(p.split("=", 1) if "=" in p else (p, None) for p in pairs) if isinstance(pairs, (list, tuple)) else dict(pairs)
    out: dict[str, Any] = {}
    for key, value in items.items():
        key = key.strip()
        if key not in SETTABLE:
            raise ValueError(f"--set {key}: unknown field; settable fields are {', '.join(SETTABLE)}")
        if value is None or str(value).strip() == "":
            raise ValueError(f"--set {key}: missing value (use --set {key}=VALUE)")
        if key in _FLOAT_KEYS:
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"--set {key}={value!r}: not a number") from None
        elif key == "datetime":
            try:
                out[key] = to_utc(str(value))
            except (ValueError, TypeError) as err:
                raise ValueError(f"--set datetime={value!r}: not a date/time ({err})") from None
        elif key == "instrument":
            out[key] = canonical_instrument(str(value))
        else:
            out[key] = str(value).strip()
    if "depth" in out:
        out["depth_min"] = out["depth_max"] = out.pop("depth")
    if "altitude" in out:  # lakes: altitude stored as negative depth
        out["depth_min"] = out["depth_max"] = -out.pop("altitude")
    return out


def _apply_constants(item: Item, constants: dict[str, Any], raw_constants: dict[str, Any]) -> None:
    """User constants override the record's fields (and clear their parse errors)."""
    for key, value in constants.items():
        item.fields[key] = value
        item.errors.pop(key, None)
    for key, value in raw_constants.items():
        item.raw[f"user_set:{key}"] = str(value)


def _store_state(store_dir: str | Path | None) -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
    """(object id → content hash, content hash → (object id, label)) of an existing store."""
    if not store_dir or not (Path(store_dir) / "manifest.json").is_file():
        return {}, {}
    from aqqua_geo.store import AqquaStore

    table = AqquaStore(store_dir)._dataset.to_table(columns=["object_id", "content_hash", "label"])
    ids, hashes = table.column("object_id").to_pylist(), table.column("content_hash").to_pylist()
    labels = table.column("label").to_pylist()
    return dict(zip(ids, hashes)), {h: (oid, lab) for oid, h, lab in zip(ids, hashes, labels)}


_TREES: dict[tuple, SourceTree] = {}


def _tree(src: Path, options: dict[str, Any], listed: SourceTree | None = None) -> SourceTree:
    """The source's file tree, listed once per process and ingest run (``options["_run"]``: every
    chunk of an ingest walks the same tree; listing 20 000 files costs ~1 s); no run: list it
    again. *listed*: the run's listing, shipped by the client to a Dask worker (kept for the run)."""
    follow_symlinks, run = bool(options.get("follow_symlinks")), options.get("_run")
    if run is None:
        return SourceTree(src, follow_symlinks=follow_symlinks)
    key = (str(src.resolve()), follow_symlinks, run)
    if key not in _TREES:
        _TREES.clear()
        _TREES[key] = listed if listed is not None else SourceTree(src, follow_symlinks=follow_symlinks)
    return _TREES[key]


def _iterator(src: Path, fmt: str, options: dict[str, Any], store_dir: Path | None,
              skip: int = 0) -> Iterator[Item | FileProblem | None]:
    """The record stream of *src*; values before position *skip* may be ``None`` (the caller
    drops them: formats that can skip cheaply do)."""
    tree = _tree(src, options)
    if fmt == "ecotaxa":
        from aqqua_geo.ingest.ecotaxa import acq_samples_from_raw, iter_ecotaxa

        existing = {}
        if store_dir is not None and (store_dir / "manifest.json").is_file():
            from aqqua_geo.store import AqquaStore

            existing = acq_samples_from_raw([AqquaStore(store_dir).raw()])
        return iter_ecotaxa(tree, existing_acq_samples=existing)
    if fmt == "ifcb":
        from aqqua_geo.ingest.ifcb import iter_ifcb

        return iter_ifcb(tree, positions=options.get("positions"), pixel_size_um=options.get("pixel_size_um"))
    if fmt == "folder":
        from aqqua_geo.ingest.folder import iter_folder

        return iter_folder(tree, metadata=options.get("metadata"), mapping=options.get("mapping"), skip=skip)
    raise ValueError(f"format {fmt!r}: use one of {FORMATS}")


def _where(item: Item, detail: str) -> str:
    """One line naming the file and the record."""
    prefix = f"{item.file}: {item.record}: "
    return detail if detail.startswith(item.file) else prefix + detail


def _default_source(src: Path) -> str:
    """A source name from SRC: the folder's name (``.`` → the current folder's), or the
    archive's stem."""
    name = src.stem if src.is_file() else src.resolve().name
    if not name.strip():
        raise ValueError(f"{src}: cannot name the source from this path; give one with --source NAME")
    return name


#: Records per staged session (chunk): the unit of parallel work and of resume. Fixed, so a
#: re-run (serial or on any number of workers) finds the journal of a killed run.
CHUNK_RECORDS = 2048


def _chunk(src, fmt, store_dir, source, chunk, chunk_records, constants, raw_constants, strict, batch_size, codec,
           options, progress=False, listed: SourceTree | None = None) -> dict[str, Any]:
    """Stage the records ``chunk*chunk_records ..`` of the source as one writer session.

    Runs in-process (serial ingest) or on a Dask worker; every chunk parses the (cheap)
    metadata stream and decodes only its own images, so chunks need no format-specific split.
    *listed*: the source's file listing made by the client (a worker then does not list the
    folder again: on a parallel file system that is the slow part).
    """
    from tqdm.auto import tqdm

    from aqqua_geo.store import StoreWriter
    from aqqua_geo.store.writer import session_name

    if listed is not None:
        _tree(Path(src), options, listed)

    lo, hi = chunk * chunk_records, (chunk + 1) * chunk_records
    out = {"records": 0, "rejected_by_reason": Counter(), "rejections": [], "notes": [], "warnings": Counter(),
           "exists": 0}
    info = {"constants": {k: str(v) for k, v in raw_constants.items()}}
    writer = StoreWriter(store_dir, source=source, source_format=fmt, source_path=str(Path(src).resolve()),
                         batch_size=batch_size, codec=codec, source_info=info, publish=False,
                         session=session_name(source, chunk))
    writer.open()

    def reject(file: str, record: str, reason: str, detail: str, raw=None, object_id=None, reasons=None) -> None:
        if strict:
            raise IngestError(detail)
        out["rejected_by_reason"][reason] += 1
        out["rejections"].append({"file": file, "record": record, "reason": reason, "detail": detail,
                                  "reasons": ",".join(reasons or (reason,))})
        writer.reject(file=file, record=record, reason=reason, detail=detail, raw=raw, object_id=object_id)

    try:
        items = _iterator(Path(src), fmt, options, Path(store_dir), skip=lo)
        for i, item in enumerate(tqdm(items, desc=f"ingest {source}", unit="rec", disable=not progress,
                                      mininterval=1.0)):
            if i < lo:
                continue
            if i >= hi:
                break
            if isinstance(item, FileProblem):
                if item.reason is None:
                    out["notes"].append(item.detail)
                else:
                    out["records"] += 1  # a record (or a file counted as one) that could not be read
                    reject(item.file, item.record, item.reason, item.detail, item.raw, item.object_id)
                continue
            out["records"] += 1
            _apply_constants(item, constants, raw_constants)
            oid = item.object_id  # an id seen before: same pixels → exists, other pixels → rejected
            try:
                image, record = _checked(item, source)
                writer.add(oid, image, record, item.raw, file=item.file, record_name=item.record)
            except InvalidRecord as err:
                reject(item.file, item.record, err.reason, _where(item, err.detail), item.raw, oid, err.reasons)
        writer.close()
    except BaseException:
        writer.abort()  # batches already staged stay in the journal: a re-run resumes
        raise
    out["exists"] = writer.report.exists - writer.report.resumed  # already in the committed store
    out["warnings"] = writer.report.warnings
    return out


def _count_records(src: Path, fmt: str, options: dict[str, Any], store_dir: Path) -> int:
    return sum(1 for _ in _iterator(src, fmt, options, store_dir, skip=sys.maxsize))  # positions only: nothing built


def _dask_client(workers: int | None, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    import dask

    # no dashboard, so nobody reads the workers' statistical profiler: it samples every stack
    # each 10 ms, CPU taken from the staging on a small machine. The workers import the staging
    # code as they start (while this process counts the records), not in their first chunk.
    preload = [*dask.config.get("distributed.worker.preload", []), "aqqua_geo.ingest.preload_worker"]
    with dask.config.set({"distributed.worker.profile.enabled": False, "distributed.worker.preload": preload}):
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def _close_client(client, cluster) -> None:
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


@contextmanager
def _closing_client(client, cluster):
    """Close the Dask client (and its cluster) on exit; ``release()`` starts closing it in a
    thread as soon as the workers are no longer needed, so the shutdown (~0.3 s for a
    LocalCluster) overlaps the commit's last steps instead of following them."""
    closing: list[threading.Thread] = []

    def release() -> None:
        if client is not None and not closing:
            closing.append(threading.Thread(target=_close_client, args=(client, cluster), daemon=True))
            closing[0].start()

    try:
        yield release
    finally:
        if closing:
            closing[0].join()
        else:
            _close_client(client, cluster)


def _staged(args, rest, n_chunks: int, client, progress: bool):
    """The chunks' staging results in chunk order: staged in this process, or all submitted to
    the Dask *client*'s workers at once and yielded as each is done."""
    if client is None:
        for k in range(n_chunks):
            yield _chunk(*args, k, *rest, progress=progress)
        return
    src, source, options = args[0], args[3], rest[-1]
    # the listing the count made, sent to each worker once (a future: not pickled per chunk)
    listed = client.scatter(_tree(Path(src), options), broadcast=True, hash=False)
    futures = deque(client.submit(_chunk, *args, k, *rest, listed=listed, key=f"aqqua-ingest-{source}-{k}",
                                  pure=False) for k in range(n_chunks))
    del listed  # the chunks hold it now
    while futures:
        result = futures.popleft().result()  # each future is released once read: when the last
        yield result  # result is yielded, this process holds no future (the client may close)


def _run(src, fmt, store_dir, *, source=None, constants=None, strict=False, progress=True, batch_size=512, codec=None,
         workers=None, scheduler=None, chunk_records=CHUNK_RECORDS, **options):
    src = Path(src)
    raw_constants = (dict(p.split("=", 1) for p in constants) if isinstance(constants, (list, tuple))
                     else dict(constants or {}))
    constants = parse_constants(constants)
    source = source or _default_source(src)
    report = IngestReport(source=source, fmt=fmt, src=str(src), store_dir=None if store_dir is None else str(store_dir),
                          dry_run=store_dir is None)
    t0 = time.perf_counter()
    if store_dir is not None:
        _ingest_chunks(report, src, fmt, Path(store_dir), source, constants, raw_constants, strict, progress,
                       batch_size, codec, workers, scheduler, int(chunk_records), options)
    else:
        _validate(report, src, fmt, source, constants, raw_constants, strict, progress, options)
    for key, n in sorted(report.warning_counts.items()):
        report.notes.append(f"{n} record(s): {_WARNING_TEXT.get(key, key)}")
    report.seconds = time.perf_counter() - t0
    return report


def _ingest_chunks(report, src, fmt, store_dir, source, constants, raw_constants, strict, progress, batch_size, codec,
                   workers, scheduler, chunk_records, options) -> None:
    """Stage every chunk (in-process, or on Dask workers), merging them in chunk order into one commit."""
    from aqqua_geo.store.commit import Commit, prepare
    from aqqua_geo.store.manifest import MANIFEST, read_manifest
    from aqqua_geo.store.writer import JOURNAL, lock_store, session_name, unlock_store

    if chunk_records < 1:
        raise ValueError(f"chunk_records must be >= 1, got {chunk_records}")
    created = not store_dir.exists()
    lock = lock_store(store_dir)
    try:
        if (store_dir / MANIFEST).is_file():
            manifest = read_manifest(store_dir)
            if "tables" in manifest:
                prepare(store_dir, manifest)  # undo a half-done commit before anyone reads the index
        import secrets

        options = {**options, "_run": secrets.token_hex(8)}  # chunks of this run share one file listing
        # the cluster starts (worker processes import) while this process counts the records
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(_dask_client, workers, scheduler) if workers or scheduler else None
            try:
                n = _count_records(src, fmt, options, store_dir)
            except BaseException:
                if starting is not None:
                    _close_client(*starting.result())
                raise
            client, cluster = starting.result() if starting is not None else (None, None)
        n_chunks = max(1, -(-n // chunk_records))
        args = (src, fmt, store_dir, source)
        rest = (chunk_records, constants, raw_constants, strict, batch_size, codec, options)
        sessions = [store_dir / JOURNAL / session_name(source, k) for k in range(n_chunks)]
        # each chunk's session is merged as soon as it is staged (in chunk order), so on a cluster
        # the merge overlaps the staging of later chunks; the manifest is written once, at the end
        with _closing_client(client, cluster) as release_workers, Commit(store_dir, codec_name=codec) as committer:
            for k, part in enumerate(_staged(args, rest, n_chunks, client, progress)):
                if k == n_chunks - 1:
                    release_workers()  # every chunk is staged
                report.records += part["records"]
                report.rejected_by_reason.update(part["rejected_by_reason"])
                report.rejections += part["rejections"]
                report.notes += [x for x in part["notes"] if x not in report.notes]
                report.warning_counts.update(part["warnings"])
                report.exists += part["exists"]
                committer.add(sessions[k])
            if not committer.sessions:  # nothing staged: still register a new source
                known = (store_dir / MANIFEST).is_file() and source in {
                    e["source"] for e in read_manifest(store_dir).get("sources", [])}
                if not known:
                    from aqqua_geo.store import StoreWriter

                    w = StoreWriter(store_dir, source=source, source_format=fmt, source_path=str(src.resolve()),
                                    codec=codec, publish=False, session=sessions[0].name,
                                    source_info={"constants": {k: str(v) for k, v in raw_constants.items()}})
                    w.open()
                    w._start_session()
                    w.close()
                    committer.add(sessions[0])
            if committer.sessions:
                result = committer.finish()
                report.ingested, report.duplicates = result.added, result.duplicates
                report.exists += result.exists
                report.conflicting_labels = result.conflicting_labels
                clash = result.rejected_by_reason.get("duplicate_object_id", 0) - report.rejected_by_reason.get(
                    "duplicate_object_id", 0)
                if clash > 0:  # the same id with other pixels in two chunks: decided at commit
                    report.rejected_by_reason["duplicate_object_id"] += clash
    except BaseException:
        unlock_store(lock)
        lock = None
        if created and not (store_dir / MANIFEST).exists() and not (store_dir / JOURNAL).exists():
            (store_dir / ".lock").unlink(missing_ok=True)
            try:
                store_dir.rmdir()
            except OSError:
                pass
        raise
    finally:
        if lock is not None:
            unlock_store(lock)


def _validate(report, src, fmt, source, constants, raw_constants, strict, progress, options) -> None:
    """Dry run: what the writer would answer (against the store given as against_store)."""
    from tqdm.auto import tqdm

    items = _iterator(src, fmt, options, Path(options["against_store"]) if options.get("against_store") else None)
    known, seen_hashes = _store_state(options.get("against_store"))

    def reject(file: str, record: str, reason: str, detail: str, reasons=None) -> None:
        if strict:
            raise IngestError(detail)
        report.rejected_by_reason[reason] += 1
        report.rejections.append({"file": file, "record": record, "reason": reason, "detail": detail,
                                  "reasons": ",".join(reasons or (reason,))})

    for item in tqdm(items, desc=f"validate {source}", unit="rec", disable=not progress, mininterval=1.0):
        if isinstance(item, FileProblem):
            if item.reason is None:
                report.notes.append(item.detail)
            else:
                report.records += 1
                reject(item.file, item.record, item.reason, item.detail)
            continue
        report.records += 1
        _apply_constants(item, constants, raw_constants)
        oid = item.object_id
        try:
            image, record = _checked(item, source)
            warnings: list[str] = []
            _dry_add(oid, image, record, source, seen_hashes, known, report, warnings)
            for w in warnings:
                report.warning_counts[w.split("=")[0]] += 1
        except InvalidRecord as err:
            reject(item.file, item.record, err.reason, _where(item, err.detail), err.reasons)


_WARNING_TEXT = {"lon": "longitude given as 0..360, stored as -180..180 (see raw column aqqua_warnings)"}


def _checked(item: Item, source: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The record's image and harmonised fields, or InvalidRecord carrying *every* problem
    (parse errors, the image, the harmonised checks), not only the first."""
    keyed = sorted(item.errors.items(),
                   key=lambda kv: _ERROR_ORDER.index(kv[0]) if kv[0] in _ERROR_ORDER else len(_ERROR_ORDER))
    problems = [err for _, err in keyed]
    image = None
    if "image" not in item.errors and "row" not in item.errors:
        if item.image is None:
            problems.insert(len([k for k, _ in keyed if k == "row"]),
                            InvalidRecord("missing_image", f"{item.object_id}: no image"))
        else:
            try:
                image = item.image()
            except InvalidRecord as err:
                problems.insert(len([k for k, _ in keyed if k == "row"]), err)
    if "row" not in item.errors:
        _, more = record_problems(str(item.object_id or ""), {**item.fields, "source": source}, skip=set(item.errors))
        problems += more
    if problems:
        raise InvalidRecord.combine(problems)
    return image, dict(item.fields)


def _dry_add(oid, image: np.ndarray, record: dict, source: str, seen: dict, known: dict, report: IngestReport,
             warnings: list[str] | None = None) -> str:
    """What :meth:`StoreWriter.add` would answer, without writing."""
    try:
        digest = codec.content_hash(image)
    except (TypeError, ValueError) as err:
        raise InvalidRecord("corrupt_image", f"{oid}: {err}") from None
    if oid in known:
        if known[oid] != digest:
            raise InvalidRecord("duplicate_object_id", f"{oid}: object id already in the store with different pixels")
        report.exists += 1
        return "exists"
    row = check_record(oid, {**record, "source": source}, warnings=warnings)
    try:
        segments.check_fits(str(oid).encode("utf-8"), len(codec.encode(image)))
    except ValueError as err:
        raise InvalidRecord("too_large", f"{oid}: {err}") from None
    if digest in seen:
        report.duplicates += 1
        known[oid] = digest
        kept_label = seen[digest][1]
        report.conflicting_labels += int(row["label"] is not None and kept_label is not None and row["label"] != kept_label)
        return "duplicate"
    seen[digest] = (oid, row["label"])
    known[oid] = digest
    report.ingested += 1
    return "added"


def ingest(src: str | Path, store_dir: str | Path, fmt: str = "ecotaxa", **options: Any) -> IngestReport:
    """Ingest *src* (format *fmt*) into the store at *store_dir* (created if needed).

    Options: ``source`` (name, default the folder name), ``constants`` (CLI ``--set``; dict or
    ``["key=value"]``, applied to every record and recorded in raw/ as ``user_set:<key>``),
    ``strict`` (raise :class:`IngestError` at the first bad record; nothing is written),
    ``progress``, ``batch_size``, ``codec`` (``zstd`` small, default | ``lz4hc`` fast; new stores); IFCB: ``positions`` (CSV bin,lat,lon,depth),
    ``pixel_size_um``; folder: ``metadata`` (CSV/Parquet), ``mapping`` (field → column);
    ``follow_symlinks`` (links out of SRC are refused by default); ``workers`` (stage the
    chunks on a Dask LocalCluster of that many processes) or ``scheduler`` (address of any
    Dask cluster); ``chunk_records`` (records per chunk, default :data:`CHUNK_RECORDS`).
    The store equals the serial ingest's whatever the number of workers.
    Re-running is idempotent; a killed run resumes when run again.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {FORMATS}")
    if options.get("strict"):  # a dry run first: raises before anything is written
        _run(src, fmt, None, **{**options, "progress": False, "against_store": store_dir})
    return _run(src, fmt, store_dir, **options)


def validate(src: str | Path, fmt: str = "ecotaxa", **options: Any) -> IngestReport:
    """Dry run of :func:`ingest`: what would be ingested and rejected, and why. Writes nothing.

    With ``against_store=DIR`` the objects already in that store count as ``exists`` (or, with other
    pixels under the same id, as ``duplicate_object_id``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {FORMATS}")
    return _run(src, fmt, None, **options)
