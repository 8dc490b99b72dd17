"""Random masking: which patches each sample keeps, with the official semantics.

Not a kernel: an argsort of (N, L) noise is tiny next to the image traffic, and plain
torch ops trace through ``torch.compile`` as they are. The noise is drawn by the caller
outside any compiled region, so eager, compiled and resumed runs mask the same patches.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastmae._validation import check_noise, num_kept


class MaskingResult(NamedTuple):
    """Index tensors of one masking draw (int64), and the float mask.

    ids_shuffle (N, L): patches sorted by noise, kept first. ids_keep (N, K) = ids_shuffle[:, :K].
    ids_restore (N, L): the inverse permutation. mask (N, L): 0 kept, 1 removed, original order.
    num_keep: K = int(L * (1 - mask_ratio)), a Python int so shapes stay static.
    """

    ids_shuffle: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor
    num_keep: int


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskingResult:
    """Keep the K patches with the smallest noise per sample (the official rule).

    noise: (batch, num_patches) floats; drawn as U[0, 1) from ``generator`` when None.
    Raises ValueError when mask_ratio keeps no patch or removes none (K must be in [1, L-1]).
    """
    keep = num_kept(num_patches, mask_ratio)
    if noise is None:
        noise = torch.rand(batch, num_patches, generator=generator, device=device)
    check_noise(noise, batch, num_patches, noise.device if device is None else torch.device(device))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    # position of each patch in the shuffled order decides its mask bit: no scatter needed
    mask = (ids_restore >= keep).to(torch.float32)
    return MaskingResult(ids_shuffle, ids_shuffle[:, :keep], ids_restore, mask, keep)
