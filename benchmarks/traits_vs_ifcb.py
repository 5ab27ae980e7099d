"""Traits vs the IFCB reference features (ifcb-analysis v2 definitions, WHOI ifcb-features v4 table).

Reference: WHOI's golden feature table and blob masks of the bundled bin
``IFCB5_2012_028_081515`` (``shared/data/ifcb_whoi_features``, also in ``tests/data``). For every
ROI with a reference row, the features that measure the same thing are compared:

- **same mask** (WHOI's blob measured by :func:`aqqua_geo.downstream.traits.measure`): tests
  the *definitions* (area, ESD, Moberg & Sosik biovolume, ellipse axes, perimeter);
- **own segmentation** (our threshold segmentation of the raw ROI): adds the difference of
  the masks (WHOI segments with phase congruency).

Deviation = ours / reference − 1, per ROI and feature; the table gives each ROI and the
median / max |deviation| per feature, and one scatter figure per feature is written to
``WORKDIR/traits_vs_ifcb_<feature>.png``. The other raw bins (bundled ``D20130526T095207_IFCB013``
and ``shared/data/ifcb_smhi_ifcb134/bins/D20220519T124533_IFCB134``) have no reference
features in this repository or in shared/: their traits are printed, not compared.

    python benchmarks/traits_vs_ifcb.py --workdir /tmp/traits     # a few seconds
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

IFCB_PIXEL_UM = 1 / 3.4  # µm per pixel (WHOI / iRfcb micron_factor)
BIN = "IFCB5_2012_028_081515"
#: our trait key → (reference column, power of the pixel size)
FEATURES = {
    "area_um2": ("Area", 2),
    "esd_um": ("EquivDiameter", 1),
    "biovolume_ms_um3": ("Biovolume", 3),
    "major_um": ("MajorAxisLength", 1),
    "minor_um": ("MinorAxisLength", 1),
    "perimeter_um": ("Perimeter", 1),
}


def stitched_rois(bin_dir: Path) -> dict[int, np.ndarray]:
    """ROIs by ROI number; ROIs of one trigger stitched on their union box (as WHOI does for V1 bins)."""
    from aqqua_geo.ingest.ifcb import iter_ifcb

    rois, boxes = {}, {}
    for item in iter_ifcb(bin_dir):
        if item.image is None:
            continue
        n = int(item.raw["roi_number"])
        rois[n] = item.image()
        boxes[n] = (int(item.raw["trigger"]), int(item.raw["roiX"]), int(item.raw["roiY"]))
    out: dict[int, np.ndarray] = {}
    for n, (trig, _, _) in boxes.items():
        group = [j for j, b in boxes.items() if b[0] == trig]
        if len(group) == 1:
            out[n] = rois[n]
        elif n == group[0]:
            x0, y0 = min(boxes[j][1] for j in group), min(boxes[j][2] for j in group)
            x1 = max(boxes[j][1] + rois[j].shape[1] for j in group)
            y1 = max(boxes[j][2] + rois[j].shape[0] for j in group)
            canvas = np.full((y1 - y0, x1 - x0), np.median(np.concatenate([rois[j].ravel() for j in group])), np.uint8)
            for j in group:
                h, w = rois[j].shape
                canvas[boxes[j][2] - y0:boxes[j][2] - y0 + h, boxes[j][1] - x0:boxes[j][1] - x0 + w] = rois[j]
            out[n] = canvas
    return out


def reference(folder: Path) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    from PIL import Image

    feats = pd.read_csv(folder / f"{BIN}_features_v4.csv").set_index("roi_number")
    masks = {}
    with zipfile.ZipFile(folder / f"{BIN}_blobs_v4.zip") as z:
        for name in z.namelist():
            masks[int(Path(name).stem.rsplit("_", 1)[1])] = np.array(Image.open(io.BytesIO(z.read(name)))) > 0
    return feats, masks


def compare(rois: dict[int, np.ndarray], feats: pd.DataFrame, masks: dict[int, np.ndarray]) -> pd.DataFrame:
    from aqqua_geo.downstream.traits import ifcb_biovolume, measure

    rows = []
    for roi, f in feats.iterrows():
        for source, mask in (("same_mask", masks[roi]), ("own_segmentation", None)):
            m = measure(rois[roi], IFCB_PIXEL_UM, mask=mask)
            method = ifcb_biovolume(mask)[2] if mask is not None else ""
            for key, (col, power) in FEATURES.items():
                ref = float(f[col]) * IFCB_PIXEL_UM**power
                rows.append({"roi": roi, "mask": source, "feature": key, "reference": ref, "ours": m[key],
                             "deviation": m[key] / ref - 1.0, "biovolume_method": method})
    return pd.DataFrame(rows)


def figures(table: pd.DataFrame, workdir: Path) -> list[Path]:
    from matplotlib.figure import Figure

    paths = []
    for key, sub in table.groupby("feature"):
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        for source, marker in (("same_mask", "o"), ("own_segmentation", "x")):
            s = sub[sub["mask"] == source]
            ax.scatter(s["reference"], s["ours"], marker=marker, label=source)
        lo, hi = sub[["reference", "ours"]].min().min(), sub[["reference", "ours"]].max().max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"ifcb-features v4 ({FEATURES[key][0]})")
        ax.set_ylabel(f"aqqua traits ({key})")
        ax.set_title(f"{BIN}: {key}", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = workdir / f"traits_vs_ifcb_{key}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()

    from aqqua_geo import data
    from aqqua_geo.downstream.traits import measure_many

    args.workdir.mkdir(parents=True, exist_ok=True)
    ref_dir = args.shared / "ifcb_whoi_features"
    if not ref_dir.is_dir():
        ref_dir = Path(__file__).resolve().parents[1] / "tests" / "data" / "ifcb_whoi_features"
    feats, masks = reference(ref_dir)
    rois = stitched_rois(data.path("ifcb") / BIN)
    table = compare(rois, feats, masks)
    table.to_csv(args.workdir / "traits_vs_ifcb.csv", index=False)
    pd.set_option("display.width", 200)
    wide = table.pivot_table(index=["mask", "roi"], columns="feature", values="deviation")
    print(f"deviation ours / ifcb-features − 1 on {BIN} (ROIs with a reference row)")
    print((100 * wide).round(2).to_string())
    summary = table.assign(absdev=table["deviation"].abs()).groupby(["mask", "feature"])["absdev"]
    print("\nmedian and max |deviation| (%) per feature")
    print((100 * pd.DataFrame({"median": summary.median(), "max": summary.max()})).round(2).unstack(0).to_string())
    print("\nfigures:", ", ".join(str(p) for p in figures(table, args.workdir)))

    others = [data.path("ifcb") / "D20130526T095207_IFCB013",
              args.shared / "ifcb_smhi_ifcb134" / "bins"]
    for bin_dir in others:
        if not bin_dir.is_dir():
            continue
        imgs = stitched_rois(bin_dir)
        t = measure_many(list(imgs.values()), IFCB_PIXEL_UM)[list(FEATURES)]
        t.index = list(imgs)
        print(f"\n{bin_dir}: {len(t)} ROIs, no reference features available; our traits (median):")
        print(t.median().round(2).to_string())


if __name__ == "__main__":
    main()
