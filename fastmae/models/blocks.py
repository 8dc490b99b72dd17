"""Transformer pieces of the fast MAE, with the official parameter names.

Same modules, names, shapes and construction order as :mod:`fastmae.reference` (so a given seed
builds the same weights), with a choice of attention backend and float32 LayerNorm statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastmae.models.attention import attention
from fastmae.models.configs import LAYER_NORM_EPS
from fastmae.models.layers import Mlp


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics are always float32; returns the input's dtype.

    Under CPU autocast torch would run layer_norm in bfloat16; this keeps the statistics float32 in
    every mode. For float32 inputs and weights (``.float()`` is then a no-op) it is plain ``nn.LayerNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.amp.is_autocast_available(x.device.type):  # e.g. meta tensors: nothing to disable
            return self._float32_layer_norm(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._float32_layer_norm(x)

    def _float32_layer_norm(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention: (N, L, dim) -> (N, L, dim); qkv rows are [q | k | v], heads contiguous."""

    def __init__(self, dim: int, num_heads: int, backend: str) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.backend = backend  # resolved: "sdpa", "xformers" or "math"
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        if self.backend == "xformers":
            q, k, v = qkv.unbind(2)  # (N, L, heads, hd): xformers' layout, no permute
            out = attention(q, k, v, self.backend, self.scale)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, L, hd)
            out = attention(q, k, v, self.backend, self.scale).transpose(1, 2)
        return self.proj(out.reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, backend: str) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, backend)
        self.norm2 = LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
