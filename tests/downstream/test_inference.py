"""Batch inference: Zarr embeddings + Parquet predictions, resumable after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from .conftest import make_uvp6_store, uvp6_files

CLASSES = ("Acantharea__1111", "Copepoda__6666", "detritus__8888", "bubble__5555")

TINY = {"arch": "vit_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
        "max_tokens_per_image": 64, "layerscale": None}  # no LayerScale: random features vary


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, bundled_data):
    import torch

    from aqqua_geo.foundation.backbone_io import save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    root = tmp_path_factory.mktemp("infer")
    torch.manual_seed(0)
    model_path = save_backbone(build_backbone(TINY), root / "backbone.pt")
    return model_path, make_uvp6_store(root, uvp6_files(bundled_data, dict.fromkeys(CLASSES, 6)))


def test_embed_store_writes_consolidated_zarr(tiny_setup, tmp_path):
    import zarr

    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.embed import embed_images, embed_store, read_embeddings
    from aqqua_geo.store import AqquaStore

    model_path, store_dir = tiny_setup
    path = embed_store(model_path, store_dir, tmp_path, chunk_size=5, progress=False)
    group = zarr.open_consolidated(path)
    emb = group["embedding"]
    assert emb.shape == (24, 32) and emb.dtype == np.float32 and emb.chunks == (5, 32)
    ids, vectors = read_embeddings(path)
    store = AqquaStore(store_dir)
    assert list(ids) == store.object_ids
    expected = embed_images(load_backbone(model_path), store.get_many(range(3)), [73.0] * 3)
    np.testing.assert_allclose(vectors[:3], expected, atol=1e-5)
    # a second run into the same folder with another model is refused, nothing is changed
    import torch

    from aqqua_geo.foundation.backbone_io import save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    other = save_backbone(build_backbone({**TINY, "depth": 1}), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="embeddings of another model"):
        embed_store(other, store_dir, tmp_path, chunk_size=5, progress=False)
    np.testing.assert_array_equal(read_embeddings(path)[1], vectors)
    del torch


def test_embed_store_resumes_after_kill(tiny_setup, tmp_path):
    """Kill a run after two chunks: the rerun skips them (same bytes) and finishes."""
    import zarr

    from aqqua_geo.foundation.embed import embed_store, read_embeddings

    model_path, store_dir = tiny_setup
    out = tmp_path / "out"
    # child: embed with a hook that makes every chunk slow so we can kill it mid-run
    code = f"""
import time, aqqua_geo.foundation.embed as e
orig = e.embed_images
def slow(*a, **k):
    r = orig(*a, **k); time.sleep(0.4); return r
