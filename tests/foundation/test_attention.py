"""Block-sparse attention over packed rows equals the dense block-diagonal path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aqqua_geo.foundation.embed import embed_images
from aqqua_geo.foundation.vit import build_backbone


@pytest.mark.filterwarnings("ignore::UserWarning")  # eager FlexAttention on CPU warns it is slow
def test_flex_attention_equals_dense_on_packed_rows():
    torch.manual_seed(0)
    cfg = {"arch": "vit_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
           "max_tokens_per_image": 64, "layerscale": None}
    dense = build_backbone({**cfg, "attention": "dense"}).eval()
    flex = build_backbone({**cfg, "attention": "flex"}).eval()
    flex.load_state_dict(dense.state_dict())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(int(rng.integers(8, 70)), int(rng.integers(8, 70))), dtype=np.uint8)
              for _ in range(9)]
    px = [float(v) for v in rng.uniform(1, 80, size=9)]
    a = embed_images(dense, images, px, max_tokens_per_batch=160, pool="concat")
    b = embed_images(flex, images, px, max_tokens_per_batch=160, pool="concat")
    np.testing.assert_allclose(b, a, atol=1e-5)
    # training on CPU: FlexAttention has no CPU backward in torch, so it is refused by name
    flex.train()
    from aqqua_geo.foundation.embed import forward_images

    with pytest.raises(ValueError, match="no CPU backward"):
        forward_images(flex, images, px, "cpu")


def test_unknown_attention_backend_is_refused():
    with pytest.raises(ValueError, match="model.attention must be one of"):
        build_backbone({"arch": "vit_tiny", "embed_dim": 32, "depth": 1, "num_heads": 2, "attention": "xformers"})
