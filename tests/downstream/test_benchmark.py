"""Benchmark + leaderboard on real UVP6 vignettes (tiny random backbone; mechanics, metrics by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TINY = {"arch": "vit_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
        "max_tokens_per_image": 64, "layerscale": None}  # no LayerScale: random features vary
from .conftest import make_uvp6_store, uvp6_files

CLASSES = ("Acantharea__1111", "Copepoda__6666", "detritus__8888", "bubble__5555", "darksphere__7777")


def make_store(root: Path, bundled_data, per_class: int = 12) -> Path:
    """Real UVP6 vignettes; darksphere files are pixel copies of Copepoda ones (dropped as duplicates)."""
    files = uvp6_files(bundled_data, dict.fromkeys(CLASSES, per_class))
    # the copepods that the darksphere__7777 files duplicate
    files["Copepoda__6666"] = [f.parent.parent / "Copepoda__6666" / f.name for f in files["darksphere__7777"]]
    return make_uvp6_store(root, files, raw_area=True)


def test_classification_metrics_by_hand():
    from aqqua_geo.downstream.benchmark import classification_metrics

    m = classification_metrics(["a", "a", "a", "b"], ["a", "a", "b", "b"])
    assert m["top1"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    # F1(a) = 2·1·(2/3)/(1+2/3) = 0.8 ; F1(b) = 2·0.5·1/1.5 = 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_benchmark_writes_leaderboard_with_baseline(tmp_path, bundled_data):
    import torch

    from aqqua_geo.downstream.benchmark import BASELINE_NAME, LEADERBOARD_COLUMNS, run_benchmark
    from aqqua_geo.foundation.backbone_io import save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    torch.manual_seed(0)
    model = save_backbone(build_backbone(TINY), tmp_path / "random_vit.pt")
    store = make_store(tmp_path, bundled_data)
    out = tmp_path / "bench"
    rows = run_benchmark([model], store, out, k=5, min_count=5, baseline_trees=30, progress=False,
                         finetune_epochs=2)
    assert list(rows.columns) == LEADERBOARD_COLUMNS
    # every row family on the same split: frozen heads, hybrid, the random-init control,
    # full fine-tuning, then the morphometric baseline
    assert list(zip(rows["model"], rows["method"])) == [
        ("random_vit", "knn5"), ("random_vit", "linear"), ("random_vit", "hybrid"),
        ("random_vit (random init)", "knn5"), ("random_vit (random init)", "linear"),
        ("random_vit", "finetune"), (BASELINE_NAME, "rf_morphometrics")]
    assert set(rows["n_test"]) == {15}
    # the control of a randomly initialised model with the same seed is that model
    assert rows.loc[0, "top1"] == rows.loc[3, "top1"]
    rows = rows.drop(index=[2, 3, 4, 5]).reset_index(drop=True)
    # darksphere copies were dropped by the store: 4 classes × 12, split 70/30 stratified
    assert set(rows["n_classes"]) == {4} and set(rows["n_test"]) == {15} and set(rows["n_train"]) == {33}
    assert rows[["top1", "balanced_accuracy", "macro_f1", "ood_auroc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert rows.loc[2, "top1"] > 0.5  # the morphometric forest separates these 4 classes well
    assert np.isfinite(rows.loc[0, "trait_r2"]) and rows.loc[0, "trait_r2"] <= 1
    assert rows.loc[0, "trait_r2"] == rows.loc[1, "trait_r2"] and np.isnan(rows.loc[2, "trait_r2"])
    for sub in ("random_vit_knn5", "random_vit_linear", "baseline_rf"):
        assert (out / sub / "confusion.png").stat().st_size > 1000
        report = pd.read_csv(out / sub / "classification_report.csv", index_col=0)
        assert {"Acantharea", "Copepoda", "bubble", "detritus"} <= set(report.index)
    ood = pd.read_csv(out / "ood_random_vit.csv")
    assert sorted(set(ood["held_out"])) == ["Acantharea", "Copepoda", "bubble", "detritus"]
    assert set(ood["method"]) == {"knn", "mahalanobis", "energy"}
    assert rows.loc[0, "ood_auroc"] == pytest.approx(ood.loc[ood["method"] == "knn", "auroc"].mean())
    assert "darksphere" not in set(pd.read_csv(out / "classes.csv")["label"])

    # same seed → same split and numbers; the leaderboard grows by one run
    again = run_benchmark([model], store, out, k=5, min_count=5, baseline_trees=30, progress=False,
                          random_init=False, hybrid=False)
    pd.testing.assert_frame_equal(again.drop(columns="date_utc"), rows.drop(columns="date_utc"))
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 10
    md = (out / "leaderboard.md").read_text()
    assert BASELINE_NAME in md and "random_vit" in md and md.count("\n| ") == 11  # header + 10 rows


def test_benchmark_bad_inputs(tmp_path, bundled_data):
    from aqqua_geo.downstream.benchmark import run_benchmark

    store = make_store(tmp_path, bundled_data, per_class=2)
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        run_benchmark([tmp_path / "nope.pt"], store, tmp_path / "o", min_count=50, progress=False)
    (tmp_path / "labels.csv").write_text("object_id,taxon\nx,y\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\]"):
        run_benchmark([tmp_path / "nope.pt"], store, tmp_path / "o", labels=tmp_path / "labels.csv", progress=False)
    assert not (tmp_path / "o" / "leaderboard.csv").exists()


def test_predict_uses_the_leaderboards_best_deployable_method(tmp_path, bundled_data):
    """`aqqua predict --leaderboard`: the best row predict can deploy for this backbone is
    trained and used, and the command says which and why (the forest is not deployable)."""
    import torch
    from typer.testing import CliRunner

    from aqqua_geo.cli import app
    from aqqua_geo.downstream.benchmark import best_deployable, run_benchmark
    from aqqua_geo.foundation.backbone_io import save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    torch.manual_seed(0)
    model = save_backbone(build_backbone(TINY), tmp_path / "vit.pt")
    store = make_store(tmp_path, bundled_data)
    rows = run_benchmark([model], store, tmp_path / "bench", k=5, min_count=5, baseline_trees=30, progress=False)
    best, why = best_deployable(rows, model_sha256=rows.loc[0, "model_sha256"])
    assert best["method"] in {"knn5", "linear", "hybrid"} and not str(best["model"]).endswith("(random init)")
    res = CliRunner().invoke(app, ["predict", "--model", str(model), "--store", str(store), "--out",
                                   str(tmp_path / "pred"), "--leaderboard", str(tmp_path / "bench")])
    assert res.exit_code == 0, res.output
    assert f"classifier: vit/{best['method']}" in res.output and "best deployable" in res.output
    pred = pd.read_parquet(tmp_path / "pred" / "predictions.parquet")
    assert pred["pred_label"].notna().all()
