"""Fused masked MSE loss: the MAE loss with the target patches built from the pixels inside the kernel.

Schemas (inferred from the type hints; the native library's kernels ``fastmae_kernels::NAME`` are declared
with the same ones)::

    fastmae::masked_mse_loss(Tensor pred, Tensor? imgs, Tensor? ids_removed, Tensor? mask, Tensor? target,
                             Tensor? sample_weight, SymInt[] patch_size, bool norm_pix, float eps) -> Tensor
    fastmae::masked_mse_loss_backward(Tensor grad_loss, Tensor pred, Tensor? imgs, Tensor? ids_removed,
                                      Tensor? mask, Tensor? target, Tensor? sample_weight, SymInt[] patch_size,
                                      bool norm_pix, float eps, bool source_grad) -> (Tensor, Tensor)

The forward returns a float32 scalar. The backward returns ``(grad_pred, grad_source)``: grad_pred has pred's
shape and dtype; grad_source has the shape and dtype of the target source (``imgs`` or ``target``) when
``source_grad`` is true, else it is an empty tensor of shape (0,).

Which rows of ``pred`` count, and with what weight (w_b = sample_weight[b], 1 when absent):

- removed-only pred (B, L-K, D) with ``ids_removed`` (B, L-K): row r of sample b is patch ids_removed[b, r],
  weight w_b. The model holds ids_removed = ids_shuffle[:, K:] already; the functional API also takes
  ids_restore and derives it once with :func:`removed_ids` (one O(B*L) scatter, no sort).
- full pred (B, L, D) with ``mask`` (B, L) (float or bool, 1 = removed): row l has weight w_b * mask[b, l].

loss = sum_{b,l} weight(b,l) * mean_d (pred - target)^2 / sum_{b,l} weight(b,l); with w = 1 this is exactly
the spec's sum(loss * mask) / sum(mask).

Kernels: one program per (sample, block of BLOCK_R pred rows) walks its rows in (BLOCK_R, BLOCK_D) column
tiles (BLOCK_D at most 256). It loads the pred rows, builds the target rows from the image pixels (or the
explicit target rows), normalises them per patch when ``norm_pix`` (row statistics in a first pass over the
tiles), and writes one float32 partial sum per program (no float atomics, so the loss is deterministic);
torch adds the (B, R/BLOCK_R) partials. The
backward recomputes the target the same way and writes grad_pred (and the source gradient) directly; nothing
larger than the partials is allocated besides the gradients themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from fastmae._validation import FLOAT_DTYPES, check_float, check_patch_batch, check_tensor, same_device
from fastmae.ops._backend import check_ids_values, define_native_kernel, native_or_torch, new_output
from fastmae.ops._layout import (
    INT32_MAX,
    as_video,
    max_patch_offset,
    patch_grid_view,
    patch_rows,
    stride_alignment,
    video_strides,
)
from fastmae.ops._triton_helpers import element_offset, narrow_fp32, patch_origin

__all__ = ["masked_mse_loss", "removed_ids"]

DEFAULT_EPS = 1e-6
_TILE_ELEMENTS = 1024  # BLOCK_R * BLOCK_D per column tile: 8 fp32 elements per thread of 4 warps
_MAX_BLOCK_D = 256  # widest column tile; longer rows loop over tiles


# --------------------------------------------------------------------------------------
# Layout: every shape rule in one place (used by the functional API and by the op bodies)
# --------------------------------------------------------------------------------------
class _Layout(NamedTuple):
    batch: int
    num_patches: int  # L
    rows: int  # rows of pred per sample: L (full) or L - K (removed-only)
    dim: int  # D
    removed_only: bool
    pixels: bool  # target built from imgs (True) or read from an explicit target (False)
    patch: tuple[int, int, int]  # (pt, ph, pw); pt = 1 for images
    grid: tuple[int, int, int]  # (gt, gh, gw); gt = 1 for images
    chans: int


def _layout(
    pred: torch.Tensor,
    imgs: torch.Tensor | None,
    ids_removed: torch.Tensor | None,
    mask: torch.Tensor | None,
    target: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    patch_size: object,
    norm_pix: bool,
    full_pred_keep: int | None = None,
    ids_restore: torch.Tensor | None = None,
) -> _Layout:
    """Check shapes, dtypes and devices (never values) and describe the call.

    The functional API may pass ``ids_restore`` instead of ``ids_removed`` (a removed-only pred), or with
    full_pred_keep, its num_keep, which lets a full pred come with ids_restore (no mask).
    """
    check_tensor(pred, "pred")
    if pred.dim() != 3:
        raise ValueError(f"pred must have shape (B, L, D) or (B, L-K, D), got {pred.dim()} dims {tuple(pred.shape)}")
    check_float(pred, "pred")
    batch, rows, dim = pred.shape
    if (imgs is None) == (target is None):
        raise ValueError("pass exactly one of imgs (pixel target) and target (explicit (B, L, D) target)")
    if imgs is not None:
        patch_extent, grid_extent = check_patch_batch(imgs, patch_size)
        patch = as_video(imgs.shape, patch_extent)[1]
        grid = (1, *grid_extent) if len(grid_extent) == 2 else grid_extent
        chans = imgs.shape[1]
        num_patches = grid[0] * grid[1] * grid[2]
        source, source_name = imgs, "imgs"
        if dim != math.prod(patch) * chans:
            raise ValueError(
                f"pred last dim must be prod(patch_size) * C = {math.prod(patch)} * {chans} = "
                f"{math.prod(patch) * chans}, got {dim}"
            )
    else:
        check_tensor(target, "target")
        if target.dim() != 3 or target.shape[0] != batch or target.shape[2] != dim:
            raise ValueError(f"target must have shape (B, L, D) = ({batch}, L, {dim}), got {tuple(target.shape)}")
        check_float(target, "target")
        patch, grid, chans = (1, 1, 1), (1, 1, target.shape[1]), 1
        num_patches = target.shape[1]
        source, source_name = target, "target"
    if source.shape[0] != batch:
        raise ValueError(f"{source_name} batch {source.shape[0]} does not match pred batch {batch}")
    if not same_device(source.device, pred.device):
        raise ValueError(f"{source_name} must be on {pred.device} like pred, got {source.device}")
    if norm_pix and dim < 2:
        raise ValueError(f"norm_pix needs at least 2 elements per patch (unbiased variance), got D = {dim}")

    if full_pred_keep is not None:
        if rows != num_patches:
            raise ValueError(
                f"num_keep applies only to a full pred (B, L, D) with L = {num_patches}, got {rows} rows; "
                "a removed-only pred derives K from its shape"
            )
        if not 1 <= full_pred_keep <= num_patches - 1:
            raise ValueError(f"num_keep must be in [1, L-1] = [1, {num_patches - 1}], got {full_pred_keep}")
        removed_only = False
    elif rows == num_patches:
        removed_only = False
        if mask is None:
            raise ValueError(
                "a full pred (B, L, D) needs mask (B, L); with ids_restore, the functional API also accepts "
                "num_keep=K (the number of kept patches is not derivable from the shapes)"
            )
        if ids_restore is not None or ids_removed is not None:
            raise ValueError(
                "with a full pred pass mask, not ids_restore or ids_removed (they serve a removed-only pred)"
            )
    elif 1 <= rows < num_patches:
        removed_only = True
        if (ids_restore is None) == (ids_removed is None):
            raise ValueError(
                f"a removed-only pred (B, L-K, D) with {rows} < L = {num_patches} rows needs ids_restore (B, L) "
                "or ids_removed (B, L-K), exactly one of them"
            )
        if mask is not None:
            raise ValueError(
                "mask applies only to a full pred (B, L, D); a removed-only pred takes ids_restore or ids_removed"
            )
    else:
        raise ValueError(f"pred must have L = {num_patches} rows (full) or 1..L-1 rows (removed-only), got {rows}")

    for name, ids, shape, shape_name in (
        ("ids_restore", ids_restore, (batch, num_patches), "(B, L)"),
        ("ids_removed", ids_removed, (batch, rows), "(B, L-K)"),
    ):
        if ids is None:
            continue
        check_tensor(ids, name)
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be int64 or int32, got {ids.dtype}")
        if tuple(ids.shape) != shape:
            raise ValueError(f"{name} must have shape {shape_name} = {shape}, got {tuple(ids.shape)}")
        if not same_device(ids.device, pred.device):
            raise ValueError(f"{name} must be on {pred.device} like pred, got {ids.device}")
    if mask is not None:
        check_tensor(mask, "mask")
        if tuple(mask.shape) != (batch, num_patches):
            raise ValueError(f"mask must have shape (B, L) = ({batch}, {num_patches}), got {tuple(mask.shape)}")
        if mask.dtype not in (*FLOAT_DTYPES, torch.bool):
            raise TypeError(f"mask must be float or bool (1 = removed), got {mask.dtype}")
        if not same_device(mask.device, pred.device):
            raise ValueError(f"mask must be on {pred.device} like pred, got {mask.device}")
    if sample_weight is not None:
        check_tensor(sample_weight, "sample_weight")
        if tuple(sample_weight.shape) != (batch,):
            raise ValueError(f"sample_weight must have shape (B,) = ({batch},), got {tuple(sample_weight.shape)}")
        check_float(sample_weight, "sample_weight")
        if not same_device(sample_weight.device, pred.device):
            raise ValueError(f"sample_weight must be on {pred.device} like pred, got {sample_weight.device}")
    return _Layout(batch, num_patches, rows, dim, removed_only, imgs is not None, patch, grid, chans)


def _row_weights(
    lay: _Layout, mask: torch.Tensor | None, sample_weight: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """(B, R) float32 weight of every pred row (tiny: no D axis)."""
    if mask is not None:
        weights = mask.to(torch.float32)
    else:
        weights = torch.ones((lay.batch, lay.rows), dtype=torch.float32, device=device)
    if sample_weight is not None:
        weights = weights * sample_weight.to(torch.float32)[:, None]
    return weights


def _denominator(
    lay: _Layout, mask: torch.Tensor | None, sample_weight: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Sum of the row weights, a float32 0-d tensor (the number of removed patches when unweighted)."""
    if mask is not None:
        return _row_weights(lay, mask, sample_weight, device).sum()
    if sample_weight is not None:
        return sample_weight.to(torch.float32).sum() * lay.rows
    return torch.full((), float(lay.batch * lay.rows), dtype=torch.float32, device=device)


