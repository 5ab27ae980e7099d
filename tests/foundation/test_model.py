"""PlanktonViT on packed batches, save/load, and embed_images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aqqua_geo.foundation.backbone_io import load_backbone, save_backbone
from aqqua_geo.foundation.embed import embed_images
from aqqua_geo.foundation.packing import pack_images
from aqqua_geo.foundation.vit import ARCHS, build_backbone, resolve_model_cfg
from aqqua_geo.imaging import model_input

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4, "max_tokens_per_image": 24}
SIZES = [(9, 13), (4, 4), (3, 2), (20, 8), (16, 16), (30, 5)]
PIX = [1.0, 2.0, 0.5, 1.0, 3.0, 0.3]


def _model(**over):
    torch.manual_seed(0)
    return build_backbone({**TINY, **over}).eval()


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, h, w, generator=g) for h, w in SIZES]


@pytest.mark.parametrize("over", [{}, {"num_register_tokens": 2}, {"pos_embed": "learned"},
                                  {"ffn_layer": "swiglu", "layerscale": None}])
def test_packed_forward_equals_per_image_forward(over):
    model = _model(**over)
    imgs = _images()
    with torch.no_grad():
        packed = model(pack_images(imgs, PIX, 4, 40, max_tokens_per_image=24))
        offset = 0
        for i, img in enumerate(imgs):
            alone = model(pack_images([img], [PIX[i]], 4, 40, max_tokens_per_image=24))
            n = alone["patch"].shape[0]
            torch.testing.assert_close(packed["cls"][i], alone["cls"][0], atol=1e-5, rtol=0)
            torch.testing.assert_close(packed["pooled"][i], alone["pooled"][0], atol=1e-5, rtol=0)
            torch.testing.assert_close(packed["patch"][offset:offset + n], alone["patch"], atol=1e-5, rtol=0)
            offset += n
    assert offset == packed["patch"].shape[0]
    assert packed["cls"].shape == (len(imgs), 32)


def test_images_in_a_row_do_not_see_each_other():
    model = _model()
    imgs = _images()
    pb = pack_images(imgs, PIX, 4, 200)  # one row holds all images
    assert pb.layout(1).n_rows == 1
    changed = [img.clone() for img in imgs]
    changed[0] = changed[0] + 5.0
    with torch.no_grad():
        a, b = model(pb), model(pack_images(changed, PIX, 4, 200))
    assert not torch.allclose(a["cls"][0], b["cls"][0])
    torch.testing.assert_close(a["cls"][1:], b["cls"][1:], atol=1e-6, rtol=0)


def test_ibot_mask_replaces_patch_content():
    model = _model()
    imgs = _images()
    pb = pack_images(imgs, PIX, 4, 40, max_tokens_per_image=24)
    mask = torch.zeros(pb.n_tokens, dtype=torch.bool)
    mask[::3] = True
    noisy = pack_images(imgs, PIX, 4, 40, max_tokens_per_image=24)
    noisy.patches[mask] = torch.randn(int(mask.sum()), noisy.patches.shape[1])
    with torch.no_grad():
        m1, m2 = model(pb, masks=mask), model(noisy, masks=mask)
        plain = model(pb)
    torch.testing.assert_close(m1["patch"], m2["patch"])  # masked pixels are invisible
    assert not torch.allclose(m1["cls"], plain["cls"])


def test_gradients_reach_all_parameters_with_checkpointing_equal():
    imgs = _images()
    pb = pack_images(imgs, PIX, 4, 40, max_tokens_per_image=24)
    mask = torch.zeros(pb.n_tokens, dtype=torch.bool)
    mask[:5] = True
    grads = []
    for ckpt in (False, True):
        model = _model(num_register_tokens=1, grad_checkpointing=ckpt).train()
        out = model(pb, masks=mask)
        (out["cls"].square().sum() + out["patch"].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(g.abs().sum() > 0 for g in grads[0].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


def test_drop_path_is_per_image():
    model = _model(drop_path_rate=0.5).train()
    pb = pack_images(_images(), PIX, 4, 200)
    lay = pb.layout(model.num_prefix_tokens)
    assert lay.n_rows == 1
    differ = False
    for _ in range(20):
        scales = model._branch_scales(model.blocks[0], lay, pb.n_images, "cpu")[:, 0, :, 0]  # (2, L)
        for branch in scales:
            per_image = [branch[lay.segment[0] == i].unique().tolist() for i in range(pb.n_images)]
            assert all(len(v) == 1 and v[0] in (0.0, 2.0) for v in per_image)  # 0 or 1/keep
            assert branch[lay.segment[0] == -1].eq(0).all()
            differ |= len({v[0] for v in per_image}) > 1
    assert differ  # images sharing a row are dropped independently
    assert model.eval()._branch_scales(model.blocks[0], lay, pb.n_images, "cpu") is None


def test_save_load_round_trip(tmp_path: Path):
    model = _model(num_register_tokens=1, pos_embed="learned")
    path = save_backbone(model, tmp_path / "sub" / "backbone.pt", extra={"step": 7})
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == 7 and "package_version" in payload
    loaded = load_backbone(path)
    assert not loaded.training and loaded.embed_dim == 32 and loaded.cfg == model.cfg
    pb = pack_images(_images(), PIX, 4, 40, max_tokens_per_image=24)
    with torch.no_grad():
        torch.testing.assert_close(model(pb)["cls"], loaded(pb)["cls"], atol=0, rtol=0)
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left


def test_load_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="backbone file not found"):
        load_backbone(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="neither an aqqua backbone file"):
        load_backbone(tmp_path / "bad.pt")


def test_config_resolution_and_errors():
    assert resolve_model_cfg({"arch": "vit_base"})["embed_dim"] == 768
    assert resolve_model_cfg({"arch": "vit_giant", "depth": 2})["depth"] == 2
    assert set(ARCHS) == {"vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant"}
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['patchsize'\]"):
        resolve_model_cfg({"patchsize": 8})
    with pytest.raises(ValueError, match="model.arch must be one of"):
        resolve_model_cfg({"arch": "vit_huge"})
    with pytest.raises(ValueError, match="model.img_mean has 2 values for in_chans=1"):
        resolve_model_cfg({"img_mean": [0.1, 0.2]})


def _uvp6(n=12):
    from aqqua_geo.data import path

    files = sorted(path("uvp6_vignettes").glob("*/*.png"))[:: 690 // n][:n]
    return [np.asarray(Image.open(f)) for f in files]


def test_embed_images_order_and_determinism():
    model = _model(img_mean=0.02, img_std=0.07)
    images = _uvp6()
    pix = [73.0] * len(images)
    emb = embed_images(model, images, pix, max_tokens_per_batch=60)
    assert emb.shape == (len(images), 32) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, embed_images(model, images, pix, max_tokens_per_batch=60))
    perm = np.random.default_rng(0).permutation(len(images))
    emb_perm = embed_images(model, [images[i] for i in perm], pix, max_tokens_per_batch=4096)
    np.testing.assert_allclose(emb_perm, emb[perm], atol=1e-5)
    single = embed_images(model, images[:1], pix[:1], batch_size=1)
    np.testing.assert_allclose(single[0], emb[0], atol=1e-5)
    both = embed_images(model, images[:3], pix[:3], pool="concat")
    np.testing.assert_allclose(both[:, :32], emb[:3], atol=1e-5)


def test_embed_images_normalises_with_stored_stats():
    x = model_input(np.full((2, 3), 51, dtype=np.uint8), 1, [0.1], [0.05])
    assert x.shape == (1, 2, 3) and torch.allclose(x, torch.full_like(x, 2.0))
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    assert torch.allclose(model_input(rgb, 1, [0.0], [1.0]), torch.full((1, 2, 2), 150 / 255))  # luminance rounded to uint8 on both paths
    with pytest.raises(ValueError, match="2 images but 1 pixel sizes"):
        embed_images(_model(), [rgb[..., 0]] * 2, [1.0])


def test_concatenated_batches_give_the_same_outputs():
    from aqqua_geo.foundation.packing import concat_packed

    model = _model(num_register_tokens=1)
    imgs = _images()
    a = pack_images(imgs[:3], PIX[:3], 4, 40, max_tokens_per_image=24)
    b = pack_images(imgs[3:], PIX[3:], 4, 40, max_tokens_per_image=24)
    with torch.no_grad():
        both = model(concat_packed([a, b]))
        sep = [model(a), model(b)]
    torch.testing.assert_close(both["cls"], torch.cat([s["cls"] for s in sep]), atol=1e-5, rtol=0)
    torch.testing.assert_close(both["patch"], torch.cat([s["patch"] for s in sep]), atol=1e-5, rtol=0)


def test_matches_timm_vision_transformer_on_one_image():
    """Independent reference: timm's VisionTransformer with the same weights on a 12x16 image."""
    from aqqua_geo._compat import import_timm

    timm = import_timm()
    model = _model(pos_embed="learned", num_register_tokens=2, max_tokens_per_image=12)  # learned grid 3x3
    torch.manual_seed(1)
    with torch.no_grad():
        model.pos_embed.pos_embed.normal_()
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=(12, 12), patch_size=4, in_chans=1, num_classes=0, embed_dim=32, depth=2, num_heads=2,
        qkv_bias=True, init_values=1e-5, class_token=True, no_embed_class=True, reg_tokens=2,
    ).eval()
    state = model.state_dict()
    mapped = {k: v for k, v in state.items() if k.startswith(("blocks.", "norm."))}
    mapped["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].reshape(32, 1, 4, 4)
    mapped["patch_embed.proj.bias"] = state["patch_embed.proj.bias"]
    mapped["cls_token"] = state["cls_token"].reshape(1, 1, 32)
    mapped["reg_token"] = state["register_tokens"].reshape(1, 2, 32)
    mapped["pos_embed"] = state["pos_embed.pos_embed"]
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith("head")]
    img = torch.randn(1, 12, 12)
    with torch.no_grad():
        ours = model(pack_images([img], [1.0], 4, 64, max_tokens_per_image=12))
        theirs = ref.forward_features(img[None])[0]
    torch.testing.assert_close(ours["cls"][0], theirs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["patch"], theirs[3:], atol=1e-5, rtol=0)


def test_package_exports_are_lazy():
    import subprocess
    import sys

    code = ("import sys, aqqua_geo.foundation as f; assert 'torch' not in sys.modules; "
            "from aqqua_geo.foundation import load_backbone, embed_images; print(load_backbone.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "aqqua_geo.foundation.backbone_io"


def test_forward_rejects_bad_input():
    model = _model()
    pb = pack_images(_images(), PIX, 4, 40, max_tokens_per_image=24)
    with pytest.raises(ValueError, match=r"masks must be a bool tensor of shape"):
        model(pb, masks=torch.zeros(pb.n_tokens))
    with pytest.raises(ValueError, match="the model expects 1, 4"):
        model(pack_images([torch.rand(1, 16, 16)], [1.0], 8, 40))
