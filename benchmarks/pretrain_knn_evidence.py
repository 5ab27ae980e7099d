"""Does SSL pretraining learn plankton features? kNN on frozen embeddings, SSL vs random init.

The bundled labelled UVP6 vignettes (``aqqua_geo/data/uvp6_vignettes``; ``darksphere__7777``
excluded: byte copies of Copepoda with a conflicting label) are split once, stratified by
class. The tiny config is pretrained **on the training split's images only** (labels unused)
for a few CPU minutes. Both the trained EMA-teacher backbone and the same run's randomly
initialised backbone (same seed, same architecture, rebuilt exactly as ``pretrain`` builds
it) embed every image with ``embed_images``; a cosine kNN (k=20, T=0.07, L2-normalised,
DINOv2's protocol: ``classify.KNNClassifier``) fitted on the training split is scored on the
held-out split. Prints both accuracies (plain and class-balanced) and writes
``knn_evidence.png`` (per-class recall) next to the run.

    python benchmarks/pretrain_knn_evidence.py --max-steps 300 --out runs/knn_evidence
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.model_selection import train_test_split

from aqqua_geo.downstream.probes import KNNClassifier
from aqqua_geo.foundation.config import load_config
from aqqua_geo.data import write_uvp6_store
from aqqua_geo.foundation.embed import embed_images
from aqqua_geo.foundation.ssl_meta_arch import SSLMetaArch
from aqqua_geo.foundation.train import pretrain
from aqqua_geo.foundation.vit import load_backbone
from aqqua_geo.store import AqquaStore, StoreWriter


def copy_subset(store: AqquaStore, rows: np.ndarray, dst: Path) -> Path:
    """Write the objects at *rows* of *store* into a new store at *dst*."""
    fields = ("instrument", "sample_id", "datetime", "lat", "lon", "depth_min", "depth_max", "pixel_size_um",
              "sampled_volume_l", "label", "label_status")
    with StoreWriter(dst, source="uvp6_train_split", source_format="store", source_path=str(store.path)) as w:
        for i in rows:
            record = store.record(int(i))
            w.add(record["object_id"], store[int(i)], {k: record[k] for k in fields})
    return dst


def random_init_backbone(cfg: dict):
    """The run's initial weights: ``pretrain`` seeds ``train.seed`` then builds ``SSLMetaArch``."""
    from aqqua_geo.foundation.train import _seed_all

    _seed_all(int(cfg["train"]["seed"]))
    return SSLMetaArch(cfg).teacher["backbone"].eval()


def knn_scores(emb: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict:
    knn = KNNClassifier(k=20, temperature=0.07).fit(emb[train], labels[train])
    pred = knn.predict(emb[test])
    return {
        "accuracy": float((pred == labels[test]).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels[test], pred)),
        "recall": recall_score(labels[test], pred, labels=np.unique(labels), average=None, zero_division=0),
    }


def plot(results: dict, classes: np.ndarray, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for k, (name, r) in enumerate(results.items()):
        ax.bar(x + (k - 0.5) * 0.4, r["recall"], width=0.4,
               label=f"{name} ({r['pool']}): acc {r['accuracy']:.3f}, bal. acc {r['balanced_accuracy']:.3f}")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("kNN recall (held-out)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("UVP6 vignettes: kNN (k=20, cosine) on frozen embeddings")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--max-minutes", type=float, default=10.0, help="wall-clock bound of the pretraining")
    ap.add_argument("--test-size", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary folder)")
    ap.add_argument("--override", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = args.out or tmp / "run"
        store = AqquaStore(write_uvp6_store(tmp / "all"))
        labels = store.metadata["label"].to_numpy()
        rows = np.arange(len(store))
        train, test = train_test_split(rows, test_size=args.test_size, stratify=labels, random_state=args.seed)
        train_store = copy_subset(store, np.sort(train), tmp / "train")

        cfg = load_config(args.config, [f"train.max_steps={args.max_steps}", f"train.max_minutes={args.max_minutes}",
                                        f"train.seed={args.seed}", "train.checkpoint_every=100000", *args.override])
        t0 = time.monotonic()
        pretrain(cfg, train_store, out, progress=True)
        minutes = (time.monotonic() - t0) / 60
        steps = int(torch.load(out / "checkpoints" / "last.pt", weights_only=False)["step"])

        images = [store[int(i)] for i in rows]
        pixel_sizes = store.metadata["pixel_size_um"].tolist()
        results, by_pool = {}, {}
        for name, model in (("SSL-pretrained", load_backbone(out / "backbone.pt")),
                            ("random init", random_init_backbone(cfg))):
            # Each model is credited with its better pooling (a random ViT's CLS token barely
            # depends on the image with LayerScale 1e-5; its mean patch token does).
            scores = {pool: knn_scores(embed_images(model, images, pixel_sizes, pool=pool), labels, train, test)
                      for pool in ("cls", "pooled")}
            by_pool[name] = scores
            best = max(scores, key=lambda p: scores[p]["balanced_accuracy"])
            results[name] = {**scores[best], "pool": best}
        classes = np.unique(labels)
        if args.out:
            plot(results, classes, out / "knn_evidence.png")

    print(f"kNN evidence: {args.config} config, {steps} steps in {minutes:.1f} min on {len(train)} training "
          f"images (labels unused); kNN k=20 cosine T=0.07 fitted on them, scored on {len(test)} held-out "
          f"images, {len(classes)} classes (stratified split, seed {args.seed})")
    print(f"{'embeddings':16s} {'pool':7s} {'accuracy':>9s} {'balanced acc':>13s}")
    for name, scores in by_pool.items():
        for pool, r in scores.items():
            print(f"{name:16s} {pool:7s} {r['accuracy']:9.3f} {r['balanced_accuracy']:13.3f}")
    ssl, rnd = results["SSL-pretrained"], results["random init"]
    print(f"best pool each (SSL {ssl['pool']}, random {rnd['pool']}): SSL - random = "
          f"{ssl['accuracy'] - rnd['accuracy']:+.3f} accuracy, "
          f"{ssl['balanced_accuracy'] - rnd['balanced_accuracy']:+.3f} balanced accuracy")
    print("per-class recall (SSL / random): " + ", ".join(
        f"{c} {a:.2f}/{b:.2f}" for c, a, b in zip(classes, ssl["recall"], rnd["recall"])))


if __name__ == "__main__":
    main()
