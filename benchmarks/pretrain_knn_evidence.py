"""Does SSL pretraining learn plankton features? kNN on frozen embeddings, SSL vs random init.

The bundled labelled UVP6 vignettes (``aqqua_geo/data/uvp6_vignettes``; ``darksphere__7777``
excluded: byte copies of Copepoda with a conflicting label) are split once, stratified by
class, once per seed. The config (default ``cpu``) is pretrained **on the training split's
images only** (labels unused). Both the trained EMA-teacher backbone and the same run's
randomly initialised backbone (same seed, same architecture, rebuilt exactly as
``pretrain`` builds it) embed every image with ``embed_images`` (CLS token); a cosine kNN
(k=20, T=0.07, DINOv2's protocol) and a linear probe fitted on the training split are scored
on the held-out split, beside the morphometric random forest on the same split. Prints a
table per seed and the means, writes ``knn_evidence.csv`` and ``loss_curves.png`` (DINO and
iBOT losses, teacher-target entropy, teacher CLS cosine, view retrieval) into ``--out``.

    python benchmarks/pretrain_knn_evidence.py --config cpu --seeds 0 1 2 --out runs/knn_evidence

``--extra-uvp5 ../shared/data/uvp5_morphr`` adds that folder's unlabelled UVP5 vignettes to every
pretraining set (evaluation unchanged): does more, other-instrument data help?
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split

from aqqua_geo.data import write_uvp6_store
from aqqua_geo.downstream.probes import KNNClassifier, LinearProbe
from aqqua_geo.foundation.backbone_io import load_backbone
from aqqua_geo.foundation.config import load_config
from aqqua_geo.foundation.embed import embed_images
from aqqua_geo.foundation.ssl_meta_arch import SSLMetaArch
from aqqua_geo.foundation.train import pretrain
from aqqua_geo.store import AqquaStore, StoreWriter

#: unlabelled UVP5 vignettes of ../shared/data/uvp5_morphr (GreenEdge 2016; SOURCES.md): EcoTaxa
#: style, dark organism on white, no pixel size anywhere; inverted to the UVP6 look (bright organism
#: on dark water) and given an assumed UVP5 HD pixel size
UVP5_ASSUMED_PIXEL_UM = 94.0


def uvp5_unlabelled(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(object id, inverted grey vignette) for every JPEG under *folder* (recursively)."""
    from PIL import Image

    files = sorted(folder.rglob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .jpg vignettes")
    return [(f"uvp5_{f.parent.name}_{f.stem}", 255 - np.asarray(Image.open(f).convert("L"))) for f in files]


def copy_subset(store: AqquaStore, rows: np.ndarray, dst: Path,
                extra: Sequence[tuple[str, np.ndarray]] = ()) -> Path:
    """Write the objects at *rows* of *store*, then the unlabelled *extra* vignettes (with the
    first object's place and date, UVP5 and its assumed pixel size), into a new store at *dst*."""
    fields = ("instrument", "sample_id", "datetime", "lat", "lon", "depth_min", "depth_max", "pixel_size_um",
              "sampled_volume_l", "label", "label_status")
    with StoreWriter(dst, source="uvp6_train_split", source_format="store", source_path=str(store.path)) as w:
        for i in rows:
            record = store.record(int(i))
            w.add(record["object_id"], store[int(i)], {k: record[k] for k in fields})
        first = store.record(int(rows[0])) if extra else None
        for oid, image in extra:
            w.add(oid, image, {**{k: first[k] for k in fields}, "instrument": "UVP5", "sample_id": "uvp5_morphr",
                               "pixel_size_um": UVP5_ASSUMED_PIXEL_UM, "label": None, "label_status": None})
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
    }


