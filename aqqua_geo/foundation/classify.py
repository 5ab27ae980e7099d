"""Species classification on frozen (or fine-tuned) embeddings.

Three heads, one saved-file format:

- :class:`KNNClassifier` — DINOv2's k-NN evaluation (``dinov2/eval/knn.py``): cosine
  similarity on L2-normalised features, softmax(sim / T) over the top-k neighbours (T = 0.07)
  summed as one-hot votes.
- :class:`LinearProbe` — multinomial logistic regression on frozen features (scikit-learn),
  stored as plain weights so that a torch-trained head (from :func:`finetune`) is the same
  object.
- :func:`finetune` — full fine-tuning of a backbone with a linear head (torch),
  class-balanced loss and layer-wise learning-rate decay.

Probabilities are calibrated with temperature scaling fitted on validation data
(Guo et al. 2017); :func:`expected_calibration_error` reports ECE before and after.
A trained head, its class list, calibration temperature, rare-class grouping, novelty scorer
and the embedding it expects are saved together as one joblib file
(:class:`ClassifierBundle`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BUNDLE_FORMAT = "aqqua-classifier"
BUNDLE_VERSION = 1


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of *x* scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def file_sha256(path: str | Path, n_bytes: int = 1 << 20) -> str:
    """Short fingerprint of a checkpoint: SHA-256 of its size and first MiB (fast, stable)."""
    path = Path(path)
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(n_bytes))
    return h.hexdigest()[:16]


def _check_features(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_objects, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf values")
    return x


# --------------------------------------------------------------------------------------------
# k-NN (DINOv2 protocol)
# --------------------------------------------------------------------------------------------
class KNNClassifier:
    """Temperature-weighted k-NN on cosine similarity (DINOv2 k-NN eval).

    ``predict_proba`` returns, per query, ``sum_j softmax(s_j / T) * onehot(y_j)`` over its k
    most similar training embeddings: rows sum to one. ``decision_function`` returns the log
    of those probabilities (finite floor), so calibration and energy scores can treat it as
    logits.
    """

    kind = "knn"

    def __init__(self, k: int = 20, temperature: float = 0.07, batch_size: int = 4096):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.k = int(k)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)

    def fit(self, x: np.ndarray, y: Sequence[str]) -> KNNClassifier:
        x = _check_features(x)
        y = np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
        self.classes_ = np.unique(y)
        self.train_features_ = l2_normalize(x)
        self.train_labels_ = np.searchsorted(self.classes_, y)
        return self

    def kneighbors(self, x: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities (descending) and indices of the *k* nearest training rows."""
        k = min(k or self.k, len(self.train_features_))
        q = l2_normalize(_check_features(x))
        sims, idx = [], []
        for start in range(0, len(q), self.batch_size):
            s = q[start : start + self.batch_size] @ self.train_features_.T
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            ps = np.take_along_axis(s, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            sims.append(np.take_along_axis(ps, order, axis=1))
            idx.append(np.take_along_axis(part, order, axis=1))
        return np.concatenate(sims), np.concatenate(idx)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        sims, idx = self.kneighbors(x)
        w = softmax(sims, self.temperature)  # (n, k)
        proba = np.zeros((len(sims), len(self.classes_)), dtype=np.float64)
        np.add.at(proba, (np.arange(len(sims))[:, None], self.train_labels_[idx]), w)
        return proba

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self.predict_proba(x), 1e-8))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]


