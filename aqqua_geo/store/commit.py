"""Commit staged writer sessions into the store: the single point where data becomes visible.

:func:`commit` replays the records of the given sessions *in order* with the serial rules
(an id already kept → "exists", or a ``duplicate_object_id`` rejection if its pixels differ;
a hash already kept → a duplicate of the first holder), so sessions staged in parallel by
several workers end as the serial ingest of the same records would. It then writes one set of
new part files, appends the kept images to the store's shards, stages the new index keys,
replaces ``manifest.json`` (the commit) and settles the index. :class:`Commit` does the same
session by session, so a parallel ingest merges each chunk while later chunks are staged. A
kill at any step before the manifest leaves the previous store; the journal is kept, so the
re-run commits the same. Memory is O(records committed), never O(store).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aqqua_geo.store import codec, segments
from aqqua_geo.store.envs import close_env, open_env
from aqqua_geo.store.index import DedupIndex, IndexKeys, rejection_key
from aqqua_geo.store.layout import (
    DEFAULT_SHARD_BYTES,
    FILE,
    JOURNAL,
    RAW_JSON,
    RECORD,
    SEQ,
    SESSION_IMAGES,
    shard_path,
)
from aqqua_geo.store.manifest import new_manifest, now_iso, package_version, write_manifest
from aqqua_geo.store.schema import DUPLICATES_SCHEMA, HARMONISED_SCHEMA, REJECTED_SCHEMA
from aqqua_geo.store.tables import Tables, part_name, write_part

_RAW_KEYS = ("object_id", "kept_object_id")
_CLASH = "object id already in the store with different pixels"


@dataclass
class CommitReport:
    """What a commit made visible (the replayed decisions, over every session)."""

    added: int = 0
    exists: int = 0
    duplicates: int = 0
    conflicting_labels: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    generation: int = 0


def prepare(store_dir: Path, manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """Before writing (store lock held): undo a half-done commit's index keys, rebuild a
    missing index, and refuse a store whose files disagree with its manifest."""
    from aqqua_geo.store.manifest import StoreError, describe

    if manifest is None:
        return None
    tables = Tables(store_dir, manifest)
    problems = tables.problems() + [
        f"{s['file']} is missing but the manifest lists {s['n_objects']} objects in it"
        for s in manifest.get("shards", []) if s.get("n_objects") and not (store_dir / s["file"]).is_file()]
    if problems:
        raise StoreError(describe(store_dir, problems))
    gen = int(manifest.get("generation") or 0)
    missing = not (store_dir / "index.lmdb").is_file()
    index = DedupIndex(store_dir, write=True)
    try:
        if missing:
            index.rebuild(tables, gen)
        else:
            index.reconcile(gen)
    finally:
        index.close()
    return manifest


def _load_session(d: Path) -> tuple[dict[str, Any], pa.Table, pa.Table, pa.Table]:
    info = json.loads((d / "session.json").read_text())
    batches = sorted(p for p in d.glob("batch-*") if p.is_dir())

    def read(name: str) -> pa.Table | None:
        tables = [pq.read_table(b / name) for b in batches]
        tables = [t for t in tables if t.num_rows]
        return pa.concat_tables(tables, promote_options="permissive").sort_by(SEQ) if tables else None

    return info, read("records.parquet"), read("raw.parquet"), read("rejected.parquet")


class _State:
    """The store (index) plus what this commit already decided."""

    def __init__(self, index: DedupIndex | None):
        self.index = index
        self.by_id: dict[str, tuple[str, str]] = {}
        self.by_hash: dict[str, tuple[str, str | None]] = {}
        self.rejections: set[bytes] = set()

    def known(self, oid: str) -> tuple[str, str] | None:
        if oid in self.by_id:
            return self.by_id[oid]
        if self.index is None:
            return None
        try:
            kind, digest, other = self.index.lookup_id(oid)
        except KeyError:
            return None
        return (kind, digest) if kind == "K" else (kind, str(other))

    def kept(self, digest: str) -> tuple[str, str | None] | None:
        if digest in self.by_hash:
            return self.by_hash[digest]
        return self.index.kept(digest) if self.index is not None else None

    def rejected_before(self, key: bytes) -> bool:
        return key in self.rejections or (self.index is not None and self.index.has_rejection(key))


class Commit:
    """One commit, fed session by session: :meth:`add` merges a staged session (replay, shard
    appends, part files; nothing visible yet), :meth:`finish` stages the index keys and writes
    the manifest (the commit point). A parallel ingest adds each chunk's session as soon as its
    worker is done, so the merge overlaps the staging of later chunks; the result is the same
    as :func:`commit` of all the sessions at the end. The caller holds the store lock.
    """

    def __init__(self, store_dir: str | Path, *, shard_max_bytes: int = DEFAULT_SHARD_BYTES,
                 codec_name: str | None = None):
        from aqqua_geo.store.manifest import MANIFEST, read_manifest

        self.store_dir = store_dir = Path(store_dir)
        self.shard_max_bytes = int(shard_max_bytes)
        self.codec_name = codec_name
        manifest = read_manifest(store_dir) if (store_dir / MANIFEST).is_file() else None
        self.manifest = prepare(store_dir, manifest) or new_manifest()
        self.manifest.setdefault("tables", {k: [] for k in ("harmonised", "raw", "rejected", "duplicates")})
        self.gen = int(self.manifest.get("generation") or 0) + 1
        self.report = CommitReport(generation=self.gen)
        self._state = _State(DedupIndex(store_dir, write=True) if (store_dir / "index.lmdb").is_file() else None)
        self.sessions: list[Path] = []
        self._n_part: Counter = Counter()
        self._new_parts: dict[str, list] = {k: [] for k in self.manifest["tables"]}
        self._index_keys = IndexKeys()
        self._shard = _current_shard(store_dir, self.manifest)
        self._shard_counts: Counter = Counter()
        self._infos: list[dict] = []
        #: rows of this commit per source, by table (what the manifest's counts add up)
        self._counts: dict[str, Counter] = {k: Counter() for k in ("harmonised", "rejected", "duplicates")}
        self._instruments: Counter = Counter()

    def __enter__(self) -> Commit:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, session: str | Path) -> None:
        """Merge one staged session (a folder without ``session.json`` staged nothing: skipped)."""
        d = Path(session)
        if not (d / "session.json").is_file():
            return
        self.sessions.append(d)
        store_dir = self.store_dir
        info, records, raw, rejected = _load_session(d)
        self._infos.append(info)
        kept, dup_rows, gen_rej, kept_of = _replay(records, self._state, self.report)
        # images of the kept records, in row order, appended to the store's shards
        batch = max(1, int(info.get("batch_size", 512)))
        oids, hashes = kept.column("object_id").to_pylist(), kept.column("content_hash").to_pylist()
        shards: list[int] = []
        if oids:
            src_env = lmdb.open(str(d / SESSION_IMAGES), subdir=False, readonly=True, lock=False)
            try:
                for start in range(0, len(oids), batch):
                    stop = min(start + batch, len(oids))
                    _append_images(store_dir, self._shard, oids[start:stop], hashes[start:stop], src_env)
                    shards += [self._shard] * (stop - start)
                    self._shard_counts[self._shard] += stop - start
                    if shard_path(store_dir, self._shard).stat().st_size >= self.shard_max_bytes:
                        self._shard += 1  # roll over to a new shard
            finally:
                src_env.close()
        kept = kept.set_column(kept.schema.get_field_index("shard"), HARMONISED_SCHEMA.field("shard"),
                               pa.array(shards, pa.int32()))
        new_rej: list[bytes] = []
        rej_rows = _rejections(rejected, gen_rej, self._state, new_rej, self.report)
        self._index_keys.add(zip(oids, hashes, kept.column("label").to_pylist(), shards),
                             [(r["object_id"], r["kept_object_id"]) for r in dup_rows], new_rej)
        self._put("harmonised", kept)
        self._put("duplicates", pa.Table.from_pylist(dup_rows, schema=DUPLICATES_SCHEMA))
        self._put("rejected", pa.Table.from_pylist(rej_rows, schema=REJECTED_SCHEMA))
        if raw is not None and kept_of:
            keep = pc.is_in(raw.column("object_id"), pa.array(list(kept_of)))
            table = raw.filter(keep).drop_columns([SEQ])
            table = table.set_column(table.schema.get_field_index("kept_object_id"), "kept_object_id",
                                     pa.array([kept_of[o] for o in table.column("object_id").to_pylist()],
                                              pa.string()))
            table = table.drop_columns([c for c in table.column_names if c not in _RAW_KEYS
                                        and table.column(c).null_count == table.num_rows])
            self._put("raw", table, source=info["source"])

    def _put(self, kind: str, table: pa.Table, **extra) -> None:
        """Write *table* (if it has rows) as the next part of *kind* of this generation, and
        count its rows per source (and instrument) for the manifest."""
        if table.num_rows:
            rel = part_name(kind, self.gen, self._n_part[kind])
            self._n_part[kind] += 1
            self._new_parts[kind].append(write_part(self.store_dir, rel, table, **extra))
            if kind in self._counts:
                self._counts[kind].update(table.column("source").to_pylist())
            if kind == "harmonised":
                self._instruments.update(table.column("instrument").to_pylist())

    def finish(self) -> CommitReport:
        """Stage the index keys, write the manifest (the commit), settle the index, and remove
        the merged sessions' journals."""
        store_dir, manifest, gen = self.store_dir, self.manifest, self.gen
        idx = DedupIndex(store_dir, write=True)  # created here for a new store
        try:
            idx.stage_keys(gen, self._index_keys)
            for kind, parts in self._new_parts.items():
                manifest["tables"][kind] = manifest["tables"].get(kind, []) + parts
            _update_manifest(store_dir, manifest, self._infos, self._new_parts, self._counts, self._instruments,
                             self._shard_counts, self.codec_name, gen)
            write_manifest(store_dir, manifest)  # the commit
            idx.settle(gen)
        finally:
            idx.close()
            self.close()
        for d in self.sessions:
            shutil.rmtree(d, ignore_errors=True)
        journal = store_dir / JOURNAL
        if journal.is_dir() and not any(journal.iterdir()):
            journal.rmdir()
        return self.report

    def close(self) -> None:
        """Release the shard handles (after :meth:`finish`, or instead of it on an error: the
        manifest is then unchanged and the journals are kept, so a re-run commits the same)."""
        for s in set(self._shard_counts):
            close_env(shard_path(self.store_dir, s))


