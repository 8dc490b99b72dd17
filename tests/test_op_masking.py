"""random_masking against the reference's masking (same noise -> same patches) and its own invariants."""

from __future__ import annotations

import pytest
import torch

from fastmae import reference
from fastmae.ops import random_masking
from tests.op_testing import assert_bitwise_equal


@pytest.mark.parametrize(("batch", "num_patches", "mask_ratio"), [(1, 196, 0.75), (3, 35, 0.5), (2, 256, 0.75)])
def test_same_patches_as_reference(batch: int, num_patches: int, mask_ratio: float) -> None:
    noise = torch.rand(batch, num_patches)
    tokens = torch.randn(batch, num_patches, 8)
    ref_kept, ref_mask, ref_restore = reference.random_masking(tokens, mask_ratio, noise)
    result = random_masking(batch, num_patches, mask_ratio, noise=noise)
    kept = torch.gather(tokens, 1, result.ids_keep.unsqueeze(-1).expand(-1, -1, 8))
    assert_bitwise_equal(kept, ref_kept, "kept tokens")
    assert_bitwise_equal(result.mask, ref_mask, "mask")
    assert_bitwise_equal(result.ids_restore, ref_restore, "ids_restore")


def test_index_invariants() -> None:
    batch, num_patches = 4, 49
    result = random_masking(batch, num_patches, 0.75)
    keep = int(num_patches * (1 - 0.75))
    assert result.num_keep == keep == result.ids_keep.shape[1]
    assert result.ids_keep.dtype == result.ids_shuffle.dtype == result.ids_restore.dtype == torch.int64
    assert torch.equal(result.ids_keep, result.ids_shuffle[:, :keep])
    arange = torch.arange(num_patches).expand(batch, -1)
    assert torch.equal(torch.gather(result.ids_shuffle, 1, result.ids_restore), arange)
    assert torch.equal(result.ids_shuffle.sort(dim=1).values, arange), "ids_shuffle is not a permutation"
    assert torch.equal(result.mask.sum(dim=1), torch.full((batch,), float(num_patches - keep)))
    # the kept patches are exactly the mask's zeros
    assert torch.equal(torch.gather(result.mask, 1, result.ids_keep), torch.zeros(batch, keep))
    assert result.mask.dtype == torch.float32


def test_smallest_noise_is_kept() -> None:
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    result = random_masking(1, 4, 0.5, noise=noise)
    assert result.ids_keep.tolist() == [[1, 3]]  # shuffled order: smallest noise first, not re-sorted
    assert result.mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]


@pytest.mark.parametrize(("mask_ratio", "keeps"), [(0.9, 0), (0.95, 0), (1e-20, 10)])  # 0.9: int(10 * 0.0999..) = 0
def test_ratio_keeping_none_or_all_raises_with_valid_range(mask_ratio: float, keeps: int) -> None:
    with pytest.raises(ValueError, match=rf"keeps {keeps} of 10 patches.* must lie in \(0, ~0\.9\] for L=10"):
        random_masking(2, 10, mask_ratio)


@pytest.mark.parametrize("mask_ratio", [0.0, 1.0, -0.5])
def test_ratio_outside_open_interval_raises(mask_ratio: float) -> None:
    with pytest.raises(ValueError, match=r"mask_ratio must be in the open interval \(0, 1\)"):
        random_masking(2, 10, mask_ratio)


@pytest.mark.parametrize(("mask_ratio", "keeps"), [(0.05, 9), (0.89, 1)])
def test_extreme_valid_ratios(mask_ratio: float, keeps: int) -> None:
    assert random_masking(2, 10, mask_ratio).num_keep == keeps


def test_generator_reproducibility() -> None:
    first = random_masking(2, 50, 0.75, generator=torch.Generator().manual_seed(7))
    second = random_masking(2, 50, 0.75, generator=torch.Generator().manual_seed(7))
    other = random_masking(2, 50, 0.75, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.ids_shuffle, second.ids_shuffle)
    assert torch.equal(first.mask, second.mask)
    assert not torch.equal(first.ids_shuffle, other.ids_shuffle)


def test_bad_noise() -> None:
    with pytest.raises(ValueError, match=r"noise must have shape \(N, L\) = \(2, 10\)"):
        random_masking(2, 10, 0.5, noise=torch.rand(2, 11))
    with pytest.raises(ValueError, match=r"noise must be on meta"):
        random_masking(2, 10, 0.5, noise=torch.rand(2, 10), device="meta")
    with pytest.raises(TypeError, match="noise must be a floating-point"):
        random_masking(2, 10, 0.5, noise=torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(TypeError, match="mask_ratio must be a float"):
        random_masking(2, 10, "0.5")  # type: ignore[arg-type]
