"""Positional-embedding tables for another input size when loading weights.

MAE's tables (``pos_embed``, ``decoder_pos_embed``) are fixed 2-D sin-cos functions of the patch
grid, so a table for any grid is computed, not guessed: a loaded table that is the sin-cos table of
its grid is replaced by the exact table of the new grid. A table that is not (learned or changed
after pretraining) is resized the way fine-tuning code does it: the patch rows, seen as a
(gh, gw, D) image, bicubically interpolated (float32, corners not aligned); the cls row kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fastmae.models.layers import sincos_pos_embed

POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")
SINCOS_ATOL = 1e-5  # a stored float32 table matches the float64 formula to ~1e-7


def square_grid(num_patches: int, key: str) -> tuple[int, int]:
    """The (g, g) grid of ``num_patches`` patches; ValueError when it is not a square number."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{key}: {num_patches} patch rows are not a square grid; give the source grid explicitly")
    return side, side


def is_sincos(table: torch.Tensor, grid: tuple[int, int]) -> bool:
    """Whether ``table`` (1, 1+gh*gw, D) is the fixed sin-cos table of ``grid`` (cls row zero)."""
    expected = sincos_pos_embed(table.shape[-1], grid).to(table.device)
    return bool(torch.allclose(table[0].float(), expected, atol=SINCOS_ATOL, rtol=0))


def resize_pos_embed(table: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None,
                     key: str = "pos_embed") -> torch.Tensor:
    """(1, 1+L_old, D) -> (1, 1+gh*gw, D) for ``new_grid``; exact for sin-cos tables, bicubic otherwise."""
    if table.ndim != 3 or table.shape[0] != 1:
        raise ValueError(f"{key}: expected a (1, 1+L, D) table, got {tuple(table.shape)}")
    old_grid = old_grid or square_grid(table.shape[1] - 1, key)
    if old_grid[0] * old_grid[1] != table.shape[1] - 1:
        raise ValueError(f"{key}: grid {old_grid} does not match {table.shape[1] - 1} patch rows")
    dim = table.shape[-1]
    if is_sincos(table, old_grid):
        return sincos_pos_embed(dim, new_grid).unsqueeze(0).to(table.dtype)
    patches = table[:, 1:].float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=new_grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([table[:, :1].float(), patches], dim=1).to(table.dtype)


def adapt_pos_embeds(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with every positional table of ``model``'s width but another length resized to its grid."""
    adapted = dict(state)
    own = model.state_dict()
    for key in POS_EMBED_KEYS:
        # another width is another model: left as it is, for load_state_dict to report the size mismatch
        if (key in adapted and key in own and adapted[key].shape[1] != own[key].shape[1]
                and adapted[key].shape[-1] == own[key].shape[-1]):
            adapted[key] = resize_pos_embed(adapted[key], tuple(model.grid_size), key=key)
    return adapted
