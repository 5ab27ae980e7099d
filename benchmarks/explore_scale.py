"""Scale benchmark of the embedding explorer: 100k points in headless Chromium.

Builds (once, cached in --workdir) a synthetic store of N tiny images with realistic metadata
spread (instruments, samples, dates, positions, labels) and synthetic embeddings (a Gaussian
mixture, one component per class) plus predictions, then measures in Debian's headless Chromium:

* server side: layout (PCA; UMAP with --umap), payload size and encode time, static export time;
* page: load-to-ready and first render, full re-render, recolour (categorical, continuous),
  filter, lasso selection, picking, hover-to-tooltip and click-to-image latencies;
* baseline, same run, same browser and points: a naive SVG scatter (one <circle> per point),
  the approach the explorer avoids; its render time gives the speed-up ratio.

    python benchmarks/explore_scale.py --n 100000            # ~2 min on 2 cores (store build ~50 s once)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTRUMENTS = ["UVP6", "UVP5", "IFCB", "ZooScan", "FlowCam"]


def build_inputs(workdir: Path, n: int, dim: int, n_classes: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """Synthetic store + embeddings.zarr + predictions.parquet of *n* objects (cached)."""
    import zarr

    from aqqua_geo.store import StoreWriter

    store_dir, emb_path, pred_path = workdir / "store", workdir / "embeddings.zarr", workdir / "predictions.parquet"
    done = workdir / f"done-{n}-{dim}-{n_classes}-{seed}"
    if done.exists():
        return store_dir, emb_path, pred_path
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, n_classes, n)
    sample = rng.integers(0, 400, n)
    s_lat, s_lon = rng.uniform(-70, 70, 400), rng.uniform(-180, 180, 400)
    s_time = pd.Timestamp("2015-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 3000, 400), unit="D")
    s_inst = rng.integers(0, len(INSTRUMENTS), 400)
    ids = [f"obj{i:07d}" for i in range(n)]
    t0 = time.perf_counter()
    with StoreWriter(store_dir, source="synthetic", source_format="folder", source_path="benchmark") as w:
        for i in range(n):
            h, wd = rng.integers(8, 24, 2)
            s = sample[i]
            w.add(ids[i], rng.integers(0, 255, size=(h, wd), dtype=np.uint8),
                  {"source": "synthetic", "instrument": INSTRUMENTS[s_inst[s]], "sample_id": f"s{s:03d}",
                   "datetime": s_time[s], "lat": float(s_lat[s]), "lon": float(s_lon[s]),
                   "depth_min": float(rng.uniform(0, 500)), "depth_max": None, "pixel_size_um": 73.0,
                   "label": f"class_{cls[i]:02d}", "label_status": "validated"})
    print(f"built synthetic store of {n} objects in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    centroids = rng.normal(size=(n_classes, dim)) * 3
    vectors = (centroids[cls] + rng.normal(size=(n, dim))).astype(np.float32)
    g = zarr.open_group(str(emb_path), mode="w")
    g.create_array("embedding", data=vectors, chunks=(4096, dim))
    g.create_array("object_id", shape=(n,), chunks=(4096,), dtype=str)[:] = np.asarray(ids, dtype=str)
    pred = np.where(rng.random(n) < 0.15, rng.integers(0, n_classes, n), cls)
    pd.DataFrame({"object_id": ids, "pred_label": [f"class_{c:02d}" for c in pred],
                  "pred_prob": rng.uniform(0.3, 1, n), "novelty_score": rng.gamma(2, 0.1, n),
                  "is_novel": rng.random(n) < 0.05, "esd_um": rng.lognormal(6, 0.5, n),
                  "carbon_ugC": rng.lognormal(0, 1, n)}).to_parquet(pred_path)
    done.touch()
    return store_dir, emb_path, pred_path


SVG_BASELINE = """async (n) => {
  // naive baseline: one SVG <circle> per point, same positions and colours as the explorer
  const t0 = performance.now();
  const svgNS = 'http://www.w3.org/2000/svg', svg = document.createElementNS(svgNS, 'svg');
  svg.setAttribute('width', 800); svg.setAttribute('height', 800);
  svg.style.cssText = 'position:fixed;left:0;top:0;z-index:99;background:#fff';
  const ids = [];
  for (let i = 0; i < n; i++) ids.push(i);
  const frag = document.createDocumentFragment();
  for (const i of ids) {
    const c = document.createElementNS(svgNS, 'circle');
    c.setAttribute('cx', (i * 7919) % 800); c.setAttribute('cy', (i * 104729) % 800); c.setAttribute('r', 1.5);
    c.setAttribute('fill', `hsl(${i % 360},60%,50%)`);
    frag.appendChild(c);
  }
  svg.appendChild(frag); document.body.appendChild(svg);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));  // layout + paint
  const first = performance.now() - t0;
  const t1 = performance.now();  // recolour all circles
  for (const c of svg.children) c.setAttribute('fill', '#336699');
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const recolour = performance.now() - t1;
  svg.remove();
  return {first, recolour};
}"""


def measure_page(browser, url: str, ex, reps: int) -> dict:
    """Timings (ms) of the explorer page at *url*."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function("window.aqquaExplorer && (aqquaExplorer.ready || aqquaExplorer.error)", timeout=120_000)
    ready_ms = (time.perf_counter() - t0) * 1000
    if page.evaluate("aqquaExplorer.error"):
        raise RuntimeError(page.evaluate("aqquaExplorer.error"))
    r: dict = {"n_points": page.evaluate("aqquaExplorer.nPoints"), "goto_to_ready_ms": ready_ms,
               "script_load_ms": page.evaluate("aqquaExplorer.loadMs")}
    r["render_ms"] = page.evaluate(f"aqquaExplorer.benchRender({reps})")
    r["recolour_category_ms"] = page.evaluate("aqquaExplorer.benchColor('instrument')")
    r["recolour_continuous_ms"] = page.evaluate("aqquaExplorer.benchColor('novelty_score')")
    r["recolour_datetime_ms"] = page.evaluate("aqquaExplorer.benchColor('datetime')")
    r["pick_ms"] = page.evaluate("aqquaExplorer.benchPick(2000)")
    # filter through the UI: untick one instrument (event → filter → render)
    r["filter_ms"] = page.evaluate("""() => { const cb = document.querySelector('#filter-instrument input');
        const t0 = performance.now(); cb.click(); aqquaExplorer.render(); const dt = performance.now() - t0;
        cb.click(); return dt; }""")
    # lasso with the real mouse; latency = mouseup → selection counted and redrawn
    page.click("#mode-lasso")
    box = page.locator("#overlay").bounding_box()
    cx, cy, rad = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["width"], box["height"]) / 3
    ring = [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 40)]
    page.mouse.move(*ring[0])
    page.mouse.down()
    for x, y in ring[1:]:
        page.mouse.move(x, y)
    t1 = time.perf_counter()
    page.mouse.up()
    page.wait_for_function("aqquaExplorer.nSelected > 0")
    page.evaluate("new Promise((r) => requestAnimationFrame(() => r()))")
    r["lasso_mouseup_to_frame_ms"] = (time.perf_counter() - t1) * 1000
    r["n_lasso_selected"] = page.evaluate("aqquaExplorer.nSelected")
    r["render_with_selection_ms"] = page.evaluate(f"aqquaExplorer.benchRender({reps})")
    page.click("#mode-pan")
    # hover → tooltip, click → image shown (real mouse; includes CDP round trips)
    oid = str(ex.embeddings.object_ids[len(ex) // 2])
    pos = page.evaluate("(id) => aqquaExplorer.screenPosition(id)", oid)
    hover, click = [], []
    for k in range(5):
        page.mouse.move(pos["x"], 5)  # over the header: the plot's mouseleave hides the tooltip
        page.wait_for_function("document.getElementById('tooltip').hidden")
        t2 = time.perf_counter()
        page.mouse.move(pos["x"], pos["y"])
        page.wait_for_function("!document.getElementById('tooltip').hidden")
        hover.append((time.perf_counter() - t2) * 1000)
        t3 = time.perf_counter()
        page.mouse.click(pos["x"], pos["y"])
        page.wait_for_function("aqquaExplorer.details.imageLoaded || aqquaExplorer.details.record")
        click.append((time.perf_counter() - t3) * 1000)
    r["hover_to_tooltip_ms"] = statistics.median(hover)
    r["click_to_details_ms"] = statistics.median(click)
    r["baseline_svg"] = page.evaluate(SVG_BASELINE, r["n_points"])
    r["page_errors"] = errors
    page.close()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=40)
    ap.add_argument("--umap", action="store_true", help="also time the UMAP layout (minutes at 100k on 2 cores)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/aqqua_explore_bench"))
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from aqqua_geo.explore.app import Explorer
    from aqqua_geo.explore.embeddings import read_embeddings
    from aqqua_geo.explore.layout import compute_layout, layout_params
    from aqqua_geo.explore.server import ExplorerServer
    from aqqua_geo.explore.static_site import write_static

    store, emb_path, pred_path = build_inputs(args.workdir, args.n, args.dim, args.classes)
    out: dict = {"n": args.n, "dim": args.dim}
    t = time.perf_counter()
    ex = Explorer.open(store, emb_path, pred_path, method="pca", use_cache=False)
    out["open_with_pca_layout_s"] = time.perf_counter() - t
    if args.umap:
        t = time.perf_counter()
        compute_layout(read_embeddings(emb_path).vectors, layout_params("umap"))
        out["umap_layout_s"] = time.perf_counter() - t
    t = time.perf_counter()
    payload = ex.payload
    out["payload_encode_s"] = time.perf_counter() - t
    out["payload_mb"] = len(payload) / 1e6
    t = time.perf_counter()
    index = write_static(ex, args.workdir / "site", max_images=5000, progress=False)
    out["static_export_5000_images_s"] = time.perf_counter() - t
    out["static_data_js_mb"] = (index.parent / "data.js").stat().st_size / 1e6

    server = ExplorerServer(ex, args.workdir / "exports", port=0)
    server.start_background()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            out["server_page"] = measure_page(browser, server.url, ex, args.reps)
            out["static_page"] = measure_page(browser, index.as_uri(), ex, args.reps)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()

    for mode in ("server_page", "static_page"):
        m = out[mode]
        base = m["baseline_svg"]
        m["speedup_first_render_vs_svg"] = base["first"] / m["render_ms"]
        m["speedup_recolour_vs_svg"] = base["recolour"] / m["recolour_category_ms"]
    print(json.dumps(out, indent=1, default=float))
    s, st = out["server_page"], out["static_page"]
    print(f"\n{args.n} points: payload {out['payload_mb']:.1f} MB; served page ready in {s['goto_to_ready_ms']:.0f} ms "
          f"(static file:// {st['goto_to_ready_ms']:.0f} ms); full render {s['render_ms']:.1f} ms "
          f"vs naive SVG {s['baseline_svg']['first']:.0f} ms (×{s['speedup_first_render_vs_svg']:.0f}); "
          f"recolour {s['recolour_category_ms']:.1f} ms (SVG {s['baseline_svg']['recolour']:.0f} ms); "
          f"pick {s['pick_ms'] * 1000:.0f} µs; lasso {s['lasso_mouseup_to_frame_ms']:.0f} ms; "
          f"hover→tooltip {s['hover_to_tooltip_ms']:.0f} ms; click→details {s['click_to_details_ms']:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
