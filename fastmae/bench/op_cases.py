"""What the op benchmark measures: the shapes (:class:`Size`) and, per op, the inputs, the reference and the
bytes each op must move (:class:`Case`).

Shapes: ViT-B/16, ViT-L/16 (same op shapes as B/16: L=196, K=49) and ViT-H/14 (L=256, K=64) at 224 px, 3
channels, decoder width 512, mask ratio 0.75; mask_token_blend (SimMIM) runs ViT-B/16 at 192 px (L=144, embed
width D=768). Each preset's batch (256) is the most a run uses; ``fastmae.bench.op_bench`` probes the batch a
device can time in its budget. Activations (imgs for patchify_gather, x_vis, pred, x) use the benchmark's
dtype; parameters (mask_token, decoder_pos_embed) and the loss's images stay float32, as under autocast.

GB/s counts the bytes each op must move, the same count for every path, so the reference's extra traffic
shows as a lower rate; see each ``build_*`` function. fastmae's ops are timed as the model calls them: the ids
come from fastmae's masking, so they pass ``validate_ids=False`` (no device-side id assertion).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from fastmae import reference
from fastmae.ops.masking import random_masking

OP_NAMES = ("patchify_gather", "unshuffle_with_mask_token", "masked_mse_loss", "mask_token_blend")
PASSES = ("fwd", "fwd+bwd")
INDEX_BYTES = 8  # int64 ids
PARAM_BYTES = 4  # float32 parameters


@dataclass(frozen=True)
class Size:
    """One benchmark shape: images (batch, channels, img, img) cut into patch x patch patches."""

    name: str
    batch: int
    img_size: int
    patch: int
    channels: int = 3
    decoder_dim: int = 512
    embed_dim: int = 768  # encoder width: the tokens mask_token_blend replaces
    mask_ratio: float = 0.75

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch) ** 2

    @property
    def num_keep(self) -> int:
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def patch_dim(self) -> int:
        return self.patch * self.patch * self.channels

    def with_batch(self, batch: int) -> Size:
        return replace(self, batch=batch)


MODEL_SIZES = (Size("vit_b16", 256, 224, 16), Size("vit_l16", 256, 224, 16), Size("vit_h14", 256, 224, 14))
SIZES_BY_OP = {"mask_token_blend": (Size("simmim_vit_b16_192", 256, 192, 16),)}  # SimMIM's shape
TINY = Size("tiny", 2, 32, 8, decoder_dim=32, embed_dim=32)
PRESETS = {s.name: s for s in (*MODEL_SIZES, *SIZES_BY_OP["mask_token_blend"], TINY)}


def sizes_for(op: str) -> tuple[Size, ...]:
    """The model shapes ``op`` runs at by default (its own if SIZES_BY_OP has them, else MODEL_SIZES)."""
    return SIZES_BY_OP.get(op, MODEL_SIZES)


@dataclass
class Implementation:
    """A callable with its arguments, and the arguments whose gradients fwd+bwd computes."""

    fn: Callable[..., torch.Tensor]
    args: tuple[Any, ...]
    grad_args: tuple[torch.Tensor, ...]

    def forward(self) -> torch.Tensor:
        return self.fn(*self.args)


@dataclass
class Case:
    op: str
    reference: Implementation
    fastmae: Implementation
    bytes_fwd: int
    bytes_bwd: int
    has_native: bool = True  # the native extension implements this op

    def bytes_moved(self, pass_name: str) -> int:
        return self.bytes_fwd + (self.bytes_bwd if pass_name == "fwd+bwd" else 0)


def pass_fn(impl: Implementation, pass_name: str) -> Callable[[], object]:
    """The callable timed for one pass; fwd+bwd uses autograd.grad so no .grad accumulates between runs."""
    if pass_name == "fwd":
        return impl.forward
    with torch.no_grad():
        probe = impl.forward()
    grad_out = torch.ones_like(probe) if probe.dim() == 0 else torch.randn_like(probe)

    def forward_backward() -> object:
        return torch.autograd.grad(impl.forward(), impl.grad_args, grad_out)

    return forward_backward


def _masking(size: Size, device: torch.device):  # type: ignore[no-untyped-def]
    return random_masking(size.batch, size.num_patches, size.mask_ratio, device=device)


def build_patchify_gather(size: Size, device: torch.device, dtype: torch.dtype) -> Case:
    """Bytes: fastmae.ops.gather.bytes_moved (fwd: the K kept patches, ids and the (B,K,P) output;
    bwd: grad (B,K,P), ids and the whole grad imgs)."""
    from fastmae.ops.gather import bytes_moved, patchify_gather

    k, p = size.num_keep, size.patch
    imgs = torch.randn(size.batch, size.channels, size.img_size, size.img_size, device=device, dtype=dtype,
                       requires_grad=True)
    ids_keep = _masking(size, device).ids_keep

    def reference_fn(imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        patches = reference.patchify(imgs, p)
        return torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))

    return Case(
        "patchify_gather",
        Implementation(reference_fn, (imgs, ids_keep), (imgs,)),
        Implementation(functools.partial(patchify_gather, validate_ids=False), (imgs, ids_keep, p), (imgs,)),
        bytes_fwd=bytes_moved(imgs.shape, k, p, dtype, backward=False),
        bytes_bwd=bytes_moved(imgs.shape, k, p, dtype, backward=True),
    )


def build_unshuffle_with_mask_token(size: Size, device: torch.device, dtype: torch.dtype) -> Case:
    """Bytes: fwd reads x_vis, ids, pos embed, mask token, writes (B,1+L,d) in the promoted dtype; bwd reads
    grad_out and ids, writes grad x_vis and grad mask_token (the pos embed is frozen, as in MAE)."""
    from fastmae.ops.unshuffle import unshuffle_with_mask_token

    b, length, k, d = size.batch, size.num_patches, size.num_keep, size.decoder_dim
    x_vis = torch.randn(b, 1 + k, d, device=device, dtype=dtype, requires_grad=True)
    mask_token = (0.02 * torch.randn(1, 1, d, device=device)).requires_grad_()
    grid = size.img_size // size.patch
    pos_embed = reference.sincos_2d_pos_embed(d, grid, cls_token=True).reshape(1, 1 + length, d).to(device)
    ids_restore = _masking(size, device).ids_restore
    elem, out_elem = x_vis.element_size(), torch.promote_types(dtype, torch.float32).itemsize
    args = (x_vis, mask_token, ids_restore, pos_embed)
    return Case(
        "unshuffle_with_mask_token",
        Implementation(reference.decoder_input, args, (x_vis, mask_token)),
        Implementation(functools.partial(unshuffle_with_mask_token, validate_ids=False), args, (x_vis, mask_token)),
        bytes_fwd=b * (1 + k) * d * elem + b * length * INDEX_BYTES + (2 + length) * d * PARAM_BYTES
        + b * (1 + length) * d * out_elem,
        bytes_bwd=b * (1 + length) * d * out_elem + b * length * INDEX_BYTES + b * (1 + k) * d * elem
        + d * PARAM_BYTES,
    )


def build_masked_mse_loss(size: Size, device: torch.device, dtype: torch.dtype) -> Case:
    """Reference: mae_loss on the full pred (B,L,P); fastmae: pred of the removed patches only, (B,L-K,P) in
    shuffled order (ids_shuffle[:, K:]), norm_pix on. Bytes: fwd reads pred and image pixels of the removed
    patches and ids; bwd reads them again and writes grad pred (B,L-K,P)."""
    from fastmae.ops.loss import masked_mse_loss

    b, length, k, p, patch_dim = size.batch, size.num_patches, size.num_keep, size.patch, size.patch_dim
    imgs = torch.randn(b, size.channels, size.img_size, size.img_size, device=device)
    masking = _masking(size, device)
    pred_full = torch.randn(b, length, patch_dim, device=device, dtype=dtype, requires_grad=True)
    removed_ids = masking.ids_shuffle[:, k:]
    pred_removed = pred_full.detach().gather(1, removed_ids.unsqueeze(-1).expand(-1, -1, patch_dim))
    pred_removed.requires_grad_()
    removed = b * (length - k) * patch_dim
    elem = pred_full.element_size()

    def reference_fn(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return reference.mae_loss(imgs, pred, mask, p, True)

    def fastmae_fn(pred: torch.Tensor, imgs: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        return masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True, validate_ids=False)

    return Case(
        "masked_mse_loss",
        Implementation(reference_fn, (imgs, pred_full, masking.mask), (pred_full,)),
        Implementation(fastmae_fn, (pred_removed, imgs, masking.ids_restore), (pred_removed,)),
        bytes_fwd=removed * (elem + 4) + b * length * INDEX_BYTES,
        bytes_bwd=removed * (2 * elem + 4) + b * length * INDEX_BYTES,
    )


def build_mask_token_blend(size: Size, device: torch.device, dtype: torch.dtype) -> Case:
    """SimMIM masking of every token (B, L, D = embed_dim). Reference: ``x * (1 - m) + token * m`` in plain torch;
    both take the same 0/1 mask in ``dtype`` (random masking at size.mask_ratio) and a token in ``dtype``, so
    the output stays in ``dtype``. Bytes: fastmae.ops.blend.bytes_moved (it counts a 1-byte mask: the wider
    mask read here adds B*L*(itemsize-1) bytes, about 0.03% at D=768 in bfloat16)."""
    from fastmae.ops.blend import bytes_moved, mask_token_blend

    shape = (size.batch, size.num_patches, size.embed_dim)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    mask_token = (0.02 * torch.randn(1, 1, size.embed_dim, device=device)).to(dtype).requires_grad_()
    mask = _masking(size, device).mask.to(dtype)

    def reference_fn(x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        weight = mask.unsqueeze(-1)
        return x * (1 - weight) + mask_token * weight

    args = (x, mask, mask_token)
    return Case(
        "mask_token_blend",
        Implementation(reference_fn, args, (x, mask_token)),
        Implementation(mask_token_blend, args, (x, mask_token)),
        bytes_fwd=bytes_moved(shape, dtype, backward=False),
        bytes_bwd=bytes_moved(shape, dtype, backward=True),
        has_native=False,
    )


BUILDERS: dict[str, Callable[[Size, torch.device, torch.dtype], Case]] = {
    "patchify_gather": build_patchify_gather,
    "unshuffle_with_mask_token": build_unshuffle_with_mask_token,
    "masked_mse_loss": build_masked_mse_loss,
    "mask_token_blend": build_mask_token_blend,
}
