"""Batch inference over an AqQua store: embeddings (Zarr) and per-image predictions (Parquet).

Embeddings come from :func:`aqqua_geo.foundation.embed.embed_store` (``OUT/embeddings.zarr``).
``predict_store`` adds ``OUT/predictions.parquet`` keyed by ``object_id`` with the columns of
the interface contract (top-k classes, calibrated probabilities, novelty, traits, carbon).
An object flagged ``is_novel`` keeps its top-k classes (for the expert) but its carbon comes from
the class-free size relation of :func:`~aqqua_geo.downstream.carbon.estimate_carbon`
(``carbon_flag = "novel"``), or is NaN with ``novel_carbon="nan"``; :func:`aggregate
<aqqua_geo.mapping.samples.aggregate>` and the EcoTaxa export treat it apart.
Every chunk is first written as ``OUT/predictions.parts/part-NNNNN.parquet`` (atomically), so
prediction resumes chunk by chunk too; the parts are merged and removed at the end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from aqqua_geo._io import atomic_write_parquet, file_sha256
from aqqua_geo.downstream.classify import HYBRID_INPUTS, ClassifierBundle, hybrid_inputs
from aqqua_geo.foundation.embed import embed_store

PREDICTIONS = "predictions.parquet"
TRAIT_COLUMNS = ("area_um2", "esd_um", "major_um", "minor_um", "biovolume_um3")
CARBON_COLUMNS = ("carbon_ugC", "carbon_lo_ugC", "carbon_hi_ugC", "carbon_group", "carbon_relation", "carbon_flag")
PREDICTION_UNITS = {"area_um2": "um2", "esd_um": "um", "major_um": "um", "minor_um": "um",
                    "biovolume_um3": "um3", "carbon_ugC": "ugC", "carbon_lo_ugC": "ugC", "carbon_hi_ugC": "ugC",
                    "pred_prob": "1", "novelty_score": "1"}


def predictions_frame(object_ids: list[str], embeddings: np.ndarray | None, traits: pd.DataFrame,
                      bundle: ClassifierBundle | None, top_k: int = 3) -> pd.DataFrame:
    """One chunk of ``predictions.parquet`` (without carbon) from embeddings and traits."""
    n = len(object_ids)
    df = pd.DataFrame({"object_id": pd.Series(object_ids, dtype="string")})
    if bundle is not None:
        logits = bundle.logits(embeddings)
        proba = np.asarray(bundle.predict_proba(embeddings))
        k = min(top_k, proba.shape[1])
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        classes = np.asarray(bundle.classes, dtype=object)
        df["pred_label"] = pd.Series(classes[order[:, 0]], dtype="string")
        df["pred_prob"] = np.take_along_axis(proba, order[:, :1], axis=1)[:, 0]
        for j in range(top_k):
            lab = classes[order[:, j]] if j < k else np.full(n, None, dtype=object)
            prob = np.take_along_axis(proba, order[:, j : j + 1], axis=1)[:, 0] if j < k else np.full(n, np.nan)
            df[f"top{j + 1}_label"] = pd.Series(lab, dtype="string")
            df[f"top{j + 1}_prob"] = prob
        if bundle.novelty is not None:
            score = bundle.novelty.score(embeddings, logits)
            df["novelty_score"] = score
            df["is_novel"] = bundle.novelty.is_novel(score)
        else:
            df["novelty_score"], df["is_novel"] = np.nan, pd.Series([pd.NA] * n, dtype="boolean")
    else:
        df["pred_label"] = pd.Series([None] * n, dtype="string")
        df["pred_prob"] = np.nan
        for j in range(top_k):
            df[f"top{j + 1}_label"] = pd.Series([None] * n, dtype="string")
            df[f"top{j + 1}_prob"] = np.nan
        df["novelty_score"], df["is_novel"] = np.nan, pd.Series([pd.NA] * n, dtype="boolean")
    for col in TRAIT_COLUMNS:
        df[col] = traits[col].to_numpy(dtype=np.float64)
    return df


def _write_parquet_atomic(df: pd.DataFrame, path: Path, metadata: dict[str, str] | None = None) -> None:
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    atomic_write_parquet(path, table)


def _parquet_fingerprint(path: Path) -> str | None:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    value = meta.get(b"aqqua.fingerprint")
    return None if value is None else value.decode()


def predict_store(model_path: str | Path, store_dir: str | Path, out_dir: str | Path,
                  classifier: str | Path | ClassifierBundle | None = None, *, top_k: int = 3,
                  chunk_size: int = 256, max_tokens_per_batch: int = 4096, device: str = "cpu",
                  overwrite: bool = False, progress: bool = True, novel_carbon: str = "size",
                  colonies: str = "nan") -> Path:
    """Embeddings + ``OUT/predictions.parquet`` for every image of a store; resumable.

    Without a *classifier* the label, probability and novelty columns are null and carbon
    uses the size-only relation of :func:`~aqqua_geo.downstream.carbon.estimate_carbon`.
    *novel_carbon* (``"size"`` or ``"nan"``) is the carbon of objects flagged novel and
    *colonies* (``"nan"`` or ``"whole"``) that of colonies without a cell count (see
    :func:`~aqqua_geo.downstream.carbon.estimate_carbon`).
    """
    from tqdm.auto import tqdm

    from aqqua_geo.downstream.carbon import estimate_carbon
    from aqqua_geo.downstream.traits import measure_many
    from aqqua_geo.store import AqquaStore

    if novel_carbon not in ("size", "nan"):
        raise ValueError(f"novel_carbon must be 'size' or 'nan', got {novel_carbon!r}")
    if colonies not in ("nan", "whole"):
        raise ValueError(f"colonies must be 'nan' or 'whole', got {colonies!r}")
    out_dir = Path(out_dir)
    bundle = ClassifierBundle.load(classifier) if isinstance(classifier, (str, Path)) else classifier
    model_sha = file_sha256(model_path)
    if bundle is not None:
        expected = bundle.embedding.get("backbone_sha256")
        if expected and expected != model_sha:
            raise ValueError(f"classifier {classifier} was trained on embeddings of backbone {expected}, "
                             f"but --model {model_path} is {model_sha}")
    zarr_path = embed_store(model_path, store_dir, out_dir, chunk_size=chunk_size,
                            max_tokens_per_batch=max_tokens_per_batch, device=device,
                            overwrite=overwrite, progress=progress)
    import zarr

    store = AqquaStore(store_dir)
    ids = store.object_ids
    pixel_sizes = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)
    instruments = store.metadata["instrument"].tolist()  # IFCB ROIs: edge segmentation
    group = zarr.open_group(zarr_path, mode="r")
    fingerprint = {**group.attrs["aqqua_fingerprint"], "top_k": top_k, "novel_carbon": novel_carbon,
                   "colonies": colonies,
                   "classifier": None if bundle is None else json.loads(bundle.summary())}
    final = out_dir / PREDICTIONS
    parts = out_dir / "predictions.parts"
    stamp = parts / "fingerprint.json"
    fp_text = json.dumps(fingerprint, sort_keys=True, default=str)
    if overwrite:
        final.unlink(missing_ok=True)
        shutil.rmtree(parts, ignore_errors=True)
    elif final.is_file() and _parquet_fingerprint(final) == fp_text:
        return final  # already complete for this model, store and classifier
    if parts.exists() and (not stamp.is_file() or stamp.read_text() != fp_text):
        raise ValueError(f"{parts} holds partial predictions of another model/classifier; "
                         "use another --out or --overwrite")
    parts.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fp_text)
    n_chunks = -(-len(ids) // chunk_size)
    with tqdm(total=len(ids), desc="predict", unit="img", disable=not progress) as bar:
        for c in range(n_chunks):
            lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(ids))
            part = parts / f"part-{c:05d}.parquet"
            if part.is_file():
                bar.update(hi - lo)
                continue
            images = store.get_many(range(lo, hi))
            traits = measure_many(images, list(pixel_sizes[lo:hi]), instruments=instruments[lo:hi])
            features = np.asarray(group["embedding"][lo:hi])
            if bundle is not None and bundle.embedding.get("inputs") == HYBRID_INPUTS:
                features = hybrid_inputs(features, images, pixel_sizes[lo:hi])
            df = predictions_frame(ids[lo:hi], features, traits, bundle, top_k)
            carbon = estimate_carbon(pd.concat([df[["pred_label", "is_novel"]], traits], axis=1),
                                     label_col="pred_label", novel_col="is_novel", novel=novel_carbon,
                                     colonies=colonies)
            for col in CARBON_COLUMNS:
                df[col] = carbon[col].to_numpy()
            _write_parquet_atomic(df, part)
            bar.update(hi - lo)
    merged = pd.concat([pd.read_parquet(parts / f"part-{c:05d}.parquet") for c in range(n_chunks)],
                       ignore_index=True)
    _write_parquet_atomic(merged, final, {"aqqua.units": json.dumps(PREDICTION_UNITS),
                                          "aqqua.fingerprint": fp_text})
    shutil.rmtree(parts)
    return final
