"""Self-attention over packed rows: dense with a block-diagonal mask, or block-sparse.

Several images share a packed row and may only attend within themselves. ``dense`` runs
``scaled_dot_product_attention`` on the whole row with a boolean block-diagonal mask: every
row costs L², so packing saves no attention FLOPs. ``flex`` runs FlexAttention with a
``BlockMask`` built from the images' segment ids: tiles of the score matrix that lie outside
every image are skipped, so the cost scales with Σ lᵢ² (compiled with ``torch.compile`` on
CUDA; on CPU the eager FlexAttention is a reference implementation, so ``auto`` keeps
``dense`` there). Both give the same output (tested to 1e-5).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aqqua_geo.foundation.rope import apply_rope

BACKENDS = ("auto", "dense", "flex")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` → ``flex`` on CUDA (where FlexAttention compiles), ``dense`` elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"model.attention must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "flex" if device.type == "cuda" and _flex_available() else "dense"
    return backend


@functools.cache
def _flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attention_bias(segment: Tensor, backend: str) -> Any:
    """What :func:`packed_attention` needs for rows whose slots carry *segment* ids (-1 = padding).

    Padding slots attend to each other only, so no softmax row is empty.
    """
    if backend == "dense":
        return (segment[:, :, None] == segment[:, None, :]).unsqueeze(1)
    from torch.nn.attention.flex_attention import create_block_mask

    def same_image(b, h, q_idx, kv_idx):
        return segment[b, q_idx] == segment[b, kv_idx]

    rows, length = segment.shape
    return create_block_mask(same_image, rows, None, length, length, device=segment.device)


def packed_attention(attn: nn.Module, x: Tensor, bias: Any, backend: str,
                     rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """timm ``Attention`` (its ``qkv``/``proj``/norm weights) over packed rows ``(R, L, D)``;
    *rope*: per-slot ``(sin, cos)`` of :class:`~aqqua_geo.foundation.rope.RotaryEmbedding2D`
    applied to queries and keys."""
    rows, length, dim = x.shape
    qkv = attn.qkv(x).reshape(rows, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    if backend == "dense":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        from torch.nn.attention.flex_attention import flex_attention

        flex = _compiled_flex() if x.is_cuda else flex_attention
        out = flex(q, k, v, block_mask=bias)
    out = out.transpose(1, 2).reshape(rows, length, -1)
    return attn.proj(attn.norm(out))
