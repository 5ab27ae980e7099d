"""Parity with the reference DINOv2 implementation (facebookresearch ``dinov2`` on PyPI).

The reference is a test-only dependency, installed with ``pip install --no-deps dinov2``
(README test command); nothing of it is copied into the package. On the same tensors the
project's loss terms, Sinkhorn-Knopp and softmax centring must equal the reference's to
1e-6 and its ViT, given the weights of a reference ``vit_small``, must give the reference's
CLS and patch tokens to 1e-4.
"""

from __future__ import annotations

import math

# The reference is a test dependency that the README's test command installs
# (pip install --no-deps dinov2): a missing one fails collection instead of skipping parity.
import dinov2.loss as dinov2_loss
import numpy as np
import pytest
import torch
from dinov2.models import vision_transformer as ref_vit

from aqqua_geo.foundation.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, SoftmaxCentering, sinkhorn_knopp

TOL = 1e-6


def _logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _cosines(*shape, seed=0):
    """Prototype logits as the DINO head gives them: cosine similarities in [-1, 1]."""
    return torch.tanh(_logits(*shape, seed=seed, scale=0.5))


@pytest.mark.parametrize("temp", [0.04, 0.07])
def test_sinkhorn_knopp_equals_reference(temp):
    logits = _cosines(24, 64)
    ours = sinkhorn_knopp(logits, temp, n_iterations=3)
    ref = dinov2_loss.DINOLoss(64).sinkhorn_knopp_teacher(logits, temp, n_iterations=3)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=1e-5)


def test_ibot_sinkhorn_equals_reference(monkeypatch):
    logits = _cosines(37, 32, seed=1)
    # the reference all-reduces the masked-patch count unconditionally: a 1-process no-op here
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: None)
    ref = dinov2_loss.iBOTPatchLoss(32).sinkhorn_knopp_teacher(logits, 0.07, torch.tensor(37.0))
    torch.testing.assert_close(sinkhorn_knopp(logits, 0.07, n_samples=37), ref, atol=TOL, rtol=1e-5)


def test_dino_clstoken_loss_equals_reference():
    n_g, n_l, b, k = 2, 3, 8, 48
    student = [_logits(b, k, seed=10 + i) for i in range(n_g + n_l)]
    teacher = [torch.softmax(_logits(b, k, seed=20 + j) / 0.07, -1) for j in range(n_g)]
    ref = dinov2_loss.DINOLoss(k, student_temp=0.1)
    ours = DINOLoss(student_temp=0.1)
    # local crops × every global teacher crop
    torch.testing.assert_close(ours(student[n_g:], teacher), ref(student[n_g:], teacher), atol=TOL, rtol=TOL)
    # global crops: DINOv2 pairs each student crop with the *other* teacher crop (swapped)
    swapped = ref([torch.cat(student[:n_g])], [torch.cat(teacher[::-1])]) * n_g
    cross = ours(student[:n_g], teacher, pairs=[(0, 1), (1, 0)])
    torch.testing.assert_close(cross, swapped, atol=TOL, rtol=TOL)


def test_ibot_patch_loss_equals_reference():
    b, n, k = 5, 12, 40
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(b, n, generator=g) < 0.4
    masks[0] = False  # an image without masked patches counts in the mean, as in DINOv2
    s = _logits(int(masks.sum()), k, seed=4)
    t = torch.softmax(_logits(int(masks.sum()), k, seed=5) / 0.07, -1)
    ref = dinov2_loss.iBOTPatchLoss(k, student_temp=0.1).forward_masked(s, t, student_masks_flat=masks)
    image_index = torch.arange(b).repeat_interleave(n)[masks.reshape(-1)]
    ours = IBOTPatchLoss(student_temp=0.1)(s, t, image_index, n_images=b)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=TOL)


def test_koleo_loss_equals_reference():
    x = _logits(16, 32, seed=6)
    torch.testing.assert_close(KoLeoLoss()(x), dinov2_loss.KoLeoLoss()(x), atol=TOL, rtol=TOL)


