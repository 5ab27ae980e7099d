"""PlanktonViT: a ViT backbone for packed native-resolution plankton images.

Built from timm's layers (``Attention`` with fused ``scaled_dot_product_attention``, ``Mlp`` /
``SwiGLU``, ``LayerScale``); what differs from a timm ``VisionTransformer`` is the input
(:class:`~aqqua_geo.foundation.packing.PackedBatch`: several images per row, block-diagonal
attention mask, one CLS + registers per image), the physical position embedding and the
stochastic depth, which drops residual branches per *image* rather than per packed row.

Model config (the ``model:`` block of a pretraining YAML; defaults: the packaged
``configs/default.yaml``, read into ``MODEL_DEFAULTS``):

``arch``
    ``vit_tiny`` (192/12/3) | ``vit_small`` (384/12/6) | ``vit_base`` (768/12/12) |
    ``vit_large`` (1024/24/16) | ``vit_giant`` (1536/40/24, DINOv2's ViT-g); or set
    ``embed_dim``, ``depth``, ``num_heads`` explicitly (they override the arch).
``patch_size``
    Patch side in px (16; the tiny config uses 8 on small images).
``in_chans``
    1 (grey plankton images) or 3.
``pos_embed``
    ``physical`` (sin-cos of patch centre in µm / ``pos_ref_um``) | ``learned`` (a table
    interpolated per image as DINOv2) | ``learned+physical`` (both; the µm term starts at 0) |
    ``gated_physical`` (the µm term alone, starting at 0: with RoPE, DINOv3 warm starts).
``rope_base``
    null, or the base of DINOv3's 2-D rotary embedding of queries/keys (100 in DINOv3); see
    :mod:`~aqqua_geo.foundation.rope`.
``norm_eps``
    LayerNorm epsilon (1e-6 as DINOv2; DINOv3 uses 1e-5).
``pos_embed_grid``
    Side of a learned table (null: √max_tokens_per_image; public DINOv2 weights: 37).
``pos_ref_um``
    Reference length (µm) that maps physical position to sin-cos phase.
``max_tokens_per_image``
    Patch budget of one image; larger images are resized down (aspect kept, never up).
``num_register_tokens``
    Extra learned prefix tokens per image (Darcet et al. 2024), 0 to disable.
``drop_path_rate``, ``drop_path_uniform``
    Stochastic depth (per image); uniform over blocks or linearly increasing.
``layerscale``
    LayerScale init value (1e-5 in DINOv2); null or 0 disables.
``mlp_ratio``, ``ffn_layer`` (``mlp`` | ``swiglu``), ``qkv_bias``
    Block details.
``grad_checkpointing``
    Recompute blocks in backward to save activation memory.
``attention``
    ``auto`` (block-sparse FlexAttention on CUDA, dense elsewhere) | ``dense`` | ``flex``;
    see :mod:`~aqqua_geo.foundation.attention`.
``img_mean``, ``img_std``
    Per-channel normalisation of [0, 1] images, stored with the backbone so that
    :func:`~aqqua_geo.foundation.embed.embed_images` normalises as in training.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from aqqua_geo._compat import import_timm
from aqqua_geo.foundation.attention import BACKENDS, attention_bias, packed_attention, resolve_backend
from aqqua_geo.foundation.config import packaged_defaults
from aqqua_geo.foundation.packing import PackedBatch, PackedLayout
from aqqua_geo.foundation.pos_embed import POS_EMBEDS, build_pos_embed
from aqqua_geo.foundation.rope import RotaryEmbedding2D

ARCHS: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_giant": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}

#: the ``model:`` block of the packaged default.yaml, less ``init`` (where weights come from,
#: not an architecture key; see train.pretrain)
MODEL_DEFAULTS: dict[str, Any] = {k: v for k, v in packaged_defaults("model").items() if k != "init"}


def resolve_model_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and the arch sizes; reject unknown keys and bad values by name."""
    model_cfg = {k: v for k, v in model_cfg.items() if k != "init"}  # weights' origin, not architecture
    unknown = sorted(set(model_cfg) - set(MODEL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(MODEL_DEFAULTS)}")
    cfg = {**copy.deepcopy(MODEL_DEFAULTS), **copy.deepcopy(model_cfg)}
    if cfg["arch"] not in ARCHS:
        raise ValueError(f"model.arch must be one of {sorted(ARCHS)}, got {cfg['arch']!r}")
    for key, value in ARCHS[cfg["arch"]].items():
        if cfg[key] is None:
            cfg[key] = value
    if cfg["embed_dim"] % cfg["num_heads"]:
        raise ValueError(f"model.embed_dim={cfg['embed_dim']} is not divisible by num_heads={cfg['num_heads']}")
    for key in ("img_mean", "img_std"):
        value = cfg[key]
        cfg[key] = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if len(cfg[key]) == 1:
            cfg[key] = cfg[key] * cfg["in_chans"]
        if len(cfg[key]) != cfg["in_chans"]:
            raise ValueError(f"model.{key} has {len(cfg[key])} values for in_chans={cfg['in_chans']}")
    if any(s <= 0 for s in cfg["img_std"]):
        raise ValueError(f"model.img_std must be > 0, got {cfg['img_std']}")
    if cfg["in_chans"] not in (1, 3):
        raise ValueError(f"model.in_chans must be 1 or 3, got {cfg['in_chans']}")
    if cfg["pos_embed"] not in POS_EMBEDS:
        raise ValueError(f"model.pos_embed must be one of {POS_EMBEDS}, got {cfg['pos_embed']!r}")
    if cfg["attention"] not in BACKENDS:
        raise ValueError(f"model.attention must be one of {BACKENDS}, got {cfg['attention']!r}")
    if cfg["ffn_layer"] not in ("mlp", "swiglu"):
        raise ValueError(f"model.ffn_layer must be 'mlp' or 'swiglu', got {cfg['ffn_layer']!r}")
    if cfg["max_tokens_per_image"] < 1 or cfg["patch_size"] < 1:
        raise ValueError("model.max_tokens_per_image and model.patch_size must be >= 1")
    if cfg["rope_base"] is not None and not float(cfg["rope_base"]) > 0:
        raise ValueError(f"model.rope_base must be null or > 0, got {cfg['rope_base']}")
    if not float(cfg["norm_eps"]) > 0:
        raise ValueError(f"model.norm_eps must be > 0, got {cfg['norm_eps']}")
    if not 0.0 <= cfg["drop_path_rate"] < 1.0:
        raise ValueError(f"model.drop_path_rate must be in [0, 1), got {cfg['drop_path_rate']}")
    return cfg


class PackedBlock(nn.Module):
    """Pre-norm transformer block (timm layers) with per-image stochastic depth.

    Parameter names follow timm's ``Block`` (``norm1``, ``attn.qkv``, ``ls1.gamma``, ...).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 layerscale: float | None, drop_path: float, ffn_layer: str, norm_eps: float = 1e-6) -> None:
        super().__init__()
        layers = import_timm().layers
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = layers.Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = layers.LayerScale(dim, init_values=layerscale) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        if ffn_layer == "swiglu":
            # DINOv2's SwiGLU keeps the parameter count of the GELU MLP: hidden * 2/3.
            self.mlp = layers.SwiGLU(dim, hidden_features=(int(hidden * 2 / 3) + 7) // 8 * 8)
        else:
            self.mlp = layers.Mlp(dim, hidden_features=hidden)
        self.ls2 = layers.LayerScale(dim, init_values=layerscale) if layerscale else nn.Identity()
        self.drop_path = drop_path

    def forward(self, x: Tensor, attn_bias: Any, branch_scale: Tensor | None = None,
                backend: str = "dense", rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``attn_bias`` from :func:`~aqqua_geo.foundation.attention.attention_bias`;
        ``branch_scale`` ``(R, L, 1)``: per-token residual-branch factor (0 or 1/keep);
        ``rope``: per-slot rotary ``(sin, cos)``, or None."""
        a = self.ls1(packed_attention(self.attn, self.norm1(x), attn_bias, backend, rope))
        x = x + (a if branch_scale is None else a * branch_scale[0])
        m = self.ls2(self.mlp(self.norm2(x)))
        return x + (m if branch_scale is None else m * branch_scale[1])


class PlanktonViT(nn.Module):
    """ViT over :class:`PackedBatch` input; see the module docstring for the config keys.

    ``forward(packed, masks=None)`` returns ``cls`` ``(n_images, D)``, ``patch``
    ``(n_real_tokens, D)`` (image-major, the order of ``packed.patches``) and ``pooled``
    ``(n_images, D)`` (mean of each image's patch tokens), all after the final LayerNorm.
    ``masks`` (bool, ``(n_real_tokens,)``) replaces those patch embeddings by the learned
    mask token (iBOT student input).
    """

    def __init__(self, model_cfg: dict[str, Any]) -> None:
        super().__init__()
        cfg = resolve_model_cfg(model_cfg)
        self.cfg = cfg
        d, depth = cfg["embed_dim"], cfg["depth"]
        self.embed_dim = d
        self.patch_size = cfg["patch_size"]
        self.in_chans = cfg["in_chans"]
        self.max_tokens_per_image = cfg["max_tokens_per_image"]
        self.num_register_tokens = cfg["num_register_tokens"]
        self.num_prefix_tokens = 1 + self.num_register_tokens
        self.grad_checkpointing = bool(cfg["grad_checkpointing"])

        self.patch_embed = nn.Module()
        # A Linear on flattened (C, p, p) patches == Conv2d(kernel=stride=p) on the image.
        self.patch_embed.proj = nn.Linear(self.in_chans * self.patch_size**2, d)
        self.pos_embed = build_pos_embed(cfg["pos_embed"], d, cfg["pos_ref_um"], cfg["max_tokens_per_image"],
                                         cfg["pos_embed_grid"])
        self.cls_token = nn.Parameter(torch.zeros(1, d))
        self.register_tokens = nn.Parameter(torch.zeros(self.num_register_tokens, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.rope = (RotaryEmbedding2D(d // cfg["num_heads"], cfg["rope_base"])
                     if cfg["rope_base"] is not None else None)
        rates = ([cfg["drop_path_rate"]] * depth if cfg["drop_path_uniform"]
                 else torch.linspace(0, cfg["drop_path_rate"], depth).tolist())
        self.blocks = nn.ModuleList(
            PackedBlock(d, cfg["num_heads"], cfg["mlp_ratio"], cfg["qkv_bias"], cfg["layerscale"] or None,
                        rate, cfg["ffn_layer"], cfg["norm_eps"])
            for rate in rates
        )
        self.norm = nn.LayerNorm(d, eps=cfg["norm_eps"])
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.num_register_tokens:
            nn.init.trunc_normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm-style switch for activation checkpointing of the blocks."""
        self.grad_checkpointing = enable

    def _branch_scales(self, block: PackedBlock, layout: PackedLayout, n_images: int, device) -> Tensor | None:
        """Per-image stochastic-depth factors for the two residual branches of ``block``."""
        if not self.training or block.drop_path == 0.0:
            return None
        keep_prob = 1.0 - block.drop_path
        keep = torch.bernoulli(torch.full((2, n_images + 1), keep_prob, device=device)) / keep_prob
        keep[:, -1] = 0.0  # segment -1 (padding) indexes the last column
        return keep[:, layout.segment].unsqueeze(-1)

    def forward(self, packed: PackedBatch, masks: Tensor | None = None) -> dict[str, Tensor]:
        if packed.in_chans != self.in_chans or packed.patch_size != self.patch_size:
            raise ValueError(
                f"PackedBatch has in_chans={packed.in_chans}, patch_size={packed.patch_size}; "
                f"the model expects {self.in_chans}, {self.patch_size}"
            )
        backend = resolve_backend(self.cfg["attention"], packed.device)
        layout = packed.layout(self.num_prefix_tokens, single_row=backend == "flex")
        x = self.patch_embed.proj(packed.patches.to(self.patch_embed.proj.weight.dtype))
        if masks is not None:
            if masks.shape != (packed.n_tokens,) or masks.dtype != torch.bool:
                raise ValueError(
                    f"masks must be a bool tensor of shape ({packed.n_tokens},), got {masks.dtype} {tuple(masks.shape)}"
                )
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = x + self.pos_embed(packed).to(x.dtype)
        prefix = torch.cat([self.cls_token, self.register_tokens]).to(x.dtype)

        seq = x.new_zeros(layout.n_rows, layout.row_length, self.embed_dim)
        seq = seq.index_put((layout.token_row, layout.token_slot), x)
        seq = seq.index_put((layout.prefix_row, layout.prefix_slot), prefix.repeat(packed.n_images, 1))
        if backend == "flex" and seq.device.type == "cpu" and torch.is_grad_enabled() and self.training:
            raise ValueError("model.attention=flex: FlexAttention has no CPU backward in torch; "
                             "train on CPU with attention auto or dense")
        attn_bias = attention_bias(layout.segment, backend)
        rope = None if self.rope is None else self.rope(packed, layout)
        for block in self.blocks:
            scales = self._branch_scales(block, layout, packed.n_images, seq.device)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                seq = checkpoint(block, seq, attn_bias, scales, backend, rope, use_reentrant=False)
            else:
                seq = block(seq, attn_bias, scales, backend, rope)
        seq = self.norm(seq)

        patch = seq[layout.token_row, layout.token_slot]
        cls = seq[layout.image_row, layout.image_start]
        counts = packed.tokens_per_image.to(patch.dtype).unsqueeze(-1)
        pooled = patch.new_zeros(packed.n_images, self.embed_dim).index_add(0, packed.image_index, patch) / counts
        return {"cls": cls, "patch": patch, "pooled": pooled}


def build_backbone(model_cfg: dict[str, Any]) -> PlanktonViT:
    """Build a randomly initialised :class:`PlanktonViT` from a ``model:`` config dict."""
    return PlanktonViT(model_cfg)
