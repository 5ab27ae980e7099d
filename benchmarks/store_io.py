"""AqQua store I/O benchmark: ingest throughput, bytes on disk, random read+decode vs PNG files.

Data: the real bundled vignettes (UVP6 PNGs, ZooScan JPGs of EcoTaxa m106, IFCB ROIs of the
two raw bins; plus FlowCam and IFCB-training vignettes from ../shared/data when present) repeated with augmentation (90° rotations, flips, random crops keeping 70-100 %
of each side) until N distinct images (distinct pixel hashes). The baseline is the same
images as individual PNG files read with PIL. Everything is measured in this one run; the
codec table covers codec × filter/predictor × level, each checked lossless.

    python benchmarks/store_io.py --n 10000            # prints figures and ratios
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np
from PIL import Image
from tqdm import tqdm

from aqqua_geo import data
from aqqua_geo.ingest import ingest
from aqqua_geo.ingest.common import decode_image
from aqqua_geo.ingest.ifcb import iter_ifcb
from aqqua_geo.store import AqquaStore, codec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_VIGNETTES = [d for d in (SHARED / "flowcam_planktonclas" / "demo-images",
                                SHARED / "ifcb_smhi_ifcb134" / "training_data") if d.is_dir()]


def real_images() -> list[np.ndarray]:
    """All bundled real vignettes as uint8 arrays, plus the FlowCam and IFCB-training vignettes
    of ../shared/data where that folder is present (instruments the bundle lacks)."""
    out = [decode_image(p.read_bytes(), str(p)) for p in sorted(data.path("uvp6_vignettes").rglob("*.png"))]
    out += [decode_image(p.read_bytes(), str(p)) for p in sorted(data.path("ecotaxa_m106").rglob("*.jpg"))]
    out += [it.image() for it in iter_ifcb(data.path("ifcb")) if getattr(it, "image", None)]
    for folder in SHARED_VIGNETTES:
        out += [decode_image(p.read_bytes(), str(p)) for p in sorted(folder.rglob("*"))
                if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")]
    return out


def augmented(base: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """*n* images with distinct pixel hashes derived from *base*."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    with tqdm(total=n, desc="augment", unit="img") as bar:
        while len(out) < n:
            img = base[len(out) % len(base)]
            img = np.rot90(img, int(rng.integers(4)))
            if rng.random() < 0.5:
                img = img[:, ::-1]
            h, w = img.shape[:2]
            ch, cw = max(4, int(h * rng.uniform(0.7, 1.0))), max(4, int(w * rng.uniform(0.7, 1.0)))
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            img = np.ascontiguousarray(img[y : y + ch, x : x + cw])
            key = codec.content_hash(img)
            if key not in seen:
                seen.add(key)
                out.append(img)
                bar.update()
    return out