def test_softmax_centering_and_update_equal_reference_over_steps():
    k = 24
    ref, ours = dinov2_loss.DINOLoss(k, center_momentum=0.9), SoftmaxCentering(k, momentum=0.9)
    for step in range(4):
        logits = _logits(10, k, seed=30 + step)
        expected = ref.softmax_center_teacher(logits, 0.05)
        ref.update_center(logits)  # applied lazily at the next call, as in DINOv2 training
        torch.testing.assert_close(ours(logits, 0.05), expected, atol=TOL, rtol=1e-5)
        ours.update(logits)
    ref.apply_center_update()
    torch.testing.assert_close(ours.center, ref.center, atol=TOL, rtol=1e-5)


# -- backbone -----------------------------------------------------------------------------------
def _reference_vit_small(seed: int = 0, img_size: int = 224, layerscale: float = 1e-5):
    torch.manual_seed(seed)
    model = ref_vit.vit_small(patch_size=14, img_size=img_size, block_chunks=0, init_values=layerscale)
    with torch.no_grad():  # LayerScale 1e-5 would hide a wrong block: make every branch count
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
        model.cls_token.normal_(std=0.5)
        model.mask_token.normal_(std=0.5)
    return model.eval()


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _reference_tokens(ref, images: np.ndarray, mean, std) -> dict:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return ref.forward_features(x)


@pytest.mark.parametrize("grid", [(16, 16), (12, 20)])
def test_vit_given_reference_weights_gives_reference_tokens(tmp_path, grid):
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.pretrained import load_pretrained_backbone

    ref = _reference_vit_small()
    torch.save(ref.state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = load_pretrained_backbone(tmp_path / "dinov2_vits14_pretrain.pth", in_chans=3)
    h, w = grid[0] * 14, grid[1] * 14
    images = _images(3, h, w)
    expected = _reference_tokens(ref, images, mean, std)
    got = embed_images(model, list(images), [1.0] * 3, pool="cls", max_tokens_per_batch=4096)
    torch.testing.assert_close(torch.from_numpy(got), expected["x_norm_clstoken"], atol=1e-4, rtol=1e-4)
    from aqqua_geo.foundation.embed import forward_images

    with torch.no_grad():
        patch = forward_images(model, list(images), [1.0] * 3, "cpu")["patch"]
    torch.testing.assert_close(patch, expected["x_norm_patchtokens"].reshape(-1, 384), atol=1e-4, rtol=1e-4)


def test_grey_model_from_rgb_weights_equals_reference_on_replicated_grey(tmp_path):
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.pretrained import load_pretrained_backbone

    ref = _reference_vit_small(seed=1)
    torch.save(ref.state_dict(), tmp_path / "ref.pth")
    model = load_pretrained_backbone(tmp_path / "ref.pth")  # grey (in_chans=1) by default
    grey = _images(2, 14 * 10, 14 * 12, seed=2)[..., 0]
    expected = _reference_tokens(ref, np.repeat(grey[..., None], 3, axis=3),
                                 (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))["x_norm_clstoken"]
    got = embed_images(model, list(grey), [1.0] * 2, pool="cls")
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)
    assert math.isclose(model.cfg["img_mean"][0], 0.0) and math.isclose(model.cfg["img_std"][0], 1.0)


