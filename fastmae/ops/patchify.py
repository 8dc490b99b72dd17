"""Validated ``patchify`` / ``unpatchify`` for images and videos (visualisation, tests, targets).

Images split into (ph, pw) patches (square ones give exactly :func:`fastmae.reference.patchify`'s
rows), videos into (pt, ph, pw) tubelets; patches in (T, H, W) row-major order, elements ordered
(ti, i, j, c), channel last, the same order as :func:`fastmae.ops.patchify_gather` (one layout
helper, :mod:`fastmae.ops._layout`, serves all of them). Plain torch views and copies: no kernel needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastmae._validation import check_float, check_patch_batch, check_tensor, patch_shape
from fastmae.ops._layout import patch_grid_view, patch_rows


def patchify(imgs: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, ph*pw*C), or (N, C, T, H, W) with a tubelet (pt, ph, pw) -> (N, L, pt*ph*pw*C).

    Patches in row-major order, channel last inside a patch (the official MAE order).
    """
    patch, _ = check_patch_batch(imgs, patch_size)
    return patch_rows(imgs, patch)


def unpatchify(
    x: torch.Tensor, patch_size: int | Sequence[int], grid_size: Sequence[int], in_chans: int = 3
) -> torch.Tensor:
    """The exact inverse of :func:`patchify`.

    x: (N, L, P). grid_size (gh, gw) with patch_size p or (ph, pw) -> (N, C, gh*ph, gw*pw);
    grid_size (gt, gh, gw) with a tubelet (pt, ph, pw) -> (N, C, gt*pt, gh*ph, gw*pw).
    """
    check_tensor(x, "x")
    check_float(x, "x")
    if not isinstance(grid_size, Sequence) or len(grid_size) not in (2, 3) or not all(
        isinstance(g, int) and g > 0 for g in grid_size
    ):
        raise ValueError(f"grid_size must be (gh, gw) or (gt, gh, gw) positive ints, got {grid_size!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans <= 0:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    patch = patch_shape(patch_size, len(grid_size) + 2)
    expected = (math.prod(grid_size), math.prod(patch) * in_chans)
    if x.dim() != 3 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"x must have shape (N, L, P) = (N, {expected[0]}, {expected[1]}) for grid_size {tuple(grid_size)}, "
            f"patch_size {patch} and in_chans {in_chans}, got {tuple(x.shape)}"
        )
    spatial = tuple(g * p for g, p in zip(grid_size, patch))
    imgs = x.new_empty((x.shape[0], in_chans, *spatial))
    grid_view = patch_grid_view(imgs, patch)
    grid_view.copy_(x.reshape(grid_view.shape))
    return imgs
