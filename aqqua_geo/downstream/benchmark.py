"""Benchmark backbones on a labelled store and keep a leaderboard.

For every model, on one deterministic stratified split (seeded) of the store's labelled
objects (the store has already dropped pixel-duplicates such as the UVP6 ``darksphere``
copies, so labels come from the kept objects):

- k-NN (DINOv2 protocol: cosine, k = 20, T = 0.07; method ``knn20``) and a linear probe
  (``linear``) on frozen CLS embeddings: top-1 accuracy, balanced accuracy, macro-F1, per-class report (CSV) and a
  row-normalised confusion matrix (PNG);
- novelty: AUROC with each class held out in turn
  (:func:`~aqqua_geo.downstream.novelty.leave_one_class_out`) for the k-NN, Mahalanobis and
  energy scores (``OUT/ood_<model>.csv``); the leaderboard shows the k-NN score's mean;
- trait R²: ridge regression of morphometric traits from embeddings, when the store's raw
  metadata carry ZooProcess/EcoTaxa traits (``object_area``, ``object_esd``, …).

The baseline users have today, :class:`~aqqua_geo.downstream.baseline.MorphometricRandomForest`
(hand-crafted morphometrics + random forest), is always evaluated in the same run, on the same
split; its novelty score is the maximum-softmax-probability ``1 − max p``.

Each method adds one row to ``leaderboard.csv``; ``leaderboard.md`` is rewritten from it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aqqua_geo._io import atomic_path, file_sha256
from aqqua_geo.downstream.classify import hybrid_inputs, labelled_subset
from aqqua_geo.downstream.probes import KNNClassifier, LinearProbe

LEADERBOARD_COLUMNS = ["date_utc", "model", "method", "store", "n_classes", "n_train", "n_test", "top1",
                       "balanced_accuracy", "macro_f1", "ood_auroc", "trait_r2", "seed", "model_sha256"]
#: raw EcoTaxa/ZooProcess trait columns regressed from embeddings when a store has them
RAW_TRAIT_COLUMNS = ("object_area", "object_esd", "object_major", "object_minor", "object_perim.",
                     "object_feret", "object_area_exc", "object_biovolume")
BASELINE_NAME = "MorphometricRandomForest"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Top-1, balanced accuracy and macro-F1."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {"top1": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def save_reports(y_true: Sequence[str], y_pred: Sequence[str], out_dir: Path, title: str) -> None:
    """Per-class report (CSV) and row-normalised confusion matrix (PNG) into *out_dir*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, classification_report

    out_dir.mkdir(parents=True, exist_ok=True)
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    pd.DataFrame(report).T.to_csv(out_dir / "classification_report.csv")
    labels = sorted(set(y_true) | set(y_pred))
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=labels, normalize="true", ax=ax,
                                            xticks_rotation=45, values_format=".2f", colorbar=False, cmap="Blues")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=120)
    plt.close(fig)


def raw_traits(store, rows: np.ndarray) -> pd.DataFrame | None:
    """Numeric ZooProcess trait columns of the store's raw metadata for *rows*, if any."""
    try:
        raw = store.raw()
    except (FileNotFoundError, ValueError, KeyError):
        return None
    cols = [c for c in RAW_TRAIT_COLUMNS if c in raw.columns]
    if not cols or "object_id" not in raw:
        return None
    raw = raw.drop_duplicates("object_id").set_index("object_id")
    ids = np.asarray(store.object_ids)[rows]
    table = raw.reindex(ids)[cols].apply(pd.to_numeric, errors="coerce")
    table = table.loc[:, table.notna().mean() > 0.5]
    return table if table.shape[1] else None


def _trait_r2(emb: np.ndarray, traits: pd.DataFrame | None, tr: np.ndarray, te: np.ndarray) -> float:
    if traits is None:
        return float("nan")
    from aqqua_geo.downstream.trait_regressor import TraitRegressor

    reg = TraitRegressor(kind="ridge", log_target=True).fit(emb[tr], traits.iloc[tr])
    return float(np.nanmean(list(reg.score(emb[te], traits.iloc[te]).values())))


