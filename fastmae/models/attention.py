"""Scaled dot-product attention with a choice of backend.

Backends (``attn_backend``):

- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``; torch picks its flash,
  cuDNN or memory-efficient kernel on CUDA and its flash-attention kernel on CPU. Never
  materialises the (N, heads, L, L) score matrix.
- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` behind the ``fastmae::xformers_attention``
  custom op (see :mod:`fastmae.models._xformers_op`), so ``torch.compile`` traces it with no
  graph break. CUDA only: xformers has no CPU kernels, and a clear error says so.
- ``"math"``: the explicit ``softmax(q k^T * scale) v`` of the official code (the score matrix is
  materialised), with the softmax computed in float32 under autocast.
- ``"auto"`` (default): ``"sdpa"`` on every device. On CPU too: torch's CPU flash kernel agrees
  with the explicit softmax to float32 rounding and needs no (L, L) buffer.

Layouts: :func:`attention` takes q, k, v as (N, heads, L, hd) (the SDPA layout) or, for xformers,
(N, L, heads, hd) (its native BMHK layout, so the qkv projection needs no permute).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

AttnBackend = Literal["auto", "sdpa", "xformers", "math"]
ATTN_BACKENDS: tuple[str, ...] = get_args(AttnBackend)


def resolve_attn_backend(attn_backend: str) -> str:
    """Validate ``attn_backend`` and resolve ``"auto"``; returns "sdpa", "xformers" or "math".

    "xformers" is checked here for importability so a missing package fails at construction.
    """
    if not isinstance(attn_backend, str) or attn_backend not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend must be one of {', '.join(map(repr, ATTN_BACKENDS))}, got {attn_backend!r}")
    if attn_backend == "auto":
        return "sdpa"
    if attn_backend == "xformers":
        from fastmae.models._xformers_op import require_xformers

        require_xformers()
    return attn_backend


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, h, L, hd) x3 -> (N, h, L, hd): the official explicit softmax, softmax in float32."""
    scores = (q @ k.transpose(-2, -1)) * scale
    # dtype=float32 is a no-op for float32 scores and keeps half-precision softmax statistics exact
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype) @ v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, scale: float) -> torch.Tensor:
    """Attention of resolved ``backend`` ("sdpa", "math": (N, h, L, hd); "xformers": (N, L, h, hd))."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if backend == "math":
        return math_attention(q, k, v, scale)
    if backend == "xformers":
        from fastmae.models._xformers_op import xformers_attention

        return xformers_attention(q, k, v, scale)
    raise ValueError(f"unresolved attention backend {backend!r}")
