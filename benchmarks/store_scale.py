"""Store at scale: append cost vs store size, lazy open/filter, parallel vs serial ingest.

Prints figures (no timed tests). Images are real UVP6 vignettes (the package's bundled set)
cut into small tiles, each tile made unique by writing its serial number into its first
pixels, so de-duplication keeps them all. Base stores are cached under ~/.cache/aqqua-bench.

    OMP_NUM_THREADS=1 python benchmarks/store_scale.py --sizes 10000 100000 --ingest 20000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "aqqua-bench"
REC = dict(instrument="UVP6", datetime="2021-06-01T10:00:00Z", depth_min=50.0, depth_max=50.0, pixel_size_um=73.0)


def tiles(n: int, start: int = 0, side: int = 24):
    """*n* unique small grey images cut from the real vignettes (deterministic)."""
    from PIL import Image

    from aqqua_geo.data import DATA_DIR

    pngs = sorted((DATA_DIR / "uvp6_vignettes").rglob("*.png"))
    base = [np.asarray(Image.open(p).convert("L")) for p in pngs]
    base = [b for b in base if min(b.shape) >= side]
    for i in range(start, start + n):
        b = base[i % len(base)]
        y, x = (i // len(base)) % (b.shape[0] - side + 1), (i // 7) % (b.shape[1] - side + 1)
        t = np.ascontiguousarray(b[y:y + side, x:x + side])
        t.flat[:4] = np.frombuffer(int(i).to_bytes(4, "little"), np.uint8)  # unique pixels
        yield f"t{i:09d}", t


def record(i: int) -> dict:
    return {**REC, "lat": -60 + (i * 7919 % 12000) / 100, "lon": -180 + (i * 104729 % 36000) / 100,
            "datetime": f"20{10 + i % 12}-0{1 + i % 9}-15T00:00:00Z"}


def build(n: int) -> Path:
    from aqqua_geo.store import StoreWriter

    path = CACHE / f"store-{n}"
    if (path / "manifest.json").is_file():
        return path
    shutil.rmtree(path, ignore_errors=True)
    t0, step = time.perf_counter(), 50_000
    for lo in range(0, n, step):  # one commit per 50 000 objects (a session stays O(session))
        with StoreWriter(path, source=f"base{lo // step}", source_format="bench", batch_size=10_000) as w:
            for j, (oid, img) in enumerate(tiles(min(step, n - lo), lo)):
                w.add(oid, img, record(lo + j))
    print(f"built {n} objects in {time.perf_counter() - t0:.1f} s -> {path}", flush=True)
    return path


_APPEND = """
import json, resource
def peak():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork+exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
import sys, time
sys.path.insert(0, sys.argv[3])
from store_scale import tiles, record
from aqqua_geo.store import StoreWriter
batch = list(tiles(1000, 10**8 + int(sys.argv[2])))  # made before the clock starts: only the append is timed
t0 = time.perf_counter()
with StoreWriter(sys.argv[1], source="append-" + sys.argv[2], source_format="bench", batch_size=1000) as w:
    for j, (oid, img) in enumerate(batch):
        w.add(oid, img, record(j))
t1 = time.perf_counter()
print(json.dumps({"s": t1 - t0, "rss_mb": peak()}))
"""

_OPEN = """
import json, resource
def peak():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork+exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
import sys, time
t0 = time.perf_counter()
from aqqua_geo.store import AqquaStore
t1 = time.perf_counter()
s = AqquaStore(sys.argv[1]); n = len(s)
v = s.filter(bbox=(170, -30, -170, 30), start="2015-01-01", end="2018-01-01"); m = len(v)
t2 = time.perf_counter()
print(json.dumps({"n": n, "matched": m, "s": t2 - t1, "import_s": t1 - t0,
                  "rss_mb": peak()}))
"""

_BARE = """
import json, resource
def peak():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork+exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

