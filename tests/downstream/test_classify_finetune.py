"""Fine-tuning pieces: class-balanced weights, layer-wise LR decay, end-to-end on real vignettes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import make_uvp6_store, uvp6_files

TINY = {"arch": "vit_tiny", "embed_dim": 32, "depth": 3, "num_heads": 2, "patch_size": 8,
        "max_tokens_per_image": 64, "layerscale": None}


def test_class_weights_by_hand():
    from aqqua_geo.downstream.finetune import class_weights

    # inverse frequency 1/10, 1/40 → normalised to mean 1: 1.6, 0.4
    np.testing.assert_allclose(class_weights([10, 40], "inverse_frequency"), [1.6, 0.4])
    # effective number (1-β)/(1-β^n), β = 0.5: n=1 → 1, n=2 → 0.5/0.75 = 2/3; mean 5/6
    np.testing.assert_allclose(class_weights([1, 2], "effective_number", beta=0.5), [1.2, 0.8])
    np.testing.assert_allclose(class_weights([3, 5], "none"), [1, 1])
    with pytest.raises(ValueError, match="unknown class weighting"):
        class_weights([1], "focal")
    with pytest.raises(ValueError, match="positive"):
        class_weights([0, 3])


def test_layer_decay_groups():
    from aqqua_geo.downstream.finetune import layer_decay_param_groups
    from aqqua_geo.foundation.vit import build_backbone

    model = build_backbone(TINY)
    head = torch.nn.Linear(32, 4)
    groups = layer_decay_param_groups(model, head, base_lr=1.0, layer_decay=0.5, weight_decay=0.05)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(head.weight)] == 1.0 and lr_of[id(model.norm.weight)] == 1.0
    assert lr_of[id(model.blocks[2].mlp.fc1.weight)] == 0.5  # layer 3 of 3 → 0.5^(4-3)
    assert lr_of[id(model.blocks[0].mlp.fc1.weight)] == 0.125
    assert lr_of[id(model.patch_embed.proj.weight)] == 0.0625 and lr_of[id(model.cls_token)] == 0.0625
    assert wd_of[id(model.cls_token)] == 0.0 and wd_of[id(model.blocks[0].mlp.fc1.bias)] == 0.0
    assert wd_of[id(model.blocks[0].mlp.fc1.weight)] == 0.05
    n_params = sum(1 for p in model.parameters()) + 2
    assert sum(len(g["params"]) for g in groups) == n_params


def test_finetune_end_to_end_with_rare_class(tmp_path, bundled_data):
    from aqqua_geo.downstream.classify import ClassifierBundle
    from aqqua_geo.downstream.finetune import finetune
    from aqqua_geo.foundation.backbone_io import load_backbone, save_backbone
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.vit import build_backbone
    from aqqua_geo.store import AqquaStore

    torch.manual_seed(0)
    start = save_backbone(build_backbone(TINY), tmp_path / "start.pt")
    store_dir = make_uvp6_store(tmp_path, uvp6_files(bundled_data, {"Acantharea__1111": 12, "detritus__8888": 20,
                                                    "bubble__5555": 12, "fiber__9999": 3}))
    backbone, clf = finetune(start, store_dir, tmp_path / "ft", epochs=8, batch_size=8, min_count=5, patience=8,
                             rare="exclude", val_fraction=0.25, progress=False)
    bundle = ClassifierBundle.load(clf)
    assert list(bundle.classes) == ["Acantharea", "bubble", "detritus"]  # fiber (3 < 5) excluded
    assert bundle.label_map["fiber"] is None and bundle.kind == "linear"
    hist = bundle.metrics["history"]
    assert len(hist) == 8 and min(h["train_loss"] for h in hist[1:]) < hist[0]["train_loss"]
    assert {"val_loss", "val_top1"} <= set(hist[0])
    cal = bundle.metrics["calibration"]
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9 and cal["temperature"] > 0
    # the backbone changed, and the saved head reproduces the torch head's outputs
    before = load_backbone(start).state_dict()["blocks.0.mlp.fc1.weight"]
    assert not torch.equal(before, load_backbone(backbone).state_dict()["blocks.0.mlp.fc1.weight"])
    store = AqquaStore(store_dir)
    emb = embed_images(load_backbone(backbone), store.get_many(range(4)), [73.0] * 4)
    proba = bundle.predict_proba(emb)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert bundle.metrics["val_top1"] > 1 / 3  # better than chance on 3 classes


def test_batchnorm_head_folds_into_linear_probe():
    """finetune's BatchNorm(affine=False) + Linear head == the saved LinearProbe's logits."""
    from aqqua_geo.downstream.probes import LinearProbe

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(6, affine=False), torch.nn.Linear(6, 3))
    head.train()
    for _ in range(20):  # populate running statistics
        head(torch.randn(16, 6) * 3 + 1)
    head.eval()
    x = torch.randn(5, 6)
    bn, lin = head
    probe = LinearProbe.from_weights(lin.weight.detach().numpy(), lin.bias.detach().numpy(), ["a", "b", "c"],
                                     mean=bn.running_mean.numpy(), scale=torch.sqrt(bn.running_var + bn.eps).numpy())
    np.testing.assert_allclose(probe.decision_function(x.numpy()), head(x).detach().numpy(), rtol=1e-5, atol=1e-5)