e.embed_images = slow
from aqqua_geo.foundation.embed import embed_store
embed_store({str(model_path)!r}, {str(store_dir)!r}, {str(out)!r}, chunk_size=4, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    done_path = out / "embeddings.zarr"
    deadline = time.time() + 60
    n_done = 0
    while time.time() < deadline and proc.poll() is None:
        if done_path.exists():
            try:
                n_done = int(zarr.open_group(done_path, mode="r")["chunk_done"][:].sum())
            except Exception:  # arrays still being created
                n_done = 0
            if n_done >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    group = zarr.open_group(done_path, mode="r")
    done_before = group["chunk_done"][:]
    assert 2 <= done_before.sum() < len(done_before), "the kill should land mid-run"
    assert not group.attrs.get("complete")
    with pytest.raises(ValueError, match="incomplete"):
        read_embeddings(done_path)
    first = np.asarray(group["embedding"][:8])

    import aqqua_geo.foundation.embed as embed_mod

    calls = []
    orig = embed_mod.embed_images

    def counting(model, images, *a, **k):
        calls.append(len(images))
        return orig(model, images, *a, **k)

    embed_mod.embed_images = counting
    try:
        embed_store(model_path, store_dir, out, chunk_size=4, progress=False)
    finally:
        embed_mod.embed_images = orig
    assert sum(calls) == 4 * int((~done_before).sum())  # only the missing chunks were embedded
    ids, emb = read_embeddings(done_path)
    assert np.isfinite(emb).all() and len(ids) == 24
    np.testing.assert_array_equal(emb[:8], first)


def test_predict_store_columns_and_classifier(tiny_setup, tmp_path):
    from aqqua_geo.downstream.classify import train_classifier
    from aqqua_geo.downstream.inference import predict_store
    from aqqua_geo.store import AqquaStore

    model_path, store_dir = tiny_setup
    bundle = train_classifier(model_path, store_dir, tmp_path / "clf.joblib", kind="knn", k=5,
                              min_count=2, val_fraction=0.25)
    assert bundle.embedding["embed_dim"] == 32 and bundle.novelty.threshold_ is not None
    path = predict_store(model_path, store_dir, tmp_path / "out", tmp_path / "clf.joblib", top_k=3,
                         chunk_size=7, progress=False)
    df = pd.read_parquet(path)
    expected = ["object_id", "pred_label", "pred_prob", "top1_label", "top1_prob", "top2_label", "top2_prob",
                "top3_label", "top3_prob", "novelty_score", "is_novel", "area_um2", "esd_um", "major_um",
                "minor_um", "biovolume_um3", "carbon_ugC", "carbon_lo_ugC", "carbon_hi_ugC", "carbon_group",
                "carbon_relation", "carbon_flag"]
    assert list(df.columns) == expected
    assert list(df["object_id"]) == AqquaStore(store_dir).object_ids
    assert (df["pred_label"] == df["top1_label"]).all()
    assert (df["top1_prob"] >= df["top2_prob"]).all() and (df["top2_prob"] >= df["top3_prob"]).all()
    assert set(df["pred_label"]) <= {"Acantharea", "Copepoda", "detritus", "bubble"}
    assert (df["esd_um"] > 0).all()
    living = df["carbon_group"] != "not_living"  # bubbles carry no carbon
    assert (df.loc[living, "carbon_ugC"] > 0).all() and df.loc[~living, "carbon_ugC"].isna().all()
    assert df["is_novel"].dtype == bool
    # flagged objects: class-free carbon, flagged; the others keep their class's relation
    novel = df["is_novel"].to_numpy()
    assert (df.loc[novel, "carbon_flag"] == "novel").all() and (df.loc[novel, "carbon_group"] == "unknown").all()
    assert (df.loc[~novel, "carbon_flag"] != "novel").all()
    assert (df["carbon_lo_ugC"].dropna() <= df["carbon_ugC"].dropna()).all()
    assert bundle.metrics["novelty"]["method"] in {"knn", "mahalanobis", "rmd", "vim"}
    assert {"ece_before", "ece_fitted", "ece_after", "kept"} <= set(bundle.metrics["calibration"])
    assert not (tmp_path / "out" / "predictions.parts").exists()
    # classifier trained on another backbone is refused before anything is written
    from aqqua_geo.foundation.backbone_io import save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    other = save_backbone(build_backbone({**TINY, "depth": 1}), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="trained on embeddings of backbone"):
        predict_store(other, store_dir, tmp_path / "out2", tmp_path / "clf.joblib", progress=False)
    assert not (tmp_path / "out2").exists()


def test_novel_objects_get_nan_carbon_on_request(tiny_setup, tmp_path):
    from aqqua_geo.downstream.classify import train_classifier
    from aqqua_geo.downstream.inference import predict_store

    model_path, store_dir = tiny_setup
    bundle = train_classifier(model_path, store_dir, tmp_path / "clf.joblib", kind="knn", k=5,
                              min_count=2, val_fraction=0.25)
    bundle.novelty.threshold_ = -np.inf  # flag everything
    df = pd.read_parquet(predict_store(model_path, store_dir, tmp_path / "out", bundle, progress=False,
                                       novel_carbon="nan"))
    assert df["is_novel"].all() and df["carbon_ugC"].isna().all() and (df["carbon_flag"] == "novel").all()
    with pytest.raises(ValueError, match="novel_carbon"):
        predict_store(model_path, store_dir, tmp_path / "out2", bundle, progress=False, novel_carbon="zero")


def test_predict_without_classifier_has_null_labels(tiny_setup, tmp_path):
    from aqqua_geo.downstream.inference import predict_store

    model_path, store_dir = tiny_setup
    df = pd.read_parquet(predict_store(model_path, store_dir, tmp_path, progress=False))
    assert df["pred_label"].isna().all() and df["novelty_score"].isna().all()
    assert df["esd_um"].notna().all() and df["carbon_relation"].notna().all()


def test_cli_finetune_predict_roundtrip(tiny_setup, tmp_path):
    """`aqqua finetune --mode linear --novelty energy` then `aqqua predict --classifier`."""
    from typer.testing import CliRunner

    from aqqua_geo.cli import app

    model_path, store_dir = tiny_setup
    runner = CliRunner()
    res = runner.invoke(app, ["finetune", "--model", str(model_path), "--store", str(store_dir), "--out",
                              str(tmp_path / "clf"), "--mode", "linear", "--novelty", "energy", "--min-count", "2"])
    assert res.exit_code == 0, res.output
    assert "ECE" in res.output and "4 classes" in res.output
    res = runner.invoke(app, ["predict", "--model", str(model_path), "--store", str(store_dir), "--out",
                              str(tmp_path / "pred"), "--classifier", str(tmp_path / "clf" / "classifier.joblib"),
                              "--chunk-size", "10"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "pred" / "predictions.parquet")
    assert len(df) == 24 and df["novelty_score"].notna().all() and df["pred_label"].notna().all()
    res = runner.invoke(app, ["finetune", "--model", str(model_path), "--store", str(store_dir), "--out",
                              str(tmp_path / "clf2"), "--mode", "knn", "--novelty", "energy", "--min-count", "2"])
    assert res.exit_code != 0 and "needs a linear head" in str(res.exception)


def test_predict_resumes_from_written_parts(tiny_setup, tmp_path, monkeypatch):
    """A crash in chunk 3 keeps parts 1-2; the rerun computes only the rest and merges all."""
    import aqqua_geo.downstream.traits as traits_mod
    from aqqua_geo.downstream.inference import predict_store

    model_path, store_dir = tiny_setup
    real = traits_mod.measure_many
    calls: list[int] = []

    def failing(images, sizes, *a, **k):
        calls.append(len(images))
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(images, sizes, *a, **k)

    monkeypatch.setattr(traits_mod, "measure_many", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_store(model_path, store_dir, tmp_path, chunk_size=5, progress=False)
    parts = sorted(p.name for p in (tmp_path / "predictions.parts").glob("part-*.parquet"))
    assert parts == ["part-00000.parquet", "part-00001.parquet"]
    assert not (tmp_path / "predictions.parquet").exists()
    calls.clear()
    monkeypatch.setattr(traits_mod, "measure_many", lambda images, sizes, *a, **k: calls.append(len(images))
                        or real(images, sizes, *a, **k))
    df = pd.read_parquet(predict_store(model_path, store_dir, tmp_path, chunk_size=5, progress=False))
    assert calls == [5, 5, 4]  # chunks 3..5 of 24 objects
    assert len(df) == 24 and df["object_id"].is_unique
    # complete output + same inputs → nothing recomputed
    calls.clear()
    predict_store(model_path, store_dir, tmp_path, chunk_size=5, progress=False)
    assert calls == []


def test_hybrid_classifier_is_deployed_by_predict_store(tiny_setup, tmp_path):
    """A hybrid head (embedding ⊕ morphometrics) trains, saves without pickle and predicts:
    predict_store measures the same morphometric features for every chunk."""
    import pandas as pd

    from aqqua_geo.downstream.classify import HYBRID_INPUTS, ClassifierBundle, train_classifier
    from aqqua_geo.downstream.inference import predict_store

    model_path, store_dir = tiny_setup
    bundle = train_classifier(model_path, store_dir, tmp_path / "hybrid.joblib", kind="hybrid", min_count=3,
                              rare="exclude", novelty="knn")
    loaded = ClassifierBundle.load(tmp_path / "hybrid.joblib")
    assert loaded.embedding["inputs"] == HYBRID_INPUTS and loaded.kind == "linear"
    pred = pd.read_parquet(predict_store(model_path, store_dir, tmp_path / "out", tmp_path / "hybrid.joblib",
                                         progress=False))
    assert pred["pred_label"].notna().all() and set(pred["pred_label"]) <= set(map(str, bundle.classes))
