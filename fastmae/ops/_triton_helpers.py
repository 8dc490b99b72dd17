"""``@triton.jit`` helpers shared by the op kernels: narrowing casts and the patch-index arithmetic.

Imported only by the op modules (which import triton anyway); only features that triton 3.6 and 3.9 both have.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def narrow_fp32(value, DST: tl.constexpr):
    """float32 ``value`` in dtype ``DST`` (bfloat16, float16, or float32/float64 unchanged), rounded to
    nearest even as PyTorch rounds; NaN stays NaN (sign kept) and +-inf stays +-inf.

    bfloat16 is rounded with integer arithmetic: the Triton interpreter's fp32 -> bf16 cast truncates, and the
    same bit arithmetic is exact on the GPU. Adding the rounding bias to a NaN's bits could carry it into the
    exponent (0x7F800001 -> inf) or wrap it past 2^32 (0xFFFFFFFF -> +0.0), so a NaN is never rounded: it
    keeps its top half with the quiet bit set, which is a NaN of the same sign in bf16.
    """
    if DST == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = bits + (0x7FFF + ((bits >> 16) & 1))
        bits = tl.where(value != value, bits | 0x00400000, rounded)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return value.to(DST)


@triton.jit
def patch_origin(
    patch, grid_h, grid_w, stride_t, stride_h, stride_w, PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
):  # fmt: skip
    """Offset inside one sample of the first element of patch ``patch`` (an int64 tensor: the sample may hold
    more than 2^31 elements).

    Patches (tubelets) are numbered row-major over the (T, H, W) grid, patch = (pt_i * grid_h + ph_i) * grid_w
    + pw_i; strides are the sample's (T, H, W) strides (an image has T = PT = 1).
    """
    patch_w = patch % grid_w
    patch_h = (patch // grid_w) % grid_h
    patch_t = patch // (grid_w * grid_h)
    return patch_t * (PT * stride_t) + patch_h * (PH * stride_h) + patch_w * (PW * stride_w)


@triton.jit
def element_offset(
    elem, stride_c, stride_t, stride_h, stride_w,
    PT: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, CHANS: tl.constexpr,
):  # fmt: skip
    """Offset of element ``elem`` of a patch from the patch origin, in elem's integer type (int32 when the
    launcher has checked that the patch's extent fits).

    A patch's elements are channel last, elem = ((ti * PH + i) * PW + j) * CHANS + c: the official ``patchify``
    order; the divisions are by constants.
    """
    chan = elem % CHANS
    col = (elem // CHANS) % PW
    line = (elem // (CHANS * PW)) % PH
    frame = elem // (CHANS * PW * PH)
    return chan * stride_c + frame * stride_t + line * stride_h + col * stride_w