def disk_bytes(paths: list[Path]) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of *paths* (files) — small files cost whole blocks."""
    st = [p.stat() for p in paths]
    return sum(s.st_size for s in st), sum(s.st_blocks * 512 for s in st)


def _predict_up(im: np.ndarray) -> np.ndarray:
    r = im.copy()
    r[1:] -= im[:-1]
    return r


def _blosc2_setting(c, level: int, mode: str):
    """(encode, decode) of blosc2 *c* at *level*; mode: raw | bitshuffle | up (numpy row
    predictor before blosc2) | bytedelta (SHUFFLE with typesize = width, then BYTEDELTA: blosc2's
    own vertical predictor, for widths <= 255)."""
    def enc(im):
        if mode == "bytedelta":
            return blosc2.compress2(im, typesize=im.shape[1] if im.shape[1] <= 255 else 1, codec=c, clevel=level,
                                    filters=[blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA], filters_meta=[0, 0],
                                    splitmode=blosc2.SplitMode.NEVER_SPLIT)
        filt = blosc2.Filter.BITSHUFFLE if mode == "bitshuffle" else blosc2.Filter.NOFILTER
        return blosc2.compress2(_predict_up(im) if mode == "up" else im, typesize=1, codec=c, clevel=level,
                                filters=[filt], filters_meta=[0])

    def dec(blob, shape):
        out = np.empty(shape, np.uint8)
        blosc2.decompress2(blob, dst=out)
        return np.add.accumulate(out, axis=0, dtype=np.uint8, out=out) if mode == "up" else out
    return enc, dec


def _zstandard_setting(level: int, up: bool):
    import zstandard

    cctx, dctx = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()

    def enc(im):
        return cctx.compress((_predict_up(im) if up else im).tobytes())

    def dec(blob, shape):
        out = np.frombuffer(bytearray(dctx.decompress(blob)), np.uint8).reshape(shape)
        return np.add.accumulate(out, axis=0, dtype=np.uint8, out=out) if up else out
    return enc, dec


def _j2k_settings() -> list:
    """blosc2's JPEG 2000 plugins (blosc2-htj2k, blosc2-j2k; AGPL-3.0, so never a dependency of
    this package), lossless, when installed: they take a 2-D NDArray chunk per image."""
    rows = []
    for module, label in (("blosc2_htj2k", "blosc2-htj2k (HTJ2K)"), ("blosc2_j2k", "blosc2-j2k (JPEG 2000)")):
        try:
            plugin = __import__(module)
        except ImportError:
            continue
        codec_id = plugin.CODEC_ID

        def enc(im, codec_id=codec_id):
            a = blosc2.asarray(im, chunks=im.shape, blocks=im.shape,
                               cparams={"codec": codec_id, "splitmode": blosc2.SplitMode.NEVER_SPLIT, "nthreads": 1})
            return a.schunk.get_chunk(0)

        def dec(blob, shape):
            out = np.empty(shape, np.uint8)
            blosc2.decompress2(blob, dst=out)
            return out
        rows.append((label, enc, dec))
    return rows


def codec_table(images: list[np.ndarray], png_bytes: int) -> list[tuple[str, float, float, float]]:
    """(setting, bytes × PNG, encode µs/image, decode µs/image) on the same *images*, every
    setting checked lossless. The shipped codecs go through aqqua_geo.store.codec itself."""
    settings = [(f"shipped codec={name}{' (default)' if name == codec.DEFAULT_CODEC else ''}",
                 lambda im, name=name: codec.encode(im, name), lambda b, shape: codec.decode(b))
                for name in codec.CODECS]
    for label, c, levels in (("LZ4", blosc2.Codec.LZ4, (5,)), ("LZ4HC", blosc2.Codec.LZ4HC, (6, 9)),
                             ("ZSTD", blosc2.Codec.ZSTD, (5, 9)), ("ZLIB", blosc2.Codec.ZLIB, (9,))):
        for level in levels:
            for mode in ("raw", "bitshuffle", "up", "bytedelta"):
                settings.append((f"blosc2 {label}-{level} {mode}", *_blosc2_setting(c, level, mode)))
    for level in (3, 9, 12, 15, 19):
        for up in (False, True):
            settings.append((f"zstandard {level} {'up' if up else 'raw'}", *_zstandard_setting(level, up)))
    settings += _j2k_settings()
    rows = []
    for name, enc, dec in tqdm(settings, desc="codec table", unit="setting"):
        t = time.perf_counter()
        blobs = [enc(im) for im in images]
        enc_us = 1e6 * (time.perf_counter() - t) / len(images)
        for b, im in zip(blobs[:200], images):
            np.testing.assert_array_equal(dec(b, im.shape), im, err_msg=f"{name} is not lossless")
        best = float("inf")
        for _ in range(3):  # best of 3: the machine is shared
            t = time.perf_counter()
            for b, im in zip(blobs, images):
                dec(b, im.shape)
            best = min(best, time.perf_counter() - t)
        rows.append((name, sum(map(len, blobs)) / png_bytes, enc_us, 1e6 * best / len(images)))
    return rows


def png_read_rate(png_dir: Path, ids: list[str]) -> float:
    """Images/s reading + decoding the PNG files of *ids* with PIL, in that (random) order."""
    for oid in ids[:200]:  # warm-up: imports, page cache
        with Image.open(png_dir / f"{oid}.png") as im:
            np.asarray(im)
    t = time.perf_counter()
    for oid in tqdm(ids, desc="PNG random read", unit="img"):
        with Image.open(png_dir / f"{oid}.png") as im:
            np.asarray(im)
    return len(ids) / (time.perf_counter() - t)


def measure_store(codec_name: str, store: Path, png_dir: Path, images: list[np.ndarray], ids: list[str],
                  order: np.ndarray, png_rate: float, png_apparent: int, png_alloc: int) -> None:
    """Ingest the PNG folder into a store with *codec_name*, then time random reads; print ratios."""
    t = time.perf_counter()
    rep = ingest(png_dir, store, fmt="folder", source="bench", codec=codec_name, progress=True,
                 constants=["instrument=UVP6", "pixel_size_um=73", "datetime=2020-01-01T00:00Z", "lat=0", "lon=0", "depth=10"])
    ingest_s = time.perf_counter() - t
    assert rep.ingested == len(images), rep.summary()
    files = [p for p in store.rglob("*") if p.is_file() and not p.name.endswith("lock")]
    apparent, alloc = disk_bytes(files)
    shards, _ = disk_bytes(list((store / "images").glob("*.lmdb")))
    s = AqquaStore(store)
    for oid in ids[:200]:
        s.get(oid)
    png_rate = max(png_rate, png_read_rate(png_dir, ids))  # the machine is shared: the baseline's best
    t = time.perf_counter()
    for oid in tqdm(ids, desc=f"store[{codec_name}] random read", unit="img"):
        s.get(oid)
    rate = len(ids) / (time.perf_counter() - t)
    for oid in ids[:50]:  # what was timed is right
        np.testing.assert_array_equal(s.get(oid), images[int(oid[3:])])
    ds = s.torch_dataset()
    n = min(2000, len(order))
    t = time.perf_counter()
    for i in order[:n]:
        ds[int(i)]
    ds_rate = n / (time.perf_counter() - t)
    print(f"-- store, codec {codec_name}:")
    print(f"   ingest (PNG decode + hash + blosc2 + LMDB + Parquet): {len(images) / ingest_s:.0f} images/s ({ingest_s:.1f} s)")
    print(f"   bytes: {apparent / 1e6:.2f} MB apparent = allocated {alloc / 1e6:.2f} MB "
          f"(LMDB images {shards / 1e6:.2f} MB, rest Parquet/manifest)")
    print(f"   random read+decode {rate:.0f} images/s (PNG+PIL best {png_rate:.0f}); torch Dataset {ds_rate:.0f} items/s")
    print(f"   RATIO read speed store/PNG      = {rate / png_rate:5.2f}x   (goal >= 5x)")
    print(f"   RATIO bytes store/PNG apparent  = {apparent / png_apparent:5.2f}x   (goal <= 1.0x)")
    print(f"   RATIO bytes store/PNG allocated = {alloc / png_alloc:5.2f}x   (disk use: small PNG files fill whole blocks)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="number of distinct images")
    ap.add_argument("--reads", type=int, default=5_000, help="random reads per method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir, removed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aqqua_bench_", dir=args.workdir))
    try:
        run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    base = real_images()
    images = augmented(base, args.n, args.seed)
    print(f"{len(base)} real vignettes (UVP6, ZooScan, IFCB{', FlowCam, IFCB training set' if SHARED_VIGNETTES else ''}) -> {len(images)} distinct images, "
          f"median {int(np.median([im.shape[0] for im in images]))}x{int(np.median([im.shape[1] for im in images]))} px")

    png_dir = work / "png"
    png_dir.mkdir()
    paths = []
    for i, im in enumerate(tqdm(images, desc="write PNG", unit="img")):
        p = png_dir / f"img{i:06d}.png"
        Image.fromarray(im).save(p)  # PIL defaults, as most instrument software writes them
        paths.append(p)
    png_apparent, png_alloc = disk_bytes(paths)

    rng = np.random.default_rng(args.seed + 1)
    order = rng.permutation(len(images))[: args.reads]
    ids = [f"img{i:06d}" for i in order]
    png_rate = png_read_rate(png_dir, ids)

    print("\n== AqQua store I/O (single process, page cache warm for both) ==")
    print(f"PNG files (PIL defaults): {png_apparent / 1e6:.2f} MB apparent, {png_alloc / 1e6:.2f} MB allocated "
          f"({len(paths)} files); random read+decode {png_rate:.0f} images/s")
    for name in codec.CODECS:
        measure_store(name, work / f"store_{name}", png_dir, images, ids, order, png_rate, png_apparent, png_alloc)

    sample = images[: min(2000, len(images))]
    png_sample = sum(p.stat().st_size for p in paths[: len(sample)])
    t = time.perf_counter()
    for p in paths[: len(sample)]:
        with Image.open(p) as im:
            np.asarray(im)
    png_us = 1e6 * (time.perf_counter() - t) / len(sample)
    print(f"\nCodec table on {len(sample)} of the images (lossless, checked); PNG+PIL read+decode {png_us:.0f} us/image:")
    print(f"  {'setting':34s} {'bytes':>9s} {'encode':>10s} {'decode':>10s}")
    for name, ratio, enc_us, dec_us in codec_table(sample, png_sample):
        print(f"  {name:34s} {ratio:6.3f}x PNG {enc_us:7.0f} us {dec_us:7.1f} us")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    main()
