"""Every fastmae Triton kernel, forward and backward, once on CUDA at small odd shapes, in fp32, bf16 and fp16.

Meant to run under NVIDIA's compute-sanitizer (issue [gpu-kernels] item 2), once per tool:

    TRITON_INTERPRET=0 compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/sanitize_kernels.py
    TRITON_INTERPRET=0 compute-sanitizer --tool racecheck --error-exitcode 1 python scripts/sanitize_kernels.py

The shapes are odd on purpose (patch sizes that are not
powers of two, partial row and channel blocks, a batch that is not a multiple of the backward's sample chunk),
so every masked load and store of the kernels is exercised at its edge. Run as a script, it turns PyTorch's
caching allocator off before CUDA starts (PYTORCH_NO_CUDA_MEMORY_CACHING=1): every tensor is then its own
allocation, and memcheck sees an access past a tensor's end instead of a read inside the allocator's pooled
segment. Outputs are allocated poisoned (FASTMAE_DEBUG=1) and checked finite, so an element a kernel never
writes fails here too. Without CUDA (or under TRITON_INTERPRET=1) it exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cuda_missing_reason() -> str | None:
    """Why this script cannot check the compiled kernels here, or None when it can."""
    if not torch.cuda.is_available():
        return "needs CUDA: it runs the compiled Triton kernels on a GPU (under compute-sanitizer); no GPU here"
    if os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"):
        return "TRITON_INTERPRET is set: the interpreter runs no GPU kernel to check; unset it (or set it to 0)"
    return None


def _finite(name: str, *tensors: torch.Tensor) -> None:
    for tensor in tensors:
        if not torch.isfinite(tensor).all():
            raise AssertionError(f"{name}: non-finite (unwritten or overflowed) elements in a {tuple(tensor.shape)}")


def _random_ids(batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids_shuffle, ids_restore), each (batch, length) int64."""
    ids_shuffle = torch.rand(batch, length, device=device).argsort(dim=1)
    return ids_shuffle, ids_shuffle.argsort(dim=1)


