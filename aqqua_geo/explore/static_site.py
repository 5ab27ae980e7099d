"""Self-contained static export of the explorer: a folder that works from ``file://``.

``OUT/index.html`` + the app's JS/CSS + ``data.js`` (the binary point payload as base64 and the
land outlines, loaded with a plain ``<script>`` because browsers block ``fetch`` on ``file://``)
+ ``images/<row>.png``. Images are capped in number (a fixed random sample beyond the cap) and
in size (longest side), so a 100k-object store still gives a folder one can copy around.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from aqqua_geo.explore.app import Explorer
from aqqua_geo.explore.coastlines import land_geojson
from aqqua_geo.explore.images import to_png
from aqqua_geo.explore.page import ASSETS, STATIC_DIR, render_index

MARKER = ".aqqua-explore"  # identifies a folder this module wrote (safe to replace)


def image_rows(n: int, max_images: int, seed: int = 0) -> np.ndarray:
    """Rows whose images are exported: all of them, or a fixed random sample of *max_images*."""
    if max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    if n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))


def write_static(explorer: Explorer, out: str | Path, max_images: int = 5000, max_image_side: int = 1024,
                 progress: bool = True) -> Path:
    """Write the static explorer of *explorer* to folder *out* (replaced atomically if it is a
    previous export; refused if it is any other non-empty folder). Returns ``out/index.html``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and is not an aqqua explorer export; choose an empty folder")
    rows = image_rows(len(explorer), max_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        ids = explorer.embeddings.object_ids
        for row in tqdm(rows, desc="exporting images", unit="img", disable=not progress):
            png, _ = to_png(explorer.store.get(str(ids[row])), max_side=max_image_side)
            (tmp / "images" / f"{row}.png").write_bytes(png)
        payload = explorer.points_payload({"static_images": rows.tolist(), "max_images": max_images,
                                           "max_image_side": max_image_side})
        data = {"points": base64.b64encode(payload).decode("ascii"), "coastlines": land_geojson()}
        (tmp / "data.js").write_text("window.AQQUA_DATA = " + json.dumps(data, separators=(",", ":")) + ";\n",
                                     encoding="utf-8")
        for name in ASSETS:
            shutil.copyfile(STATIC_DIR / name, tmp / name)
        (tmp / "index.html").write_text(render_index("static", explorer.title, asset_prefix="", data_script="data.js"),
                                        encoding="utf-8")
        (tmp / MARKER).write_text("written by aqqua_geo.explore.static_site\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"
