"""Species classification: a saved classifier bundle, calibration and label curation.

Heads live in :mod:`aqqua_geo.downstream.probes` (k-NN, linear probe) and
:mod:`aqqua_geo.downstream.finetune` (full fine-tuning). A temperature is fitted on validation
data (Guo et al. 2017) and kept only if it lowers the validation ECE
(:func:`expected_calibration_error`; the report gives ECE before and after). A trained head, its class
list, calibration temperature, rare-class grouping, novelty scorer and the embedding it
expects are saved together as one file (:class:`ClassifierBundle`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aqqua_geo._io import file_sha256
from aqqua_geo.downstream.probes import KNNClassifier, LinearProbe, softmax

BUNDLE_FORMAT = "aqqua-classifier"
BUNDLE_VERSION = 1


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE: Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| over equal-width confidence bins.

    *y_true* holds class indices into the columns of *proba*.
    """
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)  # conf == 1 → last bin
    ece = 0.0
    for b in np.unique(bins):
        m = bins == b
        ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` on validation data."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true)
    rows = np.arange(len(y_true))

    def nll(log_t: float) -> float:
        return -log_softmax(logits / np.exp(log_t), axis=1)[rows, y_true].mean()

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


# --------------------------------------------------------------------------------------------
# taxonomy: rare classes
# --------------------------------------------------------------------------------------------
def group_rare_classes(labels: Sequence[str], min_count: int = 10, strategy: str = "group",
                       parents: dict[str, str] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Map classes with fewer than *min_count* examples to ``other_<parent>`` or drop them.

    *parents* maps an EcoTaxa category to its parent taxon (from
    ``object_annotation_hierarchy``); without one a rare class goes to ``other``. With
    ``strategy="exclude"`` rare labels become ``None`` (callers drop those rows). A grouped
    bucket that is itself still rare is dropped too. Returns the new labels and a per-class
    report (``label, n, action, new_label``).
    """
    if strategy not in {"group", "exclude"}:
        raise ValueError(f"strategy must be 'group' or 'exclude', got {strategy!r}")
    labels = np.asarray(labels, dtype=object)
    counts = Counter(labels)
    parents = parents or {}
    mapping: dict[str, str | None] = {}
    for lab, n in counts.items():
        if n >= min_count:
            mapping[lab] = lab
        elif strategy == "group":
            parent = parents.get(lab)
            mapping[lab] = f"other_{parent}" if parent else "other"
        else:
            mapping[lab] = None
    grouped = Counter()
    for lab, n in counts.items():
        if mapping[lab] is not None:
            grouped[mapping[lab]] += n
    for lab, new in list(mapping.items()):
        if new is not None and grouped[new] < min_count:
            mapping[lab] = None
    rows = []
    for lab, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        new = mapping[lab]
        action = "kept" if new == lab else ("excluded" if new is None else "grouped")
        rows.append({"label": lab, "n": n, "action": action, "new_label": new})
    new_labels = np.array([mapping[lab] for lab in labels], dtype=object)
    return new_labels, pd.DataFrame(rows, columns=["label", "n", "action", "new_label"])


def parents_from_hierarchy(categories: Sequence[str], hierarchies: Sequence[str]) -> dict[str, str]:
    """``{category: parent}`` from EcoTaxa ``object_annotation_hierarchy`` strings (``a>b>c``)."""
    out: dict[str, str] = {}
    for cat, hier in zip(categories, hierarchies, strict=True):
        if isinstance(hier, str) and ">" in hier:
            out[cat] = hier.split(">")[-2].strip()
    return out


# --------------------------------------------------------------------------------------------
# saved classifier
# --------------------------------------------------------------------------------------------
@dataclass
class ClassifierBundle:
    """Everything needed to classify new images: head + classes + calibration + embedding.

    ``embedding`` records which backbone the head expects (``backbone_sha256`` from
    :func:`file_sha256`, ``embed_dim``, ``max_tokens_per_batch``) so inference can refuse a
    mismatched model. ``label_map`` is the rare-class grouping applied before training.
    """

    head: KNNClassifier | LinearProbe
    temperature: float = 1.0
    embedding: dict[str, Any] = field(default_factory=dict)
    label_map: dict[str, str | None] = field(default_factory=dict)
    novelty: Any = None  # aqqua_geo.downstream.novelty.NoveltyScorer
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> np.ndarray:
        return self.head.classes_

    @property
    def kind(self) -> str:
        return self.head.kind

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated logits (linear head) or log-probabilities (k-NN)."""
        return self.head.decision_function(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, columns in :attr:`classes` order."""
        return softmax(self.logits(x), self.temperature)

    def calibrate(self, x_val: np.ndarray, y_val: Sequence[str], n_bins: int = 15) -> dict[str, Any]:
        """Fit a temperature on validation data and keep it only if it lowers validation ECE.

        Temperature scaling minimises the NLL, which is not the calibration error: on k-NN
        log-probabilities (vote shares floored at 1e-8) the NLL-optimal temperature can flatten
        every prediction and raise the ECE several-fold. The fitted temperature is therefore
        kept only when the ECE of ``softmax(logits / T)`` on the validation data is lower than
        without it; otherwise the bundle keeps T = 1. The report (also stored as
        ``metrics["calibration"]``) gives ECE and NLL without and with the fitted temperature,
        which one was kept, and ``table``: one row per candidate temperature.
        """
        y_idx = self._label_index(y_val)
        logits = self.logits(x_val)
        rows = np.arange(len(y_idx))
        fitted = fit_temperature(logits, y_idx)
        table = []
        for name, t in (("none", 1.0), ("fitted", fitted)):
            p = softmax(logits, t)
            table.append({"candidate": name, "temperature": float(t),
                          "ece": expected_calibration_error(p, y_idx, n_bins),
                          "nll": float(-np.log(np.maximum(p[rows, y_idx], 1e-12)).mean())})
        keep = table[1]["ece"] < table[0]["ece"]
        self.temperature = float(fitted) if keep else 1.0
        chosen = table[1] if keep else table[0]
        report = {
            "temperature": self.temperature,
            "temperature_fitted": float(fitted),
            "kept": bool(keep),
            "ece_before": table[0]["ece"],
            "ece_fitted": table[1]["ece"],
            "ece_after": chosen["ece"],
            "nll_before": table[0]["nll"],
            "nll_fitted": table[1]["nll"],
            "nll_after": chosen["nll"],
            "n_val": int(len(y_idx)),
            "n_bins": int(n_bins),
            "table": table,
        }
        self.metrics["calibration"] = report
        return report

    def _label_index(self, y: Sequence[str]) -> np.ndarray:
        y = np.asarray(y)
        unknown = sorted(set(y) - set(self.classes))
        if unknown:
            raise ValueError(f"labels not known to the classifier: {unknown[:5]}")
        return np.searchsorted(self.classes, y)

    def save(self, path: str | Path) -> Path:
        """Write the bundle as one pickle-free file (JSON + arrays in a zip, atomic), see
        :mod:`aqqua_geo.downstream.bundle_io`."""
        from aqqua_geo.downstream import bundle_io

        return bundle_io.save_bundle(path, {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
                                            "head": self.head, "temperature": self.temperature,
                                            "embedding": self.embedding, "label_map": self.label_map,
                                            "novelty": self.novelty, "metrics": self.metrics})

    @classmethod
    def load(cls, path: str | Path) -> ClassifierBundle:
        """Read a bundle; nothing in the file runs (pickles and unknown types are refused)."""
        from aqqua_geo.downstream import bundle_io

        path = Path(path)
        obj = bundle_io.load_bundle(path)
        if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path} is not an aqqua classifier file (format {BUNDLE_FORMAT!r})")
        return cls(head=obj["head"], temperature=obj["temperature"], embedding=obj["embedding"],
                   label_map=obj["label_map"], novelty=obj["novelty"], metrics=obj["metrics"])

    def summary(self) -> str:
        return json.dumps({"kind": self.kind, "classes": list(map(str, self.classes)),
                           "temperature": round(self.temperature, 4), **self.metrics}, default=str)


# --------------------------------------------------------------------------------------------
# training from a store: frozen heads
# --------------------------------------------------------------------------------------------
def labelled_subset(store, labels: Sequence[str | None] | None = None, min_count: int = 10,
                    rare: str = "group") -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Row indices and (rare-grouped) labels of the labelled objects of *store*.

    *labels* overrides ``store.metadata["label"]`` (EcoTaxa ``object_annotation_category``),
    one per row, ``None`` = unlabelled. Parents for ``other_<parent>`` come from the raw
    ``object_annotation_hierarchy`` column when the store has one. Returns
    ``(rows, labels, rare_class_report)``.
    """
    meta = store.metadata
    raw_labels = meta["label"].to_numpy(dtype=object) if labels is None else np.asarray(labels, dtype=object)
    if len(raw_labels) != len(meta):
        raise ValueError(f"{len(raw_labels)} labels for a store of {len(meta)} objects")
    have = np.array([isinstance(v, str) and v != "" for v in raw_labels])
    if not have.any():
        raise ValueError(f"store {store.path} has no labelled objects")
    parents: dict[str, str] = {}
    try:
        raw = store.raw()
        if "object_annotation_hierarchy" in raw and "object_annotation_category" in raw:
            parents = parents_from_hierarchy(raw["object_annotation_category"].tolist(),
                                             raw["object_annotation_hierarchy"].tolist())
    except (FileNotFoundError, KeyError, ValueError):
        pass
    rows = np.flatnonzero(have)
    grouped, report = group_rare_classes(raw_labels[rows], min_count=min_count, strategy=rare, parents=parents)
    keep = np.array([g is not None for g in grouped])
    return rows[keep], grouped[keep].astype(str), report


def split_train_val(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    return train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)


def _novelty_eval_subset(labels: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Row indices with at most *max_per_class* rows of each class (seeded), for the held-out-class table."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keep.append(rows if len(rows) <= max_per_class else rng.choice(rows, max_per_class, replace=False))
    return np.sort(np.concatenate(keep))


def finish_bundle(head, backbone_path: str | Path, emb: np.ndarray, labels: np.ndarray, tr: np.ndarray,
                   va: np.ndarray, report: pd.DataFrame, novelty: str, extra: dict[str, Any], *,
                   novelty_tpr: float = 0.95, novelty_max_per_class: int = 300, seed: int = 0) -> ClassifierBundle:
    """Calibrate on validation, attach a novelty scorer thresholded on validation, add metrics.

    *novelty* is a method of :data:`aqqua_geo.downstream.novelty.METHODS` or ``"auto"``: every
    embedding method is evaluated with each labelled class held out entirely
    (:func:`~aqqua_geo.downstream.novelty.holdout_class_evaluation`, on at most
    *novelty_max_per_class* images per class) and the one that flags the largest share of
    unseen classes at the operating point is used. The held-out-class table and the chosen
    method go to ``metrics["novelty"]``. The final scorer is fitted on the training split and
    its threshold accepts *novelty_tpr* of the validation images.
    """
    from sklearn.metrics import balanced_accuracy_score

    from aqqua_geo.downstream.novelty import (
        METHODS,
        NoveltyScorer,
        auto_candidates,
        candidate_params,
        holdout_class_evaluation,
        select_method,
        summarise,
    )

    if novelty != "auto" and novelty not in METHODS:
        raise ValueError(f"novelty must be 'auto' or one of {METHODS}, got {novelty!r}")
    if novelty == "energy" and not isinstance(head, LinearProbe):
        raise ValueError("the energy novelty score needs a linear head (k-NN log-probabilities have constant energy)")
    bundle = ClassifierBundle(head=head, embedding={"backbone_sha256": file_sha256(backbone_path),
                                                    "embed_dim": int(emb.shape[1]), "pool": "cls", **extra})
    bundle.label_map = {r.label: (r.new_label if isinstance(r.new_label, str) else None) for r in report.itertuples()}
    calib = bundle.calibrate(emb[va], labels[va])
    n_classes = len(np.unique(labels))
    novelty_metrics: dict[str, Any] = {"requested": novelty, "tpr": float(novelty_tpr)}
    method = "knn" if novelty == "auto" else novelty
    # hybrid inputs: the morphometric columns get their own (standardised) scorers among the candidates
    hybrid_dim = extra.get("backbone_dim") if extra.get("inputs") == HYBRID_INPUTS else None
    candidates = auto_candidates(hybrid_dim) if novelty == "auto" else [novelty]
    if n_classes >= 3:
        sub = _novelty_eval_subset(labels, novelty_max_per_class, seed)
        counts = pd.Series(labels[sub]).value_counts()
        if counts.min() >= 4:
            table = holdout_class_evaluation(emb[sub], labels[sub], methods=candidates, seed=seed, tpr=novelty_tpr)
            if novelty == "auto":
                method = select_method(table)
            novelty_metrics["holdout_classes"] = table.to_dict("records")
            novelty_metrics["summary"] = summarise(table).reset_index().to_dict("records")
    novelty_metrics["method"] = method
    scorer = NoveltyScorer(tpr=novelty_tpr, **candidate_params(candidates, method)).fit(emb[tr], labels[tr])
    scorer.set_threshold(emb[va], bundle.logits(emb[va]) if method == "energy" else None)
    bundle.novelty = scorer
    pred = bundle.classes[bundle.predict_proba(emb[va]).argmax(axis=1)]
    bundle.metrics.update({"val_top1": float((pred == labels[va]).mean()),
                           "val_balanced_accuracy": float(balanced_accuracy_score(labels[va], pred)),
                           "n_train": int(len(tr)), "n_val": int(len(va)), "calibration": calib,
                           "novelty": novelty_metrics})
    return bundle


#: ``ClassifierBundle.embedding["inputs"]`` of a hybrid head: embedding ⊕ morphometric features
HYBRID_INPUTS = "embedding+morphometrics"


def hybrid_inputs(embeddings: np.ndarray, images: Sequence[np.ndarray], pixel_sizes_um: Sequence[float],
                  features: np.ndarray | None = None) -> np.ndarray:
    """Embedding ⊕ the morphometric features of :mod:`~aqqua_geo.downstream.baseline` (EcoTaxa's
    practice: deep features plus ZooProcess-style measurements); NaN features (no object) → 0."""
    from aqqua_geo.downstream.baseline import MorphometricRandomForest

    if features is None:
        features = MorphometricRandomForest().features(list(images), list(pixel_sizes_um))
    return np.hstack([np.asarray(embeddings, np.float32), np.nan_to_num(np.asarray(features, np.float32))])


def train_classifier(backbone_path: str | Path, store, out_path: str | Path, kind: str = "knn", *,
                     labels: Sequence[str | None] | None = None, k: int = 20, C: float = 1.0,
                     min_count: int = 10, rare: str = "group", val_fraction: float = 0.2,
                     novelty: str = "auto", seed: int = 0, device: str = "cpu",
                     max_tokens_per_batch: int = 4096) -> ClassifierBundle:
    """Fit a k-NN, linear-probe or hybrid head on frozen embeddings of a store's labelled objects.

    ``hybrid``: a standardised logistic regression on :func:`hybrid_inputs` (embedding ⊕
    morphometrics); ``predict_store`` then measures the same features. Splits stratified and
    seeded into train/validation, calibrates on validation, saves the
    :class:`ClassifierBundle` to *out_path* and returns it.
    """
    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.store import AqquaStore

    if kind not in {"knn", "linear", "hybrid"}:
        raise ValueError(f"kind must be 'knn', 'linear' or 'hybrid' (use finetune() for full fine-tuning), "
                         f"got {kind!r}")
    store = AqquaStore(store) if isinstance(store, (str, Path)) else store
    rows, y, report = labelled_subset(store, labels, min_count, rare)
    model = load_backbone(backbone_path, device=device)
    px = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)[rows]
    images = store.get_many(rows.tolist())
    emb = embed_images(model, images, list(px), max_tokens_per_batch=max_tokens_per_batch, device=device)
    extra: dict[str, Any] = {"max_tokens_per_batch": max_tokens_per_batch}
    if kind == "hybrid":
        emb = hybrid_inputs(emb, images, px)
        extra.update(inputs=HYBRID_INPUTS, backbone_dim=int(model.embed_dim))
    tr, va = split_train_val(y, val_fraction, seed)
    head = {"knn": KNNClassifier(k=k), "linear": LinearProbe(C=C),
            "hybrid": LinearProbe(C=0.5, normalize=False)}[kind]
    head.fit(emb[tr], y[tr])
    bundle = finish_bundle(head, backbone_path, emb, y, tr, va, report, novelty, extra, seed=seed)
    bundle.metrics["rare_classes"] = report.to_dict("records")
    bundle.save(out_path)
    return bundle