from aqqua_geo.store import AqquaStore, StoreWriter
print(json.dumps({"rss_mb": peak()}))
"""


def _py(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_append(sizes: list[int], repeats: int = 3) -> None:
    bare = _py(_BARE)["rss_mb"]
    print(f"\nappend 1000 objects (median of {repeats} runs, fresh process each; "
          f"import-only process peak RSS {bare:.0f} MB)")
    rows = {}
    for n in sizes:
        base = build(n)
        times, rss = [], []
        for r in range(repeats):
            work = CACHE / f"work-{n}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base, work)
            # the copy's pages are still dirty in the page cache: without a sync the append's first
            # LMDB fsync writes the whole copied store back, and times the copy (0.66-0.70 s at 10^6
            # vs 0.29-0.32 s after a sync, measured 2026-12-03), not the append
            os.sync()
            res = _py(_APPEND, work, r, Path(__file__).parent)
            times.append(res["s"])
            rss.append(res["rss_mb"])
            shutil.rmtree(work, ignore_errors=True)
        rows[n] = (float(np.median(times)), float(np.median(rss)))
        print(f"  store of {n:>9,}: append {rows[n][0]:.2f} s, peak RSS {rows[n][1]:.0f} MB", flush=True)
    lo, hi = min(rows), max(rows)
    print(f"  ratio {hi:,}/{lo:,}: time {rows[hi][0] / rows[lo][0]:.2f}x, peak RSS {rows[hi][1] / rows[lo][1]:.2f}x "
          "(goal <= 1.5x)")
    res = _py(_OPEN, build(hi))
    print(f"\nopen + len + bbox(across the date line)/date filter on the {res['n']:,}-object store: "
          f"{res['s'] * 1000:.0f} ms ({res['matched']:,} matched), peak RSS {res['rss_mb']:.0f} MB "
          f"(import-only {bare:.0f} MB)")


def bench_ingest(n: int, workers: int, repeats: int = 3) -> None:
    """Serial vs *workers* Dask workers, alternated *repeats* times (a shared VM has slow phases:
    one pair alone was off by up to 40 %); prints each pair, the median ratio, and the equality check
    of the last pair's stores."""
    from PIL import Image

    from aqqua_geo.ingest import ingest
    from aqqua_geo.store import AqquaStore

    src = CACHE / f"folder-{n}"
    if not (src / "done").is_file():
        shutil.rmtree(src, ignore_errors=True)
        (src / "img").mkdir(parents=True)
        for oid, img in tiles(n, 5 * 10**8):
            Image.fromarray(img).save(src / "img" / f"{oid}.png")
        (src / "done").write_text("")
    consts = ["datetime=2021-06-01T10:00:00Z", "lat=43.68", "lon=7.32", "depth=50", "instrument=UVP6",
              "pixel_size_um=73"]
    for p in (src / "img").iterdir():  # page cache warm for every run (else the first pays the disk)
        p.read_bytes()
    ratios = []
    for r in range(repeats):
        out = {}
        for label, w in (("serial (1 process)", None), (f"{workers} Dask workers", workers)):
            store = CACHE / f"ingest-{label.split()[0]}"
            shutil.rmtree(store, ignore_errors=True)
            t0 = time.perf_counter()
            rep = ingest(src / "img", store, fmt="folder", constants=consts, workers=w, progress=False)
            out[label] = (time.perf_counter() - t0, store, rep)
            print(f"  [{r + 1}/{repeats}] {label}: {n:,} images in {out[label][0]:.1f} s "
                  f"({n / out[label][0]:.0f} img/s), ingested {rep.ingested}", flush=True)
        (ts, a, _), (tp, b, _) = out.values()
        ratios.append(ts / tp)
        print(f"  [{r + 1}/{repeats}] speed-up {ts / tp:.2f}x", flush=True)
    print(f"  speed-up median {np.median(ratios):.2f}x over {repeats} pairs (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}; goal >= 1.7x)")
    sa, sb = AqquaStore(a), AqquaStore(b)
    same = sa.metadata.equals(sb.metadata) and sa.raw().equals(sb.raw()) and sa.rejected().equals(sb.rejected()) \
        and sa.duplicates().equals(sb.duplicates())
    pixels = all(np.array_equal(x, y) for (_, ia), (_, ib) in zip(sa.iter_chunks(4096), sb.iter_chunks(4096))
                 for x, y in zip(ia, ib))
    print(f"  parallel store == serial store: tables {same}, pixels {pixels}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--ingest", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="serial/parallel pairs, alternated (median reported)")
    ap.add_argument("--skip-append", action="store_true")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    if not args.skip_append:
        bench_append(sorted(args.sizes))
    if args.ingest:
        print(f"\nparallel ingest of {args.ingest:,} real-derived PNG images")
        bench_ingest(args.ingest, args.workers, args.repeats)
    print(f"\n(peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
