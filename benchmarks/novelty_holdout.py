"""Novelty on a class never seen in training: each bundled UVP6 class held out entirely.

For every labelled class *c* of the bundled UVP6 vignettes (8 classes after the store drops the
``darksphere`` pixel copies), the scorers are fitted on the *other* classes only (70 % of
them; stratified, seeded), the threshold accepts 95 % of the remaining 30 % (held-out known
images), and the table reports, per held-out class and method:

- ``auroc``: held-out known images vs every image of *c*;
- ``novel_flagged``: share of *c* above the threshold (the goal is ≥ 0.70);
- ``known_flagged``: share of held-out known images above it (≤ 0.05 by construction).

Feature sets, all in the same run and the same splits:

- ``ssl``: CLS embeddings of the tiny plankton ViT pretrained here for ``--steps`` steps
  (or ``--model``);
- ``random_init``: the same architecture with random weights (the control an SSL result
  must beat);
- ``size_only``: (log height, log width, mean grey) of the vignette, standardised, with a
  Euclidean k-NN and a Mahalanobis score (the trivial baseline);
- ``morphometrics``: 23 standardised traits of :func:`aqqua_geo.downstream.traits.measure`
  (log sizes, shape ratios, grey statistics), same scores as the embeddings but Euclidean (what
  a hand-crafted feature set gives, for comparison).

    python benchmarks/novelty_holdout.py --workdir /tmp/nov --steps 300      # ~3-5 min on 2 cores
    python benchmarks/novelty_holdout.py --workdir /tmp/nov --model RUN/backbone.pt

Prints the per-class table, a per-method summary and writes ``WORKDIR/novelty_holdout.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd


def size_features(store) -> np.ndarray:
    """(log height µm, log width µm, mean grey) per object of *store*."""
    meta = store.metadata
    px = meta["pixel_size_um"].to_numpy(np.float64)
    grey = np.array([float(np.asarray(im, dtype=np.float64).mean()) for im in store.get_many(range(len(store)))])
    return np.column_stack([np.log(meta["height"].to_numpy(np.float64) * px),
                            np.log(meta["width"].to_numpy(np.float64) * px), grey])


MORPHO_LOG = ("area_um2", "esd_um", "major_um", "minor_um", "perimeter_um", "feret_um", "convex_area_um2",
              "biovolume_um3")
MORPHO_LINEAR = ("circularity", "elongation", "eccentricity", "solidity", "extent", "mean_grey", "std_grey",
                 "min_grey", "max_grey", "median_grey", "range_grey", "cv_grey", "skew_grey", "kurt_grey",
                 "contrast_grey")


def morphometric_features(store) -> np.ndarray:
    """Log sizes, shape ratios and grey statistics of the segmented object (NaN → column median)."""
    from aqqua_geo.downstream.traits import measure_many

    t = measure_many(store.get_many(range(len(store))), store.metadata["pixel_size_um"].tolist())
    m = pd.concat([np.log(t[list(MORPHO_LOG)].where(t[list(MORPHO_LOG)] > 0)), t[list(MORPHO_LINEAR)]], axis=1)
    return m.fillna(m.median()).to_numpy(np.float64)


def standardise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return ((x - x.mean(0)) / np.maximum(x.std(0), 1e-12)).astype(np.float32)


def backbones(workdir: Path, store: Path, model: Path | None, steps: int, seed: int) -> dict[str, Path]:
    """The SSL backbone (pretrained here unless given) and a random-init control of its architecture."""
    import torch

    from aqqua_geo.foundation import load_config, pretrain
    from aqqua_geo.foundation.backbone_io import load_backbone, save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    if model is None:
        run = workdir / f"ssl_tiny_{steps}_seed{seed}"
        model = run / "backbone.pt"
        if not model.is_file():
            cfg = load_config("tiny", overrides=[f"train.max_steps={steps}", f"train.seed={seed}",
                                                 f"train.checkpoint_every={max(10, steps // 3)}"])
            t0 = time.perf_counter()
            pretrain(cfg, store, run, resume=(run / "checkpoints" / "last.pt").is_file())
            print(f"pretraining: {steps} steps in {time.perf_counter() - t0:.0f} s")
    torch.manual_seed(seed)
    control = save_backbone(build_backbone(load_backbone(model).cfg), workdir / f"random_init_seed{seed}.pt")
    return {"ssl": Path(model), "random_init": control}


def evaluate(features: dict[str, np.ndarray], y: np.ndarray, seed: int, tpr: float,
             methods: list[str], k: int) -> pd.DataFrame:
    """Held-out-class table for every feature set (embeddings: all methods; size: kNN + Mahalanobis)."""
    from aqqua_geo.downstream.novelty import holdout_class_evaluation

    tables = []
    for name, x in features.items():
        if name == "morphometrics":
            res = holdout_class_evaluation(standardise(x), y, methods=[m for m in methods if m != "energy"],
                                           seed=seed, tpr=tpr,
                                           scorer_kwargs={"k": k, "centre": False, "normalise": False})
        elif name == "size_only":
            res = holdout_class_evaluation(standardise(x), y, methods=["knn", "mahalanobis"], seed=seed, tpr=tpr,
                                           scorer_kwargs={"k": k, "centre": False, "normalise": False,
                                                          "class_norm": False})
        else:
            res = holdout_class_evaluation(x, y, methods=methods, seed=seed, tpr=tpr, scorer_kwargs={"k": k})
        tables.append(res.assign(features=name))
    return pd.concat(tables, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--model", type=Path, help="pretrained backbone.pt (skips pretraining)")
    ap.add_argument("--steps", type=int, default=300, help="tiny-config pretraining steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tpr", type=float, default=0.95, help="share of held-out known images accepted")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--methods", default="knn,mahalanobis,rmd,vim,energy")
    args = ap.parse_args()

    from aqqua_geo.data import write_uvp6_store
    from aqqua_geo.downstream.novelty import summarise
    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.store import AqquaStore

    args.workdir.mkdir(parents=True, exist_ok=True)
    store_dir = write_uvp6_store(args.workdir / "uvp6_store")
    store = AqquaStore(store_dir)
    y = store.metadata["label"].to_numpy(dtype=str)
    images = store.get_many(range(len(store)))
    px = store.metadata["pixel_size_um"].tolist()
    features: dict[str, np.ndarray] = {}
    for name, path in backbones(args.workdir, store_dir, args.model, args.steps, args.seed).items():
        t0 = time.perf_counter()
        features[name] = embed_images(load_backbone(path), images, px)
        print(f"embedded {len(images)} images with {name} in {time.perf_counter() - t0:.0f} s")
    features["size_only"] = size_features(store)
    features["morphometrics"] = morphometric_features(store)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    table = evaluate(features, y, args.seed, args.tpr, methods, args.k)
    table.to_csv(args.workdir / "novelty_holdout.csv", index=False)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    wide = table.pivot_table(index="held_out", columns=["features", "method"],
                             values=["auroc", "novel_flagged"]).round(3)
    for value in ("auroc", "novel_flagged"):
        print(f"\n{value} per held-out class (threshold: {args.tpr:.0%} of held-out known images accepted)")
        print(wide[value].to_string())
    print("\nsummary per feature set and method")
    print(table.groupby("features").apply(summarise, include_groups=False).round(3).to_string())
    goal = table[(table["auroc"] >= 0.9) & (table["novel_flagged"] >= 0.7) & (table["known_flagged"] <= 0.05)]
    print(f"\nheld-out classes meeting the goal (AUROC ≥ 0.9, ≥ 70 % flagged, ≤ 5 % known flagged): "
          f"{goal.groupby(['features', 'method']).size().to_dict() or 'none'} of {table['held_out'].nunique()}")


if __name__ == "__main__":
    main()