def _source_strides(lay: _Layout, source: torch.Tensor) -> tuple[int, ...]:
    """The five strides the kernels address the source with: (B, C, T, H, W) for pixels; for an explicit
    (B, L, D) target (sb, sd, 0, 0, sl), read by the kernels as b * sb + l * sw + d * sc."""
    if lay.pixels:
        return video_strides(source)
    sb, sl, sd = source.stride()
    return (sb, sd, 0, 0, sl)


# --------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------
# Mutation analysis: torch clones every kernel argument it believes a kernel writes, found by walking back
# from each store's address through the ops that made it; a helper call counts as making its results from
# all of its arguments. So no helper that takes a pointer returns anything an address is built from: row
# origins and in-row offsets come from pointer-free helpers, and the ids are loaded in the kernel bodies.
@triton.jit
def _row_weight(mask_ptr, weight_ptr, b, L, patch, row_ok, HAS_MASK: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """float32 (BLOCK_R,) weight of each pred row: mask[b, patch] (or 1) times sample_weight[b] (or 1)."""
    if HAS_MASK:
        weight = tl.load(mask_ptr + b * L + patch, mask=row_ok, other=0).to(tl.float32)
    else:
        weight = tl.where(row_ok, 1.0, 0.0)
    if HAS_WEIGHT:
        weight = weight * tl.load(weight_ptr + b).to(tl.float32)
    return weight


@triton.jit
def _source_rows(
    b, patch, sb, st, sh, sw, GRID_H, GRID_W,
    PIXELS: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
):  # fmt: skip
    """int64 (BLOCK_R,) offset of each target row's first element: the patch origin in the image, or row
    ``patch`` of an explicit target."""
    if PIXELS:
        return b * sb + patch_origin(patch, GRID_H, GRID_W, st, sh, sw, PT, PH, PW)
    else:
        return b * sb + patch * sw


@triton.jit
def _columns(d0, BLOCK_D: tl.constexpr, WIDE: tl.constexpr):
    """Columns [d0, d0 + BLOCK_D) of a row: int32, int64 when WIDE (an in-row extent past 2^31)."""
    cols = d0 + tl.arange(0, BLOCK_D)
    if WIDE:
        cols = cols.to(tl.int64)
    return cols


@triton.jit
def _source_columns(
    cols, sc, st, sh, sw, PIXELS: tl.constexpr, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr,
    PW: tl.constexpr,
):  # fmt: skip
    """Offsets of target elements ``cols`` from their row's first element (cols' integer type)."""
    if PIXELS:
        return element_offset(cols, sc, st, sh, sw, PT, PH, PW, C)
    else:
        return cols * sc


@triton.jit
def _load_target(
    src_ptr, src_rows, cols, ok, sc, st, sh, sw,
    PIXELS: tl.constexpr, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
):  # fmt: skip
    """float32 (BLOCK_R, BLOCK_D) target tile (0 outside ``ok``)."""
    inner = _source_columns(cols, sc, st, sh, sw, PIXELS, C, PT, PH, PW)
    return tl.load((src_ptr + src_rows)[:, None] + inner[None, :], mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _row_stats(
    src_ptr, src_rows, live, D, sc, st, sh, sw, eps,
    PIXELS: tl.constexpr, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, NUM_TILES: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    """Each target row's first element t0, the mean of t - t0 and 1 / sqrt(unbiased variance + eps), (BLOCK_R,)
    each, in one pass over its column tiles: each tile's mean and centred sum of squares, merged with Chan's
    update (as stable as two passes). Shifting by t0 makes the sums scale with the row's spread, not its level
    (a bright, flat patch keeps its precision); t - t0 is exact for elements within 2x of t0."""
    shift = tl.load(src_ptr + src_rows, mask=live, other=0.0).to(tl.float32)
    mean = tl.zeros((BLOCK_R,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_R,), dtype=tl.float32)
    count = 0.0
    for tile in range(NUM_TILES):
        d0 = tile * BLOCK_D
        cols = _columns(d0, BLOCK_D, WIDE)
        ok = live[:, None] & (cols < D)[None, :]
        tgt = _load_target(src_ptr, src_rows, cols, ok, sc, st, sh, sw, PIXELS, C, PT, PH, PW)
        tgt = tl.where(ok, tgt - shift[:, None], 0.0)
        n = tl.minimum(D - d0, BLOCK_D).to(tl.float32)
        tile_mean = tl.sum(tgt, axis=1) / n
        dev = tl.where(ok, tgt - tile_mean[:, None], 0.0)
        total = count + n
        delta = tile_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + tl.sum(dev * dev, axis=1) + delta * delta * (count * n / total)
        count = total
    return shift, mean, 1.0 / tl.sqrt(m2 / (D - 1) + eps)


@triton.jit
def _tile_diff(
    pred_ptr, src_ptr, pred_rows, src_rows, cols, ok, sp_d, sc, st, sh, sw, shift, mean, rstd,
    NORM_PIX: tl.constexpr, PIXELS: tl.constexpr, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr,
    PW: tl.constexpr,
):  # fmt: skip
    """float32 (BLOCK_R, BLOCK_D) pred - target and the (normalised) target on one column tile, 0 outside ok."""
    pred = tl.load((pred_ptr + pred_rows)[:, None] + (cols * sp_d)[None, :], mask=ok, other=0.0).to(tl.float32)
    tgt = _load_target(src_ptr, src_rows, cols, ok, sc, st, sh, sw, PIXELS, C, PT, PH, PW)
    if NORM_PIX:
        tgt = tl.where(ok, ((tgt - shift[:, None]) - mean[:, None]) * rstd[:, None], 0.0)
    return tl.where(ok, pred - tgt, 0.0), tgt


@triton.jit
def _loss_fwd_kernel(
    pred_ptr, src_ptr, ids_ptr, mask_ptr, weight_ptr, partial_ptr,
    R, L, D, sp_b, sp_r, sp_d, si_b, si_r, sb, sc, st, sh, sw, GRID_H, GRID_W, eps,
    HAS_IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WEIGHT: tl.constexpr, NORM_PIX: tl.constexpr,
    PIXELS: tl.constexpr, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, NUM_TILES: tl.constexpr, WIDE: tl.constexpr,
    PRED_ALIGN: tl.constexpr,
):
    if PIXELS:
        D = PT * PH * PW * C  # a constant: its alignment (and pred's, PRED_ALIGN) lets pred loads vectorise
    b = tl.program_id(0).to(tl.int64)
    pid_r = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    rows64 = rows.to(tl.int64)
    if HAS_IDS:
        patch = tl.load(ids_ptr + b * si_b + rows64 * si_r, mask=row_ok, other=0).to(tl.int64)
    else:
        patch = rows64
    weight = _row_weight(mask_ptr, weight_ptr, b, L, patch, row_ok, HAS_MASK, HAS_WEIGHT)
    live = row_ok & (weight != 0.0)  # rows of weight 0 (kept patches under a mask) are not read at all
    pred_rows = tl.multiple_of(b * sp_b + rows64 * sp_r, PRED_ALIGN)
    src_rows = _source_rows(b, patch, sb, st, sh, sw, GRID_H, GRID_W, PIXELS, PT, PH, PW)
    shift = tl.zeros((BLOCK_R,), dtype=tl.float32)
    mean = tl.zeros((BLOCK_R,), dtype=tl.float32)
    rstd = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if NORM_PIX:
        shift, mean, rstd = _row_stats(src_ptr, src_rows, live, D, sc, st, sh, sw, eps, PIXELS, C, PT, PH, PW,
                                       BLOCK_R, BLOCK_D, NUM_TILES, WIDE)  # fmt: skip
    sq_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for tile in range(NUM_TILES):
        d0 = tile * BLOCK_D
        cols = _columns(d0, BLOCK_D, WIDE)
        ok = live[:, None] & (cols < D)[None, :]
        diff, _ = _tile_diff(pred_ptr, src_ptr, pred_rows, src_rows, cols, ok, sp_d, sc, st, sh, sw, shift, mean,
                             rstd, NORM_PIX, PIXELS, C, PT, PH, PW)  # fmt: skip
        sq_sum += tl.sum(diff * diff, axis=1)
    partial = tl.sum(tl.where(row_ok, sq_sum / D * weight, 0.0), axis=0)
    tl.store(partial_ptr + b * tl.num_programs(1) + pid_r, partial)


@triton.jit
def _loss_bwd_kernel(
    pred_ptr, src_ptr, ids_ptr, mask_ptr, weight_ptr, coef_ptr, grad_pred_ptr, grad_src_ptr,
    R, L, D, sp_b, sp_r, sp_d, si_b, si_r, sb, sc, st, sh, sw, gb, gc, gt, gh, gw, GRID_H, GRID_W, eps,
    HAS_IDS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_WEIGHT: tl.constexpr, NORM_PIX: tl.constexpr,
    PIXELS: tl.constexpr, C: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    SOURCE_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, NUM_TILES: tl.constexpr,
    WIDE: tl.constexpr, PRED_ALIGN: tl.constexpr,
):
    if PIXELS:
        D = PT * PH * PW * C
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    rows64 = rows.to(tl.int64)
    if HAS_IDS:
        patch = tl.load(ids_ptr + b * si_b + rows64 * si_r, mask=row_ok, other=0).to(tl.int64)
    else:
        patch = rows64
    weight = _row_weight(mask_ptr, weight_ptr, b, L, patch, row_ok, HAS_MASK, HAS_WEIGHT)
    live = row_ok & (weight != 0.0)
    pred_rows = tl.multiple_of(b * sp_b + rows64 * sp_r, PRED_ALIGN)
    src_rows = _source_rows(b, patch, sb, st, sh, sw, GRID_H, GRID_W, PIXELS, PT, PH, PW)
    shift = tl.zeros((BLOCK_R,), dtype=tl.float32)
    mean = tl.zeros((BLOCK_R,), dtype=tl.float32)
    rstd = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if NORM_PIX:
        shift, mean, rstd = _row_stats(src_ptr, src_rows, live, D, sc, st, sh, sw, eps, PIXELS, C, PT, PH, PW,
                                       BLOCK_R, BLOCK_D, NUM_TILES, WIDE)  # fmt: skip
    # coef = 2 * grad_loss / (D * sum of weights), computed on device: no host sync
    row_scale = tl.load(coef_ptr) * weight
    grad_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
    grad_dot = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if SOURCE_GRAD and NORM_PIX:
        # the row sums of the target gradient the normalisation's backward needs, one pass ahead
        for tile in range(NUM_TILES):
            d0 = tile * BLOCK_D
            cols = _columns(d0, BLOCK_D, WIDE)
            ok = live[:, None] & (cols < D)[None, :]
            diff, tgt = _tile_diff(pred_ptr, src_ptr, pred_rows, src_rows, cols, ok, sp_d, sc, st, sh, sw, shift,
                                   mean, rstd, NORM_PIX, PIXELS, C, PT, PH, PW)  # fmt: skip
            grad_tgt = -(diff * row_scale[:, None])
            grad_sum += tl.sum(grad_tgt, axis=1)
            grad_dot += tl.sum(grad_tgt * tgt, axis=1)
    grad_pred_rows = grad_pred_ptr + (b * R + rows64) * D
    grad_src_rows = grad_src_ptr + _source_rows(b, patch, gb, gt, gh, gw, GRID_H, GRID_W, PIXELS, PT, PH, PW)
    for tile in range(NUM_TILES):
        d0 = tile * BLOCK_D
        cols = _columns(d0, BLOCK_D, WIDE)
        col_ok = cols < D
        ok = live[:, None] & col_ok[None, :]
        store_ok = row_ok[:, None] & col_ok[None, :]  # weight-0 rows get zeros
        diff, tgt = _tile_diff(pred_ptr, src_ptr, pred_rows, src_rows, cols, ok, sp_d, sc, st, sh, sw, shift,
                               mean, rstd, NORM_PIX, PIXELS, C, PT, PH, PW)  # fmt: skip
        grad = diff * row_scale[:, None]
        tl.store(grad_pred_rows[:, None] + cols[None, :], narrow_fp32(grad, grad_pred_ptr.dtype.element_ty),
                 mask=store_ok)  # fmt: skip
        if SOURCE_GRAD:
            grad_tgt = -grad
            if NORM_PIX:
                # through t_hat = (t - mean) * rstd with the unbiased variance
                grad_tgt = (grad_tgt - grad_sum[:, None] / D - tgt * (grad_dot / (D - 1))[:, None]) * rstd[:, None]
            inner = _source_columns(cols, gc, gt, gh, gw, PIXELS, C, PT, PH, PW)
            tl.store(grad_src_rows[:, None] + inner[None, :], narrow_fp32(grad_tgt, grad_src_ptr.dtype.element_ty),
                     mask=store_ok)  # fmt: skip


def _blocks(lay: _Layout) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D): column tiles of BLOCK_D, the whole row when it fits 256, else 256 or 128, whichever
    pads the row least (ViT-B/L's 768 = 3 x 256, ViT-H's 588 in 5 x 128); about _TILE_ELEMENTS per tile."""
    block_d = triton.next_power_of_2(lay.dim)
    if block_d > _MAX_BLOCK_D:
        widths = (_MAX_BLOCK_D, _MAX_BLOCK_D // 2)
        block_d = min(widths, key=lambda width: (triton.cdiv(lay.dim, width) * width, -width))
    block_r = max(1, min(triton.next_power_of_2(lay.rows), _TILE_ELEMENTS // block_d))
    return block_r, block_d


def _wide(lay: _Layout, pred: torch.Tensor, strides: Sequence[Sequence[int]]) -> bool:
    """Whether an in-row offset can pass int32 (pred's row, or a target row under any of ``strides``, the
    (b, c, t, h, w) strides of the source and of its gradient): then the kernels address columns in int64."""
    extents = [(lay.dim - 1) * abs(pred.stride(2))]
    for _, sc, st, sh, sw in strides:
        if lay.pixels:
            extents.append(max_patch_offset((sc, st, sh, sw), lay.patch, lay.chans))
        else:
            extents.append((lay.dim - 1) * abs(sc))
    return max(extents) > INT32_MAX


def _launch(
    kernel: object,
    lay: _Layout,
    pred: torch.Tensor,
    source: torch.Tensor,
    ids: torch.Tensor | None,
    row_inputs: tuple[torch.Tensor | None, torch.Tensor | None],
    eps: float,
    outputs: Sequence[torch.Tensor],
    output_strides: Sequence[int],
    **consts: bool,
) -> None:
    """Launch one of the kernels over a (B, cdiv(R, BLOCK_R)) grid; strides are passed, so pred and the
    source need not be contiguous."""
    mask_f, weight_f = row_inputs
    block_r, block_d = _blocks(lay)
    grid = (lay.batch, triton.cdiv(lay.rows, block_r))
    source_strides = _source_strides(lay, source)
    wide = _wide(lay, pred, [source_strides, *([output_strides] if output_strides else [])])
    # an absent optional input is replaced by pred: its load is compiled out by the HAS_* constexpr
    wrap_triton(kernel)[grid](
        pred, source, pred if ids is None else ids, pred if mask_f is None else mask_f,
        pred if weight_f is None else weight_f, *outputs,
        lay.rows, lay.num_patches, lay.dim, *pred.stride(), *(ids.stride() if ids is not None else (0, 0)),
        *source_strides, *output_strides,
        lay.grid[1], lay.grid[2], float(eps),
        HAS_IDS=ids is not None, HAS_MASK=mask_f is not None, HAS_WEIGHT=weight_f is not None,
        PIXELS=lay.pixels, C=lay.chans, PT=lay.patch[0], PH=lay.patch[1], PW=lay.patch[2],
        BLOCK_R=block_r, BLOCK_D=block_d, NUM_TILES=triton.cdiv(lay.dim, block_d), WIDE=wide,
        PRED_ALIGN=stride_alignment(pred.stride(0), pred.stride(1)), **consts,
    )


def _row_inputs(
    mask: torch.Tensor | None, sample_weight: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The tiny per-row inputs as the kernels read them: mask float32 and weights, contiguous."""
    mask_f = mask.to(torch.float32).contiguous() if mask is not None else None
    weight_f = sample_weight.contiguous() if sample_weight is not None else None
    return mask_f, weight_f


# --------------------------------------------------------------------------------------
# Plain PyTorch path (CPU tensors): the same math in float32
# --------------------------------------------------------------------------------------
def _torch_target(
    lay: _Layout, imgs: torch.Tensor | None, target: torch.Tensor | None, ids: torch.Tensor | None,
    norm_pix: bool, eps: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 (B, R, D) target rows of the pred rows (normalised when norm_pix), and rstd (B, R, 1) or None."""
    if lay.pixels:
        rows = patch_rows(imgs, lay.patch)
    else:
        rows = target
    if ids is not None:
        rows = rows.gather(1, ids[:, :, None].expand(-1, -1, lay.dim))
    tgt = rows.to(torch.float32)
    if not norm_pix:
        return tgt, None
    centred = tgt - tgt.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt((centred * centred).sum(dim=-1, keepdim=True) / (lay.dim - 1) + eps)
    return centred * rstd, rstd


def _torch_source_grad(
    lay: _Layout, grad_rows: torch.Tensor, ids: torch.Tensor | None, grad_source: torch.Tensor
) -> None:
    """Write (B, R, D) target-row gradients into grad_source (imgs or target layout)."""
    if ids is not None:
        full = torch.zeros((lay.batch, lay.num_patches, lay.dim), dtype=grad_rows.dtype, device=grad_rows.device)
        grad_rows = full.scatter(1, ids[:, :, None].expand(-1, -1, lay.dim), grad_rows)
    if lay.pixels:
        grid_view = patch_grid_view(grad_source, lay.patch)
        grid_view.copy_(grad_rows.reshape(grid_view.shape))
    else:
        grad_source.copy_(grad_rows)


# --------------------------------------------------------------------------------------
# Registered ops
# --------------------------------------------------------------------------------------
def _loss_torch(
    pred: torch.Tensor, imgs: torch.Tensor | None, ids_removed: torch.Tensor | None, mask: torch.Tensor | None,
    target: torch.Tensor | None, sample_weight: torch.Tensor | None, patch_size: list[int], norm_pix: bool,
    eps: float,
) -> torch.Tensor:  # fmt: skip
    """The PyTorch branch of the forward (and the native kernel's fake)."""
    lay = _layout(pred, imgs, ids_removed, mask, target, sample_weight, patch_size or 1, norm_pix)
    ids = ids_removed.long() if ids_removed is not None else None
    tgt, _ = _torch_target(lay, imgs, target, ids, norm_pix, eps)
    row_mse = (pred.to(torch.float32) - tgt).pow(2).mean(dim=-1)
    weighted = row_mse * _row_weights(lay, mask, sample_weight, pred.device)
    return weighted.sum() / _denominator(lay, mask, sample_weight, pred.device)


def _backward_buffers(
    lay: _Layout, grad_loss: torch.Tensor, pred: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None,
    sample_weight: torch.Tensor | None, source_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """coef = 2 * grad_loss / (D * sum of weights) (a float32 scalar kept on the device: no host sync), and the
    grad_pred and grad_source outputs (kept patches of a removed-only pred are never visited: zeros)."""
    coef = 2.0 * grad_loss.to(torch.float32) / (lay.dim * _denominator(lay, mask, sample_weight, pred.device))
    grad_pred = new_output(tuple(pred.shape), pred.dtype, pred.device)
    if not source_grad:
        grad_source = torch.empty((0,), dtype=source.dtype, device=source.device)
    elif lay.removed_only:
        grad_source = torch.zeros(source.shape, dtype=source.dtype, device=source.device)
    else:
        grad_source = new_output(tuple(source.shape), source.dtype, source.device)
    return coef, grad_pred, grad_source


def _loss_backward_torch(
    grad_loss: torch.Tensor, pred: torch.Tensor, imgs: torch.Tensor | None, ids_removed: torch.Tensor | None,
    mask: torch.Tensor | None, target: torch.Tensor | None, sample_weight: torch.Tensor | None,
    patch_size: list[int], norm_pix: bool, eps: float, source_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The PyTorch branch of the backward (and the native kernel's fake)."""
    lay = _layout(pred, imgs, ids_removed, mask, target, sample_weight, patch_size or 1, norm_pix)
    source = imgs if imgs is not None else target
    coef, grad_pred, grad_source = _backward_buffers(lay, grad_loss, pred, source, mask, sample_weight, source_grad)
    ids = ids_removed.long() if ids_removed is not None else None
    tgt, rstd = _torch_target(lay, imgs, target, ids, norm_pix, eps)
    grad_rows = (pred.to(torch.float32) - tgt) * (coef * _row_weights(lay, mask, sample_weight, pred.device))[..., None]
    grad_pred.copy_(grad_rows)
    if source_grad:
        grad_tgt = -grad_rows
        if norm_pix:
            grad_sum = grad_tgt.sum(dim=-1, keepdim=True)
            grad_dot = (grad_tgt * tgt).sum(dim=-1, keepdim=True)
            grad_tgt = (grad_tgt - grad_sum / lay.dim - tgt * grad_dot / (lay.dim - 1)) * rstd
        _torch_source_grad(lay, grad_tgt.to(source.dtype), ids, grad_source)
    return grad_pred, grad_source


@triton_op("fastmae::masked_mse_loss", mutates_args=())
def _masked_mse_loss_op(
    pred: torch.Tensor, imgs: torch.Tensor | None, ids_removed: torch.Tensor | None, mask: torch.Tensor | None,
    target: torch.Tensor | None, sample_weight: torch.Tensor | None, patch_size: list[int], norm_pix: bool,
    eps: float,
) -> torch.Tensor:  # fmt: skip
    kernel = native_or_torch(pred, "masked_mse_loss", _loss_torch)
    if kernel is not None:
        return kernel(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix, eps)
    lay = _layout(pred, imgs, ids_removed, mask, target, sample_weight, patch_size or 1, norm_pix)
    block_r, _ = _blocks(lay)
    partials = new_output((lay.batch, triton.cdiv(lay.rows, block_r)), torch.float32, pred.device)
    source = imgs if imgs is not None else target
    _launch(
        _loss_fwd_kernel, lay, pred, source, ids_removed, _row_inputs(mask, sample_weight), eps, [partials], [],
        NORM_PIX=norm_pix,
    )  # fmt: skip
    return partials.sum() / _denominator(lay, mask, sample_weight, pred.device)


@triton_op("fastmae::masked_mse_loss_backward", mutates_args=())
def _masked_mse_loss_backward_op(
    grad_loss: torch.Tensor, pred: torch.Tensor, imgs: torch.Tensor | None, ids_removed: torch.Tensor | None,
    mask: torch.Tensor | None, target: torch.Tensor | None, sample_weight: torch.Tensor | None,
    patch_size: list[int], norm_pix: bool, eps: float, source_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    kernel = native_or_torch(pred, "masked_mse_loss_backward", _loss_backward_torch)
    if kernel is not None:
        return kernel(
            grad_loss, pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix, eps, source_grad
        )
    lay = _layout(pred, imgs, ids_removed, mask, target, sample_weight, patch_size or 1, norm_pix)
    source = imgs if imgs is not None else target
    coef, grad_pred, grad_source = _backward_buffers(lay, grad_loss, pred, source, mask, sample_weight, source_grad)
    grad_strides = _source_strides(lay, grad_source) if source_grad else (0,) * 5
    _launch(
        _loss_bwd_kernel, lay, pred, source, ids_removed, _row_inputs(mask, sample_weight), eps,
        [coef.reshape(1), grad_pred, grad_source if source_grad else grad_pred], grad_strides,
        NORM_PIX=norm_pix, SOURCE_GRAD=source_grad,
    )  # fmt: skip
    return grad_pred, grad_source


define_native_kernel(torch.ops.fastmae.masked_mse_loss, _loss_torch)
define_native_kernel(torch.ops.fastmae.masked_mse_loss_backward, _loss_backward_torch)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    pred, imgs, ids_removed, mask, target, sample_weight, patch_size, norm_pix, eps = inputs
    ctx.save_for_backward(pred, imgs, ids_removed, mask, target, sample_weight)
    ctx.patch_size, ctx.norm_pix, ctx.eps = list(patch_size), norm_pix, eps
    ctx.source_index = 1 if imgs is not None else 4


def _backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    pred, imgs, ids_removed, mask, target, sample_weight = ctx.saved_tensors
    source_grad = bool(ctx.needs_input_grad[ctx.source_index])
    grad_pred, grad_source = torch.ops.fastmae.masked_mse_loss_backward(
        grad_loss, pred, imgs, ids_removed, mask, target, sample_weight, ctx.patch_size, ctx.norm_pix, ctx.eps,
        source_grad,
    )
    grads: list[torch.Tensor | None] = [grad_pred, None, None, None, None, None, None, None, None]
    if source_grad:
        grads[ctx.source_index] = grad_source
    return tuple(grads)


_masked_mse_loss_op.register_autograd(_backward, setup_context=_setup_context)


def removed_ids(ids_restore: torch.Tensor, num_keep: int, *, validate_ids: bool = True) -> torch.Tensor:
    """The removed patches ``ids_shuffle[:, K:]`` (B, L-K) int64 from a masking's ``ids_restore`` (B, L) and K,
    in the order a removed-only pred's rows come: one O(B*L) scatter inverts the permutation (no sort).

    For callers that hold only ids_restore: ``masked_mse_loss`` calls it once when given ids_restore with a
    removed-only pred. The model passes ``ids_removed=ids_shuffle[:, K:]``, which it holds anyway. A caller
    with only a (B, L) mask passes the full pred with ``mask=`` instead. validate_ids: assert on the device
    (no host sync) that the rows of ids_restore are permutations of [0, L) (else the inverse would hold
    unwritten entries); False skips it for ids fastmae's masking made.
    """
    check_tensor(ids_restore, "ids_restore")
    if ids_restore.dim() != 2 or ids_restore.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids_restore must be a (B, L) int64/int32 tensor, got {ids_restore.dtype} "
                         f"{tuple(ids_restore.shape)}")
    batch, length = ids_restore.shape
    if isinstance(num_keep, bool) or not isinstance(num_keep, int) or not 0 <= num_keep < length:
        raise ValueError(f"num_keep must be an int in [0, L) = [0, {length}), got {num_keep!r}")
    check_ids_values(ids_restore, length, "ids_restore", validate=validate_ids)
    positions = torch.arange(length, device=ids_restore.device).expand(batch, length)
    ids_shuffle = torch.empty((batch, length), dtype=torch.int64, device=ids_restore.device)
    ids_shuffle = ids_shuffle.scatter(1, ids_restore.long(), positions)
    return ids_shuffle[:, num_keep:].contiguous()


# --------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------
def masked_mse_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor | None,
    ids_restore: torch.Tensor | None,
    patch_size: int | Sequence[int] | None,
    *,
    norm_pix: bool = False,
    eps: float = DEFAULT_EPS,
    target: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    num_keep: int | None = None,
    sample_weight: torch.Tensor | None = None,
    ids_removed: torch.Tensor | None = None,
    validate_ids: bool = True,
) -> torch.Tensor:
    """The MAE loss: mean over removed patches of the per-patch mean squared error; a float32 scalar.

    pred: (B, L, D) for every patch, or (B, L-K, D) for the removed patches only, row r of sample b being
        patch ids_shuffle[b, K + r] (the order in which the decoder's mask tokens come out of the shuffle).
        The shape tells which (1 <= K <= L-1). Any float dtype and strides; accumulation is float32.
    imgs: (B, C, H, W) images with patch_size an int or (ph, pw), D = ph*pw*C; or (B, C, T, H, W) video with
        patch_size (pt, ph, pw), D = pt*ph*pw*C. The target rows are read from the pixels inside the kernel in
        fastmae's patchify order: patches (tubelets) row-major over (T, H, W), elements (t, i, j, c).
    ids_restore: (B, L) int64/int32, with a removed-only pred unless ids_removed is given (the removed ids
        are then derived once, :func:`removed_ids`). With a full pred pass it together with num_keep=K
        (mask = ids_restore >= K is then built here), or pass mask instead.
    ids_removed: (B, L-K) int64/int32, ``ids_shuffle[:, K:]``: patch ids_removed[b, r] is row r of a
        removed-only pred (any strides). What the model holds already; pass ids_restore=None with it.
    target: an explicit (B, L, D) target (HOG, features, ...) instead of imgs (then imgs is None and
        patch_size is not used).
    mask: (B, L) float or bool, 1 = removed, only with a full pred; fractional values weight patches.
    norm_pix: normalise every target row by its mean and unbiased variance: (t - mean) / sqrt(var + eps),
        for pixel targets and explicit targets alike (requires D >= 2).
    sample_weight: (B,) per-sample weights w_b. With row weights m[b, l] (mask, or 1 for each removed patch):
        loss = sum_b w_b sum_l m[b, l] mse[b, l] / sum_b w_b sum_l m[b, l], mse[b, l] = mean_d (pred - target)^2;
        a weighted mean over removed patches, exactly the spec loss when w = 1.

    Gradients flow to pred and, when it requires grad, to imgs or target (through norm_pix too); mask,
    the ids and sample_weight get none (an error is raised if mask or sample_weight requires grad).
    validate_ids: assert on the device (no host sync) that ids_restore holds permutations of 0..L-1 and
    ids_removed distinct patches of 0..L-1 per row: a RuntimeError naming the argument otherwise. Pass False
    only for ids fastmae's masking made (the model does). FASTMAE_DEBUG=1 checks on the host instead.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    for name, value in (("mask", mask), ("sample_weight", sample_weight)):
        if isinstance(value, torch.Tensor) and value.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} must not require grad: masked_mse_loss gives it no gradient")
    if num_keep is not None:
        if isinstance(num_keep, bool) or not isinstance(num_keep, int):
            raise TypeError(f"num_keep must be an int, got {type(num_keep).__name__}")
        if ids_restore is None or mask is not None or ids_removed is not None:
            raise ValueError("num_keep goes with ids_restore (and a full pred), not with mask or ids_removed")
    lay = _layout(pred, imgs, ids_removed, mask, target, sample_weight, patch_size, bool(norm_pix),
                  full_pred_keep=num_keep, ids_restore=ids_restore)  # fmt: skip
    for name, ids in (("ids_restore", ids_restore), ("ids_removed", ids_removed)):
        if ids is not None:
            check_ids_values(ids, lay.num_patches, name, validate=validate_ids)
    if num_keep is not None:
        mask = ids_restore >= num_keep  # O(B*L): the spec's mask
    elif ids_restore is not None:
        ids_removed = removed_ids(ids_restore, lay.num_patches - lay.rows, validate_ids=False)  # checked above
    patch = [] if imgs is None else list(lay.patch if imgs.dim() == 5 else lay.patch[1:])
    return torch.ops.fastmae.masked_mse_loss(
        pred, imgs, ids_removed, mask, target, sample_weight, patch, bool(norm_pix), float(eps)
    )
