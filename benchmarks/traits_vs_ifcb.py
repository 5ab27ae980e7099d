"""Traits vs the IFCB reference features (ifcb-analysis v2 definitions, WHOI ifcb-features v4 table).

Reference: WHOI's golden feature table and blob masks of the bundled bin
``IFCB5_2012_028_081515`` (``shared/data/ifcb_whoi_features``, also in ``tests/data``). For every
ROI with a reference row, the features that measure the same thing are compared, for three masks
measured by :func:`aqqua_geo.downstream.traits.measure` in the same run:

- ``same_mask``: WHOI's blob mask; tests the *definitions* (area, ESD, Moberg & Sosik biovolume,
  ellipse axes, eccentricity, perimeter);
- ``ifcb_segmentation``: our edge segmentation of the raw ROI
  (:func:`aqqua_geo.downstream.segmentation.ifcb_blobs`, what ``measure_many`` uses for IFCB; the
  gap of a stitched V1 ROI is given as such); tests the masks too;
- ``threshold_segmentation`` (control): the grey-threshold segmentation used for the other
  instruments (``method="otsu"``), i.e. what IFCB traits were before.

Deviation = ours / reference − 1, per ROI and feature; the table gives each ROI and the median,
90th percentile and max |deviation| per feature, the pixel agreement of the masks (IoU), and one
scatter figure per feature is written to ``WORKDIR/traits_vs_ifcb_<feature>.png``. The other raw
bins (bundled ``D20130526T095207_IFCB013`` and ``shared/data/ifcb_smhi_ifcb134/bins``) have no
reference features in this repository or in shared/: their traits are printed for both
segmentations, not compared.

    python benchmarks/traits_vs_ifcb.py --workdir /tmp/traits     # ~10 s
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from aqqua_geo.ingest.ifcb import stitched_rois

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
    "eccentricity": ("Eccentricity", 0),
}
SOURCES = ("same_mask", "ifcb_segmentation", "threshold_segmentation")


def reference(folder: Path) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    from PIL import Image

    feats = pd.read_csv(folder / f"{BIN}_features_v4.csv").set_index("roi_number")
    masks = {}
    with zipfile.ZipFile(folder / f"{BIN}_blobs_v4.zip") as z:
        for name in z.namelist():
            masks[int(Path(name).stem.rsplit("_", 1)[1])] = np.array(Image.open(io.BytesIO(z.read(name)))) > 0
    return feats, masks


def stitch_gaps(bin_dir: Path) -> dict[int, np.ndarray]:
    """Not-imaged pixels (True) of each stitched ROI of a bin, on the canvas of ``stitched_rois``."""
    from aqqua_geo.ingest.ifcb import iter_ifcb

    boxes = {}
    for item in iter_ifcb(bin_dir):
        if getattr(item, "image", None) is None:
            continue
        r = item.raw
        boxes[int(r["roi_number"])] = tuple(int(r[k]) for k in ("trigger", "roiX", "roiY", "roiWidth", "roiHeight"))
    gaps = {}
    for n, (trig, *_) in boxes.items():
        group = [j for j, b in boxes.items() if b[0] == trig]
        if len(group) < 2 or n != group[0]:
            continue
        x0, y0 = min(boxes[j][1] for j in group), min(boxes[j][2] for j in group)
        x1 = max(boxes[j][1] + boxes[j][3] for j in group)
        y1 = max(boxes[j][2] + boxes[j][4] for j in group)
        imaged = np.zeros((y1 - y0, x1 - x0), bool)
        for j in group:
            _, x, y, w, h = boxes[j]
            imaged[y - y0:y - y0 + h, x - x0:x - x0 + w] = True
        gaps[n] = ~imaged
    return gaps


def compare(rois: dict[int, np.ndarray], feats: pd.DataFrame, masks: dict[int, np.ndarray],
            gaps: dict[int, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per ROI × mask × feature deviations, per ROI × mask pixel agreement with WHOI's blobs)."""
    from aqqua_geo.downstream.segmentation import ifcb_blobs
    from aqqua_geo.downstream.traits import ifcb_biovolume, largest_object, measure, segment

    rows, agree = [], []
    for roi, f in feats.iterrows():
        candidates = {"same_mask": masks[roi], "ifcb_segmentation": ifcb_blobs(rois[roi], gaps.get(roi)),
                      "threshold_segmentation": segment(rois[roi], method="otsu")}
        ref_blob = largest_object(masks[roi])
        for source in SOURCES:
            mask = candidates[source]
            m = measure(rois[roi], IFCB_PIXEL_UM, mask=mask)
            blob = largest_object(mask)
            agree.append({"roi": roi, "mask": source, "iou_all_blobs": float((mask & masks[roi]).sum() / (mask | masks[roi]).sum()),
                          "iou_largest_blob": float((blob & ref_blob).sum() / (blob | ref_blob).sum())})
            method = ifcb_biovolume(blob)[2]
            for key, (col, power) in FEATURES.items():
                ref = float(f[col]) * IFCB_PIXEL_UM**power
                rows.append({"roi": roi, "mask": source, "feature": key, "reference": ref, "ours": m[key],
                             "deviation": m[key] / ref - 1.0, "biovolume_method": method})
    return pd.DataFrame(rows), pd.DataFrame(agree)


