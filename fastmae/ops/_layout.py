"""Patch-grid layout shared by the ops' PyTorch paths and launchers.

An image batch (N, C, H, W) is handled as a one-frame video (N, C, T=1, H, W) with a (pt=1, ph, pw)
tubelet, so every op has one code path for images and videos. Patches (tubelets) are numbered in
(T, H, W) row-major order and a patch's elements are ordered (ti, i, j, c), channel last: the official
MAE ``patchify`` order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def as_video(shape: Sequence[int], patch: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """(N, C, [T,] H, W) and its patch extent as a video shape (N, C, T, H, W) and a tubelet (pt, ph, pw).

    For images T = pt = 1, and ``patch`` may be (ph, pw) or (1, ph, pw).
    """
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, c, 1, h, w), (1, patch[-2], patch[-1])
    return tuple(shape), (patch[0], patch[1], patch[2])


def video_strides(tensor: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Strides (b, c, t, h, w) of an image or video tensor; an image's frame stride is 0 (T = 1, never used)."""
    if tensor.dim() == 4:
        sb, sc, sh, sw = tensor.stride()
        return sb, sc, 0, sh, sw
    return tensor.stride()  # type: ignore[return-value]


def patch_grid_view(image: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """A view (N, gt, gh, gw, pt, ph, pw, C) of an image/video tensor of any strides: patch grid first,
    channel last. Reshaping it to (N, L, P) gives ``patchify``'s rows; writing into it scatters rows back."""
    (n, c, t, h, w), (pt, ph, pw) = as_video(image.shape, patch)
    sb, sc, st, sh, sw = video_strides(image)
    return image.as_strided(
        (n, t // pt, h // ph, w // pw, pt, ph, pw, c),
        (sb, pt * st, ph * sh, pw * sw, st, sh, sw, sc),
    )


def patch_rows(image: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """(N, C, [T,] H, W) -> (N, L, pt*ph*pw*C) patch rows (a copy unless the layout allows a view)."""
    grid = patch_grid_view(image, patch)
    n, gt, gh, gw, pt, ph, pw, c = grid.shape
    return grid.reshape(n, gt * gh * gw, pt * ph * pw * c)


def grid_index(image_shape: Sequence[int], patch: Sequence[int], ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Advanced-index tuple (batch, patch_t, patch_h, patch_w) that selects patches ``ids`` (N, K) of the grid view."""
    (_, _, _, height, width), (_, ph, pw) = as_video(image_shape, patch)
    grid_h, grid_w = height // ph, width // pw
    batch_index = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)
    return batch_index, ids // (grid_w * grid_h), (ids // grid_w) % grid_h, ids % grid_w


INT32_MAX = 2**31 - 1


def max_patch_offset(strides: Sequence[int], patch: Sequence[int], chans: int) -> int:
    """Largest offset of a patch element from the patch origin, for the (c, t, h, w) ``strides`` of a sample and
    a (pt, ph, pw) patch: the kernels address inside a patch in int32 when it is at most INT32_MAX."""
    sc, st, sh, sw = (abs(s) for s in strides)
    pt, ph, pw = patch
    return (chans - 1) * sc + (pt - 1) * st + (ph - 1) * sh + (pw - 1) * sw


def stride_alignment(*strides: int) -> int:
    """The largest power of 2 up to 16 dividing every stride: row origins built from them are multiples of it,
    which the kernels tell the compiler (tl.multiple_of) so that rows whose length is not a multiple of 16
    (ViT-H/14's 588) still load and store in vectors."""
    align = 16
    while any(stride % align for stride in strides):
        align //= 2
    return align