def commit(store_dir: str | Path, sessions: list[Path], *, shard_max_bytes: int = DEFAULT_SHARD_BYTES,
           codec_name: str | None = None) -> CommitReport:
    """Merge the staged *sessions* (in this order) into a new generation of the store.

    The caller holds the store lock (:func:`aqqua_geo.store.writer.lock_store`).
    """
    with Commit(store_dir, shard_max_bytes=shard_max_bytes, codec_name=codec_name) as c:
        for d in sessions:
            c.add(d)
        return c.finish()


def _replay(records: pa.Table | None, state: _State, report: CommitReport):
    """Serial decisions for one session's records: (kept rows as a harmonised table, duplicate
    rows, clash rejections, {object id: kept object id} for the raw rows).

    Only the three deciding columns go through Python; the kept rows are taken column-wise
    (building a dict per row was half of a 100 000-record commit).
    """
    dup_rows, rejections, kept_of, take = [], [], {}, []
    if records is None:
        return HARMONISED_SCHEMA.empty_table(), dup_rows, rejections, kept_of
    columns = (records.column(c).to_pylist() for c in ("object_id", "content_hash", "label"))
    for i, (oid, digest, label) in enumerate(zip(*columns)):
        known = state.known(oid)
        if known is not None:
            if known[0] == "D" or known[1] == digest:
                report.exists += 1
                continue
            r = records.slice(i, 1).to_pylist()[0]
            detail = f"{oid}: {_CLASH}"
            if r[FILE] and not detail.startswith(r[FILE]):
                detail = f"{r[FILE]}: {r[RECORD]}: {detail}"
            rejections.append({"source": r["source"], "file": r[FILE], "record": r[RECORD], "object_id": oid,
                               "reason": "duplicate_object_id", "detail": detail, "raw_json": r[RAW_JSON],
                               SEQ: r[SEQ]})
            continue
        kept = state.kept(digest)
        if kept is None:
            state.by_hash[digest] = (oid, label)
            state.by_id[oid] = ("K", digest)
            take.append(i)
            kept_of[oid] = oid
            report.added += 1
        else:
            conflict = label is not None and kept[1] is not None and label != kept[1]
            dup_rows.append({"object_id": oid, "kept_object_id": kept[0], "source": records.column("source")[i].as_py(),
                             "label": label, "kept_label": kept[1], "conflicting_label": conflict})
            state.by_id[oid] = ("D", kept[0])
            kept_of[oid] = kept[0]
            report.duplicates += 1
            report.conflicting_labels += int(conflict)
    kept_rows = records.take(pa.array(take, pa.int64())).select(HARMONISED_SCHEMA.names).cast(HARMONISED_SCHEMA)
    return kept_rows, dup_rows, rejections, kept_of


