"""Writing to an AqQua store: atomic, idempotent and resumable.

How a crash (even ``kill -9``) is survived:

* images go to LMDB in one transaction per batch (LMDB commits are atomic);
* right after each LMDB commit, the batch's table rows (metadata, raw, rejected, duplicates)
  are written to ``STORE/.journal/batch-NNNNNN/`` as a temporary folder renamed into place;
* :meth:`StoreWriter.close` merges the journal into the store's Parquet files (each replaced
  atomically, ``manifest.json`` last) and only then deletes the journal.

A new writer first loads the committed tables *and* any journal left by a killed run, so an
object already there is answered ``"exists"``; an image that reached LMDB without its journal
batch is simply written again (same key, same bytes). Re-running an ingest is therefore
idempotent and a killed ingest resumes to the same final store.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aqqua_geo._io import atomic_write_bytes, atomic_write_parquet
from aqqua_geo.store import codec, segments
from aqqua_geo.store.envs import close_env, open_env
from aqqua_geo.store.manifest import (
    GENERATION_KEY,
    MANIFEST,
    new_manifest,
    now_iso,
    package_version,
    read_manifest,
    write_manifest,
)
from aqqua_geo.store.schema import (
    DUPLICATES_SCHEMA,
    HARMONISED_SCHEMA,
    REASONS,
    REJECTED_SCHEMA,
    InvalidRecord,
    check_object_id,
    check_record,
    metadata_table,
    raw_table,
)

JOURNAL = ".journal"
SHARD_NAME = "shard-{:04d}.lmdb"
DEFAULT_SHARD_BYTES = 4 << 30
_RAW_SOURCE = "__aqqua_source"  # journal-only column: which source a raw row belongs to
_RAW_KEYS = ("object_id", "kept_object_id")


def shard_path(store_dir: str | Path, shard: int) -> Path:
    """Path of LMDB shard number *shard*."""
    return Path(store_dir) / "images" / SHARD_NAME.format(shard)


def raw_path(store_dir: str | Path, source: str) -> Path:
    """Path of the raw table of *source* (file-name-safe and one file per source name).

    A name that is not already file-name-safe gets a short hash of the real name, so that
    ``cruise/1`` and ``cruise_1`` never share a raw table.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source).lstrip(".") or "_"
    if safe != source:
        safe += "-" + hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return Path(store_dir) / "raw" / (safe + ".parquet")


def legacy_raw_path(store_dir: str | Path, source: str) -> Path:
    """Where stores written before 1.0.x kept the raw table of *source*."""
    return Path(store_dir) / "raw" / (re.sub(r"[^A-Za-z0-9._-]+", "_", source) + ".parquet")


@dataclass
class WriterReport:
    """What one writer session did."""

    added: int = 0
    exists: int = 0
    duplicates: int = 0
    conflicting_labels: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)  # values changed on the way in, by field

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


def _read_table(path: Path, schema: pa.Schema | None = None) -> pa.Table | None:
    if not path.is_file():
        return None
    table = pq.read_table(path)
    return table.cast(schema) if schema is not None else table


def _concat(tables: list[pa.Table], schema: pa.Schema | None = None) -> pa.Table | None:
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return schema.empty_table() if schema is not None else None
    if schema is not None:
        return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    return pa.concat_tables(tables, promote_options="permissive")


def _dedupe(table: pa.Table, keys: list[str]) -> pa.Table:
    """Keep the first row of each *keys* combination, in order."""
    if table.num_rows == 0:
        return table
    df = table.select(keys).to_pandas()
    keep = ~df.duplicated(keep="first").to_numpy()
    return table.filter(pa.array(keep))


