"""``patchify_gather``: the visible patches of an image or video batch, in one pass.

Equals ``reference.patchify(imgs, p)`` followed by a gather of the rows ``ids_keep``, but
reads only the visible pixels and writes only the (N, K, P) result.

Op schemas (inferred by ``triton_op`` from the type hints, ``SymInt[]`` for ``list[int]``; the native
library's kernels ``fastmae_kernels::patchify_gather[_backward]`` are declared with the same ones)::

    fastmae::patchify_gather(Tensor imgs, Tensor ids_keep, SymInt[] patch_size) -> Tensor
    fastmae::patchify_gather_backward(Tensor grad_patches, Tensor ids_keep, SymInt[] patch_size,
                                      SymInt[] imgs_shape) -> Tensor

- imgs (N, C, H, W) with patch_size [ph, pw], or (N, C, T, H, W) with a tubelet [pt, ph, pw];
  float32 / bfloat16 / float16, any strides.
- ids_keep (N, K) int64, distinct indices in [0, L) per row, L = number of patches (tubelets
  in (T, H, W) row-major order).
- output (N, K, P), P = pt*ph*pw*C, contiguous, imgs' dtype; element ((ti*ph + i)*pw + j)*C + c
  of a patch is frame ti, row i, column j, channel c (channel last, as the official patchify).
- backward: grad_imgs (imgs_shape, contiguous) = zeros with each visible patch's gradient
  stored in place: a pure scatter, bitwise equal to autograd through patchify + gather.
  Saves only ids_keep (and the shape).

Kernel: one program per (visible patch, chunk of BLOCK elements of that patch); the patch side is
walked in channel-last order, so the gather's stores (and the scatter's loads) are contiguous, and when
the whole patch fits one program the image side in the image's own order (pw-wide runs, vector accesses),
the elements reordered in registers. See
docs/ops.md for the layout discussion and :func:`bytes_moved` for the
traffic the benchmark counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from fastmae._validation import check_ids, check_patch_batch, patch_shape
from fastmae.ops._backend import check_ids_values, define_native_kernel, native_or_torch, new_output
from fastmae.ops._layout import (
    INT32_MAX,
    as_video,
    grid_index,
    max_patch_offset,
    patch_grid_view,
    stride_alignment,
    video_strides,
)
from fastmae.ops._triton_helpers import element_offset, patch_origin

# ----------------------------------------------------------------------------- kernel


@triton.jit
def _image_tile(
    stride_c, stride_t, stride_h, stride_w, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    CHANS: tl.constexpr, C_PAD: tl.constexpr, ROWS_PAD: tl.constexpr, PW_PAD: tl.constexpr,
):  # fmt: skip
    """A whole patch in the image's own order, (C_PAD, ROWS_PAD, PW_PAD) for its (channel, frame-and-row, column)
    elements: offsets from the patch origin, which are real, and each one's place in the channel-last row."""
    chan = tl.arange(0, C_PAD)[:, None, None]
    line = tl.arange(0, ROWS_PAD)[None, :, None]  # ti * PH + i
    col = tl.arange(0, PW_PAD)[None, None, :]
    ok = (chan < CHANS) & (line < PT * PH) & (col < PW)
    offsets = chan * stride_c + (line // PH) * stride_t + (line % PH) * stride_h + col * stride_w
    place = (line * PW + col) * CHANS + chan
    return offsets, ok, place


@triton.jit
def _gather_kernel(
    src_ptr, ids_ptr, dst_ptr, num_keep, grid_h, grid_w,
    img_stride_b, img_stride_c, img_stride_t, img_stride_h, img_stride_w, ids_stride_b, ids_stride_k,
    grad_stride_b, grad_stride_k, grad_stride_e,
    SCATTER: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, CHANS: tl.constexpr,
    BLOCK: tl.constexpr, WIDE: tl.constexpr, IMAGE_ORDER: tl.constexpr, C_PAD: tl.constexpr,
    ROWS_PAD: tl.constexpr, PW_PAD: tl.constexpr, GRAD_ALIGN: tl.constexpr,
):  # fmt: skip
    """Elements [chunk*BLOCK, +BLOCK) of visible patch row = b*K + k: gathered from the image into the (N, K, P)
    output, or (SCATTER) its gradient stored back into the image gradient. The patch origin is int64, offsets
    inside the patch int32 (int64 when WIDE: a patch extent past 2^31).

    IMAGE_ORDER (the whole patch in one program): the image side is accessed in the image's own order, runs of
    PW along W (vector loads and stores when W is contiguous), and the elements are reordered in registers
    (tl.gather) to or from the channel-last row, which is contiguous on the other side."""
    row = tl.program_id(0)
    b = (row // num_keep).to(tl.int64)
    k = (row % num_keep).to(tl.int64)
    patch = tl.load(ids_ptr + b * ids_stride_b + k * ids_stride_k).to(tl.int64)
    elem = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if WIDE:
        elem = elem.to(tl.int64)
    in_patch = elem < PT * PH * PW * CHANS
    origin = b * img_stride_b + patch_origin(
        patch, grid_h, grid_w, img_stride_t, img_stride_h, img_stride_w, PT, PH, PW
    )
    if IMAGE_ORDER:
        image, image_ok, place = _image_tile(img_stride_c, img_stride_t, img_stride_h, img_stride_w, PT, PH, PW,
                                             CHANS, C_PAD, ROWS_PAD, PW_PAD)  # fmt: skip
    else:
        image = element_offset(elem, img_stride_c, img_stride_t, img_stride_h, img_stride_w, PT, PH, PW, CHANS)
    if SCATTER:
        # grad strides may be 0 (the gradient of .sum() is an expanded tensor)
        grad_offsets = tl.multiple_of(b * grad_stride_b + k * grad_stride_k, GRAD_ALIGN) + elem * grad_stride_e
        # to float32: exact, and it compares bf16 right in the interpreter
        grad = tl.load(src_ptr + grad_offsets, mask=in_patch).to(tl.float32)
        if IMAGE_ORDER:
            index = tl.reshape(tl.where(image_ok, place, 0), (C_PAD * ROWS_PAD * PW_PAD,))
            grad = tl.reshape(tl.gather(grad, index, 0), (C_PAD, ROWS_PAD, PW_PAD))
            in_image = image_ok
        else:
            in_image = in_patch
        # store -0.0 as +0.0, as autograd's zeros + scatter_add does (bitwise equal gradients)
        tl.store(dst_ptr + origin + image, tl.where(grad == 0.0, 0.0, grad), mask=in_image)
    else:
        if IMAGE_ORDER:
            tile = tl.load(src_ptr + origin + image, mask=image_ok)
            # each row element's index in the flattened tile: channel, then frame-and-row, then column
            index = ((elem % CHANS) * ROWS_PAD + elem // (CHANS * PW)) * PW_PAD + (elem // CHANS) % PW
            values = tl.gather(tl.reshape(tile, (C_PAD * ROWS_PAD * PW_PAD,)), tl.where(in_patch, index, 0), 0)
        else:
            values = tl.load(src_ptr + origin + image, mask=in_patch)
        tl.store(dst_ptr + row.to(tl.int64) * (PT * PH * PW * CHANS) + elem, values, mask=in_patch)


# ----------------------------------------------------------------------------- launcher


def _block_size(patch_numel: int) -> tuple[int, int]:
    """BLOCK (elements per program) and num_warps: a whole patch per program up to 2048 elements."""
    block = min(triton.next_power_of_2(patch_numel), 2048)
    return block, max(1, min(8, block // 256))


def _image_order(
    patch_numel: int, block: int, patch: Sequence[int], chans: int, wide: bool
) -> dict[str, int | bool]:
    """IMAGE_ORDER and the (C, PT*PH, PW) tile padded to powers of 2: when the whole patch fits one program, the
    padded tile is at most twice the row's block (registers), and its offsets fit int32."""
    pt, ph, pw = patch
    pads = {"C_PAD": triton.next_power_of_2(chans), "ROWS_PAD": triton.next_power_of_2(pt * ph),
            "PW_PAD": triton.next_power_of_2(pw)}  # fmt: skip
    fits = patch_numel <= block and math.prod(pads.values()) <= 2 * block and not wide
    return {"IMAGE_ORDER": fits, **pads}


def _launch(
    source: torch.Tensor,
    ids_keep: torch.Tensor,
    destination: torch.Tensor,
    image: torch.Tensor,
    patch: Sequence[int],
    grad_strides: tuple[int, ...] | None = None,
) -> None:
    """Run the kernel over the (N*K, chunks) grid; ``image`` (source or destination) gives the strides, and
    ``grad_strides`` (the source's, when it is the patch gradient) make it scatter."""
    (_, chans, _, height, width), (pt, ph, pw) = as_video(image.shape, patch)
    batch, num_keep = ids_keep.shape
    patch_numel = pt * ph * pw * chans
    block, num_warps = _block_size(patch_numel)
    grid = (batch * num_keep, triton.cdiv(patch_numel, block))
    extent = max(max_patch_offset(video_strides(image)[1:], (pt, ph, pw), chans),
                 (patch_numel - 1) * abs(grad_strides[2]) if grad_strides else 0)  # fmt: skip
    wide = extent > INT32_MAX
    wrap_triton(_gather_kernel)[grid](
        source, ids_keep, destination, num_keep, height // ph, width // pw,
        *video_strides(image), *ids_keep.stride(), *(grad_strides or (0, 0, 0)),
        SCATTER=grad_strides is not None, PT=pt, PH=ph, PW=pw, CHANS=chans, BLOCK=block,
        WIDE=wide, num_warps=num_warps, **_image_order(patch_numel, block, (pt, ph, pw), chans, wide),
        GRAD_ALIGN=stride_alignment(*grad_strides[:2]) if grad_strides else 16,
    )  # fmt: skip


# ----------------------------------------------------------------------------- ops


def _gather_torch(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: list[int]) -> torch.Tensor:
    """The PyTorch branch (and the native kernel's fake): advanced indexing on a strided view reads only the
    selected patches."""
    out_shape = (*ids_keep.shape, math.prod(patch_size) * imgs.shape[1])
    visible = patch_grid_view(imgs, patch_size)[grid_index(imgs.shape, patch_size, ids_keep)]
    return visible.reshape(out_shape).contiguous()


def _scatter_torch(
    grad_patches: torch.Tensor, ids_keep: torch.Tensor, patch_size: list[int], imgs_shape: list[int]
) -> torch.Tensor:
    """The PyTorch branch of the backward: accumulate into zeros, the same arithmetic as autograd's gather backward."""
    grad_imgs = torch.zeros(imgs_shape, dtype=grad_patches.dtype, device=grad_patches.device)
    rows = grad_patches.reshape(*ids_keep.shape, *as_video(imgs_shape, patch_size)[1], imgs_shape[1])
    patch_grid_view(grad_imgs, patch_size).index_put_(
        grid_index(imgs_shape, patch_size, ids_keep), rows, accumulate=True
    )
    return grad_imgs


@triton_op("fastmae::patchify_gather", mutates_args=())
def _patchify_gather_op(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: list[int]) -> torch.Tensor:
    kernel = native_or_torch(imgs, "patchify_gather", _gather_torch)
    if kernel is not None:
        return kernel(imgs, ids_keep, patch_size)
    out = new_output((*ids_keep.shape, math.prod(patch_size) * imgs.shape[1]), imgs.dtype, imgs.device)
    _launch(imgs, ids_keep, out, imgs, patch_size)
    return out


@triton_op("fastmae::patchify_gather_backward", mutates_args=())
def _patchify_gather_backward_op(
    grad_patches: torch.Tensor, ids_keep: torch.Tensor, patch_size: list[int], imgs_shape: list[int]
) -> torch.Tensor:
    kernel = native_or_torch(grad_patches, "patchify_gather_backward", _scatter_torch)
    if kernel is not None:
        return kernel(grad_patches, ids_keep, patch_size, imgs_shape)
    grad_imgs = torch.zeros(imgs_shape, dtype=grad_patches.dtype, device=grad_patches.device)
    _launch(grad_patches, ids_keep, grad_imgs, grad_imgs, patch_size, tuple(grad_patches.stride()))
    return grad_imgs


define_native_kernel(torch.ops.fastmae.patchify_gather, _gather_torch)
define_native_kernel(torch.ops.fastmae.patchify_gather_backward, _scatter_torch)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    imgs, ids_keep, patch_size = inputs
    ctx.save_for_backward(ids_keep)
    ctx.patch_size = list(patch_size)
    ctx.imgs_shape = list(imgs.shape)


def _backward(ctx: Any, grad_patches: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
    if not ctx.needs_input_grad[0]:
        return None, None, None
    (ids_keep,) = ctx.saved_tensors
    grad_imgs = torch.ops.fastmae.patchify_gather_backward(grad_patches, ids_keep, ctx.patch_size, ctx.imgs_shape)
    return grad_imgs, None, None


def _setup_backward_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    _, ids_keep, patch_size, _ = inputs
    ctx.save_for_backward(ids_keep)
    ctx.patch_size = list(patch_size)


def _double_backward(ctx: Any, grad_grad_imgs: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
    """The scatter's adjoint is the gather again, so higher-order gradients work."""
    (ids_keep,) = ctx.saved_tensors
    return torch.ops.fastmae.patchify_gather(grad_grad_imgs, ids_keep, ctx.patch_size), None, None, None


_patchify_gather_op.register_autograd(_backward, setup_context=_setup_context)
_patchify_gather_backward_op.register_autograd(_double_backward, setup_context=_setup_backward_context)


# ----------------------------------------------------------------------------- public API


def patchify_gather(
    imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int | Sequence[int], *, validate_ids: bool = True
) -> torch.Tensor:
    """Visible patches of an image or video batch, channel-last, in one pass.

    imgs: (N, C, H, W) with patch_size p or (ph, pw), or (N, C, T, H, W) with a tubelet (pt, ph, pw);
        float32/bfloat16/float16, any strides.
    ids_keep: (N, K) int64, distinct patch indices in [0, L) per row (e.g. ``random_masking(...).ids_keep``).
    validate_ids: assert on the device (no host sync) that ids_keep holds distinct ids in [0, L): a
        RuntimeError naming ids_keep otherwise. Pass False only for ids fastmae's masking made (the model does).
    Returns (N, K, pt*ph*pw*C) in imgs' dtype: ``reference.patchify(imgs, p)`` gathered on ``ids_keep``.
    Differentiable in imgs (a scatter into zeros). FASTMAE_DEBUG=1 checks the id values on the host instead.
    """
    patch, grid = check_patch_batch(imgs, patch_size)
    num_patches = math.prod(grid)
    check_ids(ids_keep, imgs.shape[0], num_patches, imgs.device)
    check_ids_values(ids_keep, num_patches, "ids_keep", validate=validate_ids)
    return torch.ops.fastmae.patchify_gather(imgs, ids_keep, list(patch))


def bytes_moved(
    imgs_shape: Sequence[int], num_keep: int, patch_size: int | Sequence[int], dtype: torch.dtype, *, backward: bool
) -> int:
    """Bytes that must cross memory for one call (the benchmark's GB/s numerator).

    Forward: read the N*K*P visible pixels and the N*K int64 ids, write N*K*P outputs.
    Backward: read N*K*P gradients and the ids, write the whole image gradient (zeros) once
    and the N*K*P visible elements again.
    """
    patch = patch_shape(patch_size, len(imgs_shape))
    batch, chans = imgs_shape[0], imgs_shape[1]
    itemsize = torch.empty((), dtype=dtype).element_size()
    visible = batch * num_keep * math.prod(patch) * chans * itemsize
    ids = batch * num_keep * 8
    if not backward:
        return 2 * visible + ids
    return 2 * visible + ids + math.prod(imgs_shape) * itemsize
