"""Triton kernels of fastmae.ops.unshuffle (imported lazily: importing triton is not free).

Only features that triton 3.6 and 3.9 both have: load/store/arange/program_id/where/sum, int64 offsets.
"""

import triton
import triton.language as tl


@triton.jit
def cast_fp32(value, DST: tl.constexpr):
    # fp32 -> DST rounding to nearest even, as PyTorch rounds. bf16 is rounded by hand: the Triton
    # interpreter truncates in .to(tl.bfloat16), and the same bit arithmetic is exact on the GPU too.
    if DST == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return value.to(DST)


@triton.jit
def unshuffle_fwd_kernel(
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
        val = cast_fp32(val.to(tl.float32) + pos.to(tl.float32), out_ptr.dtype.element_ty)
    out_offsets = (b * num_rows + rows[:, None]) * width + cols[None, :]
    tl.store(out_ptr + out_offsets, val, mask=tile_ok)


@triton.jit
def unshuffle_bwd_kernel(
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
                grad_x = cast_fp32(g.to(tl.float32), grad_x_ptr.dtype.element_ty)
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
