"""DINOv2 loss terms against small hand-computed examples, and the SSL meta-architecture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aqqua_geo.foundation.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, SoftmaxCentering, sinkhorn_knopp
from aqqua_geo.foundation.packing import pack_images
from aqqua_geo.foundation.ssl_meta_arch import SSLMetaArch


def _ce(teacher: list[float], student: list[float], temp: float = 0.1) -> float:
    """−Σ t log softmax(s / temp), in plain Python."""
    z = [s / temp for s in student]
    log_norm = math.log(sum(math.exp(v) for v in z))
    return -sum(t * (v - log_norm) for t, v in zip(teacher, z))


S = [[0.1, -0.2, 0.3], [0.0, 0.5, -0.5]]
T = [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]
S2 = [[-0.3, 0.2, 0.0], [0.4, 0.4, -0.1]]
T2 = [[1.0, 0.0, 0.0], [0.1, 0.1, 0.8]]


def test_dino_loss_by_hand():
    loss = DINOLoss(student_temp=0.1)
    one = loss([torch.tensor(S)], [torch.tensor(T)])
    expect = (_ce(T[0], S[0]) + _ce(T[1], S[1])) / 2
    assert float(one) == pytest.approx(expect, rel=1e-6)
    # two student crops x two teacher crops, cross pairs only
    cross = loss([torch.tensor(S), torch.tensor(S2)], [torch.tensor(T), torch.tensor(T2)], pairs=[(0, 1), (1, 0)])
    expect = sum(_ce(T2[b], S[b]) + _ce(T[b], S2[b]) for b in range(2)) / 2
    assert float(cross) == pytest.approx(expect, rel=1e-6)


def test_ibot_loss_weights_each_image_by_its_masked_count():
    # tokens 0, 1 belong to image 0; token 2 to image 1; image 2 has no masked patch
    s = [S[0], S[1], S2[0]]
    t = [T[0], T[1], T2[0]]
    loss = IBOTPatchLoss(0.1)(torch.tensor(s), torch.tensor(t), torch.tensor([0, 0, 1]), n_images=3)
    expect = ((_ce(t[0], s[0]) + _ce(t[1], s[1])) / 2 + _ce(t[2], s[2])) / 3
    assert float(loss) == pytest.approx(expect, rel=1e-6)
    no_tokens = torch.zeros(0, 3, requires_grad=True)
    empty = IBOTPatchLoss(0.1)(no_tokens, torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 3)
    assert empty.requires_grad and float(empty.detach()) == 0.0


def test_koleo_on_known_points():
    # unit circle at 0°, 60°, 180° (given unnormalised): NN distances 1, 1, 2·sin(60°)
    pts = torch.tensor([[3.0, 0.0], [0.5 * 2, math.sqrt(3) / 2 * 2], [-0.5, 0.0]])
    loss = KoLeoLoss()(pts)
    expect = -(math.log(1.0) + math.log(1.0) + math.log(math.sqrt(3))) / 3
    assert float(loss) == pytest.approx(expect, abs=1e-6)


def test_koleo_is_finite_for_degenerate_batches():
    x = torch.ones(1, 4, requires_grad=True)
    assert float(KoLeoLoss()(x).detach()) == 0.0  # no neighbour (dinov2 #314 gives inf)
    dup = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    loss = KoLeoLoss()(dup)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and torch.isfinite(dup.grad).all()


def test_sinkhorn_knopp_matches_numpy_and_balances():
    logits = np.array([[0.9, 0.1, -0.3, 0.0], [0.8, 0.2, 0.1, -0.5], [0.7, -0.1, 0.3, 0.2]])  # B=3, K=4
    temp = 0.5
    q = np.exp(logits / temp).T  # (K, B)
    q /= q.sum()
    for _ in range(3):
        q /= q.sum(axis=1, keepdims=True) * 4
        q /= q.sum(axis=0, keepdims=True) * 3
    expect = (q * 3).T
    got = sinkhorn_knopp(torch.tensor(logits, dtype=torch.float32), temp, n_iterations=3).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)  # every sample a distribution
    many = sinkhorn_knopp(torch.tensor(logits, dtype=torch.float32), temp, n_iterations=200).numpy()
    np.testing.assert_allclose(many.sum(axis=0), 3 / 4, rtol=1e-4)  # equipartition over prototypes
    # the dominant prototype 0 is shared out: far less than softmax's share
    softmax = np.exp(logits / temp) / np.exp(logits / temp).sum(1, keepdims=True)
    assert got[:, 0].sum() < softmax[:, 0].sum()


def test_softmax_centering_by_hand():
    c = SoftmaxCentering(out_dim=2, momentum=0.9)
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    p = c(logits, teacher_temp=0.5)
    assert p[0].tolist() == pytest.approx([math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)])
    c.update(logits)  # centre = 0.1 · mean = (0.05, 0)
    assert c.center.tolist() == [pytest.approx([0.05, 0.0])]
    p = c(logits, teacher_temp=0.5)
    assert p[1].tolist() == pytest.approx([math.exp(-0.1) / (math.exp(-0.1) + 1), 1 / (math.exp(-0.1) + 1)])


# -- meta-architecture --------------------------------------------------------------------

HEAD = {"head_n_prototypes": 16, "head_bottleneck_dim": 8, "head_hidden_dim": 16, "head_nlayers": 2}


def _cfg(centering="sinkhorn_knopp", **over):
    cfg = {
        "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4, "max_tokens_per_image": 16,
                  "pos_embed": "learned"},
        "dino": {**HEAD, "loss_weight": 1.0, "koleo_loss_weight": 0.1},
        "ibot": {**HEAD, "loss_weight": 1.0, "separate_head": True},
        "train": {"centering": centering},
    }
    for block, values in over.items():
        cfg[block].update(values)
    return cfg


def _batch(b=3, n_g=2, n_l=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    glob_imgs = [torch.randn(1, 12, 8 + 4 * (i % 2), generator=g) for i in range(n_g * b)]
    glob = pack_images(glob_imgs, [1.0] * n_g * b, 4, 40)
    loc = pack_images([torch.randn(1, 8, 8, generator=g) for _ in range(n_l * b)], [1.0] * n_l * b, 4, 40)
    masks = torch.rand(glob.n_tokens, generator=g) < 0.4
    return {"global": glob, "local": loc, "n_global_crops": n_g, "n_local_crops": n_l, "masks": masks, "batch_size": b}


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "centering"])
def test_forward_backward_trains_student_only(centering):
    torch.manual_seed(0)
    arch = SSLMetaArch(_cfg(centering)).train()
    out = arch.forward_backward(_batch(), teacher_temp=0.04)
    parts = ["dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"]
    assert all(math.isfinite(float(out[k])) and float(out[k]) > 0 for k in parts)
    assert float(out["loss"]) == pytest.approx(sum(float(out[k]) for k in parts), rel=1e-6)
    assert all(p.grad is None for p in arch.teacher.parameters())
    grads = {n: p.grad for n, p in arch.student.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    if centering == "centering":
        assert arch.dino_center.center.abs().sum() > 0


def test_dino_bookkeeping_matches_dinov2():
    """DINO-only: global (i ≠ j) and local × global terms over n_l·n_g + n_g·(n_g − 1)."""
    torch.manual_seed(0)
    arch = SSLMetaArch(_cfg(ibot={"loss_weight": 0.0}, dino={"koleo_loss_weight": 0.0})).train()
    batch = _batch(b=2, n_g=2, n_l=3)
    out = arch.forward_backward(batch, teacher_temp=0.07)
    with torch.no_grad():
        t = arch.teacher["dino_head"](arch.teacher["backbone"](batch["global"])["cls"])
        targets = sinkhorn_knopp(t, 0.07).chunk(2)
        sg = arch.student["dino_head"](arch.student["backbone"](batch["global"])["cls"]).chunk(2)
        sl = arch.student["dino_head"](arch.student["backbone"](batch["local"])["cls"]).chunk(3)
    ce = DINOLoss(0.1)
    glob = sum(float(ce([sg[i]], [targets[j]])) for i in range(2) for j in range(2) if i != j)
    loc = sum(float(ce([sl[i]], [targets[j]])) for i in range(3) for j in range(2))
    assert float(out["dino_global_crops_loss"]) == pytest.approx(glob / 8, rel=1e-5)
    assert float(out["dino_local_crops_loss"]) == pytest.approx(loc / 8, rel=1e-5)
    assert float(out["ibot_loss"]) == 0.0 and float(out["koleo_loss"]) == 0.0


def test_view_diagnostics_see_identical_and_unrelated_views():
    """diag_view_retrieval = 1 and diag_view_cos_gap > 0 when both global crops of each image are
    the same picture; about chance with unrelated pictures."""
    torch.manual_seed(0)
    arch = SSLMetaArch(_cfg(model={"layerscale": None})).train()  # 1e-5: every CLS is the same at init
    b = 12
    g = torch.Generator().manual_seed(3)
    first = [torch.randn(1, 12, 8, generator=g) * (1 + i) for i in range(b)]
    same = {**_batch(b=b), "global": pack_images(first + first, [1.0] * 2 * b, 4, 200)}
    same["masks"] = torch.zeros(same["global"].n_tokens, dtype=torch.bool)
    out = arch.forward_backward(same, teacher_temp=0.07)
    assert float(out["diag_view_retrieval"]) == 1.0 and float(out["diag_view_cos_gap"]) > 0
    other = [torch.randn(1, 12, 8, generator=g) * (1 + i) for i in reversed(range(b))]
    unrelated = {**same, "global": pack_images(first + other, [1.0] * 2 * b, 4, 200)}
    out = arch.forward_backward(unrelated, teacher_temp=0.07)
    assert float(out["diag_view_retrieval"]) <= 3 / b
    one_crop = arch.forward_backward(_batch(b=4, n_g=1), teacher_temp=0.07)
    assert math.isnan(float(one_crop["diag_view_retrieval"])) and math.isnan(float(one_crop["diag_view_cos_gap"]))


def test_no_masked_patch_and_no_local_crops():
    torch.manual_seed(0)
    arch = SSLMetaArch(_cfg()).train()
    batch = _batch()
    batch["masks"] = torch.zeros_like(batch["masks"])
    batch["local"], batch["n_local_crops"] = None, 0
    out = arch.forward_backward(batch, teacher_temp=0.04)
    assert float(out["ibot_loss"]) == 0.0 and float(out["dino_local_crops_loss"]) == 0.0
    assert math.isfinite(float(out["loss"]))


def test_update_teacher_is_ema():
    arch = SSLMetaArch(_cfg())
    with torch.no_grad():
        for p in arch.student.parameters():
            p.fill_(1.0)
        for p in arch.teacher.parameters():
            p.fill_(3.0)
    arch.update_teacher(0.75)
    assert all(torch.allclose(p, torch.full_like(p, 0.75 * 3 + 0.25 * 1)) for p in arch.teacher.parameters())


def test_param_groups_layer_decay_and_weight_decay():
    arch = SSLMetaArch(_cfg())
    groups = arch.param_groups(layer_decay=0.5, patch_embed_lr_mult=0.2)
    lr = {n: g["lr_mult"] for g in groups for n in g["param_names"]}
    wd = {n: g["wd_mult"] for g in groups for n in g["param_names"]}
    assert lr["backbone.patch_embed.proj.weight"] == pytest.approx(0.5**3 * 0.2)
    assert lr["backbone.cls_token"] == lr["backbone.pos_embed.pos_embed"] == pytest.approx(0.5**3)
    assert lr["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(0.5**2)
    assert lr["backbone.blocks.1.mlp.fc1.weight"] == pytest.approx(0.5)
    assert lr["backbone.norm.weight"] == lr["dino_head.mlp.0.weight"] == 1.0
    assert wd["backbone.blocks.0.attn.qkv.weight"] == 1.0 and wd["dino_head.mlp.0.weight"] == 1.0
    for name in ["backbone.blocks.0.attn.qkv.bias", "backbone.blocks.0.norm1.weight", "backbone.blocks.0.ls1.gamma",
                 "backbone.pos_embed.pos_embed", "backbone.cls_token", "backbone.mask_token", "backbone.norm.bias"]:
        assert wd[name] == 0.0, name
    last = [n for g in groups if g["is_last_layer"] for n in g["param_names"]]
    assert last == arch.last_layer_parameter_names() == [
        "dino_head.last_layer.parametrizations.weight.original1",
        "ibot_head.last_layer.parametrizations.weight.original1",
    ]
    n_trainable = sum(1 for p in arch.student.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable
    torch.optim.AdamW(groups)  # the groups are valid optimiser input


def test_config_errors():
    with pytest.raises(ValueError, match="train.centering must be one of"):
        SSLMetaArch(_cfg("sinkhorn"))
    arch = SSLMetaArch(_cfg())
    batch = _batch(b=3, n_g=2)
    batch["n_global_crops"] = 4
    with pytest.raises(ValueError, match="not a multiple of n_global_crops=4"):
        arch.forward_backward(batch, 0.04)
