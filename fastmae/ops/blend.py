"""``mask_token_blend``: SimMIM-style masking, every token kept and the masked ones replaced by a learned token.

out[b, l, :] = x[b, l, :] * (1 - w[b, l]) + mask_token[0, 0, :] * w[b, l],   w = mask.

Op schemas (there is no native-extension version of this op: CPU tensors always take the PyTorch path
unless ``FASTMAE_BACKEND=triton`` forces the kernels; a native implementation would mirror these)::

    fastmae::mask_token_blend(Tensor x, Tensor mask, Tensor mask_token) -> Tensor
    fastmae::mask_token_blend_backward(Tensor grad_out, Tensor mask, ScalarType x_dtype,
                                       ScalarType token_dtype) -> (Tensor, Tensor)

- x (B, L, D), float32 / bfloat16 / float16, any strides.
- mask (B, L): bool, or float (float32 / bfloat16 / float16), 1 = replace by the token, 0 = keep x.
  A bool mask is exactly a 0/1 float mask. Fractional values blend: the formula above is evaluated in
  float32 (x, w and the token upcast exactly) and rounded once to the output dtype. With 0/1 values this
  is bitwise what plain PyTorch's ``x * (1 - mask) + mask_token * mask`` gives (including NaN/inf
  propagation and the sign of zeros), since every intermediate is exact. Values outside [0, 1]
  extrapolate by the same formula (no check; it would cost a host sync).
- mask_token (1, 1, D), float.
- output (B, L, D), contiguous, in PyTorch's type promotion of that expression:
  ``promote_types(x.dtype, mask_token.dtype)``, further promoted with mask.dtype when the mask is float
  (a bool mask does not take part). E.g. bf16 x with a float32 mask_token parameter gives float32, as
  plain PyTorch would; under autocast the op is not autocast (like elementwise mul/add), so the same rule
  holds there: cast mask_token/mask to x's dtype first to stay in bf16.
- backward: grad_x = grad_out * (1 - w) in x's dtype (bitwise autograd's result for 0/1 masks: a pure
  select of grad_out or a signed zero); grad_mask_token = sum over (B, L) of grad_out * w accumulated in
  float32 and rounded once to mask_token's dtype, deterministic (fixed-order partial sums, no atomics).
  Saves only the mask. The mask gets no gradient: passing one that requires grad is an error.

Kernels: the forward is one program per (block of ROWS token rows, block of BLOCK_D channels). The
backward programs each own a chunk of rows and a block of channels: they write grad_x for their tile and
one float32 partial sum of grad_out * w per channel; a second kernel adds the (chunks, D) partials in a
fixed order into grad_mask_token.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from fastmae._validation import FLOAT_DTYPES, check_float, check_tensor, same_device
from fastmae.ops._backend import kernel_for, new_output
from fastmae.ops._triton_helpers import narrow_fp32

__all__ = ["blend_dtype", "bytes_moved", "mask_token_blend"]

_TILE_ELEMENTS = 4096  # ROWS * BLOCK_D per program
_TARGET_CHUNKS = 256  # row chunks of the backward: enough programs to fill a GPU, few partials to add


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _blend_kernel(
    x_ptr,
    mask_ptr,
    token_ptr,
    out_ptr,
    num_rows,
    seq_len,
    dim,
    x_stride_b,
    x_stride_l,
    x_stride_d,
    mask_stride_b,
    mask_stride_l,
    token_stride_d,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = rows < num_rows
    col_ok = cols < dim
    tile_ok = row_ok[:, None] & col_ok[None, :]
    b = rows // seq_len
    pos = rows % seq_len
    weight = tl.load(mask_ptr + b * mask_stride_b + pos * mask_stride_l, mask=row_ok).to(tl.float32)
    token = tl.load(token_ptr + cols * token_stride_d, mask=col_ok).to(tl.float32)
    x_offsets = (b * x_stride_b + pos * x_stride_l)[:, None] + cols[None, :] * x_stride_d
    x = tl.load(x_ptr + x_offsets, mask=tile_ok).to(tl.float32)
    # the same operations in the same order as x * (1 - w) + token * w
    out = x * (1.0 - weight)[:, None] + token[None, :] * weight[:, None]
    tl.store(out_ptr + rows[:, None] * dim + cols[None, :], narrow_fp32(out, out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _blend_backward_kernel(
    grad_ptr,
    mask_ptr,
    grad_x_ptr,
    partial_ptr,
    num_rows,
    seq_len,
    dim,
    grad_stride_b,
    grad_stride_l,
    grad_stride_d,
    mask_stride_b,
    mask_stride_l,
    ROWS_PER_PROGRAM: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < dim
    token_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(0, ROWS_PER_PROGRAM, ROWS):
        rows = chunk * ROWS_PER_PROGRAM + start + tl.arange(0, ROWS).to(tl.int64)
        row_ok = rows < num_rows
        tile_ok = row_ok[:, None] & col_ok[None, :]
        b = rows // seq_len
        pos = rows % seq_len
        # masked-out rows load w = 0 and grad = 0: they add nothing to the sum
        weight = tl.load(mask_ptr + b * mask_stride_b + pos * mask_stride_l, mask=row_ok, other=0).to(tl.float32)
        # grad strides may be 0 (the gradient of .sum() is an expanded tensor)
        grad_offsets = (b * grad_stride_b + pos * grad_stride_l)[:, None] + cols[None, :] * grad_stride_d
        grad = tl.load(grad_ptr + grad_offsets, mask=tile_ok, other=0).to(tl.float32)
        grad_x = grad * (1.0 - weight)[:, None]
        grad_x = narrow_fp32(grad_x, grad_x_ptr.dtype.element_ty)
        tl.store(grad_x_ptr + rows[:, None] * dim + cols[None, :], grad_x, mask=tile_ok)
        token_sum += tl.sum(grad * weight[:, None], axis=0)
    tl.store(partial_ptr + chunk * dim + cols, token_sum, mask=col_ok)


@triton.jit
def _sum_partials_kernel(
    partial_ptr,
    out_ptr,
    num_chunks,
    dim,
    MAX_CHUNKS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_ok = cols < dim
    total = tl.zeros((BLOCK_D,), dtype=tl.float32)
    # a static loop (MAX_CHUNKS = next power of 2 of num_chunks): few variants, and triton 3.6's interpreter
    # cannot take a runtime loop bound
    for start in range(0, MAX_CHUNKS, BLOCK_C):
        chunks = start + tl.arange(0, BLOCK_C).to(tl.int64)
        tile_ok = (chunks < num_chunks)[:, None] & col_ok[None, :]
        total += tl.sum(tl.load(partial_ptr + chunks[:, None] * dim + cols[None, :], mask=tile_ok, other=0.0), axis=0)
    tl.store(out_ptr + cols, narrow_fp32(total, out_ptr.dtype.element_ty), mask=col_ok)


# ----------------------------------------------------------------------------- launchers


def _tile(dim: int) -> tuple[int, int, int]:
    """BLOCK_D (channels per program, up to 256), ROWS (token rows per tile) and num_warps."""
    block_d = min(triton.next_power_of_2(dim), 256)
    rows = max(1, _TILE_ELEMENTS // block_d)
    return block_d, rows, 4


def _as_weight(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask viewed as uint8 (same bytes, no copy): Triton loads 0/1 bytes and converts them to float."""
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def _launch_forward(x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor, out: torch.Tensor) -> None:
    batch, seq_len, dim = x.shape
    num_rows = batch * seq_len
    block_d, rows, num_warps = _tile(dim)
    grid = (triton.cdiv(num_rows, rows), triton.cdiv(dim, block_d))
    wrap_triton(_blend_kernel)[grid](
        x, _as_weight(mask), mask_token, out, num_rows, seq_len, dim,
        *x.stride(), *mask.stride(), mask_token.stride(2),
        ROWS=rows, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip


def _launch_backward(
    grad_out: torch.Tensor, mask: torch.Tensor, grad_x: torch.Tensor, grad_token: torch.Tensor
) -> None:
    batch, seq_len, dim = grad_out.shape
    num_rows = batch * seq_len
    block_d, rows, num_warps = _tile(dim)
    rows_per_program = max(rows, triton.next_power_of_2(triton.cdiv(num_rows, _TARGET_CHUNKS)))
    num_chunks = triton.cdiv(num_rows, rows_per_program)
    partials = torch.empty((num_chunks, dim), dtype=torch.float32, device=grad_out.device)
    wrap_triton(_blend_backward_kernel)[(num_chunks, triton.cdiv(dim, block_d))](
        grad_out, _as_weight(mask), grad_x, partials, num_rows, seq_len, dim,
        *grad_out.stride(), *mask.stride(),
        ROWS_PER_PROGRAM=rows_per_program, ROWS=rows, BLOCK_D=block_d,
        num_warps=num_warps,
    )  # fmt: skip
    max_chunks = triton.next_power_of_2(num_chunks)
    block_c = min(max_chunks, max(1, _TILE_ELEMENTS // block_d))
    wrap_triton(_sum_partials_kernel)[(triton.cdiv(dim, block_d),)](
        partials, grad_token, num_chunks, dim, MAX_CHUNKS=max_chunks, BLOCK_C=block_c, BLOCK_D=block_d,
        num_warps=num_warps,
    )  # fmt: skip


# ----------------------------------------------------------------------------- ops


def blend_dtype(x_dtype: torch.dtype, mask_dtype: torch.dtype, token_dtype: torch.dtype) -> torch.dtype:
    """The output dtype: PyTorch's promotion of ``x * (1 - mask) + mask_token * mask`` (a bool mask takes no part)."""
    dtype = torch.promote_types(x_dtype, token_dtype)
    return dtype if mask_dtype == torch.bool else torch.promote_types(dtype, mask_dtype)


@triton_op("fastmae::mask_token_blend", mutates_args=())
def _mask_token_blend_op(x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    out_dtype = blend_dtype(x.dtype, mask.dtype, mask_token.dtype)
    if kernel_for(x, has_native=False) == "triton":
        out = new_output(tuple(x.shape), out_dtype, x.device)
        _launch_forward(x, mask, mask_token, out)
        return out
    compute = torch.promote_types(out_dtype, torch.float32)  # float32 math, float64 stays float64
    weight = mask.to(compute).unsqueeze(-1)  # exact for bool and every float mask dtype
    blended = x.to(compute) * (1 - weight) + mask_token.to(compute) * weight
    return blended.to(out_dtype).contiguous()


@triton_op("fastmae::mask_token_blend_backward", mutates_args=())
def _mask_token_blend_backward_op(
    grad_out: torch.Tensor, mask: torch.Tensor, x_dtype: torch.dtype, token_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    dim = grad_out.shape[-1]
    if kernel_for(grad_out, has_native=False) == "triton":
        grad_x = new_output(tuple(grad_out.shape), x_dtype, grad_out.device)
        grad_token = new_output((1, 1, dim), token_dtype, grad_out.device)
        _launch_backward(grad_out, mask, grad_x, grad_token)
        return grad_x, grad_token
    compute = torch.promote_types(grad_out.dtype, torch.float32)
    weight = mask.to(compute).unsqueeze(-1)
    grad = grad_out.to(compute)
    grad_x = (grad * (1 - weight)).to(x_dtype).contiguous()
    grad_token = (grad * weight).sum(dim=(0, 1), keepdim=True).to(token_dtype)
    return grad_x, grad_token


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, mask, mask_token = inputs
    ctx.save_for_backward(mask)
    ctx.x_dtype = x.dtype
    ctx.token_dtype = mask_token.dtype


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
    need_x, _, need_token = ctx.needs_input_grad
    if not (need_x or need_token):
        return None, None, None
    (mask,) = ctx.saved_tensors
    grad_x, grad_token = torch.ops.fastmae.mask_token_blend_backward(grad_out, mask, ctx.x_dtype, ctx.token_dtype)
    return (grad_x if need_x else None), None, (grad_token if need_token else None)


def _setup_backward_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    grad_out, mask, _, _ = inputs
    ctx.save_for_backward(mask)
    ctx.grad_shape = tuple(grad_out.shape)
    ctx.grad_dtype = grad_out.dtype
    ctx.x_dtype = output[0].dtype
    ctx.token_dtype = output[1].dtype


def _double_backward(
    ctx: Any, grad_grad_x: torch.Tensor | None, grad_grad_token: torch.Tensor | None
) -> tuple[torch.Tensor, None, None, None]:
    """The backward is linear in grad_out and its adjoint is the blend itself: (gg_x, gg_token) -> blend."""
    (mask,) = ctx.saved_tensors
    if grad_grad_x is None:
        grad_grad_x = torch.zeros(ctx.grad_shape, dtype=ctx.x_dtype, device=mask.device)
    if grad_grad_token is None:
        grad_grad_token = torch.zeros((1, 1, ctx.grad_shape[-1]), dtype=ctx.token_dtype, device=mask.device)
    grad = torch.ops.fastmae.mask_token_blend(grad_grad_x, mask, grad_grad_token)
    return grad.to(ctx.grad_dtype), None, None, None


_mask_token_blend_op.register_autograd(_backward, setup_context=_setup_context)
_mask_token_blend_backward_op.register_autograd(_double_backward, setup_context=_setup_backward_context)


# ----------------------------------------------------------------------------- public API


def _check_inputs(x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> None:
    check_tensor(x, "x")
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, L, D), got {x.dim()} dims {tuple(x.shape)}")
    check_float(x, "x")
    batch, seq_len, dim = x.shape
    check_tensor(mask, "mask")
    if tuple(mask.shape) != (batch, seq_len):
        raise ValueError(f"mask must have shape (B, L) = ({batch}, {seq_len}) like x, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool and mask.dtype not in FLOAT_DTYPES:
        raise TypeError(f"mask must be bool or float32/bfloat16/float16 (1 = use the mask token), got {mask.dtype}")
    if mask.requires_grad and torch.is_grad_enabled():
        raise ValueError("mask must not require grad: mask_token_blend gives it no gradient (detach it)")
    check_tensor(mask_token, "mask_token")
    if tuple(mask_token.shape) != (1, 1, dim):
        raise ValueError(f"mask_token must have shape (1, 1, D) = (1, 1, {dim}), got {tuple(mask_token.shape)}")
    check_float(mask_token, "mask_token")
    for name, tensor in (("mask", mask), ("mask_token", mask_token)):
        if not same_device(tensor.device, x.device):
            raise ValueError(f"{name} must be on {x.device} like x, got {tensor.device}")


def mask_token_blend(x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """SimMIM masking: ``x * (1 - mask) + mask_token * mask`` in one pass, every token kept.

    x: (B, L, D) token embeddings (e.g. the patch embedding of every patch), float32/bfloat16/float16, any
        strides. mask: (B, L) bool or float, 1 = replace by the token (e.g. ``block_masking(...).mask``);
        fractional values blend, evaluated in float32 and rounded once. mask_token: (1, 1, D).
    Returns (B, L, D), contiguous, dtype = PyTorch's promotion of x, mask_token and a float mask (see
    :func:`blend_dtype`). Differentiable in x and mask_token (not in the mask). Works under
    ``torch.compile(fullgraph=True)``; no host sync.
    """
    _check_inputs(x, mask, mask_token)
    # no native-extension version: the registered op serves every backend (its body picks Triton or torch)
    return torch.ops.fastmae.mask_token_blend(x, mask, mask_token)


def bytes_moved(shape: tuple[int, int, int], dtype: torch.dtype, *, backward: bool) -> int:
    """Bytes one call must move (the benchmark's GB/s numerator), all tensors in ``dtype``, a 1-byte bool mask.

    Forward: read x (B*L*D) and the mask (B*L), write the output (B*L*D). Backward: read grad_out and the
    mask, write grad_x; the token gradient and the (chunks, D) partials are negligible.
    """
    batch, seq_len, dim = shape
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * batch * seq_len * dim * itemsize + batch * seq_len
