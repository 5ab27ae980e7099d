"""Writing to an AqQua store: one session of records, staged in a journal, then committed.

A :class:`StoreWriter` is one *session*: it validates and de-duplicates records (against the
committed store through the on-disk index, and against itself) and stages them in
``STORE/.journal/<session>/``: images in the session's own LMDB (key = content hash), table
rows in batch folders (a temporary folder renamed into place = one atomic batch commit).
Nothing of it is visible until :func:`aqqua_geo.store.commit.commit` merges one or more
sessions, in order, into new part files, appends the kept images to the store's shards and
replaces ``manifest.json`` (the single commit point). Many sessions (Dask workers) can stage
in parallel; the commit replays their records in order, so the result equals one serial run.

A killed session leaves its journal: the next run of the same session loads it (records
already staged answer ``"exists"``), so a re-run resumes and ends with the same store.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aqqua_geo._io import atomic_write_bytes
from aqqua_geo.store import codec, segments
from aqqua_geo.store.layout import (  # noqa: F401 - re-exported: the writer's public names
    _SESSION_MAP_SIZE,
    DEFAULT_SHARD_BYTES,
    FILE,
    JOURNAL,
    RAW_JSON,
    RECORD,
    SEQ,
    SESSION_IMAGES,
    committed_tokens,
    legacy_raw_path,
    lock_store,
    raw_path,
    session_name,
    shard_path,
    unlock_store,
)
from aqqua_geo.store.manifest import MANIFEST, StoreError, now_iso, read_manifest
from aqqua_geo.store.schema import (
    REASONS,
    REJECTED_SCHEMA,
    InvalidRecord,
    check_object_id,
    check_record,
    metadata_table,
    raw_table,
)


@dataclass
class WriterReport:
    """What one writer session did."""

    added: int = 0
    exists: int = 0
    resumed: int = 0  # of ``exists``: staged by a killed run of this session, not yet committed
    duplicates: int = 0
    conflicting_labels: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)  # values changed on the way in, by field

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


class StoreWriter:
    """Add images + harmonised records of one *source* to the store at *store_dir*.

    Use as a context manager; with ``publish=True`` (default) the store lock is held and the
    session is committed when the block exits without error. ``publish=False`` stages only
    (a parallel ingest's worker); the caller commits. On an exception nothing is published
    and the journal is kept, so running the same ingest again resumes.
    """

    def __init__(
        self,
        store_dir: str | Path,
        source: str,
        source_format: str,
        source_path: str = "",
        *,
        batch_size: int = 512,
        shard_max_bytes: int = DEFAULT_SHARD_BYTES,
        source_info: dict[str, Any] | None = None,
        codec: str | None = None,
        session: str | None = None,
        publish: bool = True,
    ):
        if not source or not str(source).strip():
            raise ValueError("StoreWriter: source name must be a non-empty string")
        self.store_dir = Path(store_dir)
        self.source = str(source)
        self.source_format = source_format
        self.source_path = str(source_path)
        self.source_info = dict(source_info or {})
        self.batch_size = int(batch_size)
        self.shard_max_bytes = int(shard_max_bytes)
        self.codec = codec  # None: the store's codec, or codec.DEFAULT_CODEC for a new store
        self.session = session or session_name(self.source)
        self.publish = publish
        self.report = WriterReport()
        self._lock_fh = None
        self._session_lock = None
        self._images: lmdb.Environment | None = None
        self._index = None
        self._open = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> StoreWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def session_dir(self) -> Path:
        return self.store_dir / JOURNAL / self.session

    def open(self) -> None:
        """Lock, check the store, load the session's journal if a killed run left one.

        Nothing is written until the first batch is staged: a run that fails before that
        leaves the store as it was.
        """
        self._created_dir = not self.store_dir.exists()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.publish:
                self._lock_fh = lock_store(self.store_dir)
            manifest = read_manifest(self.store_dir) if (self.store_dir / MANIFEST).exists() else None
            if manifest is not None and "tables" not in manifest:
                raise StoreError(f"{self.store_dir}: a version-1 store (format {manifest.get('format_version')}); "
                                 f"convert it first with: aqqua store upgrade {self.store_dir}")
            if self.publish:
                from aqqua_geo.store.commit import prepare

                manifest = prepare(self.store_dir, manifest)
            self._manifest = manifest
            if self.codec is None:
                self.codec = (manifest or {}).get("codec", {}).get("name", codec.DEFAULT_CODEC)
            codec.codec_info(self.codec)  # unknown name → KeyError now, not mid-ingest
            if manifest is not None and manifest.get("counts", {}).get("objects", 0) + manifest.get(
                    "counts", {}).get("duplicates", 0):
                from aqqua_geo.store.index import DedupIndex

                self._index = DedupIndex(self.store_dir)
            self._load_session()
        except BaseException:
            self.abort()
            raise
        self._buffer: dict[bytes, bytes] = {}
        self._rows: dict[str, list] = {"records": [], "raw": [], "rejected": []}
        self._open = True

    def _load_session(self) -> None:
        """This session's journal (a killed run's): what it already staged."""
        d = self.session_dir
        self._by_id: dict[str, tuple[str, str]] = {}  # id → ("K", hash) | ("D", kept id)
        self._by_hash: dict[str, tuple[str, str | None]] = {}
        self._stored: set[str] = set()  # hashes whose blob is in the session's LMDB
        self._next_batch, self._seq = 1, 0
        self._staged = 0
        if not d.is_dir():
            return
        self._lock_session()
        info = json.loads((d / "session.json").read_text()) if (d / "session.json").is_file() else {}
        if info.get("token") in committed_tokens(self._manifest or {}) or not info:
            self._release_session()
            shutil.rmtree(d, ignore_errors=True)  # committed already (a kill after the manifest)
            return
        for tmp in d.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)  # a batch that never got renamed: not staged
        self._token = info["token"]
        batches = sorted(p for p in d.glob("batch-*") if p.is_dir())
        for batch in batches:
            t = pq.read_table(batch / "records.parquet", columns=["object_id", "content_hash", "label", SEQ])
            for oid, h, lab in zip(*(t.column(c).to_pylist() for c in ("object_id", "content_hash", "label"))):
                self._classify(oid, h, lab)
            seqs = t.column(SEQ).to_pylist() + pq.read_table(batch / "rejected.parquet", columns=[SEQ]).column(
                SEQ).to_pylist()
            self._seq = max([self._seq, *(s + 1 for s in seqs)])
        self._stored = set(self._by_hash)
        self._next_batch = 1 + max([int(b.name.split("-")[1]) for b in batches] + [0])
        self._staged = len(batches)

    def _classify(self, oid: str, digest: str, label: str | None) -> str:
        kept = self._by_hash.get(digest) or (self._index.kept(digest) if self._index else None)
        if kept is None:
            self._by_hash[digest] = (oid, label)
            self._by_id[oid] = ("K", digest)
            return "added"
        self._by_id[oid] = ("D", kept[0])
        return "duplicate"

    def _lock_session(self) -> None:
        if self._session_lock is None:
            self.session_dir.mkdir(parents=True, exist_ok=True)
            fh = open(self.session_dir / ".lock", "a+")  # noqa: SIM115 - held until close
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise RuntimeError(f"{self.session_dir}: another process is writing this session") from None
            self._session_lock = fh

    def _release_session(self) -> None:
        if self._session_lock is not None:
            fcntl.flock(self._session_lock, fcntl.LOCK_UN)
            self._session_lock.close()
            self._session_lock = None

    def _start_session(self) -> None:
        """Create the session folder (and say which source it is) before the first batch."""
        self._lock_session()
        if not (self.session_dir / "session.json").is_file():
            self._token = secrets.token_hex(8)
            info = {"token": self._token, "source": self.source, "format": self.source_format,
                    "path": self.source_path, "started_at": now_iso(), "codec": self.codec,
                    "batch_size": self.batch_size, "info": self.source_info}
            atomic_write_bytes(self.session_dir / "session.json", json.dumps(info).encode())

    def _known(self, object_id: str) -> tuple[str, str] | None:
        known = self._by_id.get(object_id)
        if known is not None or self._index is None:
            return known
        try:
            kind, digest, other = self._index.lookup_id(object_id)
        except KeyError:
            return None
        return (kind, digest) if kind == "K" else (kind, str(other))

    # ------------------------------------------------------------------ adding
    def add(self, object_id: str, image: np.ndarray, record: dict[str, Any], raw: dict[str, Any] | None = None,
            *, file: str = "", record_name: str = "") -> str:
        """Add one object; returns ``"added"``, ``"duplicate"`` or ``"exists"``.

        Raises :class:`InvalidRecord` (with a rejection reason) if the record or image is
        unusable; the caller decides whether to :meth:`reject` it. *file* and *record_name*
        say where it came from (for the rejection a later commit may have to write).
        """
        self._require_open()
        object_id = str(object_id)
        check_object_id(object_id)
        if not isinstance(image, np.ndarray) or image.size == 0:
            raise InvalidRecord("empty_image", f"{object_id}: image has no pixels")
        try:
            digest = codec.content_hash(image)
        except (TypeError, ValueError) as err:
            raise InvalidRecord("corrupt_image", f"{object_id}: {err}") from None
        known = self._known(object_id)
        if known is not None:
            if known[0] == "D" or known[1] == digest:
                self.report.exists += 1
                self.report.resumed += int(object_id in self._by_id)
                return "exists"
            raise InvalidRecord(
                "duplicate_object_id", f"{object_id}: object id already in the store with different pixels"
            )
        warnings: list[str] = []
        row = check_record(object_id, {**record, "source": self.source}, warnings=warnings)
        raw_row = {**(raw or {}), "object_id": object_id, SEQ: self._seq}
        if warnings:
            raw_row["aqqua_warnings"] = "; ".join(warnings)
            for w in warnings:
                self.report.warnings[w.split("=")[0]] += 1
        image = np.ascontiguousarray(image)
        row.update(height=int(image.shape[0]), width=int(image.shape[1]),
                   channels=int(image.shape[2]) if image.ndim == 3 else 1, content_hash=digest, shard=-1)
        if digest not in self._stored and (self._index is None or self._index.kept(digest) is None):
            try:
                blob = codec.encode(image, self.codec)
                segments.check_fits(object_id.encode("utf-8"), len(blob))
            except ValueError as err:
                raise InvalidRecord("too_large", f"{object_id}: {err}") from None
            self._buffer[bytes.fromhex(digest)] = blob
            self._stored.add(digest)
        outcome = self._classify(object_id, digest, row["label"])
        if outcome == "duplicate":
            kept_label = (self._by_hash.get(digest) or self._index.kept(digest))[1]
            conflict = row["label"] is not None and kept_label is not None and row["label"] != kept_label
            self.report.duplicates += 1
            self.report.conflicting_labels += int(conflict)
        else:
            self.report.added += 1
        self._rows["records"].append({**row, SEQ: self._seq, FILE: str(file), RECORD: str(record_name),
                                      RAW_JSON: json.dumps(raw, default=str, ensure_ascii=False) if raw else None})
        self._rows["raw"].append(raw_row)
        self._seq += 1
        self._maybe_flush()
        return outcome

    def reject(
        self, *, file: str, record: str, reason: str, detail: str,
        raw: dict[str, Any] | None = None, object_id: str | None = None,
    ) -> None:
        """Record that *record* of *file* was not ingested, with a reason code and message."""
        self._require_open()
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; use one of {REASONS}")
        self._rows["rejected"].append(
            {"source": self.source, "file": str(file), "record": str(record), "object_id": object_id,
             "reason": reason, "detail": detail,
             "raw_json": json.dumps(raw, default=str, ensure_ascii=False) if raw else None, SEQ: self._seq}
        )
        self._seq += 1
        self.report.rejected_by_reason[reason] += 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self._rows["records"]) + len(self._rows["rejected"]) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Stage buffered images (one LMDB transaction) then their rows (one renamed folder)."""
        self._require_open()
        if not any(self._rows.values()):
            return
        self._start_session()
        if self._buffer:
            if self._images is None:
                self._images = lmdb.open(str(self.session_dir / SESSION_IMAGES), subdir=False,
                                         map_size=_SESSION_MAP_SIZE, readahead=False, meminit=False)
            psize = self._images.stat()["psize"]
            items = sorted(seg for key, blob in self._buffer.items() for seg in segments.split(key, blob, psize))
            with self._images.begin(write=True) as txn:
                txn.cursor().putmulti(items)
            self._images.sync(True)
        name = f"batch-{self._next_batch:06d}"
        tmp = self.session_dir / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        records = metadata_table(self._rows["records"])
        for col, typ in ((SEQ, pa.int64()), (FILE, pa.string()), (RECORD, pa.string()), (RAW_JSON, pa.string())):
            records = records.append_column(pa.field(col, typ), pa.array([r[col] for r in self._rows["records"]], typ))
        pq.write_table(records, tmp / "records.parquet")
        raw = raw_table(self._rows["raw"])
        seq = pa.array([r[SEQ] for r in self._rows["raw"]], pa.int64())
        raw = (raw.set_column(raw.schema.get_field_index(SEQ), SEQ, seq) if SEQ in raw.column_names
               else raw.append_column(SEQ, seq))
        pq.write_table(raw, tmp / "raw.parquet")
        pq.write_table(pa.Table.from_pylist(self._rows["rejected"], schema=REJECTED_SCHEMA.append(
            pa.field(SEQ, pa.int64()))), tmp / "rejected.parquet")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, self.session_dir / name)  # atomic: the batch is staged
        self._staged += 1
        self._next_batch += 1
        self._buffer.clear()
        self._rows = {"records": [], "raw": [], "rejected": []}

    # ------------------------------------------------------------------ publishing
    def close(self) -> None:
        """Flush; with ``publish``, commit the session (a new store generation)."""
        if not self._open:
            return
        try:
            self.flush()
            self._close_handles()
            if self.publish:
                from aqqua_geo.store.commit import commit

                new_source = self.source not in {e["source"] for e in (self._manifest or {}).get("sources", [])}
                if self._staged or new_source or self._manifest is None:
                    if not self._staged:
                        self._start_session()  # an empty session still registers the source
                    commit(self.store_dir, [self.session_dir], shard_max_bytes=self.shard_max_bytes,
                           codec_name=self.codec)
                # else: nothing new (an idempotent re-run): the store is left byte for byte as it was
        finally:
            self._release()

    def abort(self) -> None:
        """Stop without publishing. Batches staged by this session stay (a re-run resumes);
        a session that staged nothing leaves no trace."""
        try:
            self._close_handles()
            d = self.session_dir
            if not getattr(self, "_staged", 0) and d.is_dir() and not any(d.glob("batch-*")):
                shutil.rmtree(d, ignore_errors=True)
                journal = self.store_dir / JOURNAL
                if journal.is_dir() and not any(journal.iterdir()):
                    journal.rmdir()
        finally:
            self._release()
            if getattr(self, "_created_dir", False) and not getattr(self, "_staged", 0):
                (self.store_dir / ".lock").unlink(missing_ok=True)
                try:
                    self.store_dir.rmdir()
                except OSError:
                    pass

    def _close_handles(self) -> None:
        if self._images is not None:
            self._images.close()
            self._images = None
        if self._index is not None:
            self._index.close()
            self._index = None

    def _release(self) -> None:
        self._close_handles()
        self._release_session()
        if self._lock_fh is not None:
            unlock_store(self._lock_fh)
            self._lock_fh = None
        self._open = False

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError("StoreWriter is not open: use it as a context manager")


