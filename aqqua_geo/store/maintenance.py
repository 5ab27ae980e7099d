"""Store maintenance: ``compact`` (merge small parts) and ``upgrade`` (version 1 → 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from aqqua_geo.store.commit import prepare
from aqqua_geo.store.index import DedupIndex, release
from aqqua_geo.store.layout import lock_store, unlock_store
from aqqua_geo.store.manifest import StoreError, read_manifest, write_manifest
from aqqua_geo.store.schema import FORMAT_VERSION
from aqqua_geo.store.tables import SCHEMAS, Tables, part_name, write_part

#: Rows per merged part: a few row groups, so push-down still skips most of a part.
COMPACT_ROWS = 1_000_000


def compact(store_dir: str | Path, target_rows: int = COMPACT_ROWS) -> dict[str, Any]:
    """Merge consecutive small parts (same kind, and same source for raw) into parts of up to
    *target_rows* rows. Content and row order are unchanged; one manifest replace commits it,
    then the replaced files are deleted. Returns ``{kind: (parts before, parts after)}``."""
    store_dir = Path(store_dir)
    lock = lock_store(store_dir)
    try:
        manifest = prepare(store_dir, read_manifest(store_dir))
        if "tables" not in manifest:
            raise StoreError(f"{store_dir}: a version-1 store; run `aqqua store upgrade` first")
        tables = Tables(store_dir, manifest)
        gen = int(manifest.get("generation") or 0) + 1
        new, old, summary, n = {}, [], {}, 0
        for kind, parts in manifest["tables"].items():
            groups: list[list[dict]] = []
            for p in parts:
                last = groups[-1] if groups else None
                if (last and last[0].get("source") == p.get("source")
                        and sum(q["rows"] for q in last) + p["rows"] <= target_rows):
                    last.append(p)
                else:
                    groups.append([p])
            out = []
            for group in groups:
                if len(group) == 1:
                    out.append(group[0])
                    continue
                t = pa.concat_tables([tables.dataset_of([q["file"]], kind).to_table() for q in group],
                                     promote_options="permissive")
                if SCHEMAS[kind] is not None:
                    t = t.select(SCHEMAS[kind].names).cast(SCHEMAS[kind])
                extra = {"source": group[0]["source"]} if "source" in group[0] else {}
                out.append(write_part(store_dir, part_name(kind, gen, n), t, **extra))
                n += 1
                old += [q["file"] for q in group]
            new[kind] = out
            summary[kind] = (len(parts), len(out))
        if old:
            manifest["tables"] = new
            manifest["generation"] = gen
            write_manifest(store_dir, manifest)
            _settle_index(store_dir, gen)
            for rel in old:
                (store_dir / rel).unlink(missing_ok=True)
        return summary
    finally:
        unlock_store(lock)


def _settle_index(store_dir: Path, gen: int) -> None:
    idx = DedupIndex(store_dir, write=True)
    try:
        idx.settle(gen)
    finally:
        idx.close()


def upgrade(store_dir: str | Path) -> bool:
    """Convert a version-1 store in place: its files become the parts of a version-2 manifest
    (nothing is copied) and the de-duplication index is built. False if already version 2."""
    store_dir = Path(store_dir)
    lock = lock_store(store_dir)
    try:
        manifest = read_manifest(store_dir)
        if "tables" in manifest:
            return False
        tables = Tables(store_dir, manifest)
        problems = tables.problems()
        if problems:
            from aqqua_geo.store.manifest import describe

            raise StoreError(describe(store_dir, problems))
        tables.dataset("harmonised")  # refuses a foreign metadata file
        listing = {}
        for kind in ("harmonised", "raw", "rejected", "duplicates"):
            entries = []
            for p in tables.parts(kind):
                if not (store_dir / p["file"]).is_file():
                    continue
                entry = tables.entry(p["file"], p.get("source"))
                if entry["rows"]:
                    entries.append(entry)
            listing[kind] = entries
        gen = int(manifest.get("generation") or 0) + 1
        release(store_dir)
        (store_dir / "index.lmdb").unlink(missing_ok=True)
        idx = DedupIndex(store_dir, write=True)
        try:
            idx.rebuild(Tables(store_dir, {**manifest, "tables": listing}), gen)
        finally:
            idx.close()
        manifest.pop("files", None)
        manifest.update(tables=listing, generation=gen, format_version=FORMAT_VERSION,
                        upgraded_from=manifest.get("format_version"), index="index.lmdb")
        write_manifest(store_dir, manifest)
        return True
    finally:
        unlock_store(lock)
