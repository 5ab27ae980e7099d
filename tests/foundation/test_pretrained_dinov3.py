"""Warm start from DINOv3 ViT checkpoints (RoPE), built offline from timm's DINOv3 port.

timm's ``vit_*_patch16_dinov3`` (an ``Eva`` with ``rope_type='dinov3'``) is documented as
numerically matching facebookresearch/dinov3; its ``checkpoint_filter_fn`` converts official
checkpoints to timm. These tests run that conversion backwards on a randomly initialised timm
model to write an *official-layout* checkpoint (``storage_tokens``, ``ls1.gamma``,
``attn.qkv.bias`` + ``bias_mask``, SwiGLU ``mlp.w1/w2/w3``, ``rope_embed.periods``), load it
with the project's converter and compare tokens with timm's forward. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aqqua_geo._compat import import_timm
from aqqua_geo.foundation.embed import forward_images
from aqqua_geo.foundation.pretrained import detect_format, load_pretrained_backbone, read_state_dict, warm_start

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def _timm_dinov3(variant: str, seed: int = 0, depth: int = 2):
    """A random timm DINOv3 (2 blocks to keep the test fast) with non-trivial LayerScale."""
    torch.manual_seed(seed)
    net = import_timm().create_model(variant, pretrained=False, num_classes=0, depth=depth).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "gamma" in name:
                p.uniform_(0.5, 1.5)  # 1e-5 would hide every block's contribution
            elif name.endswith(("q_bias", "v_bias")) or name in ("cls_token", "reg_token"):
                p.normal_(0, 0.5)
        # DINOv3 stores its periods in bfloat16: use rounded ones on both sides
        net.rope.periods.copy_(net.rope.periods.to(torch.bfloat16).float())
    return net


def _official_state(net) -> dict[str, torch.Tensor]:
    """timm's DINOv3 state dict in facebookresearch/dinov3's key layout (the inverse of
    timm's ``eva.checkpoint_filter_fn`` for DINOv3)."""
    out: dict[str, torch.Tensor] = {}
    state = net.state_dict()
    dim = net.embed_dim
    swiglu = any(".mlp.fc1_g." in k for k in state)
    for key, value in state.items():
        if key.endswith(("q_bias", "v_bias")):
            continue
        name = (key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
                .replace("gamma_2", "ls2.gamma").replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2"))
        if swiglu:
            name = name.replace("mlp.fc2", "mlp.w3")
        out[name] = value.clone()
    for i in range(len(net.blocks)):
        q = state.get(f"blocks.{i}.attn.q_bias")
        if q is None:
            continue
        # the key third is stored non-zero in official checkpoints and masked by bias_mask
        k = torch.randn(dim)
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, k, state[f"blocks.{i}.attn.v_bias"]])
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = net.rope.periods.to(torch.bfloat16)
    return out


def _timm_tokens(net, images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        return net.forward_features((x - MEAN) / STD)


def _grey_images(n, h, w, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8))


