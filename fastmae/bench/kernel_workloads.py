"""The Triton launches of the training steps, captured on meta tensors (no GPU, nothing runs).

Each workload calls the public ops, forward and backward, with the shapes and dtypes its training step
gives them under bf16 autocast: images float32 from the loader, activations bfloat16 (x_vis, pred, the
SimMIM patch embedding), parameters float32 (mask_token, decoder_pos_embed), so the decoder input and its
gradient are float32. The launchers run unchanged (FASTMAE_BACKEND=triton on meta tensors) and
:func:`fastmae.bench.triton_capture.capture_launches` keeps every launch they make.

- MAE (the trainer): ViT-B/16 and ViT-L/16 at batch 256, ViT-H/14 at batch 128, 224 px, mask ratio 0.75,
  decoder width 512, norm_pix loss on the removed patches only. ``patchify_gather``'s backward (a scatter
  into the images) runs only when the images require grad, which the MAE step never does; it is captured at
  the same shape so that its kernel is checked too.
- SimMIM: ViT-B/16 at 192 px, batch 256, mask ratio 0.6: ``mask_token_blend`` on the (B, 144, 768) patch
  embedding (float32 mask) and the full-pred loss with a mask.
- VideoMAE: ViT-B with (2, 16, 16) tubelets on 16 x 224 x 224 clips, batch 32, mask ratio 0.9 (tube masking:
  K = 8 * 19), decoder width 384.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fastmae.bench.triton_capture import Launch, capture_launches

META = torch.device("meta")


@dataclass(frozen=True)
class Workload:
    """One training step's op calls at one shape; ``run`` makes the launches (on meta tensors)."""

    name: str
    run: Callable[[], None]


def _meta(*shape: int, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META, requires_grad=grad)


def _backward(output: torch.Tensor) -> None:
    output.backward(torch.empty_like(output))


def _ids(batch: int, count: int) -> torch.Tensor:
    return _meta(batch, count, dtype=torch.int64)


def _mae(model_name: str, batch: int, mask_ratio: float = 0.75) -> Workload:
    from fastmae.models.configs import full_model_config
    from fastmae.ops import masked_mse_loss, patchify_gather, unshuffle_with_mask_token

    config = full_model_config(model_name)
    img, p, chans, width = (int(config[k]) for k in ("img_size", "patch_size", "in_chans", "decoder_embed_dim"))  # type: ignore[call-overload]
    num_patches = (img // p) ** 2
    keep = int(num_patches * (1 - mask_ratio))

    def run() -> None:
        # the images require grad only here, to reach the scatter (the MAE step never does; its forward
        # launch is the same either way)
        _backward(patchify_gather(_meta(batch, chans, img, img, dtype=torch.float32, grad=True), _ids(batch, keep), p))
        imgs = _meta(batch, chans, img, img, dtype=torch.float32)
        x_vis = _meta(batch, 1 + keep, width, dtype=torch.bfloat16, grad=True)
        mask_token = _meta(1, 1, width, dtype=torch.float32, grad=True)
        pos_embed = _meta(1, 1 + num_patches, width, dtype=torch.float32, grad=True)
        _backward(unshuffle_with_mask_token(x_vis, mask_token, _ids(batch, num_patches), pos_embed))
        pred = _meta(batch, num_patches - keep, p * p * chans, dtype=torch.bfloat16, grad=True)
        _backward(masked_mse_loss(pred, imgs, _ids(batch, num_patches), p, norm_pix=True))

    return Workload(f"{model_name} b{batch}", run)


def _simmim(batch: int = 256, img: int = 192, p: int = 16, dim: int = 768) -> Workload:
    from fastmae.ops import mask_token_blend, masked_mse_loss

    num_patches = (img // p) ** 2

    def run() -> None:
        tokens = _meta(batch, num_patches, dim, dtype=torch.bfloat16, grad=True)
        mask = _meta(batch, num_patches, dtype=torch.float32)
        mask_token = _meta(1, 1, dim, dtype=torch.float32, grad=True)
        _backward(mask_token_blend(tokens, mask, mask_token))
        imgs = _meta(batch, 3, img, img, dtype=torch.float32)
        pred = _meta(batch, num_patches, p * p * 3, dtype=torch.bfloat16, grad=True)
        _backward(masked_mse_loss(pred, imgs, None, p, mask=mask))

    return Workload(f"simmim_vit_b16_{img} b{batch}", run)


def _videomae(batch: int = 32, frames: int = 16, img: int = 224, tubelet: tuple[int, int, int] = (2, 16, 16),
              width: int = 384, mask_ratio: float = 0.9) -> Workload:
    from fastmae.ops import masked_mse_loss, patchify_gather, unshuffle_with_mask_token

    grid = (frames // tubelet[0], img // tubelet[1], img // tubelet[2])
    num_patches = math.prod(grid)
    keep = grid[0] * int(grid[1] * grid[2] * (1 - mask_ratio))  # tube masking keeps the same K per slice
    dim = math.prod(tubelet) * 3

    def run() -> None:
        clips = _meta(batch, 3, frames, img, img, dtype=torch.float32)
        patchify_gather(clips, _ids(batch, keep), tubelet)
        x_vis = _meta(batch, 1 + keep, width, dtype=torch.bfloat16, grad=True)
        mask_token = _meta(1, 1, width, dtype=torch.float32, grad=True)
        pos_embed = _meta(1, 1 + num_patches, width, dtype=torch.float32, grad=True)
        _backward(unshuffle_with_mask_token(x_vis, mask_token, _ids(batch, num_patches), pos_embed))
        pred = _meta(batch, num_patches - keep, dim, dtype=torch.bfloat16, grad=True)
        _backward(masked_mse_loss(pred, clips, _ids(batch, num_patches), list(tubelet), norm_pix=True))

    return Workload(f"videomae_vit_b_t{frames} b{batch}", run)


def training_workloads() -> list[Workload]:
    """Every workload the kernel report checks, in report order."""
    return [
        _mae("mae_vit_base_patch16", 256),
        _mae("mae_vit_large_patch16", 256),
        _mae("mae_vit_huge_patch14", 128),
        _simmim(),
        _videomae(),
    ]


def tiny_workloads() -> list[Workload]:
    """Small shapes of the same calls (the device check's dry run on CPU)."""
    return [_mae("mae_vit_tiny_patch8_dec64d2b", 2), _simmim(batch=2, img=32, p=8, dim=32),
            _videomae(batch=1, frames=4, img=32, tubelet=(2, 8, 8), width=32, mask_ratio=0.75)]


@contextlib.contextmanager
def _triton_backend() -> Iterator[None]:
    previous = os.environ.get("FASTMAE_BACKEND")
    os.environ["FASTMAE_BACKEND"] = "triton"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["FASTMAE_BACKEND"]
        else:
            os.environ["FASTMAE_BACKEND"] = previous


def capture(workloads: list[Workload]) -> list[Launch]:
    """Every launch the workloads make, labelled with the workload's name."""
    import triton.knobs

    if triton.knobs.runtime.interpret:
        raise RuntimeError("the launches are compiled kernels: unset TRITON_INTERPRET (it is set to 1)")
    launches: list[Launch] = []
    for workload in workloads:
        with _triton_backend(), capture_launches() as recorded:
            workload.run()
        for launch in recorded:
            launch.label = workload.name
        launches += recorded
    return launches