def linear_scores(emb: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict:
    pred = LinearProbe().fit(emb[train], labels[train]).predict(emb[test])
    return {"accuracy": float((pred == labels[test]).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(labels[test], pred))}


def baseline_scores(images, pixel_sizes, labels, train, test, seed: int) -> dict:
    from aqqua_geo.downstream.baseline import MorphometricRandomForest

    rf = MorphometricRandomForest(n_estimators=300, random_state=seed)
    feats = rf.features(images, pixel_sizes)
    rf.fit_features(feats.iloc[train], labels[train])
    pred = rf.classes_[rf.predict_proba_features(feats.iloc[test]).argmax(axis=1)]
    return {"accuracy": float((pred == labels[test]).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(labels[test], pred))}


def plot_curves(logs: dict[int, "pd.DataFrame"], png: Path) -> None:
    """DINO global loss, teacher-target entropy and teacher CLS cosine per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("dino_global_crops_loss", "DINO global-crop loss"), ("ibot_loss", "iBOT loss"),
            ("diag_target_entropy", "teacher target entropy / log K"),
            ("diag_teacher_cls_cos", "teacher CLS pairwise cosine"),
            ("diag_view_retrieval", "view retrieval (2nd crop -> own 1st crop)")]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.2))
    for ax, (col, title) in zip(axes, cols):
        for seed, log in logs.items():
            if col in log:
                ax.plot(log["step"], log[col], label=f"seed {seed}", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def run_seed(args, seed: int, tmp: Path, extra: Sequence[tuple[str, np.ndarray]] = ()) -> tuple[dict, "pd.DataFrame"]:
    store = AqquaStore(write_uvp6_store(tmp / f"all_{seed}"))
    labels = store.metadata["label"].to_numpy()
    rows = np.arange(len(store))
    train, test = train_test_split(rows, test_size=args.test_size, stratify=labels, random_state=seed)
    train_store = copy_subset(store, np.sort(train), tmp / f"train_{seed}", extra)
    out = (args.out / f"seed{seed}") if args.out else tmp / f"run_{seed}"
    cfg = load_config(args.config, [f"train.max_steps={args.max_steps}", f"train.max_minutes={args.max_minutes}",
                                    f"train.seed={seed}", "train.checkpoint_every=100000", *args.override])
    t0 = time.monotonic()
    pretrain(cfg, train_store, out, progress=False)
    minutes = (time.monotonic() - t0) / 60
    log = pd.read_csv(out / "log.csv")
    images = [store[int(i)] for i in rows]
    pixel_sizes = store.metadata["pixel_size_um"].tolist()
    result = {"seed": seed, "steps": int(log["step"].iloc[-1]), "minutes": minutes,
              "dino_global_first": float(log["dino_global_crops_loss"].iloc[0]),
              "dino_global_last": float(log["dino_global_crops_loss"].iloc[-5:].mean()),
              "teacher_cls_cos_last": float(log["diag_teacher_cls_cos"].iloc[-5:].mean()),
              "target_entropy_last": float(log["diag_target_entropy"].iloc[-5:].mean()),
              "view_retrieval_last": float(log["diag_view_retrieval"].iloc[-5:].mean())}
    for name, model in (("ssl", load_backbone(out / "backbone.pt")), ("random", random_init_backbone(cfg))):
        emb = embed_images(model, images, pixel_sizes, pool="cls")
        knn = knn_scores(emb, labels, train, test)
        lin = linear_scores(emb, labels, train, test)
        result.update({f"{name}_knn": knn["accuracy"], f"{name}_knn_bal": knn["balanced_accuracy"],
                       f"{name}_linear": lin["accuracy"]})
    base = baseline_scores(images, pixel_sizes, labels, train, test, seed)
    result.update({"rf_morphometrics": base["accuracy"], "rf_morphometrics_bal": base["balanced_accuracy"]})
    return result, log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--max-minutes", type=float, default=20.0, help="wall-clock bound of each pretraining")
    ap.add_argument("--test-size", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split + training seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="run folder (curves PNG, per-seed runs)")
    ap.add_argument("--override", action="append", default=[], help="extra config overrides")
    ap.add_argument("--extra-uvp5", type=Path, default=None,
                    help="also pretrain on the unlabelled UVP5 vignettes under this folder "
                         "(e.g. ../shared/data/uvp5_morphr); evaluation unchanged")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    results, logs = [], {}
    extra_images = uvp5_unlabelled(args.extra_uvp5) if args.extra_uvp5 else []  # read once, every seed adds them
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            result, logs[seed] = run_seed(args, seed, Path(tmp), extra_images)
            results.append(result)
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in result.items()), flush=True)
    table = pd.DataFrame(results)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "knn_evidence.csv", index=False)
        plot_curves(logs, args.out / "loss_curves.png")
    extra = f" + the UVP5 vignettes of {args.extra_uvp5}" if args.extra_uvp5 else ""
    print(f"\nkNN evidence: {args.config} config ({' '.join(args.override) or 'no overrides'}), "
          f"{len(args.seeds)} seeds; pretrained on each seed's training split only{extra} (labels unused); "
          "kNN k=20 cosine T=0.07 / linear probe / morphometric random forest, held-out split")
    cols = ["seed", "steps", "minutes", "dino_global_first", "dino_global_last", "teacher_cls_cos_last",
            "target_entropy_last", "view_retrieval_last", "ssl_knn", "random_knn", "ssl_linear", "random_linear",
            "rf_morphometrics"]
    print(table[cols].round(3).to_string(index=False))
    mean = table.mean(numeric_only=True)
    print(f"mean: SSL kNN {mean['ssl_knn']:.3f} vs random init {mean['random_knn']:.3f} "
          f"({100 * (mean['ssl_knn'] - mean['random_knn']):+.1f} points; goal >= +15), "
          f"linear {mean['ssl_linear']:.3f} vs {mean['random_linear']:.3f}, "
          f"morphometric RF {mean['rf_morphometrics']:.3f}; DINO global loss "
          f"{100 * (1 - mean['dino_global_last'] / mean['dino_global_first']):.0f} % below its start (goal >= 25 %), "
          f"teacher CLS cosine {mean['teacher_cls_cos_last']:.2f} (goal < 0.9)")


if __name__ == "__main__":
    main()