# -- one meta-architecture step ----------------------------------------------------------------
def test_ssl_meta_arch_step_matches_reference_loss_terms(tmp_path):
    """One training step on a fixed batch, recomposed from the reference's modules as
    ``dinov2/train/ssl_meta_arch.py`` composes them (its class itself needs fvcore/xformers).

    Where the recipes coincide: learned position table (no µm term), RGB input, equal-size
    crops, Sinkhorn-Knopp centring, shared DINO/iBOT head, no stochastic depth. Packing
    changes how tokens are laid out, not the arithmetic.
    """
    from dinov2.layers import DINOHead as RefHead

    from aqqua_geo.foundation.config import load_config
    from aqqua_geo.foundation.packing import pack_images
    from aqqua_geo.foundation.pretrained import convert_state_dict, pretrained_model_cfg
    from aqqua_geo.foundation.ssl_meta_arch import SSLMetaArch

    torch.manual_seed(0)
    # head width 64, as every public DINOv2/timm ViT (the loader infers heads = dim / 64)
    ref = ref_vit.DinoVisionTransformer(patch_size=14, img_size=56, embed_dim=128, depth=2, num_heads=2,
                                        block_chunks=0, init_values=1e-5).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    model_cfg = pretrained_model_cfg(ref.state_dict(), in_chans=3)
    model_cfg.update(max_tokens_per_image=16, drop_path_rate=0.0)
    heads = [f"{s}.{k}={v}" for s in ("dino", "ibot") for k, v in
             (("head_n_prototypes", 32), ("head_bottleneck_dim", 16), ("head_hidden_dim", 24))]
    cfg = load_config("tiny", [*heads, "train.centering=sinkhorn_knopp", "dino.koleo_loss_weight=0.1"])
    cfg["model"] = model_cfg
    meta = SSLMetaArch(cfg)
    converted = convert_state_dict(ref.state_dict(), meta.student["backbone"])
    for part in (meta.student, meta.teacher):
        part["backbone"].load_state_dict(converted)
    head = RefHead(128, 32, hidden_dim=24, bottleneck_dim=16, nlayers=3)
    ours_head = meta.student["dino_head"].state_dict()
    head.load_state_dict({k.replace("parametrizations.weight.original0", "weight_g")
                          .replace("parametrizations.weight.original1", "weight_v"): v for k, v in ours_head.items()})
    meta.teacher["dino_head"].load_state_dict(ours_head)

    b, n_l = 3, 2
    g = torch.Generator().manual_seed(1)
    glob = torch.rand(2 * b, 3, 56, 56, generator=g)  # crop-major: crop 0 of every image, then crop 1
    local = torch.rand(n_l * b, 3, 28, 28, generator=g)
    masks = torch.rand(2 * b, 16, generator=g) < 0.3
    masks[1] = False
    packed_g = pack_images(list(glob), [1.0] * (2 * b), 14, 64, masks=list(masks.reshape(-1, 4, 4)),
                           max_tokens_per_image=16)
    packed_l = pack_images(list(local), [1.0] * (n_l * b), 14, 64, max_tokens_per_image=16)
    batch = {"global": packed_g, "local": packed_l, "n_global_crops": 2, "n_local_crops": n_l,
             "masks": packed_g.mask}
    ours = meta.forward_backward(batch, teacher_temp=0.04)

    # the reference composition (dinov2 SSLMetaArch.forward_backward, n_global_crops = 2)
    dino, ibot, koleo = dinov2_loss.DINOLoss(32), dinov2_loss.iBOTPatchLoss(32), dinov2_loss.KoLeoLoss()
    n_terms = max(n_l * 2, 1) + 2
    with torch.no_grad():
        t = ref.forward_features(glob)
        t_cls = torch.cat(t["x_norm_clstoken"].chunk(2)[::-1])
        idx = masks.flatten().nonzero().flatten()
        t_patch = t["x_norm_patchtokens"].flatten(0, 1)[idx]
        t_dino = dino.sinkhorn_knopp_teacher(head(t_cls), 0.04).view(2, b, -1)
        import unittest.mock as mock

        with mock.patch.object(torch.distributed, "all_reduce", lambda *a, **k: None):
            t_ibot = ibot.sinkhorn_knopp_teacher(head(t_patch), 0.04, torch.tensor(float(len(idx))))
        s_g = ref.forward_features(glob, masks=masks)
        s_l = ref.forward_features(local)
        s_cls = head(s_g["x_norm_clstoken"])
        expected = {
            "dino_local_crops_loss": dino(list(head(s_l["x_norm_clstoken"]).chunk(n_l)), list(t_dino)) / n_terms,
            "dino_global_crops_loss": dino([s_cls], [t_dino.flatten(0, 1)]) * 2 / n_terms,
            "koleo_loss": 0.1 * sum(koleo(p) for p in s_g["x_norm_clstoken"].chunk(2)),
            "ibot_loss": ibot.forward_masked(head(s_g["x_norm_patchtokens"].flatten(0, 1)[idx]), t_ibot,
                                             student_masks_flat=masks) * 2 * 0.5,
        }
    for key, value in expected.items():
        torch.testing.assert_close(ours[key], value.float(), atol=1e-5, rtol=1e-5, msg=key)
