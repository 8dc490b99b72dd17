"""The native CPU library's cache of outputs (kernels/cpu/output_cache.h): a freed output of 1 MiB or
more is handed out again, never with its old contents showing, and FASTMAE_NATIVE_CACHE_MB=0 turns it off."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from op_testing import assert_bitwise_equal

REPO = Path(__file__).resolve().parent.parent
CACHED_MIB = 1  # OutputCache::kCachedBytes
SHAPE = (14, 3, 448, 448)  # 32.2 MiB of float32: over glibc's largest mmap threshold, mapped anew each time
PATCH = 16
LENGTH = (448 // PATCH) ** 2


pytestmark = pytest.mark.usefixtures("native_cpu")


def scatter(grad: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    from fastmae import _native
    from fastmae.ops import gather  # noqa: F401  (declares the fastmae_kernels op)

    _native.require()
    return torch.ops.fastmae_kernels.patchify_gather_backward(grad, ids_keep, [PATCH, PATCH], list(SHAPE))


def torch_scatter(grad: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """The same backward by autograd through the reference's patchify and gather."""
    from fastmae import reference

    imgs = torch.zeros(SHAPE, requires_grad=True)
    patches = reference.patchify(imgs, PATCH)
    kept = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    (kept * grad).sum().backward()
    assert imgs.grad is not None
    return imgs.grad


def test_a_freed_large_output_is_reused_and_fully_rewritten() -> None:
    assert torch.Size(SHAPE).numel() * 4 >= CACHED_MIB << 20
    keep = LENGTH // 4
    ids_first = torch.rand(SHAPE[0], LENGTH).argsort(1)[:, :keep].contiguous()
    first = scatter(torch.full((SHAPE[0], keep, PATCH * PATCH * 3), float("nan")), ids_first)
    address = first.data_ptr()
    del first  # back into the cache, full of NaN where patches were kept
    ids_second = torch.rand(SHAPE[0], LENGTH).argsort(1)[:, :keep].contiguous()
    grad = torch.randn(SHAPE[0], keep, PATCH * PATCH * 3)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = scatter(grad, ids_second)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    # a fresh block faults at least once per 2 MiB huge page (17 here), or per 4 KiB page without them
    assert second.data_ptr() == address and faults < 8, f"the freed block was not reused ({faults} page faults)"
    assert_bitwise_equal(second, torch_scatter(grad, ids_second), "grad imgs from a reused block")
    second.resize_(2, 3)  # storage from the cache stays resizable, as any CPU tensor's
    assert second.shape == (2, 3)


def test_the_cache_can_be_turned_off_and_a_bad_setting_is_named() -> None:
    code = f"""
import torch
from fastmae import _native
from fastmae.ops import gather
_native.require()
op = torch.ops.fastmae_kernels.patchify_gather_backward
ids = torch.arange({LENGTH // 4}).repeat({SHAPE[0]}, 1)
grad = torch.ones({SHAPE[0]}, {LENGTH // 4}, {PATCH * PATCH * 3})
for _ in range(3):
    out = op(grad, ids, [{PATCH}, {PATCH}], {list(SHAPE)})
    assert out.sum().item() == grad.numel()
    del out
"""
    env = {**os.environ, "FASTMAE_NATIVE_CACHE_MB": "0"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    env["FASTMAE_NATIVE_CACHE_MB"] = "lots"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode != 0 and "FASTMAE_NATIVE_CACHE_MB must be a whole number of MiB" in result.stderr