class StoreWriter:
    """Add images + harmonised records of one *source* to the store at *store_dir*.

    Use as a context manager; the store is published when the block exits without error.
    On an exception nothing is published and the journal is kept, so running the same
    ingest again resumes.
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
        self.report = WriterReport()
        self._lock_fh = None
        self._used_shards: set[int] = set()
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

    def open(self) -> None:
        """Lock the store, check it, load its state and any journal a killed run left.

        Nothing is written until the first batch is committed: a run that fails before that
        (see :meth:`abort`) leaves the store as it was, without a journal or a new source.
        """
        self._created_dir = not self.store_dir.exists()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.store_dir / ".lock", "a+")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise RuntimeError(f"{self.store_dir}: another process is writing to this store") from None
        try:
            self._manifest = read_manifest(self.store_dir) if (self.store_dir / MANIFEST).exists() else new_manifest()
            if (self.store_dir / MANIFEST).exists():
                self._check_consistent()
            if self.codec is None:
                self.codec = self._manifest.get("codec", {}).get("name", codec.DEFAULT_CODEC)
            codec.codec_info(self.codec)  # unknown name → KeyError now, not mid-ingest
            self._journal = self.store_dir / JOURNAL
            for tmp in self._journal.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)  # a batch that never got renamed: not committed
            sources_path = self._journal / "sources.json"
            self._sources = json.loads(sources_path.read_text()) if sources_path.exists() else {}
            self._new_source = self.source not in self._sources and self.source not in {
                e["source"] for e in self._manifest.get("sources", [])}
            self._sources.setdefault(
                self.source,
                {"format": self.source_format, "path": self.source_path, "started_at": now_iso(), **self.source_info},
            )
            self._load_state()
        except BaseException:
            self.abort()
            raise
        self._committed = 0  # journal batches committed by this session
        self._buffer: list[tuple[str, bytes, int]] = []
        self._rows: dict[str, list] = {"metadata": [], "raw": [], "rejected": [], "duplicates": []}
        self._open = True

    def _check_consistent(self) -> None:
        """Refuse to write into a store whose files disagree with its manifest."""
        from aqqua_geo.store.manifest import StoreError, check_files, describe, read_parquet_once

        meta = self.store_dir / "metadata.parquet"
        table = read_parquet_once(meta) if meta.is_file() else None
        problems = check_files(self.store_dir, self._manifest, table)
        for entry in self._manifest.get("sources", []):
            if entry.get("n_ingested", 0) + entry.get("n_duplicates", 0) and not (
                    raw_path(self.store_dir, entry["source"]).is_file()
                    or legacy_raw_path(self.store_dir, entry["source"]).is_file()):
                problems.append(f"the raw table of source {entry['source']!r} is missing")
        if problems:
            raise StoreError(describe(self.store_dir, problems))

    def _load_state(self) -> None:
        """Known objects (id → hash, label, shard), hashes → kept id, known duplicates."""
        meta = [_read_table(self.store_dir / "metadata.parquet", HARMONISED_SCHEMA)]
        dups = [_read_table(self.store_dir / "duplicates.parquet", DUPLICATES_SCHEMA)]
        self._batches = sorted(p for p in self._journal.glob("batch-*") if p.is_dir())
        for batch in self._batches:
            meta.append(_read_table(batch / "metadata.parquet", HARMONISED_SCHEMA))
            dups.append(_read_table(batch / "duplicates.parquet", DUPLICATES_SCHEMA))
        meta_t = _concat(meta, HARMONISED_SCHEMA)
        dup_t = _concat(dups, DUPLICATES_SCHEMA)
        ids = meta_t.column("object_id").to_pylist()
        hashes = meta_t.column("content_hash").to_pylist()
        labels = meta_t.column("label").to_pylist()
        self._by_id: dict[str, str] = dict(zip(ids, hashes))
        self._by_hash: dict[str, tuple[str, str | None]] = {}
        for oid, h, lab in zip(ids, hashes, labels):
            self._by_hash.setdefault(h, (oid, lab))
        self._dup_ids: dict[str, str] = dict(
            zip(dup_t.column("object_id").to_pylist(), dup_t.column("kept_object_id").to_pylist())
        )
        shards = [int(s) for s in meta_t.column("shard").to_pylist()]
        existing = sorted(int(p.name[6:10]) for p in (self.store_dir / "images").glob("shard-*.lmdb")
                          if p.name[6:10].isdigit())
        self._shard = max(shards + existing + [0])
        self._next_batch = 1 + max([int(b.name.split("-")[1]) for b in self._batches] + [0])

    def _env(self, shard: int) -> lmdb.Environment:
        self._used_shards.add(shard)
        (self.store_dir / "images").mkdir(exist_ok=True)
        return open_env(shard_path(self.store_dir, shard), write=True)

    def _start_journal(self) -> None:
        """Create the journal (and record this source in it) before the first batch."""
        self._journal.mkdir(exist_ok=True)
        atomic_write_bytes(self._journal / "sources.json", json.dumps(self._sources).encode())

    # ------------------------------------------------------------------ adding
    def add(self, object_id: str, image: np.ndarray, record: dict[str, Any], raw: dict[str, Any] | None = None) -> str:
        """Add one object; returns ``"added"``, ``"duplicate"`` or ``"exists"``.

        Raises :class:`InvalidRecord` (with a rejection reason) if the record or image is
        unusable; the caller decides whether to :meth:`reject` it.
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
        known = self._by_id.get(object_id)
        if known is not None:
            if known == digest:
                self.report.exists += 1
                return "exists"
            raise InvalidRecord(
                "duplicate_object_id", f"{object_id}: object id already in the store with different pixels"
            )
        if object_id in self._dup_ids:
            self.report.exists += 1
            return "exists"
        warnings: list[str] = []
        row = check_record(object_id, {**record, "source": self.source}, warnings=warnings)
        raw_row = {**(raw or {}), "object_id": object_id, _RAW_SOURCE: self.source}
        if warnings:
            raw_row["aqqua_warnings"] = "; ".join(warnings)
            for w in warnings:
                self.report.warnings[w.split("=")[0]] += 1
        kept = self._by_hash.get(digest)
        if kept is not None:
            kept_id, kept_label = kept
            conflict = row["label"] is not None and kept_label is not None and row["label"] != kept_label
            self._rows["duplicates"].append(
                {"object_id": object_id, "kept_object_id": kept_id, "source": self.source,
                 "label": row["label"], "kept_label": kept_label, "conflicting_label": conflict}
            )
            self._rows["raw"].append({**raw_row, "kept_object_id": kept_id})
            self._dup_ids[object_id] = kept_id
            self.report.duplicates += 1
            self.report.conflicting_labels += int(conflict)
            self._maybe_flush()
            return "duplicate"
        image = np.ascontiguousarray(image)
        row.update(
            height=int(image.shape[0]), width=int(image.shape[1]),
            channels=int(image.shape[2]) if image.ndim == 3 else 1,
            content_hash=digest, shard=self._shard,
        )
        try:
            blob = codec.encode(image, self.codec)
            segments.check_fits(object_id.encode("utf-8"), len(blob))
        except ValueError as err:
            raise InvalidRecord("too_large", f"{object_id}: {err}") from None
        self._buffer.append((object_id, blob, self._shard))
        self._rows["metadata"].append(row)
        self._rows["raw"].append({**raw_row, "kept_object_id": object_id})
        self._by_id[object_id] = digest
        self._by_hash[digest] = (object_id, row["label"])
        self.report.added += 1
        self._maybe_flush()
        return "added"

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
             "raw_json": json.dumps(raw, default=str, ensure_ascii=False) if raw else None}
        )
        self.report.rejected_by_reason[reason] += 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        records = len(self._rows["metadata"]) + len(self._rows["duplicates"]) + len(self._rows["rejected"])
        if records >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Commit buffered images (one LMDB transaction) then their journal batch."""
        self._require_open()
        if not any(self._rows.values()):
            return
        if self._committed == 0:
            self._start_journal()
        by_shard: dict[int, list[tuple[str, bytes]]] = {}
        for oid, blob, shard in self._buffer:
            by_shard.setdefault(shard, []).append((oid, blob))
        for shard, items in by_shard.items():
            env = self._env(shard)
            psize = env.stat()["psize"]
            items = sorted(seg for oid, blob in items for seg in segments.split(oid.encode("utf-8"), blob, psize))
            with env.begin(write=True) as txn:
                cursor = txn.cursor()
                # keys past the last one are appended: LMDB then fills pages instead of splitting them
                if not cursor.last() or cursor.key() < items[0][0]:
                    cursor.putmulti(items, append=True)
                else:
                    cursor.putmulti(items)
        name = f"batch-{self._next_batch:06d}"
        tmp = self._journal / f".tmp-{name}"
        tmp.mkdir()
        pq.write_table(metadata_table(self._rows["metadata"]), tmp / "metadata.parquet")
        pq.write_table(raw_table(self._rows["raw"]), tmp / "raw.parquet")
        pq.write_table(pa.Table.from_pylist(self._rows["rejected"], schema=REJECTED_SCHEMA), tmp / "rejected.parquet")
        pq.write_table(
            pa.Table.from_pylist(self._rows["duplicates"], schema=DUPLICATES_SCHEMA), tmp / "duplicates.parquet"
        )
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, self._journal / name)  # atomic: the batch is committed
        self._batches.append(self._journal / name)
        self._committed += 1
        self._next_batch += 1
        self._buffer.clear()
        self._rows = {"metadata": [], "raw": [], "rejected": [], "duplicates": []}
        current = shard_path(self.store_dir, self._shard)
        if current.exists() and current.stat().st_size >= self.shard_max_bytes:
            self._shard += 1  # roll over to a new shard

    # ------------------------------------------------------------------ publishing
    def close(self) -> None:
        """Flush, merge the journal into the store tables and publish the manifest."""
        if not self._open:
            return
        try:
            self.flush()
            if self._batches or self._new_source or not self._manifest.get("generation"):
                self._publish()
            # else: nothing new (an idempotent re-run): the store is left byte for byte as it was
        finally:
            self._release()

    def abort(self) -> None:
        """Stop without publishing. Batches committed by this session stay in the journal (a
        re-run resumes); a session that committed nothing leaves no trace."""
        try:
            if not getattr(self, "_committed", 0) and getattr(self, "_journal", None) is not None:
                if self._journal.is_dir() and not any(self._journal.glob("batch-*")):
                    sources = self._journal / "sources.json"
                    if sources.exists():
                        known = json.loads(sources.read_text())
                        if set(known) <= {self.source}:
                            shutil.rmtree(self._journal, ignore_errors=True)
        finally:
            self._release()
            if getattr(self, "_created_dir", False) and not getattr(self, "_committed", 0):
                for leftover in (".lock",):
                    (self.store_dir / leftover).unlink(missing_ok=True)
                images = self.store_dir / "images"
                if images.is_dir() and not any(images.iterdir()):
                    images.rmdir()
                try:
                    self.store_dir.rmdir()
                except OSError:
                    pass

    def _publish(self) -> None:
        store = self.store_dir

        def merged(kind: str, existing: Path, schema: pa.Schema | None) -> pa.Table:
            parts = [_read_table(existing, schema)] + [_read_table(b / f"{kind}.parquet", schema) for b in self._batches]
            return _concat(parts, schema)

        meta = _dedupe(merged("metadata", store / "metadata.parquet", HARMONISED_SCHEMA), ["object_id"])
        rejected = _dedupe(
            merged("rejected", store / "rejected.parquet", REJECTED_SCHEMA),
            ["source", "file", "record", "object_id", "reason", "detail"],
        )
        dups = _dedupe(merged("duplicates", store / "duplicates.parquet", DUPLICATES_SCHEMA), ["object_id"])
        journal_raw = _concat([_read_table(b / "raw.parquet") for b in self._batches])
        raw_rows = {k: v["rows"] for k, v in self._manifest.get("files", {}).items() if k.startswith("raw/")}
        for source in sorted(self._sources):
            new = None
            if journal_raw is not None:
                new = journal_raw.filter(pc.equal(journal_raw.column(_RAW_SOURCE), source)).drop_columns(_RAW_SOURCE)
                # the journal mixes sources: drop the columns this source never had
                new = new.drop_columns(
                    [c for c in new.column_names if new.column(c).null_count == new.num_rows and c not in _RAW_KEYS]
                )
            path = raw_path(store, source)
            old = path if path.is_file() else legacy_raw_path(store, source)
            if old != path and old.is_file() and not any(
                    raw_path(store, e["source"]) == old for e in self._manifest.get("sources", [])):
                existing = _read_table(old)  # an older store's name for this source's table
            else:
                existing = _read_table(path)
            table = _concat([existing, new])
            if table is not None and table.num_rows:
                table = _dedupe(table, ["object_id"])
                atomic_write_parquet(path, table)
                raw_rows[path.relative_to(store).as_posix()] = table.num_rows
        generation = int(self._manifest.get("generation") or 0) + 1
        gen_meta = {GENERATION_KEY: str(generation).encode()}

        def stamped(table: pa.Table, base: dict | None = None) -> pa.Table:
            return table.replace_schema_metadata({**(base or table.schema.metadata or {}), **gen_meta})

        atomic_write_parquet(store / "rejected.parquet", stamped(rejected))
        atomic_write_parquet(store / "duplicates.parquet", stamped(dups))
        # metadata last before the manifest: a reader seeing a newer metadata generation than
        # the manifest's knows a publish is in progress and reads again
        atomic_write_parquet(store / "metadata.parquet", stamped(meta, HARMONISED_SCHEMA.metadata))
        manifest = self._build_manifest(meta, rejected, dups)
        manifest["generation"] = generation
        manifest["files"] = {"metadata.parquet": {"rows": meta.num_rows}, "rejected.parquet": {"rows": rejected.num_rows},
                             "duplicates.parquet": {"rows": dups.num_rows},
                             **{k: {"rows": v} for k, v in sorted(raw_rows.items())}}
        write_manifest(store, manifest)
        shutil.rmtree(self._journal, ignore_errors=True)

    def _build_manifest(self, meta: pa.Table, rejected: pa.Table, dups: pa.Table) -> dict[str, Any]:
        m = self._manifest
        df = meta.select(["source", "instrument", "shard"]).to_pandas()
        rej = rejected.select(["source"]).to_pandas()
        dup = dups.select(["source"]).to_pandas()
        m["updated_at"] = now_iso()
        m["package_version"] = package_version()
        m["counts"] = {
            "objects": int(len(df)),
            "rejected": int(len(rej)),
            "duplicates": int(len(dup)),
            "by_instrument": {str(k): int(v) for k, v in df["instrument"].value_counts().sort_index().items()},
            "by_source": {str(k): int(v) for k, v in df["source"].value_counts().sort_index().items()},
        }
        entries = {s["source"]: s for s in m.get("sources", [])}
        for source, info in self._sources.items():
            entry = entries.get(source) or {"source": source, "ingested_at": info.get("started_at", now_iso())}
            entry.update({k: v for k, v in info.items() if k != "started_at"})
            entry["updated_at"] = now_iso()
            entry["n_ingested"] = int((df["source"] == source).sum())
            entry["n_rejected"] = int((rej["source"] == source).sum())
            entry["n_duplicates"] = int((dup["source"] == source).sum())
            entry["package_version"] = package_version()
            entry.setdefault("codec", self.codec)
            entries[source] = entry
        m["sources"] = list(entries.values())
        shard_counts = df["shard"].value_counts()
        m["shards"] = [
            {"file": f"images/{p.name}", "n_objects": int(shard_counts.get(int(p.name[6:10]), 0)),
             "bytes": p.stat().st_size}
            for p in sorted((self.store_dir / "images").glob("shard-*.lmdb"))
        ]
        if not m.get("codec"):  # the store's default codec: the first writer's
            m["codec"] = codec.codec_info(self.codec)
        return m

    def _release(self) -> None:
        for shard in self._used_shards:  # readers reopen read-only on demand
            close_env(shard_path(self.store_dir, shard))
        self._used_shards.clear()
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None
        self._open = False

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError("StoreWriter is not open: use it as a context manager")