def check_patchify_gather(dtype: torch.dtype, device: torch.device) -> None:
    """Image (patch 5x7: P = 105, not a power of two) and video (tubelet 2x3x5), forward and backward."""
    from fastmae.ops import patchify_gather

    for name, shape, patch in (("image", (3, 3, 15, 35), (5, 7)), ("video", (2, 3, 4, 9, 15), (2, 3, 5))):
        grid = [size // step for size, step in zip(shape[2:], patch)]
        length = int(torch.tensor(grid).prod())
        imgs = torch.randn(shape, device=device).to(dtype).requires_grad_()
        ids_keep = _random_ids(shape[0], length, device)[0][:, : length - 2].contiguous()
        patches = patchify_gather(imgs, ids_keep, patch)
        (grad,) = torch.autograd.grad(patches, imgs, torch.randn_like(patches))
        _finite(f"patchify_gather {name}", patches, grad)


def check_unshuffle(dtype: torch.dtype, device: torch.device) -> None:
    """With and without pos_embed; 19 samples (more than one backward chunk of 16), d = 37, L = 13, K = 5."""
    from fastmae.ops import unshuffle_with_mask_token

    batch, length, keep, width = 19, 13, 5, 37
    _, ids_restore = _random_ids(batch, length, device)
    for with_pos in (True, False):
        x_vis = torch.randn(batch, 1 + keep, width, device=device).to(dtype).requires_grad_()
        mask_token = torch.randn(1, 1, width, device=device).to(dtype).requires_grad_()
        inputs = [x_vis, mask_token]
        pos_embed = None
        if with_pos:
            pos_embed = torch.randn(1, 1 + length, width, device=device).to(dtype).requires_grad_()
            inputs.append(pos_embed)
        out = unshuffle_with_mask_token(x_vis, mask_token, ids_restore, pos_embed)
        grads = torch.autograd.grad(out, inputs, torch.randn_like(out))
        _finite(f"unshuffle_with_mask_token pos_embed={with_pos}", out, *grads)


def check_masked_mse_loss(dtype: torch.dtype, device: torch.device) -> None:
    """Every call form: removed-only and full pred, norm_pix, an explicit target, a float mask, sample_weight,
    video; the source (imgs or target) requires grad, so the backward writes its gradient too."""
    from fastmae.ops import masked_mse_loss

    batch, chans, (grid_h, grid_w), patch = 3, 3, (3, 5), (5, 7)
    length, dim, keep = grid_h * grid_w, patch[0] * patch[1] * chans, 4
    _, ids_restore = _random_ids(batch, length, device)
    soft_mask = torch.rand(batch, length, device=device) * (ids_restore >= keep)
    weight = torch.rand(batch, device=device) + 0.1
    video_patch, video_grid = (2, 3, 5), (2, 2, 3)
    video_length = video_grid[0] * video_grid[1] * video_grid[2]
    _, video_restore = _random_ids(batch, video_length, device)

    def source(*shape: int) -> torch.Tensor:
        return torch.randn(shape, device=device).to(dtype).requires_grad_()

    imgs = source(batch, chans, grid_h * patch[0], grid_w * patch[1])
    target = source(batch, length, 29)
    video = source(batch, chans, *(g * p for g, p in zip(video_grid, video_patch)))
    removed, full = (batch, length - keep), (batch, length)
    calls: list[tuple[str, tuple[int, ...], Callable[[torch.Tensor], torch.Tensor], torch.Tensor]] = [
        ("removed", (*removed, dim), lambda pred: masked_mse_loss(pred, imgs, ids_restore, patch), imgs),
        ("removed norm_pix sample_weight", (*removed, dim),
         lambda pred: masked_mse_loss(pred, imgs, ids_restore, patch, norm_pix=True, sample_weight=weight), imgs),
        ("full soft mask norm_pix", (*full, dim),
         lambda pred: masked_mse_loss(pred, imgs, None, patch, norm_pix=True, mask=soft_mask), imgs),
        ("full num_keep sample_weight", (*full, dim),
         lambda pred: masked_mse_loss(pred, imgs, ids_restore, patch, num_keep=keep, sample_weight=weight), imgs),
        ("target removed norm_pix", (*removed, 29),
         lambda pred: masked_mse_loss(pred, None, ids_restore, None, target=target, norm_pix=True), target),
        ("target full mask", (*full, 29),
         lambda pred: masked_mse_loss(pred, None, None, None, target=target, mask=soft_mask), target),
        ("video removed norm_pix", (batch, video_length - 5, 2 * 3 * 5 * chans),
         lambda pred: masked_mse_loss(pred, video, video_restore, video_patch, norm_pix=True), video),
    ]  # fmt: skip
    for name, pred_shape, call, grad_source in calls:
        pred = source(*pred_shape)
        loss = call(pred)
        grads = torch.autograd.grad(loss, (pred, grad_source))
        _finite(f"masked_mse_loss {name}", loss, *grads)


CHECKS = {
    "patchify_gather": check_patchify_gather,
    "unshuffle_with_mask_token": check_unshuffle,
    "masked_mse_loss": check_masked_mse_loss,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    reason = cuda_missing_reason()
    if reason is not None:
        print(f"sanitize_kernels: {reason}", file=sys.stderr)
        return 2
    os.environ["FASTMAE_BACKEND"] = "triton"  # the kernels, whatever the environment asked for
    os.environ["FASTMAE_DEBUG"] = "1"  # poisoned outputs: an unwritten element fails the finite checks
    device = torch.device("cuda")
    torch.manual_seed(0)
    for dtype in DTYPES:
        for name, check in CHECKS.items():
            check(dtype, device)
            torch.cuda.synchronize()  # a kernel fault surfaces here, under this name
            print(f"{name} {str(dtype).removeprefix('torch.')}: forward + backward ran", flush=True)
    print("sanitize_kernels: every kernel ran forward and backward in fp32, bf16 and fp16")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")  # read when CUDA's allocator starts
    sys.exit(main())