# --------------------------------------------------------------------------------------------
# linear probe
# --------------------------------------------------------------------------------------------
class LinearProbe:
    """Multinomial logistic regression on frozen features (L2-normalised, then standardised).

    Stored as plain arrays (``mean_``, ``scale_``, ``coef_`` (n_classes, dim), ``intercept_``)
    so a torch-trained head (:meth:`from_weights`) behaves identically. Standardising matters
    for SSL features, whose useful variation can sit in a small part of each dimension's range;
    ``class_weight="balanced"`` counters the heavy class imbalance of plankton data.
    """

    kind = "linear"

    def __init__(self, C: float = 1.0, max_iter: int = 3000, class_weight: str | None = "balanced",
                 normalize: bool = True):
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.normalize = normalize

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = _check_features(x)
        x = l2_normalize(x) if self.normalize else x
        return (x - self.mean_) / self.scale_

    def fit(self, x: np.ndarray, y: Sequence[str]) -> LinearProbe:
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"a linear probe needs at least 2 classes, got {list(classes)}")
        x = _check_features(x)
        xn = l2_normalize(x) if self.normalize else x
        self.mean_ = xn.mean(axis=0)
        self.scale_ = np.maximum(xn.std(axis=0), 1e-6).astype(np.float32)
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)
        clf.fit(self._prep(x), y)
        self.classes_ = clf.classes_
        coef, intercept = clf.coef_, clf.intercept_
        if len(self.classes_) == 2:  # sklearn's binary head → symmetric two-logit form
            coef = np.vstack([-coef[0] / 2, coef[0] / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = intercept.astype(np.float32)
        return self

    @classmethod
    def from_weights(cls, coef: np.ndarray, intercept: np.ndarray, classes: Sequence[str],
                     mean: np.ndarray | None = None, scale: np.ndarray | None = None,
                     normalize: bool = False) -> LinearProbe:
        """A probe whose head was trained elsewhere (e.g. by :func:`finetune`).

        *mean*/*scale* standardise the (raw, unless *normalize*) features first, e.g. the
        running statistics of a BatchNorm in front of a torch linear head.
        """
        probe = cls(normalize=normalize)
        probe.coef_ = np.asarray(coef, dtype=np.float32)
        probe.intercept_ = np.asarray(intercept, dtype=np.float32)
        probe.classes_ = np.asarray(classes)
        dim = probe.coef_.shape[1]
        probe.mean_ = np.zeros(dim, np.float32) if mean is None else np.asarray(mean, np.float32)
        probe.scale_ = np.ones(dim, np.float32) if scale is None else np.asarray(scale, np.float32)
        if probe.coef_.shape[0] != len(probe.classes_):
            raise ValueError(f"head has {probe.coef_.shape[0]} outputs for {len(classes)} classes")
        return probe

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return self._prep(x) @ self.coef_.T + self.intercept_

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(x).argmax(axis=1)]


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
    novelty: Any = None  # aqqua_geo.foundation.novelty.NoveltyScorer
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

    def calibrate(self, x_val: np.ndarray, y_val: Sequence[str], n_bins: int = 15) -> dict[str, float]:
        """Fit the temperature on validation data; returns ECE/NLL before and after."""
        y_idx = self._label_index(y_val)
        logits = self.logits(x_val)
        before = softmax(logits)
        self.temperature = fit_temperature(logits, y_idx)
        after = softmax(logits, self.temperature)
        rows = np.arange(len(y_idx))
        report = {
            "temperature": self.temperature,
            "ece_before": expected_calibration_error(before, y_idx, n_bins),
            "ece_after": expected_calibration_error(after, y_idx, n_bins),
            "nll_before": float(-np.log(np.maximum(before[rows, y_idx], 1e-12)).mean()),
            "nll_after": float(-np.log(np.maximum(after[rows, y_idx], 1e-12)).mean()),
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
        """Write the bundle as one joblib file (atomic: temp file then rename)."""
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        joblib.dump({"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
                     "head": self.head, "temperature": self.temperature,
                     "embedding": self.embedding, "label_map": self.label_map,
                     "novelty": self.novelty, "metrics": self.metrics}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClassifierBundle:
        import joblib

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"classifier file not found: {path}")
        obj = joblib.load(path)
        if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path} is not an aqqua classifier file (format {BUNDLE_FORMAT!r})")
        return cls(head=obj["head"], temperature=obj["temperature"], embedding=obj["embedding"],
                   label_map=obj["label_map"], novelty=obj["novelty"], metrics=obj["metrics"])

    def summary(self) -> str:
        return json.dumps({"kind": self.kind, "classes": list(map(str, self.classes)),
                           "temperature": round(self.temperature, 4), **self.metrics}, default=str)


# --------------------------------------------------------------------------------------------
# training from a store: frozen heads and full fine-tuning
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


def _split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    return train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)


def _finish_bundle(head, backbone_path: str | Path, emb: np.ndarray, labels: np.ndarray, tr: np.ndarray,
                   va: np.ndarray, report: pd.DataFrame, novelty: str, extra: dict[str, Any]) -> ClassifierBundle:
    """Calibrate on validation, attach a novelty scorer thresholded on validation, add metrics."""
    from sklearn.metrics import balanced_accuracy_score

    from aqqua_geo.foundation.novelty import NoveltyScorer

    if novelty == "energy" and not isinstance(head, LinearProbe):
        raise ValueError("the energy novelty score needs a linear head (k-NN log-probabilities have constant energy)")
    bundle = ClassifierBundle(head=head, embedding={"backbone_sha256": file_sha256(backbone_path),
                                                    "embed_dim": int(emb.shape[1]), "pool": "cls", **extra})
    bundle.label_map = {r.label: (r.new_label if isinstance(r.new_label, str) else None) for r in report.itertuples()}
    calib = bundle.calibrate(emb[va], labels[va])
    scorer = NoveltyScorer(novelty).fit(emb[tr], labels[tr])
    scorer.set_threshold(emb[va], bundle.logits(emb[va]) if novelty == "energy" else None)
    bundle.novelty = scorer
    pred = bundle.classes[bundle.predict_proba(emb[va]).argmax(axis=1)]
    bundle.metrics.update({"val_top1": float((pred == labels[va]).mean()),
                           "val_balanced_accuracy": float(balanced_accuracy_score(labels[va], pred)),
                           "n_train": int(len(tr)), "n_val": int(len(va)), "calibration": calib})
    return bundle