def _rejections(rejected: pa.Table | None, generated: list[dict], state: _State, new_keys: list[bytes],
                report: CommitReport) -> list[dict]:
    rows = (rejected.to_pylist() if rejected is not None else []) + generated
    out = []
    for r in sorted(rows, key=lambda r: r[SEQ]):
        key = rejection_key(r["source"], r["file"], r["record"], r["object_id"], r["reason"], r["detail"])
        if state.rejected_before(key):
            continue  # the same record rejected by an earlier run
        state.rejections.add(key)
        new_keys.append(key)
        report.rejected_by_reason[r["reason"]] += 1
        out.append({k: r[k] for k in REJECTED_SCHEMA.names})
    return out


def _current_shard(store_dir: Path, manifest: dict[str, Any]) -> int:
    shards = [int(Path(s["file"]).name[6:10]) for s in manifest.get("shards", [])]
    return max(shards + [0])


def _append_images(store_dir: Path, shard: int, object_ids: list[str], hashes: list[str], src_env) -> None:
    """Copy the blobs of the objects (by content hash) from a session into shard *shard*,
    under their object ids (one LMDB transaction)."""
    (store_dir / "images").mkdir(exist_ok=True)
    env = open_env(shard_path(store_dir, shard), write=True)
    psize = env.stat()["psize"]
    items = []
    with src_env.begin() as txn:
        for oid, digest in zip(object_ids, hashes):
            blob = segments.read(txn, bytes.fromhex(digest))
            if blob is None:
                raise FileNotFoundError(f"{src_env.path()}: staged image of {oid} is missing")
            items += segments.split(oid.encode("utf-8"), bytes(blob), psize)
    items.sort()
    with env.begin(write=True) as txn:
        cursor = txn.cursor()
        # keys past the last one are appended: LMDB then fills pages instead of splitting them
        if not cursor.last() or cursor.key() < items[0][0]:
            cursor.putmulti(items, append=True)
        else:
            cursor.putmulti(items)


