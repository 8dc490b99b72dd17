"""One analytic count of MAE training FLOPs per image, the same for every provider.

Only matrix products are counted (2 FLOPs per multiply-add): the patch embedding, the qkv /
proj / MLP linears, the two attention products, the decoder embedding and the prediction head,
as the reference algorithm runs them (encoder on 1+K tokens, decoder and head on 1+L tokens).
Training is counted as three forwards (forward, and a backward of twice the forward), the usual
convention for MFU. :func:`meta_train_flops_per_image` counts a real model with torch's FLOP counter on
the meta device; ``tests/test_bench.py`` pins both counts for ViT-B and checks they agree within 0.5%.
Count on the meta device, never on CPU tensors: there SDPA runs a fused flash-attention kernel the counter
has no formula for, so a CPU count misses the attention products; on meta SDPA takes its math
decomposition, whose matrix products are counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastmae._validation import num_kept, pair
from fastmae.models.configs import full_model_config


def _transformer_flops(tokens: int, width: int, depth: int, mlp_ratio: float) -> int:
    hidden = int(width * mlp_ratio)
    per_block = (
        2 * tokens * width * 3 * width  # qkv
        + 2 * 2 * tokens * tokens * width  # q k^T and attn v
        + 2 * tokens * width * width  # proj
        + 2 * 2 * tokens * width * hidden  # fc1 and fc2
    )
    return depth * per_block


def mae_forward_flops_per_image(name: str, mask_ratio: float = 0.75, **overrides: Any) -> int:
    """Matrix-product FLOPs of one forward pass of the MAE algorithm for one image."""
    cfg = full_model_config(name, **overrides)
    height, width = pair(cfg["img_size"], "img_size")
    p, chans = cfg["patch_size"], cfg["in_chans"]
    num_patches = (height // p) * (width // p)
    keep = num_kept(num_patches, mask_ratio)
    dim, dec = cfg["embed_dim"], cfg["decoder_embed_dim"]
    patch_dim = p * p * chans
    return (
        2 * keep * patch_dim * dim  # patch embedding of the visible patches
        + _transformer_flops(1 + keep, dim, cfg["depth"], cfg["mlp_ratio"])
        + 2 * (1 + keep) * dim * dec  # decoder_embed
        + _transformer_flops(1 + num_patches, dec, cfg["decoder_depth"], cfg["mlp_ratio"])
        + 2 * (1 + num_patches) * dec * patch_dim  # decoder_pred
    )


def mae_train_flops_per_image(name: str, mask_ratio: float = 0.75, **overrides: Any) -> int:
    """Training FLOPs per image: three forwards (forward + backward)."""
    return 3 * mae_forward_flops_per_image(name, mask_ratio, **overrides)


def meta_train_flops_per_image(build: Callable[[], torch.nn.Module], name: str, *, batch: int = 2,
                               mask_ratio: float = 0.75) -> float:
    """FLOPs per image that torch's FlopCounterMode counts for one forward + backward of ``build()`` (a
    model of ``name``'s size taking ``model(imgs, mask_ratio, noise=...)`` and returning the loss first),
    built and run on the meta device: no memory, no compute."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = full_model_config(name)
    height, width = pair(cfg["img_size"], "img_size")
    p = cfg["patch_size"]
    with torch.device("meta"):
        model = build()
        imgs = torch.randn(batch, cfg["in_chans"], height, width)
        noise = torch.rand(batch, (height // p) * (width // p))
    with FlopCounterMode(display=False) as counter:
        loss = model(imgs, mask_ratio, noise=noise)[0]
        loss.backward()
    return counter.get_total_flops() / batch


# elementwise work "selective" recomputation repeats in backward, in FLOPs per element (generous
# counts: LayerNorm mean, variance, normalise, scale, shift; GELU's erf as a ~14-term evaluation)
_LAYER_NORM_FLOPS, _GELU_FLOPS, _ADD_FLOPS = 8, 14, 1


def _recomputed_block_flops(tokens: int, width: int, depth: int, mlp_ratio: float) -> int:
    hidden = int(width * mlp_ratio)
    per_token = 2 * _LAYER_NORM_FLOPS * width + _GELU_FLOPS * hidden + 2 * _ADD_FLOPS * width
    return depth * tokens * per_token


def selective_recompute_extra_flops_per_image(name: str, mask_ratio: float = 0.75, **overrides: Any) -> int:
    """FLOPs that ``recompute="selective"`` adds per training image: the blocks' LayerNorms, GELUs and
    residual adds (and the head's LayerNorm) once more in backward; no matrix product is repeated."""
    cfg = full_model_config(name, **overrides)
    height, width = pair(cfg["img_size"], "img_size")
    num_patches = (height // cfg["patch_size"]) * (width // cfg["patch_size"])
    keep = num_kept(num_patches, mask_ratio)
    return (
        _recomputed_block_flops(1 + keep, cfg["embed_dim"], cfg["depth"], cfg["mlp_ratio"])
        + _recomputed_block_flops(1 + num_patches, cfg["decoder_embed_dim"], cfg["decoder_depth"], cfg["mlp_ratio"])
        + (num_patches - keep) * _LAYER_NORM_FLOPS * cfg["decoder_embed_dim"]
    )