def _baseline_ood(features: pd.DataFrame, y: np.ndarray, test_size: float, seed: int, n_estimators: int) -> float:
    """Mean leave-one-class-out AUROC of the random forest's ``1 − max p``."""
    from sklearn.model_selection import train_test_split

    from aqqua_geo.downstream.baseline import MorphometricRandomForest
    from aqqua_geo.downstream.novelty import auroc

    scores = []
    X = np.asarray(features, dtype=np.float64)
    for held in np.unique(y):
        known = y != held
        if len(np.unique(y[known])) < 2:
            continue
        idx = np.flatnonzero(known)
        tr, te = train_test_split(idx, test_size=test_size, stratify=y[idx], random_state=seed)
        rf = MorphometricRandomForest(n_estimators=n_estimators, random_state=seed).fit_features(X[tr], y[tr])
        s_in = 1 - rf.predict_proba_features(X[te]).max(axis=1)
        s_out = 1 - rf.predict_proba_features(X[~known]).max(axis=1)
        scores.append(auroc(s_in, s_out))
    return float(np.mean(scores)) if scores else float("nan")


def update_leaderboard(rows: list[dict[str, Any]], directory: str | Path) -> pd.DataFrame:
    """Append *rows* to ``leaderboard.csv`` and rewrite ``leaderboard.md`` (best macro-F1 first)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    csv = directory / "leaderboard.csv"
    new = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    board = pd.concat([pd.read_csv(csv), new], ignore_index=True) if csv.is_file() else new
    with atomic_path(csv) as tmp:
        board.to_csv(tmp, index=False)
    shown = board.sort_values(["store", "macro_f1"], ascending=[True, False])
    cols = ["model", "method", "store", "n_classes", "n_test", "top1", "balanced_accuracy", "macro_f1",
            "ood_auroc", "trait_r2", "date_utc"]
    lines = ["# Leaderboard", "",
             "Frozen-embedding k-NN / linear probe vs the morphometric random-forest baseline; "
             "same stratified split per run. `ood_auroc`: mean leave-one-class-out AUROC.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in shown.iterrows():
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    (directory / "leaderboard.md").write_text("\n".join(lines) + "\n")
    return board


def run_benchmark(models: Sequence[str | Path], store_dir: str | Path, out_dir: str | Path, *,
                  names: Sequence[str] | None = None, labels: str | Path | None = None, k: int = 20,
                  test_size: float = 0.3, seed: int = 0, min_count: int = 10, rare: str = "exclude",
                  baseline: bool = True, baseline_trees: int = 300, device: str = "cpu",
                  max_tokens_per_batch: int = 4096, leaderboard: str | Path | None = None,
                  random_init: bool = True, hybrid: bool = True, finetune_epochs: int = 0,
                  progress: bool = True) -> pd.DataFrame:
    """Evaluate backbones (and the morphometric baseline) on a labelled store.

    *labels* optionally names a CSV/Parquet with ``object_id, label`` overriding the store's
    labels. Writes ``OUT/<model>_<method>/{classification_report.csv, confusion.png}``,
    ``OUT/ood_<model>.csv`` (per held-out class and novelty method) and appends to ``<leaderboard or OUT>/leaderboard.{csv,md}``.
    Every row uses the same stratified split. Besides each model's frozen k-NN and linear
    probe: *random_init* adds the same architecture at random initialisation (the control
    any pretraining is judged against), *hybrid* a logistic regression on the embedding ⊕ the
    morphometric features (EcoTaxa's practice), *finetune_epochs* > 0 full fine-tuning on the
    training split (:func:`~aqqua_geo.downstream.finetune.finetune`, validation carved out of
    the training split; the test split is never seen). Returns this run's leaderboard rows.
    """
    from sklearn.model_selection import train_test_split
    from tqdm.auto import tqdm

    from aqqua_geo.downstream.novelty import leave_one_class_out
    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.store import AqquaStore

    out_dir = Path(out_dir)
    names = list(names) if names else [Path(m).stem if Path(m).stem != "backbone" else Path(m).parent.name
                                        for m in models]
    if len(names) != len(models):
        raise ValueError(f"{len(models)} models but {len(names)} names")
    store = AqquaStore(store_dir)
    override = _read_labels(labels, store) if labels is not None else None
    rows, y, rare_report = labelled_subset(store, override, min_count=min_count, rare=rare)
    if len(np.unique(y)) < 2:
        raise ValueError(f"store {store_dir}: fewer than 2 classes with >= {min_count} labelled objects")
    out_dir.mkdir(parents=True, exist_ok=True)
    rare_report.to_csv(out_dir / "classes.csv", index=False)
    idx = np.arange(len(rows))
    tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    images = store.get_many(rows.tolist())
    px = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)[rows]
    traits = raw_traits(store, rows)
    common = {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "store": Path(store_dir).name,
              "n_classes": int(len(np.unique(y))), "n_train": int(len(tr)), "n_test": int(len(te)), "seed": seed}
    results: list[dict[str, Any]] = []
    from aqqua_geo.downstream.baseline import MorphometricRandomForest

    rf = MorphometricRandomForest(n_estimators=baseline_trees, random_state=seed)
    feats = rf.features(images, list(px), progress=progress) if (baseline or hybrid) else None

    def add_rows(name: str, emb: np.ndarray, sha: str, with_hybrid: bool) -> None:
        ood = leave_one_class_out(emb, y, test_size=test_size, seed=seed, k=min(k, 10))
        ood.to_csv(out_dir / f"ood_{slug(name)}.csv", index=False)
        knn_auroc = float(ood.loc[ood["method"] == "knn", "auroc"].mean())
        trait_r2 = _trait_r2(emb, traits, tr, te)
        heads = [(f"knn{k}", KNNClassifier(k=k), emb), ("linear", LinearProbe(), emb)]
        if with_hybrid and feats is not None:
            heads.append(("hybrid", LinearProbe(C=0.5, normalize=False), hybrid_inputs(emb, images, px, feats)))
        for method, head, x in heads:
            pred = head.fit(x[tr], y[tr]).predict(x[te])
            save_reports(y[te], pred, out_dir / f"{slug(name)}_{method}", f"{name} — {method}")
            results.append({**common, "model": name, "method": method, **classification_metrics(y[te], pred),
                            "ood_auroc": knn_auroc, "trait_r2": trait_r2, "model_sha256": sha})

    for model_path, name in tqdm(list(zip(models, names)), desc="benchmark", unit="model", disable=not progress):
        model = load_backbone(model_path, device=device)
        emb = embed_images(model, images, list(px), max_tokens_per_batch=max_tokens_per_batch, device=device)
        add_rows(name, emb, file_sha256(model_path), hybrid)
        if random_init:
            import torch

            from aqqua_geo.foundation.vit import build_backbone

            torch.manual_seed(seed)
            control = build_backbone(model.cfg).to(device).eval()
            add_rows(f"{name} (random init)", embed_images(control, images, list(px), device=device,
                                                           max_tokens_per_batch=max_tokens_per_batch), "", False)
        if finetune_epochs > 0:
            from aqqua_geo.downstream.classify import ClassifierBundle
            from aqqua_geo.downstream.finetune import finetune

            train_labels = [None] * len(store)
            for i in tr:
                train_labels[int(rows[i])] = str(y[i])
            ft_backbone, ft_clf = finetune(model_path, store, out_dir / f"finetune_{slug(name)}",
                                           labels=train_labels, epochs=finetune_epochs, min_count=2,
                                           rare="exclude", seed=seed, device=device, novelty="knn",
                                           max_tokens_per_batch=max_tokens_per_batch, progress=progress)
            ft_model = load_backbone(ft_backbone, device=device)
            ft_emb = embed_images(ft_model, [images[i] for i in te], list(px[te]), device=device,
                                  max_tokens_per_batch=max_tokens_per_batch)
            bundle = ClassifierBundle.load(ft_clf)
            pred = bundle.classes[bundle.predict_proba(ft_emb).argmax(axis=1)]
            save_reports(y[te], pred, out_dir / f"{slug(name)}_finetune", f"{name} — full fine-tuning")
            results.append({**common, "model": name, "method": "finetune", **classification_metrics(y[te], pred),
                            "ood_auroc": float("nan"), "trait_r2": float("nan"),
                            "model_sha256": file_sha256(ft_backbone)})
    if baseline:
        rf.fit_features(feats.iloc[tr], y[tr])
        pred = rf.classes_[rf.predict_proba_features(feats.iloc[te]).argmax(axis=1)]
        save_reports(y[te], pred, out_dir / "baseline_rf", f"{BASELINE_NAME} (baseline)")
        results.append({**common, "model": BASELINE_NAME, "method": "rf_morphometrics",
                        **classification_metrics(y[te], pred),
                        "ood_auroc": _baseline_ood(feats, y, test_size, seed, baseline_trees),
                        "trait_r2": float("nan"), "model_sha256": ""})
    update_leaderboard(results, leaderboard or out_dir)
    return pd.DataFrame(results, columns=LEADERBOARD_COLUMNS)


#: leaderboard methods that ``predict_store`` can deploy (heads on a backbone's embeddings)
DEPLOYABLE_METHODS = ("knn", "linear", "hybrid", "finetune")


def best_deployable(board: pd.DataFrame, model_sha256: str | None = None, model: str | None = None,
                    metric: str = "balanced_accuracy") -> tuple[pd.Series, str]:
    """The best row that ``predict`` can deploy, and a sentence saying which and why.

    Rows are this backbone's (by *model_sha256* or display name *model*; random-init controls
    excluded) with a deployable method; the sentence names the overall best row too when it is
    not deployable (the morphometric forest).
    """
    if board.empty:
        raise ValueError("the leaderboard is empty")
    ranked = board.sort_values(metric, ascending=False)
    mine = ranked[ranked["method"].str.match("|".join(DEPLOYABLE_METHODS))
                  & ~ranked["model"].astype(str).str.endswith("(random init)")]
    if model_sha256 is not None:
        ft = mine["method"] == "finetune"
        mine = mine[(mine["model_sha256"] == model_sha256) | (ft & mine["model"].isin(
            ranked.loc[ranked["model_sha256"] == model_sha256, "model"]))]
    if model is not None:
        mine = mine[mine["model"] == model]
    if mine.empty:
        raise ValueError("no deployable leaderboard row for this backbone: run `aqqua benchmark` with it first")
    best, top = mine.iloc[0], ranked.iloc[0]
    why = f"best deployable method on the leaderboard ({metric} {best[metric]:.3f})"
    if (top["model"], top["method"]) != (best["model"], best["method"]):
        why += (f"; {top['model']}/{top['method']} scores higher ({top[metric]:.3f}) but predict deploys "
                "only heads on the backbone's embeddings (+ morphometrics)")
    return best, why


def deploy_best(board: pd.DataFrame, board_dir: str | Path, backbone: str | Path, store: str | Path,
                classifier_path: str | Path, *, model_sha256: str | None = None, model: str | None = None,
                device: str = "cpu") -> tuple[Path, Path, str, pd.Series]:
    """Make the leaderboard's best deployable method usable by ``predict_store``.

    Trains that head (k-NN with the row's k, linear or hybrid) on *store*'s labels into
    *classifier_path*, or, for ``finetune``, points at the fine-tuned backbone and classifier
    the benchmark wrote under *board_dir*. Returns ``(backbone, classifier, why, row)``.
    """
    from aqqua_geo.downstream.classify import train_classifier

    best, why = best_deployable(board, model_sha256=model_sha256, model=model)
    method = str(best["method"])
    if method == "finetune":
        ft_dir = Path(board_dir) / f"finetune_{slug(str(best['model']))}"
        backbone, classifier = ft_dir / "backbone.pt", ft_dir / "classifier.joblib"
        if not classifier.is_file():
            raise FileNotFoundError(f"{classifier} missing: re-run the benchmark with fine-tuning")
        return backbone, classifier, why, best
    kind = "knn" if method.startswith("knn") else method
    k = int(method[3:]) if kind == "knn" and method[3:].isdigit() else 20
    train_classifier(backbone, store, classifier_path, kind=kind, k=k, device=device)
    return Path(backbone), Path(classifier_path), why, best


def _read_labels(path: str | Path, store) -> list[str | None]:
    """Labels per store row from a CSV/Parquet with ``object_id`` and ``label`` columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = {"object_id", "label"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)} (need object_id, label)")
    mapping = dict(zip(table["object_id"].astype(str), table["label"]))
    return [mapping.get(oid) if isinstance(mapping.get(oid), str) else None for oid in store.object_ids]