def train_classifier(backbone_path: str | Path, store, out_path: str | Path, kind: str = "knn", *,
                     labels: Sequence[str | None] | None = None, k: int = 20, C: float = 1.0,
                     min_count: int = 10, rare: str = "group", val_fraction: float = 0.2,
                     novelty: str = "knn", seed: int = 0, device: str = "cpu",
                     max_tokens_per_batch: int = 4096) -> ClassifierBundle:
    """Fit a k-NN or linear-probe head on frozen embeddings of a store's labelled objects.

    Splits stratified and seeded into train/validation, calibrates on validation, saves the
    :class:`ClassifierBundle` to *out_path* and returns it.
    """
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.vit import load_backbone
    from aqqua_geo.store import AqquaStore

    if kind not in {"knn", "linear"}:
        raise ValueError(f"kind must be 'knn' or 'linear' (use finetune() for full fine-tuning), got {kind!r}")
    store = AqquaStore(store) if isinstance(store, (str, Path)) else store
    rows, y, report = labelled_subset(store, labels, min_count, rare)
    model = load_backbone(backbone_path, device=device)
    px = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)[rows]
    emb = embed_images(model, store.get_many(rows.tolist()), list(px),
                       max_tokens_per_batch=max_tokens_per_batch, device=device)
    tr, va = _split(y, val_fraction, seed)
    head = KNNClassifier(k=k) if kind == "knn" else LinearProbe(C=C)
    head.fit(emb[tr], y[tr])
    bundle = _finish_bundle(head, backbone_path, emb, y, tr, va, report, novelty,
                            {"max_tokens_per_batch": max_tokens_per_batch})
    bundle.metrics["rare_classes"] = report.to_dict("records")
    bundle.save(out_path)
    return bundle


def class_weights(counts: Sequence[int], scheme: str = "effective_number", beta: float = 0.999) -> np.ndarray:
    """Per-class loss weights, normalised to mean 1.

    ``effective_number`` (Cui et al. 2019): ``(1 − β) / (1 − β^n_c)``;
    ``inverse_frequency``: ``1 / n_c``; ``none``: ones.
    """
    n = np.asarray(counts, dtype=np.float64)
    if (n <= 0).any():
        raise ValueError(f"class counts must be positive, got {n.tolist()}")
    if scheme == "effective_number":
        w = (1.0 - beta) / (1.0 - np.power(beta, n))
    elif scheme == "inverse_frequency":
        w = 1.0 / n
    elif scheme == "none":
        w = np.ones_like(n)
    else:
        raise ValueError(f"unknown class weighting {scheme!r} (effective_number | inverse_frequency | none)")
    return w / w.mean()


