"""Validated ``patchify`` / ``unpatchify`` for images and videos (visualisation, tests, targets).

Images use :func:`fastmae.reference.patchify` / :func:`fastmae.reference.unpatchify`
(square or rectangular patches); videos split into (pt, ph, pw) tubelets in (T, H, W)
row-major order with elements ordered (ti, i, j, c), channel last, the same order as
:func:`fastmae.ops.patchify_gather`. Plain torch views and copies: no kernel needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastmae import reference
from fastmae._validation import check_float, check_patch_batch, check_tensor, patch_shape


def _split_patches(imgs: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(N, C, T, H, W) -> (N, L, pt*ph*pw*C), tubelets row-major, (ti, i, j, c) inside."""
    n, c, t, h, w = imgs.shape
    pt, ph, pw = patch
    x = imgs.reshape(n, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(n, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def patchify(imgs: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, ph*pw*C), or (N, C, T, H, W) with a tubelet (pt, ph, pw) -> (N, L, pt*ph*pw*C).

    Patches in row-major order, channel last inside a patch (the official MAE order).
    """
    patch, _ = check_patch_batch(imgs, patch_size)
    if imgs.dim() == 5:
        return _split_patches(imgs, patch)
    ph, pw = patch
    if ph == pw:
        return reference.patchify(imgs, ph)
    # rectangular patches: a one-frame video has the same order
    return _split_patches(imgs.unsqueeze(2), (1, ph, pw))


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
    if len(grid_size) == 2 and patch[0] == patch[1]:
        return reference.unpatchify(x, patch[0], (grid_size[0], grid_size[1]), in_chans)
    grid = (1, *grid_size) if len(grid_size) == 2 else tuple(grid_size)
    pt, ph, pw = (1, *patch) if len(patch) == 2 else patch
    gt, gh, gw = grid
    n = x.shape[0]
    video = x.reshape(n, gt, gh, gw, pt, ph, pw, in_chans).permute(0, 7, 1, 4, 2, 5, 3, 6)
    video = video.reshape(n, in_chans, gt * pt, gh * ph, gw * pw)
    return video.squeeze(2) if len(grid_size) == 2 else video
