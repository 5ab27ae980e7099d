"""Batch inference over an AqQua store: embeddings (Zarr) and per-image predictions (Parquet).

``embed_store`` writes ``OUT/embeddings.zarr`` (Zarr v3, consolidated metadata):

- ``embedding`` (N, D) float32, chunked by object (``chunk_size`` objects × D per chunk),
- ``object_id`` (N,) strings, in store row order,
- ``chunk_done`` (n_chunks,) bool, one Zarr chunk per embedding chunk, set after that chunk
  is written: a killed run resumes at the first chunk not marked done.

The group attribute ``aqqua_fingerprint`` (backbone hash, store ids hash, chunk size,
dimension) guards resumption: re-running into an output of another model or store is refused
unless ``overwrite=True``.

``predict_store`` adds ``OUT/predictions.parquet`` keyed by ``object_id`` with the columns of
the interface contract (top-k classes, calibrated probabilities, novelty, traits, carbon).
Every chunk is first written as ``OUT/predictions.parts/part-NNNNN.parquet`` (atomically), so
prediction resumes chunk by chunk too; the parts are merged and removed at the end.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aqqua_geo.foundation.classify import ClassifierBundle, file_sha256

EMBEDDINGS = "embeddings.zarr"
PREDICTIONS = "predictions.parquet"
TRAIT_COLUMNS = ("area_um2", "esd_um", "major_um", "minor_um", "biovolume_um3")
CARBON_COLUMNS = ("carbon_ugC", "carbon_group", "carbon_relation")
PREDICTION_UNITS = {"area_um2": "um2", "esd_um": "um", "major_um": "um", "minor_um": "um",
                    "biovolume_um3": "um3", "carbon_ugC": "ugC", "pred_prob": "1", "novelty_score": "1"}


def _ids_digest(object_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(object_ids).encode()).hexdigest()[:16]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled)


def _open_or_create_embeddings(path: Path, fingerprint: dict[str, Any], object_ids: list[str],
                               dim: int, chunk_size: int, overwrite: bool):
    import zarr

    if path.exists() and overwrite:
        shutil.rmtree(path)
    if path.exists():
        group = zarr.open_group(path, mode="r+")
        found = group.attrs.get("aqqua_fingerprint")
        if found is None:  # killed while creating the arrays (the fingerprint is written last)
            shutil.rmtree(path)
            return _open_or_create_embeddings(path, fingerprint, object_ids, dim, chunk_size, overwrite)
        if found != fingerprint:
            raise ValueError(
                f"{path} holds embeddings of another model/store/chunking ({found}); "
                "use another --out or overwrite=True (--overwrite)"
            )
        return group
    n = len(object_ids)
    n_chunks = -(-n // chunk_size)
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("embedding", shape=(n, dim), chunks=(chunk_size, dim), dtype="float32",
                       fill_value=np.nan)
    ids = group.create_array("object_id", shape=(n,), chunks=(chunk_size,), dtype=str)
    ids[:] = np.asarray(object_ids, dtype=str)
    group.create_array("chunk_done", shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False)
    group.attrs["aqqua_fingerprint"] = fingerprint
    return group


def embed_store(model_path: str | Path, store_dir: str | Path, out_dir: str | Path, *,
                chunk_size: int = 256, max_tokens_per_batch: int = 4096, device: str = "cpu",
                overwrite: bool = False, progress: bool = True) -> Path:
    """Embed every image of a store into ``OUT/embeddings.zarr``; resumable; returns its path.

    Images are fed to the backbone through :func:`~aqqua_geo.foundation.embed.embed_images`,
    which packs native-resolution images into rows of at most *max_tokens_per_batch* tokens.
    """
    import torch
    import zarr

    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.vit import load_backbone
    from aqqua_geo.store import AqquaStore

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    store = AqquaStore(store_dir)
    if len(store) == 0:
        raise ValueError(f"store {store_dir} holds no objects to embed")
    model = load_backbone(model_path, device=device)
    ids = store.object_ids
    pixel_sizes = store.metadata["pixel_size_um"].to_numpy(dtype=np.float64)
    fingerprint = {"backbone_sha256": file_sha256(model_path), "object_ids_sha256": _ids_digest(ids),
                   "n_objects": len(ids), "chunk_size": chunk_size, "embed_dim": model.embed_dim}
    out = Path(out_dir) / EMBEDDINGS
    out.parent.mkdir(parents=True, exist_ok=True)
    group = _open_or_create_embeddings(out, fingerprint, ids, model.embed_dim, chunk_size, overwrite)
    emb, done = group["embedding"], group["chunk_done"]
    todo = np.flatnonzero(~done[:])
    with _progress(len(ids), "embed", progress) as bar, torch.inference_mode():
        bar.update(len(ids) - sum(min(chunk_size, len(ids) - c * chunk_size) for c in todo))
        for c in todo:
            lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(ids))
            images = store.get_many(range(lo, hi))
            emb[lo:hi] = embed_images(model, images, list(pixel_sizes[lo:hi]),
                                      max_tokens_per_batch=max_tokens_per_batch, device=device)
            done[c] = True  # only after the chunk's data is on disk
            bar.update(hi - lo)
    group.attrs["complete"] = True
    with warnings.catch_warnings():  # consolidated metadata is a zarr-python v3 extension: fine here
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(out)
    return out


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(object_ids, embeddings)`` of a complete ``embeddings.zarr``."""
    import zarr

    group = zarr.open_group(path, mode="r")
    if not group.attrs.get("complete"):
        raise ValueError(f"{path} is incomplete: re-run `aqqua embed` to finish it")
    return np.asarray(group["object_id"][:]), np.asarray(group["embedding"][:])


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
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _parquet_fingerprint(path: Path) -> str | None:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    value = meta.get(b"aqqua.fingerprint")
    return None if value is None else value.decode()


def predict_store(model_path: str | Path, store_dir: str | Path, out_dir: str | Path,
                  classifier: str | Path | ClassifierBundle | None = None, *, top_k: int = 3,
                  chunk_size: int = 256, max_tokens_per_batch: int = 4096, device: str = "cpu",
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Embeddings + ``OUT/predictions.parquet`` for every image of a store; resumable.

    Without a *classifier* the label, probability and novelty columns are null and carbon
    uses the size-only relation of :func:`~aqqua_geo.foundation.carbon.estimate_carbon`.
    """
    from aqqua_geo.foundation.carbon import estimate_carbon
    from aqqua_geo.foundation.traits import measure_many
    from aqqua_geo.store import AqquaStore

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
    group = zarr.open_group(zarr_path, mode="r")
    fingerprint = {**group.attrs["aqqua_fingerprint"], "top_k": top_k,
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
    with _progress(len(ids), "predict", progress) as bar:
        for c in range(n_chunks):
            lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(ids))
            part = parts / f"part-{c:05d}.parquet"
            if part.is_file():
                bar.update(hi - lo)
                continue
            images = store.get_many(range(lo, hi))
            traits = measure_many(images, list(pixel_sizes[lo:hi]))
            df = predictions_frame(ids[lo:hi], np.asarray(group["embedding"][lo:hi]), traits, bundle, top_k)
            carbon = estimate_carbon(pd.concat([df[["pred_label"]], traits], axis=1), label_col="pred_label")
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
