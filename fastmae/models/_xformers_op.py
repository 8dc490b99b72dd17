"""xformers' memory-efficient attention as a ``torch.library`` custom op.

``torch.compile`` cannot trace into xformers' own autograd.Function and dispatcher, so the
forward and the backward are each one opaque custom op with a fake (shape-only) implementation,
joined by ``register_autograd``. The forward returns the log-sum-exp that xformers' backward
needs, so the backward does not recompute attention.

Schemas (q, k, v in xformers' BMHK layout (N, L, heads, hd)):

- ``fastmae::xformers_attention(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor out, Tensor lse)``,
  out (N, L, heads, hd) in q's dtype, lse (N, heads, L) float32.
- ``fastmae::xformers_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out,
  Tensor lse, float scale) -> (Tensor dq, Tensor dk, Tensor dv)``.

This module imports xformers only inside the op bodies and :func:`require_xformers`.
"""

from __future__ import annotations

from typing import Any

import torch

_CPU_MESSAGE = (
    "attn_backend='xformers' needs CUDA tensors: xformers' memory_efficient_attention has no CPU kernels "
    "(it raises NotImplementedError for them). Use attn_backend='sdpa' or 'auto' on CPU."
)


def require_xformers() -> None:
    """Raise a clear ImportError when xformers is not installed."""
    try:
        import xformers.ops  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "attn_backend='xformers' needs the xformers package (pip install 'fastmae[xformers]'), "
            f"but importing it failed: {error}"
        ) from error


def _kernels_missing(error: NotImplementedError) -> RuntimeError:
    return RuntimeError(
        "xformers found no memory_efficient_attention kernel for these inputs: its compiled kernels may not "
        f"match this torch ({torch.__version__}) or this GPU. Use attn_backend='sdpa'. xformers said: {error}"
    )


@torch.library.custom_op("fastmae::xformers_attention", mutates_args=())
def _xformers_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    import xformers.ops as xops

    try:
        out, lse = xops.memory_efficient_attention_forward_requires_grad(q, k, v, scale=scale)
    except NotImplementedError as error:
        raise _kernels_missing(error) from error
    # some kernels pad the lse's sequence dim (to a multiple of 32); every backward accepts the exact length
    return out, lse[:, :, : q.shape[1]].float().contiguous()


@_xformers_forward.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length, heads, _ = q.shape
    out = q.new_empty((batch, length, heads, v.shape[-1]))
    return out, q.new_empty((batch, heads, length), dtype=torch.float32)


@torch.library.custom_op("fastmae::xformers_attention_backward", mutates_args=())
def _xformers_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import xformers.ops as xops

    try:
        grads = xops.memory_efficient_attention_backward(grad_out.contiguous(), out, lse, q, k, v, scale=scale)
    except NotImplementedError as error:
        raise _kernels_missing(error) from error
    # a custom op's outputs must not share memory; xformers may return views of one packed buffer
    storages = [g.untyped_storage().data_ptr() for g in grads]
    if len(set(storages)) < len(storages):
        grads = tuple(g.clone() for g in grads)
    return grads


@_xformers_backward.register_fake
def _(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
      lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx: Any, grad_out: torch.Tensor, _grad_lse: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _xformers_backward(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_xformers_forward.register_autograd(_backward, setup_context=_setup_context)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, L, heads, hd) x3 -> (N, L, heads, hd) through xformers; CUDA tensors only."""
    if q.device.type not in ("cuda", "meta"):  # meta: shape-only tracing
        raise RuntimeError(_CPU_MESSAGE)
    return _xformers_forward(q, k, v, float(scale))[0]
