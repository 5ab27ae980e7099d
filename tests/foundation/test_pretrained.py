"""Warm start from public weights: official DINOv2 and timm ViT checkpoints, built offline.

Checkpoints are made from the reference packages' own model classes with random weights
(``dinov2`` for the official layout, ``timm`` for its ViTs): nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dinov2.models import vision_transformer as ref_vit  # test dependency: pip install --no-deps dinov2

from aqqua_geo.foundation.pretrained import detect_format, load_pretrained_backbone, read_state_dict


def _official(tmp_path, arch="vit_small", img_size=112, registers=0, chunks=0, wrap=None, seed=0):
    torch.manual_seed(seed)
    ffn = "swiglufused" if arch == "vit_giant2" else "mlp"
    model = getattr(ref_vit, arch)(patch_size=14, img_size=img_size, block_chunks=chunks, init_values=1e-5,
                                   ffn_layer=ffn)
    state = model.state_dict()
    if registers:  # the official *_reg4 layout (newer dinov2 code): register_tokens (1, R, D)
        state["register_tokens"] = torch.randn(1, registers, model.embed_dim) * 0.1
    payload = state if wrap is None else {wrap: {f"backbone.{k}": v for k, v in state.items()}}
    path = tmp_path / f"dinov2_{arch}_reg{registers}.pth"
    torch.save(payload, path)
    return model.eval(), state, path


def _grey_images(n, h, w, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8))


def test_every_block_weight_is_loaded_bit_exact(tmp_path):
    _, state, path = _official(tmp_path, registers=4)
    model = load_pretrained_backbone(path, in_chans=3)
    ours = model.state_dict()
    assert detect_format(read_state_dict(path)) == "dinov2"
    n_checked = 0
    for key, value in state.items():
        if key.startswith("blocks.") or key.startswith("norm."):
            assert torch.equal(ours[key], value), key
            n_checked += 1
    assert n_checked == 12 * 14 + 2  # 14 tensors per block (2 LayerScales), final norm
    assert torch.equal(ours["register_tokens"], state["register_tokens"][0])
    assert torch.equal(ours["pos_embed.pos_embed"], state["pos_embed"][:, 1:])
    assert torch.equal(ours["cls_token"], (state["cls_token"] + state["pos_embed"][:, :1])[0])
    assert torch.equal(ours["pos_embed.physical_gain"], torch.zeros(384))  # µm term starts at 0
    assert model.cfg["num_register_tokens"] == 4 and model.cfg["pos_embed_grid"] == 8


def test_training_checkpoint_with_chunked_blocks_is_unwrapped(tmp_path):
    ref, state, path = _official(tmp_path, chunks=4, wrap="teacher")
    model = load_pretrained_backbone(path, in_chans=3)
    assert torch.equal(model.state_dict()["blocks.11.attn.qkv.weight"], state["blocks.3.11.attn.qkv.weight"])


def test_vit_giant_swiglu_layout_is_converted(tmp_path):
    torch.manual_seed(0)
    ref = ref_vit.DinoVisionTransformer(patch_size=14, img_size=56, embed_dim=128, depth=2, num_heads=2,
                                        ffn_layer="swiglufused", block_chunks=0, init_values=1e-5).eval()
    torch.save(ref.state_dict(), tmp_path / "g.pth")
    model = load_pretrained_backbone(tmp_path / "g.pth", in_chans=3)
    assert model.cfg["ffn_layer"] == "swiglu"
    x = torch.rand(2, 3, 56, 56)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.forward_features((x - mean) / std)["x_norm_clstoken"]
    images = list((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    x_q = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        expected = ref.forward_features((x_q - mean) / std)["x_norm_clstoken"]
    from aqqua_geo.foundation.embed import embed_images

    got = embed_images(model, images, [1.0, 1.0])
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)


def test_timm_vit_with_registers_matches_timm(tmp_path):
    from aqqua_geo._compat import import_timm
    from aqqua_geo.foundation.embed import embed_images

    timm = import_timm()
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=112, num_classes=0).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    state = read_state_dict(tmp_path / "timm.pth")
    assert detect_format(state) == "timm"
    model = load_pretrained_backbone(tmp_path / "timm.pth")
    grey = _grey_images(2, 112, 112)
    x = torch.from_numpy(np.stack(grey)).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net.forward_features((x - mean) / std)[:, 0]
    got = embed_images(model, grey, [1.0, 1.0])
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)


def test_foreign_files_are_refused_with_a_reason(tmp_path):
    # DINOv3-looking keys without the ViT tensors are no checkpoint either
    torch.save({"cls_token": torch.zeros(1, 1, 8), "storage_tokens": torch.zeros(1, 4, 8),
                "rope_embed.periods": torch.ones(2)}, tmp_path / "v3.pth")
    with pytest.raises(ValueError, match="not a ViT checkpoint of a known layout"):
        load_pretrained_backbone(tmp_path / "v3.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a ViT checkpoint of a known layout"):
        load_pretrained_backbone(tmp_path / "other.pth")


def test_load_backbone_and_pretrain_accept_a_public_checkpoint(tmp_path, uvp6_store):
    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.config import load_config
    from aqqua_geo.foundation.embed import embed_images
    from aqqua_geo.foundation.train import pretrain

    torch.manual_seed(0)
    ref = ref_vit.DinoVisionTransformer(patch_size=14, img_size=56, embed_dim=64, depth=2, num_heads=1,
                                        block_chunks=0, init_values=1e-5).eval()
    torch.save(ref.state_dict(), tmp_path / "small.pth")
    public = load_backbone(tmp_path / "small.pth")
    images = _grey_images(3, 42, 70, seed=1)
    before = embed_images(public, images, [73.0] * 3)
    # max_steps=0: the warm-started run writes a backbone identical to the public model
    cfg = load_config("tiny", [f"model.init={tmp_path / 'small.pth'}", "train.max_steps=0",
                               "model.max_tokens_per_image=16", "crops.global_max_tokens=16",
                               "crops.local_max_tokens=4"])
    run = pretrain(cfg, uvp6_store, tmp_path / "run", progress=False)
    np.testing.assert_allclose(embed_images(load_backbone(run / "backbone.pt"), images, [73.0] * 3), before,
                               atol=1e-6)
    # and training from it runs and changes the weights
    cfg = load_config("tiny", [f"model.init={tmp_path / 'small.pth'}", "train.max_steps=2",
                               "model.max_tokens_per_image=16", "crops.global_max_tokens=16",
                               "crops.local_max_tokens=4", "train.batch_size_per_gpu=4"])
    run = pretrain(cfg, uvp6_store, tmp_path / "run2", progress=False)
    after = embed_images(load_backbone(run / "backbone.pt"), images, [73.0] * 3)
    assert after.shape == before.shape and not np.allclose(after, before)


def test_safetensors_checkpoint_is_read_without_torch_load(tmp_path):
    from safetensors.torch import save_file

    from aqqua_geo.foundation.backbone_io import load_backbone
    from aqqua_geo.foundation.pretrained import warm_start

    torch.manual_seed(0)
    ref = ref_vit.DinoVisionTransformer(patch_size=14, img_size=56, embed_dim=64, depth=2, num_heads=1,
                                        block_chunks=0, init_values=1e-5)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "m.safetensors"))
    cfg, state = warm_start({"init": str(tmp_path / "m.safetensors"), "in_chans": 1, "max_tokens_per_image": 16})
    assert (cfg["embed_dim"], cfg["depth"], cfg["pos_embed_grid"]) == (64, 2, 4)
    model = load_backbone(tmp_path / "m.safetensors")
    assert torch.equal(model.state_dict()["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
