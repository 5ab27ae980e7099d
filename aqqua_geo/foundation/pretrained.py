"""Warm start from public foundation weights: official DINOv2 and DINOv3 checkpoints, timm ViTs.

Recognised by key layout (never by file name), the architecture inferred from the tensor
shapes, and converted to a :class:`~aqqua_geo.foundation.vit.PlanktonViT`:

- **DINOv2** (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` from facebookresearch/dinov2, or
  the ``teacher``/``student`` backbone of a DINOv2 training checkpoint): ``cls_token``,
  ``pos_embed`` ``(1, 1 + M², D)``, ``register_tokens``, ``mask_token``, ``blocks.i.*``
  (also chunked ``blocks.c.i.*``), SwiGLU ``mlp.w12``/``mlp.w3`` for ViT-g;
- **DINOv3** ViTs (``dinov3_vit{s16,s16plus,b16,l16,h16plus}_pretrain_*.pth`` from
  facebookresearch/dinov3): ``storage_tokens``, ``rope_embed.periods``, no ``pos_embed``,
  ``attn.qkv.bias`` with its ``bias_mask`` (the key bias is masked to zero), SwiGLU
  ``mlp.w1``/``w2``/``w3`` for the "plus" models, LayerNorm eps 1e-5. The 2-D RoPE is
  :mod:`~aqqua_geo.foundation.rope` (``model.rope_base``), with the checkpoint's own periods.
  ViT-7B's untied CLS/patch norms are refused;
- **timm** ``VisionTransformer`` state dicts (``reg_token``, ``pos_embed`` with or without the
  class position, ``head``/``fc_norm`` ignored).

Conversion, chosen so that the converted model computes *exactly* the public model:

- the class-token position ``pos_embed[:, 0]`` is folded into ``cls_token`` (it is constant);
- patch positions stay a learned table, interpolated to each image's grid as DINOv2 does
  (bicubic, ``scale_factor=(g + 0.1)/M``), plus the project's µm position code through a
  zero-initialised gain (``pos_embed: learned+physical``; DINOv3: RoPE plus the gated µm code,
  ``gated_physical``), so training starts at the public model and can learn to use physical size;
- grey input (``in_chans=1``): the RGB patch-embedding weights are divided by the per-channel
  ImageNet std and summed over channels, and the per-channel mean is folded into the bias,
  so that a grey image gives what the public model gives on that image replicated on three
  channels with ImageNet normalisation; the model then normalises with mean 0 and std 1.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aqqua_geo.foundation.vit import PlanktonViT

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "detect_format", "load_pretrained_backbone", "pretrained_model_cfg",
           "read_state_dict", "convert_state_dict", "warm_start"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keys of the model config that a public checkpoint fixes (the rest stays the user's).
ARCH_KEYS = ("arch", "embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "ffn_layer", "qkv_bias",
             "layerscale", "num_register_tokens", "pos_embed", "pos_embed_grid", "img_mean", "img_std",
             "rope_base", "norm_eps")
#: DINOv3's RoPE base (``RopePositionEmbedding(base=100)``); the periods themselves are read
#: from the checkpoint, so this only matters for a checkpoint that does not store them
DINOV3_ROPE_BASE = 100.0
#: patch budget of a converted RoPE model, which has no table to take it from (512 px / 16)
DINOV3_MAX_TOKENS = 32 * 32
_WRAPPERS = ("teacher", "student", "model", "state_dict", "module")
_PREFIXES = ("module.", "backbone.", "teacher.backbone.", "student.backbone.", "encoder.")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, unwrapped from training containers; ``weights_only`` load."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path))
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for _ in range(3):  # {"teacher": {"backbone.x": ...}}, {"model": ...}, ...
        if isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no tensor state dict found")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state) and "cls_token" not in state:
            keep = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if "cls_token" in keep:
                state = keep
    # chunked blocks (FSDP training checkpoints): blocks.<chunk>.<i>.x -> blocks.<i>.x
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}


def detect_format(state: dict[str, Tensor]) -> str:
    """``dinov2`` | ``timm`` | ``dinov3`` from the key layout; ValueError otherwise."""
    is_dinov3 = "storage_tokens" in state or any(k.startswith("rope_embed") for k in state)
    if "cls_token" not in state or "patch_embed.proj.weight" not in state or "blocks.0.attn.qkv.weight" not in state:
        raise ValueError("not a ViT checkpoint of a known layout (needs cls_token, patch_embed.proj.weight, "
                         "blocks.0.attn.qkv.weight): DINOv2, DINOv3 or a timm VisionTransformer")
    if is_dinov3:
        return "dinov3"
    if "mask_token" in state or "register_tokens" in state:
        return "dinov2"
    return "timm"


def _registers(state: dict[str, Tensor]) -> Tensor | None:
    for key in ("register_tokens", "reg_token", "storage_tokens"):
        if key in state:
            return state[key]
    return None


def pretrained_model_cfg(state: dict[str, Tensor], in_chans: int = 1) -> dict[str, Any]:
    """The ``model:`` keys of a public ViT checkpoint, inferred from its tensor shapes."""
    fmt = detect_format(state)
    if "cls_norm.weight" in state:
        raise ValueError("checkpoint has separate CLS and patch norms (DINOv3 ViT-7B "
                         "untie_cls_and_patch_norms), which PlanktonViT does not implement")
    dim = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if "blocks.0.mlp.w12.weight" in state:
        ffn, hidden = "swiglu", int(state["blocks.0.mlp.w12.weight"].shape[0]) // 2
        mlp_ratio = 4.0  # SwiGLU keeps the MLP's parameter count: hidden = 2/3 · 4 · dim, 8-aligned
        if (int(4 * dim * 2 / 3) + 7) // 8 * 8 != hidden:
            raise ValueError(f"SwiGLU hidden width {hidden} is not DINOv2's for dim {dim}")
    elif "blocks.0.mlp.w1.weight" in state or "blocks.0.mlp.fc1_g.weight" in state:
        # DINOv3 "plus" (w1/w2/w3) or timm (fc1_g/fc1_x/fc2) SwiGLU: the ratio whose 2/3 is the width
        hidden = int(state.get("blocks.0.mlp.w1.weight", state.get("blocks.0.mlp.fc1_g.weight")).shape[0])
        ffn, mlp_ratio = "swiglu", hidden * 1.5 / dim
        if (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8 != hidden:
            raise ValueError(f"SwiGLU hidden width {hidden} cannot be expressed as an mlp_ratio for dim {dim}")
    else:
        ffn, mlp_ratio = "mlp", int(state["blocks.0.mlp.fc1.weight"].shape[0]) / dim
    if fmt == "dinov3":
        grid = None
        periods = state.get("rope_embed.periods")
        head_dim = 4 * int(periods.numel()) if periods is not None else 64
    else:
        n_pos = int(state["pos_embed"].shape[1]) if "pos_embed" in state else 0
        grid = math.isqrt(n_pos - 1) if n_pos and math.isqrt(n_pos - 1) ** 2 == n_pos - 1 else math.isqrt(n_pos)
        if grid * grid not in (n_pos, n_pos - 1):
            raise ValueError(f"pos_embed has {n_pos} positions: not a square grid (+ class token)")
        head_dim = 64
    if dim % head_dim:
        raise ValueError(f"embed_dim {dim} is not a multiple of the head width {head_dim}")
    regs = _registers(state)
    layerscale = 1.0 if "blocks.0.ls1.gamma" in state else None  # values come from the checkpoint
    arch = {384: "vit_small", 768: "vit_base", 1024: "vit_large", 1536: "vit_giant"}.get(dim, "vit_small")
    return {
        "arch": arch, "embed_dim": dim, "depth": depth, "num_heads": max(dim // head_dim, 1), "patch_size": patch,
        "mlp_ratio": mlp_ratio, "ffn_layer": ffn, "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "layerscale": layerscale, "num_register_tokens": 0 if regs is None else int(regs.shape[1]),
        "pos_embed": "gated_physical" if fmt == "dinov3" else "learned+physical", "pos_embed_grid": grid,
        "rope_base": DINOV3_ROPE_BASE if fmt == "dinov3" else None, "norm_eps": 1e-5 if fmt == "dinov3" else 1e-6,
        "in_chans": in_chans,
        "img_mean": [0.0] if in_chans == 1 else list(IMAGENET_MEAN),
        "img_std": [1.0] if in_chans == 1 else list(IMAGENET_STD),
    }


def convert_state_dict(state: dict[str, Tensor], model: PlanktonViT) -> dict[str, Tensor]:
    """Public ViT tensors → a state dict of *model* (built from :func:`pretrained_model_cfg`)."""
    out: dict[str, Tensor] = {}
    dim = model.embed_dim
    pos = state.get("pos_embed")
    grid = model.cfg["pos_embed_grid"]
    cls = state["cls_token"].reshape(1, dim).float()
    if pos is not None:
        if pos.shape[1] == grid * grid + 1:
            cls = cls + pos[0, :1].float()  # the class token's position is a constant: fold it in
            pos = pos[:, 1:]
        out["pos_embed.pos_embed"] = pos.reshape(1, grid * grid, dim).float()
    out["cls_token"] = cls
    regs = _registers(state)
    out["register_tokens"] = torch.zeros(0, dim) if regs is None else regs.reshape(-1, dim).float()
    out["mask_token"] = (state["mask_token"].reshape(1, dim).float() if "mask_token" in state
                         else model.mask_token.detach().clone())
    w = state["patch_embed.proj.weight"].float()  # (D, 3, p, p)
    b = state["patch_embed.proj.bias"].float() if "patch_embed.proj.bias" in state else torch.zeros(dim)
    if model.in_chans == 1 and w.shape[1] == 3:
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        b = b - (w * mean / std).sum(dim=(1, 2, 3))
        w = (w / std).sum(dim=1, keepdim=True)
    elif w.shape[1] != model.in_chans:
        raise ValueError(f"checkpoint patch embedding takes {w.shape[1]} channels, the model {model.in_chans}")
    out["patch_embed.proj.weight"] = w.reshape(dim, -1)
    out["patch_embed.proj.bias"] = b
    renames = {"mlp.w1.": "mlp.fc1_g.", "mlp.w2.": "mlp.fc1_x.", "mlp.w3.": "mlp.fc2."}  # DINOv3 SwiGLU
    for key, value in state.items():
        m = re.match(r"(blocks\.\d+\.)(.*)", key)
        if m:
            name = m.group(2)
            if name.endswith("attn.qkv.bias_mask"):
                continue  # applied to the bias below
            if name.endswith("attn.qkv.bias") and key + "_mask" in state:
                # DINOv3's LinearKMaskedBias: the key third of the bias is multiplied by 0
                mask = torch.nan_to_num(state[key + "_mask"].float(), nan=1.0)
                out[key] = value.float() * mask
            elif name.startswith("mlp.w12."):
                half = value.shape[0] // 2
                suffix = name.split(".")[-1]
                out[f"{m.group(1)}mlp.fc1_g.{suffix}"] = value[:half].float()
                out[f"{m.group(1)}mlp.fc1_x.{suffix}"] = value[half:].float()
            elif model.cfg["ffn_layer"] == "swiglu" and any(name.startswith(a) for a in renames):
                prefix = next(a for a in renames if name.startswith(a))
                out[f"{m.group(1)}{renames[prefix]}{name[len(prefix):]}"] = value.float()
            else:
                out[key] = value.float()
        elif key.startswith("norm."):
            out[key] = value.float()
        elif key == "rope_embed.periods":
            out["rope.periods"] = value.float()  # the published (bfloat16-rounded) periods, kept as they are
    expected = model.state_dict()
    for key, value in expected.items():  # parameters the public model has no counterpart of
        if key not in out and key.startswith("pos_embed.") and key != "pos_embed.pos_embed":
            out[key] = value  # zero-initialised µm gain
        elif key not in out and key == "rope.periods":
            out[key] = value  # a checkpoint without stored periods: DINOv3's base-100 schedule
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the inferred architecture: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    for key, value in out.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
    return out


def _public_backbone(state: dict[str, Tensor], model_cfg: dict[str, Any]) -> PlanktonViT:
    """A PlanktonViT holding a public checkpoint's tensors: architecture from *state*, every
    other model key from *model_cfg* (``max_tokens_per_image`` defaults to the table's grid)."""
    cfg = {k: v for k, v in model_cfg.items() if k not in ARCH_KEYS and k != "init"}
    cfg.update(pretrained_model_cfg(state, int(model_cfg.get("in_chans", 1))))
    cfg.setdefault("max_tokens_per_image", cfg["pos_embed_grid"] ** 2 if cfg["pos_embed_grid"] else DINOV3_MAX_TOKENS)
    model = PlanktonViT(cfg)
    model.load_state_dict(convert_state_dict(state, model), strict=True)
    return model


def warm_start(model_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Model config and backbone state dict for ``model.init`` (see the module docstring).

    ``model.init`` may be an aqqua ``backbone.pt`` (its own config and weights are taken) or
    a public checkpoint (architecture from its shapes; *model_cfg*'s non-architecture keys,
    e.g. ``in_chans``, ``max_tokens_per_image``, ``drop_path_rate``, are kept).
    """
    path = Path(model_cfg["init"])
    is_torch_file = path.is_file() and path.suffix != ".safetensors"
    payload = torch.load(path, map_location="cpu", weights_only=True) if is_torch_file else None
    if isinstance(payload, dict) and "model_cfg" in payload and "state_dict" in payload:
        cfg = {**payload["model_cfg"], **{k: model_cfg[k] for k in ("drop_path_rate", "drop_path_uniform",
                                                                     "grad_checkpointing") if k in model_cfg}}
        return cfg, dict(payload["state_dict"])
    model = _public_backbone(read_state_dict(path), model_cfg)
    return model.cfg, model.state_dict()


def load_pretrained_backbone(path: str | os.PathLike, in_chans: int = 1,
                             device: str | torch.device = "cpu") -> PlanktonViT:
    """A :class:`PlanktonViT` holding the weights of a public checkpoint (see the module
    docstring), for *in_chans* input channels, in eval mode on *device*."""
    state = read_state_dict(path)  # its errors name the file already
    try:
        model = _public_backbone(state, {"in_chans": in_chans})
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return model.to(device).eval()