@pytest.mark.parametrize("variant", ["vit_small_patch16_dinov3_qkvb", "vit_small_plus_patch16_dinov3"])
def test_dinov3_tokens_equal_timm_reference(tmp_path, variant):
    net = _timm_dinov3(variant)
    torch.save(_official_state(net), tmp_path / "dinov3.pth")
    state = read_state_dict(tmp_path / "dinov3.pth")
    assert detect_format(state) == "dinov3"
    model = load_pretrained_backbone(tmp_path / "dinov3.pth")
    cfg = model.cfg
    assert (cfg["rope_base"], cfg["norm_eps"], cfg["pos_embed"], cfg["num_register_tokens"]) == (
        100.0, 1e-5, "gated_physical", 4)
    assert cfg["ffn_layer"] == ("swiglu" if "plus" in variant else "mlp")
    # a non-square grid (3 × 5 patches), several images packed in one row
    images = _grey_images(3, 48, 80, seed=1)
    expected = _timm_tokens(net, images)
    with torch.no_grad():
        got = forward_images(model, images, [2.0] * 3, "cpu")
    torch.testing.assert_close(got["cls"], expected[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["patch"], expected[:, 5:].reshape(-1, net.embed_dim), atol=1e-4, rtol=1e-4)


def test_dinov3_block_weights_are_bit_exact_and_key_bias_is_masked(tmp_path):
    net = _timm_dinov3("vit_small_patch16_dinov3_qkvb")
    official = _official_state(net)
    torch.save(official, tmp_path / "dinov3.pth")
    ours = load_pretrained_backbone(tmp_path / "dinov3.pth", in_chans=3).state_dict()
    n_checked = 0
    for key, value in official.items():
        if key.startswith(("blocks.", "norm.")) and not key.endswith(("qkv.bias", "bias_mask")):
            assert torch.equal(ours[key], value), key
            n_checked += 1
    # per block: norm1 (2), qkv.weight, proj (2), ls1, norm2 (2), fc1 (2), fc2 (2), ls2; final norm (2)
    assert n_checked == 2 * 13 + 2
    bias = ours["blocks.0.attn.qkv.bias"]
    assert torch.equal(bias[384:768], torch.zeros(384))
    assert torch.equal(bias[:384], official["blocks.0.attn.qkv.bias"][:384])
    assert torch.equal(ours["register_tokens"], official["storage_tokens"][0])
    assert torch.equal(ours["rope.periods"], official["rope_embed.periods"].float())
    assert torch.equal(ours["pos_embed.physical_gain"], torch.zeros(384))  # µm term starts at 0


def test_dinov3_warm_start_keeps_user_keys_and_refuses_untied_norms(tmp_path):
    net = _timm_dinov3("vit_small_patch16_dinov3_qkvb")
    official = _official_state(net)
    torch.save(official, tmp_path / "dinov3.pth")
    cfg, state = warm_start({"init": str(tmp_path / "dinov3.pth"), "in_chans": 1, "max_tokens_per_image": 64,
                             "drop_path_rate": 0.2})
    assert (cfg["max_tokens_per_image"], cfg["drop_path_rate"], cfg["patch_size"]) == (64, 0.2, 16)
    assert "rope.periods" in state
    official["cls_norm.weight"] = torch.ones(384)
    torch.save(official, tmp_path / "7b.pth")
    with pytest.raises(ValueError, match="separate CLS and patch norms"):
        load_pretrained_backbone(tmp_path / "7b.pth")


def test_dinov3_packed_images_of_different_sizes_each_equal_timm(tmp_path):
    # each image's RoPE coordinates come from its own grid, whatever it is packed with
    net = _timm_dinov3("vit_small_patch16_dinov3_qkvb", seed=3)
    torch.save(_official_state(net), tmp_path / "dinov3.pth")
    model = load_pretrained_backbone(tmp_path / "dinov3.pth")
    images = [_grey_images(1, 32, 96, seed=4)[0], _grey_images(1, 64, 48, seed=5)[0]]
    with torch.no_grad():
        got = forward_images(model, images, [2.0, 2.0], "cpu")
    start = 0
    for i, image in enumerate(images):
        expected = _timm_tokens(net, [image])
        n = expected.shape[1] - 5
        torch.testing.assert_close(got["cls"][i], expected[0, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got["patch"][start:start + n], expected[0, 5:], atol=1e-4, rtol=1e-4)
        start += n


def test_pretrain_warm_started_from_dinov3_starts_at_the_public_model(tmp_path, uvp6_store):
    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.config import load_config
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.train import pretrain

    net = _timm_dinov3("vit_small_patch16_dinov3_qkvb", depth=1)
    torch.save(_official_state(net), tmp_path / "dinov3.pth")
    images = _grey_images(3, 40, 72, seed=1)
    before = embed_images(load_backbone(tmp_path / "dinov3.pth"), images, [73.0] * 3)
    overrides = [f"model.init={tmp_path / 'dinov3.pth'}", "model.max_tokens_per_image=16",
                 "crops.global_max_tokens=16", "crops.local_max_tokens=4", "train.batch_size_per_gpu=4"]
    run = pretrain(load_config("tiny", overrides + ["train.max_steps=0"]), uvp6_store, tmp_path / "r0",
                   progress=False)
    np.testing.assert_allclose(embed_images(load_backbone(run / "backbone.pt"), images, [73.0] * 3), before,
                               atol=1e-6)
    run = pretrain(load_config("tiny", overrides + ["train.max_steps=2"]), uvp6_store, tmp_path / "r2",
                   progress=False)
    after = load_backbone(run / "backbone.pt")
    assert after.cfg["rope_base"] == 100.0
    assert not np.allclose(embed_images(after, images, [73.0] * 3), before)
