"""unshuffle_with_mask_token: the MAE decoder input in one pass.

Forward, for each sample b and output row r of (B, 1+L, d):
    r = 0            -> x_vis[b, 0]                       (cls row kept first)
    r = 1 + l, l < L -> x_vis[b, 1 + ids_restore[b, l]]   if ids_restore[b, l] < K (a visible token)
                        mask_token.to(x_vis.dtype)        otherwise
    then + pos_embed[0, r] when pos_embed is given.
This equals the official decoder's ``cat(x[:, 1:], mask_tokens.to(x.dtype))``, ``gather(ids_restore)``,
``cat(x[:, :1], .)`` and ``+ decoder_pos_embed``, bit for bit. The output dtype is PyTorch's type
promotion of x_vis and pos_embed (bf16 tokens + an fp32 pos embed give fp32, as in the reference
under autocast); without pos_embed it is x_vis's dtype.

Schemas (inferred from the type hints; the native library's kernels ``fastmae_kernels::NAME`` are declared
with the same ones):

    fastmae::unshuffle_with_mask_token(Tensor x_vis, Tensor mask_token, Tensor ids_restore,
                                       Tensor? pos_embed) -> Tensor
    fastmae::unshuffle_with_mask_token_backward(Tensor grad_out, Tensor ids_restore, SymInt num_visible,
                                                ScalarType x_vis_dtype, ScalarType mask_token_dtype,
                                                ScalarType? pos_embed_dtype, bool[] needs_grad)
                                                -> (Tensor, Tensor, Tensor)

The backward returns (grad_x_vis (B,1+K,d), grad_mask_token (1,1,d), grad_pos_embed (1,1+L,d)), each in
its input's dtype; ``needs_grad`` = [x_vis, mask_token, pos_embed], and a gradient that is not needed
comes back as an empty (0-element) tensor. grad_x_vis is a scatter of grad_out rows (every x_vis row
receives exactly one output row: bitwise the reference's). grad_mask_token sums grad_out over all
masked rows of all samples and grad_pos_embed over the batch, both accumulated in float32 in a fixed
order (per-program partial sums, then a torch sum: deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from fastmae._validation import check_float, check_tensor, same_device
from fastmae.ops._backend import check_ids_values, define_native_kernel, native_or_torch, new_output
from fastmae.ops._triton_helpers import narrow_fp32

_FWD_BLOCK_ROWS = 16
_BWD_BLOCK_ROWS = 16
_MAX_BLOCK_D = 128
_BWD_SAMPLES_PER_PROGRAM = 16  # batch chunk one backward program loops over (sets the partial-sum count)


# --------------------------------------------------------------------------------------
# Triton kernels (only features that triton 3.6 and 3.9 both have)
# --------------------------------------------------------------------------------------
@triton.jit
def _unshuffle_fwd_kernel(
    x_ptr, mask_ptr, ids_ptr, pos_ptr, out_ptr,
    num_rows, num_visible, width,
    stride_xb, stride_xr, stride_xd, stride_md, stride_ib, stride_il, stride_pr, stride_pd,
    HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # one program per (sample, block of output rows, block of channels)
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(2).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < num_rows
    col_ok = cols < width
    is_patch = rows > 0
    ids = tl.load(ids_ptr + b * stride_ib + (rows - 1) * stride_il, mask=row_ok & is_patch, other=0)
    ids = ids.to(tl.int64)
    # the cls row reads x_vis row 0; patch rows read row 1 + id when the id is a kept token
    visible = row_ok & ((rows == 0) | ((ids >= 0) & (ids < num_visible)))
    src = tl.where(is_patch, ids + 1, 0)
    tile_ok = row_ok[:, None] & col_ok[None, :]
    x = tl.load(
        x_ptr + b * stride_xb + src[:, None] * stride_xr + cols[None, :] * stride_xd,
        mask=visible[:, None] & col_ok[None, :],
        other=0.0,
    )
    # the mask token comes already cast to x_vis's dtype (the launcher does it, as the reference)
    token = tl.load(mask_ptr + cols * stride_md, mask=col_ok, other=0.0)
    val = tl.where(visible[:, None], x, token[None, :])
    if HAS_POS:
        pos = tl.load(pos_ptr + rows[:, None] * stride_pr + cols[None, :] * stride_pd, mask=tile_ok, other=0.0)
        # both operands are exact in fp32; one rounding to the output dtype, as PyTorch's add
        val = narrow_fp32(val.to(tl.float32) + pos.to(tl.float32), out_ptr.dtype.element_ty)
    out_offsets = (b * num_rows + rows[:, None]) * width + cols[None, :]
    tl.store(out_ptr + out_offsets, val, mask=tile_ok)


@triton.jit
def _unshuffle_bwd_kernel(
    grad_ptr, ids_ptr, grad_x_ptr, mask_partial_ptr, pos_partial_ptr,
    batch, num_rows, num_visible, width, num_row_blocks,
    stride_gb, stride_gr, stride_gd, stride_ib, stride_il,
    NEED_X: tl.constexpr, NEED_MASK: tl.constexpr, NEED_POS: tl.constexpr,
    SAMPLES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # one program per (block of rows, block of channels, chunk of SAMPLES samples)
    row_block = tl.program_id(0).to(tl.int64)
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    chunk = tl.program_id(2).to(tl.int64)
    row_ok = rows < num_rows
    col_ok = cols < width
    is_patch = rows > 0
    mask_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    pos_acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for i in range(SAMPLES):
        b = chunk * SAMPLES + i
        ok = row_ok & ((rows * 0 + b) < batch)  # a vector compare: scalar masks vary across versions
        tile_ok = ok[:, None] & col_ok[None, :]
        g = tl.load(
            grad_ptr + b * stride_gb + rows[:, None] * stride_gr + cols[None, :] * stride_gd,
            mask=tile_ok,
            other=0.0,
        )
        ids = tl.load(ids_ptr + b * stride_ib + (rows - 1) * stride_il, mask=ok & is_patch, other=0)
        ids = ids.to(tl.int64)
        visible = ok & ((rows == 0) | (ids < num_visible))
        if NEED_X:
            # each x_vis row is the target of exactly one output row: a scatter without atomics
            dst = tl.where(is_patch, ids + 1, 0)
            dst_offsets = (b * (num_visible + 1) + dst[:, None]) * width + cols[None, :]
            if grad_ptr.dtype.element_ty == grad_x_ptr.dtype.element_ty:
                grad_x = g
            else:
                grad_x = narrow_fp32(g.to(tl.float32), grad_x_ptr.dtype.element_ty)
            tl.store(grad_x_ptr + dst_offsets, grad_x, mask=visible[:, None] & col_ok[None, :])
        if NEED_MASK:
            masked = ok & is_patch & (ids >= num_visible)
            mask_acc += tl.sum(tl.where(masked[:, None], g.to(tl.float32), 0.0), axis=0)
        if NEED_POS:
            pos_acc += g.to(tl.float32)
    if NEED_MASK:
        tl.store(mask_partial_ptr + (chunk * num_row_blocks + row_block) * width + cols, mask_acc, mask=col_ok)
    if NEED_POS:
        pos_offsets = (chunk * num_rows + rows[:, None]) * width + cols[None, :]
        tl.store(pos_partial_ptr + pos_offsets, pos_acc, mask=row_ok[:, None] & col_ok[None, :])


# --------------------------------------------------------------------------------------
# Launchers (plain Python: block sizes and grids from static shapes)
# --------------------------------------------------------------------------------------
def _launch_forward(
    x_vis: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor | None,
    out: torch.Tensor,
) -> None:  # fmt: skip
    batch, num_rows, width = out.shape
    block_d = min(triton.next_power_of_2(width), _MAX_BLOCK_D)
    grid = (batch, triton.cdiv(num_rows, _FWD_BLOCK_ROWS), triton.cdiv(width, block_d))
    pos = pos_embed if pos_embed is not None else out  # never read when HAS_POS is False
    pos_strides = (pos_embed.stride(1), pos_embed.stride(2)) if pos_embed is not None else (0, 0)
    token = mask_token.to(x_vis.dtype)  # d elements; rounds exactly like the reference's cast
    wrap_triton(_unshuffle_fwd_kernel)[grid](
        x_vis, token, ids_restore, pos, out,
        num_rows, x_vis.shape[1] - 1, width,
        x_vis.stride(0), x_vis.stride(1), x_vis.stride(2), token.stride(2),
        ids_restore.stride(0), ids_restore.stride(1), *pos_strides,
        HAS_POS=pos_embed is not None, BLOCK_R=_FWD_BLOCK_ROWS, BLOCK_D=block_d,
    )  # fmt: skip


def _launch_backward(
    grad_out: torch.Tensor, ids_restore: torch.Tensor, num_visible: int, grad_x: torch.Tensor | None,
    mask_partial: torch.Tensor | None, pos_partial: torch.Tensor | None, samples: int,
) -> None:  # fmt: skip
    batch, num_rows, width = grad_out.shape
    block_d = min(triton.next_power_of_2(width), _MAX_BLOCK_D)
    row_blocks = triton.cdiv(num_rows, _BWD_BLOCK_ROWS)
    grid = (row_blocks, triton.cdiv(width, block_d), triton.cdiv(batch, samples))
    dummy = grad_out  # stands in for outputs that are not needed (never written)
    wrap_triton(_unshuffle_bwd_kernel)[grid](
        grad_out, ids_restore,
        grad_x if grad_x is not None else dummy,
        mask_partial if mask_partial is not None else dummy,
        pos_partial if pos_partial is not None else dummy,
        batch, num_rows, num_visible, width, row_blocks,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), ids_restore.stride(0), ids_restore.stride(1),
        NEED_X=grad_x is not None, NEED_MASK=mask_partial is not None, NEED_POS=pos_partial is not None,
        SAMPLES=samples, BLOCK_R=_BWD_BLOCK_ROWS, BLOCK_D=block_d,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Registered ops
# --------------------------------------------------------------------------------------
def _output_dtype(x_vis: torch.Tensor, pos_embed: torch.Tensor | None) -> torch.dtype:
    return x_vis.dtype if pos_embed is None else torch.promote_types(x_vis.dtype, pos_embed.dtype)


def _unshuffle_torch(
    x_vis: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor | None
) -> torch.Tensor:
    """The PyTorch branch (and the native kernel's fake): the reference decoder's cat / gather / cat / + pos."""
    batch, length = ids_restore.shape
    width = x_vis.shape[2]
    tokens = mask_token.to(x_vis.dtype).expand(batch, length + 1 - x_vis.shape[1], width)
    patches = torch.cat([x_vis[:, 1:], tokens], dim=1).gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, width))
    out = torch.cat([x_vis[:, :1], patches], dim=1)
    return out + pos_embed if pos_embed is not None else out


@triton_op("fastmae::unshuffle_with_mask_token", mutates_args=())
def _unshuffle_op(
    x_vis: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor | None
) -> torch.Tensor:
    kernel = native_or_torch(x_vis, "unshuffle_with_mask_token", _unshuffle_torch)
    if kernel is not None:
        return kernel(x_vis, mask_token, ids_restore, pos_embed)
    batch, length = ids_restore.shape
    out = new_output((batch, 1 + length, x_vis.shape[2]), _output_dtype(x_vis, pos_embed), x_vis.device)
    _launch_forward(x_vis, mask_token, ids_restore, pos_embed, out)
    return out


def _backward_outputs(
    grad_out: torch.Tensor, grad_x: torch.Tensor | None, mask_sum: torch.Tensor | None, pos_sum: torch.Tensor | None,
    mask_token_dtype: torch.dtype, pos_embed_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The backward op's outputs from the gradients asked for (float32 sums rounded once to their dtypes)."""

    def empty() -> torch.Tensor:  # a fresh one per unneeded gradient: op outputs must not alias
        return torch.empty(0, dtype=grad_out.dtype, device=grad_out.device)

    width = grad_out.shape[2]
    grad_mask = mask_sum.to(mask_token_dtype).view(1, 1, width) if mask_sum is not None else empty()
    grad_pos = pos_sum.to(pos_embed_dtype).unsqueeze(0) if pos_sum is not None else empty()
    return (grad_x if grad_x is not None else empty()), grad_mask, grad_pos


def _unshuffle_backward_torch(
    grad_out: torch.Tensor,
    ids_restore: torch.Tensor,
    num_visible: int,
    x_vis_dtype: torch.dtype,
    mask_token_dtype: torch.dtype,
    pos_embed_dtype: torch.dtype | None,
    needs_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PyTorch branch of the backward (and the native kernel's fake)."""
    width = grad_out.shape[2]
    grad_x, mask_sum, pos_sum = None, None, None
    if needs_grad[0]:
        # scatter the patch rows back to shuffled order (kept tokens first); keep the first K
        rows = grad_out[:, 1:].to(x_vis_dtype)
        shuffled = torch.zeros(rows.shape, dtype=rows.dtype, device=grad_out.device)
        shuffled.scatter_(1, ids_restore.unsqueeze(-1).expand(-1, -1, width), rows)
        grad_x = torch.cat([grad_out[:, :1].to(x_vis_dtype), shuffled[:, :num_visible]], dim=1)
    if needs_grad[1]:
        masked = (ids_restore >= num_visible).unsqueeze(-1)
        mask_sum = torch.where(masked, grad_out[:, 1:].to(torch.float32), 0.0).sum(dim=(0, 1))
    if needs_grad[2] and pos_embed_dtype is not None:
        pos_sum = grad_out.to(torch.float32).sum(dim=0)
    return _backward_outputs(grad_out, grad_x, mask_sum, pos_sum, mask_token_dtype, pos_embed_dtype)


@triton_op("fastmae::unshuffle_with_mask_token_backward", mutates_args=())
def _unshuffle_backward_op(
    grad_out: torch.Tensor,
    ids_restore: torch.Tensor,
    num_visible: int,
    x_vis_dtype: torch.dtype,
    mask_token_dtype: torch.dtype,
    pos_embed_dtype: torch.dtype | None,
    needs_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernel = native_or_torch(grad_out, "unshuffle_with_mask_token_backward", _unshuffle_backward_torch)
    if kernel is not None:
        return kernel(grad_out, ids_restore, num_visible, x_vis_dtype, mask_token_dtype, pos_embed_dtype, needs_grad)
    batch, num_rows, width = grad_out.shape
    device = grad_out.device
    need_x, need_mask, need_pos = needs_grad[0], needs_grad[1], needs_grad[2] and pos_embed_dtype is not None
    samples = min(batch, _BWD_SAMPLES_PER_PROGRAM)
    chunks = triton.cdiv(batch, samples)
    row_blocks = triton.cdiv(num_rows, _BWD_BLOCK_ROWS)
    grad_x = new_output((batch, 1 + num_visible, width), x_vis_dtype, device) if need_x else None
    mask_partial = new_output((chunks, row_blocks, width), torch.float32, device) if need_mask else None
    pos_partial = new_output((chunks, num_rows, width), torch.float32, device) if need_pos else None
    _launch_backward(grad_out, ids_restore, num_visible, grad_x, mask_partial, pos_partial, samples)
    mask_sum = mask_partial.sum(dim=(0, 1)) if mask_partial is not None else None
    pos_sum = pos_partial.sum(dim=0) if pos_partial is not None else None
    return _backward_outputs(grad_out, grad_x, mask_sum, pos_sum, mask_token_dtype, pos_embed_dtype)


define_native_kernel(torch.ops.fastmae.unshuffle_with_mask_token, _unshuffle_torch)
define_native_kernel(torch.ops.fastmae.unshuffle_with_mask_token_backward, _unshuffle_backward_torch)


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x_vis, mask_token, ids_restore, pos_embed = inputs
    ctx.save_for_backward(ids_restore)
    ctx.num_visible = x_vis.shape[1] - 1
    ctx.dtypes = (x_vis.dtype, mask_token.dtype, pos_embed.dtype if pos_embed is not None else None)


def _backward(ctx, grad_out):  # type: ignore[no-untyped-def]
    (ids_restore,) = ctx.saved_tensors
    need_x, need_mask, _, need_pos = ctx.needs_input_grad
    grad_x, grad_mask, grad_pos = torch.ops.fastmae.unshuffle_with_mask_token_backward(
        grad_out, ids_restore, ctx.num_visible, *ctx.dtypes, [need_x, need_mask, need_pos]
    )
    return (
        grad_x if need_x else None,
        grad_mask if need_mask else None,
        None,
        grad_pos if need_pos else None,
    )


_unshuffle_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------
def _check_inputs(
    x_vis: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor | None
) -> None:
    check_tensor(x_vis, "x_vis")
    check_tensor(mask_token, "mask_token")
    check_tensor(ids_restore, "ids_restore")
    if x_vis.dim() != 3:
        raise ValueError(f"x_vis must have shape (B, 1+K, d), got {x_vis.dim()} dims {tuple(x_vis.shape)}")
    check_float(x_vis, "x_vis")
    batch, rows, width = x_vis.shape
    if ids_restore.dim() != 2 or ids_restore.shape[0] != batch:
        raise ValueError(
            f"ids_restore must have shape (B, L) with B={batch} like x_vis, got {tuple(ids_restore.shape)}"
        )
    if ids_restore.dtype != torch.int64:
        raise TypeError(f"ids_restore must be int64 (as argsort gives), got {ids_restore.dtype}")
    length = ids_restore.shape[1]
    if not 1 <= rows <= 1 + length:
        raise ValueError(f"x_vis must hold the cls row plus K <= L={length} visible tokens, got {rows} rows")
    if tuple(mask_token.shape) != (1, 1, width):
        raise ValueError(f"mask_token must have shape (1, 1, d) = (1, 1, {width}), got {tuple(mask_token.shape)}")
    check_float(mask_token, "mask_token")
    named = [("mask_token", mask_token), ("ids_restore", ids_restore)]
    if pos_embed is not None:
        check_tensor(pos_embed, "pos_embed")
        if tuple(pos_embed.shape) != (1, 1 + length, width):
            raise ValueError(
                f"pos_embed must have shape (1, 1+L, d) = (1, {1 + length}, {width}), got {tuple(pos_embed.shape)}"
            )
        check_float(pos_embed, "pos_embed")
        named.append(("pos_embed", pos_embed))
    for name, tensor in named:
        if not same_device(tensor.device, x_vis.device):
            raise ValueError(f"{name} must be on {x_vis.device} like x_vis, got {tensor.device}")


def unshuffle_with_mask_token(
    x_vis: torch.Tensor,
    mask_token: torch.Tensor,
    ids_restore: torch.Tensor,
    pos_embed: torch.Tensor | None = None,
    *,
    validate_ids: bool = True,
) -> torch.Tensor:
    """Put visible tokens back at their patch positions, the mask token elsewhere, and add the pos embed.

    x_vis (B, 1+K, d): the cls row, then the K kept tokens in shuffled order (the encoder's output after
    decoder_embed). mask_token (1, 1, d). ids_restore (B, L) int64, the inverse of the masking shuffle.
    pos_embed (1, 1+L, d) or None. validate_ids: assert on the device (no host sync) that every row of
    ids_restore is a permutation of [0, L): a RuntimeError naming ids_restore otherwise; pass False only for
    ids fastmae's masking made (the model does). FASTMAE_DEBUG=1 checks on the host instead.
    Returns (B, 1+L, d) in PyTorch's promotion of x_vis and pos_embed dtypes. Differentiable in x_vis,
    mask_token and pos_embed.
    """
    _check_inputs(x_vis, mask_token, ids_restore, pos_embed)
    check_ids_values(ids_restore, ids_restore.shape[1], "ids_restore", validate=validate_ids)
    return torch.ops.fastmae.unshuffle_with_mask_token(x_vis, mask_token, ids_restore, pos_embed)