def _update_manifest(store_dir: Path, m: dict[str, Any], infos: list[dict], new_parts: dict[str, list],
                     new_rows: dict[str, Counter], new_instruments: Counter, shard_counts: Counter,
                     codec_name: str | None, gen: int) -> None:
    """Counts, sources, shards and the commit record, updated from the new parts only
    (*new_rows*: their rows per source by table; *new_instruments*: kept rows per instrument)."""
    counts = m.setdefault("counts", {})
    by_inst, by_src = Counter(counts.get("by_instrument", {})), Counter(counts.get("by_source", {}))
    by_inst.update(new_instruments)
    by_src.update(new_rows["harmonised"])
    per_source: dict[str, Counter] = {}
    for kind, col in (("harmonised", "n_ingested"), ("rejected", "n_rejected"), ("duplicates", "n_duplicates")):
        for src, n in new_rows[kind].items():
            per_source.setdefault(src, Counter())[col] += n
    rows = {k: sum(p["rows"] for p in new_parts[k]) for k in new_parts}
    counts.update(objects=int(counts.get("objects", 0)) + rows["harmonised"],
                  rejected=int(counts.get("rejected", 0)) + rows["rejected"],
                  duplicates=int(counts.get("duplicates", 0)) + rows["duplicates"],
                  by_instrument={k: by_inst[k] for k in sorted(by_inst)},
                  by_source={k: by_src[k] for k in sorted(by_src)})
    entries = {e["source"]: e for e in m.get("sources", [])}
    for info in infos:
        src = info["source"]
        entry = entries.get(src) or {"source": src, "ingested_at": info.get("started_at", now_iso()),
                                     "n_ingested": 0, "n_rejected": 0, "n_duplicates": 0}
        entry.update({"format": info["format"], "path": info["path"], **info.get("info", {})})
        for key, n in per_source.pop(src, Counter()).items():
            entry[key] = int(entry.get(key, 0)) + n
        entry.update(updated_at=now_iso(), package_version=package_version())
        entry.setdefault("codec", info.get("codec"))
        entries[src] = entry
    m["sources"] = list(entries.values())
    shards = {s["file"]: s for s in m.get("shards", [])}
    for s, n in sorted(shard_counts.items()):
        rel = f"images/{shard_path(store_dir, s).name}"
        entry = shards.setdefault(rel, {"file": rel, "n_objects": 0})
        entry["n_objects"] += n
    for entry in shards.values():
        if (store_dir / entry["file"]).is_file():
            entry["bytes"] = (store_dir / entry["file"]).stat().st_size
    m["shards"] = [shards[k] for k in sorted(shards)]
    if not m.get("codec"):  # the store's default codec: the first writer's
        m["codec"] = codec.codec_info(codec_name or (infos[0].get("codec") if infos else None) or codec.DEFAULT_CODEC)
    from aqqua_geo.store.schema import FORMAT_VERSION

    m.update(format_version=FORMAT_VERSION, generation=gen, updated_at=now_iso(), package_version=package_version(),
             commit={"sessions": sorted(i["token"] for i in infos), "at": now_iso()})
    m.setdefault("index", "index.lmdb")