def figures(table: pd.DataFrame, workdir: Path) -> list[Path]:
    from matplotlib.figure import Figure

    paths = []
    for key, sub in table.groupby("feature"):
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        for source, marker in zip(SOURCES, ("o", "x", "+")):
            s = sub[sub["mask"] == source]
            ax.scatter(s["reference"], s["ours"], marker=marker, label=source)
        lo, hi = sub[["reference", "ours"]].min().min(), sub[["reference", "ours"]].max().max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        if key != "eccentricity":
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
    bin_dir = data.path("ifcb") / BIN
    rois = stitched_rois(bin_dir)
    table, agree = compare(rois, feats, masks, stitch_gaps(bin_dir))
    table.to_csv(args.workdir / "traits_vs_ifcb.csv", index=False)
    pd.set_option("display.width", 220)
    wide = table.pivot_table(index=["mask", "roi"], columns="feature", values="deviation")
    print(f"deviation ours / ifcb-features − 1 (%) on {BIN} ({len(feats)} ROIs with a reference row)")
    print((100 * wide).round(2).to_string())
    print("\nmask agreement with WHOI's blobs (IoU)")
    print(agree.pivot_table(index="roi", columns="mask", values=["iou_all_blobs", "iou_largest_blob"]).round(4).to_string())
    summary = table.assign(absdev=100 * table["deviation"].abs()).groupby(["feature", "mask"])["absdev"]
    stats = pd.DataFrame({"median": summary.median(), "p90": summary.quantile(0.9), "max": summary.max()})
    print("\n|deviation| (%) per feature: median, 90th percentile, max (goal: within 3 %)")
    print(stats.round(2).unstack("mask").to_string())
    print("\nfigures:", ", ".join(str(p) for p in figures(table, args.workdir)))

    others = [data.path("ifcb") / "D20130526T095207_IFCB013", args.shared / "ifcb_smhi_ifcb134" / "bins"]
    for other in others:
        if not other.is_dir():
            continue
        imgs = stitched_rois(other)
        per = {}
        for name, method in (("ifcb_segmentation", "ifcb"), ("threshold_segmentation", "otsu")):
            t = measure_many(list(imgs.values()), IFCB_PIXEL_UM, method=method)
            per[name] = t[list(FEATURES)].median()
        print(f"\n{other}: {len(imgs)} ROIs, no reference features available; median traits per segmentation:")
        print(pd.DataFrame(per).round(3).to_string())


if __name__ == "__main__":
    main()