def layer_decay_param_groups(model, head, base_lr: float, layer_decay: float,
                             weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise LR decay (BEiT/DINOv2 fine-tuning).

    Embeddings (patch/pos/cls/register/mask tokens) are layer 0, ``blocks.i`` layer i+1, the
    final norm and the head layer L+1; lr = base_lr · decay^(L+1−layer). Biases, norms and
    tokens get no weight decay.
    """
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}

    def layer_of(name: str) -> int:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith("norm"):
            return depth + 1
        return 0

    named = [(n, p, layer_of(n)) for n, p in model.named_parameters()]
    named += [(f"head.{n}", p, depth + 1) for n, p in head.named_parameters()]
    for name, param, layer in named:
        if not param.requires_grad:
            continue
        no_wd = param.ndim <= 1 or name.endswith("token") or name.endswith("tokens")
        key = (layer, no_wd)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[key] = {"params": [], "lr": base_lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_wd else weight_decay}
        groups[key]["params"].append(param)
    return list(groups.values())


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random dihedral transform: plankton have no canonical orientation (size is kept)."""
    image = np.rot90(image, k=int(rng.integers(4)))
    return np.ascontiguousarray(image[:, ::-1] if rng.random() < 0.5 else image)


def forward_images(model, images: Sequence[np.ndarray], pixel_sizes_um: Sequence[float], device) -> dict:
    """Differentiable ``model(packed)`` on uint8 images (same preprocessing as ``embed_images``)."""
    from aqqua_geo.foundation.embed import image_to_tensor
    from aqqua_geo.foundation.packing import pack_images

    cfg = model.cfg
    tensors = [image_to_tensor(im, model.in_chans, cfg["img_mean"], cfg["img_std"]) for im in images]
    packed = pack_images(tensors, [float(p) for p in pixel_sizes_um], model.patch_size,
                         model.max_tokens_per_image + model.num_prefix_tokens,
                         max_tokens_per_image=model.max_tokens_per_image,
                         n_prefix_tokens=model.num_prefix_tokens).to(device)
    return model(packed)


def finetune(backbone_path: str | Path, store, out_dir: str | Path, *,
             labels: Sequence[str | None] | None = None, epochs: int = 5, batch_size: int = 32,
             lr: float = 2e-4, layer_decay: float = 0.75, weight_decay: float = 0.05,
             loss_weighting: str = "effective_number", beta: float = 0.999, min_count: int = 10,
             rare: str = "group", val_fraction: float = 0.2, novelty: str = "knn", seed: int = 0,
             device: str = "cpu", max_tokens_per_batch: int = 4096,
             progress: bool = True) -> tuple[Path, Path]:
    """Fine-tune a backbone + linear head on a store's labelled objects.

    Class-balanced cross-entropy (*loss_weighting*), AdamW with layer-wise LR decay and a
    cosine schedule with one warm-up epoch, dihedral augmentation. Writes
    ``OUT/backbone.pt`` (the fine-tuned backbone, :func:`~aqqua_geo.foundation.vit.save_backbone`)
    and ``OUT/classifier.joblib`` (its head as a :class:`LinearProbe`, calibrated on the
    validation split, with a novelty scorer); returns both paths.
    """
    import torch
    from tqdm.auto import tqdm

    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.vit import load_backbone, save_backbone
    from aqqua_geo.store import AqquaStore

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    store = AqquaStore(store) if isinstance(store, (str, Path)) else store
    rows, y, report = labelled_subset(store, labels, min_count, rare)
    classes = np.unique(y)
    y_idx = np.searchsorted(classes, y)
    tr, va = _split(y, val_fraction, seed)
    images = store.get_many(rows.tolist())
    px = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)[rows]

    model = load_backbone(backbone_path, device=device).train()
    # BatchNorm without affine before the linear layer (MAE's linear-probe recipe): SSL CLS
    # features can vary across images in a small part of their range; it is folded into the
    # saved LinearProbe as mean/scale.
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(model.embed_dim, affine=False),
                               torch.nn.Linear(model.embed_dim, len(classes))).to(device)
    torch.nn.init.zeros_(head[1].weight)
    torch.nn.init.zeros_(head[1].bias)
    groups = layer_decay_param_groups(model, head, lr, layer_decay, weight_decay)
    opt = torch.optim.AdamW(groups, lr=lr)
    weights = class_weights(np.bincount(y_idx[tr], minlength=len(classes)), loss_weighting, beta)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
    steps_per_epoch = -(-len(tr) // batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup)))

    step, history = 0, []
    bar = tqdm(total=total, desc="finetune", unit="step", disable=not progress)
    for epoch in range(epochs):
        order = rng.permutation(tr)
        running = 0.0
        for b in range(steps_per_epoch):
            batch = order[b * batch_size : (b + 1) * batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples; one image is skipped this epoch
                step += 1
                bar.update(1)
                continue
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"] * lr_factor(step)
            out = forward_images(model, [_augment(images[i], rng) for i in batch], px[batch], device)
            loss = loss_fn(head(out["cls"]), torch.as_tensor(y_idx[batch], device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 3.0)
            opt.step()
            running += float(loss.detach()) * len(batch)
            step += 1
            bar.update(1)
        history.append({"epoch": epoch + 1, "train_loss": running / len(tr)})
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}")
    bar.close()

    out_dir = Path(out_dir)
    model.eval()
    head.eval()
    backbone_out = save_backbone(model, out_dir / "backbone.pt",
                                 extra={"finetune": {"source_backbone_sha256": file_sha256(backbone_path),
                                                     "classes": [str(c) for c in classes], "epochs": epochs}})
    emb = embed_images(model, images, list(px), max_tokens_per_batch=max_tokens_per_batch, device=device)
    bn, linear = head[0], head[1]
    probe = LinearProbe.from_weights(linear.weight.detach().cpu().numpy(), linear.bias.detach().cpu().numpy(),
                                     classes, mean=bn.running_mean.cpu().numpy(),
                                     scale=torch.sqrt(bn.running_var + bn.eps).cpu().numpy())
    bundle = _finish_bundle(probe, backbone_out, emb, y, tr, va, report, novelty,
                            {"max_tokens_per_batch": max_tokens_per_batch})
    bundle.metrics.update({"history": history, "loss_weighting": loss_weighting, "layer_decay": layer_decay,
                           "rare_classes": report.to_dict("records")})
    clf_out = bundle.save(out_dir / "classifier.joblib")
    return backbone_out, clf_out
