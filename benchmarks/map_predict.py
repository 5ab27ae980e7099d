"""Benchmark: streamed Dask/Zarr prediction of a BRT ensemble vs a naive in-memory pandas path.

Grid: global 0.25° monthly (12 × 720 × 1440 = 12.4 M cells) with ``--features`` smooth synthetic
fields generated lazily by Dask (nothing materialised up front). Model: a ``--members`` BRT
ensemble trained on samples of the same fields. Each path runs in its own spawned process;
peak memory is sampled from the process RSS (psutil, every 20 ms).

* streamed: ``aqqua_geo.mapping.predict.predict_to_zarr`` (chunks of 90 lat × 1440 lon,
  2 Dask threads, one xgboost thread per task), region writes to Zarr;
* naive: materialise the cube, ``to_dataframe()``, predict every member on the whole table
  (xgboost with 2 threads), back to xarray, write Zarr.

The naive path only runs on a sub-grid that fits comfortably (``--naive-months``); the streamed
path runs on that same sub-grid (time ratio) and on the full grid (memory independent of size).

    python benchmarks/map_predict.py [--months 12] [--naive-months 2] [--members 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

N_LAT, N_LON = 720, 1440
THREADS = 2


# ---- synthetic environment ----------------------------------------------------------------------
def field(k: int, t, lat, lon):
    """Feature k: smooth function of month, latitude, longitude (numpy or dask arrays)."""
    phi, lam = np.radians(lat), np.radians(lon)
    season = np.cos(2 * np.pi * (t + k) / 12.0)
    return (np.sin((k % 4 + 1) * phi + 0.3 * k) * 10.0 + np.cos((k % 3 + 1) * lam + k) * 3.0
            + season * np.cos(phi) * (k % 5 + 1))


def synthetic_cube(months: int, n_features: int):
    """Lazy (time, lat, lon) cube of *n_features* float32 fields, chunked like the product."""
    import dask.array as da
    import xarray as xr

    lat = np.linspace(-89.875, 89.875, N_LAT)
    lon = np.linspace(-179.875, 179.875, N_LON)
    t = np.arange(months, dtype="f8")
    tt = da.from_array(t, chunks=1)[:, None, None]
    la = da.from_array(lat, chunks=90)[None, :, None]
    lo = da.from_array(lon, chunks=N_LON)[None, None, :]
    data = {f"x{k:02d}": (("time", "lat", "lon"), field(k, tt, la, lo).astype("f4"))
            for k in range(n_features)}
    return xr.Dataset(data, coords={"time": t, "lat": lat, "lon": lon})


def train_model(n_features: int, members: int, path: Path) -> None:
    import pandas as pd

    from aqqua_geo.mapping.model import BRTEnsemble

    rng = np.random.default_rng(0)
    n = 20_000
    t, lat, lon = rng.integers(0, 12, n), rng.uniform(-90, 90, n), rng.uniform(-180, 180, n)
    X = pd.DataFrame({f"x{k:02d}": field(k, t, lat, lon) for k in range(n_features)})
    y = np.exp(0.05 * X["x00"] - 0.03 * X["x01"] + 0.02 * X["x02"] * np.sign(X["x03"]))
    X["lon"], X["lat"] = lon, lat
    model = BRTEnsemble(params={"eta": 0.1, "max_depth": 6}, n_estimators=100, n_members=members,
                        early_stopping_rounds=10).fit(X, y + rng.normal(0, 0.05, n))
    model.save(path)


# ---- measured runs (each in a fresh process) ---------------------------------------------------
class PeakRSS:
    """Sample this process's RSS every 20 ms in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> "PeakRSS":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def run_streamed(model_dir: str, months: int, n_features: int, out: str) -> dict:
    import dask

    from aqqua_geo.mapping.model import BRTEnsemble
    from aqqua_geo.mapping.predict import predict_to_zarr

    model = BRTEnsemble.load(model_dir)
    cube = synthetic_cube(months, n_features)
    with PeakRSS() as mem, dask.config.set(scheduler="threads", num_workers=THREADS):
        t0 = time.perf_counter()
        predict_to_zarr(model, cube, out, chunks={"time": 1, "lat": 90, "lon": N_LON},
                        region_size={"lat": 360}, progress=False)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_gb": mem.peak / 1e9, "base_gb": mem.base / 1e9,
            "cells": months * N_LAT * N_LON}


