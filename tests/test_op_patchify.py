"""Public patchify / unpatchify: the reference order for images, tubelets for videos, exact inverses."""

from __future__ import annotations

import pytest
import torch

from fastmae import reference
from fastmae.ops import patchify, unpatchify
from tests.op_testing import DTYPES, assert_bitwise_equal


def slice_patches(video: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """Oracle by slicing: (N, C, T, H, W) -> (N, L, pt*ph*pw*C), tubelets row-major, (ti, i, j, c) inside."""
    pt, ph, pw = patch
    _, _, frames, height, width = video.shape
    rows = [
        video[:, :, t : t + pt, h : h + ph, w : w + pw].permute(0, 2, 3, 4, 1).reshape(video.shape[0], -1)
        for t in range(0, frames, pt)
        for h in range(0, height, ph)
        for w in range(0, width, pw)
    ]
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_square_images_match_reference_and_invert(dtype: torch.dtype) -> None:
    imgs = torch.randn(2, 3, 14 * 7, 14 * 5).to(dtype)
    patches = patchify(imgs, 14)
    assert_bitwise_equal(patches, reference.patchify(imgs, 14), "patches")
    assert_bitwise_equal(unpatchify(patches, 14, (7, 5), 3), imgs, "round trip")


def test_rectangular_patches_match_slicing_and_invert() -> None:
    imgs = torch.randn(1, 1, 12, 40)
    patches = patchify(imgs, (4, 8))
    assert_bitwise_equal(patches, slice_patches(imgs.unsqueeze(2), (1, 4, 8)), "patches")
    assert_bitwise_equal(unpatchify(patches, (4, 8), (3, 5), 1), imgs, "round trip")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_video_tubelets_match_slicing_and_invert(dtype: torch.dtype) -> None:
    videos = torch.randn(2, 3, 4, 8, 12).to(dtype)
    patches = patchify(videos, (2, 4, 4))
    assert patches.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3)
    assert_bitwise_equal(patches, slice_patches(videos, (2, 4, 4)), "tubelets")
    assert_bitwise_equal(unpatchify(patches, (2, 4, 4), (2, 2, 3), 3), videos, "round trip")


def test_non_contiguous_input() -> None:
    imgs = torch.randn(2, 3, 32, 48).contiguous(memory_format=torch.channels_last)
    assert_bitwise_equal(patchify(imgs, 16), reference.patchify(imgs.contiguous(), 16), "channels_last")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: patchify(torch.zeros(3, 16, 16), 16), ValueError, r"imgs must be images \(N, C, H, W\)"),
        (lambda: patchify(torch.zeros(1, 3, 20, 16), 16), ValueError, r"height 20 .* crop or resize to 16"),
        (lambda: patchify(torch.zeros(1, 3, 4, 16, 16), 16), TypeError, r"tubelet"),
        (lambda: patchify(torch.zeros(1, 3, 16, 16).long(), 16), TypeError, r"imgs must be float32"),
        (lambda: unpatchify(torch.zeros(1, 4, 768), 16, (2, 3)), ValueError, r"x must have shape \(N, L, P\) = \(N, 6"),
        (lambda: unpatchify(torch.zeros(1, 4, 768), 16, (2, 2), 4), ValueError, r"\(N, 4, 1024\)"),
        (lambda: unpatchify(torch.zeros(1, 4, 768), 16, (2,)), ValueError, r"grid_size must be"),
        (lambda: unpatchify(torch.zeros(1, 4, 768), 16, (2, 2), 0), ValueError, r"in_chans must be a positive"),
        (lambda: unpatchify(torch.zeros(1, 4, 96), 4, (1, 2, 2)), TypeError, r"tubelet"),
        (lambda: unpatchify("x", 16, (2, 2)), TypeError, r"x must be a torch.Tensor"),
    ],
)
def test_bad_inputs_name_the_argument(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()
