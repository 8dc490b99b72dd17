"""Masking generators beyond random masking: block-wise (BEiT), grid, and tube (VideoMAE).

Every generator returns the :class:`~fastmae.ops.masking.MaskingResult` contract of
:func:`~fastmae.ops.masking.random_masking`: ids_shuffle (N, L) with the K kept patches first,
ids_keep = ids_shuffle[:, :K], ids_restore = its inverse, mask (N, L) float32 (1 = removed, in
patch order) and num_keep K, one Python int for the whole batch so shapes stay static. Patches are
indexed row-major over the grid: (h, w) for images, (t, h, w) for video tubelets.

- :func:`block_masking`: random rectangles, K = int(L * (1 - mask_ratio)) as in random masking.
  Drawn on the host, one sample at a time (it is data-loader work, like BEiT's generator).
- :func:`grid_masking`: keep one patch per (sh, sw) cell; K fixed by the pattern.
- :func:`tube_masking`: one spatial random mask repeated over every time slice.
- Random masking over space-time needs no new function: ``random_masking(N, T' * gh * gw, mask_ratio)``
  masks tubelets independently, with tubelet index t * gh * gw + h * gw + w.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from fastmae._validation import num_kept, pair
from fastmae.ops.masking import MaskingResult, random_masking

__all__ = ["BlockMask", "block_masking", "grid_masking", "sample_block_mask", "tube_masking"]

_DRAWS_PER_CALL = 32


# ----------------------------------------------------------------------------- shared pieces


def _check_batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return batch


def _check_generator(generator: torch.Generator | None, *, host_only: bool = False) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if host_only and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator (drawn on the host), got one on {generator.device}")


def _from_order(ids_shuffle: torch.Tensor, num_keep: int) -> MaskingResult:
    """The full masking contract from an (N, L) order with the kept patches first."""
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = (ids_restore >= num_keep).to(torch.float32)
    return MaskingResult(ids_shuffle, ids_shuffle[:, :num_keep], ids_restore, mask, num_keep)


# ----------------------------------------------------------------------------- block masking


class BlockMask(NamedTuple):
    """One sample's block mask: the rectangles drawn (top, left, height, width) and the final (gh, gw) mask.

    ``mask`` (bool, True = removed) is the union of ``blocks`` with the surplus patches unmasked again.
    """

    blocks: list[tuple[int, int, int, int]]
    mask: torch.Tensor


def _check_block_options(min_block: int, max_block: int | None, aspect: Sequence[float]) -> tuple[float, float]:
    if isinstance(min_block, bool) or not isinstance(min_block, int) or min_block < 1:
        raise ValueError(f"min_block must be a positive int (patches), got {min_block!r}")
    bad_max = isinstance(max_block, bool) or not isinstance(max_block, int) or max_block < min_block
    if max_block is not None and bad_max:
        raise ValueError(f"max_block must be None or an int >= min_block = {min_block}, got {max_block!r}")
    if not (isinstance(aspect, Sequence) and len(aspect) == 2 and all(isinstance(a, (int, float)) for a in aspect)):
        raise TypeError(f"aspect must be a (low, high) pair of floats, got {aspect!r}")
    low, high = float(aspect[0]), float(aspect[1])
    if not 0 < low <= high:
        raise ValueError(f"aspect must satisfy 0 < low <= high, got {aspect!r}")
    return low, high


def sample_block_mask(
    grid_size: int | tuple[int, int],
    num_masked: int,
    *,
    min_block: int = 4,
    max_block: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> BlockMask:
    """Draw rectangles until at least ``num_masked`` patches are covered, then unmask random surplus ones.

    Each rectangle: area ~ U[min_block, max(min_block, min(max_block, still needed))] patches, aspect
    ratio height/width log-uniform in ``aspect``, height and width rounded and clipped to the grid,
    position uniform. Rectangles may overlap and the last one may overshoot; the surplus patches are
    then chosen uniformly among the covered ones and unmasked, so exactly ``num_masked`` remain.
    Deterministic for a CPU ``generator`` state.
    """
    grid_h, grid_w = pair(grid_size, "grid_size")
    if not 1 <= num_masked <= grid_h * grid_w:
        raise ValueError(f"num_masked must be in [1, {grid_h * grid_w}], got {num_masked}")
    log_low, log_high = (math.log(a) for a in _check_block_options(min_block, max_block, aspect))
    _check_generator(generator, host_only=True)
    covered = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    blocks: list[tuple[int, int, int, int]] = []
    count = 0
    draws: list[list[float]] = []
    # ends with probability 1: while a patch is uncovered, some placement covers it
    while count < num_masked:
        if not draws:  # uniforms for the next blocks, drawn in bulk (one torch call per 32 blocks)
            draws = torch.rand(_DRAWS_PER_CALL, 4, generator=generator, dtype=torch.float64).tolist()[::-1]
        u_area, u_aspect, u_top, u_left = draws.pop()
        needed = num_masked - count
        max_area = max(min_block, needed if max_block is None else min(max_block, needed))
        area = min_block + (max_area - min_block) * u_area
        ratio = math.exp(log_low + (log_high - log_low) * u_aspect)
        height = min(max(round(math.sqrt(area * ratio)), 1), grid_h)
        width = min(max(round(math.sqrt(area / ratio)), 1), grid_w)
        top = int(u_top * (grid_h - height + 1))
        left = int(u_left * (grid_w - width + 1))
        blocks.append((top, left, height, width))
        covered[top : top + height, left : left + width] = True
        count = int(covered.sum())
    mask = covered.flatten()
    surplus = count - num_masked
    if surplus:
        covered_ids = mask.nonzero().squeeze(1)
        mask[covered_ids[torch.randperm(covered_ids.numel(), generator=generator)[:surplus]]] = False
    return BlockMask(blocks, mask.view(grid_h, grid_w))


def block_masking(
    batch: int,
    grid_size: int | tuple[int, int],
    mask_ratio: float,
    *,
    min_block: int = 4,
    max_block: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskingResult:
    """BEiT-style block-wise masking with exactly L - K patches removed per sample, K = int(L * (1 - mask_ratio)).

    grid_size: (gh, gw) patches (an int means square), L = gh * gw. Each sample's mask comes from
    :func:`sample_block_mask` (rectangles of >= ``min_block`` patches, aspect ratio in ``aspect``, area
    capped by ``max_block``). ids_shuffle lists the kept patches first and the removed ones after,
    each group in random order (like random masking's shuffled order), so ids_keep is in random order.

    Host-side work: a Python loop over samples on the CPU with a CPU ``generator`` (call it in the data
    loader); the result is moved to ``device``. Deterministic for a generator state: the samples' blocks
    are drawn first, in batch order, then one (N, L) noise for the order within each group.
    """
    _check_batch(batch)
    grid_h, grid_w = pair(grid_size, "grid_size")
    num_patches = grid_h * grid_w
    keep = num_kept(num_patches, mask_ratio)
    _check_block_options(min_block, max_block, aspect)
    _check_generator(generator, host_only=True)
    masks = torch.stack([
        sample_block_mask(
            (grid_h, grid_w), num_patches - keep, min_block=min_block, max_block=max_block, aspect=aspect,
            generator=generator,
        ).mask.flatten()
        for _ in range(batch)
    ])  # fmt: skip
    # kept patches get keys in [0, 1), removed ones in [1, 2): random masking then keeps exactly the K unmasked
    keys = masks.to(torch.float32) + torch.rand(batch, num_patches, generator=generator)
    return random_masking(batch, num_patches, mask_ratio, noise=keys.to(device), device=device)


# ----------------------------------------------------------------------------- grid masking


def grid_masking(
    batch: int,
    grid_size: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 2,
    random_offset: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskingResult:
    """Keep one patch per (sh, sw) cell: patch (h, w) is kept when (h - oh) % sh == 0 and (w - ow) % sw == 0.

    The offset (oh, ow) is (0, 0), or with ``random_offset`` drawn per sample uniformly from [0, sh) x [0, sw)
    (then gh and gw must be multiples of sh and sw so that K is the same for every offset).
    K = ceil(gh / sh) * ceil(gw / sw) (a 2x2 stride keeps 25%); it must leave at least one patch removed.
    ids_shuffle lists the kept patches first, then the removed ones, both in patch (row-major) order, so the
    visible tokens form a regular (ceil(gh/sh), ceil(gw/sw)) grid in row-major order.
    ``generator`` (for the offsets) must live on ``device``, as for torch.randint.
    """
    _check_batch(batch)
    grid_h, grid_w = pair(grid_size, "grid_size")
    stride_h, stride_w = pair(stride, "stride")
    _check_generator(generator)
    if random_offset and (grid_h % stride_h or grid_w % stride_w):
        raise ValueError(
            f"grid_size {grid_h}x{grid_w} must be a multiple of stride {stride_h}x{stride_w} with random_offset=True "
            "(otherwise the number of kept patches depends on the offset)"
        )
    num_patches = grid_h * grid_w
    keep = math.ceil(grid_h / stride_h) * math.ceil(grid_w / stride_w)
    if keep >= num_patches:
        raise ValueError(f"stride {stride_h}x{stride_w} keeps every patch of a {grid_h}x{grid_w} grid; none is masked")
    if random_offset:
        offsets = torch.stack([
            torch.randint(s, (batch,), generator=generator, device=device) for s in (stride_h, stride_w)
        ], dim=1)  # fmt: skip
    else:
        offsets = torch.zeros(batch, 2, dtype=torch.int64, device=device)
    rows = torch.arange(grid_h, device=offsets.device).view(1, grid_h, 1)
    cols = torch.arange(grid_w, device=offsets.device).view(1, 1, grid_w)
    kept = ((rows - offsets[:, 0, None, None]) % stride_h == 0) & ((cols - offsets[:, 1, None, None]) % stride_w == 0)
    # integer keys: kept patches first, each group in patch order
    index = torch.arange(num_patches, device=offsets.device)
    keys = (~kept).flatten(1).to(torch.int64) * num_patches + index
    return _from_order(torch.argsort(keys, dim=1), keep)


# ----------------------------------------------------------------------------- tube masking


def _check_tube_grid(grid_size: Sequence[int]) -> tuple[int, int, int]:
    if not (
        isinstance(grid_size, Sequence)
        and len(grid_size) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in grid_size)
    ):
        raise TypeError(f"grid_size must be a (T', gh, gw) triple of ints (tubelets per dimension), got {grid_size!r}")
    if min(grid_size) <= 0:
        raise ValueError(f"grid_size must be positive, got {grid_size!r}")
    return int(grid_size[0]), int(grid_size[1]), int(grid_size[2])


def tube_masking(
    batch: int,
    grid_size: tuple[int, int, int],
    mask_ratio: float,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskingResult:
    """VideoMAE tube masking: one spatial random mask per sample, the same for every time slice.

    grid_size: (T', gh, gw) tubelets; L = T' * gh * gw, tubelet index t * gh * gw + h * gw + w.
    The spatial mask is ``random_masking(batch, gh * gw, mask_ratio, noise=noise)`` (noise (N, gh * gw),
    drawn from ``generator`` when None), keeping Ks = int(gh * gw * (1 - mask_ratio)) positions;
    K = T' * Ks. ids_shuffle: the kept tubelets first, time slice by time slice (t = 0 first), each slice in
    the spatial shuffled order; then the removed tubelets in the same arrangement.
    """
    _check_batch(batch)
    frames, grid_h, grid_w = _check_tube_grid(grid_size)
    spatial = grid_h * grid_w
    plane = random_masking(batch, spatial, mask_ratio, noise=noise, generator=generator, device=device)
    keep = plane.num_keep
    # tubelet ids of slice t are t * spatial + the spatial ids
    slice_start = (torch.arange(frames, device=plane.ids_shuffle.device) * spatial).view(1, frames, 1)
    kept = (slice_start + plane.ids_shuffle[:, None, :keep]).flatten(1)
    removed = (slice_start + plane.ids_shuffle[:, None, keep:]).flatten(1)
    return _from_order(torch.cat([kept, removed], dim=1), frames * keep)
