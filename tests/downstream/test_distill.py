"""Distillation (loss terms, student training) and ONNX export checked against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import make_uvp6_store, uvp6_files

CLASSES = ("Acantharea__1111", "Copepoda__6666", "detritus__8888")

TEACHER = {"arch": "vit_tiny", "embed_dim": 48, "depth": 2, "num_heads": 2, "patch_size": 8,
           "max_tokens_per_image": 64, "layerscale": None}
STUDENT = {"arch": "vit_tiny", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8,
           "max_tokens_per_image": 64, "layerscale": None}


def test_distillation_loss_terms_by_hand():
    from aqqua_geo.downstream.distill import distillation_loss

    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    terms = distillation_loss(s, t)
    assert float(terms["cosine"]) == pytest.approx(1.0)  # orthogonal
    # smooth-L1 (β=1) per element: |1-0| → 0.5, |0-2| → 1.5; mean = 1.0
    assert float(terms["smooth_l1"]) == pytest.approx(1.0)
    assert float(terms["kl"]) == 0.0 and float(terms["loss"]) == pytest.approx(2.0)
    z = torch.tensor([[2.0, 0.0]])
    same = distillation_loss(t, t, z, z, kd_temperature=2.0)
    assert float(same["loss"]) == pytest.approx(0.0, abs=1e-6)
    # KL(p_t || p_s)·τ² with p_t = softmax([1,0]), p_s = softmax([0,0]) at τ = 2
    kl = distillation_loss(t, t, torch.zeros(1, 2), z, kd_temperature=2.0)["kl"]
    pt = np.exp([1, 0]) / np.exp([1, 0]).sum()
    assert float(kl) == pytest.approx(4 * (pt * np.log(pt / 0.5)).sum(), rel=1e-5)


def test_distill_student_learns_teacher_and_exports(tmp_path, bundled_data):
    from aqqua_geo.downstream.classify import ClassifierBundle
    from aqqua_geo.downstream.distill import distill, export_onnx
    from aqqua_geo.downstream.probes import LinearProbe
    from aqqua_geo.foundation.backbone_io import load_backbone, save_backbone
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.vit import build_backbone
    from aqqua_geo.imaging import model_input
    from aqqua_geo.store import AqquaStore

    torch.manual_seed(0)
    teacher_path = save_backbone(build_backbone(TEACHER), tmp_path / "teacher.pt")
    store_dir = make_uvp6_store(tmp_path, uvp6_files(bundled_data, dict.fromkeys(CLASSES, 5)))
    store = AqquaStore(store_dir)
    images = store.get_many(range(len(store)))
    t_emb = embed_images(load_backbone(teacher_path), images, [73.0] * len(images))
    labels = store.metadata["label"].to_numpy()
    probe = LinearProbe(C=1e4).fit(t_emb, labels)  # sharp logits: a visible KL term
    from aqqua_geo._io import file_sha256

    ClassifierBundle(head=probe, embedding={"backbone_sha256": file_sha256(teacher_path)}).save(tmp_path / "c.joblib")

    student_path = distill(teacher_path, store_dir, tmp_path / "d", student_cfg=STUDENT,
                           classifier=tmp_path / "c.joblib", epochs=6, batch_size=8, lr=3e-3, progress=False)
    payload = torch.load(student_path, weights_only=True)
    hist = payload["distill"]["history"]
    assert len(hist) == 6 and hist[-1]["loss"] < hist[0]["loss"]
    assert hist[0]["kl"] > 1e-4 and payload["distill"]["with_classifier"]
    student = load_backbone(student_path)
    assert student.embed_dim == 16

    # ONNX: fixed-shape wrapper equals torch and embed_images on a real vignette
    h, w = images[0].shape
    res = export_onnx(student_path, tmp_path / "student.onnx", height=h, width=w, pixel_size_um=73.0)
    assert res["ok"] and res["max_abs_diff"] <= 1e-4
    import onnxruntime as ort

    x = model_input(images[0], 1, student.cfg["img_mean"], student.cfg["img_std"])[None].numpy()
    onnx_out = ort.InferenceSession(res["path"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(onnx_out, embed_images(student, images[:1], [73.0]), atol=1e-4)


def test_distill_rejects_knn_classifier(tmp_path, bundled_data):
    from aqqua_geo.downstream.classify import ClassifierBundle
    from aqqua_geo.downstream.distill import distill
    from aqqua_geo.downstream.probes import KNNClassifier
    from aqqua_geo.foundation.backbone_io import save_backbone
    from aqqua_geo.foundation.vit import build_backbone

    teacher_path = save_backbone(build_backbone(TEACHER), tmp_path / "teacher.pt")
    knn = KNNClassifier().fit(np.eye(3, 48), ["a", "b", "c"])
    ClassifierBundle(head=knn).save(tmp_path / "knn.joblib")
    with pytest.raises(ValueError, match="needs a linear classifier"):
        distill(teacher_path, make_uvp6_store(tmp_path, uvp6_files(bundled_data, dict.fromkeys(CLASSES, 1))), tmp_path / "d",
                classifier=tmp_path / "knn.joblib", progress=False)
    assert not (tmp_path / "d" / "student.pt").exists()