def run_naive(model_dir: str, months: int, n_features: int, out: str) -> dict:
    from aqqua_geo.mapping.model import BRTEnsemble

    model = BRTEnsemble.load(model_dir)
    for b in model.boosters_:
        b.set_param({"nthread": THREADS})
    cube = synthetic_cube(months, n_features)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        df = cube.compute().to_dataframe()  # the whole grid as one table
        ens = model.predict_ensemble(df)
        res = pd_to_xr(df.index, ens)
        res.to_zarr(out, mode="w", consolidated=False)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_gb": mem.peak / 1e9, "base_gb": mem.base / 1e9,
            "cells": months * N_LAT * N_LON}


def pd_to_xr(index, ens: np.ndarray):
    import pandas as pd

    frame = pd.DataFrame({"prediction_mean": ens.mean(axis=0),
                          "prediction_std": ens.std(axis=0, ddof=1)}, index=index)
    return frame.to_xarray()


def in_child(fn, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--months", type=int, default=12)
    p.add_argument("--naive-months", type=int, default=2)
    p.add_argument("--features", type=int, default=10)
    p.add_argument("--members", type=int, default=10)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aqqua_map_bench_"))
    try:
        t0 = time.perf_counter()
        train_model(args.features, args.members, tmp / "model")
        print(f"trained {args.members}-member ensemble, {args.features} features, "
              f"in {time.perf_counter() - t0:.0f} s")
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = float("nan")
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start "
              f"(shared with other jobs: wall times are noisy)")

        m = str(tmp / "model")
        naive = in_child(run_naive, m, args.naive_months, args.features, str(tmp / "naive.zarr"))
        small = in_child(run_streamed, m, args.naive_months, args.features, str(tmp / "s_small.zarr"))
        full = in_child(run_streamed, m, args.months, args.features, str(tmp / "s_full.zarr"))

        import xarray as xr

        a = xr.open_zarr(tmp / "s_small.zarr", consolidated=False)["prediction_mean"].values
        b = xr.open_zarr(tmp / "naive.zarr", consolidated=False)["prediction_mean"].values
        agree = float(np.nanmax(np.abs(a - b)))

        print(f"\n{'path':34s} {'cells':>12s} {'wall s':>8s} {'Mcells/s':>9s} {'peak RSS GB':>12s}")
        for name, r in (("naive pandas, in memory", naive), ("streamed dask/zarr (same grid)", small),
                        ("streamed dask/zarr (full grid)", full)):
            print(f"{name:34s} {r['cells']:12,d} {r['wall_s']:8.1f} {r['cells'] / r['wall_s'] / 1e6:9.2f} "
                  f"{r['peak_gb']:12.2f}")
        scale = args.months / args.naive_months
        naive_full_gb = naive["base_gb"] + (naive["peak_gb"] - naive["base_gb"]) * scale
        print(f"\ntime ratio streamed/naive (same {args.naive_months}-month grid): "
              f"{small['wall_s'] / naive['wall_s']:.2f}  (goal <= 1.2)")
        print(f"peak memory streamed full grid: {full['peak_gb']:.2f} GB (goal <= 4 GB); "
              f"naive extrapolated to the full grid: {naive_full_gb:.1f} GB "
              f"(x{naive_full_gb / full['peak_gb']:.1f})")
        print(f"streamed peak grows x{full['peak_gb'] / small['peak_gb']:.2f} for x{scale:.0f} cells; "
              f"max |streamed - naive| = {agree:.2e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
